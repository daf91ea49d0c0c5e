//! POST /v1/chat/completions end to end: the real binary, the simulated provider, a real client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn flux_auto_is_routed_with_headers_and_the_provider_sees_only_its_own_key() {
    let flux = Flux::start().await;
    let r = flux.chat(&ping("flux-auto")).await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-flux-request-id").to_string();
    assert_eq!(header(&r, "x-request-id"), id);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-alpha");
    assert_eq!(header(&r, "x-flux-original-model"), "flux-auto");
    assert_eq!(header(&r, "x-flux-routed"), "true");
    assert_eq!(header(&r, "x-flux-lane"), "express");
    assert_eq!(header(&r, "x-flux-route-rule"), "default");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("alpha-upstream"),
        "the provider saw the upstream id: {text}"
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let seen = flux.sim.requests().await;
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req["path"], "/v1/chat/completions");
    assert_eq!(req["model"], "alpha-upstream");
    assert_eq!(req["body"]["messages"][0]["content"], "ping");
    assert_eq!(
        req["headers"]["authorization"],
        format!("Bearer {PROVIDER_KEY}")
    );
    assert!(req["headers"].get("x-api-key").is_none());
    assert!(
        !req.to_string().contains(&flux.key),
        "client key reached the provider"
    );
    assert_eq!(req["headers"]["accept-encoding"], "identity");

    // Neither key is ever logged. The access log is written in batches, so wait for the line.
    let log = flux.log_containing(&id).await;
    assert!(!log.contains(&flux.key), "client key in the log");
    assert!(!log.contains(PROVIDER_KEY), "provider key in the log");
}

#[tokio::test]
async fn pinned_models_are_not_routed_and_aliases_are() {
    let flux = Flux::start().await;
    let r = flux.chat(&ping("flux-pinned-beta")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-beta");
    assert_eq!(header(&r, "x-flux-original-model"), "flux-pinned-beta");
    assert_eq!(header(&r, "x-flux-routed"), "false");
    assert_eq!(header(&r, "x-flux-lane"), "express");
    assert!(r.headers().get("x-flux-route-rule").is_none());

    let r = flux.chat(&ping("flux-fast")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-alpha");
    assert_eq!(header(&r, "x-flux-routed"), "true");

    let seen = flux.sim.requests().await;
    let models: Vec<&str> = seen.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["beta-upstream", "alpha-upstream"]);
}

#[tokio::test]
async fn failures_before_the_first_byte_fall_back_along_the_lane() {
    let flux = Flux::start().await;
    // daily: a provider answering 500, then one refusing connections, then a healthy one.
    let r = flux.chat(&ping("flux-standard")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-gamma");
    assert_eq!(header(&r, "x-flux-routed"), "true");
    let seen = flux.sim.requests().await;
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["model"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            ("/_sim/fail500/v1/chat/completions", "fails-upstream"),
            ("/v1/chat/completions", "gamma-upstream")
        ]
    );

    // A pinned model that fails is replaced by its lane's chain, and then it is routed.
    let r = flux.chat(&ping("flux-pinned-fails")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-gamma");
    assert_eq!(header(&r, "x-flux-routed"), "true");
    assert_eq!(header(&r, "x-flux-original-model"), "flux-pinned-fails");
}

#[tokio::test]
async fn every_target_failing_is_502_upstream_error() {
    let flux = Flux::start().await;
    let r = flux.chat(&ping("flux-reasoning")).await;
    assert_eq!(header(&r, "x-should-retry"), "true");
    let message = expect_openai_error(r, 502, "upstream_error").await;
    assert!(message.contains("deep"), "{message}");
    assert!(
        !message.contains("127.0.0.1"),
        "no internal addresses: {message}"
    );
}

#[tokio::test]
async fn no_target_supporting_the_shape_is_502_no_eligible_target() {
    let flux = Flux::start().await;
    let mut body = ping("flux-reasoning");
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let r = flux.chat(&body).await;
    let message = expect_openai_error(r, 502, "no_eligible_target").await;
    assert!(message.contains("tools"), "{message}");
    assert!(
        flux.sim.requests().await.is_empty(),
        "nothing was sent upstream"
    );
}

#[tokio::test]
async fn bad_requests_are_400_in_the_openai_shape() {
    let flux = Flux::start().await;
    let url = format!("{}/v1/chat/completions", flux.base);
    let raw = |body: &'static str| {
        flux.client
            .post(&url)
            .bearer_auth(&flux.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_openai_error(raw("{\"model\":").await.unwrap(), 400, "invalid_request").await;
    let m = expect_openai_error(
        raw(r#"{"model":"flux-auto","stream":"yes","messages":[{"role":"user","content":"x"}]}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert!(m.contains("stream"), "{m}");
    expect_openai_error(
        raw(r#"{"model":"flux-auto","messages":"hi"}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    expect_openai_error(
        raw(r#"{"model":"flux-auto","messages":[{"role":"user","content":""}]}"#)
            .await
            .unwrap(),
        400,
        "empty_prompt",
    )
    .await;
    let r = flux.chat(&ping("gpt-4o")).await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    let m = expect_openai_error(r, 400, "model_not_found").await;
    for form in [
        "flux-auto",
        "flux-fast",
        "flux-standard",
        "flux-reasoning",
        "flux-image",
        "flux-pinned-",
    ] {
        assert!(m.contains(form), "{form}: {m}");
    }
    assert!(flux.sim.requests().await.is_empty());
}

#[tokio::test]
async fn gzip_bodies_are_decoded_and_other_encodings_refused() {
    use std::io::Write;
    let flux = Flux::start().await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ping("flux-auto").to_string().as_bytes())
        .unwrap();
    let send = |encoding: &'static str, body: Vec<u8>| {
        flux.client
            .post(format!("{}/v1/chat/completions", flux.base))
            .bearer_auth(&flux.key)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    let r = send("gzip", gz.finish().unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        flux.sim.requests().await[0]["body"]["messages"][0]["content"],
        "ping"
    );
    let r = send("br", b"xx".to_vec()).await.unwrap();
    expect_openai_error(r, 415, "unsupported_content_encoding").await;
}

#[tokio::test]
async fn large_bodies_are_served_and_oversized_ones_get_413() {
    let flux = Flux::start().await;
    // 100 KB of text: past Pingora's 64 KiB proxy buffer.
    let text = "lorem ipsum ".repeat(100_000 / 12);
    let r = flux
        .chat(&json!({"model": "flux-fast", "messages": [{"role": "user", "content": text}]}))
        .await;
    assert_eq!(r.status(), 200);
    // 10 MB: a picture, as large bodies usually are; flux-auto sends it to the image lane.
    let image = format!(
        "data:image/png;base64,{}",
        "QUJD".repeat(10 * 1024 * 1024 / 4)
    );
    let body = json!({"model": "flux-auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": image}}]}]});
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "image");
    let seen = flux.sim.requests().await;
    assert!(seen[0]["body_bytes"].as_u64().unwrap() >= 100_000);
    let big = seen[1]["body_bytes"].as_u64().unwrap();
    assert!(
        big > 10 * 1024 * 1024,
        "provider received the whole 10 MB body: {big}"
    );
    assert_eq!(seen[1]["model"], "vision-upstream");

    // Over 32 MB: refused before anything goes upstream.
    let huge = "x".repeat(33 * 1024 * 1024);
    let r = flux
        .chat(&json!({"model": "flux-fast", "messages": [{"role": "user", "content": huge}]}))
        .await;
    let m = expect_openai_error(r, 413, "payload_too_large").await;
    assert!(m.contains("32 MB"), "{m}");
    assert_eq!(flux.sim.requests().await.len(), 2);
}

