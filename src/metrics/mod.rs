//! Prometheus metrics: recorded on the request path without a lock, rendered on scrape in
//! the text exposition format (served on the admin listener, behind the metrics token).
//!
//! Labels are bounded: endpoints, statuses, error codes and reasons are fixed lists; lanes,
//! models and providers are names from the configuration (the served model, never the id the
//! client sent). Never a key, a request id or free text.
//!
//! The exposition format is written here rather than through the `prometheus` crate: its
//! labelled families take a lock per lookup (2.7× the cost per request, measured), and it
//! reorders labels on the page. README "Prometheus metrics" has the numbers.

mod family;
mod recent;
mod render;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hashbrown::Equivalent;

pub use family::{Counter, Family, Histogram, LATENCY_BUCKETS, MAX_SERIES};
pub use recent::{Minute, Recent};
pub use render::{render, Live, TargetView};

/// `flux_requests_total`'s labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    endpoint: &'static str,
    lane: Box<str>,
    model: Box<str>,
    provider: Box<str>,
    status: u16,
}

/// The same labels, borrowed from the request (same fields, same order: same hash).
#[derive(Hash)]
struct RequestKeyRef<'a> {
    endpoint: &'static str,
    lane: &'a str,
    model: &'a str,
    provider: &'a str,
    status: u16,
}

impl Equivalent<RequestKey> for RequestKeyRef<'_> {
    fn equivalent(&self, k: &RequestKey) -> bool {
        self.status == k.status
            && self.endpoint == k.endpoint
            && self.lane == &*k.lane
            && self.model == &*k.model
            && self.provider == &*k.provider
    }
}

/// Two name labels (lane and model, provider and reason), owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair(Box<str>, Box<str>);

#[derive(Hash)]
struct PairRef<'a>(&'a str, &'a str);

impl Equivalent<Pair> for PairRef<'_> {
    fn equivalent(&self, k: &Pair) -> bool {
        self.0 == &*k.0 && self.1 == &*k.1
    }
}

impl PairRef<'_> {
    fn own(&self) -> Pair {
        Pair(self.0.into(), self.1.into())
    }
}

/// Per endpoint: latency histograms and bytes.
#[derive(Debug, Default)]
pub struct EndpointSeries {
    pub duration: Histogram,
    pub overhead: Histogram,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
}

/// Per lane and served model: tokens and money.
#[derive(Debug, Default)]
pub struct UsageSeries {
    pub input_tokens: Counter,
    pub cached_input_tokens: Counter,
    pub output_tokens: Counter,
    /// Nano-dollars: a u64 holds 18 billion dollars; a request's cost is exact to the
    /// pico-dollar in the ledger, and within a nano-dollar here.
    pub cost_nanos: Counter,
}

/// Per provider: attempts, fallbacks to it, and its time to first byte.
#[derive(Debug, Default)]
pub struct ProviderSeries {
    pub attempts: Counter,
    pub retries: Counter,
    pub ttfb: Histogram,
}

/// Fleet mode's Redis series: recorded by `fleet/`, rendered here. Indexed by operation, in
/// the order of [`FleetView::ops`].
#[derive(Debug, Default)]
pub struct RedisSeries {
    pub seconds: [Histogram; 7],
    pub errors: [Counter; 7],
    pub went_down: Counter,
    pub came_up: Counter,
    /// Settlements dropped because the replay queue was full (still in the node's ledger).
    pub settles_dropped: Counter,
}

/// What a scrape shows of fleet mode, handed over by `fleet/` (this module imports no fleet).
#[derive(Debug)]
pub struct FleetView<'a> {
    pub up: bool,
    /// Gateways with a recent heartbeat, this one included.
    pub gateways: u64,
    pub settlements_pending: usize,
    pub series: &'a RedisSeries,
    /// The operations' labels, in the series' index order.
    pub ops: [&'static str; 7],
}

/// One finished request, as `logging()` knows it.
pub struct Finished<'a> {
    pub endpoint: &'static str,
    pub lane: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub duration: Duration,
    /// The part of `duration` spent waiting on providers.
    pub upstream: Duration,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub usage: Option<crate::units::Usage>,
    pub cost: Option<crate::units::Usd>,
}

static REQUESTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A request being served: counted in `flux_requests_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn begin() -> Self {
        REQUESTS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight(())
    }

    pub fn count() -> usize {
        REQUESTS_IN_FLIGHT.load(Ordering::Relaxed)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        REQUESTS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an attempt at a provider failed, as a bounded label.
pub type Reason = &'static str;

#[derive(Default)]
pub struct Metrics {
    pub(crate) requests: Family<RequestKey, Counter>,
    pub(crate) endpoints: Family<&'static str, EndpointSeries>,
    pub(crate) usage: Family<Pair, UsageSeries>,
    pub(crate) errors: Family<(&'static str, &'static str), Counter>,
    pub(crate) limit_rejections: Family<&'static str, Counter>,
    pub(crate) providers: Family<Box<str>, ProviderSeries>,
    pub(crate) upstream_errors: Family<Pair, Counter>,
    pub(crate) upstream_skips: Family<Pair, Counter>,
    /// Providers ejected (a 429), by provider and reason.
    pub(crate) upstream_ejections: Family<Pair, Counter>,
    /// The policy hook's decisions, by outcome, and how long asking it took.
    pub(crate) policy_decisions: Family<&'static str, Counter>,
    pub(crate) policy_latency: Histogram,
    pub(crate) reloads: Family<(&'static str, &'static str), Counter>,
    /// Requests and connections refused by a per-address limit, by reason.
    pub(crate) address_refusals: Family<&'static str, Counter>,
    /// The last hour, minute by minute (the operator console's traffic view).
    pub recent: Recent,
    /// Each TLS certificate served and when it expires (unix seconds): written at start and
    /// on renewal, read by a scrape.
    pub(crate) certificates: arc_swap::ArcSwap<Vec<(Box<str>, i64)>>,
}

/// The error codes that mean a limit refused the request, and the kind each counts as.
pub fn limit_kind(code: &str) -> Option<&'static str> {
    Some(match code {
        "rate_limited" => "rate",
        "conversation_limit" => "conversation",
        "payload_too_large" => "payload_size",
        "input_too_long" => "input_tokens",
        "monthly_credit_exhausted" | "free_allowance_exhausted" => "credit",
        "spend_ceiling_reached" => "spend_ceiling",
        "key_spend_limit_reached" => "key_spend_limit",
        "hourly_limit_reached" => "hourly_spend",
        "account_on_hold" => "account_on_hold",
        "overloaded" => "concurrency",
        "premium_unavailable" => "premium_capacity",
        _ => return None,
    })
}

impl Metrics {
    /// Record a finished request (from `logging()`).
    pub fn request(&self, r: &Finished<'_>) {
        let key = RequestKeyRef {
            endpoint: r.endpoint,
            lane: r.lane,
            model: r.model,
            provider: r.provider,
            status: r.status,
        };
        let own = |k: &RequestKeyRef<'_>| RequestKey {
            endpoint: k.endpoint,
            lane: k.lane.into(),
            model: k.model.into(),
            provider: k.provider.into(),
            status: k.status,
        };
        self.requests.with(&key, own, |c| c.add(1));
        let minute = crate::units::clock::unix_now() / 60;
        self.recent.record(minute, r.status >= 400);
        self.endpoints.with(
            &r.endpoint,
            |e| *e,
            |s| {
                s.duration.observe(r.duration);
                s.overhead.observe(r.duration.saturating_sub(r.upstream));
                s.request_bytes.add(r.request_bytes as u64);
                s.response_bytes.add(r.response_bytes as u64);
            },
        );
        if r.usage.is_some() || r.cost.is_some() {
            let key = PairRef(r.lane, r.model);
            self.usage.with(&key, PairRef::own, |s| {
                if let Some(u) = r.usage {
                    s.input_tokens.add(u.input);
                    s.cached_input_tokens.add(u.cached_input);
                    s.output_tokens.add(u.output);
                }
                if let Some(c) = r.cost {
                    s.cost_nanos.add(c.0.div_ceil(1000));
                }
            });
        }
        if let Some(code) = r.error_code {
            self.errors.with(&(r.endpoint, code), |k| *k, |c| c.add(1));
            if let Some(kind) = limit_kind(code) {
                self.limit_rejections.with(&kind, |k| *k, |c| c.add(1));
            }
        }
    }

    /// An attempt at a provider begins; `retry` when it is not the request's first.
    pub fn attempt(&self, provider: &str, retry: bool) {
        self.providers.with(
            provider,
            |p: &str| p.into(),
            |s| {
                s.attempts.add(1);
                if retry {
                    s.retries.add(1);
                }
            },
        );
    }

    /// A provider's response header arrived this long after the attempt was sent.
    pub fn first_byte(&self, provider: &str, ttfb: Duration) {
        self.providers
            .with(provider, |p: &str| p.into(), |s| s.ttfb.observe(ttfb));
    }

    /// An attempt failed: `connect`, `timeout`, `bad_answer`, `auth`, `throttled`, …
    pub fn upstream_error(&self, provider: &str, reason: Reason) {
        self.upstream_errors
            .with(&PairRef(provider, reason), PairRef::own, |c| c.add(1));
    }

    /// A provider was passed over without an attempt: `breaker_open` or `busy`.
    pub fn upstream_skipped(&self, provider: &str, reason: Reason) {
        self.upstream_skips
            .with(&PairRef(provider, reason), PairRef::own, |c| c.add(1));
    }

    /// The policy hook decided (`allow`, `lane`, `targets`, `deny`, `cached`, `timeout`,
    /// `error`); `asked`: how long the call took, when one was made.
    pub fn policy_decision(&self, outcome: &'static str, asked: Option<Duration>) {
        self.policy_decisions.with(&outcome, |k| *k, |c| c.add(1));
        if let Some(d) = asked {
            self.policy_latency.observe(d);
        }
    }

    /// A provider was ejected for a while: `throttled` (a 429).
    pub fn upstream_ejected(&self, provider: &str, reason: Reason) {
        self.upstream_ejections
            .with(&PairRef(provider, reason), PairRef::own, |c| c.add(1));
    }

    /// A per-address limit refused a request or a connection: `failed_auth`,
    /// `requests_per_second` or `connections`.
    pub fn address_refused(&self, reason: &'static str) {
        self.address_refusals.with(&reason, |k| *k, |c| c.add(1));
    }

    /// A reload of `file` (`lanes` or `keys`) ended with `outcome` (`success` or `failure`).
    /// A TLS certificate now served (at start, or renewed), and its expiry.
    pub fn certificate_served(&self, name: &str, not_after: i64) {
        self.certificates.rcu(|current| {
            let mut next: Vec<(Box<str>, i64)> = current
                .iter()
                .filter(|(n, _)| &**n != name)
                .cloned()
                .collect();
            next.push((name.into(), not_after));
            next.sort();
            next
        });
    }

    pub fn reload(&self, file: &'static str, outcome: &'static str) {
        self.reloads.with(&(file, outcome), |k| *k, |c| c.add(1));
    }
}

#[cfg(test)]
mod tests;
