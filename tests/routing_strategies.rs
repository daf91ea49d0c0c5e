//! Operator routing strategies through the real gateway: a weighted split, prompt-cache
//! affinity (explicit keys, a conversation's prefix, the same target on every node of a
//! fleet), and what the response headers and the access log say about the choice.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{header, Custom, Flux, TEST_LANES};
use futures_util::StreamExt;
use serde_json::{json, Value};

const STRATEGY_LANES: &str = r#"
  spread:
    alias: flux-spread
    title: Three targets weighted 5:3:2, no affinity
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    strategy: weighted
    affinity: false
    weights: { flux-pinned-s-a: 5, flux-pinned-s-b: 3, flux-pinned-s-c: 2 }
    default: flux-pinned-s-a
    fallbacks: [flux-pinned-s-b, flux-pinned-s-c]
  quick:
    alias: flux-quick
    title: Three targets at simulator targets, the fastest first
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    strategy: latency
    affinity: false
    default: flux-pinned-q-a
    fallbacks: [flux-pinned-q-b, flux-pinned-q-c]
  multi:
    alias: flux-multi
    title: One model deployed at three providers
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    strategy: weighted
    affinity: false
    default: flux-pinned-m
  cheap:
    alias: flux-cheap
    title: Cheaper per token, cached input a tenth
    price: { input_per_mtok: 1.0, cached_input_per_mtok: 0.1, output_per_mtok: 1.0 }
    default: flux-pinned-c-a
  dear:
    alias: flux-dear
    title: Twice the price, cached input a tenth
    price: { input_per_mtok: 2.0, cached_input_per_mtok: 0.2, output_per_mtok: 2.0 }
    default: flux-pinned-d-a
  sticky:
    alias: flux-sticky
    title: Three equal targets with prompt-cache affinity
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    strategy: weighted
    default: flux-pinned-k-a
    fallbacks: [flux-pinned-k-b, flux-pinned-k-c]
"#;

