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
//! - Spend is bucketed by UTC month and hour ([`Month`], [`crate::units::hour_of`]).
//!
//! Wiring it into a server:
//!
//! ```no_run
//! # use fluxrouter::metering::ledger::*;
//! # use fluxrouter::units::{Usage, Usd};
//! # fn wire(config: &fluxrouter::config::ServerConfig) -> Result<(), Error> {
//! let ledger: std::sync::Arc<dyn Ledger> = std::sync::Arc::new(EmbeddedLedger::open(
//!     &config.ledger.path,
//!     LedgerOptions::from_config(&config.ledger),
//! )?);
//! // Before forwarding: compare with the key's limits.
//! let spent = ledger.spend("key_abc", 1_775_000_000);
//! // Once the response is done and its usage known.
//! let usage = Usage { input: 1200, cached_input: 1000, output: 80, ..Usage::default() };
//! ledger.record(&Entry::from_usage(
//!     1_775_000_000, "key_abc", "acct_abc", "fast", "gpt-x", "req_1", &usage, Usd(42),
//! ));
//! // After the server has stopped serving (Pingora's `run` returned).
//! ledger.close()?;
//! # Ok(()) }
//! ```

mod embedded;
mod store;
#[cfg(test)]
mod tests;

use serde::Serialize;

pub use crate::errors::Error;
use crate::units::{Month, Usage, Usd};

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
    /// The account the key belongs to (`acct_…`): its totals count every key's spend.
    pub account_id: &'a str,
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
    #[allow(clippy::too_many_arguments)]
    pub fn from_usage(
        at_unix: u64,
        key_id: &'a str,
        account_id: &'a str,
        lane: &'a str,
        model: &'a str,
        request_id: &'a str,
        usage: &Usage,
        cost: Usd,
    ) -> Self {
        Entry {
            at_unix,
            key_id,
            account_id,
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
    fn report(&self, month: Month, key_id: Option<&str>) -> Result<Vec<ReportRow>, Error>;

    /// Block until everything recorded before this call is durable (shutdown, tests).
    fn flush(&self) -> Result<(), Error>;

    /// Flush, then stop the background writer. Call it once the server has stopped serving:
    /// a graceful stop then loses nothing. Later records are counted in memory only.
    fn close(&self) -> Result<(), Error>;
}
