//! The Pingora `ProxyHttp` implementation: a thin pipeline over the plain modules.
//!
//! Every request is answered inside `request_filter` (returning `Ok(true)`): the gateway reads
//! the body, routes, and performs the upstream exchange itself, because Pingora's proxy path
//! cannot carry bodies over 64 KiB nor hold the response header back (NOTES-pingora).
//!
//! accept (connections per address: closed past it) -> request id -> client address
//!   -> requests per second per address (429) -> path (403)
//!   -> auth (401; 429 past the address's failed authentications) -> body (413/415)
//!   -> parse the client's format into the IR (400)
//!   -> admission: model id bound (400), conversation limit (429), then features and route
//!      (400/403/413/502), requests / tokens per minute (429/413), spend reservation (402)
//!   -> upstream exchange with fallbacks (502), translating when the provider's format differs
//!   -> response or stream -> log

mod account;
pub mod admin;
mod body;
mod client;
mod console;
mod ctx;
mod edge;
mod exchange;
mod manage;
mod respond;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorSource;
use serde_json::json;

use crate::access_log::{AccessLine, FailedAttempt};
use crate::admission;
use crate::auth::Account;
use crate::endpoints::{self, Endpoint};
use crate::errors::{ErrorKind, FluxError};
use crate::headers;
use crate::routing::{Health, Requested, AUTO_MODEL};
use crate::stages::{Stage, StageClock};
use crate::state::AppState;
use crate::units::clock::{self, unix_now};
use crate::wire::{transcode, Format};

pub use ctx::{RequestCtx, Stop};
pub use edge::Edge;

pub struct Gateway {
    state: Arc<AppState>,
    /// The account owner's page: its sessions and wrong keys.
    owner_page: account::OwnerPage,
}

