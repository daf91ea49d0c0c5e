//! Providers and the exchange with them: peer, headers, key, timeouts.
//!
//! The gateway performs the upstream exchange itself (Pingora's pooled connector) rather than
//! through the proxy path, so bodies of any size pass and the response header can wait for
//! what the gateway learns from the upstream (see NOTES-pingora: the 64 KiB retry buffer).

pub mod breaker;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};

use crate::config::server::{BaseUrl, ProviderTimeouts};
use crate::config::ServerConfig;
use crate::wire::{AuthHeader, Format, ANTHROPIC_VERSION};

use breaker::{Admission, Breaker, BreakerState, Transition, Verdict};

/// A configured provider, ready for requests.
pub struct Provider {
    pub name: String,
    pub format: Format,
    pub base: BaseUrl,
    /// The request header every attempt starts from, built once (path, host, key, and the
    /// fixed fields): `[non-streamed, streamed]`, which differ in `Accept`. An attempt clones
    /// one and sets its length, instead of parsing and copying every name and value again.
    templates: Result<[RequestHeader; 2], String>,
    /// None while the host cannot be resolved; attempts then fail over. Re-resolved in the
    /// background ([`Provider::refresh_address`]), so a provider's DNS change is followed.
    peer: ArcSwapOption<HttpPeer>,
    /// The key from the provider's environment variable, as the header its format wants
    /// (`Authorization: Bearer …` or `x-api-key`), marked sensitive so it is never logged.
    auth: Option<(http::HeaderName, http::HeaderValue)>,
    pub timeouts: ProviderTimeouts,
    /// Whether the peer offers HTTP/2 (`providers.<name>.http2`).
    pub http2: bool,
    /// Skips the provider at once after repeated failures (see [`breaker`]).
    pub breaker: Breaker,
    /// Requests in flight to this provider, and the cap on them.
    inflight: AtomicUsize,
    max_concurrent: Option<usize>,
}

impl std::fmt::Debug for Provider {
    // Hand-written so the key can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("resolved", &self.peer.load().is_some())
            .field("has_key", &self.auth.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
    /// Upstream requests in flight across all providers, and the cap on them.
    inflight: AtomicUsize,
    max_concurrent: Option<usize>,
}

impl Providers {
    /// Resolve addresses and read keys from the environment. Runs at start, off the request
    /// path (DNS here is blocking). Problems are returned as warnings: a provider that cannot
    /// be reached is skipped over by fallbacks rather than stopping the gateway.
    pub fn build(
        config: &ServerConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut by_name = HashMap::new();
        for (name, p) in &config.providers {
            let base = p.base_url.clone();
            let auth = match &p.api_key_env {
                Some(var) => match env(var) {
                    Some(key) if !key.is_empty() => match auth_header(p.format, &key) {
                        Some(h) => Some(h),
                        None => {
                            warnings.push(format!("provider {name}: the key in {var} is not a valid header value; requests go without a key"));
                            None
                        }
                    },
                    _ => {
                        warnings.push(format!("provider {name}: environment variable {var} is not set; requests go without a key"));
                        None
                    }
                },
                None => None,
            };
            let http2 = p.speaks_http2();
            let peer = match (base.host.as_str(), base.port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(addr)) => Some(Arc::new(make_peer(addr, &base, &p.timeouts, http2))),
                Ok(None) | Err(_) => {
                    warnings.push(format!(
                        "provider {name}: cannot resolve {}; its models will fail over",
                        base.host
                    ));
                    None
                }
            };
            // A header that cannot be built fails each attempt, as building it per request did.
            let templates =
                request_templates(&base, p.format, auth.as_ref()).map_err(|e| e.to_string());
            let provider = Provider {
                name: name.clone(),
                format: p.format,
                templates,
                base,
                peer: ArcSwapOption::new(peer),
                auth,
                timeouts: p.timeouts.clone(),
                http2,
                breaker: Breaker::new(
                    config.traffic.breaker_failures,
                    Duration::from_millis(config.traffic.breaker_cooldown_ms),
                ),
                inflight: AtomicUsize::new(0),
                max_concurrent: p.max_concurrent,
            };
            by_name.insert(name.clone(), Arc::new(provider));
        }
        let providers = Providers {
            by_name,
            inflight: AtomicUsize::new(0),
            max_concurrent: config.traffic.max_concurrent_upstream,
        };
        (providers, warnings)
    }

