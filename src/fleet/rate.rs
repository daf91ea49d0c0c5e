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
        for c in charges {
            args.push(name(c.dimension).to_string());
            args.push(c.per_minute.to_string());
            args.push(c.cost.to_string());
        }
        let answer: redis::Value = self.script(Op::Rate, &RATE, keys, args).await?;
        match answer {
            redis::Value::Okay | redis::Value::SimpleString(_) => Ok(Ok(())),
            redis::Value::BulkString(ref b) if b == b"ok" => Ok(Ok(())),
            redis::Value::Array(ref parts) if parts.len() == 2 => {
                let text = |v: &redis::Value| match v {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    redis::Value::SimpleString(s) => s.clone(),
                    redis::Value::Int(i) => i.to_string(),
                    _ => String::new(),
                };
                let dim = text(&parts[0]);
                let wait_us: u64 = text(&parts[1]).parse().unwrap_or(1_000_000);
                let i = charges
                    .iter()
                    .position(|c| name(c.dimension) == dim)
                    .unwrap_or(0);
                Ok(Err((i, Duration::from_micros(wait_us.max(1)))))
            }
            other => {
                log::error!("redis: the rate script answered {other:?}");
                Err(Unavailable)
            }
        }
    }
}
