//! The upstream leg: try the route's candidates in order, encode the request for each
//! provider's format, then deliver the first usable response to the client in the client's
//! format, buffered or streamed through the transcoder.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use log::warn;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use crate::config::Capability;
use crate::errors::{ErrorKind, FluxError};
use crate::headers;
use crate::metering::budget::Hold;
use crate::metering::ledger::Entry;
use crate::metering::{self, Rates, Usd};
use crate::routing::{Route, RouteTable};
use crate::state::AppState;
use crate::upstream::{Outgoing, Provider, UpstreamResponse};
use crate::wire::ir::Usage;
use crate::wire::ir::{Request, StreamMeta};
use crate::wire::transcode::{self, Plan, StreamTranscoder};
use crate::wire::{self, Format};

use super::respond::{self, Served};
use super::{RequestCtx, Stop};

pub async fn run(
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
    let client = request.format;
    let asked_reasoning = request.reasoning;
    // The gateway keeps no responses: only a Responses-format provider can continue one.
    let needs_state = request.previous_response_id.is_some();
    let client_headers = &session.req_header().headers;
    let anthropic_version = client_headers.get("anthropic-version").cloned();
    let anthropic_beta = client_headers.get("anthropic-beta").cloned();
    let mut tried = 0;
    for &candidate in &route.candidates {
        let model = routes.model(candidate);
        let Some(provider) = state.providers.get(&model.provider) else {
            continue; // the table is validated against the providers; kept defensive
        };
        if needs_state && provider.format != Format::OpenAiResponses {
            continue;
        }
        tried += 1;
        ctx.attempts += 1;
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
        let sent_at = Instant::now();
        let response = match provider.send(&state.connector, &outgoing).await {
            Ok(r) => r,
            Err(f) => {
                warn!(
                    "{}: {} failed at {}: {}",
                    ctx.id, model.id, f.provider, f.reason
                );
                continue;
            }
        };
        ctx.upstream_ttfb = Some(sent_at.elapsed());
        // A 5xx before any byte reached the client: the next fallback may do better.
        if response.status >= 500 {
            warn!(
                "{}: {} answered {} from {}",
                ctx.id, model.id, response.status, provider.name
            );
            continue;
        }
        let served = Served {
            routes,
            route,
            model: candidate,
            original_model: &request.model,
        };
        ctx.model = Some(model.id.clone());
        ctx.routed = Some(served.routed());
        ctx.status = response.status;
        ctx.provider_format = Some(provider.format);

        if request.stream && response.status == 200 {
            let meta = StreamMeta {
                // Announced in a translated Anthropic stream's message_start, before the
                // provider reports usage; the routing estimate costs nothing here, where the
                // tokenizer would delay the first byte (~0.7 ms for a 50 KB agent turn).
                estimated_input_tokens,
                include_usage: request.include_usage,
                created: unix_now(),
                // Priced at the end of the stream, in the client's grammar.
                rates: Some(bill.rates),
            };
            return stream(
                session, ctx, provider, state, response, &served, client, meta, &mut bill,
                &model.id,
            )
            .await;
        }
        let mut response = response;
        let body = match read_all(
            &mut response.session,
            state.config.limits.max_response_bytes,
        )
        .await
        {
            Ok(body) => body,
            Err(reason) => {
                warn!(
                    "{}: {} body from {} failed: {reason}",
                    ctx.id, model.id, provider.name
                );
                ctx.model = None;
                ctx.routed = None;
                continue;
            }
        };
        let success = (200..300).contains(&response.status);
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
                    ctx.model = None;
                    ctx.routed = None;
                    continue;
                }
            }
        } else {
            // The provider refused the request (4xx): its message, in the client's format.
            let body =
                wire::translate_error(client, provider.format, response.status, &body, &ctx.id);
            (body, "application/json")
        };
        let mut h = respond::header(response.status, &ctx.id)?;
        served.add_headers(&mut h)?;
        if let Some(usage) = usage {
            // Billed before the answer leaves: a client gone by then still pays for it.
            let cost = bill.settle(ctx, &model.id, &usage);
            h.insert_header(headers::COST_USD, cost.to_decimal())?;
        }
        // A provider's 429 or 503 says when to come back; the client needs that too.
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
        response.release(&state.connector).await;
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
    Err(FluxError::new(
        ErrorKind::UpstreamError,
        format!(
            "Upstream provider error: all {} eligible target(s) in lane '{}' failed before \
             responding. Retry with exponential backoff; if it persists, contact support with \
             this request id.",
            route.candidates.len(),
            routes.lane(route.lane).name
        ),
    )
    .into())
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
    fn settle(&mut self, ctx: &mut RequestCtx, model_id: &str, usage: &Usage) -> Usd {
        let cost = metering::cost(usage, &self.rates);
        let Some(hold) = self.hold.take() else {
            return cost;
        };
        let entry = Entry::from_usage(
            unix_now(),
            ctx.key_id.as_deref().unwrap_or_default(),
            self.lane,
            model_id,
            &ctx.id,
            usage,
            cost,
        );
        let billed = hold.settle(entry);
        ctx.usage = Some(*usage);
        ctx.cost = Some(billed);
        billed
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn read_all(upstream: &mut HttpSession, limit: usize) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    loop {
        match upstream.read_response_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(format!("response over {limit} bytes"));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Relay an SSE response event by event as it arrives, translated when the formats differ,
/// never buffering more than one event.
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
    let outcome = relay(
        session,
        ctx,
        provider,
        &mut response,
        served,
        &mut transcoder,
    )
    .await;
    // Whatever happened (finished, broken upstream, client gone), what was used is billed.
    let usage = transcoder.usage();
    let usage = if usage.output > 0 || usage.input > 0 {
        usage
    } else {
        // No usage arrived (the stream broke first): estimate from what was relayed.
        crate::wire::ir::Usage {
            input: bill.estimated_input_tokens,
            output: transcoder.output_text_bytes().div_ceil(4),
            ..Default::default()
        }
    };
    bill.settle(ctx, model_id, &usage);
    // Only a stream read to its end leaves the connection reusable.
    if let Ok(true) = outcome {
        response.release(&state.connector).await;
    }
    outcome.map(|_| ())
}

/// The stream itself; returns Ok when it ended normally.
async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    provider: &Provider,
    response: &mut UpstreamResponse,
    served: &Served<'_>,
    transcoder: &mut StreamTranscoder,
) -> Result<bool, Stop> {
    let mut h = respond::header(200, &ctx.id)?;
    served.add_headers(&mut h)?;
    h.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    // The length is unknown: chunked framing keeps the connection reusable (without it the
    // stream could only end by closing the connection).
    h.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    // Tell intermediaries (nginx) not to buffer the stream either.
    h.insert_header("x-accel-buffering", "no")?;
    session.write_response_header(Box::new(h), false).await?;
    let mut out = BytesMut::new();
    loop {
        let fault = match response.session.read_response_body().await {
            Ok(Some(chunk)) => match transcoder.push(&chunk, &mut out) {
                Ok(()) => None,
                Err(fault) => Some(fault.to_string()),
            },
            Ok(None) => match transcoder.finish(&mut out) {
                Ok(()) => {
                    session
                        .write_response_body(Some(out.split().freeze()), true)
                        .await?;
                    return Ok(true);
                }
                Err(fault) => Some(fault.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = fault {
            warn!("{}: stream from {} broke: {reason}", ctx.id, provider.name);
            ctx.error_code = Some(ErrorKind::UpstreamError.code());
            transcoder.fail(
                "The upstream stream was interrupted before it finished. Retry the request.",
                &mut out,
            );
            session
                .write_response_body(Some(out.split().freeze()), true)
                .await?;
            return Ok(false);
        }
        if !out.is_empty() {
            session
                .write_response_body(Some(out.split().freeze()), false)
                .await?;
        }
    }
}