    /// Ask for a provider: its breaker must let the request through and both concurrency caps
    /// (the provider's and the total) must have room. Nothing waits: a refusal is immediate.
    pub fn admit<'a>(&'a self, provider: &'a Provider) -> Result<Ticket<'a>, Refusal> {
        if let Some(max) = self.max_concurrent {
            if self.inflight.fetch_add(1, Ordering::AcqRel) >= max {
                self.inflight.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TotalBusy);
            }
        }
        // From here the total slot is held: the ticket (or this guard) gives it back.
        let total = TotalSlot(self.max_concurrent.map(|_| &self.inflight));
        if let Some(max) = provider.max_concurrent {
            if provider.inflight.fetch_add(1, Ordering::AcqRel) >= max {
                provider.inflight.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::ProviderBusy);
            }
        }
        let counted = provider.max_concurrent.is_some();
        let probe = match provider.breaker.admit() {
            Admission::Pass => false,
            Admission::Probe => true,
            Admission::Skip { left, throttled } => {
                if counted {
                    provider.inflight.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(Refusal::BreakerOpen { left, throttled });
            }
        };
        Ok(Ticket {
            provider,
            _total: total,
            counted,
            probe,
            settled: false,
        })
    }

    /// Every provider's breaker state, by name (for metrics).
    pub fn breaker_states(&self) -> Vec<(&str, BreakerState)> {
        let mut states: Vec<_> = self
            .by_name
            .values()
            .map(|p| (p.name.as_str(), p.breaker.state()))
            .collect();
        states.sort_unstable_by_key(|(name, _)| *name);
        states
    }

    /// Upstream requests in flight, counted while a total cap is configured.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}

/// The fixed part of every request header sent to a provider, for a non-streamed and a
/// streamed request, in the order the fields are written: host, type, length (set per
/// request), accept, accept-encoding, user-agent, then the key.
fn request_templates(
    base: &BaseUrl,
    format: Format,
    auth: Option<&(http::HeaderName, http::HeaderValue)>,
) -> pingora::Result<[RequestHeader; 2]> {
    let template = |stream: bool| -> pingora::Result<RequestHeader> {
        let path = base.endpoint(format);
        let mut h = RequestHeader::build_no_case("POST", path.as_bytes(), Some(10))?;
        h.insert_header(http::header::HOST, base.authority())?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, "0")?;
        h.insert_header(
            http::header::ACCEPT,
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        )?;
        // Plain bodies: the gateway reads usage out of them.
        h.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        h.insert_header(
            http::header::USER_AGENT,
            concat!("fluxrouter/", env!("CARGO_PKG_VERSION")),
        )?;
        if let Some((name, value)) = auth {
            h.insert_header(name.clone(), value.clone())?;
        }
        Ok(h)
    };
    Ok([template(false)?, template(true)?])
}

fn auth_header(format: Format, key: &str) -> Option<(http::HeaderName, http::HeaderValue)> {
    let (name, value) = match format.auth_header() {
        AuthHeader::Bearer => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        AuthHeader::XApiKey => (http::HeaderName::from_static("x-api-key"), key.to_string()),
    };
    let mut value = http::HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// What one attempt sends, besides what the provider's config fixes.
pub struct Outgoing<'a> {
    pub body: Bytes,
    pub stream: bool,
    /// The client's `anthropic-version` and `anthropic-beta`, for Anthropic-format providers.
    pub anthropic_version: Option<&'a http::HeaderValue>,
    pub anthropic_beta: Option<&'a http::HeaderValue>,
}

/// Concurrent requests one HTTP/2 connection to a provider carries before another is opened:
/// RFC 9113's recommended floor for SETTINGS_MAX_CONCURRENT_STREAMS, which providers advertise
/// (Pingora also keeps under what the provider advertises). Pingora's default is 1, one request
/// per connection, as with HTTP/1.1.
const H2_STREAMS_PER_CONNECTION: usize = 100;

fn make_peer(addr: SocketAddr, base: &BaseUrl, t: &ProviderTimeouts, http2: bool) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
    if http2 {
        // Over TLS ALPN offers h2 then http/1.1 and the provider picks; over plaintext there
        // is no negotiation: a minimum version of 2 is Pingora's h2c with prior knowledge.
        let min = if base.tls { 1 } else { 2 };
        peer.options.set_http_version(2, min);
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    let connect = Duration::from_millis(t.connect_ms);
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    peer.options.write_timeout = Some(Duration::from_millis(t.idle_ms));
    peer.options.read_timeout = Some(Duration::from_millis(t.idle_ms));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

/// Why a provider was skipped without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its breaker is open; it may be tried again after this long. `throttled`: ejected for
    /// a 429, not for failures.
    BreakerOpen { left: Duration, throttled: bool },
    /// It has `max_concurrent` requests in flight.
    ProviderBusy,
    /// The gateway has `traffic.max_concurrent_upstream` requests in flight.
    TotalBusy,
}

