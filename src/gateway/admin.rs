//! The admin listener: operator endpoints on their own address, behind the admin token.
//!
//! `GET /admin/v1/usage[?month=YYYY-MM][&key=NAME]`: spend by key, lane and model for a month
//! (this month by default), from the ledger. Anything without the token (`Authorization:
//! Bearer <token>`, the token read from the environment variable the config names) gets 403
//! `admin_forbidden`; so does everything when no token is configured.
//!
//! `POST /admin/v1/keys/reload`: load the keys file now and answer what the gateway uses
//! (`{"object": "keys_reload", "keys": N, "sha256": "<hex of the file>"}`), so that
//! `fluxrouter keys` returns only once its change is in effect. A keys file that cannot be
//! loaded: 500 `internal_error` with the reason (the previous table stays).
//!
//! `/admin/v1/accounts…` and `POST /admin/v1/keys/{id}/revoke`: the accounts API for
//! operators and billing systems (`super::manage`).
//!
//! `/console`: the operator console (`super::console`), signed in with the same token.
//!
//! Wrong tokens (admin, metrics, console sign-in) are counted per client address, with the
//! client listener's failed keys (`limits.per_address.failed_auth_per_minute`): past it
//! that address gets 429 `rate_limited` with `Retry-After` and its tokens are not even
//! compared, the right one included.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::errors::{ErrorKind, FluxError};
use crate::headers;
use crate::metering::report::UsageReport;
use crate::state::AppState;
use crate::units::clock::unix_now;
use crate::units::Month;
use crate::wire::Format;

use super::respond;

pub struct Admin {
    pub(super) state: Arc<AppState>,
    /// The operator console's sign-in sessions.
    pub(super) sessions: crate::console::Sessions,
    /// SHA-256 of the admin token; compared by digest so timing says nothing of the token.
    token_digest: Option<[u8; 32]>,
    /// SHA-256 of the metrics token, the only one that reads `GET /metrics`.
    metrics_token_digest: Option<[u8; 32]>,
}

/// Whether `token` is the one whose digest is `expected` (none configured: nothing is).
fn matches(token: &str, expected: Option<[u8; 32]>) -> bool {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    !token.is_empty() && expected == Some(digest)
}

/// The address a request came from: the client's, behind a trusted proxy (none on a Unix
/// socket).
pub(super) fn source(state: &AppState, session: &Session) -> Option<IpAddr> {
    super::client::client_ip(state, session)
}

/// Whether `token` is the one whose digest is `expected`, presented from `from`; Err (429)
/// once `from` is past its failed authentications this minute (`limits.per_address`): the
/// token is then not compared, the right one included.
fn check_token(
    state: &AppState,
    from: Option<IpAddr>,
    token: &str,
    expected: Option<[u8; 32]>,
) -> Result<bool, FluxError> {
    super::client::check_secret(state, from, token, "wrong tokens", || {
        matches(token, expected)
    })
}

fn digest(token: Option<String>) -> Option<[u8; 32]> {
    token
        .filter(|t| !t.is_empty())
        .map(|t| Sha256::digest(t.as_bytes()).into())
}

/// How long a console sign-in lasts.
const CONSOLE_SESSION_SECS: u64 = 8 * 3600;

impl Admin {
    /// Whether `token`, presented at sign-in, is the admin token (compared by digest); Err
    /// (429) when its address has presented too many wrong tokens.
    pub(super) fn is_admin_token(&self, session: &Session, token: &str) -> Result<bool, FluxError> {
        check_token(
            &self.state,
            source(&self.state, session),
            token,
            self.token_digest,
        )
    }

    pub fn new(state: Arc<AppState>, token: Option<String>, metrics_token: Option<String>) -> Self {
        Admin {
            state,
            sessions: crate::console::Sessions::new(CONSOLE_SESSION_SECS),
            token_digest: digest(token),
            metrics_token_digest: digest(metrics_token),
        }
    }

    /// Whether the request carries the token whose digest is `expected` (`Authorization:
    /// Bearer`); Err (429) when its address has presented too many wrong tokens.
    fn authorized(&self, session: &Session, expected: Option<[u8; 32]>) -> Result<bool, FluxError> {
        let presented = crate::auth::presented_key(
            session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            None,
            false,
        );
        let from = source(&self.state, session);
        check_token(&self.state, from, presented.unwrap_or_default(), expected)
    }

