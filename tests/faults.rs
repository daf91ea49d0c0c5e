//! Traffic control against the simulator's failure modes: clients that hang up, deadlines,
//! provider 401/429/5xx with fallbacks, circuit breakers, overload caps, premium capacity and
//! the maintenance switch, on the OpenAI and the Anthropic paths, with what the provider saw.

mod common;

use std::time::{Duration, Instant};

use common::{header, read_to_first_event, Custom, Flux, PROVIDER_KEY, TEST_LANES};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Lanes added to the harness's: each a small chain of failure modes and a healthy target.
const FAULT_LANES: &str = r#"
  f_hang:
    alias: flux-f-hang
    title: A provider that never answers, then a healthy one
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-hang
    fallbacks: [flux-pinned-f-ok]
  f_first_byte:
    alias: flux-f-first-byte
    title: A provider with a short first-byte timeout that never answers, then a healthy one
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-hang-short
    fallbacks: [flux-pinned-f-ok]
  f_drip:
    alias: flux-f-drip
    title: Stream events 1.5 s apart
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-drip
  f_auth:
    alias: flux-f-auth
    title: Two providers refusing the gateway's key
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-401
    fallbacks: [flux-pinned-f-401-too]
  f_auth_then_ok:
    alias: flux-f-auth-then-ok
    title: A provider refusing the gateway's key, then a healthy one
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-401-b
    fallbacks: [flux-pinned-f-ok-b]
  f_429:
    alias: flux-f-429
    title: A throttled provider, then a healthy one
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-429
    fallbacks: [flux-pinned-f-ok-c]
  f_flaky:
    alias: flux-f-flaky
    title: A provider that fails on demand, then a steady one
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-flaky
    fallbacks: [flux-pinned-f-steady]
  f_flaky_alone:
    alias: flux-f-flaky-alone
    title: The flaky provider alone
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-flaky-alone
  f_capped:
    alias: flux-f-capped
    title: A provider with room for one request
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-capped
  f_capped_then_ok:
    alias: flux-f-capped-then-ok
    title: The capped provider, then a healthy one
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-f-capped-b
    fallbacks: [flux-pinned-f-ok-d]
  f_premium:
    alias: flux-f-premium
    title: A premium lane with room for one request
    premium: true
    price: { input_per_mtok: 4.0, output_per_mtok: 16.0 }
    default: flux-pinned-f-premium
"#;

