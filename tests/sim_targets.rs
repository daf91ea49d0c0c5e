//! The simulator's named targets behind the real gateway: a provider whose base URL names a
//! target (`/_sim/target=NAME/v1`) gets that target's latency and prompt cache, the gateway
//! keeps the segment in the upstream path, and the cached tokens reach the client in its own
//! format even when the provider speaks another one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fluxrouter::units::Usd;
use serde_json::{json, Value};

const TARGET_LANES: &str = r#"
  t_cache:
    alias: flux-t-cache
    title: A provider at simulator target a
    price: { input_per_mtok: 2.00, cached_input_per_mtok: 0.50, output_per_mtok: 8.00 }
    default: flux-pinned-t-a
  t_slow:
    alias: flux-t-slow
    title: A provider at simulator target b
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-t-b
"#;

const TARGET_MODELS: &str = r#"
  flux-pinned-t-a: { upstream: a-upstream, provider: sim_target_a, lane: t_cache, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-t-b: { upstream: b-upstream, provider: sim_target_b, lane: t_slow, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
"#;

/// Target `a` speaks Anthropic (so a Chat client's usage is translated); target `b` has a
/// mode segment too, after the target's.
const TARGET_PROVIDERS: &str = r#"
  sim_target_a: { format: anthropic, base_url: "http://{sim}/_sim/target=a/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }
  sim_target_b: { format: openai, base_url: "http://{sim}/_sim/target=b/slow=1/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }
"#;

async fn start() -> Flux {
    let lanes = TEST_LANES.replacen("\nmodels:\n", &format!("{TARGET_LANES}models:\n"), 1);
    let lanes = lanes.replacen("\nmodels:\n", &format!("\nmodels:{TARGET_MODELS}"), 1);
    Flux::start_custom(&Custom {
        lanes: &lanes,
        extra_providers: TARGET_PROVIDERS,
        ..Custom::default()
    })
    .await
}

async fn target_stats(flux: &Flux, name: &str) -> Value {
    let url = format!("http://{}/_sim/targets/{name}", flux.sim.addr);
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A Chat conversation with a system prompt over the providers' 1,024-token cache minimum.
fn conversation(model: &str, turns: &[&str]) -> Value {
    let mut messages =
        vec![json!({"role": "system", "content": "You are a careful agent. ".repeat(200)})];
    for (index, text) in turns.iter().enumerate() {
        let role = if index % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": text}));
    }
    json!({"model": model, "messages": messages})
}

#[tokio::test]
async fn a_targets_prompt_cache_reaches_the_client_through_a_translating_gateway() {
    let flux = start().await;
    let first = flux
        .chat(&conversation("flux-pinned-t-a", &["first question"]))
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let turns = ["first question", "the answer", "second question"];
    let second = flux.chat(&conversation("flux-pinned-t-a", &turns)).await;
    assert_eq!(second.status(), 200);
    let cost = header(&second, "x-flux-cost-usd").to_string();
    let second: Value = second.json().await.unwrap();
    let usage = &second["usage"];
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= 1024 && cached < prompt,
        "the previous turn is cached, the new question is not: {usage}"
    );

    // What the target counted is what the client was told (the Anthropic provider's
    // `cache_read_input_tokens`, as Chat's `cached_tokens`).
    let stats = target_stats(&flux, "a").await;
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["cached_requests"], 1);
    assert_eq!(stats["cached_tokens"], cached);
    // The cached part is billed at the lane's cached price ($0.50 instead of $2 per million).
    let output = usage["completion_tokens"].as_u64().unwrap();
    let expected = Usd((prompt - cached) * 2_000_000 + cached * 500_000 + output * 8_000_000);
    assert_eq!(cost, expected.to_decimal());

    // The gateway kept the target segment in the upstream path.
    let paths: Vec<String> = flux
        .sim
        .requests()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/_sim/target=a/v1/messages"),
        "{paths:?}"
    );
}

#[tokio::test]
async fn a_targets_latency_set_at_run_time_delays_the_gateways_answer() {
    let flux = start().await;
    let url = format!("http://{}/_sim/targets/b", flux.sim.addr);
    let set = reqwest::Client::new()
        .put(url)
        .body(r#"{"first_byte_ms": 400}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);

    // A lower bound only: the answer comes no sooner than the target's delay.
    let started = Instant::now();
    let r = flux
        .chat(&json!({"model": "flux-pinned-t-b", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(target_stats(&flux, "b").await["requests"], 1);
    // Another target of the same simulator is not slowed (and saw nothing of this).
    assert_eq!(target_stats(&flux, "a").await["requests"], 0);
}