    /// The report reads the ledger file (after committing what is queued, so it includes
    /// every request served so far): blocking I/O, so it runs on a blocking thread.
    async fn usage(&self, query: Option<&str>) -> Result<serde_json::Value, FluxError> {
        let mut month = Month::of(unix_now());
        let mut key_name = None;
        for (k, v) in crate::endpoints::query_pairs(query) {
            match k {
                "month" => {
                    month = v.parse().map_err(|_| {
                        FluxError::new(ErrorKind::InvalidRequest, "month must look like 2026-11")
                    })?
                }
                "key" => key_name = Some(v.to_string()),
                _ => {}
            }
        }
        let keys = self.state.keys.load_full();
        let key_id = match &key_name {
            None => None,
            Some(name) => Some(keys.id_of(name).ok_or_else(|| {
                FluxError::new(ErrorKind::InvalidRequest, "no key with that name")
            })?),
        };
        let retry = self
            .state
            .fleet
            .as_ref()
            .map_or(2, |f| f.when_down.retry_after_seconds);
        let rows = self
            .state
            .admission
            .spend()
            .report(month, key_id.clone())
            .await
            .map_err(|e| match &self.state.fleet {
                Some(_) => FluxError::ledger_unavailable(retry, "the fleet's usage"),
                None => FluxError::new(ErrorKind::Internal, format!("ledger: {e}")),
            })?;
        let names = keys.names_by_id();
        let name_of = |id: &str| names.get(id).map(|n| n.to_string());
        Ok(UsageReport::new(month, rows, &name_of).admin_json())
    }
}

/// The path `fluxrouter keys` asks the running gateway to load the keys file on.
pub const RELOAD_KEYS: &str = "/admin/v1/keys/reload";

impl Admin {
    /// `POST /admin/v1/keys/reload`: the keys file, loaded now (reading it blocks, and waits
    /// for a writer that has it open: a blocking thread).
    async fn reload_keys(&self) -> Result<serde_json::Value, FluxError> {
        let state = self.state.clone();
        let reload = tokio::task::spawn_blocking(move || {
            // The key store first: what `fluxrouter accounts` just wrote is served when this
            // answers, whatever the keys file's state.
            if let Err(e) = state.directory.refresh() {
                log::warn!("key store: refresh failed: {e}");
            }
            state.reload_keys_now()
        })
        .await
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("keys task: {e}")))?
        .map_err(|e| {
            FluxError::new(
                ErrorKind::Internal,
                format!("{e}; the gateway keeps its previous keys table"),
            )
        })?;
        Ok(json!({
            "object": "keys_reload",
            "keys": self.state.keys.load().len(),
            "sha256": reload.sha256().map(hex::encode),
        }))
    }

    /// `GET /metrics`: the Prometheus exposition, for the metrics token only.
    async fn metrics(&self, session: &mut Session, id: &str) -> pingora::Result<()> {
        let refusal = match self.authorized(session, self.metrics_token_digest) {
            Err(limited) => Some(limited),
            Ok(false) => Some(FluxError::new(
                ErrorKind::MetricsForbidden,
                "GET /metrics needs the metrics token: 'Authorization: Bearer <token>' (the \
                 token is read from the variable admin.metrics_token_env names).",
            )),
            Ok(true)
                if !matches!(
                    session.req_header().method,
                    http::Method::GET | http::Method::HEAD
                ) =>
            {
                Some(FluxError::new(
                    ErrorKind::MethodNotAllowed,
                    "/metrics accepts GET only.",
                ))
            }
            Ok(true) => None,
        };
        if let Some(err) = refusal {
            return respond::send_error(session, id, Format::OpenAiChat, &err, None).await;
        }
        let state = &self.state;
        let routes = state.routes.load();
        let live = crate::metrics::Live {
            requests_in_flight: crate::metrics::InFlight::count(),
            upstream_in_flight: state.providers.inflight(),
            body_bytes_in_flight: super::body::in_flight(),
            breakers: state
                .providers
                .breaker_states()
                .into_iter()
                .map(|(name, s)| (name, s.label()))
                .collect(),
            targets: target_views(&routes, &state.providers),
            access_log_dropped: state.access_log.dropped(),
            series_dropped: state.metrics.series_dropped(),
            ledger: state.ledger.stats(),
            fleet: state.fleet.as_deref().map(crate::fleet::Fleet::view),
        };
        let text = crate::metrics::render(&state.metrics, &live);
        let h = respond::header(200, id)?;
        respond::send_body(
            session,
            h,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(text),
        )
        .await
    }
}

