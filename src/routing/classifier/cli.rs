//! `fluxrouter route --explain / --eval`: flux-auto's decision for request bodies, as the
//! gateway makes it (same table, same rules, same classifier), every lane allowed.

use std::fmt::Write;

use super::eval::Tally;
use super::features::{Hashed, Sink};
use crate::errors::{Context, Error, Fault};
use crate::routing::{Requested, Route, RouteTable};
use crate::wire::ir::Request;
use crate::wire::transcode::parse_request;
use crate::wire::Format;

/// The client format a body is written in: Responses (`input`/`instructions`), Anthropic
/// (top-level `system`, or `image`/`tool_use`/`tool_result` blocks), else Chat Completions.
pub fn format_of(body: &serde_json::Value) -> Format {
    if body.get("input").is_some() || body.get("instructions").is_some() {
        return Format::OpenAiResponses;
    }
    let anthropic_block = |b: &serde_json::Value| {
        matches!(
            b["type"].as_str(),
            Some("image" | "tool_use" | "tool_result" | "thinking" | "document")
        )
    };
    let blocks = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten();
    if body.get("system").is_some() || blocks.clone().any(anthropic_block) {
        Format::Anthropic
    } else {
        Format::OpenAiChat
    }
}

/// flux-auto's route for one parsed request, every lane of the table allowed.
pub fn decide(routes: &RouteTable, request: &Request<'_>) -> Result<Route, Error> {
    let mut features = crate::routing::features(request);
    routes.detect_cues(&crate::routing::last_user_text(request), &mut features);
    routes.classify(request, &mut features);
    let all: Vec<String> = routes.lanes().iter().map(|l| l.name.clone()).collect();
    routes
        .route(Requested::Auto, &features, all.as_slice())
        .map_err(|e| Error::new(Fault::Invalid, e.message))
}

/// Features by name, with their hashes.
struct Named(Vec<(String, u64)>);

impl Sink for Named {
    fn feature(&mut self, tag: &str, text: &str, h: u64) {
        self.0.push((format!("{tag}:{text}"), h));
    }
}

