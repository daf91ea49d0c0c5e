//! The upstream leg: try the route's candidates in order, encode the request for each
//! provider's format, then deliver the first usable response to the client in the client's
//! format, buffered or streamed through the transcoder.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use log::{debug, error, warn};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use crate::config::server::TrafficConfig;
use crate::config::Capability;
use crate::errors::{Error, ErrorKind, Fault, FluxError};
use crate::headers;
use crate::metering::budget::Hold;
use crate::metering::ledger::Entry;
use crate::metrics::Metrics;
use crate::routing::{ModelId, Route, RouteTable};
use crate::stages::Stage;
use crate::state::AppState;
use crate::units::clock::unix_now;
use crate::units::{Rates, Usage, Usd};
use crate::upstream::breaker::{BreakerState, Verdict};
use crate::upstream::{FailureKind, Outgoing, Provider, Refusal, Ticket, UpstreamResponse};
use crate::wire::ir::{Billed, Request, StreamMeta};
use crate::wire::transcode::{self, Plan, StreamTranscoder};
use crate::wire::{self, Format};

use super::ctx::{RequestCtx, Stop};
use super::respond::{self, Served};

/// The exchange, on the heap. Its state (an attempt's connection, the timers, the response
/// being read) is large, and a future is copied whole each time it moves: inline, it made
/// the request's outer futures (which Pingora boxes and moves) as large, and those copies
/// were the biggest single item of the gateway's own time in a profile.
#[allow(clippy::too_many_arguments)]
pub fn run<'a, 'r: 'a>(
    state: &'a AppState,
    session: &'a mut Session,
    ctx: &'a mut RequestCtx,
    routes: &'a RouteTable,
    route: &'a Route,
    request: &'a mut Request<'r>,
    admitted: Admitted,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Stop>> + Send + 'a>> {
    Box::pin(exchange(
        state, session, ctx, routes, route, request, admitted,
    ))
}

