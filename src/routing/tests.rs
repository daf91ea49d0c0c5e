use std::path::Path;

use super::*;
use crate::config::LanesFile;

const SHIPPED: &str = include_str!("../../lanes.yaml");
const PROVIDERS: [&str; 8] = [
    "openai",
    "anthropic",
    "google",
    "mistral",
    "deepseek",
    "xai",
    "groq",
    "together",
];

fn shipped() -> RouteTable {
    compile(SHIPPED).unwrap()
}

/// Keyword rules in place of the shipped classifier: the rule machinery operators may still
/// configure.
const KEYWORD_AUTO: &str = r##"auto:
  reasoning_cues: ["step by step", "prove", "proof", "derive", "think carefully"]
  code_markers: ["```", "def ", "fn ", "function ", "class ", "#include", "import ", "traceback"]
  rules:
    - name: images
      when: { images: true }
      lane: image
    - name: reasoning
      when: { reasoning: true }
      lane: deep
    - name: tools
      when: { tools: true }
      lane: daily
    - name: code
      when: { code: true }
      lane: daily
    - name: long-output
      when: { min_max_tokens: 4096 }
      lane: daily
    - name: long-conversation
      when: { min_messages: 16 }
      lane: daily
    - name: large-input
      when: { min_input_tokens: 8000 }
      lane: daily
    - name: default
      lane: express
"##;

fn keyword_text() -> String {
    let at = SHIPPED
        .find("\nauto:\n")
        .expect("lanes.yaml has an auto section")
        + 1;
    format!("{}{KEYWORD_AUTO}", &SHIPPED[..at])
}

fn keyword_table() -> RouteTable {
    compile(&keyword_text()).unwrap()
}

fn compile(text: &str) -> Result<RouteTable, crate::config::ConfigError> {
    let file: LanesFile = crate::config::parse_yaml(Path::new("lanes.yaml"), text)?;
    RouteTable::compile(Path::new("lanes.yaml"), file, &|p| PROVIDERS.contains(&p))
}

const ALL: [&str; 4] = ["express", "daily", "deep", "image"];

fn access(lanes: &[&str]) -> Vec<String> {
    lanes.iter().map(|s| s.to_string()).collect()
}

fn auto_lane(t: &RouteTable, f: &Features, text: &str) -> (String, String) {
    let mut f = *f;
    t.detect_cues(text, &mut f);
    let r = t
        .route(Requested::Auto, &f, access(&ALL).as_slice())
        .unwrap();
    (
        t.lane(r.lane).name.clone(),
        t.rules()[r.rule.unwrap()].name.clone(),
    )
}

#[test]
fn shipped_table_has_four_lanes_and_37_pinned_models() {
    let t = shipped();
    let aliases: Vec<&str> = t.lanes().iter().map(|l| l.alias.as_str()).collect();
    for alias in ["flux-fast", "flux-standard", "flux-reasoning", "flux-image"] {
        assert!(aliases.contains(&alias), "{alias}");
    }
    assert_eq!(t.models().len(), 37);
    let providers: std::collections::HashSet<&str> =
        t.models().iter().map(|m| m.provider.as_str()).collect();
    assert!(providers.len() >= 5, "several providers: {providers:?}");
    let price = |alias| t.lane(t.lane_by_alias(alias).unwrap()).price.input_per_mtok;
    assert_eq!(
        (
            price("flux-fast"),
            price("flux-standard"),
            price("flux-reasoning")
        ),
        (
            "1".parse().unwrap(),
            "2".parse().unwrap(),
            "4".parse().unwrap()
        )
    );
}

