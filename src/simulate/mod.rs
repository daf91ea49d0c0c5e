//! A simulated OpenAI-compatible provider, for demo mode, integration tests and
//! benchmarks: it answers Chat Completions deterministically (streamed or not),
//! can fail on request in the ways real upstreams do, and records what it
//! received so tests can assert what the gateway sent upstream.
//!
//! Routes (the provider routes match on the path suffix, so any base-URL prefix works):
//! - `POST …/chat/completions`, `GET …/models`
//! - `GET /healthz`
//! - `GET /_sim/requests` (the recorded requests), `DELETE /_sim/requests` (clears them)
//!
//! Failure modes are chosen with a `/_sim/<mode>/` path segment or a
//! `[sim:<mode>]` directive in the last user message (see `mode.rs`).

mod body;
mod chat;
mod mode;
mod recording;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use body::{Disconnect, SimBody, StreamItem};
use chat::{ChatRequest, Envelope, Reply};
use mode::{mode_in_path, mode_in_text, SimMode};
use recording::Recorder;

/// Largest request body accepted; gateway tests send bodies of several MB.
const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Environment variable giving the default delay between stream events, in ms.
const CHUNK_DELAY_ENV: &str = "FLUX_SIM_CHUNK_DELAY_MS";
/// How long `hang` holds a request whose client never goes away.
const HANG_LIMIT: Duration = Duration::from_secs(10 * 60);
/// Stream events a producer may queue ahead of the connection.
const STREAM_BUFFER_EVENTS: usize = 16;
/// Pause between the last event of a `cut` stream being taken by hyper and the
/// abort, so that hyper has flushed that event to the socket first.
const CUT_FLUSH_GRACE: Duration = Duration::from_millis(20);
/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Tokio worker threads of the runtime started by [`spawn_background`].
const BACKGROUND_WORKER_THREADS: usize = 2;

const RECORDING_PATH: &str = "/_sim/requests";
const MODEL_ID: &str = "sim-model";

/// Serve the simulator on an already-bound listener until the process exits.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    let simulator = Arc::new(Simulator::new(chunk_delay_from_env()));
    run(simulator, listener).await
}

/// Bind `addr` synchronously (so the caller knows the port, and a bind error is immediate),
/// then serve on a dedicated background std::thread running its own tokio runtime (2 worker threads).
/// Returns the bound address (useful with port 0).
pub fn spawn_background(addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;

    // The runtime is built on the new thread (a runtime must not be dropped
    // inside another one, which a caller's async context would be), and its
    // setup result is reported back so that every error is still immediate.
    let (setup_result, setup_outcome) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
    std::thread::Builder::new()
        .name("flux-sim".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(BACKGROUND_WORKER_THREADS)
                .thread_name("flux-sim-worker")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = setup_result.send(Err(err));
                    return;
                }
            };
            let served = runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        let _ = setup_result.send(Err(err));
                        return Ok(());
                    }
                };
                let _ = setup_result.send(Ok(()));
                serve(listener).await
            });
            if let Err(err) = served {
                log::error!("simulator on {local_addr} stopped: {err}");
            }
        })?;
    setup_outcome
        .recv()
        .map_err(|_| io::Error::other("simulator thread exited during setup"))??;
    Ok(local_addr)
}

/// Accepts connections forever, serving each on its own task.
async fn run(simulator: Arc<Simulator>, listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Usually transient (descriptor exhaustion, aborted handshake):
                // keep serving rather than take the simulator down.
                log::warn!("simulator accept failed: {err}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        // Stream events are small writes that must reach the client at once.
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("simulator could not set TCP_NODELAY for {peer}: {err}");
        }
        let simulator = simulator.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| simulator.clone().handle(request));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // Simulated disconnects end connections with an error on purpose.
            if let Err(err) = connection.await {
                log::debug!("simulator connection from {peer} ended: {err}");
            }
        });
    }
}

fn chunk_delay_from_env() -> Duration {
    match std::env::var(CHUNK_DELAY_ENV) {
        Err(_) => Duration::ZERO,
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(millis) => Duration::from_millis(millis),
            Err(_) => {
                log::warn!("ignoring {CHUNK_DELAY_ENV}={value:?}: not a number of milliseconds");
                Duration::ZERO
            }
        },
    }
}