impl Gateway {
    pub fn new(state: Arc<AppState>) -> Self {
        body::configure(&state.config.limits);
        Gateway {
            owner_page: account::OwnerPage::new(state.clone()),
            state,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            id: headers::RequestId::new(),
            started: Instant::now(),
            _in_flight: crate::metrics::InFlight::begin(),
            client_ip: None,
            endpoint: None,
            account: None,
            original_model: None,
            routes: None,
            lane: None,
            rule: None,
            probability: None,
            target_choice: None,
            session: None,
            kept: None,
            served: None,
            provider: None,
            routed: None,
            status: 0,
            error_code: None,
            attempts: 0,
            failed: Vec::new(),
            request_bytes: 0,
            upstream_ttfb: None,
            upstream_time: Duration::ZERO,
            stream: false,
            client_format: None,
            provider_format: None,
            dropped_fields: 0,
            allow: None,
            usage: None,
            cost: None,
            stages: StageClock::start(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The header is in: its deadline stops, and answers are the gateway's from here.
        edge::header_received();
        ctx.client_ip = client::client_ip(&self.state, session);
        // Pingora has decided from the request whether its connection stays open: not for
        // `Connection: close`, an HTTP/1.0 request without `Connection: keep-alive`, nor one
        // with both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1). A connection it
        // keeps gets the idle timeout here: Pingora resets it to "no timeout", and this is what
        // bounds the wait for the connection's next request.
        if session.get_keepalive().is_some() {
            let idle = self.state.config.limits.keepalive_timeout_seconds;
            session.set_keepalive((idle > 0).then_some(idle));
        }
        // Requests sent back to back on one connection are answered one after the other, in
        // order (Pingora's default drops the second and closes).
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        if session.req_header().method == http::Method::CONNECT {
            // Not a forward proxy. What follows a CONNECT header is not HTTP: close after.
            session.set_keepalive(None);
            let err = FluxError::new(
                ErrorKind::MethodNotAllowed,
                "CONNECT is not served: FluxRouter is an API endpoint, not a forward proxy.",
            );
            ctx.status = err.status();
            ctx.error_code = Some(err.code());
            respond::send_error(session, &ctx.id, Format::OpenAiChat, &err, None).await?;
            return Ok(true);
        }
        // An answer given before the body was read (401, 413, …) leaves it unread. Pingora's
        // default is to close such a connection, which resets it with data pending: a client
        // still uploading then sees a broken pipe instead of the answer. Instead the rest is
        // read and discarded (for at most 10 s) after the answer.
        session.set_close_on_response_before_downstream_finish(false);
        session.set_total_drain_timeout(Some(Duration::from_secs(10)));
        // During an upgrade or shutdown every response closes its connection (see DrainSignal).
        if self.state.draining.load(Ordering::Acquire) {
            session.set_keepalive(None);
        }
        // A client that stops sending mid-body must not hold its task forever.
        let body_timeout = self.state.config.limits.body_read_timeout_ms;
        session.set_read_timeout(Some(Duration::from_millis(body_timeout)));
        let path = session.req_header().uri.path().to_string();
        let format = endpoints::format_for(&path);
        if let Err(err) = client::admit(&self.state, ctx.client_ip) {
            ctx.status = err.status();
            ctx.error_code = Some(err.code());
            respond::send_error(session, &ctx.id, format, &err, None).await?;
            return Ok(true);
        }
        if ambiguous_length(session) {
            // A proxy in front that framed the body by its length would read what follows it
            // as another request (request smuggling): refused, and the connection closed.
            session.set_keepalive(None);
            let err = FluxError::new(
                ErrorKind::InvalidRequest,
                "The request has both Content-Length and Transfer-Encoding, so its length is \
                 ambiguous (RFC 9112 section 6.1): send one of them.",
            );
            ctx.status = err.status();
            ctx.error_code = Some(err.code());
            respond::send_error(session, &ctx.id, format, &err, None).await?;
            // Read what the client sends (by its Transfer-Encoding, at most the drain timeout)
            // before closing: a socket closed with unread bytes is reset, and a reset can
            // destroy the answer before the client reads it.
            let _ = session.drain_request_body().await;
            return Ok(true);
        }
        match self
            .handle(session, ctx, Endpoint::from_path(&path), &path)
            .await
        {
            Ok(()) => Ok(true),
            Err(Stop::Reply(err)) => {
                ctx.status = err.status();
                ctx.error_code = Some(err.code());
                respond::send_error(session, &ctx.id, format, &err, ctx.allow).await?;
                Ok(true)
            }
            // Pingora calls fail_to_proxy with it, which answers if the client can still hear.
            Err(Stop::Broken(e)) => Err(e),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use pingora::ErrorType::{ConnectionClosed, ReadError, ReadTimedout, WriteError};
        let kind = match e.etype() {
            _ if session.response_written().is_some() => None, // mid-response: nothing to add
            WriteError | ReadError | ConnectionClosed => None, // the client is gone
            ReadTimedout => Some(ErrorKind::RequestTimeout),
            _ if e.esource() == &ErrorSource::Downstream => Some(ErrorKind::InvalidRequest),
            _ => Some(ErrorKind::Internal),
        };
        let Some(kind) = kind else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let message = match kind {
            ErrorKind::RequestTimeout => "The request body stopped arriving; send it again.",
            ErrorKind::InvalidRequest => "The request could not be read (malformed HTTP framing).",
            _ => "Internal error; retry, and quote the request id if it persists.",
        };
        let err = FluxError::new(kind, message);
        let format = endpoints::format_for(session.req_header().uri.path());
        ctx.status = err.status();
        ctx.error_code = Some(err.code());
        let _ = respond::send_error(session, &ctx.id, format, &err, None).await;
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; reaching here is a bug.
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "proxy path is not used",
        ))
    }

    fn suppress_error_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &pingora::Error,
    ) -> bool {
        // Client disconnects are routine; the access log records every request instead.
        true
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        if ctx.status == 0 {
            ctx.status = session.response_written().map_or(0, |h| h.status.as_u16());
        }
        let routes = ctx.routes.as_deref();
        let lane = ctx.lane.zip(routes).map(|(l, r)| r.lane(l).name.as_str());
        let model = ctx.served.zip(routes).map(|(m, r)| r.model(m).id.as_str());
        let provider = ctx.provider.as_deref().map(|p| p.name.as_str());
        let duration = ctx.started.elapsed();
        let response_bytes = session.body_bytes_sent();
        self.state.metrics.request(&crate::metrics::Finished {
            endpoint: ctx.endpoint.unwrap_or("other"),
            lane: lane.unwrap_or_default(),
            model: model.unwrap_or_default(),
            provider: provider.unwrap_or_default(),
            status: ctx.status,
            error_code: ctx.error_code,
            duration,
            upstream: ctx.upstream_time,
            request_bytes: ctx.request_bytes,
            response_bytes,
            usage: ctx.usage,
            cost: ctx.cost,
        });
        // A served turn of a conversation: where its prompt is cached now.
        if let (Some(session), Some(served), Some(lane), Some(r), Some(usage)) =
            (ctx.session, ctx.served, ctx.lane, routes, ctx.usage)
        {
            if (200..300).contains(&ctx.status) {
                self.state.conversations.record(
                    session,
                    crate::routing::conversations::Turn {
                        at: unix_now(),
                        generation: r.generation(),
                        lane,
                        model: served,
                        input_tokens: usage.input,
                        output_tokens: usage.output,
                    },
                );
            }
        }
        let failed = ctx.status >= 400 || ctx.status < 100 || ctx.error_code.is_some();
        let log = &self.state.access_log;
        if !log.keeps(failed || error.is_some()) {
            ctx.stages.mark(Stage::Log);
            ctx.stages.finish();
            return;
        }
        let failed_attempts: Vec<FailedAttempt<'_>> = ctx
            .failed
            .iter()
            .map(|(p, reason)| FailedAttempt {
                provider: &p.name,
                reason,
            })
            .collect();
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        log.record(&AccessLine {
            ts: clock::unix_secs_millis(),
            id: &ctx.id,
            method: session.req_header().method.as_str(),
            client_ip: ctx.client_ip,
            endpoint: ctx.endpoint,
            key_id: ctx.account.as_deref().map(|a| a.key_id.as_str()),
            key_name: ctx.account.as_deref().map(|a| a.key_name.as_str()),
            status: ctx.status,
            error: ctx.error_code,
            original_model: ctx.original_model.as_deref(),
            model,
            lane,
            route_rule: ctx
                .rule
                .zip(routes)
                .map(|(i, r)| r.rules()[i].name.as_str()),
            lane_probability: ctx.probability.map(|p| (f64::from(p) * 1e3).round() / 1e3),
            target_choice: ctx.target_choice,
            kept: ctx.kept,
            provider,
            routed: ctx.routed,
            stream: ctx.stream,
            client_format: ctx.client_format.map(Format::label),
            provider_format: ctx.provider_format.map(Format::label),
            dropped_fields: ctx.dropped_fields,
            input_tokens: ctx.usage.map(|u| u.input),
            cached_input_tokens: ctx.usage.map(|u| u.cached_input),
            output_tokens: ctx.usage.map(|u| u.output),
            cost_usd: ctx.cost.map(|c| c.to_decimal()),
            attempts: ctx.attempts,
            failed_attempts: &failed_attempts,
            request_bytes: ctx.request_bytes,
            response_bytes,
            upstream_ttfb_ms: ctx.upstream_ttfb.map(ms),
            upstream_ms: ms(ctx.upstream_time),
            overhead_ms: ms(duration.saturating_sub(ctx.upstream_time)),
            duration_ms: ms(duration),
            downstream_error: error.map(|e| e.etype().as_str()),
        });
        ctx.stages.mark(Stage::Log);
        ctx.stages.finish();
    }
}