const FAULT_MODELS: &str = r#"
  flux-pinned-f-hang: { upstream: hang-upstream, provider: sim_hang, lane: f_hang, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-ok: { upstream: ok-upstream, provider: sim, lane: f_hang, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-hang-short: { upstream: hang-short-upstream, provider: sim_hang_short, lane: f_first_byte, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-drip: { upstream: drip-upstream, provider: sim_drip, lane: f_drip, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-401: { upstream: auth-upstream, provider: sim_401, lane: f_auth, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-401-too: { upstream: auth-too-upstream, provider: sim_401_too, lane: f_auth, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-401-b: { upstream: auth-b-upstream, provider: sim_401, lane: f_auth_then_ok, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-ok-b: { upstream: ok-b-upstream, provider: sim, lane: f_auth_then_ok, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-429: { upstream: throttled-upstream, provider: sim_429, lane: f_429, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-ok-c: { upstream: ok-c-upstream, provider: sim, lane: f_429, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-flaky: { upstream: flaky-upstream, provider: sim_flaky, lane: f_flaky, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-steady: { upstream: steady-upstream, provider: sim_steady, lane: f_flaky, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-flaky-alone: { upstream: flaky-alone-upstream, provider: sim_flaky, lane: f_flaky_alone, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-capped: { upstream: capped-upstream, provider: sim_capped, lane: f_capped, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-capped-b: { upstream: capped-b-upstream, provider: sim_capped, lane: f_capped_then_ok, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-ok-d: { upstream: ok-d-upstream, provider: sim, lane: f_capped_then_ok, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-f-premium: { upstream: premium-upstream, provider: sim_premium, lane: f_premium, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
"#;

/// Providers beside the harness's (`sim`, `sim_hang`, `sim_401`, `sim_429`, …).
const FAULT_PROVIDERS: &str = r#"
  sim_hang_short: { format: openai, base_url: "http://{sim}/_sim/hang/v1", timeouts: { connect_ms: 1000, first_byte_ms: 300, idle_ms: 5000 } }
  sim_drip: { format: openai, base_url: "http://{sim}/_sim/slow=1500/v1" }
  sim_401_too: { format: anthropic, base_url: "http://{sim}/_sim/fail401/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }
  sim_flaky: { format: openai, base_url: "http://{sim}/v1" }
  sim_steady: { format: openai, base_url: "http://{sim}/_sim/slow=1/v1" }
  sim_capped: { format: openai, base_url: "http://{sim}/_sim/hang/v1", max_concurrent: 1 }
  sim_premium: { format: anthropic, base_url: "http://{sim}/_sim/hang/v1", max_concurrent: 1 }
"#;

fn lanes() -> String {
    let with_lanes = TEST_LANES.replacen("\nmodels:\n", &format!("{FAULT_LANES}models:\n"), 1);
    with_lanes.replacen("\nmodels:\n", &format!("\nmodels:{FAULT_MODELS}"), 1)
}

async fn start(traffic: &str) -> Flux {
    let lanes = lanes();
    let extra_config = format!("traffic: {{ {traffic} }}");
    Flux::start_custom(&Custom {
        lanes: &lanes,
        extra_providers: FAULT_PROVIDERS,
        extra_config: &extra_config,
        ..Custom::default()
    })
    .await
}

/// The two client paths every fault is checked on.
#[derive(Clone, Copy, Debug)]
enum Path {
    OpenAi,
    Anthropic,
}

impl Path {
    fn url(self) -> &'static str {
        match self {
            Path::OpenAi => "/v1/chat/completions",
            Path::Anthropic => "/anthropic/v1/messages",
        }
    }

    fn body(self, model: &str, text: &str, stream: bool) -> Value {
        match self {
            Path::OpenAi => json!({
                "model": model, "stream": stream,
                "messages": [{"role": "user", "content": text}]
            }),
            Path::Anthropic => json!({
                "model": model, "stream": stream, "max_tokens": 100,
                "messages": [{"role": "user", "content": text}]
            }),
        }
    }
}

async fn send(flux: &Flux, path: Path, model: &str, text: &str) -> reqwest::Response {
    let req = flux
        .client
        .post(format!("{}{}", flux.base, path.url()))
        .json(&path.body(model, text, false));
    let req = match path {
        Path::OpenAi => req.bearer_auth(&flux.key),
        Path::Anthropic => req.header("x-api-key", &flux.key),
    };
    req.send().await.unwrap()
}

/// Assert an error in the path's shape; returns the body.
async fn expect_error(
    r: reqwest::Response,
    path: Path,
    status: u16,
    code: &str,
    anthropic_type: &str,
) -> Value {
    assert_eq!(r.status().as_u16(), status, "{path:?} {:?}", r.headers());
    assert!(header(&r, "x-flux-request-id").starts_with("req_"));
    assert_eq!(header(&r, "content-type"), "application/json");
    let body: Value = r.json().await.unwrap();
    match path {
        Path::OpenAi => {
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(body["error"]["type"].is_string(), "{body}");
        }
        Path::Anthropic => {
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], anthropic_type, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(body["request_id"].is_string(), "{body}");
        }
    }
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

/// The upstream model names the simulator received, oldest first.
async fn upstream_models(flux: &Flux) -> Vec<String> {
    flux.sim
        .requests()
        .await
        .iter()
        .map(|r| r["model"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A request written on a raw connection, so the test decides exactly when the client leaves
/// (dropping the stream closes the socket).
async fn open_request(flux: &Flux, path: Path, body: &Value) -> TcpStream {
    let addr = flux.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let auth = match path {
        Path::OpenAi => format!("authorization: Bearer {}", flux.key),
        Path::Anthropic => format!("x-api-key: {}", flux.key),
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}\r\n\
         content-length: {}\r\n\r\n",
        path.url(),
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    s
}

async fn wait_hanging(flux: &Flux, expected: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = flux.sim.hanging().await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the simulator holds {now} hanging requests, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_leaving_while_the_provider_thinks_stops_it_and_tries_no_fallback() {
    let flux = start("").await;
    for path in [Path::OpenAi, Path::Anthropic] {
        for stream in [false, true] {
            flux.sim.clear_requests().await;
            let client = open_request(&flux, path, &path.body("flux-f-hang", "hi", stream)).await;
            wait_hanging(&flux, 1, Duration::from_secs(5)).await;
            drop(client);
            // The gateway drops its upstream connection at once, and the provider lets go.
            wait_hanging(&flux, 0, Duration::from_secs(1)).await;
            // No fallback is tried for a client that is gone.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                upstream_models(&flux).await,
                ["hang-upstream"],
                "{path:?} stream={stream}"
            );
        }
    }
    let log = flux.log_containing("\"error\":\"client_closed\"").await;
    assert!(log.contains("\"status\":499"), "{log}");
}

#[tokio::test]
async fn a_client_leaving_mid_stream_during_a_pause_stops_the_upstream_and_is_billed() {
    let flux = start("").await;
    for path in [Path::OpenAi, Path::Anthropic] {
        let mut client = open_request(&flux, path, &path.body("flux-f-drip", "hi", true)).await;
        // Read until the first event has arrived, then leave during the 1.5 s pause.
        let id = read_to_first_event(&mut client).await;
        let left = Instant::now();
        drop(client);
        let line = flux.access_line(&id).await;
        assert!(left.elapsed() < Duration::from_secs(3), "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["error"], "client_closed", "{line}");
        // Billed for what was used, on the estimate (no usage had arrived).
        assert!(line["cost_usd"].is_string(), "{line}");
        // Far shorter than the whole stream (a dozen events 1.5 s apart).
        assert!(line["duration_ms"].as_f64().unwrap() < 4000.0, "{line}");
    }
}

#[tokio::test]
async fn the_total_deadline_bounds_every_attempt() {
    let flux = start("total_deadline_ms: 800").await;
    for path in [Path::OpenAi, Path::Anthropic] {
        flux.sim.clear_requests().await;
        let started = Instant::now();
        let r = send(&flux, path, "flux-f-hang", "hi").await;
        let took = started.elapsed();
        assert_eq!(header(&r, "x-should-retry"), "true");
        expect_error(r, path, 504, "upstream_timeout", "api_error").await;
        assert!(
            took >= Duration::from_millis(750) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // The deadline passed during the first attempt: no fallback, and the provider let go.
        assert_eq!(upstream_models(&flux).await, ["hang-upstream"]);
        wait_hanging(&flux, 0, Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_first_byte_timeout_falls_back_within_the_deadline() {
    let flux = start("").await;
    for path in [Path::OpenAi, Path::Anthropic] {
        flux.sim.clear_requests().await;
        let started = Instant::now();
        let r = send(&flux, path, "flux-f-first-byte", "hi").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-ok");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            upstream_models(&flux).await,
            ["hang-short-upstream", "ok-upstream"]
        );
    }
    // Pinned alone (its lane's chain is tried after it): only timeouts, so 504.
    flux.sim.clear_requests().await;
    let lanes_without_fallback = lanes().replace(
        "    default: flux-pinned-f-hang-short\n    fallbacks: [flux-pinned-f-ok]\n",
        "    default: flux-pinned-f-hang-short\n",
    );
    std::fs::write(flux.lanes_path(), lanes_without_fallback).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for path in [Path::OpenAi, Path::Anthropic] {
        let r = send(&flux, path, "flux-f-first-byte", "hi").await;
        expect_error(r, path, 504, "upstream_timeout", "api_error").await;
    }
}

#[tokio::test]
async fn a_provider_401_is_the_operators_problem_502_upstream_auth_error() {
    let flux = start("").await;
    for path in [Path::OpenAi, Path::Anthropic] {
        flux.sim.clear_requests().await;
        let r = send(&flux, path, "flux-f-auth", "hi").await;
        assert_eq!(header(&r, "x-should-retry"), "false");
        let body = expect_error(r, path, 502, "upstream_auth_error", "api_error").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("not your key"), "{message}");
        // Both targets were tried, the gateway's key sent to each.
        let seen = flux.sim.requests().await;
        let models: Vec<&str> = seen.iter().map(|r| r["model"].as_str().unwrap()).collect();
        assert_eq!(models, ["auth-upstream", "auth-too-upstream"]);
        assert!(seen.iter().all(|r| r.to_string().contains(PROVIDER_KEY)));
    }
    // Logged loudly, naming the provider, never the key.
    let log = flux
        .log_containing("provider sim_401 rejected the gateway's credentials")
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("provider sim_401 rejected"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(log.contains("provider sim_401_too rejected"), "{log}");
    assert!(
        !log.contains(PROVIDER_KEY),
        "the provider key leaked into the log"
    );

    // With a healthy fallback the client never sees it.
    flux.sim.clear_requests().await;
    let r = send(&flux, Path::Anthropic, "flux-f-auth-then-ok", "hi").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-ok-b");
    assert_eq!(
        upstream_models(&flux).await,
        ["auth-b-upstream", "ok-b-upstream"]
    );
}

#[tokio::test]
async fn a_provider_429_ejects_it_for_its_retry_after_and_falls_back_meanwhile() {
    let flux = start("").await;
    for path in [Path::OpenAi, Path::Anthropic] {
        flux.sim.clear_requests().await;
        // Alone in its lane: the provider's own 429 and its Retry-After (1 s) reach the client.
        let r = send(&flux, path, "flux-pinned-throttled", "hi").await;
        assert_eq!(header(&r, "retry-after"), "1");
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-throttled");
        expect_error(r, path, 429, "rate_limit_exceeded", "rate_limit_error").await;
        // Ejected for that second: the next request does not reach it, and the client is
        // told when to come back.
        let r = send(&flux, path, "flux-pinned-throttled", "hi").await;
        assert_eq!(header(&r, "retry-after"), "1");
        expect_error(r, path, 429, "upstream_rate_limited", "rate_limit_error").await;
        // A lane with a fallback is served by the fallback, without asking the ejected one.
        let r = send(&flux, path, "flux-f-429", "hi").await;
        assert_eq!(r.status(), 200, "{path:?}");
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-ok-c");
        assert_eq!(
            upstream_models(&flux).await,
            ["throttled-upstream", "ok-c-upstream"]
        );
        // After its Retry-After it is asked again (and 429s again, so the fallback serves).
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        flux.sim.clear_requests().await;
        let r = send(&flux, path, "flux-f-429", "hi").await;
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-ok-c");
        assert_eq!(
            upstream_models(&flux).await,
            ["throttled-upstream", "ok-c-upstream"]
        );
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    let metrics = flux.metrics().await;
    assert!(
        metrics
            .contains(r#"flux_upstream_ejections_total{provider="sim_429",reason="throttled"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"flux_upstream_skipped_total{provider="sim_429",reason="throttled"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_breaker_opens_after_n_failures_skips_at_once_and_probes_after_its_cooldown() {
    let flux = start("breaker_failures: 3, breaker_cooldown_ms: 1500").await;
    // `[sim:fail500]` fails the plain-path provider; the steady one's path mode wins over it.
    let fail = "[sim:fail500] hi";
    for _ in 0..3 {
        let r = send(&flux, Path::OpenAi, "flux-f-flaky", fail).await;
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-steady");
    }
    assert_eq!(
        upstream_models(&flux).await,
        ["flaky-upstream", "steady-upstream"].repeat(3)
    );
    flux.log_containing("circuit breaker for provider sim_flaky opened")
        .await;
    // Open: skipped without an attempt, on both paths.
    flux.sim.clear_requests().await;
    for path in [Path::OpenAi, Path::Anthropic] {
        let r = send(&flux, path, "flux-f-flaky", fail).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-steady");
    }
    assert_eq!(
        upstream_models(&flux).await,
        ["steady-upstream", "steady-upstream"]
    );
    // Alone in its lane: 502 at once, with when to come back.
    for path in [Path::OpenAi, Path::Anthropic] {
        let started = Instant::now();
        let r = send(&flux, path, "flux-f-flaky-alone", "hi").await;
        let retry_after: u64 = header(&r, "retry-after").parse().unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        expect_error(r, path, 502, "upstream_error", "api_error").await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(
        upstream_models(&flux).await.len(),
        2,
        "nothing more was sent"
    );

    // After the cooldown one probe goes through; it fails, and the breaker opens again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    flux.sim.clear_requests().await;
    let r = send(&flux, Path::OpenAi, "flux-f-flaky", fail).await;
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-steady");
    let r = send(&flux, Path::OpenAi, "flux-f-flaky", fail).await;
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-steady");
    assert_eq!(
        upstream_models(&flux).await,
        ["flaky-upstream", "steady-upstream", "steady-upstream"]
    );

    // A failed probe opens it for twice the cooldown: still skipped after one more cooldown.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    flux.sim.clear_requests().await;
    let r = send(&flux, Path::OpenAi, "flux-f-flaky", "hi").await;
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-steady");
    assert_eq!(upstream_models(&flux).await, ["steady-upstream"]);

    // The next probe succeeds: the breaker closes and the provider serves again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    flux.sim.clear_requests().await;
    let r = send(&flux, Path::Anthropic, "flux-f-flaky", "hi").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-flaky");
    flux.log_containing("circuit breaker for provider sim_flaky closed")
        .await;
    let r = send(&flux, Path::OpenAi, "flux-f-flaky", fail).await;
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-steady");
    assert_eq!(
        upstream_models(&flux).await,
        ["flaky-upstream", "flaky-upstream", "steady-upstream"]
    );
}

#[tokio::test]
async fn past_the_concurrency_caps_it_is_503_overloaded_at_once() {
    let flux = start("max_concurrent_upstream: 2").await;
    // The capped provider's one slot is taken by a request that hangs.
    let holder = open_request(
        &flux,
        Path::OpenAi,
        &Path::OpenAi.body("flux-f-capped", "hi", false),
    )
    .await;
    wait_hanging(&flux, 1, Duration::from_secs(5)).await;
    for path in [Path::OpenAi, Path::Anthropic] {
        let started = Instant::now();
        let r = send(&flux, path, "flux-f-capped", "hi").await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(header(&r, "retry-after"), "1");
        assert_eq!(header(&r, "x-should-retry"), "true");
        let body = expect_error(r, path, 503, "overloaded", "overloaded_error").await;
        assert_eq!(body["error"]["retry_after"], 1);
    }
    // A provider at its cap lets the next fallback serve.
    let r = send(&flux, Path::OpenAi, "flux-f-capped-then-ok", "hi").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-f-ok-d");
    // The total cap: a second hanging request fills it, and then even a healthy lane is busy.
    let second = open_request(
        &flux,
        Path::OpenAi,
        &Path::OpenAi.body("flux-f-hang", "hi", false),
    )
    .await;
    wait_hanging(&flux, 2, Duration::from_secs(5)).await;
    let r = send(&flux, Path::Anthropic, "flux-fast", "hi").await;
    expect_error(r, Path::Anthropic, 503, "overloaded", "overloaded_error").await;
    // Slots come back when their clients leave.
    drop(holder);
    drop(second);
    wait_hanging(&flux, 0, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = send(&flux, Path::OpenAi, "flux-fast", "hi").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_premium_lane_at_capacity_is_402_premium_unavailable() {
    let flux = start("").await;
    let holder = open_request(
        &flux,
        Path::Anthropic,
        &Path::Anthropic.body("flux-f-premium", "hi", true),
    )
    .await;
    wait_hanging(&flux, 1, Duration::from_secs(5)).await;
    for path in [Path::OpenAi, Path::Anthropic] {
        let r = send(&flux, path, "flux-f-premium", "hi").await;
        assert_eq!(header(&r, "retry-after"), "5");
        let body = expect_error(r, path, 402, "premium_unavailable", "billing_error").await;
        assert_eq!(body["error"]["retry_after"], 5);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("Premium routing temporarily unavailable"),
            "{message}"
        );
        assert!(
            message.contains("flux-fast") && message.contains("flux-standard"),
            "{message}"
        );
    }
    drop(holder);
    wait_hanging(&flux, 0, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn maintenance_answers_503_to_every_generation_request() {
    let flux = start(
        "maintenance: true, maintenance_message: \"Scheduled maintenance until 14:00 UTC.\", \
         maintenance_retry_after_s: 120",
    )
    .await;
    for path in [Path::OpenAi, Path::Anthropic] {
        let r = send(&flux, path, "flux-fast", "hi").await;
        assert_eq!(header(&r, "retry-after"), "120");
        let body = expect_error(r, path, 503, "maintenance", "overloaded_error").await;
        assert_eq!(
            body["error"]["message"],
            "Scheduled maintenance until 14:00 UTC."
        );
    }
    let r = flux
        .post(
            "/v1/responses",
            &flux.key,
            &json!({"model": "flux-fast", "input": "hi"}),
        )
        .await;
    assert_eq!(r.status(), 503);
    // Nothing reached a provider; the other endpoints still answer.
    assert!(flux.sim.requests().await.is_empty());
    assert_eq!(flux.get("/v1/models", &flux.key).await.status(), 200);
    assert_eq!(flux.get("/healthz", "").await.status(), 200);
}

/// A provider on a raw socket, for what the simulator cannot do: read a request whole and
/// close the connection without answering, or close a keep-alive connection right after its
/// answer. Records every request it read in full.
struct RawProvider {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<RawSeen>>>,
    /// Answer requests (200 with keep-alive); otherwise read each whole, then close.
    answer: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Close the connection right after each answer (it said keep-alive).
    close_after_answer: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections closed after an answer.
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone)]
struct RawSeen {
    /// The upstream model the request named.
    model: String,
    /// Whether the connection had carried a request before (a pooled one).
    reused: bool,
}

impl RawProvider {
    async fn start() -> RawProvider {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = RawProvider {
            addr: listener.local_addr().unwrap(),
            seen: Arc::new(Mutex::new(Vec::new())),
            answer: Arc::new(AtomicBool::new(true)),
            close_after_answer: Arc::new(AtomicBool::new(false)),
            closed: Arc::new(AtomicUsize::new(0)),
        };
        let (seen, answer, close_after, closed) = (
            provider.seen.clone(),
            provider.answer.clone(),
            provider.close_after_answer.clone(),
            provider.closed.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (seen, answer, close_after, closed) = (
                    seen.clone(),
                    answer.clone(),
                    close_after.clone(),
                    closed.clone(),
                );
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    while let Some(body) = read_raw_request(&mut conn, &mut buf).await {
                        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let model = v["model"].as_str().unwrap_or_default().to_string();
                        seen.lock().unwrap().push(RawSeen {
                            model: model.clone(),
                            reused: served > 0,
                        });
                        served += 1;
                        if !answer.load(Ordering::SeqCst) {
                            return; // read in full; closed without an answer
                        }
                        let body = json!({
                            "id": "chatcmpl-raw", "object": "chat.completion", "created": 0,
                            "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "pong"}}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                        })
                        .to_string();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: keep-alive\r\n\r\n",
                            body.len()
                        );
                        if conn.write_all(head.as_bytes()).await.is_err()
                            || conn.write_all(body.as_bytes()).await.is_err()
                        {
                            return;
                        }
                        if close_after.load(Ordering::SeqCst) {
                            drop(conn);
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        provider
    }

    fn seen(&self) -> Vec<RawSeen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// One request's body off a connection (the gateway always sends a Content-Length); None
/// when the connection ends first.
async fn read_raw_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < end + length {
        let n = conn.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Some(body)
}

/// A gateway whose lane `raw` has `targets` models, all on providers at `provider`'s address
/// (so they share one pool of upstream connections).
async fn start_with_raw(provider: &RawProvider, targets: usize) -> Flux {
    let names: Vec<String> = (1..=targets)
        .map(|i| format!("flux-pinned-raw-{i}"))
        .collect();
    let lane = format!(
        "  raw:\n    alias: flux-raw\n    title: Targets on a raw-socket provider\n    \
         price: {{ input_per_mtok: 1.0, output_per_mtok: 1.0 }}\n    default: {}\n    \
         fallbacks: [{}]\n",
        names[0],
        names[1..].join(", ")
    );
    let models: String = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "  {name}: {{ upstream: raw-{n}-upstream, provider: raw{n}, lane: raw, \
                 context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }}\n",
                n = i + 1
            )
        })
        .collect();
    let lanes = TEST_LANES.replacen("\nmodels:\n", &format!("\n{lane}models:\n{models}"), 1);
    let providers: String = (1..=targets)
        .map(|n| {
            format!(
                "  raw{n}: {{ format: openai, base_url: \"http://{}/v1\" }}\n",
                provider.addr
            )
        })
        .collect();
    Flux::start_custom(&Custom {
        lanes: &lanes,
        extra_providers: &providers,
        ..Custom::default()
    })
    .await
}

async fn send_raw_lane(flux: &Flux) -> reqwest::Response {
    flux.client
        .post(format!("{}/v1/chat/completions", flux.base))
        .bearer_auth(&flux.key)
        .json(&json!({"model": "flux-raw", "messages": [{"role": "user", "content": "hi"}]}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_provider_that_may_have_read_the_request_never_gets_it_twice() {
    use std::sync::atomic::Ordering;
    const TARGETS: usize = 3;
    let provider = RawProvider::start().await;
    let flux = start_with_raw(&provider, TARGETS).await;
    // The case that sent a request twice: the first target's attempt goes out on a pooled
    // connection (left by an answered request), and the provider reads it whole, then
    // closes. The pool is filled after the answer reaches the client, so a round whose first
    // attempt did not get the pooled connection proves nothing and is run again.
    for round in 1..=5 {
        provider.answer.store(true, Ordering::SeqCst);
        provider.clear();
        let r = send_raw_lane(&flux).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        // Lets the gateway put the connection back in its pool.
        tokio::time::sleep(Duration::from_millis(200)).await;
        provider.clear();
        provider.answer.store(false, Ordering::SeqCst);

        let r = send_raw_lane(&flux).await;
        assert_eq!(header(&r, "x-should-retry"), "true");
        let body = expect_error(r, Path::OpenAi, 502, "upstream_error", "api_error").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("all {TARGETS} eligible target(s)")),
            "{message}"
        );
        // Exactly one send per target, in the lane's order, never the same one again.
        let seen = provider.seen();
        let models: Vec<&str> = seen.iter().map(|s| s.model.as_str()).collect();
        let expected: Vec<String> = (1..=TARGETS).map(|n| format!("raw-{n}-upstream")).collect();
        assert_eq!(models, expected, "round {round}: {seen:?}");
        if seen[0].reused {
            return;
        }
    }
    panic!("the first attempt never went out on a pooled connection");
}

#[tokio::test]
async fn a_pooled_connection_the_provider_closed_while_idle_still_serves_the_request() {
    use std::sync::atomic::Ordering;
    let provider = RawProvider::start().await;
    let flux = start_with_raw(&provider, 1).await;
    // The provider answers with keep-alive, then closes the idle connection: nothing of the
    // next request can reach it on that connection, so it goes out on a fresh one, once.
    provider.close_after_answer.store(true, Ordering::SeqCst);
    for n in 1..=3 {
        let r = send_raw_lane(&flux).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while provider.closed.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the provider never closed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let seen = provider.seen();
    assert_eq!(seen.len(), 3, "one send per request: {seen:?}");
    assert!(seen.iter().all(|s| !s.reused), "{seen:?}");
}
