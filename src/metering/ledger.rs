//! The spend ledger: what each key spent, per month and per hour, durable across restarts.
//!
//! The gateway calls [`Ledger::record`] once per served request with what it cost, and
//! [`Ledger::spend`] before forwarding one (monthly credit, spend ceiling, hourly safety
//! limit). Both are in-memory and never wait for I/O; durable writes happen in the background.
//!
//! - [`Ledger`]: the contract, so a shared (e.g. Redis) ledger for a fleet can follow.
//! - [`EmbeddedLedger`]: one SQLite file (WAL) with a writer thread that commits aggregated
//!   rows in batches; `fluxrouter usage` reads the same file with a [`LedgerReader`] while the
//!   gateway runs.
//! - [`Month`] and [`hour_of`]: UTC calendar buckets, computed without a date library.
//!
//! Wiring it into a server:
//!
//! ```no_run
//! # use fluxrouter::metering::{ledger::*, Usd};
//! # use fluxrouter::wire::ir::Usage;
//! # fn wire(config: &fluxrouter::config::ServerConfig) -> Result<(), LedgerError> {
//! let ledger: std::sync::Arc<dyn Ledger> = std::sync::Arc::new(EmbeddedLedger::open(
//!     &config.ledger.path,
//!     LedgerOptions::from_config(&config.ledger),
//! )?);
//! // Before forwarding: compare with the key's limits.
//! let spent = ledger.spend("key_abc", 1_775_000_000);
//! // Once the response is done and its usage known.
//! let usage = Usage { input: 1200, cached_input: 1000, output: 80, ..Usage::default() };
//! ledger.record(&Entry::from_usage(
//!     1_775_000_000, "key_abc", "fast", "gpt-x", "req_1", &usage, Usd(42),
//! ));
//! // After the server has stopped serving (Pingora's `run` returned).
//! ledger.close()?;
//! # Ok(()) }
//! ```

mod embedded;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::Usd;
use crate::wire::ir::Usage;

pub use embedded::{EmbeddedLedger, LedgerOptions, LedgerStats};
pub use store::{DayRow, EntryRow, LedgerReader};

/// What one served request cost, as the gateway knows it at the end of the request.
/// Borrowed, so building one allocates nothing; the ledger copies what it keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry<'a> {
    /// When the request was served (unix seconds, UTC): it decides the month and hour.
    pub at_unix: u64,
    /// The key's public id (`key_…`), never the key.
    pub key_id: &'a str,
    pub lane: &'a str,
    /// The provider model that served the request.
    pub model: &'a str,
    /// The gateway's request id (kept in the bounded recent-entries table).
    pub request_id: &'a str,
    pub cost: Usd,
    /// Every input token, cached or not (the IR's [`Usage`] convention).
    pub input_tokens: u64,
    /// The part of `input_tokens` read from the provider's cache.
    pub cached_input_tokens: u64,
    /// Every output token, reasoning included.
    pub output_tokens: u64,
}

impl<'a> Entry<'a> {
    /// An entry whose token counts come from a request's [`Usage`].
    pub fn from_usage(
        at_unix: u64,
        key_id: &'a str,
        lane: &'a str,
        model: &'a str,
        request_id: &'a str,
        usage: &Usage,
        cost: Usd,
    ) -> Self {
        Entry {
            at_unix,
            key_id,
            lane,
            model,
            request_id,
            cost,
            input_tokens: usage.input,
            cached_input_tokens: usage.cached_input.min(usage.input),
            output_tokens: usage.output,
        }
    }
}

/// A key's spend in the calendar month (UTC) and the clock hour (UTC) containing an instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub month: Usd,
    pub hour: Usd,
}

/// One line of a month's usage: a key's requests on one lane and model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub key_id: String,
    pub lane: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// Serialized as exact decimal dollars (`"0.0034"`).
    pub cost: Usd,
}

/// Why the ledger could not do something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerError(pub String);

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LedgerError {}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError(format!("ledger database: {e}"))
    }
}