#[tokio::test]
async fn sse_chunks_are_relayed_one_by_one_as_they_arrive() {
    let flux = Flux::start().await;
    let mut body = ping("flux-slow");
    body["stream"] = json!(true);
    let started = Instant::now();
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-slowpoke");
    assert_eq!(header(&r, "x-flux-routed"), "true");
    let mut arrivals: Vec<(Duration, String)> = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        arrivals.push((
            started.elapsed(),
            String::from_utf8(chunk.unwrap().to_vec()).unwrap(),
        ));
    }
    let all: String = arrivals.iter().map(|(_, c)| c.as_str()).collect();
    let events = all.matches("data: ").count();
    assert!(events >= 5, "{all}");
    // The last event is [DONE]; only the cost comment follows it.
    let (events_part, comment) = all.trim_end().rsplit_once("\n\n").unwrap();
    assert!(events_part.ends_with("data: [DONE]"), "{all}");
    assert!(comment.starts_with(": x-flux-cost-usd="), "{all}");
    // The provider waits 100 ms between events; a gateway that buffered would deliver them
    // in one or two reads at the end.
    assert!(
        arrivals.len() >= events / 2,
        "{} reads for {events} events",
        arrivals.len()
    );
    let spread = arrivals.last().unwrap().0 - arrivals.first().unwrap().0;
    let expected = Duration::from_millis(100 * (events as u64 - 2) / 2);
    assert!(
        spread >= expected,
        "first to last chunk {spread:?}, expected at least {expected:?}"
    );
}

#[tokio::test]
async fn streams_carry_usage_when_asked_and_stop_with_done() {
    let flux = Flux::start().await;
    let body = json!({"model": "flux-fast", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hello there"}]});
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"usage\""), "{text}");
    assert!(
        text.contains("\"cost\":"),
        "cost in the usage chunk: {text}"
    );
    let (events, comment) = text.trim_end().rsplit_once("\n\n").unwrap();
    assert!(events.ends_with("data: [DONE]"), "{text}");
    assert!(comment.starts_with(": x-flux-cost-usd="), "{text}");
    assert_eq!(flux.sim.requests().await[0]["stream"], true);
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event() {
    let flux = Flux::start().await;
    let mut body = ping("flux-cut");
    body["stream"] = json!(true);
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("chat.completion.chunk"),
        "some chunks arrived: {text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let event: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(event["error"]["code"], "upstream_error", "{text}");
}

#[tokio::test]
async fn tool_calls_pass_through() {
    let flux = Flux::start().await;
    let body = json!({"model": "flux-auto", "messages": [{"role": "user", "content": "list files"}],
                      "tools": [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}],
                      "tool_choice": "required"});
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "daily");
    assert_eq!(header(&r, "x-flux-route-rule"), "tools");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "ls"
    );
}

#[tokio::test]
async fn a_provider_429_reaches_the_client_with_retry_after_and_the_flux_headers() {
    let flux = Flux::start().await;
    let r = flux.chat(&ping("flux-pinned-throttled")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-throttled");
    assert!(header(&r, "x-flux-request-id").starts_with("req_"));
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
}
