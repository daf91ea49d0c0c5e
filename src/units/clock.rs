//! The wall clock as Unix time. A clock before 1970 reads as 0 rather than failing: every
//! caller uses the time to bucket or stamp, never to decide whether something is valid.
//!
//! Code that tests need to move through time takes the clock as a value (a `fn() -> u64`
//! such as the ledger's `LedgerOptions::clock`, or `now` as an argument); [`unix_now`] is the
//! default such clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Unix milliseconds now (request ids).
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// Unix seconds now with the fraction, rounded to the millisecond (access log timestamps).
pub fn unix_secs_millis() -> f64 {
    (since_epoch().as_secs_f64() * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variants_read_the_same_clock() {
        let (s, ms, f) = (unix_now(), unix_millis(), unix_secs_millis());
        // 2020-01-01 or later, and the three agree to within a second.
        assert!(s > 1_577_836_800, "{s}");
        assert!(ms / 1000 >= s && ms / 1000 - s <= 1, "{s} {ms}");
        assert!(f >= s as f64 && f - (s as f64) < 2.0, "{s} {f}");
        assert_eq!(f, (f * 1e3).round() / 1e3);
    }
}
