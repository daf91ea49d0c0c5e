//! `conf/fluxrouter.yaml`: listeners, Pingora settings, providers, plans, file locations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use super::listener::{CertificatePair, HstsConfig, Listener, PairChoice, TlsConfig};
use super::ConfigError;
use crate::errors::{Context, Error, Fault};
use crate::units::Usd;
use crate::wire::Format;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The client listeners: bare addresses (plaintext HTTP/1.1) or `{address, tls, h2c,
    /// proxy_protocol}` (see [`Listener`]).
    #[serde(default = "default_listen")]
    pub listen: Vec<Listener>,
    /// Proxies (address blocks) whose forwarding header names the client; from any other
    /// peer the header is ignored (README "Client addresses and abuse limits").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<crate::client_addr::Cidr>,
    /// The header those proxies write: `x-forwarded-for` or `forwarded` (RFC 7239).
    #[serde(default)]
    pub forwarded_header: crate::client_addr::ForwardedHeader,
    #[serde(default)]
    pub server: PingoraSettings,
    #[serde(default)]
    pub limits: RequestLimits,
    /// The keys file (hashes only), relative to this file: the declarative source of keys,
    /// for small and config-managed deployments.
    pub keys_file: PathBuf,
    /// The key store (SQLite), relative to this file: accounts and keys created one row at a
    /// time (`fluxrouter accounts`), served beside the keys file's. Absent:
    /// `accounts.sqlite` beside the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_store: Option<PathBuf>,
    /// The lanes file, relative to this file.
    pub lanes_file: PathBuf,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub plans: BTreeMap<String, PlanConfig>,
    /// The JSON access log: a destination (`stderr`, `off`, a file path), or
    /// `{destination, level, sample}`.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// The spend ledger.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The admin listener (operator endpoints); absent: none is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Deadlines, fallback pacing, circuit breakers, overload caps and the maintenance switch.
    #[serde(default)]
    pub traffic: TrafficConfig,
    /// Fleet mode: spend, reservations and rate limits shared with other gateways through
    /// Redis (or Valkey). Absent: this node keeps them itself and needs nothing external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// The operator's routing policy hook: asked about each generation request after
    /// routing, it may allow it, choose its lane or targets, or refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
}

/// `policy:` in the server config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Where decisions are asked for (POST, JSON), e.g. `http://127.0.0.1:8181/v1/route`.
    pub url: PolicyUrl,
    /// How long a decision may take; past it, `on_error` decides.
    #[serde(default = "default_policy_timeout_ms")]
    pub timeout_ms: u64,
    /// What a timeout, a refused connection or an unreadable answer means.
    #[serde(default)]
    pub on_error: PolicyOnError,
    /// How long an answer that names a cache key is kept when it gives no `ttl_ms` itself
    /// (0: only answers with their own `ttl_ms` are kept).
    #[serde(default)]
    pub cache_ttl_ms: u64,
    /// Send the last user turn's text (bounded) with each question; off by default: the
    /// hook sees the request's shape, never its words.
    #[serde(default)]
    pub include_prompt: bool,
}

fn default_policy_timeout_ms() -> u64 {
    50
}

/// A policy URL: a base URL (scheme, host, port) and its whole path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyUrl(pub BaseUrl);

impl TryFrom<String> for PolicyUrl {
    type Error = Error;
    fn try_from(url: String) -> Result<Self, Error> {
        BaseUrl::parse(&url).map(PolicyUrl)
    }
}

impl From<PolicyUrl> for String {
    fn from(u: PolicyUrl) -> String {
        u.0.into()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyOnError {
    /// Serve the request as the gateway routed it (fail open).
    #[default]
    Allow,
    /// Refuse it: 503 `policy_unavailable` (fail closed).
    Deny,
}

/// Where a fleet keeps what its gateways share, and what a gateway does without it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. Prefer `url_env` when it carries a password.
    #[serde(skip_serializing)]
    pub url: Option<String>,
    /// The environment variable holding the URL (used when `url` is absent).
    pub url_env: Option<String>,
    /// Prepended to every key, so several fleets (or other tenants) can share one Redis.
    pub key_prefix: String,
    /// For a `rediss://` URL: the CA (PEM) that signed the server's certificate, relative to
    /// this file. Absent: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Connections to Redis, each multiplexing every request's commands.
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Longest wait for one answer; past it Redis counts as down for this gateway.
    pub command_timeout_ms: u64,
    /// How often a gateway tells the fleet it is alive and, while Redis is down, tries it again.
    pub probe_interval_ms: u64,
    /// What a gateway does while Redis is unreachable or too slow.
    pub when_down: WhenRedisDown,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            url_env: None,
            key_prefix: "flux:".into(),
            tls_ca_file: None,
            pool_size: 2,
            connect_timeout_ms: 1_000,
            command_timeout_ms: 250,
            probe_interval_ms: 500,
            when_down: WhenRedisDown::default(),
        }
    }
}

