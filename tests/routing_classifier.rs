//! flux-auto with the learned classifier, through the real gateway: the image rule stays a
//! rule, the classifier's lane and probability reach the headers, plans bound its choice,
//! and a new weights file changes decisions without a failed request.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fluxrouter::routing::classifier::model::Provenance;
use fluxrouter::routing::classifier::Classifier;
use serde_json::json;

const LANES: &str = r#"
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 4.0 }
    default: flux-pinned-alpha
  formats:
    alias: flux-standard
    title: The middle lane (named as the harness's plans expect)
    price: { input_per_mtok: 2.0, output_per_mtok: 8.0 }
    default: flux-pinned-gamma
  deep:
    alias: flux-reasoning
    title: Deep Thought
    price: { input_per_mtok: 4.0, output_per_mtok: 16.0 }
    default: flux-pinned-deep
  image:
    alias: flux-image
    title: Image Lane
    price: { input_per_mtok: 2.0, output_per_mtok: 8.0 }
    default: flux-pinned-vision
models:
  flux-pinned-alpha: { upstream: alpha-upstream, provider: sim, lane: express, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
  flux-pinned-gamma: { upstream: gamma-upstream, provider: sim, lane: formats, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-deep: { upstream: deep-upstream, provider: sim, lane: deep, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-vision: { upstream: vision-upstream, provider: sim, lane: image, context_window: 100000, max_output_tokens: 4096, capabilities: [vision, streaming] }
auto:
  classifier: { weights: weights.json }
  rules:
    - { name: images, when: { images: true }, lane: image }
    - { name: classifier, classifier: true }
"#;

/// A classifier that leans on its biases alone: whatever the request, `favourite` wins with
/// probability about 0.9.
fn leaning_to(favourite: usize) -> Vec<u8> {
    let mut bias = vec![0.0f32; 3];
    bias[favourite] = 3.0;
    Classifier::from_floats(
        ["express", "formats", "deep"].map(String::from).to_vec(),
        256,
        (0.05, 1.0),
        bias,
        &vec![0.0; 256 * 3],
        Provenance::default(),
    )
    .to_file()
}

async fn start() -> Flux {
    let weights = leaning_to(0);
    Flux::start_custom(&Custom {
        lanes: LANES,
        files: &[("weights.json", &weights)],
        ..Custom::default()
    })
    .await
}

#[tokio::test]
async fn the_classifier_chooses_and_says_so_and_images_stay_a_rule() {
    let flux = start().await;
    let r = flux.chat(&ping("flux-auto")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "express");
    assert_eq!(header(&r, "x-flux-route-rule"), "classifier; p=0.91");
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-alpha");
    let image = json!({"model": "flux-auto", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "thanks"}]});
    let r = flux.chat(&image).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "image");
    assert_eq!(header(&r, "x-flux-route-rule"), "images");
    // The same decision through the Anthropic endpoint.
    let r = flux
        .post(
            "/anthropic/v1/messages",
            &flux.key,
            &json!({"model": "flux-auto", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "express");
}

#[tokio::test]
async fn a_new_weights_file_changes_decisions_without_a_failed_request() {
    let flux = Arc::new(start().await);
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (flux, failures, sent, stop) =
            (flux.clone(), failures.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = flux.chat(&ping("flux-auto")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status() != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // A broken file first: refused, the previous weights stay.
    let path = flux.dir.path().join("weights.json");
    std::fs::write(
        flux.dir.path().join("weights.tmp"),
        b"{\"format\": \"nope\"}",
    )
    .unwrap();
    std::fs::rename(flux.dir.path().join("weights.tmp"), &path).unwrap();
    flux.log_containing("keeping the previous lanes table")
        .await;
    let r = flux.chat(&ping("flux-auto")).await;
    assert_eq!(header(&r, "x-flux-lane"), "express");
    // Then weights that lean to deep.
    std::fs::write(flux.dir.path().join("weights.tmp"), leaning_to(2)).unwrap();
    std::fs::rename(flux.dir.path().join("weights.tmp"), &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = flux.chat(&ping("flux-auto")).await;
        if header(&r, "x-flux-lane") == "deep" {
            assert_eq!(header(&r, "x-flux-route-rule"), "classifier; p=0.91");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "weights never reloaded: {}",
            flux.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    let text = flux.metrics().await;
    assert!(
        text.contains(r#"flux_reloads_total{file="lanes",outcome="failure"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_plan_bounds_the_classifier_and_a_deep_request_goes_to_the_middle_lane() {
    let weights = leaning_to(2);
    let flux = Flux::start_custom(&Custom {
        lanes: LANES,
        files: &[("weights.json", &weights)],
        ..Custom::default()
    })
    .await;
    // The `payg` plan has every lane: deep.
    let r = flux.chat(&ping("flux-auto")).await;
    assert_eq!(header(&r, "x-flux-lane"), "deep");
    // `rpm600` (a plan of the harness) has express and the middle lane: the nearest
    // cheaper lane, not the cheapest.
    let key = flux.new_key("rpm600", "no-deep");
    flux.wait_for_key(&key).await;
    let r = flux.chat_with_key(&ping("flux-auto"), &key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "formats");
    // The header names the classifier's own lane and probability, then the plan's step
    // (not the probability of the lane served, which the classifier gave 0.05).
    assert_eq!(
        header(&r, "x-flux-route-rule"),
        "classifier; deep p=0.91; plan: formats"
    );
    // `express_only`: express, the only lane it has.
    let key = flux.new_key("express_only", "small");
    flux.wait_for_key(&key).await;
    let r = flux.chat_with_key(&ping("flux-auto"), &key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-lane"), "express");
    assert_eq!(
        header(&r, "x-flux-route-rule"),
        "classifier; deep p=0.91; plan: express"
    );
}

/// `fluxrouter route` on the shipped lanes.yaml and weights.
fn route_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(["route", "--lanes", "lanes.yaml"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_eval_cli_scores_a_labelled_file_with_the_shipped_classifier() {
    let (ok, out, err) = route_cli(&["--eval", "tests/fixtures/routing/eval-small.jsonl"]);
    assert!(ok, "{out}{err}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("requests 20  accuracy "), "{out}");
    // The hand-written file (none of it in the training corpus): no under-routing, and the
    // image requests (one only in an earlier turn, one Anthropic-shaped) go to image.
    assert!(first.contains("under-routed 0"), "{out}");
    let accuracy: f64 = first
        .split("accuracy ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(accuracy >= 80.0, "{out}");
    assert!(out.contains("image 100% (3/3)"), "{out}");
    assert!(
        out.contains("label \\ chosen  express    daily    image     deep"),
        "{out}"
    );
}

#[test]
fn the_explain_cli_shows_scores_features_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"model":"flux-auto","messages":[{"role":"user","content":"Prove that there are infinitely many primes of the form 4k+3."}]}"#,
    )
    .unwrap();
    let (ok, out, err) = route_cli(&["--explain", body.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("lane: deep\nrule: classifier, the classifier's lane at p="),
        "{out}"
    );
    assert!(out.contains("classifier scores: express "), "{out}");
    assert!(
        out.contains("features that weighed most for or against deep"),
        "{out}"
    );
    assert!(out.contains("qw:prove"), "{out}");
    // A broken body: a clear error, not a panic.
    std::fs::write(&body, "{not json").unwrap();
    let (ok, _, err) = route_cli(&["--explain", body.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not JSON"), "{err}");
}

#[test]
fn training_rebuilds_the_shipped_weights_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("weights.json");
    let (ok, report, err) = route_cli(&["--train", "training", "--out", out.to_str().unwrap()]);
    assert!(ok, "{report}{err}");
    for part in [
        "cross-validated under it:",
        "held-out split:",
        "label \\ chosen",
    ] {
        assert!(report.contains(part), "{part} missing from\n{report}");
    }
    let held_out = report.split("held-out split:").nth(1).unwrap();
    assert!(held_out.contains("under-routed 0"), "{report}");
    let rebuilt = std::fs::read(&out).unwrap();
    let shipped = std::fs::read("flux-auto.classifier.json").unwrap();
    assert!(
        rebuilt == shipped,
        "flux-auto.classifier.json is not what training/ gives: retrain with \
         `fluxrouter route --train training` and commit the file"
    );
}
