//! The shared vocabulary at the bottom of the crate: amounts, token counts, prices, calendar
//! buckets and the clock. It imports nothing of the project, so every other module can use it
//! without an import running back up (wire formats count tokens, metering prices them, the
//! ledger buckets them by month and hour, all in the same units).
//!
//! - [`money`]: [`Usd`], exact integer dollars (pico-dollars), parsed from written amounts.
//! - [`usage`]: [`Usage`], token counts in one convention for every wire format.
//! - [`rates`]: [`Rates`], [`cost`] and [`worst_case`]: the price of a [`Usage`].
//! - [`calendar`]: [`Month`], [`hour_of`] and [`day_string`]: UTC buckets without a date library.
//! - [`clock`]: the wall clock as Unix time.

pub mod calendar;
pub mod clock;
pub mod money;
pub mod rates;
pub mod usage;

pub use calendar::{day_string, hour_of, BadMonth, Month};
pub use money::{BadAmount, Usd, PICOS_PER_USD};
pub use rates::{cost, worst_case, Rates};
pub use usage::Usage;
