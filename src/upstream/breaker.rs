//! A target's health, one mechanism on atomics only (no lock on the request path): a circuit
//! breaker that also ejects for a provider's 429.
//!
//! Closed: every request goes through; `threshold` consecutive failures open it. Open: the
//! provider is skipped at once (no connect timeout paid) until its time is up; then the first
//! request to ask becomes the one probe (half-open) while the others keep skipping. The
//! probe's success closes the breaker; its failure opens it again for twice as long (up to
//! 16 times the cooldown); a probe abandoned without a verdict (the client left) lets the
//! next request probe at once.
//!
//! A 429 opens it too ([`Breaker::throttle`]), for the provider's `Retry-After` when it gives
//! one and otherwise for an exponential backoff from one second: a provider that asks for
//! room gets it, and no request reaches it meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A breaker's state, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Pass,
    /// The one request that tests the provider after a cooldown.
    Probe,
    /// Skip the provider; it may be tried again after this long (zero while a probe is out).
    /// `throttled`: it was ejected by a 429, not by failures.
    Skip { left: Duration, throttled: bool },
}

/// How an attempt the breaker admitted ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Neither: the client left, or the request was the provider's business (a 4xx).
    Abandoned,
}

#[derive(Debug)]
pub struct Breaker {
    /// 0: never opens.
    threshold: u32,
    cooldown_ms: u64,
    state: AtomicU8,
    consecutive: AtomicU32,
    /// Milliseconds since `epoch` at which an open breaker lets a probe through.
    reopen_at_ms: AtomicU64,
    /// Times it opened since the last success (the next cooldown doubles with each).
    opened: AtomicU32,
    /// 429s since the last success (the backoff of one without `Retry-After` doubles).
    throttles: AtomicU32,
    /// Whether it is open for a 429 rather than for failures.
    throttled: AtomicBool,
    epoch: Instant,
}

/// The longest a cooldown grows to, in multiples of the configured one.
const MAX_COOLDOWN_FACTOR: u64 = 16;
/// A 429 without `Retry-After` ejects for this long, doubling with each further one.
const THROTTLE_BACKOFF_MS: u64 = 1_000;
/// The longest any 429 ejects for, whatever `Retry-After` says.
pub const MAX_THROTTLE: Duration = Duration::from_secs(600);

