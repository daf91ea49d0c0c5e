//! A circuit breaker per provider, on atomics only (no lock on the request path).
//!
//! Closed: every request goes through; `threshold` consecutive failures open it. Open: the
//! provider is skipped at once (no connect timeout paid) until the cooldown has passed; then
//! the first request to ask becomes the one probe (half-open) while the others keep skipping.
//! The probe's success closes the breaker; its failure opens it for another cooldown; a probe
//! abandoned without a verdict (the client left) lets the next request probe at once.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
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
    Skip(Duration),
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
    epoch: Instant,
}

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
                    return Admission::Skip(Duration::from_millis(at - now));
                }
                match self.state.compare_exchange(
                    OPEN,
                    HALF_OPEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => Admission::Probe,
                    Err(CLOSED) => Admission::Pass,
                    Err(_) => Admission::Skip(Duration::ZERO),
                }
            }
            _ => Admission::Skip(Duration::ZERO),
        }
    }

    /// Record how an admitted attempt ended (`probe`: it was admitted as the probe).
    pub fn record(&self, probe: bool, verdict: Verdict) -> Transition {
        match verdict {
            Verdict::Success => {
                self.consecutive.store(0, Ordering::Release);
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

    fn open_until_cooldown(&self) {
        self.reopen_at_ms.store(
            self.now_ms().saturating_add(self.cooldown_ms),
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
            Admission::Skip(left) => assert!(left > Duration::from_secs(59), "{left:?}"),
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
        assert!(matches!(b.admit(), Admission::Skip(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe at a time.
        assert_eq!(b.admit(), Admission::Skip(Duration::ZERO));
        // A failed probe opens it for another cooldown.
        assert_eq!(b.record(true, Verdict::Failure), Transition::Opened);
        assert!(matches!(b.admit(), Admission::Skip(d) if d > Duration::ZERO));
        std::thread::sleep(Duration::from_millis(40));
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