/// The policy while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhenRedisDown {
    pub money: MoneyWhenDown,
    pub rate_limits: RatesWhenDown,
    /// `Retry-After` (seconds) on a 503 `ledger_unavailable`.
    pub retry_after_seconds: u64,
}

impl Default for WhenRedisDown {
    fn default() -> Self {
        WhenRedisDown {
            money: MoneyWhenDown::Refuse,
            rate_limits: RatesWhenDown::NodeShare,
            retry_after_seconds: 2,
        }
    }
}

/// Spend limits while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoneyWhenDown {
    /// Requests of accounts with a spend limit get 503 `ledger_unavailable`: no limit can be
    /// overshot. Accounts without one are served and billed when Redis returns.
    Refuse,
    /// Every request is served; limits are checked against this gateway's own record only,
    /// so a fleet of N can overshoot a limit up to N times. Availability over accuracy.
    Serve,
}

/// Per-minute limits while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RatesWhenDown {
    /// Each gateway enforces its share: the limit divided by the gateways last seen alive.
    NodeShare,
    /// Limited requests get 503 `ledger_unavailable`.
    Refuse,
}

impl RedisConfig {
    /// The URL, from the file or the environment.
    pub fn resolve_url(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        self.url
            .clone()
            .or_else(|| self.url_env.as_deref().and_then(env))
            .filter(|u| !u.is_empty())
    }
}

/// Traffic control for the upstream leg.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficConfig {
    /// Longest time from the first upstream attempt to a response starting, across every
    /// attempt and fallback (504 `upstream_timeout` after it). A stream that has started is
    /// bounded by the providers' `idle_ms` instead.
    pub total_deadline_ms: u64,
    /// Pause before the next fallback after a failed attempt; doubles with each failure
    /// (at most 8 times this), never past the deadline.
    pub retry_backoff_ms: u64,
    /// Upstream requests in flight across all providers; past it, 503 `overloaded` at once.
    /// Absent: no limit besides the providers' own `max_concurrent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_upstream: Option<usize>,
    /// `Retry-After` (seconds) on a 503 `overloaded`.
    pub overload_retry_after_s: u64,
    /// Consecutive failures (connect, timeout, 5xx, provider 401/403) that open a
    /// provider's circuit breaker; 0 disables the breakers.
    pub breaker_failures: u32,
    /// How long an open breaker skips its provider before one probe request is let through.
    pub breaker_cooldown_ms: u64,
    /// Answer every generation request with 503 `maintenance`.
    pub maintenance: bool,
    /// The message of that 503.
    pub maintenance_message: String,
    /// Its `Retry-After`, in seconds.
    pub maintenance_retry_after_s: u64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            total_deadline_ms: 300_000,
            retry_backoff_ms: 50,
            max_concurrent_upstream: None,
            overload_retry_after_s: 1,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
            maintenance: false,
            maintenance_message: "FluxRouter is down for scheduled maintenance; retry shortly."
                .into(),
            maintenance_retry_after_s: 60,
        }
    }
}

/// The spend ledger: one SQLite file that `fluxrouter usage` can read while the gateway runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The ledger file, relative to this file.
    pub path: PathBuf,
    /// Longest time from serving a request to committing its cost (what a crash can lose).
    pub flush_interval_ms: u64,
    /// How long a spend hold lives unsettled before it is released (a gateway killed mid
    /// request leaves its holds behind); longer than the longest request should take.
    pub hold_ttl_seconds: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            path: PathBuf::from("ledger.sqlite"),
            flush_interval_ms: 50,
            hold_ttl_seconds: 15 * 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin endpoints listen (keep it private: loopback or an internal address);
    /// entries have the client listeners' shape.
    pub listen: Vec<Listener>,
    /// The environment variable holding the admin token (never the token itself).
    pub token_env: String,
    /// The environment variable holding the token that reads `GET /metrics` (Prometheus).
    #[serde(default = "default_metrics_token_env")]
    pub metrics_token_env: String,
}

fn default_metrics_token_env() -> String {
    "FLUX_METRICS_TOKEN".into()
}

/// The shortest admin or metrics token accepted. With failed tokens limited per address, a
/// long random token (`openssl rand -hex 32`) is what makes guessing it hopeless.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

impl AdminConfig {
    /// The admin token and the metrics token from the environment (`None`: the variable is
    /// unset or empty, and every request needing that token is refused). A token shorter
    /// than [`MIN_ADMIN_TOKEN_CHARS`] is an error: the gateway does not start with it.
    pub fn tokens(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Option<String>, Option<String>), ConfigError> {
        let read = |field: &str, var: &str, what: &str| {
            let token = env(var).filter(|t| !t.is_empty());
            match &token {
                Some(t) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => Err(ConfigError::new(
                    Path::new(&format!("${var}")),
                    field,
                    format!(
                        "the {what} is {} characters; it must be at least {MIN_ADMIN_TOKEN_CHARS} \
                         (a random one: openssl rand -hex 32)",
                        t.chars().count()
                    ),
                )),
                _ => Ok(token),
            }
        };
        Ok((
            read("admin.token_env", &self.token_env, "admin token")?,
            read(
                "admin.metrics_token_env",
                &self.metrics_token_env,
                "metrics token",
            )?,
        ))
    }
}

