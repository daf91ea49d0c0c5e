//! Shared spend: reservations, settlements and usage in Redis.
//!
//! The gateway reserves a request's worst case before forwarding it and settles the real cost
//! when it is done; both are one script each, atomic on the server, so concurrent requests on
//! different gateways cannot together pass a limit. A settlement Redis did not take (down,
//! too slow) waits in a bounded queue and is replayed when it answers again; the settlement
//! marker makes a replay of one that did land bill nothing twice.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::payer::Payer;
use super::queue::Settlement;
use super::{lock, lua, Fleet, Op, Unavailable};
use crate::errors::{Error, Fault};
use crate::limits::Charge;
use crate::metering::ledger::ReportRow;
use crate::units::{Month, Usd};

static RESERVE: LazyLock<Script> = LazyLock::new(|| lua::script(lua::RESERVE));
static ADMIT: LazyLock<Script> = LazyLock::new(|| lua::script(lua::ADMIT));
static SETTLE: LazyLock<Script> = LazyLock::new(|| lua::script(lua::SETTLE));
static RELEASE: LazyLock<Script> = LazyLock::new(|| lua::script(lua::RELEASE));
static STANDING: LazyLock<Script> = LazyLock::new(|| lua::script(lua::STANDING));

/// How long a settlement marker lives: a replay later than this bills again.
const MARKER_SECS: u64 = 600;
/// Months a month's spend and usage stay in Redis after it ends.
const KEEP_DAYS_AFTER_MONTH: u64 = 400;
/// Settlements kept for replay at most (about 200 bytes each); past it the oldest go, and
/// only the gateway's own ledger still has them.
const MAX_PENDING: usize = 100_000;

/// Why the shared ledger refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The key's own monthly limit would be passed; `committed` is the key's month spend
    /// plus its holds.
    Key { committed: Usd },
    /// The monthly cap at this index (in the order given) would be passed; `committed` is
    /// the month's spend plus the holds outstanding.
    Cap { index: usize, committed: Usd },
    /// The hourly limit would be passed; `committed` is the hour's spend plus the holds.
    Hour { committed: Usd },
    /// The per-minute limit `rate[index]` refuses the request for `wait`.
    Rate { index: usize, wait: Duration },
}