/// The state one simulator instance shares across its connections.
struct Simulator {
    recorder: Recorder,
    /// Completions answered so far; numbers the response ids.
    completions: AtomicU64,
    /// Delay between stream events when no `slow` mode is asked for.
    chunk_delay: Duration,
    /// Requests currently held by `hang`, so tests can check none outlives its client.
    hanging: AtomicUsize,
}

impl Simulator {
    fn new(chunk_delay: Duration) -> Simulator {
        Simulator {
            recorder: Recorder::default(),
            completions: AtomicU64::new(0),
            chunk_delay,
            hanging: AtomicUsize::new(0),
        }
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<SimBody>, Disconnect> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();

        if path == "/healthz" && method == Method::GET {
            return Ok(Response::builder()
                .header(CONTENT_TYPE, "text/plain")
                .body(SimBody::full("ok"))
                .expect("static response parts are valid"));
        }
        if path == RECORDING_PATH && method == Method::GET {
            return Ok(json_response(StatusCode::OK, self.recorder.to_json()));
        }
        if path == RECORDING_PATH && method == Method::DELETE {
            let cleared = self.recorder.clear();
            return Ok(json_response(
                StatusCode::OK,
                json!({"cleared": cleared}).to_string(),
            ));
        }
        if method == Method::POST && path.ends_with("/chat/completions") {
            return self.chat_completions(request).await;
        }
        if method == Method::GET && path.ends_with("/models") {
            return self.models(&path).await;
        }
        Ok(error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            &format!("no route for {method} {path}"),
        ))
    }

    async fn chat_completions(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<SimBody>, Disconnect> {
        let (head, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<LengthLimitError>() => {
                return Ok(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "body_too_large",
                    &format!("request body exceeds {MAX_REQUEST_BODY_BYTES} bytes"),
                ));
            }
            Err(err) => {
                log::debug!("simulator could not read a request body: {err}");
                return Err(Disconnect("request body unreadable"));
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        // Recorded before any failure handling: tests assert what was sent,
        // including to an upstream that then failed.
        self.recorder.record(&head, &body, parsed.as_ref());

        let chat = match &parsed {
            Some(json) => ChatRequest::from_json(json),
            None => Err("request body is not valid JSON".to_owned()),
        };
        let mode_name = mode_in_path(head.uri.path()).or_else(|| {
            let chat = chat.as_ref().ok()?;
            mode_in_text(chat.last_user_text.as_deref()?)
        });
        let mode = match mode_name {
            None => None,
            Some(name) => match SimMode::parse(name) {
                Some(mode) => Some(mode),
                None => return Ok(unknown_mode_response(name)),
            },
        };
        // An asked-for failure wins even over an invalid request: the simulated
        // upstream fails before it looks at the body.
        let streamed = chat.as_ref().is_ok_and(|chat| chat.stream);
        if let Some(outcome) = self.failure_outcome(mode, streamed).await {
            return outcome;
        }
        let chat = match chat {
            Ok(chat) => chat,
            Err(message) => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    &message,
                ));
            }
        };

        let delay = match mode {
            Some(SimMode::Slow(delay)) => delay,
            _ => self.chunk_delay,
        };
        let reply = Reply::for_request(&chat);
        let id = format!(
            "chatcmpl-sim-{}",
            self.completions.fetch_add(1, Ordering::Relaxed) + 1
        );
        let envelope = Envelope {
            id: &id,
            created: unix_seconds(),
            model: &chat.model,
        };

        if chat.stream {
            let events = chat::stream_events(&reply, envelope, chat.include_usage);
            let cut_after =
                (mode == Some(SimMode::Cut)).then(|| events_sent_before_cut(events.len()));
            return Ok(event_stream_response(events, delay, cut_after));
        }
        // A non-streamed answer takes as long as the stream it stands for.
        if !delay.is_zero() {
            let steps = u32::try_from(reply.steps()).unwrap_or(u32::MAX);
            tokio::time::sleep(delay.saturating_mul(steps)).await;
        }
        Ok(json_response(
            StatusCode::OK,
            chat::completion_json(&reply, envelope).to_string(),
        ))
    }

    /// The model list; a `/_sim/<mode>/` path fails it the same way as chat
    /// completions, so a failing base URL fails every provider route.
    async fn models(&self, path: &str) -> Result<Response<SimBody>, Disconnect> {
        let mode = match mode_in_path(path) {
            None => None,
            Some(name) => match SimMode::parse(name) {
                Some(mode) => Some(mode),
                None => return Ok(unknown_mode_response(name)),
            },
        };
        if let Some(outcome) = self.failure_outcome(mode, false).await {
            return outcome;
        }
        if let Some(SimMode::Slow(delay)) = mode {
            tokio::time::sleep(delay).await;
        }
        let models = json!({
            "object": "list",
            "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "fluxrouter-sim"}],
        });
        Ok(json_response(StatusCode::OK, models.to_string()))
    }

    /// Carries out the modes that replace the answer entirely. `None` means the
    /// request is answered (perhaps slowly, or cut mid-stream by the caller).
    async fn failure_outcome(
        &self,
        mode: Option<SimMode>,
        streamed: bool,
    ) -> Option<Result<Response<SimBody>, Disconnect>> {
        match mode? {
            SimMode::Fail(status) => Some(Ok(upstream_failure_response(status))),
            SimMode::Refuse => Some(Err(Disconnect("refuse"))),
            SimMode::Cut if !streamed => Some(Err(Disconnect("cut"))),
            SimMode::Hang => {
                // hyper drops this future when the client disconnects, so the
                // sleep only runs its course for a client that stays forever.
                let _held = HangingRequest::new(&self.hanging);
                tokio::time::sleep(HANG_LIMIT).await;
                Some(Err(Disconnect("hang")))
            }
            SimMode::Cut | SimMode::Slow(_) => None,
        }
    }
}