/// Gives a total concurrency slot back when dropped (None: no total cap, nothing counted).
struct TotalSlot<'a>(Option<&'a AtomicUsize>);

impl Drop for TotalSlot<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Leave to send one attempt to a provider: holds its concurrency slots until dropped, and
/// reports the attempt's verdict to the provider's breaker (none given: abandoned).
pub struct Ticket<'a> {
    provider: &'a Provider,
    /// Released by its own `Drop`, after the ticket's.
    _total: TotalSlot<'a>,
    counted: bool,
    probe: bool,
    settled: bool,
}

impl Ticket<'_> {
    /// Whether this attempt is the breaker's half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Tell the breaker how the attempt went (only the first verdict counts).
    pub fn verdict(&mut self, verdict: Verdict) {
        if self.settled {
            return;
        }
        self.settled = true;
        let p = self.provider;
        match p.breaker.record(self.probe, verdict) {
            Transition::Opened => log::warn!(
                "circuit breaker for provider {} opened: it is skipped for {} ms, then probed",
                p.name,
                p.breaker_cooldown_ms()
            ),
            Transition::Closed => log::info!(
                "circuit breaker for provider {} closed: the probe succeeded",
                p.name
            ),
            Transition::None => {}
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.verdict(Verdict::Abandoned);
        if self.counted {
            self.provider.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How an attempt failed, for choosing the client's error when no fallback is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused, unreachable, unresolved, or the connection broke.
    Connect,
    /// A connect or first-byte timeout.
    Timeout,
    /// The provider answered, badly: a 5xx, or a body that could not be read.
    BadAnswer,
    /// The provider refused the gateway's credentials (401/403).
    Auth,
}

impl FailureKind {
    /// A fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::Auth => "auth",
        }
    }
}

/// Why an attempt at a provider failed before its response could be used.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    pub provider: String,
    pub reason: String,
    pub kind: FailureKind,
}

/// A response whose header has arrived; the body is still to be read.
pub struct UpstreamResponse {
    pub session: HttpSession,
    pub status: u16,
    pub content_type: Option<String>,
    /// The peer the connection belongs to, for returning it to the right pool.
    peer: Arc<HttpPeer>,
}

impl UpstreamResponse {
    /// Return a connection whose response was read to the end to the pool.
    pub async fn release(self, connector: &Connector) {
        connector
            .release_http_session(self.session, &*self.peer, Some(Duration::from_secs(60)))
            .await;
    }
}

impl Provider {
    /// Send one request and wait for the response header.
    pub async fn send(
        &self,
        connector: &Connector,
        out: &Outgoing<'_>,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let body = &out.body;
        let fail = |reason: String| AttemptFailure {
            provider: self.name.clone(),
            reason,
            kind: FailureKind::Connect,
        };
        let failed = |e: Box<pingora::Error>, what: &str| AttemptFailure {
            provider: self.name.clone(),
            kind: if is_timeout(&e) || *e.etype() == pingora::ErrorType::ConnectTimedout {
                FailureKind::Timeout
            } else {
                FailureKind::Connect
            },
            reason: format!("{what}: {e}"),
        };
        let peer = self
            .peer
            .load_full()
            .ok_or_else(|| fail(format!("address of {} not resolved", self.base.host)))?;
        // An LLM call is not idempotent: a request the provider may have received is never
        // sent to it again (a second bill, a second tool side effect). Pingora checks a pooled
        // connection before handing it out (one closed while idle is dropped, a fresh one
        // made), and only when writing the request's header fails on a reused connection (the
        // provider closed it in between) is one fresh connection tried. A failure after the
        // header went out (the provider may have read the whole request, then closed) is the
        // attempt's failure: the caller falls back to the lane's next target.
        let mut tries = 0;
        loop {
            tries += 1;
            // Built per try (a clone of the provider's template): a retry sends it again.
            let header = self
                .request_header(out)
                .map_err(|e| fail(format!("building request: {e}")))?;
            let (mut session, reused) = connector
                .get_http_session(&*peer)
                .await
                .map_err(|e| failed(e, "connect"))?;
            session.set_read_timeout(Some(Duration::from_millis(self.timeouts.first_byte_ms)));
            // A provider that stops taking the body (an HTTP/1.1 socket that fills, an HTTP/2
            // flow-control window never reopened) fails the attempt after `idle_ms`: Pingora's
            // proxy copies the peer's write timeout into a session, its connector does not.
            session.set_write_timeout(Some(Duration::from_millis(self.timeouts.idle_ms)));
            let sent = async {
                session
                    .write_request_header(Box::new(header))
                    .await
                    .map_err(|e| (Sent::Nothing, e))?;
                async {
                    session.write_request_body(body.clone(), true).await?;
                    session.finish_request_body().await?;
                    session.read_response_header().await
                }
                .await
                .map_err(|e| (Sent::Header, e))
            }
            .await;
            match sent {
                Ok(()) => {
                    let resp = session.response_header().expect("header was read");
                    let status = resp.status.as_u16();
                    let content_type = resp
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    session.set_read_timeout(Some(Duration::from_millis(self.timeouts.idle_ms)));
                    return Ok(UpstreamResponse {
                        session,
                        status,
                        content_type,
                        peer,
                    });
                }
                // Nothing reached the provider on a connection it had closed: one fresh try.
                // (A slow provider is not a stale connection.)
                Err((Sent::Nothing, e)) if reused && tries == 1 && !is_timeout(&e) => {
                    log::debug!(
                        "{}: pooled connection closed by the provider: {e}",
                        self.name
                    );
                    continue;
                }
                Err((_, e)) => return Err(failed(e, "exchange")),
            }
        }
    }

