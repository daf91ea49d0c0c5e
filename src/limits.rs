//! Per-key requests and tokens per minute.
//!
//! Rates are enforced by a GCRA (generic cell rate algorithm) per key and per dimension,
//! kept exactly in integers: no window edges, no sketch over-counting. A limit of `N` per
//! minute admits up to `N` at once (the burst), then one every `60/N` seconds; over any span
//! `t` at most `N + N·t/60` are admitted, and a refused request spends nothing.
//!
//! Admission reaches the limits through [`RateStore`]: in this process [`Limits`] over a
//! [`RateLimiter`] ([`LocalLimiter`]: sharded maps under short locks, one lock and a few
//! integer operations per request), or in fleet mode the fleet's (Redis, one script per
//! check, implemented in `fleet/`).
//!
//! Tokens per minute count the request's *estimated input* at admission (the routing
//! estimate: body bytes / 4, images at a flat 1,000), not `max_tokens` nor the output, which
//! are unknown until the answer (the spend ledger already holds the worst case in money).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Terms;
use crate::errors::{ErrorKind, FluxError};

/// A minute in nanoseconds: the period of every limit here.
const MINUTE_NS: u128 = 60_000_000_000;
/// Lock shards of the local store (a power of two).
const SHARDS: usize = 64;

/// What a per-minute limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
}

impl Dimension {
    fn index(self) -> usize {
        match self {
            Dimension::Requests => 0,
            Dimension::Tokens => 1,
        }
    }
}

/// One per-minute limit and what this request spends of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub dimension: Dimension,
    pub per_minute: u64,
    pub cost: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the limit now; the same request is admitted after `after` (if nothing else
    /// spends in between).
    RetryAfter { charge: Charge, after: Duration },
    /// The cost alone is more than the limit admits at once: never admitted.
    TooLarge { charge: Charge },
}

/// A store of per-key rate state. `check` admits a request against every charge at once or
/// against none: a refused request spends nothing on any limit.
pub trait RateLimiter: Send + Sync {
    /// `now` is the time since a fixed origin, the same origin for every call.
    fn check(&self, key: &str, charges: &[Charge], now: Duration) -> Result<(), Refusal>;
}

/// One GCRA step, in exact integers. Time is counted in units where a nanosecond is
/// `per_minute` units and one unit of cost is `MINUTE_NS` units (the emission interval,
/// 60 s / N, is then exactly `MINUTE_NS` units, whatever N). `tat` is the theoretical
/// arrival time; the burst tolerance is a whole minute's allowance (`N` costs).
/// Returns the new `tat`, or how long until this cost would fit.
fn gcra(tat: u128, now: Duration, per_minute: u64, cost: u64) -> Result<u128, Duration> {
    let n = u128::from(per_minute.max(1));
    let now_units = now.as_nanos().saturating_mul(n);
    let new_tat = tat
        .max(now_units)
        .saturating_add(u128::from(cost).saturating_mul(MINUTE_NS));
    let allowed_until = now_units.saturating_add(n.saturating_mul(MINUTE_NS));
    if new_tat <= allowed_until {
        Ok(new_tat)
    } else {
        let wait_ns = (new_tat - allowed_until).div_ceil(n);
        Err(Duration::from_nanos(
            u64::try_from(wait_ns).unwrap_or(u64::MAX),
        ))
    }
}

/// A key's state: per dimension, the limit its `tat` is expressed for and the `tat`.
type KeyState = [(u64, u128); 2];
/// One lock shard: key id to its state.
type Shard = Mutex<HashMap<Box<str>, KeyState>>;