#[test]
fn flux_auto_rules_pick_lanes_in_order() {
    let t = keyword_table();
    let plain = Features {
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    assert_eq!(
        auto_lane(&t, &plain, "ping"),
        ("express".into(), "default".into())
    );
    assert_eq!(
        auto_lane(&t, &plain, "Please prove this step by step").0,
        "deep"
    );
    assert_eq!(
        auto_lane(&t, &plain, "fix:\n```rust\nfn main() {}\n```").1,
        "code"
    );
    let tools = Features {
        tools: true,
        ..plain
    };
    assert_eq!(
        auto_lane(&t, &tools, "ping"),
        ("daily".into(), "tools".into())
    );
    // Images win over everything: the rule order is the priority.
    let images = Features {
        images: true,
        tools: true,
        ..plain
    };
    assert_eq!(
        auto_lane(&t, &images, "prove it"),
        ("image".into(), "images".into())
    );
    let big = Features {
        input_tokens: 9_000,
        ..plain
    };
    assert_eq!(auto_lane(&t, &big, "hi").1, "large-input");
    let long_out = Features {
        max_tokens: Some(32_000),
        ..plain
    };
    assert_eq!(auto_lane(&t, &long_out, "hi").1, "long-output");
    let long_conv = Features {
        messages: 20,
        ..plain
    };
    assert_eq!(auto_lane(&t, &long_conv, "hi").1, "long-conversation");
}

#[test]
fn flux_auto_skips_lanes_the_plan_does_not_allow() {
    let t = keyword_table();
    let mut f = Features {
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    t.detect_cues("prove it step by step", &mut f);
    let r = t
        .route(
            Requested::Auto,
            &f,
            access(&["express", "daily"]).as_slice(),
        )
        .unwrap();
    assert_eq!(t.lane(r.lane).name, "express");
}

#[test]
fn aliases_pinned_ids_and_unknown_models_resolve() {
    let t = shipped();
    assert_eq!(t.resolve("flux-auto").unwrap(), Requested::Auto);
    assert!(matches!(
        t.resolve("flux-fast").unwrap(),
        Requested::Lane(_)
    ));
    assert!(matches!(
        t.resolve("flux-pinned-gpt-4o-mini").unwrap(),
        Requested::Pinned(_)
    ));
    let e = t.resolve("gpt-4o").unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "model_not_found"));
    for form in [
        "flux-auto",
        "flux-fast",
        "flux-standard",
        "flux-reasoning",
        "flux-image",
        "flux-pinned-",
    ] {
        assert!(
            e.message.contains(form),
            "{form} missing from: {}",
            e.message
        );
    }
}

