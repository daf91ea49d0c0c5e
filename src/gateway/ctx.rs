//! What one request carries through the pipeline: its facts for the log ([`RequestCtx`]) and
//! why the pipeline stopped early ([`Stop`]). A leaf of `gateway/`: the phases and their
//! helpers all read it, it reads none of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Account;
use crate::errors::FluxError;
use crate::headers;
use crate::routing::{LaneId, ModelId, RouteTable};
use crate::upstream::Provider;
use crate::wire::Format;

/// Per-request facts, filled in as the pipeline goes; `logging()` writes them out. Names
/// from the configuration are indices into the routing snapshot the request used, not copies.
pub struct RequestCtx {
    pub id: headers::RequestId,
    pub(super) started: Instant,
    pub(super) _in_flight: crate::metrics::InFlight,
    /// The client's address (`super::client::client_ip`), found once, in the first phase.
    pub(super) client_ip: Option<std::net::IpAddr>,
    pub(super) endpoint: Option<&'static str>,
    pub(super) account: Option<Arc<Account>>,
    /// The model id the client sent, bounded for the log.
    pub(super) original_model: Option<String>,
    /// The routing snapshot that served the request, and what it chose.
    pub(super) routes: Option<Arc<RouteTable>>,
    pub(super) lane: Option<LaneId>,
    pub(super) rule: Option<usize>,
    /// The classifier's probability for the lane, when it chose.
    pub(super) probability: Option<f32>,
    /// What put the first target first, when the lane spreads its traffic.
    pub(super) target_choice: Option<&'static str>,
    /// The conversation's identity, when routing needed one (remembered once served).
    pub(super) session: Option<u64>,
    /// Why flux-auto kept the conversation on its previous lane, if it did.
    pub(super) kept: Option<&'static str>,
    pub(super) served: Option<ModelId>,
    pub(super) provider: Option<Arc<Provider>>,
    pub(super) routed: Option<bool>,
    pub(super) status: u16,
    pub(super) error_code: Option<&'static str>,
    pub(super) attempts: u32,
    /// Each failed attempt's provider and reason.
    pub(super) failed: Vec<(Arc<Provider>, &'static str)>,
    pub(super) request_bytes: usize,
    pub(super) upstream_ttfb: Option<Duration>,
    /// Time spent waiting on providers: every attempt to its response header, and reading
    /// the body or the stream. The rest of the request's time is the gateway's own.
    pub(super) upstream_time: Duration,
    pub(super) stream: bool,
    /// The client's format, and the provider's when it differs (translated).
    pub(super) client_format: Option<Format>,
    pub(super) provider_format: Option<Format>,
    /// Top-level fields dropped because the provider's format has no place for them.
    pub(super) dropped_fields: usize,
    /// For a 405: the methods the path does answer.
    pub(super) allow: Option<&'static str>,
    /// What the provider reported, and what was billed for it.
    pub(super) usage: Option<crate::units::Usage>,
    pub(super) cost: Option<crate::units::Usd>,
    /// Where the request's time went (empty unless built with `stage-timing`).
    pub(super) stages: crate::stages::StageClock,
}

impl RequestCtx {
    /// An attempt at `provider` failed for `reason` (a fixed label); counted and kept for
    /// the log.
    pub(super) fn attempt_failed(
        &mut self,
        metrics: &crate::metrics::Metrics,
        provider: &Arc<Provider>,
        reason: &'static str,
    ) {
        metrics.upstream_error(&provider.name, reason);
        if self.failed.len() < crate::access_log::MAX_FAILED_ATTEMPTS {
            self.failed.push((provider.clone(), reason));
        }
    }

    /// The response comes from `model` at `provider`.
    pub(super) fn serve(&mut self, model: ModelId, provider: &Arc<Provider>) {
        self.served = Some(model);
        self.provider = Some(provider.clone());
    }

    /// The response that seemed to come is not used after all.
    pub(super) fn unserve(&mut self) {
        self.served = None;
        self.provider = None;
        self.routed = None;
    }
}

/// Why the pipeline stopped early: an answer for the client, or a broken downstream.
pub enum Stop {
    Reply(FluxError),
    Broken(Box<pingora::Error>),
}

impl From<FluxError> for Stop {
    fn from(e: FluxError) -> Self {
        Stop::Reply(e)
    }
}

impl From<Box<pingora::Error>> for Stop {
    fn from(e: Box<pingora::Error>) -> Self {
        Stop::Broken(e)
    }
}