impl Fleet {
    /// Reserve `amount` for `payer` if it fits under every cap and the hourly limit of the
    /// account (and the key's own limit), after admitting the request against `rate` (its
    /// per-minute limits, none for a plan without): one round trip either way.
    /// `Ok(Ok(hold id))` when held.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        payer: Payer<'_>,
        amount: Usd,
        caps: &[Usd],
        hourly: Option<Usd>,
        hold_ttl_secs: u64,
        now: u64,
        rate: &[Charge],
    ) -> Result<Result<Box<str>, Refused>, Unavailable> {
        let l = &self.layout;
        let hold = self.hold_id();
        let mut keys = payer.keys(l, now);
        let mut args = Vec::with_capacity(7 + caps.len() + 3 * rate.len());
        if !rate.is_empty() {
            keys.push(l.rate(payer.key_id));
            args.push((3 * rate.len()).to_string());
            super::rate::push_charges(&mut args, rate);
        }
        args.extend([
            amount.0.to_string(),
            hold.to_string(),
            hold_ttl_secs.to_string(),
            hourly.map_or(String::new(), |h| h.0.to_string()),
            payer.key_limit.map_or(String::new(), |k| k.0.to_string()),
            payer.carry_flag(),
        ]);
        args.extend(caps.iter().map(|c| c.0.to_string()));
        let script = if rate.is_empty() { &RESERVE } else { &ADMIT };
        let answer: Vec<String> = self.script(Op::Reserve, script, keys, args).await?;
        let amount_at = |i: usize| {
            answer
                .get(i)
                .and_then(|s| s.parse().ok())
                .map_or(Usd::ZERO, Usd)
        };
        Ok(match answer.first().map(String::as_str) {
            Some("ok") => Ok(hold),
            Some("cap") => Err(Refused::Cap {
                index: answer
                    .get(1)
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(1)
                    .saturating_sub(1),
                committed: amount_at(2),
            }),
            Some("key") => Err(Refused::Key {
                committed: amount_at(1),
            }),
            Some("hour") => Err(Refused::Hour {
                committed: amount_at(1),
            }),
            Some("rate") => {
                let (index, wait) = super::rate::refusal(
                    rate,
                    answer.get(1).map_or("", String::as_str),
                    answer.get(2),
                );
                Err(Refused::Rate { index, wait })
            }
            _ => {
                log::error!("redis: the reserve script answered {answer:?}");
                return Err(Unavailable);
            }
        })
    }

    /// Bill a settlement and wait for what was billed (it differs from the cost only under a
    /// hard cap). When Redis does not take it, it is queued for replay and what the replay
    /// will bill is returned.
    pub async fn settle(self: &Arc<Self>, mut s: Settlement) -> Usd {
        if self.is_up() {
            if let Ok(billed) = self.settle_once(&s).await {
                return billed;
            }
        }
        // Under a hard cap (or a key's limit), the room past the hold may be gone by the time
        // of the replay; the hold itself stays billable (no settlement eats into another's
        // hold). So a cost past it is billed at the hold, and the amount returned is the
        // amount replayed.
        if let (true, Some(held)) = (s.hard_cap.is_some() || s.key_limit.is_some(), s.held) {
            s.cost = s.cost.min(held);
        }
        let cost = s.cost;
        self.queue(s);
        cost
    }

    /// Bill a settlement without waiting (the caller already knows what it bills).
    pub fn settle_in_background(self: &Arc<Self>, s: Settlement) {
        let fleet = Arc::clone(self);
        self.handle.spawn(async move {
            fleet.settle(s).await;
        });
    }

    /// Release a hold of `amount` (the account's, and the key's when it has a limit) without
    /// waiting. If Redis does not take it, it expires.
    pub fn release_in_background(self: &Arc<Self>, payer: Payer<'_>, hold: &str, amount: Usd) {
        let l = &self.layout;
        let mut keys = vec![l.holds(payer.account_id), l.reserved(payer.account_id)];
        if payer.key_limit.is_some() {
            keys.extend([l.holds(payer.key_id), l.reserved(payer.key_id)]);
        }
        let args = vec![format!("{hold}|{}", amount.0)];
        let fleet = Arc::clone(self);
        self.handle.spawn(async move {
            let _ = fleet.script::<i64>(Op::Release, &RELEASE, keys, args).await;
        });
    }

    /// What `payer`'s account spent this month and hour, its holds outstanding, and the
    /// key's own spend this month.
    pub async fn standing(&self, payer: Payer<'_>, now: u64) -> Result<[Usd; 4], Unavailable> {
        let mut keys = payer.keys(&self.layout, now);
        keys.truncate(6);
        let args = vec![payer.carry_flag()];
        let answer: Vec<String> = self.script(Op::Standing, &STANDING, keys, args).await?;
        let at = |i: usize| {
            answer
                .get(i)
                .and_then(|s| s.parse().ok())
                .map_or(Usd::ZERO, Usd)
        };
        Ok([at(0), at(1), at(2), at(3)])
    }

    /// A month's usage by key, lane and model (only `key_id`'s when given), sorted, from the
    /// shared ledger. Waits for Redis up to the command timeout, even if it was seen down.
    pub async fn report(
        &self,
        month: Month,
        key_id: Option<&str>,
    ) -> Result<Vec<ReportRow>, Error> {
        let unavailable = || {
            Error::new(
                Fault::Unavailable,
                "the shared ledger (Redis) is unreachable",
            )
        };
        let ids: Vec<String> = match key_id {
            Some(k) => vec![k.to_string()],
            None => {
                let index = self.layout.usage_index(month);
                self.run_anyway(Op::Report, move |mut conn| async move {
                    redis::cmd("SMEMBERS")
                        .arg(index)
                        .query_async(&mut conn)
                        .await
                })
                .await
                .map_err(|_| unavailable())?
            }
        };
        let keys: Vec<String> = ids.iter().map(|k| self.layout.usage(k, month)).collect();
        let hashes: Vec<Vec<(String, u64)>> = self
            .run_anyway(Op::Report, move |mut conn| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                pipe.query_async(&mut conn).await
            })
            .await
            .map_err(|_| unavailable())?;
        let mut rows = Vec::new();
        for (id, fields) in ids.iter().zip(hashes) {
            rows.extend(usage_rows(id, &fields));
        }
        rows.sort_by(|a, b| (&a.key_id, &a.lane, &a.model).cmp(&(&b.key_id, &b.lane, &b.model)));
        Ok(rows)
    }

    async fn settle_once(&self, s: &Settlement) -> Result<Usd, Unavailable> {
        let l = &self.layout;
        let month = Month::of(s.at_unix);
        let hold = &s.hold;
        let payer = s.payer();
        let mut keys = payer.keys(l, s.at_unix);
        keys.extend([l.settled(&s.key_id, hold), l.usage(&s.key_id, month)]);
        let args = vec![
            s.held
                .map_or(String::new(), |amount| format!("{hold}|{}", amount.0)),
            s.cost.0.to_string(),
            s.hard_cap.map_or(String::new(), |c| c.0.to_string()),
            s.key_limit.map_or(String::new(), |c| c.0.to_string()),
            payer.carry_flag(),
            format!("{}\t{}", s.lane, s.model),
            s.input_tokens.to_string(),
            s.cached_input_tokens.to_string(),
            s.output_tokens.to_string(),
            (month.next().start_unix() + KEEP_DAYS_AFTER_MONTH * 86_400).to_string(),
            MARKER_SECS.to_string(),
        ];
        let billed: String = self.script(Op::Settle, &SETTLE, keys, args).await?;
        self.index(&s.key_id, month).await;
        Ok(billed.parse().map_or(s.cost, Usd))
    }

    /// List the account in the month's usage index, once per gateway and month.
    async fn index(&self, key_id: &str, month: Month) {
        {
            let mut p = lock(&self.pending);
            if p.indexed_month != Some(month) {
                p.indexed.clear();
                p.indexed_month = Some(month);
            }
            if p.indexed.contains(key_id) {
                return;
            }
        }
        let index = self.layout.usage_index(month);
        let id = key_id.to_string();
        let listed = self
            .run(Op::Settle, move |mut conn| async move {
                redis::cmd("SADD")
                    .arg(index)
                    .arg(id)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if listed.is_ok() {
            lock(&self.pending).indexed.insert(key_id.into());
        }
    }

    fn queue(&self, s: Settlement) {
        let mut p = lock(&self.pending);
        if p.queue.len() >= MAX_PENDING {
            if let Some(old) = p.queue.pop_front() {
                self.stats.settles_dropped.add(1);
                log::error!(
                    "redis: replay queue full; a settlement of ${} for {} is only in this \
                     gateway's ledger",
                    old.cost,
                    old.key_id
                );
            }
        }
        p.queue.push_back(s);
    }

    /// Settlements waiting for Redis.
    pub fn pending_len(&self) -> usize {
        lock(&self.pending).queue.len()
    }

    /// Send the queued settlements, oldest first, until Redis fails again.
    pub(super) async fn replay(&self) {
        let mut sent = 0usize;
        loop {
            let Some(s) = lock(&self.pending).queue.pop_front() else {
                break;
            };
            if self.settle_once(&s).await.is_err() {
                lock(&self.pending).queue.push_front(s);
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            log::info!("redis: replayed {sent} settlement(s) it had missed");
        }
    }

    /// Replay what is queued, for at most `limit` (at shutdown). Returns what is left.
    pub fn drain(self: &Arc<Self>, limit: std::time::Duration) -> usize {
        let fleet = Arc::clone(self);
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            if fleet.pending_len() > 0 && fleet.beat().await {
                fleet.replay().await;
            }
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(limit);
        self.pending_len()
    }
}

/// The rows of one account's month usage hash (`lane⇥model⇥counter` → value).
fn usage_rows(key_id: &str, fields: &[(String, u64)]) -> Vec<ReportRow> {
    let mut rows: Vec<ReportRow> = Vec::new();
    for (field, value) in fields {
        let Some((lane_model, counter)) = field.rsplit_once('\t') else {
            continue;
        };
        let Some((lane, model)) = lane_model.split_once('\t') else {
            continue;
        };
        let row = match rows
            .iter_mut()
            .position(|r| r.lane == lane && r.model == model)
        {
            Some(i) => &mut rows[i],
            None => {
                rows.push(ReportRow {
                    key_id: key_id.to_string(),
                    lane: lane.to_string(),
                    model: model.to_string(),
                    ..ReportRow::default()
                });
                rows.last_mut().expect("just pushed")
            }
        };
        match counter {
            "n" => row.requests = *value,
            "i" => row.input_tokens = *value,
            "c" => row.cached_input_tokens = *value,
            "o" => row.output_tokens = *value,
            "$" => row.cost = Usd(*value),
            _ => {}
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Layout;

    #[test]
    fn only_a_key_that_is_its_own_account_carries_its_totals_over() {
        let payer = |account_id, key_id| Payer {
            account_id,
            key_id,
            key_limit: None,
        };
        assert!(payer("acct_Ab3x9", "key_Ab3x9").carries_over());
        assert!(!payer("acct_team", "key_Ab3x9").carries_over());
        assert!(!payer("acct_Ab3x", "key_Ab3x9").carries_over());
        // The account's totals and the key's are distinct Redis keys, even for a key that is
        // its own account (settle adds to both).
        let l = Layout::new("flux:");
        let keys = payer("acct_Ab3x9", "key_Ab3x9").keys(&l, 1_800_000_000);
        assert_eq!(keys.len(), 8);
        assert_eq!(keys[0], "flux:{acct_Ab3x9}:m:2027-01");
        assert_eq!(keys[4], "flux:{key_Ab3x9}:m:2027-01");
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn usage_hash_fields_become_report_rows() {
        let fields: Vec<(String, u64)> = [
            ("fast\tm-1\tn", 3),
            ("fast\tm-1\ti", 300),
            ("fast\tm-1\tc", 100),
            ("fast\tm-1\to", 30),
            ("fast\tm-1\t$", 4_200),
            ("deep\tm-2\tn", 1),
            ("deep\tm-2\t$", 9),
            ("junk", 5),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        let rows = usage_rows("key_a", &fields);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ReportRow {
                key_id: "key_a".into(),
                lane: "fast".into(),
                model: "m-1".into(),
                requests: 3,
                input_tokens: 300,
                cached_input_tokens: 100,
                output_tokens: 30,
                cost: Usd(4_200),
            }
        );
        assert_eq!((rows[1].requests, rows[1].cost), (1, Usd(9)));
    }
}