async fn exchange(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    routes: &RouteTable,
    route: &Route,
    request: &mut Request<'_>,
    admitted: Admitted,
) -> Result<(), Stop> {
    let Admitted {
        hold,
        estimated_input_tokens,
    } = admitted;
    let mut bill = Bill {
        hold: Some(hold),
        rates: routes.lane(route.lane).rates,
        lane: &routes.lane(route.lane).name,
        estimated_input_tokens,
    };
    let traffic = &state.config.traffic;
    // One deadline for every attempt and fallback until a response starts: one timer for the
    // whole request (each timer taken and dropped locks the runtime's timer wheel).
    let deadline = tokio::time::sleep(Duration::from_millis(traffic.total_deadline_ms));
    tokio::pin!(deadline);
    let client = request.format;
    let asked_reasoning = request.reasoning;
    // The gateway keeps no responses: only a Responses-format provider can continue one.
    let needs_state = request.previous_response_id.is_some();
    let client_headers = &session.req_header().headers;
    let anthropic_version = client_headers.get("anthropic-version").cloned();
    let anthropic_beta = client_headers.get("anthropic-beta").cloned();
    let mut tried = 0;
    let mut failures = Failures::default();
    for &candidate in &route.candidates {
        let model = routes.model(candidate);
        let Some(provider) = state.providers.get(&model.provider) else {
            continue; // the table is validated against the providers; kept defensive
        };
        if needs_state && provider.format != Format::OpenAiResponses {
            continue;
        }
        tried += 1;
        // A short pause before the next fallback (none before a provider skipped at once).
        if failures.attempts_failed > 0 && provider.breaker.state() == BreakerState::Closed {
            let pause = backoff(traffic.retry_backoff_ms, failures.attempts_failed);
            match race(session, deadline.as_mut(), tokio::time::sleep(pause)).await {
                Raced::Done(()) => {}
                Raced::ClientGone(e) => return Err(client_gone(ctx, e)),
                Raced::Deadline => {
                    failures.deadline = true;
                    break;
                }
            }
        }
        let mut ticket = match state.providers.admit(provider) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                debug!("{}: {} skipped: {refusal:?}", ctx.id, provider.name);
                let reason = match refusal {
                    Refusal::BreakerOpen {
                        throttled: true, ..
                    } => "throttled",
                    Refusal::BreakerOpen { .. } => "breaker_open",
                    Refusal::ProviderBusy | Refusal::TotalBusy => "busy",
                };
                state.metrics.upstream_skipped(&provider.name, reason);
                failures.refused(refusal);
                continue;
            }
        };
        ctx.attempts += 1;
        state.metrics.attempt(&provider.name, ctx.attempts > 1);
        // Counted in flight at the target until this attempt ends (its latency score).
        let _inflight = model.stats.start();
        // A reasoning setting is translated only for a model that takes one.
        request.reasoning = asked_reasoning.filter(|_| model.has(Capability::Reasoning));
        let body = transcode::encode_request(provider.format, request, &model.upstream);
        if transcode::plan(client, provider.format) == Plan::Translate {
            ctx.dropped_fields = request.unknown.len();
        }
        let outgoing = Outgoing {
            body: Bytes::from(body),
            stream: request.stream,
            // Claude Code's betas reach providers that speak its format.
            anthropic_version: (client == Format::Anthropic)
                .then_some(anthropic_version.as_ref())
                .flatten(),
            anthropic_beta: (client == Format::Anthropic)
                .then_some(anthropic_beta.as_ref())
                .flatten(),
        };
        ctx.stages.mark(Stage::BuildUpstream);
        let sent_at = Instant::now();
        // The client may leave while the provider thinks: then the attempt is dropped at once
        // (closing the upstream connection) and no fallback is tried.
        let response = match race(
            session,
            deadline.as_mut(),
            provider.send(&state.connector, &outgoing),
        )
        .await
        {
            Raced::Done(Ok(r)) => r,
            Raced::Done(Err(f)) => {
                warn!(
                    "{}: {} failed at {}: {}",
                    ctx.id, model.id, f.provider, f.reason
                );
                if f.kind == FailureKind::Timeout {
                    // As slow as it gets: the latency strategy must see it.
                    model
                        .stats
                        .observe(sent_at.elapsed(), estimated_input_tokens);
                }
                ctx.upstream_time += sent_at.elapsed();
                failures.attempt_failed(ctx, &state.metrics, &mut ticket, provider, f.kind);
                continue;
            }
            Raced::ClientGone(e) => {
                ctx.upstream_time += sent_at.elapsed();
                return Err(client_gone(ctx, e));
            }
            Raced::Deadline => {
                warn!(
                    "{}: {} at {}: total deadline of {} ms passed",
                    ctx.id, model.id, provider.name, traffic.total_deadline_ms
                );
                ctx.upstream_time += sent_at.elapsed();
                model
                    .stats
                    .observe(sent_at.elapsed(), estimated_input_tokens);
                failures.deadline_passed(ctx, &state.metrics, provider);
                break;
            }
        };
        let ttfb = sent_at.elapsed();
        model.stats.observe(ttfb, estimated_input_tokens);
        ctx.stages.mark(Stage::UpstreamHead);
        ctx.upstream_ttfb = Some(ttfb);
        ctx.upstream_time += ttfb;
        state.metrics.first_byte(&provider.name, ttfb);
        // A 5xx before any byte reached the client: the next fallback may do better.
        if response.status >= 500 {
            warn!(
                "{}: {} answered {} from {}",
                ctx.id, model.id, response.status, provider.name
            );
            failures.attempt_failed(
                ctx,
                &state.metrics,
                &mut ticket,
                provider,
                FailureKind::BadAnswer,
            );
            continue;
        }
        // The provider refused the gateway's own key: the operator must fix it; the client's
        // key is not at fault. Loud, with the provider's name and never the key.
        if response.status == 401 || response.status == 403 {
            error!(
                "{}: provider {} rejected the gateway's credentials with {} for {}: check \
                 providers.{}.api_key_env and the key it names",
                ctx.id, provider.name, response.status, model.id, provider.name
            );
            failures.attempt_failed(
                ctx,
                &state.metrics,
                &mut ticket,
                provider,
                FailureKind::Auth,
            );
            continue;
        }
        let served = Served {
            routes,
            route,
            model: candidate,
            original_model: &request.model,
        };
        ctx.serve(candidate, provider);
        ctx.routed = Some(served.routed());
        ctx.status = response.status;
        ctx.provider_format = Some(provider.format);

        if request.stream && response.status == 200 {
            ticket.verdict(Verdict::Success);
            let meta = StreamMeta {
                // Announced in a translated Anthropic stream's message_start, before the
                // provider reports usage; the routing estimate costs nothing here, where the
                // tokenizer would delay the first byte (~0.7 ms for a 50 KB agent turn).
                estimated_input_tokens,
                include_usage: request.include_usage,
                created: unix_now(),
            };
            let streamed = stream(
                session, ctx, provider, state, response, &served, client, meta, &mut bill,
                &model.id,
            )
            .await;
            ctx.stages.mark(Stage::Stream);
            return streamed;
        }
        let mut response = response;
        let limit = state.config.limits.max_response_bytes;
        let reading = Instant::now();
        let read = race(
            session,
            deadline.as_mut(),
            read_all(&mut response.session, limit),
        )
        .await;
        ctx.upstream_time += reading.elapsed();
        ctx.stages.mark(Stage::UpstreamBody);
        let body = match read {
            Raced::Done(Ok(body)) => body,
            Raced::Done(Err(reason)) => {
                warn!(
                    "{}: {} body from {} failed: {reason}",
                    ctx.id, model.id, provider.name
                );
                ctx.unserve();
                failures.attempt_failed(
                    ctx,
                    &state.metrics,
                    &mut ticket,
                    provider,
                    FailureKind::BadAnswer,
                );
                continue;
            }
            Raced::ClientGone(e) => return Err(client_gone(ctx, e)),
            Raced::Deadline => {
                ctx.unserve();
                failures.deadline_passed(ctx, &state.metrics, provider);
                break;
            }
        };
        let success = (200..300).contains(&response.status);
        // A provider's 429: the next fallback may have room. Kept, to pass through (with its
        // Retry-After) when no fallback is left.
        if response.status == 429 {
            warn!(
                "{}: {} answered 429 from {}",
                ctx.id, model.id, provider.name
            );
            let retry_after = response
                .session
                .response_header()
                .and_then(|r| r.headers.get(http::header::RETRY_AFTER))
                .cloned();
            // The provider asked for room: no request goes to it for as long as it asked.
            let ejected = provider
                .breaker
                .throttle(retry_after.as_ref().and_then(retry_after_duration));
            state.metrics.upstream_ejected(&provider.name, "throttled");
            warn!(
                "{}: provider {} ejected for {} ms after a 429",
                ctx.id,
                provider.name,
                ejected.as_millis()
            );
            failures.throttled = Some(Throttled {
                body: wire::translate_error(client, provider.format, 429, &body, &ctx.id),
                content_type: response.content_type.take(),
                retry_after,
                model: candidate,
                provider: provider.clone(),
            });
            ctx.unserve();
            ctx.attempt_failed(&state.metrics, provider, "throttled");
            failures.attempts_failed += 1;
            // Neither healthy nor broken: the breaker is told nothing (the ticket abandons).
            response.release(&state.connector).await;
            continue;
        }
        let mut usage = None;
        let (body, content_type) = if success {
            match transcode::translate_response(client, provider.format, body.clone()) {
                Ok((body, seen)) => {
                    usage = Some(seen);
                    (body, "application/json")
                }
                // A body the gateway cannot read: relayed as it is when no translation is
                // needed (the client may know better), a failed attempt otherwise.
                Err(reason) if transcode::plan(client, provider.format) == Plan::Passthrough => {
                    warn!(
                        "{}: {} answered an unreadable body: {reason}",
                        ctx.id, model.id
                    );
                    (body, "application/json")
                }
                Err(reason) => {
                    warn!(
                        "{}: {} answered an unreadable body: {reason}",
                        ctx.id, model.id
                    );
                    ctx.unserve();
                    failures.attempt_failed(
                        ctx,
                        &state.metrics,
                        &mut ticket,
                        provider,
                        FailureKind::BadAnswer,
                    );
                    continue;
                }
            }
        } else {
            // The provider refused the request (4xx): its message, in the client's format.
            let body =
                wire::translate_error(client, provider.format, response.status, &body, &ctx.id);
            (body, "application/json")
        };
        ctx.stages.mark(Stage::Meter);
        // Whatever else the provider answered (2xx, or a 4xx about the request), it works.
        ticket.verdict(Verdict::Success);
        let mut h = respond::header(response.status, &ctx.id)?;
        served.add_headers(&mut h)?;
        if let Some(usage) = usage {
            // Billed before the answer leaves: a client gone by then still pays for it.
            let cost = bill.settle(ctx, &model.id, &usage).await;
            h.insert_header(headers::COST_USD, cost.to_decimal())?;
            ctx.stages.mark(Stage::Settle);
        }
        // A provider's 503 says when to come back; the client needs that too.
        let upstream_header = response.session.response_header();
        if let Some(v) = upstream_header.and_then(|r| r.headers.get(http::header::RETRY_AFTER)) {
            h.insert_header(http::header::RETRY_AFTER, v.clone())?;
        }
        let content_type = if success {
            content_type
        } else {
            response.content_type.as_deref().unwrap_or(content_type)
        };
        respond::send_body(session, h, content_type, body).await?;
        ctx.stages.mark(Stage::WriteResponse);
        response.release(&state.connector).await;
        ctx.stages.mark(Stage::Release);
        return Ok(());
    }
    if needs_state && tried == 0 {
        return Err(FluxError::new(
            ErrorKind::InvalidRequest,
            "'previous_response_id' cannot be honoured: FluxRouter keeps no responses, and the \
             model serving this request is not behind a Responses-format provider. Send the \
             full conversation in 'input' (with store: false, as Codex does).",
        )
        .into());
    }
    // No fallback left: the most useful answer from what happened.
    if let Some(throttled) = failures.throttled.take() {
        return pass_throttled(session, ctx, routes, route, &request.model, throttled).await;
    }
    Err(failures.into_error(routes, route, traffic).into())
}