/// The spend ledger. Implementations are shared by every request thread.
pub trait Ledger: Send + Sync {
    /// Count a served request. Never blocks on I/O: the cost is in [`Ledger::spend`] as soon
    /// as this returns, and reaches durable storage in the background.
    fn record(&self, entry: &Entry<'_>);

    /// What `key_id` spent in the UTC month and the UTC hour containing `now_unix`,
    /// everything recorded so far included. In-memory and cheap: called before forwarding.
    fn spend(&self, key_id: &str, now_unix: u64) -> Spend;

    /// A month's usage by key, lane and model (only `key_id`'s rows when given), sorted.
    /// Reads storage: call it off the request threads (admin endpoint, CLI). It shows what has
    /// been committed, which trails [`Ledger::record`] by at most one flush interval.
    fn report(&self, month: Month, key_id: Option<&str>) -> Result<Vec<ReportRow>, LedgerError>;

    /// Block until everything recorded before this call is durable (shutdown, tests).
    fn flush(&self) -> Result<(), LedgerError>;

    /// Flush, then stop the background writer. Call it once the server has stopped serving:
    /// a graceful stop then loses nothing. Later records are counted in memory only.
    fn close(&self) -> Result<(), LedgerError>;
}

/// A calendar month (UTC), as months since year 0: January 2026 is `2026 * 12 + 0`.
/// Written and parsed as `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(u32);

impl Month {
    /// From a year and a month number (1..=12).
    pub fn new(year: u32, month: u32) -> Option<Month> {
        (1..=12)
            .contains(&month)
            .then(|| Month(year * 12 + month - 1))
    }

    /// The month containing a unix instant (UTC).
    pub fn of(unix: u64) -> Month {
        let (year, month, _) = civil_from_days(unix / 86_400);
        Month(year * 12 + month - 1)
    }

    pub fn year(self) -> u32 {
        self.0 / 12
    }

    /// 1..=12.
    pub fn number(self) -> u32 {
        self.0 % 12 + 1
    }

    pub fn prev(self) -> Month {
        Month(self.0.saturating_sub(1))
    }

    pub fn next(self) -> Month {
        Month(self.0 + 1)
    }

    /// The unix second at which the month starts (00:00:00 UTC on the 1st).
    pub fn start_unix(self) -> u64 {
        days_from_civil(self.year(), self.number(), 1) * 86_400
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.number())
    }
}

impl FromStr for Month {
    type Err = LedgerError;

    /// `YYYY-MM`, e.g. `2026-03`.
    fn from_str(s: &str) -> Result<Month, LedgerError> {
        let bad = || LedgerError(format!("'{s}' is not a month like 2026-03"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let (y, m) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if y < 1970 {
            return Err(bad());
        }
        Month::new(y, m).ok_or_else(bad)
    }
}

/// A day counted from 1970-01-01 as `YYYY-MM-DD` (UTC).
pub fn day_string(day: u64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The clock hour (UTC) containing a unix instant, as hours since the epoch.
pub fn hour_of(unix: u64) -> u64 {
    unix / 3600
}

/// (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01, proleptic Gregorian.
/// Counts from 0000-03-01 so that the leap day ends a year, then splits the count into
/// 400-year cycles (146,097 days), years of the cycle, and five-month runs of 153 days.
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    const DAYS_0000_03_01_TO_EPOCH: u64 = 719_468;
    let z = days + DAYS_0000_03_01_TO_EPOCH;
    let cycle = z / 146_097;
    let day_of_cycle = z % 146_097;
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let march_based_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * march_based_month + 2) / 5 + 1;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    };
    let year = cycle * 400 + year_of_cycle + u64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

/// The inverse of [`civil_from_days`] for dates from 1970 on.
fn days_from_civil(year: u32, month: u32, day: u32) -> u64 {
    let (year, month, day) = (u64::from(year), u64::from(month), u64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let cycle = y / 400;
    let year_of_cycle = y % 400;
    let march_based_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * march_based_month + 2) / 5 + day - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    (cycle * 146_097 + day_of_cycle).saturating_sub(719_468)
}