    fn request_header(&self, out: &Outgoing<'_>) -> pingora::Result<RequestHeader> {
        let templates = self.templates.as_ref().map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, e.clone())
        })?;
        let mut h = templates[usize::from(out.stream)].clone();
        // Replaced in place: the field keeps its position.
        h.insert_header(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(out.body.len()),
        )?;
        if self.format == Format::Anthropic {
            match out.anthropic_version {
                Some(v) => h.insert_header("anthropic-version", v.clone())?,
                None => h.insert_header("anthropic-version", ANTHROPIC_VERSION)?,
            }
            if let Some(beta) = out.anthropic_beta {
                h.insert_header("anthropic-beta", beta.clone())?;
            }
        }
        Ok(h)
    }

    fn breaker_cooldown_ms(&self) -> u128 {
        self.breaker.cooldown().as_millis()
    }

    /// Resolve the host again; returns the new address when it changed. IP literals are
    /// left alone.
    pub async fn refresh_address(&self) -> std::io::Result<Option<SocketAddr>> {
        if self.base.host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(None);
        }
        let addr = tokio::net::lookup_host((self.base.host.as_str(), self.base.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let current = self.peer.load();
        if current
            .as_ref()
            .is_some_and(|p| p.address().as_inet() == Some(&addr))
        {
            return Ok(None);
        }
        self.peer.store(Some(Arc::new(make_peer(
            addr,
            &self.base,
            &self.timeouts,
            self.http2,
        ))));
        Ok(Some(addr))
    }
}

/// How far an attempt's request got before its exchange failed.
enum Sent {
    /// Writing the header failed: the provider cannot have received the request (at most a
    /// part of its header, which no server acts on).
    Nothing,
    /// The header was written: the provider may have the whole request.
    Header,
}

fn is_timeout(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        pingora::ErrorType::ReadTimedout | pingora::ErrorType::WriteTimedout
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_peers_offer_h2_by_alpn_over_tls_and_by_prior_knowledge_over_plaintext() {
        use pingora::upstreams::peer::ALPN;
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let peer = |url: &str, http2: bool| {
            let base = BaseUrl::parse(url).unwrap();
            make_peer(addr, &base, &ProviderTimeouts::default(), http2).options
        };
        let tls = peer("https://api.example.com/v1", true);
        assert!(matches!(tls.alpn, ALPN::H2H1), "{:?}", tls.alpn);
        assert_eq!(tls.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        let h2c = peer("http://127.0.0.1:9/v1", true);
        assert!(matches!(h2c.alpn, ALPN::H2), "{:?}", h2c.alpn);
        assert_eq!(h2c.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        for url in ["https://api.example.com/v1", "http://127.0.0.1:9/v1"] {
            let h1 = peer(url, false);
            assert!(matches!(h1.alpn, ALPN::H1), "{url}: {:?}", h1.alpn);
            assert_eq!(h1.max_h2_streams, 1);
        }
    }

    #[test]
    fn each_format_gets_its_auth_header_marked_sensitive() {
        let (name, value) = auth_header(Format::OpenAiChat, "k1").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer k1")
        );
        assert!(value.is_sensitive());
        let (name, value) = auth_header(Format::OpenAiResponses, "k2").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer k2")
        );
        let (name, value) = auth_header(Format::Anthropic, "k3").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-api-key", "k3")
        );
        assert!(auth_header(Format::Anthropic, "bad\nkey").is_none());
    }
}
