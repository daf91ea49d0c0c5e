//! What an operator sees: Prometheus metrics behind their token on the admin listener, and
//! the access log (fields, sampling, reopening on SIGUSR1), with no key or prompt text in
//! either.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The value of one series in a Prometheus text page (`name{labels}` exactly), if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn must(text: &str, name_and_labels: &str) -> f64 {
    series(text, name_and_labels).unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
}

#[tokio::test]
async fn metrics_need_the_metrics_token_and_live_only_on_the_admin_listener() {
    let flux = Flux::start().await;
    for token in [
        None,
        Some("wrong-token"),
        Some(ADMIN_TOKEN),
        Some(flux.key.as_str()),
    ] {
        let r = flux.admin_get("/metrics", token).await;
        assert_eq!(r.status(), 403, "token {token:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "metrics_forbidden", "{body}");
        assert_eq!(body["error"]["type"], "permission_error", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("metrics token"));
    }
    let r = flux.admin_get("/metrics", Some(METRICS_TOKEN)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE flux_requests_total counter"),
        "{text}"
    );
    // The metrics token opens nothing else.
    let r = flux.admin_get("/admin/v1/usage", Some(METRICS_TOKEN)).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "admin_forbidden");
    // The client listener serves no metrics, even to a valid key.
    let r = flux.get("/metrics", &flux.key).await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(text.contains("endpoint_not_served"), "{text}");
    assert!(!text.contains("flux_requests_total"));
}