/// The access log's settings; a bare string is the destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    /// `stderr`, `off`, or a file path (reopened on SIGUSR1, for logrotate).
    pub destination: String,
    /// `info`: every request; `error`: only failed ones.
    pub level: AccessLogLevel,
    /// The share of successful requests written, 0.0 to 1.0 (failures always are).
    pub sample: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogLevel {
    #[default]
    Info,
    Error,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            destination: "stderr".into(),
            level: AccessLogLevel::Info,
            sample: 1.0,
        }
    }
}

impl<'de> Deserialize<'de> for AccessLogConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default = "stderr")]
            destination: String,
            #[serde(default)]
            level: AccessLogLevel,
            #[serde(default = "one")]
            sample: f64,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Destination(String),
            Full(Full),
        }
        fn stderr() -> String {
            "stderr".into()
        }
        fn one() -> f64 {
            1.0
        }
        Ok(match Either::deserialize(d)? {
            Either::Destination(destination) => AccessLogConfig {
                destination,
                ..AccessLogConfig::default()
            },
            Either::Full(f) => AccessLogConfig {
                destination: f.destination,
                level: f.level,
                sample: f.sample,
            },
        })
    }
}

impl AccessLogConfig {
    pub fn options(&self) -> crate::access_log::Options {
        crate::access_log::Options {
            destination: self.destination.clone(),
            level: match self.level {
                AccessLogLevel::Info => crate::access_log::Level::Info,
                AccessLogLevel::Error => crate::access_log::Level::Error,
            },
            sample: self.sample,
        }
    }
}

fn default_listen() -> Vec<Listener> {
    vec![Listener::plain(
        "127.0.0.1:8080".parse().expect("literal address"),
    )]
}

/// The subset of Pingora's `ServerConf` an operator needs; the rest keeps Pingora's defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PingoraSettings {
    /// Worker threads for the gateway service (Pingora defaults to 1 per service).
    pub threads: usize,
    /// On SIGTERM, how long listeners keep accepting before shutdown starts.
    pub grace_period_seconds: u64,
    /// Then how long in-flight requests get to finish.
    pub graceful_shutdown_timeout_seconds: u64,
    pub pid_file: String,
    /// Where a new binary started with `-u` picks up the listening sockets.
    pub upgrade_sock: String,
    /// Idle upstream connections kept per provider pool.
    pub upstream_keepalive_pool_size: usize,
}