/// The in-process store: `SHARDS` maps from key id to its state, each behind its own lock.
pub struct LocalLimiter {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RateLimiter for LocalLimiter {
    fn check(&self, key: &str, charges: &[Charge], now: Duration) -> Result<(), Refusal> {
        if charges.is_empty() {
            return Ok(());
        }
        if let Some(&charge) = charges.iter().find(|c| c.cost > c.per_minute) {
            return Err(Refusal::TooLarge { charge });
        }
        let shard = &self.shards[self.hasher.hash_one(key) as usize & (SHARDS - 1)];
        // Nothing below can panic, so a poisoned lock still holds consistent state.
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let state = match map.get_mut(key) {
            Some(state) => state,
            None => map.entry(key.into()).or_insert([(0, 0); 2]),
        };
        let mut next = *state;
        for &charge in charges {
            let (limit, tat) = &mut next[charge.dimension.index()];
            if *limit != charge.per_minute {
                // The key's plan changed: keep the same instant in the new units.
                *tat = if *limit == 0 {
                    0
                } else {
                    (*tat / u128::from(*limit)).saturating_mul(u128::from(charge.per_minute))
                };
                *limit = charge.per_minute;
            }
            match gcra(*tat, now, charge.per_minute, charge.cost) {
                Ok(new_tat) => *tat = new_tat,
                Err(after) => return Err(Refusal::RetryAfter { charge, after }),
            }
        }
        *state = next;
        Ok(())
    }
}

/// Per-minute limits kept where admission can reach them: in this process ([`Limits`]), or
/// shared by a fleet (implemented in `fleet/`). The GCRA and the refusals are the same
/// whatever the store; only where the arrival times live differs.
#[async_trait::async_trait]
pub trait RateStore: Send + Sync {
    /// Admit a request against every charge at once, or none: 429 `rate_limited` (with
    /// `Retry-After`) when over one, 413 `input_too_long` when a cost alone is more than its
    /// limit admits at once.
    async fn check(&self, key: &str, charges: &Charges) -> Result<(), FluxError>;
}

/// Rates in this process: a store and the clock it is read with.
pub struct Limits {
    limiter: Box<dyn RateLimiter>,
    origin: Instant,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(Box::new(LocalLimiter::new()))
    }
}

impl Limits {
    pub fn new(limiter: Box<dyn RateLimiter>) -> Self {
        Limits {
            limiter,
            origin: Instant::now(),
        }
    }

    /// Admit in this process, against `1/share` of each limit (a fleet's gateway while the
    /// shared store is down takes its share; alone, the share is 1).
    pub fn check_share(&self, key: &str, charges: &Charges, share: u64) -> Result<(), FluxError> {
        if charges.is_empty() {
            return Ok(());
        }
        let mut list = charges.list;
        let list = &mut list[..charges.n];
        if share > 1 {
            for c in list.iter_mut() {
                c.per_minute = c.per_minute.div_ceil(share).max(1);
            }
        }
        self.limiter
            .check(key, list, self.origin.elapsed())
            .map_err(|refusal| refused(refusal, charges.input_tokens))
    }
}

#[async_trait::async_trait]
impl RateStore for Limits {
    async fn check(&self, key: &str, charges: &Charges) -> Result<(), FluxError> {
        self.check_share(key, charges, 1)
    }
}

/// What one request spends of its plan's per-minute limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charges {
    list: [Charge; 2],
    n: usize,
    input_tokens: u64,
}

impl Charges {
    /// The plan's requests and tokens per minute (those it sets) for a request of about
    /// `input_tokens`.
    pub fn of(plan: &Terms, input_tokens: u64) -> Charges {
        let mut list = [Charge {
            dimension: Dimension::Requests,
            per_minute: 0,
            cost: 0,
        }; 2];
        let mut n = 0;
        if let Some(per_minute) = plan.requests_per_minute {
            list[n] = Charge {
                dimension: Dimension::Requests,
                per_minute,
                cost: 1,
            };
            n += 1;
        }
        if let Some(per_minute) = plan.tokens_per_minute {
            list[n] = Charge {
                dimension: Dimension::Tokens,
                per_minute,
                cost: input_tokens,
            };
            n += 1;
        }
        Charges {
            list,
            n,
            input_tokens,
        }
    }

