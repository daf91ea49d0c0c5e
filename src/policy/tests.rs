use super::*;

fn question<'a>(account: &'a str, model: &'a str) -> Question<'a> {
    Question {
        request_id: "req_1",
        account_id: account,
        key_id: "key_1",
        plan: "payg",
        model,
        format: "openai",
        stream: false,
        lane: "express",
        rule: Some("default"),
        probabilities: None,
        targets: vec![],
        input_tokens: 10,
        max_tokens: None,
        messages: 1,
        tools: false,
        images: false,
        prompt: None,
    }
}

#[test]
fn answers_become_decisions() {
    let d = |s: &str| Answer::parse(s.as_bytes()).map(Answer::decision);
    assert_eq!(d("").unwrap(), Decision::Allow);
    assert_eq!(d("{}").unwrap(), Decision::Allow);
    assert_eq!(d(r#"{"allow": true}"#).unwrap(), Decision::Allow);
    assert_eq!(
        d(r#"{"lane": "daily"}"#).unwrap(),
        Decision::Lane("daily".into())
    );
    assert_eq!(
        d(r#"{"targets": ["flux-pinned-a", "flux-pinned-b"]}"#).unwrap(),
        Decision::Targets(vec!["flux-pinned-a".into(), "flux-pinned-b".into()])
    );
    let Decision::Deny(e) = d(r#"{"deny": {"status": 429, "code": "team_budget", "message": "The team's budget is spent."}}"#).unwrap() else {
        panic!()
    };
    assert_eq!((e.status(), e.code()), (429, "team_budget"));
    assert_eq!(e.message, "The team's budget is spent.");
    let Decision::Deny(e) = d(r#"{"allow": false}"#).unwrap() else {
        panic!()
    };
    assert_eq!((e.status(), e.code()), (403, "policy_denied"));
    // Anything else is the hook's error (on_error decides).
    for bad in ["nope", "[]", r#"{"lane": 5}"#, r#"{"route": "x"}"#] {
        assert!(Answer::parse(bad.as_bytes()).is_err(), "{bad}");
    }
    assert!(Answer::parse(&vec![b' '; MAX_ANSWER_BYTES + 1]).is_err());
}

fn policy(default_ttl_ms: u64) -> Policy {
    let config: PolicyConfig = serde_norway::from_str(&format!(
        "{{url: 'http://127.0.0.1:9/route', cache_ttl_ms: {default_ttl_ms}}}"
    ))
    .unwrap();
    Policy::new(&config).unwrap()
}

#[test]
fn decisions_are_cached_by_the_attributes_the_answer_names() {
    let p = policy(0);
    let lane = Decision::Lane("daily".into());
    let by = |by: Vec<Attribute>, ttl_ms| CacheSpec {
        by,
        ttl_ms: Some(ttl_ms),
    };
    assert_eq!(p.cached(&question("acct_a", "flux-auto")), None);
    p.remember(
        &question("acct_a", "flux-auto"),
        &by(vec![Attribute::Account], 60_000),
        &lane,
    );
    // The same account, whatever else differs: decided; another account: asked.
    assert_eq!(
        p.cached(&question("acct_a", "flux-fast")),
        Some(lane.clone())
    );
    assert_eq!(p.cached(&question("acct_b", "flux-auto")), None);
    // Another shape alongside: account and model.
    let deny = Decision::Deny(FluxError::policy(403, None, "no".into()));
    p.remember(
        &question("acct_b", "flux-auto"),
        &by(vec![Attribute::Account, Attribute::Model], 60_000),
        &deny,
    );
    assert_eq!(p.cached(&question("acct_b", "flux-auto")), Some(deny));
    assert_eq!(p.cached(&question("acct_b", "flux-fast")), None);
    // Expired: asked again. No ttl and no default: not kept.
    let q = question("acct_c", "m");
    p.remember(
        &q,
        &by(vec![Attribute::Key, Attribute::Plan], 1),
        &Decision::Allow,
    );
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(p.cached(&question("acct_d", "m")), None);
    let q = question("acct_e", "m");
    p.remember(
        &q,
        &CacheSpec {
            by: vec![Attribute::Lane],
            ttl_ms: None,
        },
        &Decision::Allow,
    );
    assert_eq!(p.cached(&question("acct_f", "m")), None);
    // With a default TTL in the config it is.
    let p = policy(60_000);
    p.remember(
        &q,
        &CacheSpec {
            by: vec![Attribute::Lane],
            ttl_ms: None,
        },
        &Decision::Allow,
    );
    assert_eq!(p.cached(&question("acct_f", "m")), Some(Decision::Allow));
}

#[test]
fn the_question_carries_no_prompt_unless_asked_to() {
    let q = question("acct_a", "flux-auto");
    let v = serde_json::to_value(&q).unwrap();
    assert!(v.get("prompt").is_none(), "{v}");
    assert_eq!(v["lane"], "express");
    assert_eq!(v["account_id"], "acct_a");
}
