//! The operator's routing policy hook (`policy:`) through the real gateway, against the
//! simulator's `/_sim/policy` modes: allow (and what the hook is told), deny in the client's
//! shape with the hook's status and code, a lane or targets chosen by the hook, a decision
//! cached by the key the answer names, and a hook that does not answer with `on_error:
//! allow` (fail open) and `deny` (fail closed).

mod common;

use common::{header, Custom, Flux};
use serde_json::{json, Value};

async fn start(mode: &str, extra: &str) -> Flux {
    let config =
        format!("policy: {{ url: \"http://{{sim}}/_sim/policy{mode}\", timeout_ms: 200{extra} }}");
    Flux::start_custom(&Custom {
        extra_config: &config,
        ..Custom::default()
    })
    .await
}

/// The questions the hook received, oldest first.
async fn questions(flux: &Flux) -> Vec<Value> {
    flux.sim
        .requests()
        .await
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap_or_default()
                .starts_with("/_sim/policy")
        })
        .map(|r| r["body"].clone())
        .collect()
}

/// Requests the provider received (not the hook).
async fn provider_requests(flux: &Flux) -> usize {
    flux.sim
        .requests()
        .await
        .iter()
        .filter(|r| {
            !r["path"]
                .as_str()
                .unwrap_or_default()
                .starts_with("/_sim/policy")
        })
        .count()
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "the secret plan for the merger"}]})
}

#[tokio::test]
async fn an_allowing_hook_is_told_the_request_s_shape_never_its_words() {
    let flux = start("", "").await;
    let r = flux.chat(&ask("flux-auto")).await;
    assert_eq!(r.status(), 200);
    let q = questions(&flux).await;
    assert_eq!(q.len(), 1, "{q:?}");
    let q = &q[0];
    assert_eq!(q["model"], "flux-auto");
    assert_eq!(q["lane"], "express");
    assert_eq!(q["rule"], "default");
    assert_eq!(q["format"], "openai");
    assert_eq!(q["plan"], "payg");
    assert!(q["key_id"].as_str().unwrap().starts_with("key_"), "{q}");
    assert!(q["account_id"].is_string(), "{q}");
    assert_eq!(q["targets"][0]["model"], "flux-pinned-alpha");
    assert_eq!(q["targets"][0]["provider"], "sim");
    assert!(q["input_tokens"].as_u64().unwrap() > 0);
    assert!(!q.to_string().contains("merger"), "the prompt leaked: {q}");
    assert!(!q.to_string().contains(&flux.key), "the key leaked: {q}");
    let metrics = flux.metrics().await;
    assert!(
        metrics.contains(r#"flux_policy_decisions_total{outcome="allow"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("flux_policy_seconds_count 1"), "{metrics}");
    // With include_prompt the last user turn is sent.
    let flux = start("", ", include_prompt: true").await;
    flux.chat(&ask("flux-fast")).await;
    assert_eq!(
        questions(&flux).await[0]["prompt"],
        "the secret plan for the merger"
    );
}

#[tokio::test]
async fn a_refusal_reaches_the_client_in_its_shape_with_the_hook_s_status_and_code() {
    let (deny, rate) = tokio::join!(start("/deny", ""), start("/deny=429", ""));
    let r = deny.chat(&ask("flux-fast")).await;
    let message = common::expect_openai_error(r, 403, "sim_policy_denied").await;
    assert_eq!(message, "The simulated policy refuses this request.");
    let r = deny
        .client
        .post(format!("{}/anthropic/v1/messages", deny.base))
        .header("x-api-key", &deny.key)
        .json(&json!({"model": "flux-fast", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(
        provider_requests(&deny).await,
        0,
        "nothing reached a provider"
    );
    let r = rate.chat(&ask("flux-fast")).await;
    common::expect_openai_error(r, 429, "sim_policy_denied").await;
}

#[tokio::test]
async fn the_hook_may_choose_the_lane_or_the_targets() {
    let (lane, targets) = tokio::join!(
        start("/lane=daily", ""),
        start("/targets=flux-pinned-beta,flux-pinned-nope", "")
    );
    let r = lane.chat(&ask("flux-fast")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "daily");
    let r = targets.chat(&ask("flux-fast")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-beta");
    assert_eq!(header(&r, "x-flux-route-rule"), "target=policy");
}

#[tokio::test]
async fn a_decision_is_kept_for_as_long_as_the_answer_says() {
    let flux = start("/cache=60000", "").await;
    for _ in 0..5 {
        assert_eq!(flux.chat(&ask("flux-fast")).await.status(), 200);
    }
    assert_eq!(questions(&flux).await.len(), 1, "asked once, by account");
    let metrics = flux.metrics().await;
    assert!(
        metrics.contains(r#"flux_policy_decisions_total{outcome="cached"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_hook_that_does_not_answer_fails_open_or_closed_as_configured() {
    let (open, closed, garbage) = tokio::join!(
        start("/hang", ""),
        start("/hang", ", on_error: deny"),
        start("/garbage", ", on_error: deny")
    );
    let r = open.chat(&ask("flux-fast")).await;
    assert_eq!(r.status(), 200);
    let r = closed.chat(&ask("flux-fast")).await;
    assert_eq!(header(&r, "retry-after"), "1");
    common::expect_openai_error(r, 503, "policy_unavailable").await;
    assert_eq!(provider_requests(&closed).await, 0);
    let r = garbage.chat(&ask("flux-fast")).await;
    common::expect_openai_error(r, 503, "policy_unavailable").await;
    let metrics = open.metrics().await;
    assert!(
        metrics.contains(r#"flux_policy_decisions_total{outcome="timeout"} 1"#),
        "{metrics}"
    );
    let metrics = garbage.metrics().await;
    assert!(
        metrics.contains(r#"flux_policy_decisions_total{outcome="error"} 1"#),
        "{metrics}"
    );
}
