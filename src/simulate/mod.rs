//! A simulated LLM provider, for demo mode, integration tests and benchmarks. It
//! speaks the three provider formats, streamed or not, deterministically; it can
//! fail on request in the ways real upstreams do; and it records what it received
//! so tests can assert what the gateway sent upstream.
//!
//! Routes (the provider routes match on the path suffix, so any base-URL prefix
//! works, and the query string is ignored):
//! - `POST …/chat/completions` (OpenAI Chat Completions, `chat.rs`)
//! - `POST …/responses` (OpenAI Responses, `responses.rs`)
//! - `POST …/messages` (Anthropic Messages, `anthropic.rs`)
//! - `GET …/models`, `GET /healthz`
//! - `GET /_sim/hanging` (`{"hanging": n}`: requests `hang` holds right now)
//! - `GET /_sim/requests` (the recorded requests: method, path, query, HTTP `version`
//!   (`HTTP/1.1` or `HTTP/2.0`), headers, `auth` (the credential headers that arrived, with
//!   their keys), body), `DELETE /_sim/requests`
//! - `GET /_sim/connections` (`{"accepted": n, "open": n}`: TCP connections accepted since
//!   start, and open now), for counting what a gateway opens under load
//! - `GET /_sim/streams` (`{"cancelled": n}`: event streams whose client went away before
//!   their end: an HTTP/1.1 connection closed, or an HTTP/2 stream reset)
//! - `PUT /_sim/targets/<name>` with `{"first_byte_ms": n}` (0..=60000; nothing else):
//!   the delay before the response head of every later request of that target, whole or
//!   streamed, failures included (its model list too); answers the target's state.
//!   `GET /_sim/targets/<name>`: `{"first_byte_ms", "requests", "cached_requests",
//!   "input_tokens", "cached_tokens", "cacheable_tokens", "waiting"}`: generation
//!   requests that reached it (simulated failures included), answers that reported cached
//!   input tokens, the input tokens answered, their cached part, and the part a warm
//!   prefix cache would have reported (the cacheable prefixes of 1,024 tokens or more),
//!   requests waiting out the delay now;
//!   a name never used reports zeros (and is not created). `GET /_sim/targets`:
//!   `{"targets": {name: state, …}}` by name; `DELETE /_sim/targets` forgets every
//!   target (latency, cache, counters): `{"forgotten": n}`. A bad name is a 400
//!   `invalid_sim_target`, bad settings a 400 `invalid_target_settings`.
//!
//! Targets (`targets.rs`): one simulator stands for several provider endpoints. A
//! `/_sim/target=<name>/` path segment (1-32 characters of `[A-Za-z0-9_-]`), before or
//! after a mode segment (`/_sim/target=b/slow=100/v1`), puts a request in target `<name>`;
//! without one it is in `default`. A bad name is a 400 `invalid_sim_target` in the
//! format's error shape (never silently `default`); a second target or mode segment a 400
//! `repeated_sim_segment`. At most 1,024 targets besides `default`: a new one beyond is a
//! 400 `too_many_sim_targets` (not a 429, which a gateway would retry or eject for). The
//! first-byte delay is a tokio sleep, dropped at once when the client leaves.
//!
//! Each target has a prompt cache (`prefix.rs`), like a provider's: a request's cacheable
//! prefix is every block (system prompt or instructions, then each message or input item;
//! the model and tools key it too) before its last input message (user message or tool
//! result); the longest prefix the target served in the last 5 minutes (refreshed by use),
//! ending at a block boundary and of at least 1,024 prompt tokens, is reported as cached:
//! Chat `usage.prompt_tokens_details.cached_tokens`, Responses
//! `usage.input_tokens_details.cached_tokens`, Anthropic `usage.cache_read_input_tokens`
//! (with `input_tokens` the uncached rest). After an answer, its cacheable prefix and its
//! whole prompt are remembered, so the conversation's next turn hits. 4,096 prefixes per
//! target, the least recently used evicted (about 200 KB a full target).
//!
//! - `POST /_sim/policy[/<mode>]`: a routing policy hook for FluxRouter's `policy:`
//!   (recorded like the provider requests): `{}` (allow), or by mode `deny`, `deny=<status>`,
//!   `lane=<name>`, `targets=<id>,<id>`, `cache=<ms>` (allow, cached by account), `hang`,
//!   `garbage` (not JSON)
//!
//! Every connection speaks HTTP/1.1 or HTTP/2 with prior knowledge (h2c): hyper's auto
//! builder reads the first bytes and serves the HTTP/2 preface as HTTP/2.
//!
//! Each format's parser reduces its request to one [`model::SimInput`]; the shared
//! [`model::Reply`] answers "Hello from {model}. You said: <first 8 words of the last
//! user text>" (or "… The tool said: <first 8 words>" when the conversation ends with
//! a tool result), and each format renders it in its official grammar. The reply:
//! - calls a tool only when asked: a forcing `tool_choice` (Chat `"required"`/named,
//!   Responses `"required"`/named, Anthropic `any`/`tool`) or a directive in the last
//!   user text: `[sim:tool]` (the first offered tool, arguments `{"sim":true}`),
//!   `[sim:parallel]` (the first two, in one turn), `[sim:call NAME {json}]` (NAME,
//!   when offered, with exactly these arguments). Never in answer to a tool result,
//!   and never just because tools are offered (real clients always offer many);
//! - starts with thinking ("Thinking about: <words>", with a deterministic signature)
//!   when asked: Anthropic `thinking` enabled/adaptive, Responses `reasoning`, Chat
//!   `reasoning_effort`;
//! - reports cached prompt tokens: the target's prefix cache (above), or when more:
//!   Anthropic, the blocks carrying `cache_control`; Responses, the
//!   system/developer/instructions text when `prompt_cache_key` is set; Chat, half the
//!   prompt when `[sim:cached]` is in the text.
//!
//! Modes, chosen with a `/_sim/<mode>/` path segment or a `[sim:<mode>]` directive in
//! the last user text (see `mode.rs`), apply to every format, with its error shape:
//! `fail500`, `fail503`, `fail429` (with `retry-after: 1`), `fail401`, `slow`,
//! `slow=<ms>`, `cut` (aborts a stream in the middle of an event's bytes), `cut-clean`
//! (aborts it between events), `error-event` (ends a stream with the format's in-stream
//! error event; a 500 when not streamed), `refuse`, `hang`.

