//! The last hour of traffic, minute by minute, for the operator console: requests and errors
//! per minute, recorded lock-free.
//!
//! Sixty slots indexed by the minute (unix minutes modulo 60), each tagged with the minute it
//! holds: a slot whose tag is older than the current minute is from an earlier hour and is
//! reset by the first request that lands in it.

use std::sync::atomic::{AtomicU64, Ordering};

const SLOTS: usize = 60;

#[derive(Debug, Default)]
struct Slot {
    /// Unix minute + 1 (0: never used).
    tag: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Requests and errors per minute over the last hour.
#[derive(Debug)]
pub struct Recent {
    slots: [Slot; SLOTS],
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

/// One minute of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Minute {
    /// Unix seconds at the start of the minute.
    pub at: u64,
    pub requests: u64,
    pub errors: u64,
}

impl Recent {
    /// Count a request answered in unix minute `minute` (an error: status 400 or more).
    pub fn record(&self, minute: u64, error: bool) {
        let slot = &self.slots[(minute % SLOTS as u64) as usize];
        let tag = minute + 1;
        let seen = slot.tag.load(Ordering::Acquire);
        if seen != tag {
            // First request of this minute in this slot: the one that moves the tag resets
            // the counts (a request racing it may be counted in the old minute: a count or
            // two, on a dashboard).
            if seen < tag
                && slot
                    .tag
                    .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.errors.store(0, Ordering::Relaxed);
            } else if slot.tag.load(Ordering::Acquire) != tag {
                return; // a request from a minute already gone: not counted
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The sixty minutes up to and including `now_minute`, oldest first (zeros for minutes
    /// without traffic).
    pub fn last_hour(&self, now_minute: u64) -> Vec<Minute> {
        (0..SLOTS as u64)
            .rev()
            .filter_map(|ago| now_minute.checked_sub(ago))
            .map(|minute| {
                let slot = &self.slots[(minute % SLOTS as u64) as usize];
                let current = slot.tag.load(Ordering::Acquire) == minute + 1;
                let count = |c: &AtomicU64| {
                    if current {
                        c.load(Ordering::Relaxed)
                    } else {
                        0
                    }
                };
                Minute {
                    at: minute * 60,
                    requests: count(&slot.requests),
                    errors: count(&slot.errors),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_minutes_with_old_slots_forgotten() {
        let r = Recent::default();
        let t = 29_000_000; // a unix minute
        r.record(t - 61, false); // over an hour ago, in the slot of t - 1
        for _ in 0..3 {
            r.record(t - 1, false);
        }
        r.record(t - 1, true);
        r.record(t, true);
        let hour = r.last_hour(t);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[0].at, (t - 59) * 60);
        assert_eq!(
            hour[59],
            Minute {
                at: t * 60,
                requests: 1,
                errors: 1
            }
        );
        assert_eq!((hour[58].requests, hour[58].errors), (4, 1));
        assert_eq!(hour.iter().map(|m| m.requests).sum::<u64>(), 5);
        // An hour later, all of it has aged out.
        assert!(r.last_hour(t + 60).iter().all(|m| m.requests == 0));
        // A late request for a minute already replaced is dropped, not mixed in.
        r.record(t + 59, false);
        r.record(t - 1, false);
        assert_eq!(r.last_hour(t + 59)[59].requests, 1);
    }
}