/// What [`Breaker::record`] changed, so the caller can log transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            reopen_at_ms: AtomicU64::new(0),
            opened: AtomicU32::new(0),
            throttles: AtomicU32::new(0),
            throttled: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    pub fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// May a request go to this provider now?
    pub fn admit(&self) -> Admission {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Pass,
            OPEN => {
                let now = self.now_ms();
                let at = self.reopen_at_ms.load(Ordering::Acquire);
                if now < at {
                    return Admission::Skip {
                        left: Duration::from_millis(at - now),
                        throttled: self.throttled.load(Ordering::Acquire),
                    };
                }
                match self.state.compare_exchange(
                    OPEN,
                    HALF_OPEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => Admission::Probe,
                    Err(CLOSED) => Admission::Pass,
                    Err(_) => self.probing(),
                }
            }
            _ => self.probing(),
        }
    }

    fn probing(&self) -> Admission {
        Admission::Skip {
            left: Duration::ZERO,
            throttled: self.throttled.load(Ordering::Acquire),
        }
    }

    /// Consecutive failures so far (while closed), to weigh a target's health.
    pub fn failures(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    /// Whether requests skip it now (open, or half-open with its probe out).
    pub fn ejected(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => false,
            OPEN => self.now_ms() < self.reopen_at_ms.load(Ordering::Acquire),
            _ => true,
        }
    }

    /// The provider answered 429: eject it for `retry_after` (its header), else for a
    /// backoff doubling from one second with each 429 since its last success. Returns how
    /// long. Not a failure: the breaker's failure count is untouched.
    pub fn throttle(&self, retry_after: Option<Duration>) -> Duration {
        let n = self.throttles.fetch_add(1, Ordering::AcqRel);
        let backoff = || {
            let ms = THROTTLE_BACKOFF_MS << n.min(16);
            Duration::from_millis(ms).min(self.cooldown() * MAX_COOLDOWN_FACTOR as u32)
        };
        let d = retry_after.unwrap_or_else(backoff).min(MAX_THROTTLE);
        if d.is_zero() {
            return d;
        }
        let until = self.now_ms().saturating_add(d.as_millis() as u64);
        // Never shortens an ejection already longer.
        self.reopen_at_ms.fetch_max(until, Ordering::AcqRel);
        self.throttled.store(true, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
        d
    }

    /// Record how an admitted attempt ended (`probe`: it was admitted as the probe).
    pub fn record(&self, probe: bool, verdict: Verdict) -> Transition {
        match verdict {
            Verdict::Success => {
                self.consecutive.store(0, Ordering::Release);
                self.opened.store(0, Ordering::Release);
                self.throttles.store(0, Ordering::Release);
                // An answer that was on its way when a 429 ejected the provider does not end
                // the ejection: the provider asked for that long.
                if self.throttled.load(Ordering::Acquire)
                    && self.now_ms() < self.reopen_at_ms.load(Ordering::Acquire)
                {
                    return Transition::None;
                }
                if self.state.swap(CLOSED, Ordering::AcqRel) == CLOSED {
                    Transition::None
                } else {
                    Transition::Closed
                }
            }
            Verdict::Abandoned => {
                if probe {
                    // Let the next request probe at once: the deadline has already passed.
                    let _ = self.state.compare_exchange(
                        HALF_OPEN,
                        OPEN,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                Transition::None
            }
            Verdict::Failure if self.threshold == 0 => Transition::None,
            Verdict::Failure if probe => {
                self.open_until_cooldown();
                self.state.store(OPEN, Ordering::Release);
                Transition::Opened
            }
            Verdict::Failure => {
                let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                if n < self.threshold {
                    return Transition::None;
                }
                // The deadline is set before the state flips, so nobody sees an open breaker
                // with a stale deadline.
                self.open_until_cooldown();
                match self
                    .state
                    .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Transition::Opened,
                    Err(_) => Transition::None,
                }
            }
        }
    }

    /// Set the deadline of the next probe: the cooldown, doubled for each opening since the
    /// last success.
    fn open_until_cooldown(&self) {
        let n = self.opened.fetch_add(1, Ordering::AcqRel);
        let factor = (1u64 << n.min(8)).min(MAX_COOLDOWN_FACTOR);
        self.throttled.store(false, Ordering::Release);
        self.reopen_at_ms.store(
            self.now_ms()
                .saturating_add(self.cooldown_ms.saturating_mul(factor)),
            Ordering::Release,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let b = Breaker::new(3, Duration::from_secs(60));
        assert_eq!(b.admit(), Admission::Pass);
        assert_eq!(b.record(false, Verdict::Failure), Transition::None);
        assert_eq!(b.record(false, Verdict::Failure), Transition::None);
        assert_eq!(b.record(false, Verdict::Success), Transition::None);
        assert_eq!(b.record(false, Verdict::Failure), Transition::None);
        assert_eq!(b.record(false, Verdict::Failure), Transition::None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.record(false, Verdict::Failure), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
        match b.admit() {
            Admission::Skip { left, throttled } => {
                assert!(left > Duration::from_secs(59), "{left:?}");
                assert!(!throttled);
            }
            other => panic!("{other:?}"),
        }
        // Failures still in flight when it opened change nothing.
        assert_eq!(b.record(false, Verdict::Failure), Transition::None);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_opens_for_one_probe_after_the_cooldown() {
        let b = Breaker::new(1, Duration::from_millis(30));
        assert_eq!(b.record(false, Verdict::Failure), Transition::Opened);
        assert!(matches!(b.admit(), Admission::Skip { .. }));
        assert!(b.ejected());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!b.ejected());
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe at a time.
        assert_eq!(
            b.admit(),
            Admission::Skip {
                left: Duration::ZERO,
                throttled: false
            }
        );
        // A failed probe opens it for twice the cooldown.
        assert_eq!(b.record(true, Verdict::Failure), Transition::Opened);
        match b.admit() {
            Admission::Skip { left, .. } => assert!(left > Duration::from_millis(40), "{left:?}"),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(b.admit(), Admission::Probe);
        // An abandoned probe hands the probe to the next request at once.
        assert_eq!(b.record(true, Verdict::Abandoned), Transition::None);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Probe);
        // A successful probe closes it.
        assert_eq!(b.record(true, Verdict::Success), Transition::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Pass);
    }

    #[test]
    fn a_429_ejects_for_its_retry_after_else_for_a_doubling_backoff() {
        let b = Breaker::new(3, Duration::from_secs(60));
        assert_eq!(
            b.throttle(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(b.state(), BreakerState::Open);
        match b.admit() {
            Admission::Skip { left, throttled } => {
                assert!(left > Duration::from_millis(4_900) && left <= Duration::from_secs(5));
                assert!(throttled);
            }
            other => panic!("{other:?}"),
        }
        // A shorter one never shortens it; without Retry-After: 1 s, 2 s, 4 s…
        let b = Breaker::new(3, Duration::from_secs(60));
        assert_eq!(b.throttle(None), Duration::from_secs(1));
        assert_eq!(b.throttle(None), Duration::from_secs(2));
        assert_eq!(b.throttle(None), Duration::from_secs(4));
        assert_eq!(
            b.throttle(Some(Duration::from_millis(10))),
            Duration::from_millis(10)
        );
        assert!(matches!(b.admit(), Admission::Skip { left, .. } if left > Duration::from_secs(3)));
        // Never longer than the cap, and a 429 is not a failure.
        assert_eq!(b.throttle(Some(Duration::from_secs(86_400))), MAX_THROTTLE);
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn an_ejection_ends_through_a_probe_and_a_success_resets_the_backoff() {
        let b = Breaker::new(3, Duration::from_secs(60));
        b.throttle(Some(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.record(true, Verdict::Success), Transition::Closed);
        assert_eq!(b.admit(), Admission::Pass);
        assert_eq!(b.throttle(None), Duration::from_secs(1));
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            b.record(false, Verdict::Failure);
        }
        assert_eq!(b.admit(), Admission::Pass);
    }

    #[test]
    fn concurrent_failures_open_it_once() {
        let b = std::sync::Arc::new(Breaker::new(5, Duration::from_secs(60)));
        let opened: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| b.record(false, Verdict::Failure) == Transition::Opened)
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(opened, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