mod anthropic;
mod body;
mod chat;
mod mode;
mod model;
mod prefix;
mod recording;
mod responses;
mod targets;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::errors::{Error, Fault};
use body::{Disconnect, SimBody, StreamItem};
use mode::{is_target_name, mode_in_text, sim_path, SimMode, SimPath, SimPathError};
use model::{Envelope, Reply, SimInput};
use recording::Recorder;
use targets::{TargetSettings, Targets, TooManyTargets, DEFAULT_TARGET, MAX_TARGETS};

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
/// How many requests `hang` holds right now (tests check the gateway let go of them).
const HANGING_PATH: &str = "/_sim/hanging";
/// Connections accepted and open (tests count what the gateway opens under load).
const CONNECTIONS_PATH: &str = "/_sim/connections";
/// Event streams abandoned by their client.
const STREAMS_PATH: &str = "/_sim/streams";
/// Every target's latency and counters (`GET`), or forget them all (`DELETE`); with
/// `/<name>` one target's (`GET`), or set its latency (`PUT`).
const TARGETS_PATH: &str = "/_sim/targets";
/// A routing policy hook ([`Simulator::policy`]).
const POLICY_PATH: &str = "/_sim/policy";
/// Largest target settings body accepted.
const MAX_SETTINGS_BODY_BYTES: usize = 64 * 1024;
/// The message of an `error-event` stream's error.
const SIMULATED_STREAM_ERROR: &str = "simulated error in the middle of the stream";
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
    // One builder for every connection: HTTP/1.1 with keep-alive, or h2c (prior knowledge).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
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
        let builder = builder.clone();
        tokio::spawn(async move {
            let _open = OpenConnection::new(&simulator.connections);
            let handler = simulator.clone();
            let service = service_fn(move |request| handler.clone().handle(request));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
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
    connections: Connections,
    /// The named targets: latency, prompt cache, counters.
    targets: Targets,
    /// Event streams whose client went away before their end.
    streams_cancelled: Arc<AtomicU64>,
}

/// TCP connections accepted since start, and open now.
#[derive(Default)]
struct Connections {
    accepted: AtomicU64,
    open: AtomicU64,
}

impl Simulator {
    fn new(chunk_delay: Duration) -> Simulator {
        Simulator {
            recorder: Recorder::default(),
            completions: AtomicU64::new(0),
            chunk_delay,
            hanging: AtomicUsize::new(0),
            connections: Connections::default(),
            targets: Targets::default(),
            streams_cancelled: Arc::new(AtomicU64::new(0)),
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
        if path == HANGING_PATH && method == Method::GET {
            let hanging = self.hanging.load(Ordering::SeqCst);
            return Ok(json_response(
                StatusCode::OK,
                json!({"hanging": hanging}).to_string(),
            ));
        }
        if path == CONNECTIONS_PATH && method == Method::GET {
            let connections = json!({
                "accepted": self.connections.accepted.load(Ordering::SeqCst),
                "open": self.connections.open.load(Ordering::SeqCst),
            });
            return Ok(json_response(StatusCode::OK, connections.to_string()));
        }
        if path == STREAMS_PATH && method == Method::GET {
            let cancelled = self.streams_cancelled.load(Ordering::SeqCst);
            return Ok(json_response(
                StatusCode::OK,
                json!({"cancelled": cancelled}).to_string(),
            ));
        }
        if path == RECORDING_PATH && method == Method::DELETE {
            let cleared = self.recorder.clear();
            return Ok(json_response(
                StatusCode::OK,
                json!({"cleared": cleared}).to_string(),
            ));
        }
        if path == TARGETS_PATH || path.starts_with("/_sim/targets/") {
            return self.targets_route(&method, &path, request).await;
        }
        if method == Method::POST && (path == POLICY_PATH || path.starts_with("/_sim/policy/")) {
            return self.policy(&path, request).await;
        }
        if method == Method::POST {
            if let Some(api) = Api::for_path(&path) {
                return self.completion(api, request).await;
            }
        }
        if method == Method::GET && path.ends_with("/models") {
            return self.models(&path).await;
        }
        Ok(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {method} {path}"),
        ))
    }

    /// A routing policy hook for FluxRouter's `policy:` (recorded like a provider request).
    /// The answer is chosen by the path: `/_sim/policy` (or `/allow`): `{}`; `/deny`: a 403
    /// refusal with code `sim_policy_denied`; `/deny=<status>`; `/lane=<name>`;
    /// `/targets=<id>,<id>`; `/cache=<ms>`: allow, cached by account for that long;
    /// `/hang`: never answers; `/garbage`: a body that is not JSON.
    async fn policy(
        &self,
        path: &str,
        request: Request<Incoming>,
    ) -> Result<Response<SimBody>, Disconnect> {
        let (head, body) = request.into_parts();
        let body = match Limited::new(body, 1024 * 1024).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return Err(Disconnect("policy question unreadable")),
        };
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        self.recorder.record(&head, &body, parsed.as_ref());
        let mode = path[POLICY_PATH.len()..].trim_start_matches('/');
        let answer = match mode {
            "" | "allow" => json!({}),
            "deny" => json!({"deny": {"status": 403, "code": "sim_policy_denied",
                "message": "The simulated policy refuses this request."}}),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                json!({})
            }
            "garbage" => return Ok(json_response(StatusCode::OK, "not json".to_string())),
            m => {
                if let Some(status) = m.strip_prefix("deny=") {
                    json!({"deny": {"status": status.parse::<u16>().unwrap_or(403),
                        "code": "sim_policy_denied", "message": "Refused."}})
                } else if let Some(lane) = m.strip_prefix("lane=") {
                    json!({ "lane": lane })
                } else if let Some(ids) = m.strip_prefix("targets=") {
                    json!({"targets": ids.split(',').collect::<Vec<_>>()})
                } else if let Some(ms) = m.strip_prefix("cache=") {
                    json!({"cache": {"by": ["account"], "ttl_ms": ms.parse::<u64>().unwrap_or(0)}})
                } else {
                    return Ok(error_response(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        &format!("no policy mode '{m}'"),
                    ));
                }
            }
        };
        Ok(json_response(StatusCode::OK, answer.to_string()))
    }

    /// Answers one generation request in `api`'s format.
    async fn completion(
        &self,
        api: Api,
        request: Request<Incoming>,
    ) -> Result<Response<SimBody>, Disconnect> {
        let (head, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<LengthLimitError>() => {
                return Ok(api.error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
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

        let input = match &parsed {
            Some(json) => api.parse(json),
            None => Err(Error::new(Fault::Invalid, "request body is not valid JSON")),
        };
        let sim_path = match sim_path(head.uri.path()) {
            Ok(sim_path) => sim_path,
            Err(err) => return Ok(api.sim_path_error_response(err)),
        };
        let mode = match sim_path.mode {
            Some(name) => match SimMode::parse(name) {
                Some(mode) => Some(mode),
                None => return Ok(api.unknown_mode_response(name)),
            },
            None => {
                let text = input
                    .as_ref()
                    .ok()
                    .and_then(|i| i.last_user_text.as_deref());
                match text.map(mode_in_text) {
                    None | Some(Ok(None)) => None,
                    Some(Ok(Some(mode))) => Some(mode),
                    Some(Err(name)) => return Ok(api.unknown_mode_response(name)),
                }
            }
        };
        // Created only for a request it will answer, so a bad path grows nothing.
        let target_name = sim_path.target.unwrap_or(DEFAULT_TARGET);
        let target = match self.targets.get_or_create(target_name) {
            Ok(target) => target,
            Err(TooManyTargets) => return Ok(api.too_many_targets_response(target_name)),
        };
        target.count_request();
        first_byte_delay(target.first_byte_delay(), &target.waiting).await;
        // An asked-for failure wins even over an invalid request: the simulated
        // upstream fails before it looks at the body.
        let streamed = input.as_ref().is_ok_and(|input| input.stream);
        if let Some(outcome) = self.failure_outcome(api, mode, streamed).await {
            return outcome;
        }
        let mut input = match input {
            Ok(input) => input,
            Err(message) => {
                return Ok(api.error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &message.to_string(),
                ));
            }
        };

        // The larger of the cache behaviours the request asked for and the target's
        // prompt cache, as a provider reports one number.
        let prefix_cached = target.serve_prompt(&input.chain, Instant::now());
        input.cached_tokens = input
            .cached_tokens
            .max(prefix_cached)
            .min(input.prompt_tokens);
        target.count_answer(
            input.prompt_tokens,
            input.cached_tokens,
            input.chain.cacheable_tokens(),
        );

        let delay = match mode {
            Some(SimMode::Slow(delay)) => delay,
            _ => self.chunk_delay,
        };
        let reply = Reply::for_input(&input);
        let id = format!(
            "{}{}",
            api.id_prefix(),
            self.completions.fetch_add(1, Ordering::Relaxed) + 1
        );
        let envelope = Envelope {
            id: &id,
            created: crate::units::clock::unix_now(),
            model: &input.model,
        };

        if input.stream {
            let events = api.stream_events(&reply, envelope, &input);
            let (events, cut) = shape_stream(api, events, mode);
            let cancelled = self.streams_cancelled.clone();
            return Ok(event_stream_response(events, delay, cut, cancelled));
        }
        // A non-streamed answer takes as long as the stream it stands for.
        if !delay.is_zero() {
            let steps = u32::try_from(reply.steps()).unwrap_or(u32::MAX);
            tokio::time::sleep(delay.saturating_mul(steps)).await;
        }
        Ok(json_response(
            StatusCode::OK,
            api.response_json(&reply, envelope).to_string(),
        ))
    }

    /// The model list; a `/_sim/<mode>/` path fails it the same way as chat
    /// completions, so a failing base URL fails every provider route.
    async fn models(&self, path: &str) -> Result<Response<SimBody>, Disconnect> {
        let SimPath { mode, target } = match sim_path(path) {
            Ok(sim_path) => sim_path,
            Err(err) => return Ok(Api::Chat.sim_path_error_response(err)),
        };
        let mode = match mode {
            None => None,
            Some(name) => match SimMode::parse(name) {
                Some(mode) => Some(mode),
                None => return Ok(Api::Chat.unknown_mode_response(name)),
            },
        };
        // A target's latency applies to its model list too (the list counts no request,
        // and an unknown target is not created for it).
        if let Some(target) = self.targets.get(target.unwrap_or(DEFAULT_TARGET)) {
            first_byte_delay(target.first_byte_delay(), &target.waiting).await;
        }
        if let Some(outcome) = self.failure_outcome(Api::Chat, mode, false).await {
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

    /// `GET`/`DELETE /_sim/targets`, `GET`/`PUT /_sim/targets/<name>`.
    async fn targets_route(
        &self,
        method: &Method,
        path: &str,
        request: Request<Incoming>,
    ) -> Result<Response<SimBody>, Disconnect> {
        let Some(name) = path.strip_prefix("/_sim/targets/") else {
            return Ok(match *method {
                Method::GET => json_response(StatusCode::OK, self.targets.to_json().to_string()),
                Method::DELETE => {
                    let forgotten = self.targets.clear();
                    json_response(StatusCode::OK, json!({"forgotten": forgotten}).to_string())
                }
                _ => method_not_allowed(method, path),
            });
        };
        if !is_target_name(name) {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_sim_target",
                &invalid_target_message(name),
            ));
        }
        match *method {
            // A target never used reports its defaults (and is not created for it).
            Method::GET => {
                let stats = self
                    .targets
                    .get(name)
                    .map(|target| target.stats())
                    .unwrap_or_default();
                Ok(json_response(StatusCode::OK, json!(stats).to_string()))
            }
            Method::PUT => {
                let body = match Limited::new(request.into_body(), MAX_SETTINGS_BODY_BYTES)
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(err) if err.is::<LengthLimitError>() => {
                        return Ok(error_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            &format!("target settings exceed {MAX_SETTINGS_BODY_BYTES} bytes"),
                        ));
                    }
                    Err(err) => {
                        log::debug!("simulator could not read target settings: {err}");
                        return Err(Disconnect("request body unreadable"));
                    }
                };
                let settings = match TargetSettings::parse(&body) {
                    Ok(settings) => settings,
                    Err(message) => {
                        return Ok(error_response(
                            StatusCode::BAD_REQUEST,
                            "invalid_target_settings",
                            &message,
                        ))
                    }
                };
                let target = match self.targets.get_or_create(name) {
                    Ok(target) => target,
                    Err(TooManyTargets) => {
                        return Ok(Api::Chat.too_many_targets_response(name));
                    }
                };
                target.apply(settings);
                Ok(json_response(
                    StatusCode::OK,
                    json!(target.stats()).to_string(),
                ))
            }
            _ => Ok(method_not_allowed(method, path)),
        }
    }

    /// Carries out the modes that replace the answer entirely. `None` means the
    /// request is answered (perhaps slowly, or cut mid-stream by the caller).
    async fn failure_outcome(
        &self,
        api: Api,
        mode: Option<SimMode>,
        streamed: bool,
    ) -> Option<Result<Response<SimBody>, Disconnect>> {
        match mode? {
            SimMode::Fail(status) => Some(Ok(api.failure_response(status))),
            SimMode::ErrorEvent if !streamed => {
                Some(Ok(api.failure_response(StatusCode::INTERNAL_SERVER_ERROR)))
            }
            SimMode::Refuse => Some(Err(Disconnect("refuse"))),
            SimMode::Cut { .. } if !streamed => Some(Err(Disconnect("cut"))),
            SimMode::Hang => {
                // hyper drops this future when the client disconnects, so the
                // sleep only runs its course for a client that stays forever.
                let _held = HeldRequest::new(&self.hanging);
                tokio::time::sleep(HANG_LIMIT).await;
                Some(Err(Disconnect("hang")))
            }
            SimMode::Cut { .. } | SimMode::ErrorEvent | SimMode::Slow(_) => None,
        }
    }
}