/// The lane, each lane's score, the features that weighed most, and the deciding rule.
pub fn explain(routes: &RouteTable, body: &[u8]) -> Result<String, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(body).context(Fault::Invalid, "not JSON")?;
    let format = format_of(&value);
    let request = parse_request(format, body).map_err(|e| Error::new(Fault::Invalid, e.message))?;
    let started = std::time::Instant::now();
    let route = decide(routes, &request)?;
    let took = started.elapsed();
    let mut out = String::new();
    let lane = &routes.lane(route.lane).name;
    let rule = route.rule.map_or("-", |r| routes.rules()[r].name.as_str());
    let _ = writeln!(
        out,
        "lane: {lane}\nrule: {rule}{}\nread as: {} ({} messages, {} tools)\ndecided in: {} us",
        match (route.probability, route.classifier_lane) {
            (Some(p), Some(wanted)) => format!(
                ", the classifier's lane {} at p={p:.3}, stepped to {lane} by the plan",
                routes.lane(wanted).name
            ),
            (Some(p), None) => format!(", the classifier's lane at p={p:.3}"),
            (None, _) => String::new(),
        },
        format.label(),
        request.messages.len(),
        request.tools.len(),
        took.as_micros(),
    );
    // Which target would go first, and why (no live latency or health here: every target
    // is taken as healthy and not yet measured).
    let features = crate::routing::features(&request);
    let mut ordered = route.clone();
    routes.order_targets(
        &mut ordered,
        &features,
        || crate::routing::session::session(&request, None, features.input_tokens),
        |_| crate::routing::Health::default(),
        &mut rand::thread_rng(),
    );
    let strategy = &routes.lane(route.lane).strategy;
    let _ = writeln!(
        out,
        "targets: {} (strategy {}{}; first chosen by: {})",
        ordered
            .candidates
            .iter()
            .map(|&m| routes.model(m).id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        strategy.kind.label(),
        if strategy.affinity && strategy.spreads() {
            ", prompt-cache affinity"
        } else {
            ""
        },
        ordered.chosen.label().unwrap_or("the lane's order"),
    );
    let Some(learned) = routes.classifier() else {
        out.push_str("no classifier in lanes.yaml (auto.classifier)\n");
        return Ok(out);
    };
    let model = &learned.model;
    let hashed = Hashed::of(&request, model.buckets);
    let scores = model.scores(&hashed);
    let _ = writeln!(
        out,
        "classifier scores: {}",
        model
            .lanes
            .iter()
            .zip(scores.as_slice())
            .map(|(l, p)| format!("{l} {p:.3}"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    // The lane the classifier favours (which the rules may have overridden).
    let top = (0..scores.len)
        .max_by(|&a, &b| scores.p[a].total_cmp(&scores.p[b]))
        .unwrap_or(0);
    let mut names = Named(Vec::new());
    super::features::extract(&request, &mut names);
    let mut seen = std::collections::BTreeSet::new();
    let n = model.lanes.len();
    let mut weighed: Vec<(f32, String)> = names
        .0
        .into_iter()
        .filter_map(|(name, h)| {
            let index = super::features::slot(h, model.buckets);
            let k = hashed.indices.binary_search(&index).ok()?;
            if !seen.insert(index) {
                return None;
            }
            let toward = model.contribution(&hashed, k, top);
            let others = (0..n)
                .filter(|&l| l != top)
                .map(|l| model.contribution(&hashed, k, l))
                .sum::<f32>()
                / (n - 1).max(1) as f32;
            Some((toward - others, name))
        })
        .collect();
    weighed.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()).then(a.1.cmp(&b.1)));
    let _ = writeln!(
        out,
        "features that weighed most for or against {} (of {}):",
        model.lanes[top],
        hashed.indices.len()
    );
    for (w, name) in weighed.iter().take(15) {
        let _ = writeln!(out, "  {w:+.3}  {name}");
    }
    Ok(out)
}

/// One labelled line: `{"lane": ..., "request": {...}}` (also `label`/`expected` and
/// `body`), or a request body with a `lane` field beside its own.
pub fn labelled(line: &str) -> Result<(String, Vec<u8>), Error> {
    let mut v: serde_json::Value =
        serde_json::from_str(line).context(Fault::Invalid, "not JSON")?;
    let label = ["lane", "label", "expected"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|l| l.as_str()).map(str::to_string))
        .ok_or_else(|| Error::new(Fault::Invalid, "no lane (or label) field"))?;
    let body = match ["request", "body"].iter().find_map(|k| v.get(*k)) {
        Some(b) => b.clone(),
        None => {
            if let Some(o) = v.as_object_mut() {
                for k in ["lane", "label", "expected", "id", "topic", "lang", "note"] {
                    o.remove(k);
                }
            }
            v
        }
    };
    Ok((label, serde_json::to_vec(&body).expect("a JSON value")))
}

/// Score a labelled JSONL file: the tally, and the lines that could not be scored.
pub fn evaluate(routes: &RouteTable, jsonl: &str) -> (Tally, Vec<String>) {
    let mut tally = Tally::default();
    let mut problems = Vec::new();
    for (n, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let scored = labelled(line).and_then(|(label, body)| {
            let value: serde_json::Value =
                serde_json::from_slice(&body).context(Fault::Invalid, "not JSON")?;
            let request = parse_request(format_of(&value), &body)
                .map_err(|e| Error::new(Fault::Invalid, e.message))?;
            let route = decide(routes, &request)?;
            Ok((label, routes.lane(route.lane).name.clone()))
        });
        match scored {
            Ok((label, chosen)) => tally.add(&label, &chosen),
            Err(e) => problems.push(format!("line {}: {e}", n + 1)),
        }
    }
    (tally, problems)
}