#[test]
fn pinned_model_goes_first_and_is_not_routed_then_its_lane_follows() {
    let t = shipped();
    let Requested::Pinned(m) = t.resolve("flux-pinned-gpt-4o-mini").unwrap() else {
        panic!()
    };
    let f = Features {
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    let r = t
        .route(Requested::Pinned(m), &f, access(&ALL).as_slice())
        .unwrap();
    assert_eq!(r.candidates[0], m);
    assert_eq!(r.pinned, Some(m));
    assert_eq!(r.candidates.iter().filter(|&&c| c == m).count(), 1);
    assert!(r.candidates.len() > 1, "lane fallbacks follow");
}

#[test]
fn eligibility_filters_by_capability_and_context() {
    let t = shipped();
    let lane = t.lane_by_alias("flux-fast").unwrap();
    let f = Features {
        tools: true,
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    let r = t
        .route(Requested::Lane(lane), &f, access(&ALL).as_slice())
        .unwrap();
    assert!(r
        .candidates
        .iter()
        .all(|&m| t.model(m).has(crate::config::Capability::Tools)));

    // llama-3.1-8b has no vision; pinned with an image, the lane's vision models take over.
    let Requested::Pinned(llama) = t.resolve("flux-pinned-llama-3.1-8b").unwrap() else {
        panic!()
    };
    let f = Features {
        images: true,
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    let r = t
        .route(Requested::Pinned(llama), &f, access(&ALL).as_slice())
        .unwrap();
    assert!(!r.candidates.contains(&llama));

    let huge = Features {
        input_tokens: 5_000_000,
        messages: 1,
        ..Features::default()
    };
    let e = t
        .route(Requested::Lane(lane), &huge, access(&ALL).as_slice())
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (413, "input_too_long"));
    assert!(e.message.contains("trim the history"), "{}", e.message);
}

#[test]
fn plan_without_the_lane_gets_402_plan_model_not_included() {
    let t = shipped();
    let lane = t.lane_by_alias("flux-reasoning").unwrap();
    let f = Features {
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    let e = t
        .route(Requested::Lane(lane), &f, access(&["express"]).as_slice())
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (402, "plan_model_not_included"));
}

#[test]
fn invalid_tables_are_rejected_naming_the_field() {
    let base = keyword_text();
    let base = base.as_str();
    let cases = [
        (
            base.replace(
                "default: flux-pinned-gpt-5\n",
                "default: flux-pinned-nope\n",
            ),
            "lanes.deep.default",
        ),
        (
            base.replace(
                "provider: deepseek, lane: daily",
                "provider: acme, lane: daily",
            ),
            "models.flux-pinned-deepseek-chat.provider",
        ),
        (
            base.replace("alias: flux-image", "alias: flux-fast"),
            "lanes.image.alias",
        ),
        (
            base.replace("    - name: default\n      lane: express\n", ""),
            "auto.rules",
        ),
        (
            base.replace(
                "lane: deep\n    - name: tools",
                "lane: nowhere\n    - name: tools",
            ),
            "auto.rules[1].lane",
        ),
        (
            base.replace("{ input_per_mtok: 1.00", "{ input_per_mtok: 0.0000001"),
            "lanes.express.price.input_per_mtok",
        ),
        (
            base.replace(
                "context_window: 131072, max_output_tokens: 131072",
                "context_window: 0, max_output_tokens: 1",
            ),
            "models.flux-pinned-llama-3.1-8b.context_window",
        ),
    ];
    let weighted = "alias: flux-standard\n    strategy: weighted\n";
    let strategy_cases = [
        (
            base.replace(
                "alias: flux-standard\n",
                &format!("{weighted}    weights: {{ flux-pinned-gpt-5: 2 }}\n"),
            ),
            "lanes.daily.weights.flux-pinned-gpt-5",
        ),
        (
            base.replace(
                "alias: flux-standard\n",
                "alias: flux-standard\n    weights: { flux-pinned-gpt-4.1-mini: 2 }\n",
            ),
            "lanes.daily.weights",
        ),
        (
            base.replace(
                "alias: flux-standard\n",
                &format!(
                    "{weighted}    weights: {{ flux-pinned-gpt-4.1-mini: 0, \
                     flux-pinned-gemini-2.5-flash: 0, flux-pinned-claude-sonnet-4-5: 0, \
                     flux-pinned-deepseek-chat: 0, flux-pinned-llama-3.3-70b: 0 }}\n"
                ),
            ),
            "lanes.daily.weights",
        ),
        (
            base.replace(
                "alias: flux-standard\n",
                "alias: flux-standard\n    strategy: cost\n    cost_spread_percent: 5000\n",
            ),
            "lanes.daily.cost_spread_percent",
        ),
    ];
    for (text, field) in cases.into_iter().chain(strategy_cases) {
        assert_ne!(text, base, "the edit for {field} must apply");
        let e = compile(&text).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let e = compile(&format!("{base}\nsurprise: 1\n")).unwrap_err();
    assert!(e.reason.contains("surprise"), "{e}");
}

#[test]
fn cues_are_found_in_one_pass_and_only_in_the_head_and_tail_of_huge_turns() {
    let t = keyword_table();
    let mut f = Features::default();
    t.detect_cues("Please PROVE it:\n```py\nx\n```", &mut f);
    assert!(f.reasoning && f.code);
    t.detect_cues("just chatting", &mut f);
    assert!(!f.reasoning && !f.code, "flags are reset");
    let filler = "lorem ipsum ".repeat(10_000);
    t.detect_cues(&format!("prove this: {filler}"), &mut f);
    assert!(f.reasoning, "head is scanned");
    t.detect_cues(&format!("{filler} then fn main() {{}}"), &mut f);
    assert!(f.code && !f.reasoning, "tail is scanned");
    t.detect_cues(&format!("{filler} prove {filler}"), &mut f);
    assert!(!f.reasoning, "the middle of a 240 KB paste is not scanned");
}

/// A plan's lanes plus its own bound on input tokens.
struct Capped(Vec<String>, u64);

impl LaneAccess for Capped {
    fn lane(&self, lane: &Lane) -> Result<(), Denied> {
        self.0.as_slice().lane(lane)
    }

    fn max_input_tokens(&self) -> Option<u64> {
        Some(self.1)
    }
}

const TWO_LANES: &str = r#"
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 4.0 }
    default: flux-pinned-small
  daily:
    alias: flux-standard
    title: Daily Driver
    price: { input_per_mtok: 2.0, output_per_mtok: 8.0 }
    default: flux-pinned-large
models:
  flux-pinned-small: { upstream: s, provider: openai, lane: express, context_window: 128000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-large: { upstream: l, provider: openai, lane: daily, context_window: 1000000, max_output_tokens: 4096, capabilities: [streaming] }
auto:
  rules:
    - { name: default, lane: express }
"#;

#[test]
fn input_too_long_for_every_model_is_413_with_the_numbers() {
    let t = compile(TWO_LANES).unwrap();
    let lane = t.lane_by_alias("flux-fast").unwrap();
    let f = Features {
        input_tokens: 129_000,
        messages: 1,
        ..Features::default()
    };
    // A plan of that lane only: over the plan's largest model by 1,000.
    let e = t
        .route(Requested::Lane(lane), &f, access(&["express"]).as_slice())
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (413, "input_too_long"));
    let limit = "about 1000 tokens over the 128000-token limit of your plan's models";
    assert!(e.message.contains(limit), "{}", e.message);
    assert!(
        e.message.contains("trim the history or upgrade"),
        "{}",
        e.message
    );
    // With both lanes: the plan has a model that holds it, and the message names it.
    let both = access(&["express", "daily"]);
    let e = t
        .route(Requested::Lane(lane), &f, both.as_slice())
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (413, "input_too_long"));
    assert!(e.message.contains("flux-pinned-large"), "{}", e.message);
    assert!(
        e.message.contains("128000-token context window"),
        "{}",
        e.message
    );
    assert!(e.message.contains("1000000 tokens"), "{}", e.message);
    // The plan's own bound applies first, whatever the lane and the models.
    let small = Features {
        input_tokens: 5_000,
        ..f
    };
    let e = t
        .route(Requested::Auto, &small, &Capped(both.clone(), 4_000))
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (413, "input_too_long"));
    assert!(
        e.message
            .contains("about 1000 tokens over the 4000-token limit"),
        "{}",
        e.message
    );
    assert!(t
        .route(Requested::Auto, &small, &Capped(both, 5_000))
        .is_ok());
    // Another reason beside the window stays 502.
    let tools = Features {
        tools: true,
        input_tokens: 10,
        messages: 1,
        ..Features::default()
    };
    let e = t
        .route(
            Requested::Lane(lane),
            &tools,
            access(&["express"]).as_slice(),
        )
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (502, "no_eligible_target"));
}