/// A provider's 429, kept while the fallbacks are tried.
struct Throttled {
    body: Bytes,
    content_type: Option<String>,
    retry_after: Option<http::HeaderValue>,
    provider: Arc<Provider>,
    model: ModelId,
}

async fn pass_throttled(
    session: &mut Session,
    ctx: &mut RequestCtx,
    routes: &RouteTable,
    route: &Route,
    original_model: &str,
    throttled: Throttled,
) -> Result<(), Stop> {
    let served = Served {
        routes,
        route,
        model: throttled.model,
        original_model,
    };
    ctx.served = Some(throttled.model);
    ctx.provider = Some(throttled.provider);
    ctx.routed = Some(served.routed());
    ctx.status = 429;
    let mut h = respond::header(429, &ctx.id)?;
    served.add_headers(&mut h)?;
    if let Some(v) = throttled.retry_after {
        h.insert_header(http::header::RETRY_AFTER, v)?;
    }
    let content_type = throttled
        .content_type
        .as_deref()
        .unwrap_or("application/json");
    respond::send_body(session, h, content_type, throttled.body).await?;
    Ok(())
}

/// What went wrong with the candidates, to choose the client's error when none is left.
#[derive(Default)]
struct Failures {
    /// Attempts that failed (for the backoff).
    attempts_failed: u32,
    bad_answer: bool,
    auth: bool,
    timeout: bool,
    connect: bool,
    deadline: bool,
    throttled: Option<Throttled>,
    /// Skipped for a concurrency cap.
    busy: bool,
    /// Skipped for an open breaker: the soonest it lets a probe through.
    breaker_open: Option<Duration>,
    /// Skipped only for ejections after 429s (so far): the client hears 429 too.
    all_throttled: Option<bool>,
}

