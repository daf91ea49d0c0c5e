//! FluxRouter: an OpenAI- and Anthropic-compatible LLM gateway on Pingora.
//!
//! The Pingora glue lives in [`gateway`]; everything it calls is plain Rust over plain types:
//! [`units`] (money, token counts, prices, calendar and clock: the bottom floor, importing
//! nothing of the crate),
//! [`config`] (files and validation), [`state`] (the hot-reloaded snapshot), [`auth`],
//! [`endpoints`], [`wire`] (client formats), [`routing`], [`admission`] (limits and spend
//! before a request goes upstream), [`upstream`] (providers),
//! [`errors`] and [`headers`]. [`simulate`] is a built-in provider for demos and tests.

pub mod access_log;
pub mod accounts;
pub mod address_limits;
pub mod admission;
pub mod auth;
pub mod background;
pub mod client_addr;
pub mod config;
pub mod console;
pub mod endpoints;
pub mod errors;
pub mod file_watch;
pub mod fleet;
pub mod gateway;
pub mod headers;
pub mod limits;
pub mod listener;
pub mod metering;
pub mod metrics;
pub mod policy;
pub mod routing;
pub mod server;
pub mod simulate;
pub mod stages;
pub mod state;
pub mod tokens;
pub mod units;
pub mod upstream;
pub mod wire;