/// Whether an HTTP/1 request carried both `Content-Length` and `Transfer-Encoding`. Pingora
/// removes the length from the parsed header (the encoding wins), so the received header is
/// looked at, only when an encoding is there (rare: clients send a length).
fn ambiguous_length(session: &Session) -> bool {
    if !session
        .req_header()
        .headers
        .contains_key(http::header::TRANSFER_ENCODING)
    {
        return false;
    }
    let Some(h1) = session.as_http1() else {
        return false;
    };
    const NAME: &[u8] = b"content-length:";
    h1.get_headers_raw_bytes()
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| {
            line.get(..NAME.len())
                .is_some_and(|n| n.eq_ignore_ascii_case(NAME))
        })
}

/// A WebSocket handshake (`GET` with `Upgrade: websocket`), as Codex sends with
/// `supports_websockets`.
fn websocket_upgrade(req: &pingora::http::RequestHeader) -> bool {
    req.method == http::Method::GET
        && req.headers.get_all(http::header::UPGRADE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: Option<Endpoint>,
        path: &str,
    ) -> Result<(), Stop> {
        let Some(endpoint) = endpoint else {
            return Err(endpoints::not_served(path).into());
        };
        ctx.endpoint = Some(endpoint.label());
        if endpoint == Endpoint::Responses && websocket_upgrade(session.req_header()) {
            // Answered before the key is checked: Codex falls back to HTTP on a 426 only, and
            // its HTTP request then gets whatever the key deserves.
            return Err(FluxError::new(
                ErrorKind::WebSocketNotServed,
                "WebSockets are not served: send the request over HTTP (POST /v1/responses, \
                 streamed as server-sent events). Codex does this by itself after this answer.",
            )
            .into());
        }
        if !endpoint.allows(&session.req_header().method) {
            ctx.allow = Some(endpoint.allow());
            return Err(FluxError::new(
                ErrorKind::MethodNotAllowed,
                format!("{path} accepts {} only.", endpoint.allow()),
            )
            .into());
        }
        if matches!(
            endpoint,
            Endpoint::Healthz | Endpoint::Root | Endpoint::AnthropicHello
        ) {
            ctx.status = 200;
            let h = respond::header(200, &ctx.id)?;
            let text: &'static [u8] = match endpoint {
                Endpoint::Root => b"FluxRouter\n",
                _ => b"ok\n",
            };
            respond::send_body(session, h, "text/plain", Bytes::from_static(text)).await?;
            return Ok(());
        }
        if endpoint == Endpoint::Manage {
            // A management key, never a generation key: its own authentication.
            let (status, value) = match manage::owner(&self.state, session, path).await {
                Ok(answer) => answer,
                Err(Stop::Reply(err)) => {
                    let ip = ctx.client_ip;
                    return Err(client::auth_failed(&self.state, session, ip, err).into());
                }
                Err(broken) => return Err(broken),
            };
            ctx.status = status;
            let body = serde_json::to_vec(&value).expect("JSON value");
            let h = respond::header(status, &ctx.id)?;
            respond::send_body(session, h, "application/json", Bytes::from(body)).await?;
            return Ok(());
        }
        if endpoint == Endpoint::Account {
            // The owner's page: a session signed in with a management key.
            ctx.status = self.owner_page.serve(session, &ctx.id, path).await?;
            return Ok(());
        }
        ctx.stages.mark(Stage::Head);
        let account = self
            .authenticate(session, endpoint)
            .map_err(|err| client::auth_failed(&self.state, session, ctx.client_ip, err))?;
        ctx.account = Some(account.clone());
        ctx.stages.mark(Stage::Auth);
        match endpoint {
            Endpoint::Models => self.list_models(session, ctx, &account).await,
            Endpoint::Usage => self.usage(session, ctx, &account).await,
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::AnthropicMessages => {
                self.generate(session, ctx, &account, endpoint.format())
                    .await
            }
            Endpoint::AnthropicCountTokens => self.count_tokens(session, ctx).await,
            Endpoint::Healthz
            | Endpoint::Root
            | Endpoint::AnthropicHello
            | Endpoint::Manage
            | Endpoint::Account => {
                unreachable!("answered above")
            }
        }
    }

    fn authenticate(
        &self,
        session: &Session,
        endpoint: Endpoint,
    ) -> Result<Arc<Account>, FluxError> {
        let h = &session.req_header().headers;
        let x_api_key = h.get("x-api-key").map(|v| v.as_bytes());
        let anthropic = endpoint.format() == Format::Anthropic;
        let presented = crate::auth::presented_key(
            h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
            x_api_key,
            anthropic,
        );
        if presented.is_none() && x_api_key.is_some() && !anthropic {
            return Err(FluxError::new(
                ErrorKind::InvalidApiKey,
                "On /v1 paths send your Flux key as 'Authorization: Bearer sk-...'; x-api-key is \
                 accepted on the /anthropic paths only.",
            ));
        }
        let now = unix_now();
        self.state.authenticate(presented, now)
    }

    async fn list_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        account: &Account,
    ) -> Result<(), Stop> {
        let routes = self.state.routes.load();
        let allowed = |lane: usize| account.lanes.iter().any(|l| *l == routes.lane(lane).name);
        let entry =
            |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "fluxrouter"});
        let mut data = vec![entry(AUTO_MODEL)];
        data.extend(
            (0..routes.lanes().len())
                .filter(|&l| allowed(l))
                .map(|l| entry(&routes.lane(l).alias)),
        );
        data.extend(
            routes
                .catalogue()
                .filter(|m| allowed(m.lane))
                .map(|m| entry(&m.id)),
        );
        let body =
            serde_json::to_vec(&json!({"object": "list", "data": data})).expect("JSON value");
        ctx.status = 200;
        let h = respond::header(200, &ctx.id)?;
        respond::send_body(session, h, "application/json", Bytes::from(body)).await?;
        Ok(())
    }

    /// The three generation endpoints: one pipeline whatever the client's format.
    async fn generate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        account: &Account,
        client: Format,
    ) -> Result<(), Stop> {
        exchange::maintenance(&self.state)?;
        let raw = body::read(session, self.state.config.limits.max_body_bytes).await?;
        ctx.stages.mark(Stage::ReadBody);
        ctx.request_bytes = raw.len();
        ctx.client_format = Some(client);
        let mut request = transcode::parse_request(client, &raw)?;
        ctx.stages.mark(Stage::Parse);
        ctx.original_model = Some(crate::access_log::bounded(&request.model).into_owned());
        ctx.stream = request.stream;
        // Read before admission borrows the request: the conversation's name and the
        // provider preferences the headers give (the body's own are in `request`).
        let h = &session.req_header().headers;
        let session_header = h.get(headers::SESSION).cloned();
        let preferences = crate::routing::preferences::Preferences::read(
            request.preferences,
            &crate::routing::preferences::Headers {
                order: h.get(headers::PROVIDER_ORDER).map(|v| v.as_bytes()),
                only: h.get(headers::PROVIDER_ONLY).map(|v| v.as_bytes()),
                ignore: h.get(headers::PROVIDER_IGNORE).map(|v| v.as_bytes()),
                sort: h.get(headers::PROVIDER_SORT).map(|v| v.as_bytes()),
                allow_fallbacks: h
                    .get(headers::PROVIDER_ALLOW_FALLBACKS)
                    .map(|v| v.as_bytes()),
            },
        )?;
        let ask = admission::Ask {
            account,
            request: &request,
            body_bytes: raw.len(),
        };
        let admission = &self.state.admission;
        admission.check(&ask)?;
        let mut routed = self.route(
            ctx,
            account,
            &request,
            session_header.as_ref(),
            preferences.as_ref(),
        )?;
        if let Some(policy) = &self.state.policy {
            self.ask_policy(policy, ctx, account, &request, &mut routed)
                .await?;
        }
        let admission::Admitted { routed, hold } = admission.hold(ask, routed).await?;
        ctx.stages.mark(Stage::Admit);
        exchange::run(
            &self.state,
            session,
            ctx,
            &routed.routes,
            &routed.route,
            &mut request,
            exchange::Admitted {
                hold,
                estimated_input_tokens: routed.input_tokens,
            },
        )
        .await
    }

    /// Ask the operator's policy hook about a routed request, and apply its decision: a
    /// lane (re-routed, within the key's plan), an ordered list of targets (among the
    /// eligible ones), or a refusal. A lane or targets the gateway cannot use count as the
    /// hook's error (`on_error`).
    async fn ask_policy(
        &self,
        policy: &crate::policy::Policy,
        ctx: &mut RequestCtx,
        account: &Account,
        request: &crate::wire::ir::Request<'_>,
        routed: &mut admission::Routed,
    ) -> Result<(), FluxError> {
        use crate::policy::{Decision, Question, QuestionTarget, Source};
        let routes = &*routed.routes;
        let route = &routed.route;
        let features = &routed.features;
        let probabilities = features.lane_scores.as_ref().and_then(|scores| {
            let learned = routes.classifier()?;
            Some(
                learned
                    .lanes
                    .iter()
                    .zip(scores.as_slice())
                    .map(|(&l, &p)| (routes.lane(l).name.as_str(), (p * 1e3).round() / 1e3))
                    .collect(),
            )
        });
        let prompt = policy
            .include_prompt
            .then(|| crate::routing::last_user_text(request));
        let prompt = prompt.as_deref().map(|p| {
            let mut end = p.len().min(crate::policy::MAX_PROMPT_BYTES);
            while !p.is_char_boundary(end) {
                end -= 1;
            }
            &p[..end]
        });
        let question = Question {
            request_id: &ctx.id,
            account_id: &account.account_id,
            key_id: &account.key_id,
            plan: &account.plan,
            model: &request.model,
            format: request.format.label(),
            stream: request.stream,
            lane: &routes.lane(route.lane).name,
            rule: route.rule.map(|r| routes.rules()[r].name.as_str()),
            probabilities,
            targets: route
                .candidates
                .iter()
                .map(|&m| QuestionTarget {
                    model: &routes.model(m).id,
                    provider: &routes.model(m).provider,
                })
                .collect(),
            input_tokens: features.input_tokens,
            max_tokens: features.max_tokens,
            messages: features.messages,
            tools: features.tools,
            images: features.images,
            prompt,
        };
        let (decision, source) = policy.decide(&self.state.connector, &question).await;
        let metrics = &self.state.metrics;
        match source {
            Source::Asked(took) => metrics.policy_decision(decision.label(), Some(took)),
            Source::Cached => metrics.policy_decision("cached", None),
            Source::Failed(what, took) => metrics.policy_decision(what, Some(took)),
        }
        let unusable = |why: String| {
            log::warn!("{}: policy hook: {why}; on_error decides", ctx.id);
            metrics.policy_decision("error", None);
            match policy.on_error() {
                crate::config::server::PolicyOnError::Allow => Ok(()),
                crate::config::server::PolicyOnError::Deny => Err(FluxError::new(
                    ErrorKind::PolicyUnavailable,
                    "The operator's routing policy chose a lane or targets this request                      cannot use.",
                )
                .retry_after(1)),
            }
        };
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(e) => Err(e),
            Decision::Lane(name) => {
                let Some(lane) = routes
                    .lanes()
                    .iter()
                    .position(|l| l.name == name || l.alias == name)
                else {
                    return unusable(format!("no lane '{name}'"));
                };
                let mut chosen = routes.route(Requested::Lane(lane), features, account)?;
                chosen.rule = routed.route.rule;
                chosen.chosen = crate::routing::Chosen::Policy;
                routed.route = chosen;
                ctx.lane = Some(lane);
                ctx.target_choice = routed.route.chosen.label();
                Ok(())
            }
            Decision::Targets(ids) => {
                // A model id names each of its deployments among the candidates, in order.
                let picked: Vec<_> = ids
                    .iter()
                    .flat_map(|id| {
                        let candidates = &routed.route.candidates;
                        candidates.iter().copied().filter(move |&m| {
                            routes.model(m).id == *id || routes.model(m).key == *id
                        })
                    })
                    .collect();
                if picked.is_empty() {
                    return unusable(format!(
                        "none of the targets {ids:?} is eligible for this request"
                    ));
                }
                routed.route.candidates = picked;
                routed.route.chosen = crate::routing::Chosen::Policy;
                ctx.target_choice = routed.route.chosen.label();
                Ok(())
            }
        }
    }

    /// Route a request (one routing snapshot for the whole request: a reload mid-request
    /// changes nothing for it), noting the lane and the rule in `ctx`.
    fn route(
        &self,
        ctx: &mut RequestCtx,
        account: &Account,
        request: &crate::wire::ir::Request<'_>,
        session_header: Option<&http::HeaderValue>,
        preferences: Option<&crate::routing::preferences::Preferences>,
    ) -> Result<admission::Routed, FluxError> {
        let routes = self.state.routes.load_full();
        ctx.routes = Some(routes.clone());
        let requested = routes.resolve(&request.model)?;
        let mut features = crate::routing::features(request);
        if requested == Requested::Auto {
            // The last turn's text blocks are joined into one string for the cues: not for
            // nothing when there are none (the shipped lanes.yaml has none).
            if routes.has_cues() {
                routes.detect_cues(&crate::routing::last_user_text(request), &mut features);
            }
            routes.classify(request, &mut features);
        }
        let mut route = routes.route(requested, &features, account)?;
        let providers = &self.state.providers;
        // The conversation's identity: for flux-auto (where did its last turn go?) and for a
        // lane that spreads its traffic (keep it on one target).
        let session = (requested == Requested::Auto || routes.lane(route.lane).strategy.spreads())
            .then(|| {
                crate::routing::session::session(
                    request,
                    session_header.map(|h| h.as_bytes()),
                    features.input_tokens,
                )
            })
            .flatten();
        if requested == Requested::Auto {
            let last = session.and_then(|s| self.state.conversations.last(s.hash, unix_now()));
            if let Some(last) = last {
                route = routes.keep_warm(route, &last, &features, account, |m| {
                    providers.get(&m.provider).map(|p| p.format)
                });
            }
        }
        routes.order_targets(
            &mut route,
            &features,
            || session,
            |model| match providers.get(&model.provider) {
                Some(p) => Health {
                    ejected: p.breaker.ejected(),
                    failures: p.breaker.failures(),
                },
                None => Health {
                    ejected: true,
                    failures: 0,
                },
            },
            &mut rand::thread_rng(),
        );
        ctx.session = session.map(|s| s.hash);
        ctx.kept = route.kept.map(|(why, _)| why.label());
        if let Some(p) = preferences {
            p.apply(&routes, &mut route)?;
        }
        ctx.target_choice = route.chosen.label();
        ctx.lane = Some(route.lane);
        ctx.rule = route.rule;
        ctx.probability = route.probability;
        ctx.stages.mark(Stage::Route);
        Ok(admission::Routed {
            routes,
            route,
            input_tokens: features.input_tokens,
            features,
        })
    }

    /// `GET /v1/usage`: where the key's owner stands, without a dashboard.
    async fn usage(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        account: &Account,
    ) -> Result<(), Stop> {
        let now = unix_now();
        let standing = self.state.admission.spend().standing(account, now).await?;
        let body = serde_json::to_vec(&crate::metering::usage_view(account, &standing, now))
            .expect("JSON value");
        ctx.status = 200;
        let h = respond::header(200, &ctx.id)?;
        respond::send_body(session, h, "application/json", Bytes::from(body)).await?;
        Ok(())
    }

    /// `count_tokens`: counted here with the shipped tokenizer, never forwarded or billed.
    async fn count_tokens(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Stop> {
        let raw = body::read(session, self.state.config.limits.max_body_bytes).await?;
        ctx.request_bytes = raw.len();
        ctx.client_format = Some(Format::Anthropic);
        // Parsing and tokenizing take about 0.05 + 0.7 ms per 50 KB (half a second for a
        // 32 MB body): they run on a blocking thread, not on the Pingora worker that serves
        // other requests.
        let (model, tokens) = tokio::task::spawn_blocking(move || {
            transcode::parse_request(Format::Anthropic, &raw).map(|request| {
                (
                    request.model.to_string(),
                    crate::tokens::count_request(&request),
                )
            })
        })
        .await
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("token count: {e}")))??;
        ctx.original_model = Some(crate::access_log::bounded(&model).into_owned());
        let max_model_id = self.state.config.limits.max_model_id_bytes;
        crate::admission::check_model_id(&model, max_model_id)?;
        // The model must be one the gateway knows, as for a real request.
        self.state.routes.load().resolve(&model)?;
        let body = serde_json::to_vec(&json!({ "input_tokens": tokens })).expect("JSON value");
        ctx.status = 200;
        let h = respond::header(200, &ctx.id)?;
        respond::send_body(session, h, "application/json", Bytes::from(body)).await?;
        Ok(())
    }
}