impl Failures {
    /// An attempt at `provider` failed: its breaker hears of it, the metrics and the access
    /// log count it, and its kind weighs in the client's error if no fallback serves.
    fn attempt_failed(
        &mut self,
        ctx: &mut RequestCtx,
        metrics: &Metrics,
        ticket: &mut Ticket<'_>,
        provider: &Arc<Provider>,
        kind: FailureKind,
    ) {
        ticket.verdict(Verdict::Failure);
        ctx.attempt_failed(metrics, provider, kind.label());
        self.attempt(kind);
    }

    /// The total deadline passed during the attempt at `provider`: no fallback is tried. The
    /// breaker is told nothing (the deadline is the request's, not the provider's fault).
    fn deadline_passed(
        &mut self,
        ctx: &mut RequestCtx,
        metrics: &Metrics,
        provider: &Arc<Provider>,
    ) {
        ctx.attempt_failed(metrics, provider, "deadline");
        self.deadline = true;
    }

    fn attempt(&mut self, kind: FailureKind) {
        self.attempts_failed += 1;
        match kind {
            FailureKind::Connect => self.connect = true,
            FailureKind::Timeout => self.timeout = true,
            FailureKind::BadAnswer => self.bad_answer = true,
            FailureKind::Auth => self.auth = true,
        }
    }