#[async_trait]
impl ProxyHttp for Admin {
    type CTX = String;

    fn new_ctx(&self) -> String {
        headers::new_request_id()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        id: &mut String,
    ) -> pingora::Result<bool> {
        // Behind the connection guard (a TLS or PROXY-protocol admin listener): what is
        // written from here on is this answer, not a refused header.
        super::edge::header_received();
        // The admin listener's threads serve only this plane: they yield to the serving ones.
        crate::background::lower_this_thread();
        // Requests per second from one address (`limits.per_address`), as on the client
        // listeners.
        if let Err(err) = super::client::admit(&self.state, source(&self.state, session)) {
            respond::send_error(session, id, Format::OpenAiChat, &err, None).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().map(str::to_string);
        if path == "/metrics" {
            return self.metrics(session, id).await.map(|()| true);
        }
        if path == "/console" || path.starts_with("/console/") {
            return self
                .console(session, id, &path, query.as_deref())
                .await
                .map(|()| true);
        }
        let method = session.req_header().method.clone();
        let authorized = self.authorized(session, self.token_digest);
        if authorized == Ok(true) && super::manage::is_operator_path(&path) {
            return match super::manage::operator(&self.state, session, &path).await {
                Ok((status, value)) => {
                    let body = serde_json::to_vec(&value).expect("JSON value");
                    let h = respond::header(status, id)?;
                    respond::send_body(session, h, "application/json", Bytes::from(body)).await
                }
                Err(super::ctx::Stop::Reply(err)) => {
                    respond::send_error(session, id, Format::OpenAiChat, &err, None).await
                }
                Err(super::ctx::Stop::Broken(e)) => Err(e),
            }
            .map(|()| true);
        }
        let answer = match authorized {
            Err(limited) => Err(limited),
            Ok(false) => Err(FluxError::new(
                ErrorKind::AdminForbidden,
                "The admin endpoints need the admin token: 'Authorization: Bearer <token>'.",
            )),
            Ok(true) if path == RELOAD_KEYS && method == http::Method::POST => {
                self.reload_keys().await
            }
            Ok(true) if path == RELOAD_KEYS => Err(FluxError::new(
                ErrorKind::MethodNotAllowed,
                "POST /admin/v1/keys/reload loads the keys file.",
            )),
            Ok(true) if method != http::Method::GET => Err(FluxError::new(
                ErrorKind::MethodNotAllowed,
                "Admin endpoints accept GET only (and POST /admin/v1/keys/reload and the \
                 accounts API).",
            )),
            Ok(true) if path == "/admin/v1/usage" => self.usage(query.as_deref()).await,
            Ok(true) => Err(FluxError::new(
                ErrorKind::EndpointNotServed,
                "The admin listener serves GET /admin/v1/usage, POST /admin/v1/keys/reload, \
                 the accounts API (/admin/v1/accounts), GET /metrics and the console (GET \
                 /console).",
            )),
        };
        match answer {
            Ok(value) => {
                let body = serde_json::to_vec(&value).expect("JSON value");
                let h = respond::header(200, id)?;
                respond::send_body(session, h, "application/json", Bytes::from(body)).await?;
            }
            Err(err) => respond::send_error(session, id, Format::OpenAiChat, &err, None).await?,
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut String,
    ) -> pingora::Result<Box<HttpPeer>> {
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "the admin listener proxies nothing",
        ))
    }

    fn suppress_error_log(&self, _: &Session, _: &String, _: &pingora::Error) -> bool {
        true
    }
}

/// The targets of every lane that spreads its traffic, for a scrape (and the console).
pub fn target_views<'a>(
    routes: &'a crate::routing::RouteTable,
    providers: &crate::upstream::Providers,
) -> Vec<crate::metrics::TargetView<'a>> {
    routes
        .lanes()
        .iter()
        .filter(|lane| lane.strategy.spreads())
        .flat_map(|lane| {
            lane.chain.iter().enumerate().map(move |(i, &m)| {
                let model = routes.model(m);
                crate::metrics::TargetView {
                    lane: &lane.name,
                    target: &model.key,
                    weight: lane.strategy.weights[i],
                    latency_seconds: model.stats.estimate(0) / 1e9,
                    in_flight: model.stats.inflight(),
                    ejected: providers
                        .get(&model.provider)
                        .is_none_or(|p| p.breaker.ejected()),
                }
            })
        })
        .collect()
}