const STRATEGY_MODELS: &str = r#"
  flux-pinned-s-a: { upstream: s-a, provider: sim, lane: spread, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-s-b: { upstream: s-b, provider: sim, lane: spread, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-s-c: { upstream: s-c, provider: sim, lane: spread, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-q-a: { upstream: q-a, provider: sim_q_a, lane: quick, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-q-b: { upstream: q-b, provider: sim_q_b, lane: quick, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-q-c: { upstream: q-c, provider: sim_q_c, lane: quick, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-m: { upstream: m, provider: sim_q_a, deployments: [{ provider: sim_q_b }, { provider: sim_q_c, upstream: m-c }], lane: multi, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-c-a: { upstream: c-a, provider: sim, lane: cheap, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-d-a: { upstream: d-a, provider: sim, lane: dear, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-k-a: { upstream: k-a, provider: sim, lane: sticky, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-k-b: { upstream: k-b, provider: sim_anthropic, lane: sticky, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-k-c: { upstream: k-c, provider: sim_responses, lane: sticky, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
"#;

/// Three providers, each a simulator target whose first-byte delay a test sets.
const STRATEGY_PROVIDERS: &str = r#"
  sim_q_a: { format: openai, base_url: "http://{sim}/_sim/target=q-a/v1" }
  sim_q_b: { format: openai, base_url: "http://{sim}/_sim/target=q-b/v1" }
  sim_q_c: { format: openai, base_url: "http://{sim}/_sim/target=q-c/v1" }
"#;

fn lanes() -> String {
    let with_lanes = TEST_LANES.replacen("\nmodels:\n", &format!("{STRATEGY_LANES}models:\n"), 1);
    with_lanes.replacen("\nmodels:\n", &format!("\nmodels:{STRATEGY_MODELS}"), 1)
}

async fn start() -> Flux {
    let lanes = lanes();
    Flux::start_custom(&Custom {
        lanes: &lanes,
        extra_providers: STRATEGY_PROVIDERS,
        ..Custom::default()
    })
    .await
}

/// Set a simulator target's delay before its first byte.
async fn set_first_byte(flux: &Flux, target: &str, ms: u64) {
    let r = flux
        .client
        .put(format!("http://{}/_sim/targets/{target}", flux.sim.addr))
        .json(&json!({ "first_byte_ms": ms }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Requests a simulator target has answered.
async fn answered(flux: &Flux, target: &str) -> u64 {
    let url = format!("http://{}/_sim/targets/{target}", flux.sim.addr);
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["requests"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

/// `n` requests to the latency lane, 4 at a time; the models that served them.
async fn quick_burst(flux: &Flux, n: usize) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let r = chat(flux, ping("flux-quick", &format!("q {i}")), None).await;
            header(&r, "x-flux-model").to_string()
        })
        .buffer_unordered(4)
        .collect()
        .await
}

async fn chat(flux: &Flux, body: Value, session: Option<&str>) -> reqwest::Response {
    let mut req = flux
        .client
        .post(format!("{}/v1/chat/completions", flux.base))
        .bearer_auth(&flux.key)
        .json(&body);
    if let Some(s) = session {
        req = req.header("x-flux-session", s);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    r
}

fn ping(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn weighted_splits_ten_thousand_requests_by_the_weights() {
    let flux = start().await;
    let n = 10_000;
    let served: Vec<String> = futures_util::stream::iter(0..n)
        .map(|i| {
            let flux = &flux;
            async move {
                let r = chat(flux, ping("flux-spread", &format!("hi {i}")), None).await;
                assert_eq!(header(&r, "x-flux-route-rule"), "target=weighted");
                header(&r, "x-flux-model").to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &served {
        *counts.entry(m.as_str()).or_default() += 1;
    }
    for (model, weight) in [
        ("flux-pinned-s-a", 0.5),
        ("flux-pinned-s-b", 0.3),
        ("flux-pinned-s-c", 0.2),
    ] {
        let share = counts.get(model).copied().unwrap_or(0) as f64 / n as f64;
        assert!(
            (share - weight).abs() <= 0.02,
            "{model}: {share} of the traffic, weight {weight}: {counts:?}"
        );
    }
    // The access log says what chose the target.
    let r = chat(&flux, ping("flux-spread", "logged"), None).await;
    let id = header(&r, "x-flux-request-id").to_string();
    let line = flux.access_line(&id).await;
    assert_eq!(line["target_choice"], "weighted", "{line}");
    // Each target's weight, latency estimate and health are in the metrics.
    let metrics = flux.metrics().await;
    assert!(
        metrics.contains(r#"flux_target_weight{lane="spread",target="flux-pinned-s-a@sim"} 5"#),
        "{metrics}"
    );
    let latency = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"flux_target_latency_seconds{lane="spread",target="flux-pinned-s-c@sim"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(latency > 0.0 && latency < 5.0, "{latency}");
    assert!(
        metrics.contains(r#"flux_target_ejected{lane="spread",target="flux-pinned-s-b@sim"} 0"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"flux_target_weight{lane="express""#));
    // A failover lane says nothing about targets.
    let r = chat(&flux, ping("flux-fast", "hi"), None).await;
    assert!(r.headers().get("x-flux-route-rule").is_none());
}

/// The models that served each of `rounds` requests of a conversation.
async fn served_by(
    flux: &Flux,
    rounds: usize,
    request: impl Fn(usize) -> Value,
    session: Option<&str>,
) -> BTreeSet<String> {
    let mut models = BTreeSet::new();
    for i in 0..rounds {
        let r = chat(flux, request(i), session).await;
        models.insert(header(&r, "x-flux-model").to_string());
    }
    models
}

#[tokio::test]
async fn a_conversation_stays_on_one_target_and_conversations_spread() {
    let flux = start().await;
    let mut targets = BTreeSet::new();
    for c in 0..12 {
        // X-Flux-Session names the conversation.
        let session = format!("conversation-{c}");
        let models = served_by(
            &flux,
            4,
            |i| ping("flux-sticky", &format!("turn {i}")),
            Some(&session),
        )
        .await;
        assert_eq!(models.len(), 1, "{session}: {models:?}");
        targets.extend(models);
        // So does the client's prompt_cache_key (Codex's conversation id).
        let models = served_by(
            &flux,
            4,
            |i| {
                json!({"model": "flux-sticky", "prompt_cache_key": format!("pck-{c}"),
                    "messages": [{"role": "user", "content": format!("turn {i}")}]})
            },
            None,
        )
        .await;
        assert_eq!(models.len(), 1, "pck-{c}: {models:?}");
        targets.extend(models);
    }
    assert!(targets.len() >= 2, "24 conversations all on {targets:?}");
    let r = chat(&flux, ping("flux-sticky", "hi"), Some("s")).await;
    assert_eq!(header(&r, "x-flux-route-rule"), "target=affinity:header");
    let id = header(&r, "x-flux-request-id").to_string();
    assert_eq!(
        flux.access_line(&id).await["target_choice"],
        "affinity:header"
    );
}

/// Turn `turn` of a conversation whose system prompt is long enough to be cached.
fn long_conversation(tag: &str, turn: usize) -> Value {
    let system = format!("{tag}: you answer questions about the fleet's routing. ").repeat(120);
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": format!("first question of {tag}")}),
    ];
    for t in 1..=turn {
        messages.push(json!({"role": "assistant", "content": format!("answer {t}")}));
        messages.push(json!({"role": "user", "content": format!("follow-up {t}")}));
    }
    json!({"model": "flux-sticky", "messages": messages})
}

#[tokio::test]
async fn every_node_of_a_fleet_sends_a_conversation_to_the_same_target() {
    let nodes = [start().await, start().await, start().await];
    let mut spread = BTreeSet::new();
    for c in 0..8 {
        let tag = format!("conversation {c}");
        let mut served = BTreeSet::new();
        // Its turns arrive at different nodes, with no identity but its prefix.
        for turn in 0..6 {
            let node = &nodes[turn % 3];
            let r = chat(node, long_conversation(&tag, turn), None).await;
            assert_eq!(header(&r, "x-flux-route-rule"), "target=affinity:prefix");
            served.insert(header(&r, "x-flux-model").to_string());
        }
        assert_eq!(served.len(), 1, "{tag}: {served:?}");
        spread.extend(served);
    }
    assert!(spread.len() >= 2, "8 conversations all on {spread:?}");
    // A short request has no prefix worth keeping: the lane's strategy spreads it.
    let r = chat(&nodes[0], ping("flux-sticky", "hi"), None).await;
    assert_eq!(header(&r, "x-flux-route-rule"), "target=weighted");
}

#[tokio::test]
async fn latency_leaves_a_target_that_slows_and_comes_back_when_it_recovers() {
    let flux = start().await;
    for t in ["q-a", "q-b", "q-c"] {
        set_first_byte(&flux, t, 20).await;
    }
    // All fast: each gets a share.
    let served = quick_burst(&flux, 60).await;
    for m in ["flux-pinned-q-a", "flux-pinned-q-b", "flux-pinned-q-c"] {
        assert!(
            served.iter().any(|s| s == m),
            "{m} never chosen: {served:?}"
        );
    }
    // q-c slows to 1.5 s before its first byte: once it is seen (its first slow answer, or
    // the requests piling up in flight there), it gets nothing more.
    set_first_byte(&flux, "q-c", 1_500).await;
    quick_burst(&flux, 40).await;
    let before = answered(&flux, "q-c").await;
    let served = quick_burst(&flux, 60).await;
    assert!(
        !served.iter().any(|s| s == "flux-pinned-q-c"),
        "the slow target was still chosen: {served:?}"
    );
    assert_eq!(answered(&flux, "q-c").await, before);
    let metrics = flux.metrics().await;
    let estimate = |model: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    r#"flux_target_latency_seconds{{lane="quick",target="{model}"}}"#
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{metrics}"))
    };
    assert!(
        estimate("flux-pinned-q-c@sim_q_c") > 10.0 * estimate("flux-pinned-q-a@sim_q_a"),
        "{metrics}"
    );
    // It recovers: its unrefreshed estimate decays, it is tried again, and its traffic comes
    // back (the estimate halves every 2 s after 5 s without an answer).
    set_first_byte(&flux, "q-c", 20).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let served = quick_burst(&flux, 20).await;
        if served.iter().filter(|s| *s == "flux-pinned-q-c").count() >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recovered target never got its traffic back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn provider_preferences_choose_within_the_lane_and_never_reach_the_provider() {
    let flux = start().await;
    // `order` puts the OpenAI-format target first; the body reaches it passed through, with
    // FluxRouter's `provider` member cut out and everything else as sent.
    flux.sim.clear_requests().await;
    let body = json!({"model": "flux-sticky", "temperature": 0.5,
        "provider": {"order": ["sim"], "allow_fallbacks": false},
        "messages": [{"role": "user", "content": "hi"}]});
    let r = chat(&flux, body, Some("conversation-x")).await;
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-k-a");
    assert_eq!(header(&r, "x-flux-route-rule"), "target=preference");
    let sent = flux.sim.requests().await;
    let upstream = &sent.last().unwrap()["body"];
    assert!(upstream.get("provider").is_none(), "{upstream}");
    assert_eq!(upstream["temperature"], 0.5, "{upstream}");
    assert_eq!(upstream["model"], "k-a");
    // The same from headers; an Anthropic client's body is cleaned the same way.
    for _ in 0..5 {
        let r = flux
            .client
            .post(format!("{}/v1/chat/completions", flux.base))
            .bearer_auth(&flux.key)
            .header("x-flux-provider-only", "sim_anthropic")
            .json(&ping("flux-sticky", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-k-b");
    }
    flux.sim.clear_requests().await;
    let r = flux
        .client
        .post(format!("{}/anthropic/v1/messages", flux.base))
        .header("x-api-key", &flux.key)
        .json(&json!({"model": "flux-sticky", "max_tokens": 50,
            "provider": {"only": ["sim_anthropic"]},
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-k-b");
    let sent = flux.sim.requests().await;
    let upstream = &sent.last().unwrap()["body"];
    assert!(upstream.get("provider").is_none(), "{upstream}");
    assert_eq!(upstream["max_tokens"], 50);
    // A name the gateway does not know, or nothing left: 400 in the client's shape.
    for (prefs, says) in [
        (json!({"only": ["openia"]}), "'openia'"),
        (
            json!({"ignore": ["sim", "sim_anthropic", "sim_responses"]}),
            "No target",
        ),
        (json!({"sort": "cheapest"}), "'provider'"),
    ] {
        let r = flux
            .client
            .post(format!("{}/v1/chat/completions", flux.base))
            .bearer_auth(&flux.key)
            .json(&json!({"model": "flux-sticky", "provider": prefs,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let message = common::expect_openai_error(r, 400, "invalid_request").await;
        assert!(message.contains(says), "{message}");
    }
}

/// flux-auto over `dear` for a conversation's first turn and `cheap` from its third message
/// on: a conversation moves down as it goes, unless its cache says otherwise.
async fn start_moving_down() -> Flux {
    let lanes = lanes().replace(
        "    - { name: default, lane: express }",
        "    - { name: later-turns, when: { min_messages: 3 }, lane: cheap }\n    - { name: default, lane: dear }",
    );
    assert!(lanes.contains("later-turns"), "the rules were replaced");
    Flux::start_custom(&Custom {
        lanes: &lanes,
        extra_providers: STRATEGY_PROVIDERS,
        ..Custom::default()
    })
    .await
}

#[tokio::test]
async fn flux_auto_keeps_a_cached_conversation_where_moving_down_would_cost_more() {
    let flux = start_moving_down().await;
    let turn = |tag: &str, n: usize| {
        let mut v = long_conversation(tag, n);
        v["model"] = json!("flux-auto");
        v["max_tokens"] = json!(20);
        v
    };
    // Turn 1 goes to dear (one user message).
    let r = chat(&flux, turn("warm", 0), None).await;
    assert_eq!(header(&r, "x-flux-lane"), "dear");
    // Turn 2 would go to cheap, but its ~1,700-token prefix is cached at dear: 0.2 x cached
    // beats 1.0 x uncached, so it stays, and says why.
    let r = chat(&flux, turn("warm", 1), None).await;
    assert_eq!(header(&r, "x-flux-lane"), "dear");
    assert_eq!(
        header(&r, "x-flux-route-rule"),
        "later-turns; kept=cache over cheap"
    );
    let id = header(&r, "x-flux-request-id").to_string();
    let line = flux.access_line(&id).await;
    assert_eq!(line["kept"], "cache", "{line}");
    assert_eq!(line["route_rule"], "later-turns", "{line}");
    // Without a previous turn here (a conversation this gateway has not seen), it moves down.
    let r = chat(&flux, turn("cold", 1), None).await;
    assert_eq!(header(&r, "x-flux-lane"), "cheap");
    assert_eq!(header(&r, "x-flux-route-rule"), "later-turns");
}

#[tokio::test]
async fn a_pinned_model_deployed_at_three_providers_is_spread_over_them() {
    let flux = start().await;
    for _ in 0..30 {
        let r = chat(&flux, ping("flux-pinned-m", "hi"), None).await;
        // Whichever deployment answered, it is the model the client pinned.
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-m");
        assert_eq!(header(&r, "x-flux-routed"), "false");
    }
    for t in ["q-a", "q-b", "q-c"] {
        assert_eq!(answered(&flux, t).await, 10, "target {t}");
    }
    // Each deployment got its own upstream id.
    let sent: Vec<String> = flux
        .sim
        .requests()
        .await
        .iter()
        .map(|r| r["body"]["model"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(sent.iter().filter(|m| *m == "m-c").count(), 10, "{sent:?}");
    // GET /v1/models lists the model once.
    let models: Value = flux
        .get("/v1/models", &flux.key)
        .await
        .json()
        .await
        .unwrap();
    let listed = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == "flux-pinned-m")
        .count();
    assert_eq!(listed, 1);
}