    pub fn as_slice(&self) -> &[Charge] {
        &self.list[..self.n]
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// 413 `input_too_long` when the request alone is more than a limit admits at once.
    pub fn check_size(&self) -> Result<(), FluxError> {
        match self.as_slice().iter().find(|c| c.cost > c.per_minute) {
            Some(&charge) => Err(refused(Refusal::TooLarge { charge }, self.input_tokens)),
            None => Ok(()),
        }
    }

    /// The 429 of charge `index` refusing the request for `after`.
    pub fn refused(&self, index: usize, after: Duration) -> FluxError {
        let charge = self.list[index.min(self.n.saturating_sub(1))];
        refused(Refusal::RetryAfter { charge, after }, self.input_tokens)
    }
}

fn refused(refusal: Refusal, input_tokens: u64) -> FluxError {
    match refusal {
        Refusal::TooLarge { charge } => FluxError::new(
            ErrorKind::InputTooLong,
            format!(
                "This input is about {input_tokens} tokens, about {} tokens over the \
                 {}-token limit of your plan (its tokens per minute); trim the history or \
                 upgrade.",
                input_tokens.saturating_sub(charge.per_minute),
                charge.per_minute
            ),
        ),
        Refusal::RetryAfter { charge, after } => {
            let seconds = retry_after_seconds(after);
            let what = match charge.dimension {
                Dimension::Requests => {
                    format!("{} requests per minute for your plan", charge.per_minute)
                }
                Dimension::Tokens => format!(
                    "{} input tokens per minute for your plan (this request is about {} \
                     tokens)",
                    charge.per_minute, charge.cost
                ),
            };
            FluxError::new(
                ErrorKind::RateLimited,
                format!(
                    "Rate limited: {what}. Retry after {seconds} s (Retry-After), or reduce \
                     concurrency."
                ),
            )
            .retry_after(seconds)
        }
    }
}

/// Whole seconds to wait, rounded up (a positive wait is never 0 s).
pub fn retry_after_seconds(after: Duration) -> u64 {
    let s = after.as_secs();
    if after.subsec_nanos() > 0 || s == 0 {
        s + 1
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn rpm(per_minute: u64) -> Charge {
        Charge {
            dimension: Dimension::Requests,
            per_minute,
            cost: 1,
        }
    }

    fn tpm(per_minute: u64, cost: u64) -> Charge {
        Charge {
            dimension: Dimension::Tokens,
            per_minute,
            cost,
        }
    }

    const T0: Duration = Duration::from_secs(1_000);

    #[test]
    fn a_burst_of_exactly_n_then_one_per_interval() {
        let l = LocalLimiter::new();
        for i in 0..600 {
            assert!(l.check("k", &[rpm(600)], T0).is_ok(), "request {i}");
        }
        // The 601st waits exactly one emission interval (100 ms).
        let Err(Refusal::RetryAfter { after, .. }) = l.check("k", &[rpm(600)], T0) else {
            panic!("601st admitted")
        };
        assert_eq!(after, Duration::from_millis(100));
        let step = Duration::from_millis(100);
        assert!(l
            .check("k", &[rpm(600)], T0 + step - Duration::from_nanos(1))
            .is_err());
        assert!(l.check("k", &[rpm(600)], T0 + step).is_ok());
        assert!(l.check("k", &[rpm(600)], T0 + step).is_err());
        // Another key is untouched.
        assert!(l.check("other", &[rpm(600)], T0).is_ok());
    }

    #[test]
    fn intervals_that_are_not_whole_nanoseconds_stay_exact() {
        // 7 per minute: 8.571428…s between requests. Over exactly 60 s after the burst, 7
        // more are admitted, not 6 or 8, with no drift from rounding.
        let l = LocalLimiter::new();
        let admitted = |from: Duration, to: Duration, step: Duration| {
            let mut n = 0;
            let mut t = from;
            while t <= to {
                while l.check("k", &[rpm(7)], t).is_ok() {
                    n += 1;
                }
                t += step;
            }
            n
        };
        assert_eq!(admitted(T0, T0, Duration::from_secs(1)), 7);
        let ms = Duration::from_millis(1);
        assert_eq!(admitted(T0 + ms, T0 + Duration::from_secs(60), ms), 7);
        assert_eq!(
            admitted(
                T0 + Duration::from_secs(60) + ms,
                T0 + Duration::from_secs(600),
                ms
            ),
            63
        );
    }

    #[test]
    fn allowed_over_a_span_is_burst_plus_rate_times_elapsed() {
        let l = LocalLimiter::new();
        let mut admitted = 0u64;
        // Attempts every 7 ms for 30 s against 1000 per minute.
        let mut t = T0;
        while t <= T0 + Duration::from_secs(30) {
            if l.check("k", &[rpm(1000)], t).is_ok() {
                admitted += 1;
            }
            t += Duration::from_millis(7);
        }
        let expected = 1000 + 1000 * 30 / 60;
        assert!(admitted.abs_diff(expected) <= 1, "{admitted} vs {expected}");
    }

    #[test]
    fn a_refused_request_spends_nothing_on_any_limit() {
        let l = LocalLimiter::new();
        assert!(l.check("k", &[rpm(10), tpm(100, 90)], T0).is_ok());
        // Tokens refuse: requests must not be spent either.
        for _ in 0..20 {
            let r = l.check("k", &[rpm(10), tpm(100, 20)], T0);
            assert!(
                matches!(r, Err(Refusal::RetryAfter { charge, .. }) if charge.dimension == Dimension::Tokens)
            );
        }
        for _ in 0..9 {
            assert!(l.check("k", &[rpm(10), tpm(100, 1)], T0).is_ok());
        }
        let r = l.check("k", &[rpm(10), tpm(100, 0)], T0);
        assert!(
            matches!(r, Err(Refusal::RetryAfter { charge, after }) if charge.dimension == Dimension::Requests && after == Duration::from_secs(6))
        );
    }

    #[test]
    fn token_costs_refill_at_the_rate() {
        let l = LocalLimiter::new();
        assert!(l.check("k", &[tpm(60_000, 60_000)], T0).is_ok());
        let Err(Refusal::RetryAfter { after, .. }) = l.check("k", &[tpm(60_000, 5_000)], T0) else {
            panic!()
        };
        // 1,000 tokens a second: 5,000 need 5 s.
        assert_eq!(after, Duration::from_secs(5));
        assert!(l
            .check("k", &[tpm(60_000, 5_000)], T0 + Duration::from_secs(5))
            .is_ok());
        // A cost above the whole minute's allowance can never pass.
        assert_eq!(
            l.check("k", &[tpm(60_000, 60_001)], T0 + Duration::from_secs(3600)),
            Err(Refusal::TooLarge {
                charge: tpm(60_000, 60_001)
            })
        );
        // Exactly the allowance passes on a rested key.
        assert!(l.check("fresh", &[tpm(60_000, 60_000)], T0).is_ok());
    }

    #[test]
    fn a_changed_limit_keeps_the_key_s_position_in_time() {
        let l = LocalLimiter::new();
        for _ in 0..60 {
            assert!(l.check("k", &[rpm(60)], T0).is_ok());
        }
        // Now 120 per minute: the key is still a minute ahead (its whole tolerance), so the
        // next request fits one new interval (0.5 s) later, not at once and not 1 s later.
        assert!(l.check("k", &[rpm(120)], T0).is_err());
        let half = Duration::from_millis(500);
        assert!(l
            .check("k", &[rpm(120)], T0 + half - Duration::from_nanos(1))
            .is_err());
        assert!(l.check("k", &[rpm(120)], T0 + half).is_ok());
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_burst() {
        let l = Arc::new(LocalLimiter::new());
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, admitted) = (l.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        for key in ["a", "b"] {
                            if l.check(key, &[rpm(2_500)], T0).is_ok() {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 2 * 2_500);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
