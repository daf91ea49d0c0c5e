//! Per-request CPU work outside the network: parse + validate a chat body, run the flux-auto
//! decision, rewrite the body for the provider. Bodies: a 1 KB chat and a ~50 KB coding-agent
//! turn (a long system prompt plus tools, as Codex and Claude Code send).
//!
//! `cargo bench --bench request_path` (plain timing loop: no extra dependency).

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use fluxrouter::config::LanesFile;
use fluxrouter::routing::{Requested, RouteTable};
use fluxrouter::wire::openai_chat_old::ChatRequest;
use serde_json::json;

fn table() -> RouteTable {
    let text = std::fs::read_to_string("lanes.yaml").expect("run from the crate root");
    let file: LanesFile = fluxrouter::config::parse_yaml(Path::new("lanes.yaml"), &text).unwrap();
    RouteTable::compile(Path::new("lanes.yaml"), file, &|_| true).unwrap()
}

fn agent_body() -> Vec<u8> {
    let system = "You are a coding agent. Follow the repository's conventions. ".repeat(600);
    let tools: Vec<_> = (0..12)
        .map(|i| {
            json!({"type": "function", "function": {"name": format!("tool_{i}"),
                "description": "Runs a thing. ".repeat(20),
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}})
        })
        .collect();
    serde_json::to_vec(
        &json!({"model": "flux-auto", "stream": true, "max_tokens": 32000,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "say hi"}],
        "tools": tools}),
    )
    .unwrap()
}

fn small_body() -> Vec<u8> {
    let text = "lorem ipsum dolor sit amet ".repeat(36);
    serde_json::to_vec(&json!({"model": "flux-auto",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]}))
    .unwrap()
}

fn time<F: FnMut()>(label: &str, iterations: u32, mut f: F) {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let per = start.elapsed().as_secs_f64() / iterations as f64;
    println!("{label:<44} {:>10.2} us/op", per * 1e6);
}

fn main() {
    let routes = table();
    let access = vec![
        "express".to_string(),
        "daily".to_string(),
        "deep".to_string(),
        "image".to_string(),
    ];
    for (name, body, n) in [
        ("1 KB chat", small_body(), 20_000),
        ("50 KB agent turn", agent_body(), 2_000),
    ] {
        println!("{name}: {} bytes", body.len());
        let body = bytes::Bytes::from(body);
        time("  parse + validate + features", n, || {
            black_box(ChatRequest::parse(black_box(body.clone())).unwrap());
        });
        let request = ChatRequest::parse(body.clone()).unwrap();
        time(
            "  flux-auto decision (cues + rules + eligibility)",
            n * 5,
            || {
                let mut f = request.features;
                routes.detect_cues(&request.last_user_text(), &mut f);
                black_box(
                    routes
                        .route(Requested::Auto, &f, access.as_slice())
                        .unwrap(),
                );
            },
        );
        time(
            "  rewrite model (splice into the client's bytes)",
            n,
            || {
                black_box(request.encode_for("gpt-4.1-mini"));
            },
        );
    }
}