impl Default for PingoraSettings {
    fn default() -> Self {
        PingoraSettings {
            threads: 2,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 10,
            pid_file: "/tmp/fluxrouter.pid".into(),
            upgrade_sock: "/tmp/fluxrouter_upgrade.sock".into(),
            upstream_keepalive_pool_size: 128,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    /// Largest accepted request body, after gzip decoding (413 above it).
    pub max_body_bytes: usize,
    /// Largest non-streamed upstream response the gateway buffers.
    pub max_response_bytes: usize,
    /// Longest wait for the next piece of a request body (408 after it).
    pub body_read_timeout_ms: u64,
    /// Longest accepted `model` id, in bytes (400 above it).
    pub max_model_id_bytes: usize,
    /// Longest time to receive a whole request body, however steadily it trickles in (408
    /// after it): with `body_read_timeout_ms` this bounds a slow client's hold on a buffer.
    pub body_deadline_ms: u64,
    /// Total memory for request bodies being received or held, over all requests: bytes are
    /// counted as buffers grow (twice: the body and the copy sent to the provider), released
    /// when the request is done; past it requests get 503 `overloaded` with `Retry-After`.
    pub max_body_bytes_in_flight: usize,
    /// Longest time from a request's first byte to the end of its header (the connection is
    /// closed after a 408).
    pub header_timeout_ms: u64,
    /// How long an idle keep-alive connection (and a new one that has sent nothing) stays
    /// open; 0 turns keep-alive off.
    pub keepalive_timeout_seconds: u64,
    /// What one client address may do before authenticating.
    pub per_address: super::PerAddressLimits,
    /// HTTP/2 (TLS listeners by ALPN, h2c listeners): streams one connection may have open
    /// at once; a client opening more has them refused.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: the largest request header block (decoded) a client may send; one larger is
    /// refused (the HTTP/1.1 parser's own bound is 1 MiB).
    pub h2_max_header_list_bytes: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 32 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            body_read_timeout_ms: 60_000,
            max_model_id_bytes: 256,
            body_deadline_ms: 300_000,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            header_timeout_ms: 10_000,
            keepalive_timeout_seconds: 60,
            per_address: super::PerAddressLimits::default(),
            h2_max_concurrent_streams: 100,
            h2_max_header_list_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The wire format the provider speaks: `openai` (Chat Completions), `openai_responses`
    /// or `anthropic`.
    pub format: Format,
    /// e.g. `https://api.openai.com/v1`; the format's path (`/chat/completions`,
    /// `/responses`, `/messages`) is appended to it. Parsed once, here.
    pub base_url: BaseUrl,
    /// The environment variable holding this provider's key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub timeouts: ProviderTimeouts,
    /// Requests in flight to this provider; past it the provider is skipped (the next
    /// fallback is tried) and, with nothing left, the client gets 503 `overloaded`.
    /// Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// Speak HTTP/2 to the provider, many concurrent requests on one connection: over TLS
    /// ALPN offers `h2` and `http/1.1` (the provider chooses), over `http://` it is h2c with
    /// prior knowledge (the provider must speak it: there is nothing to fall back on).
    /// Absent: on for `https://` base URLs, off for `http://` ones ([`Self::speaks_http2`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
}

impl ProviderConfig {
    /// Whether requests to this provider offer HTTP/2. The default was measured (README,
    /// "HTTP/2 to providers"): 200 concurrent requests to one provider opened 200 HTTP/1.1
    /// connections, and far fewer HTTP/2 ones at the same answers. Offering it over TLS costs
    /// nothing when the provider declines (ALPN falls back to HTTP/1.1); over plaintext a
    /// provider that does not speak h2c would fail every request, so that is asked for.
    pub fn speaks_http2(&self) -> bool {
        self.http2.unwrap_or(self.base_url.tls)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderTimeouts {
    /// TCP (and TLS) connect.
    pub connect_ms: u64,
    /// From request sent to response header: models can think for a long time.
    pub first_byte_ms: u64,
    /// Longest silence between two body chunks (two stream events).
    pub idle_ms: u64,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        ProviderTimeouts {
            connect_ms: 5_000,
            first_byte_ms: 120_000,
            idle_ms: 120_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Lanes (by name) whose alias, models and flux-auto routing the plan may use.
    pub lanes: Vec<String>,
    /// A free allowance: `monthly_credit_usd` is a hard stop (402 free_allowance_exhausted).
    #[serde(default)]
    pub free: bool,
    /// Spend included each calendar month (UTC). Absent (and not free): no monthly credit
    /// limit, only the ceiling if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_credit_usd: Option<Usd>,
    /// Whether use continues past the included credit, at the lane rates, up to the
    /// account's spend ceiling. Without it the credit is a hard stop (402
    /// monthly_credit_exhausted).
    #[serde(default)]
    pub overage: bool,
    /// The account spend ceiling per month for plans with overage (a key may set its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_usd: Option<Usd>,
    /// A safety limit on spend within one clock hour (402 hourly_limit_reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_limit_usd: Option<Usd>,
    /// Whether premium lanes (`premium: true` in lanes.yaml) need a payment method on file.
    #[serde(default)]
    pub premium_needs_payment_method: bool,
    /// Requests per minute per key (429 rate_limited past it). A GCRA: up to this many at
    /// once, then one every 60/N seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Estimated input tokens per minute per key (429 rate_limited past it), counted at
    /// admission (body bytes / 4, images at a flat 1,000). Same GCRA as requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Messages in one request (429 conversation_limit past it: start a new conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<usize>,
    /// Estimated input tokens in one request (413 input_too_long past it), whatever the
    /// context windows of the plan's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
}

/// A provider base URL, split once at load.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1` or `/v1beta/openai` (may be empty).
    pub path: String,
}

impl TryFrom<String> for BaseUrl {
    type Error = Error;
    fn try_from(url: String) -> Result<Self, Error> {
        BaseUrl::parse(&url)
    }
}

impl From<BaseUrl> for String {
    fn from(b: BaseUrl) -> String {
        format!(
            "{}://{}{}",
            if b.tls { "https" } else { "http" },
            b.authority(),
            b.path
        )
    }
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |why: String| Error::new(Fault::Invalid, why);
        let uri: http::Uri = url
            .parse()
            .with_context(Fault::Invalid, || format!("'{url}' is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(invalid(format!(
                    "'{url}' must start with http:// or https://"
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(format!("'{url}' has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(invalid(format!("'{url}' must not have a query string")));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(BaseUrl {
            tls,
            host,
            port,
            path,
        })
    }

    /// The Host header: the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// The path a request of `format` goes to: the base path and the format's own path,
    /// never the client's path (a client's trailing slash or query stays with the client).
    pub fn endpoint(&self, format: Format) -> String {
        format!("{}{}", self.path, format.provider_path())
    }
}

impl ServerConfig {
    /// The key store's file (resolved at load).
    pub fn key_store_path(&self) -> PathBuf {
        self.key_store
            .clone()
            .unwrap_or_else(|| self.ledger.path.with_file_name("accounts.sqlite"))
    }

    /// Parse and validate. Relative file paths are resolved against the config file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
        Self::from_yaml(path, &text)
    }

    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: ServerConfig = super::parse_yaml(path, text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.keys_file = base.join(&config.keys_file);
        config.lanes_file = base.join(&config.lanes_file);
        config.ledger.path = base.join(&config.ledger.path);
        config.key_store = Some(match &config.key_store {
            Some(path) => base.join(path),
            None => config.ledger.path.with_file_name("accounts.sqlite"),
        });
        for l in config.listen.iter_mut() {
            l.resolve_paths(base);
        }
        for l in config.admin.iter_mut().flat_map(|a| a.listen.iter_mut()) {
            l.resolve_paths(base);
        }
        if let Some(ca) = config.redis.as_mut().and_then(|r| r.tls_ca_file.as_mut()) {
            *ca = base.join(&*ca);
        }
        if !matches!(config.access_log.destination.as_str(), "stderr" | "off") {
            config.access_log.destination = base
                .join(&config.access_log.destination)
                .to_string_lossy()
                .into_owned();
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |field: String, reason: String| Err(ConfigError::new(path, field, reason));
        if let Err((field, reason)) = super::listener::validate_all(&self.listen, "listen") {
            return err(field, reason);
        }
        if self.server.threads == 0 {
            return err("server.threads".into(), "must be at least 1".into());
        }
        if let Some(p) = &self.policy {
            if p.timeout_ms == 0 || p.timeout_ms > 10_000 {
                return err(
                    "policy.timeout_ms".into(),
                    "must be between 1 and 10000 (the hook sits on every request's path)".into(),
                );
            }
        }
        let l = &self.limits;
        if l.max_body_bytes == 0
            || l.max_response_bytes == 0
            || l.body_read_timeout_ms == 0
            || l.max_model_id_bytes == 0
            || l.body_deadline_ms == 0
            || l.header_timeout_ms == 0
            || l.h2_max_concurrent_streams == 0
            || l.h2_max_header_list_bytes == 0
        {
            return err("limits".into(), "limits must be positive".into());
        }
        if l.max_body_bytes_in_flight / 2 < l.max_body_bytes {
            return err(
                "limits.max_body_bytes_in_flight".into(),
                "must be at least twice limits.max_body_bytes (a body counts with the copy \
                 sent to the provider), or no body of the largest size could be received"
                    .into(),
            );
        }
        if let Some((field, reason)) = l.per_address.invalid() {
            return err(format!("limits.per_address.{field}"), reason);
        }
        if self.providers.is_empty() {
            return err("providers".into(), "at least one provider is needed".into());
        }
        for (name, provider) in &self.providers {
            if let Some(var) = &provider.api_key_env {
                if var.is_empty() || var.contains('=') {
                    return err(
                        format!("providers.{name}.api_key_env"),
                        "must name an environment variable".into(),
                    );
                }
            }
            let t = &provider.timeouts;
            if t.connect_ms == 0 || t.first_byte_ms == 0 || t.idle_ms == 0 {
                return err(
                    format!("providers.{name}.timeouts"),
                    "timeouts must be positive".into(),
                );
            }
            if provider.max_concurrent == Some(0) {
                return err(
                    format!("providers.{name}.max_concurrent"),
                    "must be at least 1 (leave it out for no limit)".into(),
                );
            }
        }
        let t = &self.traffic;
        if t.total_deadline_ms == 0 {
            return err(
                "traffic.total_deadline_ms".into(),
                "must be positive".into(),
            );
        }
        if t.max_concurrent_upstream == Some(0) {
            return err(
                "traffic.max_concurrent_upstream".into(),
                "must be at least 1 (leave it out for no limit)".into(),
            );
        }
        if t.breaker_failures > 0 && t.breaker_cooldown_ms == 0 {
            return err(
                "traffic.breaker_cooldown_ms".into(),
                "an open breaker needs a cooldown (set breaker_failures: 0 to disable)".into(),
            );
        }
        if self.ledger.path.file_name().is_none() {
            return err("ledger.path".into(), "must name a file".into());
        }
        if !(1..=10_000).contains(&self.ledger.flush_interval_ms) {
            return err(
                "ledger.flush_interval_ms".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if self.ledger.hold_ttl_seconds == 0 {
            return err("ledger.hold_ttl_seconds".into(), "must be positive".into());
        }
        if let Some(redis) = &self.redis {
            if redis.url.is_none() && redis.url_env.is_none() {
                return err(
                    "redis.url".into(),
                    "give url or url_env (the environment variable holding the URL)".into(),
                );
            }
            if redis.url.is_some() && redis.url_env.is_some() {
                return err("redis.url".into(), "give url or url_env, not both".into());
            }
            if !(1..=64).contains(&redis.pool_size) {
                return err("redis.pool_size".into(), "must be between 1 and 64".into());
            }
            if redis.connect_timeout_ms == 0
                || redis.command_timeout_ms == 0
                || redis.probe_interval_ms == 0
            {
                return err(
                    "redis".into(),
                    "timeouts and the probe interval must be positive".into(),
                );
            }
            if redis.key_prefix.contains(['{', '}']) {
                return err(
                    "redis.key_prefix".into(),
                    "may not contain braces (they mark Redis Cluster hash tags)".into(),
                );
            }
        }
        if let Some(admin) = &self.admin {
            if let Err((field, reason)) =
                super::listener::validate_all(&admin.listen, "admin.listen")
            {
                return err(field, reason);
            }
            if let Some(clash) = admin
                .listen
                .iter()
                .find(|a| self.listen.iter().any(|l| l.address == a.address))
            {
                return err(
                    "admin.listen".into(),
                    format!(
                        "{} is also a client listener; the admin listener needs its own",
                        clash.address
                    ),
                );
            }
            for (field, var) in [
                ("admin.token_env", &admin.token_env),
                ("admin.metrics_token_env", &admin.metrics_token_env),
            ] {
                if var.is_empty() || var.contains('=') {
                    return err(field.into(), "must name an environment variable".into());
                }
            }
        }
        let a = &self.access_log;
        if a.destination.is_empty() {
            return err(
                "access_log.destination".into(),
                "stderr, off, or a file path".into(),
            );
        }
        if !(0.0..=1.0).contains(&a.sample) {
            return err(
                "access_log.sample".into(),
                "the share of successful requests logged: from 0.0 to 1.0".into(),
            );
        }
        if self.plans.is_empty() {
            return err("plans".into(), "at least one plan is needed".into());
        }
        for (name, plan) in &self.plans {
            if plan.lanes.is_empty() {
                return err(format!("plans.{name}.lanes"), "a plan needs a lane".into());
            }
            if plan.free && plan.monthly_credit_usd.is_none() {
                return err(
                    format!("plans.{name}.monthly_credit_usd"),
                    "a free plan needs its monthly allowance".into(),
                );
            }
            if plan.overage && plan.monthly_credit_usd.is_none() {
                return err(
                    format!("plans.{name}.overage"),
                    "overage continues past a monthly credit; set monthly_credit_usd (0 for none)"
                        .into(),
                );
            }
            if plan.free && plan.overage {
                return err(
                    format!("plans.{name}.overage"),
                    "a free plan stops at its credit; it cannot have overage".into(),
                );
            }
            let zero = [
                ("requests_per_minute", plan.requests_per_minute == Some(0)),
                ("tokens_per_minute", plan.tokens_per_minute == Some(0)),
                ("max_messages", plan.max_messages == Some(0)),
                ("max_input_tokens", plan.max_input_tokens == Some(0)),
            ];
            if let Some((field, _)) = zero.iter().find(|(_, z)| *z) {
                return err(
                    format!("plans.{name}.{field}"),
                    "must be at least 1 (leave it out for no limit)".into(),
                );
            }
            if plan.overage && plan.ceiling_usd.is_none() {
                return err(
                    format!("plans.{name}.ceiling_usd"),
                    "a plan with overage needs a spend ceiling (no surprise bills)".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_split_and_name_each_format_path() {
        let b = BaseUrl::parse("https://api.openai.com/v1").unwrap();
        assert_eq!((b.tls, b.port), (true, 443));
        assert_eq!(b.authority(), "api.openai.com");
        assert_eq!(b.endpoint(Format::OpenAiChat), "/v1/chat/completions");
        assert_eq!(b.endpoint(Format::OpenAiResponses), "/v1/responses");
        let b = BaseUrl::parse("https://api.anthropic.com/v1/").unwrap();
        assert_eq!(b.endpoint(Format::Anthropic), "/v1/messages");
        let b = BaseUrl::parse("https://generativelanguage.googleapis.com/v1beta/openai/").unwrap();
        assert_eq!(
            b.endpoint(Format::OpenAiChat),
            "/v1beta/openai/chat/completions"
        );
        let b = BaseUrl::parse("http://[::1]:9000/_sim/fail500/v1").unwrap();
        assert_eq!(
            (b.host.as_str(), b.authority()),
            ("::1", "[::1]:9000".to_string())
        );
        assert_eq!(String::from(b.clone()), "http://[::1]:9000/_sim/fail500/v1");
        let b = BaseUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(b.endpoint(Format::OpenAiChat), "/chat/completions");
        assert!(BaseUrl::parse("ftp://x/v1").is_err());
        assert!(BaseUrl::parse("api.openai.com/v1").is_err());
        assert!(BaseUrl::parse("https://x/v1?key=1").is_err());
    }

    #[test]
    fn admin_and_metrics_tokens_shorter_than_32_characters_are_refused() {
        let admin = AdminConfig {
            listen: vec![Listener::plain("127.0.0.1:9".parse().unwrap())],
            token_env: "ADMIN".into(),
            metrics_token_env: "METRICS".into(),
        };
        let env = |admin: &str, metrics: &str| {
            let (admin, metrics) = (admin.to_string(), metrics.to_string());
            move |var: &str| Some(if var == "ADMIN" { &admin } else { &metrics }.clone())
        };
        let (long, short) = ("a".repeat(32), "b".repeat(31));
        let (long, short) = (long.as_str(), short.as_str());
        assert_eq!(
            admin.tokens(&env(long, long)).unwrap(),
            (Some(long.to_string()), Some(long.to_string()))
        );
        // Unset or empty: no token (every request needing it is refused), not an error.
        assert_eq!(admin.tokens(&|_| None).unwrap(), (None, None));
        assert_eq!(admin.tokens(&env("", long)).unwrap().0, None);
        let e = admin.tokens(&env(short, long)).unwrap_err().to_string();
        assert_eq!(
            e,
            "$ADMIN: admin.token_env: the admin token is 31 characters; it must be at least 32 \
             (a random one: openssl rand -hex 32)"
        );
        let e = admin.tokens(&env(long, short)).unwrap_err().to_string();
        assert!(
            e.starts_with("$METRICS: admin.metrics_token_env: the metrics token is 31"),
            "{e}"
        );
    }

    const MINIMAL: &str = r#"
keys_file: keys.yaml
lanes_file: ../lanes.yaml
providers:
  sim: { format: openai, base_url: "http://127.0.0.1:9/v1" }
plans:
  free: { lanes: [express] }
"#;

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = ServerConfig::from_yaml(Path::new("/etc/flux/conf/f.yaml"), MINIMAL).unwrap();
        assert_eq!(
            c.listen,
            vec![Listener::plain("127.0.0.1:8080".parse().unwrap())]
        );
        assert_eq!(c.limits.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(c.keys_file, Path::new("/etc/flux/conf/keys.yaml"));
        assert_eq!(c.lanes_file, Path::new("/etc/flux/conf/../lanes.yaml"));
        assert_eq!(c.ledger.path, Path::new("/etc/flux/conf/ledger.sqlite"));
        assert_eq!(c.ledger.flush_interval_ms, 50);
        assert_eq!(c.limits.max_model_id_bytes, 256);
        assert_eq!(c.plans["free"].requests_per_minute, None);
        let text = MINIMAL.replace(
            "[express] }",
            "[express], requests_per_minute: 60, tokens_per_minute: 100000, max_messages: 200, \
             max_input_tokens: 128000 }",
        );
        let c = ServerConfig::from_yaml(Path::new("/f.yaml"), &text).unwrap();
        let p = &c.plans["free"];
        assert_eq!(
            (
                p.requests_per_minute,
                p.tokens_per_minute,
                p.max_messages,
                p.max_input_tokens
            ),
            (Some(60), Some(100_000), Some(200), Some(128_000))
        );
        assert_eq!(c.traffic, TrafficConfig::default());
        assert_eq!(c.traffic.total_deadline_ms, 300_000);
        assert!(!c.traffic.maintenance);
        let text = format!(
            "{MINIMAL}\ntraffic: {{ maintenance: true, maintenance_message: back soon, breaker_failures: 3 }}\n"
        );
        let c = ServerConfig::from_yaml(Path::new("/etc/flux/conf/f.yaml"), &text).unwrap();
        assert!(c.traffic.maintenance);
        assert_eq!(c.traffic.maintenance_message, "back soon");
        assert_eq!(c.traffic.breaker_failures, 3);
        let text = format!("{MINIMAL}\nledger: {{ path: /var/lib/flux/spend.db }}\n");
        let c = ServerConfig::from_yaml(Path::new("/etc/flux/conf/f.yaml"), &text).unwrap();
        assert_eq!(c.ledger.path, Path::new("/var/lib/flux/spend.db"));
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let text = format!("{MINIMAL}\nlisten_on: [1]\n");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert!(e.reason.contains("listen_on"), "{e}");
        assert_eq!(e.file, Path::new("f.yaml"));
    }

    #[test]
    fn http2_is_offered_over_tls_by_default_and_over_plaintext_when_asked() {
        let providers = MINIMAL.replace(
            "  sim: { format: openai, base_url: \"http://127.0.0.1:9/v1\" }\n",
            "  plain: { format: openai, base_url: \"http://127.0.0.1:9/v1\" }\n\
             \x20 h2c: { format: openai, base_url: \"http://127.0.0.1:9/v1\", http2: true }\n\
             \x20 tls: { format: openai, base_url: \"https://127.0.0.1:9/v1\" }\n\
             \x20 tls_h1: { format: openai, base_url: \"https://127.0.0.1:9/v1\", http2: false }\n",
        );
        let c = ServerConfig::from_yaml(Path::new("f.yaml"), &providers).unwrap();
        let h2 = |name: &str| c.providers[name].speaks_http2();
        assert_eq!(
            [h2("plain"), h2("h2c"), h2("tls"), h2("tls_h1")],
            [false, true, true, false]
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let text = MINIMAL.replace("http://127.0.0.1:9/v1", "ftp://x/v1");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert!(e.reason.contains("must start with http"), "{e}");

        let text = MINIMAL.replace("format: openai", "format: smoke-signals");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert!(e.reason.contains("smoke-signals"), "{e}");

        let text = format!("{MINIMAL}\nserver: {{ threads: 0 }}\n");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert_eq!(e.field, "server.threads");

        let text = format!("{MINIMAL}\nledger: {{ flush_interval_ms: 0 }}\n");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert_eq!(e.field, "ledger.flush_interval_ms");
        let text = MINIMAL.replace("[express] }", "[express], requests_per_minute: 0 }");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert_eq!(e.field, "plans.free.requests_per_minute");
        let text = format!("{MINIMAL}\ntraffic: {{ max_concurrent_upstream: 0 }}\n");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert_eq!(e.field, "traffic.max_concurrent_upstream");
        let text = MINIMAL.replace("/v1\" }", "/v1\", max_concurrent: 0 }");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert_eq!(e.field, "providers.sim.max_concurrent");
        let text = MINIMAL.replace("/v1\" }", "/v1\", http2: sometimes }");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert!(e.reason.contains("providers.sim.http2"), "{e}");
        assert!(e.reason.contains("expected a boolean"), "{e}");

        let text = format!("{MINIMAL}\nledger: {{ file: x }}\n");
        let e = ServerConfig::from_yaml(Path::new("f.yaml"), &text).unwrap_err();
        assert!(e.reason.contains("file"), "{e}");
    }

    #[test]
    fn the_redis_section_is_checked_and_its_url_kept_out_of_serialization() {
        let load = |redis: &str| {
            ServerConfig::from_yaml(
                Path::new("/etc/flux/conf/f.yaml"),
                &format!("{MINIMAL}\nredis: {redis}\n"),
            )
        };
        let c = load("{ url_env: FLUX_REDIS_URL, tls_ca_file: ca.pem }").unwrap();
        let r = c.redis.as_ref().unwrap();
        assert_eq!(r.key_prefix, "flux:");
        assert_eq!(r.when_down, WhenRedisDown::default());
        assert_eq!(r.when_down.money, MoneyWhenDown::Refuse);
        assert_eq!(r.when_down.rate_limits, RatesWhenDown::NodeShare);
        assert_eq!(
            r.tls_ca_file.as_deref(),
            Some(Path::new("/etc/flux/conf/ca.pem"))
        );
        let env = |var: &str| (var == "FLUX_REDIS_URL").then(|| "redis://h:6379".to_string());
        assert_eq!(r.resolve_url(&env).as_deref(), Some("redis://h:6379"));
        assert_eq!(
            r.resolve_url(&|_| Some(String::new())),
            None,
            "empty is unset"
        );
        assert!(c.ledger.hold_ttl_seconds == 900);

        let c = load(
            "{ url: \"redis://:s3cret@h:6379\", when_down: { money: serve, rate_limits: refuse } }",
        )
        .unwrap();
        let r = c.redis.as_ref().unwrap();
        assert_eq!(
            (r.when_down.money, r.when_down.rate_limits),
            (MoneyWhenDown::Serve, RatesWhenDown::Refuse)
        );
        // A URL may carry a password: it is never written back out.
        let dumped = serde_norway::to_string(&c).unwrap();
        assert!(!dumped.contains("s3cret"), "{dumped}");

        for (redis, field) in [
            ("{ key_prefix: x }", "redis.url"),
            ("{ url: \"redis://h\", url_env: U }", "redis.url"),
            ("{ url: \"redis://h\", pool_size: 0 }", "redis.pool_size"),
            ("{ url: \"redis://h\", command_timeout_ms: 0 }", "redis"),
            (
                "{ url: \"redis://h\", key_prefix: \"{a}\" }",
                "redis.key_prefix",
            ),
        ] {
            let e = load(redis).unwrap_err();
            assert_eq!(e.field, field, "{redis}: {e}");
        }
        let e = load("{ url: \"redis://h\", when_down: { money: hope } }").unwrap_err();
        assert!(e.reason.contains("hope"), "{e}");
        let e = ServerConfig::from_yaml(
            Path::new("f.yaml"),
            &format!("{MINIMAL}\nledger: {{ hold_ttl_seconds: 0 }}\n"),
        )
        .unwrap_err();
        assert_eq!(e.field, "ledger.hold_ttl_seconds");
    }
}