#[tokio::test]
async fn the_main_series_count_what_was_served() {
    let flux = Flux::start().await;
    // Two pinned successes, one streamed, one through the Anthropic endpoint.
    for _ in 0..2 {
        let r = flux.chat(&ping("flux-pinned-alpha")).await;
        assert_eq!(r.status(), 200);
    }
    let mut body = ping("flux-pinned-alpha");
    body["stream"] = json!(true);
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let r = flux
        .post(
            "/anthropic/v1/messages",
            &flux.key,
            &json!({"model": "flux-pinned-alpha", "max_tokens": 64,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // A lane whose first two models fail (a 500, then a refused connection).
    let r = flux.chat(&ping("flux-standard")).await;
    assert_eq!(r.status(), 200);
    // A bad key, and a rate limit.
    let r = flux
        .chat_with_key(&ping("flux-pinned-alpha"), "sk-flux-nope")
        .await;
    assert_eq!(r.status(), 401);
    let limited = flux.new_key("rpm2", "limited");
    flux.wait_for_key(&limited).await; // one request
    let mut statuses = vec![];
    for _ in 0..3 {
        let r = flux
            .chat_with_key(&ping("flux-pinned-alpha"), &limited)
            .await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");

    let text = flux
        .metrics_when(|t| t.contains(r#"flux_limit_rejections_total{kind="rate"}"#))
        .await;
    let ok = r#"flux_requests_total{endpoint="chat_completions",lane="express",model="flux-pinned-alpha",provider="sim",status="200"}"#;
    // 2 + 1 streamed + the limited key's successes.
    let limited_ok = statuses.iter().filter(|s| **s == 200).count() as f64;
    assert_eq!(must(&text, ok), 3.0 + limited_ok);
    let anthropic = r#"flux_requests_total{endpoint="anthropic_messages",lane="express",model="flux-pinned-alpha",provider="sim",status="200"}"#;
    assert_eq!(must(&text, anthropic), 1.0);
    let fallback = r#"flux_requests_total{endpoint="chat_completions",lane="daily",model="flux-pinned-gamma",provider="sim",status="200"}"#;
    assert_eq!(must(&text, fallback), 1.0);
    let unauthorized = r#"flux_requests_total{endpoint="chat_completions",lane="",model="",provider="",status="401"}"#;
    assert_eq!(must(&text, unauthorized), 1.0);
    let errors = r#"flux_request_errors_total{endpoint="chat_completions",code="invalid_api_key"}"#;
    assert_eq!(must(&text, errors), 1.0);
    assert!(must(&text, r#"flux_limit_rejections_total{kind="rate"}"#) >= 1.0);
    // Tokens and cost, per lane and served model.
    let input = must(
        &text,
        r#"flux_tokens_total{lane="express",model="flux-pinned-alpha",kind="input"}"#,
    );
    let output = must(
        &text,
        r#"flux_tokens_total{lane="express",model="flux-pinned-alpha",kind="output"}"#,
    );
    assert!(input > 0.0 && output > 0.0, "{input} {output}");
    let cost = must(
        &text,
        r#"flux_cost_usd_total{lane="express",model="flux-pinned-alpha"}"#,
    );
    // The express lane: $1 per million input tokens, $4 per million output tokens.
    let expected = (input * 1.0 + output * 4.0) / 1e6;
    assert!((cost - expected).abs() < 1e-8, "{cost} vs {expected}");
    // The fallbacks: each failure by provider and reason, and the retries.
    assert_eq!(
        must(
            &text,
            r#"flux_upstream_errors_total{provider="sim_500",reason="bad_answer"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"flux_upstream_errors_total{provider="dead",reason="connect"}"#
        ),
        1.0
    );
    assert_eq!(
        must(&text, r#"flux_upstream_retries_total{provider="dead"}"#),
        1.0
    );
    assert_eq!(
        must(&text, r#"flux_upstream_retries_total{provider="sim"}"#),
        1.0
    );
    assert!(must(&text, r#"flux_upstream_ttfb_seconds_count{provider="sim"}"#) >= 5.0);
    // Latency histograms: every request counted, overhead below the total.
    let count = must(
        &text,
        r#"flux_request_duration_seconds_count{endpoint="chat_completions"}"#,
    );
    assert!(count >= 7.0, "{count}");
    let total = must(
        &text,
        r#"flux_request_duration_seconds_sum{endpoint="chat_completions"}"#,
    );
    let overhead = must(
        &text,
        r#"flux_overhead_seconds_sum{endpoint="chat_completions"}"#,
    );
    assert!(overhead > 0.0 && overhead < total, "{overhead} of {total}");
    // Breaker states for every provider, one state at 1.
    for provider in ["sim", "sim_500", "dead"] {
        let on: f64 = ["closed", "open", "half_open"]
            .iter()
            .map(|s| {
                must(
                    &text,
                    &format!(r#"flux_circuit_breaker_state{{provider="{provider}",state="{s}"}}"#),
                )
            })
            .sum();
        assert_eq!(on, 1.0, "{provider}");
    }
    // The reloader's first pass at start, then the keys file after `keys new`.
    assert!(
        must(
            &text,
            r#"flux_reloads_total{file="keys",outcome="success"}"#
        ) >= 2.0
    );
    assert!(
        must(
            &text,
            "flux_request_bytes_total{endpoint=\"chat_completions\"}"
        ) > 0.0
    );
    assert!(must(&text, "process_resident_memory_bytes") > 1e6);
    // Nothing left in flight once the answers are in (the last request's context may still
    // be closing as the scrape arrives).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = flux.metrics().await;
        if must(&text, "flux_requests_in_flight") == 0.0 {
            assert_eq!(must(&text, "flux_upstream_requests_in_flight"), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests stay in flight:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn labels_stay_bounded_and_hold_no_client_text() {
    // 150 wrong keys from one address: its failure limit off, so each is a 401.
    let flux = Flux::start_with_limits("per_address: { failed_auth_per_minute: 0 }").await;
    for i in 0..150 {
        let model = format!("made-up-model-{i}-zq");
        let r = flux.chat(&ping(&model)).await;
        assert_eq!(r.status(), 400);
        let r = flux
            .chat_with_key(&ping("flux-pinned-alpha"), &format!("sk-flux-random{i}zq"))
            .await;
        assert_eq!(r.status(), 401);
        let r = flux
            .get(&format!("/v1/random-path-{i}-zq"), &flux.key)
            .await;
        assert_eq!(r.status(), 403);
    }
    let text = flux.metrics().await;
    assert!(!text.contains("zq"), "client text in a label:\n{text}");
    let request_series = text
        .lines()
        .filter(|l| l.starts_with("flux_requests_total{"))
        .count();
    // The three refusals, and the harness's start-up probes (healthz, models).
    assert!(request_series <= 5, "{request_series} series:\n{text}");
    assert_eq!(
        must(
            &text,
            r#"flux_requests_total{endpoint="chat_completions",lane="",model="",provider="",status="400"}"#
        ),
        150.0
    );
    assert_eq!(
        must(
            &text,
            r#"flux_requests_total{endpoint="other",lane="",model="",provider="",status="403"}"#
        ),
        150.0
    );
    assert!(!text.contains(&flux.key));
}

#[tokio::test]
async fn access_lines_tell_the_whole_story_without_keys_or_prompts() {
    let flux = Flux::start().await;
    let marker = "PROMPT-TEXT-MARKER-7f3a";
    let body = json!({"model": "flux-standard",
                      "messages": [{"role": "user", "content": format!("say {marker}")}]});
    let r = flux.chat(&body).await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-flux-request-id").to_string();
    let answer = r.text().await.unwrap();
    let auto = flux.chat(&ping("flux-auto")).await;
    assert_eq!(auto.status(), 200);
    let auto_id = header(&auto, "x-flux-request-id").to_string();
    let log = flux.log_containing(&auto_id).await;
    let line = |id: &str| -> Value {
        let l = log
            .lines()
            .find(|l| l.starts_with('{') && l.contains(id))
            .unwrap_or_else(|| panic!("no access line for {id}:\n{log}"));
        serde_json::from_str(l).unwrap()
    };
    let v = line(&id);
    assert_eq!(v["endpoint"], "chat_completions");
    assert_eq!(v["key_name"], "main");
    assert!(v["key_id"].as_str().unwrap().starts_with("key_"), "{v}");
    assert_eq!(v["original_model"], "flux-standard");
    assert_eq!(v["model"], "flux-pinned-gamma");
    assert_eq!(v["lane"], "daily");
    assert_eq!(v["provider"], "sim");
    assert_eq!(v["status"], 200);
    assert_eq!(v["attempts"], 3);
    assert_eq!(
        v["failed_attempts"],
        json!([{"provider": "sim_500", "reason": "bad_answer"},
               {"provider": "dead", "reason": "connect"}])
    );
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["output_tokens"].as_u64().unwrap() > 0);
    assert!(v["cost_usd"].as_str().unwrap().starts_with("0.0"), "{v}");
    assert!(v["request_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["response_bytes"].as_u64().unwrap(), answer.len() as u64);
    let (total, upstream, overhead) = (
        v["duration_ms"].as_f64().unwrap(),
        v["upstream_ms"].as_f64().unwrap(),
        v["overhead_ms"].as_f64().unwrap(),
    );
    assert!(upstream > 0.0 && overhead > 0.0, "{v}");
    assert!((upstream + overhead - total).abs() < 0.01, "{v}");
    assert!(v["upstream_ttfb_ms"].as_f64().unwrap() > 0.0);
    let auto = line(&auto_id);
    assert_eq!(auto["route_rule"], "default");
    assert_eq!(auto["routed"], true);
    assert!(auto.get("failed_attempts").is_none(), "{auto}");
    // Neither the key nor the prompt nor the completion is anywhere an operator looks.
    let text = flux.metrics().await;
    for place in [&log, &text] {
        assert!(!place.contains(&flux.key));
        assert!(!place.contains(marker));
        assert!(!place.contains(PROVIDER_KEY));
    }
}

/// A gateway whose access log goes to `access.log` beside its config, with these settings.
async fn with_log_file(settings: &str) -> (Flux, std::path::PathBuf) {
    let extra_config = format!("access_log: {{ destination: access.log{settings} }}\n");
    let flux = Flux::start_custom(&Custom {
        extra_config: &extra_config,
        ..Custom::default()
    })
    .await;
    let path = flux.dir.path().join("access.log");
    (flux, path)
}

async fn file_containing(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{path:?} never got {needle}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigusr1_reopens_the_log_file_after_rotation() {
    let (flux, path) = with_log_file("").await;
    let r = flux.chat(&ping("flux-pinned-alpha")).await;
    let first = header(&r, "x-flux-request-id").to_string();
    file_containing(&path, &first).await;
    let rotated = flux.dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    flux.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "not reopened: {}", flux.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = flux.chat(&ping("flux-pinned-alpha")).await;
    assert_eq!(r.status(), 200, "the gateway survives SIGUSR1");
    let second = header(&r, "x-flux-request-id").to_string();
    let new = file_containing(&path, &second).await;
    assert!(!new.contains(&first));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains(&first) && !old.contains(&second));
}

#[tokio::test]
async fn sampling_keeps_every_failure() {
    let (flux, path) = with_log_file(", sample: 0.0").await;
    let ok = flux.chat(&ping("flux-pinned-alpha")).await;
    assert_eq!(ok.status(), 200);
    let ok_id = header(&ok, "x-flux-request-id").to_string();
    let bad = flux
        .chat_with_key(&ping("flux-pinned-alpha"), "sk-flux-nope")
        .await;
    let bad_id = header(&bad, "x-flux-request-id").to_string();
    let text = file_containing(&path, &bad_id).await;
    assert!(!text.contains(&ok_id), "{text}");
    let (flux, path) = with_log_file(", level: error").await;
    let ok = flux.chat(&ping("flux-pinned-alpha")).await;
    let ok_id = header(&ok, "x-flux-request-id").to_string();
    let bad = flux.chat(&ping("no-such-model")).await;
    assert_eq!(bad.status(), 400);
    let bad_id = header(&bad, "x-flux-request-id").to_string();
    let text = file_containing(&path, &bad_id).await;
    assert!(!text.contains(&ok_id), "{text}");
}
