//! Traffic control end to end on the real binary: requests and tokens per minute (GCRA),
//! the conversation limit, 413 for inputs no model of the plan holds, the model id bound,
//! in the OpenAI and the Anthropic error shapes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect_openai_error, header, ping, Flux};
use serde_json::{json, Value};

const ANTHROPIC: &str = "/anthropic/v1/messages";

fn anthropic_body(model: &str, texts: &[&str]) -> Value {
    let messages: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": t})
        })
        .collect();
    json!({"model": model, "max_tokens": 16, "messages": messages})
}

fn chat_body(model: &str, texts: &[&str]) -> Value {
    let mut body = anthropic_body(model, texts);
    body.as_object_mut().unwrap().remove("max_tokens");
    body
}

/// Assert an Anthropic-shaped error; returns the inner error object.
async fn expect_anthropic_error(
    r: reqwest::Response,
    status: u16,
    type_: &str,
    code: &str,
) -> Value {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], type_, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    body["error"].clone()
}

/// 64 connections hammer a 600-per-minute key for a fixed time. The GCRA admits its burst
/// (600) at once, then 10 a second: every admission it should make, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_per_minute_hold_under_a_burst_from_64_connections() {
    let flux = Flux::start().await;
    let key = flux.new_key("rpm600", "rpm");
    flux.wait_for_key(&key).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = format!("{}/v1/chat/completions", flux.base);
    let body = serde_json::to_vec(&ping("flux-fast")).unwrap();
    let (allowed, refused, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let run = Duration::from_secs(10);
    let start = Instant::now();
    let deadline = start + run;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, body, key) = (client.clone(), url.clone(), body.clone(), key.clone());
            let (allowed, refused, other) = (allowed.clone(), refused.clone(), other.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let counter = match r.status().as_u16() {
                        200 => &allowed,
                        429 => &refused,
                        _ => &other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64().min(run.as_secs_f64());
    let (allowed, refused, other) = (
        allowed.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let expected = 600.0 + 10.0 * elapsed;
    let per_minute_after_burst = (allowed as f64 - 600.0) / elapsed * 60.0;
    println!(
        "RPM burst: 64 connections for {elapsed:.2} s against 600/min: {allowed} allowed, \
         {refused} refused (429), GCRA expects {expected:.1} (burst 600 + 10/s x elapsed); \
         {:.2}% off; after the burst {per_minute_after_burst:.1} requests per minute vs the \
         configured 600",
        (allowed as f64 - expected) / expected * 100.0
    );
    assert_eq!(other, 0, "only 200 and 429");
    assert!(refused > 0, "the burst must be refused past the limit");
    assert!(
        (allowed as f64 - expected).abs() <= expected * 0.01,
        "{allowed} allowed vs {expected:.1} expected"
    );
}

#[tokio::test]
async fn over_the_rate_is_429_with_retry_after_on_both_paths() {
    let flux = Flux::start().await;
    let key = flux.new_key("rpm2", "rpm2");
    flux.wait_for_key(&key).await;
    for _ in 0..2 {
        let r = flux
            .post("/v1/chat/completions", &key, &ping("flux-fast"))
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = flux
        .post("/v1/chat/completions", &key, &ping("flux-fast"))
        .await;
    assert_eq!(header(&r, "x-should-retry"), "true");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    // One request every 30 s; the burst was spent a moment ago.
    assert!((29..=30).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["retry_after"], retry);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2 requests per minute for your plan"),
        "{message}"
    );

    let r = flux
        .post(ANTHROPIC, &key, &anthropic_body("flux-fast", &["ping"]))
        .await;
    assert_eq!(header(&r, "x-should-retry"), "true");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((29..=30).contains(&retry), "Retry-After {retry}");
    let error = expect_anthropic_error(r, 429, "rate_limit_error", "rate_limited").await;
    assert_eq!(error["retry_after"], retry);

    // Another key is not affected.
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
}

#[tokio::test]
async fn tokens_per_minute_count_the_estimated_input() {
    let flux = Flux::start().await;
    let key = flux.new_key("tpm", "tpm");
    flux.wait_for_key(&key).await;
    // About 400 tokens (1,600 bytes / 4) of the 600 per minute.
    let text = "x".repeat(1_500);
    let body = chat_body("flux-fast", &[&text]);
    let tokens = (serde_json::to_vec(&body).unwrap().len() as u64).div_ceil(4);
    let r = flux.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(r.status(), 200);
    let r = flux.post("/v1/chat/completions", &key, &body).await;
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    // 10 tokens a second refill: the missing (2 x tokens - 600) take that many tenths.
    let need = (2 * tokens - 600).div_ceil(10);
    assert!(
        retry.abs_diff(need) <= 1,
        "Retry-After {retry}, expected ~{need}"
    );
    let message = expect_openai_error(r, 429, "rate_limited").await;
    assert!(message.contains("600 input tokens per minute"), "{message}");
    assert!(
        message.contains(&format!("about {tokens} tokens")),
        "{message}"
    );

    // A request larger than a whole minute's tokens can never pass: 413, not a retry.
    let big = "y".repeat(4_000);
    let body = anthropic_body("flux-fast", &[&big]);
    let r = flux.post(ANTHROPIC, &key, &body).await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    let error = expect_anthropic_error(r, 413, "request_too_large", "input_too_long").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("600-token limit"),
        "{error}"
    );
}

#[tokio::test]
async fn too_many_messages_is_429_conversation_limit() {
    let flux = Flux::start().await;
    let key = flux.new_key("chatty", "chatty");
    flux.wait_for_key(&key).await;
    let four = ["a", "b", "c", "d"];
    let five = ["a", "b", "c", "d", "e"];
    let r = flux
        .post("/v1/chat/completions", &key, &chat_body("flux-fast", &five))
        .await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    assert!(r.headers().get("retry-after").is_none());
    let message = expect_openai_error(r, 429, "conversation_limit").await;
    assert!(message.contains("Start a new conversation"), "{message}");
    assert!(message.contains("5 messages"), "{message}");
    assert!(message.contains("allows 4"), "{message}");

    let r = flux
        .post(ANTHROPIC, &key, &anthropic_body("flux-fast", &five))
        .await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    let error = expect_anthropic_error(r, 429, "rate_limit_error", "conversation_limit").await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("Start a new conversation"));

    let r = flux
        .post("/v1/chat/completions", &key, &chat_body("flux-fast", &four))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn input_too_long_for_the_plan_is_413_with_the_numbers() {
    let flux = Flux::start().await;
    let short = flux.new_key("express_only", "short");
    let capped = flux.new_key("short_input", "capped");
    flux.wait_for_key(&short).await;
    flux.wait_for_key(&capped).await;

    // The express lane's models hold 100,000 tokens; about 102,500 are sent.
    let text = "z".repeat(410_000);
    let body = chat_body("flux-fast", &[&text]);
    let tokens = (serde_json::to_vec(&body).unwrap().len() as u64).div_ceil(4);
    let r = flux.post("/v1/chat/completions", &short, &body).await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    let message = expect_openai_error(r, 413, "input_too_long").await;
    let over = format!(
        "about {} tokens over the 100000-token limit of your plan's models",
        tokens - 100_000
    );
    assert!(message.contains(&over), "{message}");
    assert!(
        message.contains("maximum input is 100000 tokens"),
        "{message}"
    );
    assert!(message.contains("trim the history or upgrade"), "{message}");

    let body = anthropic_body("flux-fast", &[&text]);
    let r = flux.post(ANTHROPIC, &short, &body).await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    let error = expect_anthropic_error(r, 413, "request_too_large", "input_too_long").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("100000-token limit"),
        "{error}"
    );

    // A plan whose other lane holds it: the message names the model that does.
    let body = chat_body("flux-fast", &[&text]);
    let message = expect_openai_error(flux.chat(&body).await, 413, "input_too_long").await;
    assert!(
        message.contains("20000000 tokens (flux-pinned-"),
        "{message}"
    );

    // The plan's own max_input_tokens (1,000), whatever the models take.
    let body = chat_body("flux-formats", &[&"w".repeat(5_000)]);
    let message = expect_openai_error(
        flux.post("/v1/chat/completions", &capped, &body).await,
        413,
        "input_too_long",
    )
    .await;
    assert!(message.contains("1000-token limit"), "{message}");
    assert!(
        flux.sim.requests().await.is_empty(),
        "nothing was sent upstream"
    );
}

#[tokio::test]
async fn a_huge_model_id_is_400_and_its_log_line_stays_small() {
    let flux = Flux::start().await;
    let r = flux.chat(&ping(&"m".repeat(256))).await;
    expect_openai_error(r, 400, "model_not_found").await;
    let huge = "q".repeat(1 << 20);
    let r = flux.chat(&ping(&huge)).await;
    let id = header(&r, "x-flux-request-id").to_string();
    let message = expect_openai_error(r, 400, "invalid_request").await;
    assert!(message.contains("at most 256 bytes"), "{message}");
    assert!(message.len() < 300, "{}", message.len());
    let r = flux
        .post(ANTHROPIC, &flux.key, &anthropic_body(&huge, &["hi"]))
        .await;
    expect_anthropic_error(r, 400, "invalid_request_error", "invalid_request").await;

    let log = flux.log_containing(&id).await;
    let line = log.lines().find(|l| l.contains(&id)).unwrap();
    println!("access log line for a 1 MiB model id: {} bytes", line.len());
    assert!(line.len() < 1_024, "{} bytes: {line}", line.len());
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 400);
    assert_eq!(v["original_model"].as_str().unwrap().len(), 256);
    assert!(log.len() < 64 * 1024, "log is {} bytes", log.len());
}
