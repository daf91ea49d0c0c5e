//! Shared per-minute limits: one script per request, exact across the fleet.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{lua, Fleet, Op, Unavailable};
use crate::limits::{Charge, Dimension};

static RATE: LazyLock<Script> = LazyLock::new(|| lua::script(lua::RATE));

fn name(d: Dimension) -> &'static str {
    match d {
        Dimension::Requests => "requests",
        Dimension::Tokens => "tokens",
    }
}

/// The script arguments of per-minute charges: limit name, per minute, cost.
pub(super) fn push_charges(args: &mut Vec<String>, charges: &[Charge]) {
    for c in charges {
        args.push(name(c.dimension).to_string());
        args.push(c.per_minute.to_string());
        args.push(c.cost.to_string());
    }
}

/// Which charge refused, and for how long, from the script's answer.
pub(super) fn refusal(
    charges: &[Charge],
    limit: &str,
    wait_us: Option<&String>,
) -> (usize, Duration) {
    let wait_us: u64 = wait_us.and_then(|w| w.parse().ok()).unwrap_or(1_000_000);
    let i = charges
        .iter()
        .position(|c| name(c.dimension) == limit)
        .unwrap_or(0);
    (i, Duration::from_micros(wait_us.max(1)))
}

impl Fleet {
    /// Admit a request against every charge at once, or none: `Ok(Err((i, wait)))` when
    /// charge `i` refuses it for `wait`.
    pub async fn admit(
        &self,
        key_id: &str,
        charges: &[Charge],
    ) -> Result<Result<(), (usize, Duration)>, Unavailable> {
        let keys = vec![self.layout.rate(key_id)];
        let mut args = Vec::with_capacity(charges.len() * 3);
        push_charges(&mut args, charges);
        let answer: Vec<String> = match self
            .script::<redis::Value>(Op::Rate, &RATE, keys, args)
            .await?
        {
            redis::Value::Array(parts) => parts
                .into_iter()
                .map(|v| match v {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    redis::Value::SimpleString(s) => s,
                    redis::Value::Int(i) => i.to_string(),
                    _ => String::new(),
                })
                .collect(),
            _ => return Ok(Ok(())),
        };
        match answer.as_slice() {
            [limit, wait] => Ok(Err(refusal(charges, limit, Some(wait)))),
            _ => {
                log::error!("redis: the rate script answered {answer:?}");
                Err(Unavailable)
            }
        }
    }
}