/// Counts a request held by `hang` for as long as it is held.
struct HangingRequest<'a>(&'a AtomicUsize);

impl<'a> HangingRequest<'a> {
    fn new(count: &'a AtomicUsize) -> HangingRequest<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        HangingRequest(count)
    }
}

impl Drop for HangingRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many events a `cut` stream sends: half of them, but at least the role
/// chunk and one content chunk, and never all (the `[DONE]` is always lost).
fn events_sent_before_cut(total: usize) -> usize {
    (total / 2).max(2).min(total - 1)
}

/// A 200 `text/event-stream` response whose events a spawned task feeds in,
/// `delay` apart; with `cut_after`, the stream is aborted after that many events.
fn event_stream_response(
    events: Vec<Bytes>,
    delay: Duration,
    cut_after: Option<usize>,
) -> Response<SimBody> {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_EVENTS);
    tokio::spawn(produce_events(sender, events, delay, cut_after));
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .body(SimBody::Channel(receiver))
        .expect("static response parts are valid")
}

async fn produce_events(
    sender: mpsc::Sender<StreamItem>,
    events: Vec<Bytes>,
    delay: Duration,
    cut_after: Option<usize>,
) {
    let count = cut_after.unwrap_or(events.len());
    for (index, event) in events.into_iter().take(count).enumerate() {
        if index > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if sender.send(Ok(event)).await.is_err() {
            return; // The client went away; hyper dropped the body.
        }
    }
    if cut_after.is_some() {
        // hyper throws away bytes it has buffered but not yet flushed when the
        // body errors in the same write pass. It flushes as soon as the channel
        // runs dry, so wait until every queued event has been taken (all the
        // channel's slots are free again), give it a moment, then abort.
        let Ok(mut permits) = sender.reserve_many(sender.max_capacity()).await else {
            return;
        };
        tokio::time::sleep(CUT_FLUSH_GRACE).await;
        if let Some(permit) = permits.next() {
            permit.send(Err(Disconnect("cut")));
        }
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(SimBody::full(body))
        .expect("static response parts are valid")
}

/// An error in OpenAI's shape: `{"error":{"message","type","code"}}`.
fn error_response(
    status: StatusCode,
    error_type: &str,
    code: &str,
    message: &str,
) -> Response<SimBody> {
    let body = json!({"error": {"message": message, "type": error_type, "code": code}});
    json_response(status, body.to_string())
}

fn upstream_failure_response(status: StatusCode) -> Response<SimBody> {
    let mut response = error_response(
        status,
        "server_error",
        "sim_fail",
        "simulated upstream failure",
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn unknown_mode_response(name: &str) -> Response<SimBody> {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "unknown_sim_mode",
        &format!("unknown simulator mode '{name}'"),
    )
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_secs())
}

#[cfg(test)]
mod tests;