    fn refused(&mut self, refusal: Refusal) {
        match refusal {
            Refusal::ProviderBusy | Refusal::TotalBusy => self.busy = true,
            Refusal::BreakerOpen { left, throttled } => {
                self.breaker_open = Some(self.breaker_open.map_or(left, |d| d.min(left)));
                self.all_throttled = Some(self.all_throttled.unwrap_or(true) && throttled);
            }
        }
    }

    fn attempted(&self) -> bool {
        self.attempts_failed > 0 || self.deadline
    }

    fn into_error(self, routes: &RouteTable, route: &Route, traffic: &TrafficConfig) -> FluxError {
        let lane = routes.lane(route.lane);
        if self.auth {
            return FluxError::new(
                ErrorKind::UpstreamAuthError,
                format!(
                    "Upstream provider error: the provider(s) of lane '{}' refused FluxRouter's \
                     credentials. This is not your key; the operator has been alerted. Quote \
                     this request id to support.",
                    lane.name
                ),
            );
        }
        if !self.bad_answer && (self.deadline || self.timeout) {
            return FluxError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "Upstream timeout: no provider of lane '{}' answered in time. Retry with \
                     exponential backoff.",
                    lane.name
                ),
            );
        }
        if !self.attempted() && self.busy {
            if lane.premium {
                return FluxError::new(
                    ErrorKind::PremiumUnavailable,
                    format!(
                        "Premium routing temporarily unavailable: lane '{}' is at capacity. \
                         Retry in a few seconds, or use flux-fast or flux-standard.",
                        lane.name
                    ),
                )
                .retry_after(PREMIUM_RETRY_AFTER_S);
            }
            return FluxError::new(
                ErrorKind::Overloaded,
                "Service busy: every provider that can serve this request is at capacity. Retry \
                 after the Retry-After delay.",
            )
            .retry_after(traffic.overload_retry_after_s);
        }
        if let (Some(left), Some(true), false, false) = (
            self.breaker_open,
            self.all_throttled,
            self.attempted(),
            self.busy,
        ) {
            return FluxError::new(
                ErrorKind::UpstreamRateLimited,
                format!(
                    "Upstream rate limited: every provider of lane '{}' that can serve this \
                     request asked FluxRouter to slow down. Retry after the Retry-After delay.",
                    lane.name
                ),
            )
            .retry_after(left.as_millis().div_ceil(1000).max(1) as u64);
        }
        let err = FluxError::new(
            ErrorKind::UpstreamError,
            format!(
                "Upstream provider error: all {} eligible target(s) in lane '{}' failed before \
                 responding. Retry with exponential backoff; if it persists, contact support \
                 with this request id.",
                route.candidates.len(),
                lane.name
            ),
        );
        match self.breaker_open {
            // Only skipped providers: they are probed again after their cooldown.
            Some(left) if !self.attempted() => {
                err.retry_after(left.as_millis().div_ceil(1000).max(1) as u64)
            }
            _ => err,
        }
    }
}

