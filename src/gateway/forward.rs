//! The upstream leg: try the route's candidates in order, then deliver the first usable
//! response, buffered or streamed.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use log::warn;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use crate::errors::{ErrorKind, FluxError};
use crate::routing::{Route, RouteTable};
use crate::state::AppState;
use crate::upstream::{Provider, UpstreamResponse};
use crate::wire::openai_chat_old::ChatRequest;

use super::respond::{self, Served};
use super::{RequestCtx, Stop};

/// Sent as the last SSE event when the provider's stream breaks after bytes reached the
/// client: the SDKs raise it as an API error instead of returning a silently cut answer.
const STREAM_BROKEN_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"The upstream stream was interrupted before it finished. Retry the request.\",\"type\":\"server_error\",\"code\":\"upstream_error\"}}\n\n";

pub async fn forward(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    routes: &RouteTable,
    route: &Route,
    request: &ChatRequest,
    client_path: &str,
) -> Result<(), Stop> {
    for &candidate in &route.candidates {
        let model = routes.model(candidate);
        let Some(provider) = state.providers.get(&model.provider) else {
            continue; // the table is validated against the providers; kept defensive
        };
        ctx.attempts += 1;
        let body = request.encode_for(&model.upstream);
        let sent_at = Instant::now();
        let response = match provider
            .send(&state.connector, client_path, body, request.stream)
            .await
        {
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

        if request.stream && response.status == 200 {
            return stream(session, ctx, provider, state, response, &served).await;
        }
        let mut response = response;
        match read_all(
            &mut response.session,
            state.config.limits.max_response_bytes,
        )
        .await
        {
            Ok(body) => {
                let mut h = respond::header(response.status, &ctx.id)?;
                served.add_headers(&mut h)?;
                // A provider's 429 or 503 says when to come back; the client needs that too.
                let upstream_header = response.session.response_header();
                if let Some(v) =
                    upstream_header.and_then(|r| r.headers.get(http::header::RETRY_AFTER))
                {
                    h.insert_header(http::header::RETRY_AFTER, v.clone())?;
                }
                let content_type = response
                    .content_type
                    .as_deref()
                    .unwrap_or("application/json");
                respond::send_body(session, h, content_type, body).await?;
                response.release(&state.connector).await;
                return Ok(());
            }
            Err(reason) => {
                warn!(
                    "{}: {} body from {} failed: {reason}",
                    ctx.id, model.id, provider.name
                );
                ctx.model = None;
                ctx.routed = None;
                continue;
            }
        }
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

/// Relay an SSE response chunk by chunk as it arrives, never buffering it.
async fn stream(
    session: &mut Session,
    ctx: &mut RequestCtx,
    provider: &Provider,
    state: &AppState,
    mut response: UpstreamResponse,
    served: &Served<'_>,
) -> Result<(), Stop> {
    let mut h = respond::header(200, &ctx.id)?;
    served.add_headers(&mut h)?;
    h.insert_header(
        http::header::CONTENT_TYPE,
        response
            .content_type
            .as_deref()
            .unwrap_or("text/event-stream"),
    )?;
    h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    // Tell intermediaries (nginx) not to buffer the stream either.
    h.insert_header("x-accel-buffering", "no")?;
    session.write_response_header(Box::new(h), false).await?;
    loop {
        match response.session.read_response_body().await {
            Ok(Some(chunk)) => session.write_response_body(Some(chunk), false).await?,
            Ok(None) => {
                session.write_response_body(None, true).await?;
                response.release(&state.connector).await;
                return Ok(());
            }
            Err(e) => {
                warn!("{}: stream from {} broke: {e}", ctx.id, provider.name);
                ctx.error_code = Some(ErrorKind::UpstreamError.code());
                session
                    .write_response_body(Some(Bytes::from_static(STREAM_BROKEN_EVENT)), true)
                    .await?;
                return Ok(());
            }
        }
    }
}