/// Waits out a target's first-byte delay, counted in `waiting` meanwhile. hyper drops
/// the request's future when its client leaves, which ends the wait at once.
async fn first_byte_delay(delay: Duration, waiting: &AtomicUsize) {
    if delay.is_zero() {
        return;
    }
    let _waiting = HeldRequest::new(waiting);
    tokio::time::sleep(delay).await;
}

fn invalid_target_message(name: &str) -> String {
    format!(
        "invalid simulator target '{name}': 1 to {} characters of A-Z, a-z, 0-9, '_' and '-'",
        mode::MAX_TARGET_NAME_LEN
    )
}

fn method_not_allowed(method: &Method, path: &str) -> Response<SimBody> {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not served on {path}"),
    )
}

/// Counts a connection as open for as long as it is served (and as accepted once).
struct OpenConnection<'a>(&'a Connections);

impl<'a> OpenConnection<'a> {
    fn new(connections: &'a Connections) -> OpenConnection<'a> {
        connections.accepted.fetch_add(1, Ordering::SeqCst);
        connections.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(connections)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request held (by `hang`, or a target's first-byte delay) for as long as it is held.
struct HeldRequest<'a>(&'a AtomicUsize);

impl<'a> HeldRequest<'a> {
    fn new(count: &'a AtomicUsize) -> HeldRequest<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        HeldRequest(count)
    }
}

impl Drop for HeldRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many whole events a `cut` or `error-event` stream sends: half of them,
/// but at least two, and never all (the end of the stream is always lost).
fn events_sent_before_cut(total: usize) -> usize {
    (total / 2).max(2).min(total.saturating_sub(1))
}

/// Applies a stream-shaping mode to a stream's events: `cut` keeps the first
/// events and the first half of the next one's bytes (then the connection is
/// aborted: the returned flag), `cut-clean` stops after whole events, and
/// `error-event` ends the kept events with the format's error event.
fn shape_stream(api: Api, mut events: Vec<Bytes>, mode: Option<SimMode>) -> (Vec<Bytes>, bool) {
    let sent = events_sent_before_cut(events.len());
    match mode {
        Some(SimMode::Cut { mid_event }) => {
            let next = events.get(sent).cloned();
            events.truncate(sent);
            if let Some(next) = next.filter(|_| mid_event) {
                events.push(next.slice(..next.len() / 2));
            }
            (events, true)
        }
        Some(SimMode::ErrorEvent) => {
            events.truncate(sent);
            events.push(api.error_event(SIMULATED_STREAM_ERROR, sent));
            (events, false)
        }
        _ => (events, false),
    }
}

/// A 200 `text/event-stream` response whose events a spawned task feeds in,
/// `delay` apart; with `cut`, the connection (HTTP/2: the stream) is aborted after the last
/// event. A client that leaves first is counted in `cancelled`.
fn event_stream_response(
    events: Vec<Bytes>,
    delay: Duration,
    cut: bool,
    cancelled: Arc<AtomicU64>,
) -> Response<SimBody> {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_EVENTS);
    tokio::spawn(async move {
        if let Produced::Abandoned = produce_events(sender, events, delay, cut).await {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    });
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .body(SimBody::Channel(receiver))
        .expect("static response parts are valid")
}

/// How a stream's producer ended.
enum Produced {
    /// Every event was handed over (and the `cut` done, if asked).
    Sent,
    /// The client went away first: hyper dropped the body.
    Abandoned,
}

async fn produce_events(
    sender: mpsc::Sender<StreamItem>,
    events: Vec<Bytes>,
    delay: Duration,
    cut: bool,
) -> Produced {
    for (index, event) in events.into_iter().enumerate() {
        if index > 0 && !delay.is_zero() {
            // A client leaving during the pause is seen at once, not at the next event.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = sender.closed() => return Produced::Abandoned,
            }
        }
        if sender.send(Ok(event)).await.is_err() {
            return Produced::Abandoned;
        }
    }
    if cut {
        // hyper throws away bytes it has buffered but not yet flushed when the
        // body errors in the same write pass. It flushes as soon as the channel
        // runs dry, so wait until every queued event has been taken (all the
        // channel's slots are free again), give it a moment, then abort.
        let Ok(mut permits) = sender.reserve_many(sender.max_capacity()).await else {
            return Produced::Abandoned;
        };
        tokio::time::sleep(CUT_FLUSH_GRACE).await;
        if let Some(permit) = permits.next() {
            permit.send(Err(Disconnect("cut")));
        }
    }
    Produced::Sent
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(SimBody::full(body))
        .expect("static response parts are valid")
}

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`,
/// for the routes that belong to no format.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response<SimBody> {
    Api::Chat.error_response(status, code, message)
}

/// The wire format a generation route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// OpenAI Chat Completions, `POST …/chat/completions`.
    Chat,
    /// OpenAI Responses, `POST …/responses`.
    Responses,
    /// Anthropic Messages, `POST …/messages`.
    Anthropic,
}

impl Api {
    fn for_path(path: &str) -> Option<Api> {
        if path.ends_with("/chat/completions") {
            Some(Api::Chat)
        } else if path.ends_with("/responses") {
            Some(Api::Responses)
        } else if path.ends_with("/messages") {
            Some(Api::Anthropic)
        } else {
            None
        }
    }

    fn parse(self, body: &Value) -> Result<SimInput, Error> {
        match self {
            Api::Chat => chat::parse(body),
            Api::Responses => responses::parse(body),
            Api::Anthropic => anthropic::parse(body),
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Api::Chat => "chatcmpl-sim-",
            Api::Responses => "resp_sim_",
            Api::Anthropic => "msg_sim_",
        }
    }

    fn response_json(self, reply: &Reply, envelope: Envelope<'_>) -> Value {
        match self {
            Api::Chat => chat::completion_json(reply, envelope),
            Api::Responses => responses::response_json(reply, envelope),
            Api::Anthropic => anthropic::message_json(reply, envelope),
        }
    }

    fn stream_events(self, reply: &Reply, envelope: Envelope<'_>, input: &SimInput) -> Vec<Bytes> {
        match self {
            Api::Chat => chat::stream_events(reply, envelope, input.include_usage),
            Api::Responses => responses::stream_events(reply, envelope),
            Api::Anthropic => anthropic::stream_events(reply, envelope),
        }
    }

    /// The format's in-stream error event, after `sent` events.
    fn error_event(self, message: &str, sent: usize) -> Bytes {
        match self {
            Api::Chat => chat::error_event(message),
            Api::Responses => responses::error_event(message, sent),
            Api::Anthropic => anthropic::error_event(message),
        }
    }

    /// An error response in the format's shape; the error type follows the status
    /// the way each provider reports it.
    fn error_response(self, status: StatusCode, code: &str, message: &str) -> Response<SimBody> {
        let body = match self {
            Api::Chat | Api::Responses => {
                let error_type = match status.as_u16() {
                    429 => "requests",
                    500.. => "server_error",
                    _ => "invalid_request_error",
                };
                chat::error_json(error_type, code, message)
            }
            Api::Anthropic => {
                let error_type = match status.as_u16() {
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    500.. => "api_error",
                    _ => "invalid_request_error",
                };
                anthropic::error_json(error_type, message)
            }
        };
        json_response(status, body.to_string())
    }

    /// The answer of a `failNNN` mode.
    fn failure_response(self, status: StatusCode) -> Response<SimBody> {
        let mut response = match status {
            StatusCode::UNAUTHORIZED => self.error_response(
                status,
                "invalid_api_key",
                "simulated authentication failure: invalid API key",
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                self.error_response(status, "rate_limit_exceeded", "simulated rate limit")
            }
            _ => self.error_response(status, "sim_fail", "simulated upstream failure"),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    /// The 400 for `/_sim/…/` segments that cannot be served.
    fn sim_path_error_response(self, err: SimPathError<'_>) -> Response<SimBody> {
        match err {
            SimPathError::InvalidTarget(name) => self.error_response(
                StatusCode::BAD_REQUEST,
                "invalid_sim_target",
                &invalid_target_message(name),
            ),
            SimPathError::Repeated(segment) => self.error_response(
                StatusCode::BAD_REQUEST,
                "repeated_sim_segment",
                &format!("simulator path segment '{segment}' repeats a mode or a target"),
            ),
        }
    }

    /// The 400 for a new target once [`MAX_TARGETS`] exist: a test setup error, not a
    /// rate limit a gateway should retry or eject for.
    fn too_many_targets_response(self, name: &str) -> Response<SimBody> {
        self.error_response(
            StatusCode::BAD_REQUEST,
            "too_many_sim_targets",
            &format!(
                "simulator target '{name}' would be one too many: at most {MAX_TARGETS} besides '{DEFAULT_TARGET}'"
            ),
        )
    }

    fn unknown_mode_response(self, name: &str) -> Response<SimBody> {
        self.error_response(
            StatusCode::BAD_REQUEST,
            "unknown_sim_mode",
            &format!("unknown simulator mode '{name}'"),
        )
    }
}

#[cfg(test)]
mod tests;