/// A `Retry-After` in seconds (a date form is not used by providers for 429s: the backoff
/// applies then).
fn retry_after_duration(v: &HeaderValue) -> Option<Duration> {
    let secs: f64 = v.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// `retry_after` of a 402 premium_unavailable (seed 002: "~5s").
const PREMIUM_RETRY_AFTER_S: u64 = 5;

/// The pause before the `n`th fallback after a failure: doubling, at most 8 times the base.
fn backoff(base_ms: u64, failed: u32) -> Duration {
    let factor = 1u64 << failed.saturating_sub(1).min(3);
    Duration::from_millis(base_ms.saturating_mul(factor))
}

/// How a wait on the upstream ended.
enum Raced<T> {
    Done(T),
    /// The client closed its connection (or reset its stream) meanwhile.
    ClientGone(Box<pingora::Error>),
    /// The request's total deadline passed.
    Deadline,
}

/// Run `work` (an upstream wait) until it finishes, the client hangs up, or the deadline
/// passes, whichever comes first; `work` is dropped (its connection closed) in the latter two.
async fn race<F: Future>(
    session: &mut Session,
    deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    work: F,
) -> Raced<F::Output> {
    tokio::select! {
        biased;
        e = downstream_closed(session) => Raced::ClientGone(e),
        _ = deadline => Raced::Deadline,
        v = work => Raced::Done(v),
    }
}

/// The hang-up as the error the pipeline stops with: whatever Pingora reported (a FIN, an h2
/// reset, bytes where none belong), `ConnectionClosed`, which answers nothing more.
fn hang_up(e: Box<pingora::Error>) -> Box<pingora::Error> {
    pingora::Error::because(
        pingora::ErrorType::ConnectionClosed,
        "client went away while the gateway waited upstream",
        e,
    )
}

/// Resolves when the client closes the connection (HTTP/1: a FIN or RST on the socket; h2: the
/// stream reset). The request body has been read in full, so Pingora's idle probe reads at
/// most one byte, and a byte where none is expected counts as a hang-up too (the proxy path
/// does the same with `read_body_or_idle`). Pending as long as the client waits.
async fn downstream_closed(session: &mut Session) -> Box<pingora::Error> {
    loop {
        match session.read_body_or_idle(true).await {
            Err(e) => return e,
            // Body bytes cannot arrive after the body; never busy-loop on them anyway.
            Ok(_) => tokio::task::yield_now().await,
        }
    }
}

/// The client left while the gateway waited upstream: nothing is answered, nothing more is
/// tried; the spend hold is released when the bill is dropped.
fn client_gone(ctx: &mut RequestCtx, e: Box<pingora::Error>) -> Stop {
    warn!(
        "{}: client closed the connection while waiting for the provider; upstream request \
         cancelled",
        ctx.id
    );
    ctx.status = CLIENT_CLOSED;
    ctx.error_code = Some("client_closed");
    Stop::Broken(hang_up(e))
}

/// What the access log records for a client that left before its answer (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

/// The maintenance switch (`traffic.maintenance`): every generation request gets 503.
pub fn maintenance(state: &AppState) -> Result<(), FluxError> {
    let t = &state.config.traffic;
    if !t.maintenance {
        return Ok(());
    }
    Err(
        FluxError::new(ErrorKind::Maintenance, t.maintenance_message.clone())
            .retry_after(t.maintenance_retry_after_s),
    )
}

/// What let the request through: its spend hold, and the input estimate a translated
/// Anthropic stream announces before the provider reports usage.
pub struct Admitted {
    pub hold: Hold,
    pub estimated_input_tokens: u64,
}

/// The request's hold and how to price it.
struct Bill<'a> {
    hold: Option<Hold>,
    rates: Rates,
    lane: &'a str,
    estimated_input_tokens: u64,
}

impl Bill<'_> {
    /// Record the real cost in the ledger and release the hold; returns what was billed.
    async fn settle(&mut self, ctx: &mut RequestCtx, model_id: &str, usage: &Usage) -> Usd {
        let cost = crate::units::cost(usage, &self.rates);
        let Some(hold) = self.hold.take() else {
            return cost;
        };
        let entry = Entry::from_usage(
            unix_now(),
            ctx.account.as_deref().map_or("", |a| a.key_id.as_str()),
            ctx.account.as_deref().map_or("", |a| a.account_id.as_str()),
            self.lane,
            model_id,
            &ctx.id,
            usage,
            cost,
        );
        let billed = hold.settle(entry).await;
        ctx.usage = Some(*usage);
        ctx.cost = Some(billed);
        billed
    }
}