#[test]
fn the_shipped_table_routes_with_its_classifier_and_bad_classifier_rules_are_refused() {
    let t = shipped();
    let learned = t.classifier().expect("lanes.yaml names the classifier");
    let names: Vec<&str> = learned
        .lanes
        .iter()
        .map(|&l| t.lane(l).name.as_str())
        .collect();
    assert_eq!(names, ["express", "daily", "deep"]);
    let cases = [
        (
            SHIPPED.replace(
                "  classifier:\n    weights: flux-auto.classifier.json\n",
                "",
            ),
            "auto.rules[1].classifier",
        ),
        (
            SHIPPED.replace(
                "weights: flux-auto.classifier.json",
                "weights: missing.json",
            ),
            "auto.classifier.weights",
        ),
        (
            SHIPPED.replace("      classifier: true", "      when: {}"),
            "auto.rules[1]",
        ),
    ];
    for (text, field) in cases {
        assert_ne!(text, SHIPPED, "the edit for {field} must apply");
        let e = compile(&text).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

/// The daily lane of the keyword table with `strategy` (and more YAML for the lane).
fn with_daily_strategy(strategy: &str) -> RouteTable {
    let text = keyword_text().replace(
        "alias: flux-standard\n",
        &format!("alias: flux-standard\n{strategy}"),
    );
    compile(&text).unwrap()
}

#[test]
fn a_lane_strategy_orders_the_eligible_targets_and_says_so() {
    let t = with_daily_strategy(
        "    strategy: weighted\n    affinity: false\n    weights: { flux-pinned-gpt-4.1-mini: 0, flux-pinned-gemini-2.5-flash: 3 }\n",
    );
    let lane = t.lane_by_alias("flux-standard").unwrap();
    let healthy = |_: &Model| Health::default();
    let f = Features::default();
    let mut firsts = Vec::new();
    for _ in 0..6 {
        let mut route = t
            .route(Requested::Lane(lane), &f, access(&ALL).as_slice())
            .unwrap();
        let before: Vec<ModelId> = route.candidates.clone();
        t.order_targets(&mut route, &f, || None, healthy, &mut rand::thread_rng());
        assert_eq!(
            route.chosen,
            Chosen::Strategy(strategy::StrategyKind::Weighted)
        );
        let mut sorted = route.candidates.clone();
        sorted.sort_unstable();
        let mut b = before;
        b.sort_unstable();
        assert_eq!(sorted, b, "the same targets, reordered");
        firsts.push(t.model(route.candidates[0]).id.clone());
    }
    // Weights 0, 3, 1, 1, 1: the default (weight 0) is never first; gemini has half.
    assert!(
        !firsts.contains(&"flux-pinned-gpt-4.1-mini".to_string()),
        "{firsts:?}"
    );
    let gemini = firsts
        .iter()
        .filter(|m| *m == "flux-pinned-gemini-2.5-flash")
        .count();
    assert_eq!(gemini, 3, "{firsts:?}");
    // A pinned model keeps its place: the caller chose it.
    let pinned = t.model_by_id("flux-pinned-deepseek-chat").unwrap();
    let mut route = t
        .route(Requested::Pinned(pinned), &f, access(&ALL).as_slice())
        .unwrap();
    t.order_targets(&mut route, &f, || None, healthy, &mut rand::thread_rng());
    assert_eq!(route.candidates[0], pinned);
    assert_eq!(route.chosen, Chosen::Order);
    // Failover lanes (the shipped ones) are left alone, and never ask for the session.
    let express = t.lane_by_alias("flux-fast").unwrap();
    let mut route = t
        .route(Requested::Lane(express), &f, access(&ALL).as_slice())
        .unwrap();
    let before = route.candidates.clone();
    t.order_targets(
        &mut route,
        &f,
        || panic!("no session needed"),
        |_: &Model| Health {
            ejected: true,
            failures: 0,
        },
        &mut rand::thread_rng(),
    );
    assert_eq!(route.candidates, before);
}

#[test]
fn a_reload_keeps_what_the_targets_taught() {
    let old = with_daily_strategy("    strategy: latency\n");
    let id = "flux-pinned-deepseek-chat";
    old.model(old.model_by_id(id).unwrap())
        .stats
        .observe(std::time::Duration::from_secs(2), 0);
    let new = with_daily_strategy("    strategy: latency\n");
    let m = new.model(new.model_by_id(id).unwrap());
    assert_eq!(m.stats.estimate(0), 0.0);
    new.inherit(&old);
    assert!(m.stats.estimate(0) > 1e9);
}

#[test]
fn provider_preferences_filter_and_reorder_within_the_lane() {
    use preferences::{Preferences, Sort};
    let t = keyword_table();
    let lane = t.lane_by_alias("flux-standard").unwrap();
    let f = Features::default();
    let route = || {
        t.route(Requested::Lane(lane), &f, access(&ALL).as_slice())
            .unwrap()
    };
    let ids = |r: &Route| -> Vec<String> {
        r.candidates
            .iter()
            .map(|&m| t.model(m).provider.clone())
            .collect()
    };
    assert_eq!(
        ids(&route()),
        ["openai", "google", "anthropic", "deepseek", "groq"]
    );
    let mut r = route();
    Preferences {
        order: vec!["groq".into(), "flux-pinned-claude-sonnet-4-5".into()],
        ignore: vec!["google".into()],
        ..Preferences::default()
    }
    .apply(&t, &mut r)
    .unwrap();
    assert_eq!(ids(&r), ["groq", "anthropic", "openai", "deepseek"]);
    assert_eq!(r.chosen, Chosen::Preference);
    let mut r = route();
    Preferences {
        only: vec!["deepseek".into(), "anthropic".into()],
        allow_fallbacks: Some(false),
        ..Preferences::default()
    }
    .apply(&t, &mut r)
    .unwrap();
    assert_eq!(ids(&r), ["anthropic"]);
    // By price: the models' provider_price, else the lane's (all equal here: order kept).
    let mut r = route();
    Preferences {
        sort: Some(Sort::Price),
        ..Preferences::default()
    }
    .apply(&t, &mut r)
    .unwrap();
    assert_eq!(
        ids(&r),
        ["openai", "google", "anthropic", "deepseek", "groq"]
    );
    // Nothing left, or a name the gateway does not know: 400, saying which.
    let mut r = route();
    let e = Preferences {
        only: vec!["mistral".into()],
        ..Preferences::default()
    }
    .apply(&t, &mut r)
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(
        e.message
            .contains("openai, google, anthropic, deepseek, groq"),
        "{}",
        e.message
    );
    let e = Preferences {
        order: vec!["openia".into()],
        ..Preferences::default()
    }
    .apply(&t, &mut route())
    .unwrap_err();
    assert!(e.message.contains("'openia'"), "{}", e.message);
}

#[test]
fn flux_auto_keeps_a_warm_conversation_when_moving_down_costs_more() {
    use conversations::Turn;
    let t = keyword_table();
    let daily = t.lane_by_alias("flux-standard").unwrap();
    let express = t.lane_by_alias("flux-fast").unwrap();
    let deepseek = t.model_by_id("flux-pinned-deepseek-chat").unwrap();
    let all = access(&ALL);
    let f = Features {
        input_tokens: 7_000,
        max_tokens: Some(500),
        ..Features::default()
    };
    let auto = || t.route(Requested::Auto, &f, all.as_slice()).unwrap();
    assert_eq!(auto().lane, express);
    let last = |input_tokens, lane, model| Turn {
        at: 0,
        generation: t.generation(),
        lane,
        model,
        input_tokens,
        output_tokens: 500,
    };
    let same_format = |_: &Model| Some(crate::wire::Format::OpenAiChat);
    // 6,500 tokens cached on daily: 6.5k x $0.50 + 500 x $2 + 500 x $8 (per M) = $0.00825
    // to stay, 7k x $1 + 500 x $4 = $0.009 to move to express uncached. It stays, on its
    // own target.
    let r = t.keep_warm(
        auto(),
        &last(6_500, daily, deepseek),
        &f,
        all.as_slice(),
        same_format,
    );
    assert_eq!(r.lane, daily);
    assert_eq!(r.kept, Some((Kept::Cache, express)));
    assert_eq!(r.candidates[0], deepseek);
    assert_eq!(
        r.rule,
        auto().rule,
        "the rule that wanted express is still named"
    );
    // A long conversation is likely to go on: the move's one uncached turn is repaid by
    // turns cached at express ($0.25 vs $0.50 per M), so it moves: at its 7th turn, it is
    // expected to last 7 more.
    let long = Features { turns: 7, ..f };
    let r = t.route(Requested::Auto, &long, all.as_slice()).unwrap();
    let r = t.keep_warm(
        r,
        &last(6_500, daily, deepseek),
        &long,
        all.as_slice(),
        same_format,
    );
    assert_eq!((r.lane, r.kept), (express, None));
    // auto.cache_aware: false: flux-auto's lane, whatever the cache.
    let off =
        compile(&keyword_text().replace("\nauto:\n", "\nauto:\n  cache_aware: false\n")).unwrap();
    let r = off.route(Requested::Auto, &f, all.as_slice()).unwrap();
    let turn = Turn {
        generation: off.generation(),
        ..last(6_500, daily, deepseek)
    };
    assert_eq!(
        off.keep_warm(r, &turn, &f, all.as_slice(), same_format)
            .kept,
        None
    );
    // Little cached: moving down is cheaper, it moves.
    let r = t.keep_warm(
        auto(),
        &last(1_000, daily, deepseek),
        &f,
        all.as_slice(),
        same_format,
    );
    assert_eq!((r.lane, r.kept), (express, None));
    // Moving up is for quality: never held back by the cache.
    let tools = Features { tools: true, ..f };
    let up = t.route(Requested::Auto, &tools, all.as_slice()).unwrap();
    assert_eq!(up.lane, daily);
    let haiku = t.model_by_id("flux-pinned-claude-haiku-4-5").unwrap();
    let r = t.keep_warm(
        up,
        &last(20_000, express, haiku),
        &tools,
        all.as_slice(),
        same_format,
    );
    assert_eq!((r.lane, r.kept), (daily, None));
    // Signed reasoning stays with the provider format that signed it, up or down...
    let signed = Features {
        tools: true,
        signed: true,
        ..f
    };
    let by_provider = |m: &Model| {
        Some(if m.provider == "anthropic" {
            crate::wire::Format::Anthropic
        } else {
            crate::wire::Format::OpenAiChat
        })
    };
    let up = t.route(Requested::Auto, &signed, all.as_slice()).unwrap();
    let r = t.keep_warm(
        up,
        &last(100, express, haiku),
        &signed,
        all.as_slice(),
        by_provider,
    );
    assert_eq!(r.lane, express);
    assert_eq!(r.kept, Some((Kept::Signatures, daily)));
    assert_eq!(r.candidates[0], haiku);
    // ...but a lane whose first target speaks the same format is no break.
    let up = t.route(Requested::Auto, &signed, all.as_slice()).unwrap();
    let r = t.keep_warm(
        up,
        &last(100, express, haiku),
        &signed,
        all.as_slice(),
        same_format,
    );
    assert_eq!(r.lane, daily);
    // A turn remembered under another table, or a lane the plan no longer allows: move.
    let mut stale = last(20_000, daily, deepseek);
    stale.generation += 1000;
    assert_eq!(
        t.keep_warm(auto(), &stale, &f, all.as_slice(), same_format)
            .lane,
        express
    );
    let express_only = access(&["express"]);
    let r = t
        .route(Requested::Auto, &f, express_only.as_slice())
        .unwrap();
    let r = t.keep_warm(
        r,
        &last(20_000, daily, deepseek),
        &f,
        express_only.as_slice(),
        same_format,
    );
    assert_eq!(r.lane, express);
}

/// The keyword table with deepseek-chat deployed at three providers, and daily weighted.
fn with_deployments() -> RouteTable {
    let text = keyword_text()
        .replace(
            "alias: flux-standard\n",
            "alias: flux-standard\n    strategy: weighted\n    affinity: false\n    weights: { flux-pinned-deepseek-chat@groq: 2 }\n",
        )
        .replace(
            "provider: deepseek, lane: daily,",
            "provider: deepseek, deployments: [{ provider: together }, { provider: groq, upstream: deepseek-r-distill }], lane: daily,",
        );
    compile(&text).unwrap()
}

#[test]
fn a_model_deployed_at_several_providers_is_one_model_of_several_targets() {
    let t = with_deployments();
    let shipped_count = keyword_table().models().len();
    assert_eq!(t.models().len(), shipped_count + 2);
    assert_eq!(t.catalogue().count(), shipped_count);
    let first = t.model_by_id("flux-pinned-deepseek-chat").unwrap();
    let group: Vec<(String, String, String)> = t.models()[t.model(first).group.clone()]
        .iter()
        .map(|m| (m.id.clone(), m.provider.clone(), m.upstream.clone()))
        .collect();
    assert_eq!(
        group,
        [
            (
                "flux-pinned-deepseek-chat".into(),
                "deepseek".into(),
                "deepseek-chat".into()
            ),
            (
                "flux-pinned-deepseek-chat".into(),
                "together".into(),
                "deepseek-chat".into()
            ),
            (
                "flux-pinned-deepseek-chat".into(),
                "groq".into(),
                "deepseek-r-distill".into()
            ),
        ]
    );
    // Pinned: its deployments first, spread by the lane's strategy (weights 1, 1, 2), and
    // the lane's other targets after them.
    let f = Features::default();
    let mut providers = Vec::new();
    for _ in 0..8 {
        let mut r = t
            .route(Requested::Pinned(first), &f, access(&ALL).as_slice())
            .unwrap();
        t.order_targets(
            &mut r,
            &f,
            || None,
            |_: &Model| Health::default(),
            &mut rand::thread_rng(),
        );
        assert!(r.candidates[..3].iter().all(|&m| t.same_model(m, first)));
        assert!(!r.candidates[3..].iter().any(|&m| t.same_model(m, first)));
        providers.push(t.model(r.candidates[0]).provider.clone());
    }
    providers.sort();
    assert_eq!(
        providers,
        ["deepseek", "deepseek", "groq", "groq", "groq", "groq", "together", "together"]
    );
    // A bad deployment names its field.
    let bad = keyword_text().replace(
        "provider: deepseek, lane: daily,",
        "provider: deepseek, deployments: [{ provider: acme }], lane: daily,",
    );
    assert_eq!(
        compile(&bad).unwrap_err().field,
        "models.flux-pinned-deepseek-chat.deployments[0].provider"
    );
    let twice = keyword_text().replace(
        "provider: deepseek, lane: daily,",
        "provider: deepseek, deployments: [{ provider: deepseek }], lane: daily,",
    );
    assert_eq!(
        compile(&twice).unwrap_err().field,
        "models.flux-pinned-deepseek-chat.deployments[0]"
    );
    // A reload keeps each deployment's own estimate.
    let old = with_deployments();
    let groq = old.models()[old.model(first).group.clone()]
        .iter()
        .find(|m| m.provider == "groq")
        .unwrap();
    groq.stats.observe(std::time::Duration::from_secs(3), 0);
    let new = with_deployments();
    new.inherit(&old);
    for m in &new.models()[new.model(first).group.clone()] {
        assert_eq!(m.stats.estimate(0) > 1e9, m.provider == "groq", "{}", m.key);
    }
}