async fn read_all(upstream: &mut HttpSession, limit: usize) -> Result<Bytes, Error> {
    let mut buf = BytesMut::new();
    loop {
        match upstream.read_response_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(Error::new(
                        Fault::TooLarge,
                        format!("response over {limit} bytes"),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(Error::new(Fault::Io, "reading the body").because(e)),
        }
    }
}

/// How the provider's stream ended, once the client heard everything but its end.
enum Ended {
    /// Normally: the usage is final.
    Finished,
    /// It broke (the provider cut it, or sent what cannot be relayed).
    Broken,
}

/// Relay an SSE response event by event as it arrives, translated when the formats differ,
/// never buffering more than one event. The stream's end, which tells the client what it
/// cost, is written once the request is billed: the amount is what was billed.
#[allow(clippy::too_many_arguments)]
async fn stream(
    session: &mut Session,
    ctx: &mut RequestCtx,
    provider: &Provider,
    state: &AppState,
    mut response: UpstreamResponse,
    served: &Served<'_>,
    client: Format,
    meta: StreamMeta,
    bill: &mut Bill<'_>,
    model_id: &str,
) -> Result<(), Stop> {
    let mut transcoder = StreamTranscoder::new(client, provider.format, meta);
    let mut out = BytesMut::new();
    let ended = relay(
        session,
        ctx,
        &state.metrics,
        provider,
        &mut response,
        served,
        &mut transcoder,
        &mut out,
    )
    .await;
    // Whatever happened (finished, broken upstream, client gone), what was used is billed.
    let usage = transcoder.usage();
    let usage = if usage.output > 0 || usage.input > 0 {
        usage
    } else {
        // No usage arrived (the stream broke first): estimate from what was relayed.
        Usage {
            input: bill.estimated_input_tokens,
            output: transcoder.output_text_bytes().div_ceil(4),
            ..Default::default()
        }
    };
    let billed = Billed {
        cost: bill.settle(ctx, model_id, &usage).await,
        usage,
    };
    let ended = ended?;
    match ended {
        Ended::Finished => transcoder.close(Some(&billed), &mut out),
        Ended::Broken => transcoder.fail(
            "The upstream stream was interrupted before it finished. Retry the request.",
            Some(&billed),
            &mut out,
        ),
    }
    session
        .write_response_body(Some(out.freeze()), true)
        .await?;
    // Only a stream read to its end leaves the connection reusable.
    if let Ended::Finished = ended {
        response.release(&state.connector).await;
    }
    Ok(())
}

/// The stream itself, all but its end (left in `out`).
#[allow(clippy::too_many_arguments)]
async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    metrics: &crate::metrics::Metrics,
    provider: &Provider,
    response: &mut UpstreamResponse,
    served: &Served<'_>,
    transcoder: &mut StreamTranscoder,
    out: &mut BytesMut,
) -> Result<Ended, Stop> {
    let mut h = respond::header(200, &ctx.id)?;
    served.add_headers(&mut h)?;
    h.insert_header(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    )?;
    h.insert_header(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    )?;
    // The length is unknown: chunked framing keeps the connection reusable (without it the
    // stream could only end by closing the connection).
    h.insert_header(
        http::header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    )?;
    // Tell intermediaries (nginx) not to buffer the stream either.
    h.insert_header(
        http::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    )?;
    respond::write_head(session, h, false).await?;
    loop {
        // A client that leaves mid-stream, even during a pause between events, stops the
        // upstream at once (the connection is dropped, not pooled); what was used is billed.
        let waiting = Instant::now();
        let read = tokio::select! {
            biased;
            e = downstream_closed(session) => {
                debug!("{}: client left mid-stream; upstream stream dropped", ctx.id);
                ctx.error_code.get_or_insert("client_closed");
                return Err(Stop::Broken(hang_up(e)));
            }
            read = response.session.read_response_body() => read,
        };
        ctx.upstream_time += waiting.elapsed();
        let fault = match read {
            Ok(Some(chunk)) => match transcoder.push(&chunk, out) {
                Ok(()) => None,
                Err(fault) => Some(fault.to_string()),
            },
            Ok(None) => match transcoder.finish(out) {
                Ok(()) => return Ok(Ended::Finished),
                Err(fault) => Some(fault.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = fault {
            warn!("{}: stream from {} broke: {reason}", ctx.id, provider.name);
            metrics.upstream_error(&provider.name, "stream_broken");
            ctx.error_code = Some(ErrorKind::UpstreamError.code());
            return Ok(Ended::Broken);
        }
        if !out.is_empty() {
            session
                .write_response_body(Some(out.split().freeze()), false)
                .await?;
        }
    }
}
