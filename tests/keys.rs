//! The keys file under edits: a half-written, empty or deleted file never logs anyone out,
//! a real edit still takes effect, and a key is usable the moment the console or
//! `fluxrouter keys` shows it.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The value of one series in the Prometheus text (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

const KEYS_FAILED: &str = r#"flux_reloads_total{file="keys",outcome="failure"}"#;

/// Rewrite `path` in place the way `cat >`, many editors and some configuration tools
/// save: truncate it, then write `content` in three pieces with pauses between them.
fn rewrite_in_place(path: &Path, content: &[u8], pause: Duration) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let cuts = [0, content.len() / 3, 2 * content.len() / 3, content.len()];
    for piece in cuts.windows(2) {
        std::thread::sleep(pause);
        f.write_all(&content[piece[0]..piece[1]]).unwrap();
        f.flush().unwrap();
    }
}

/// Clients sending GET /v1/models with valid keys until stopped; every answer's status.
fn load(
    gateways: &[Arc<Flux>],
    keys: &[String],
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..clients)
        .map(|i| {
            let flux = gateways[i % gateways.len()].clone();
            let key = keys[i % keys.len()].clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(flux.get("/v1/models", &key).await.status().as_u16());
                }
                statuses
            })
        })
        .collect()
}

/// Poll `flux`'s metrics until `series` reaches `at_least`.
async fn wait_for_series(flux: &Flux, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = flux.metrics().await;
        if series(&text, name) >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rewriting_emptying_or_deleting_the_keys_file_never_logs_a_valid_key_out() {
    // Two gateways reading one keys file, as a fleet's gateways on one host do.
    let first = Arc::new(Flux::start().await);
    let second = Arc::new(
        Flux::start_custom(&Custom {
            keys_from: Some(&first),
            ..Custom::default()
        })
        .await,
    );
    let mut keys = vec![first.key.clone()];
    for i in 0..3 {
        keys.push(first.new_key("payg", &format!("user-{i}")));
    }
    for key in &keys {
        first.wait_for_key(key).await;
        second.wait_for_key(key).await;
    }
    let path = first.dir.path().join("keys.yaml");
    let original = std::fs::read(&path).unwrap();
    let gateways = [first.clone(), second.clone()];

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gateways, &keys, 6, &stop);

    // 40 in-place rewrites, each a real change (its first line differs), written slowly.
    let p = path.clone();
    let o = original.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..40u64 {
            let mut content = format!("# edit {i}\n").into_bytes();
            content.extend_from_slice(&o);
            rewrite_in_place(&p, &content, Duration::from_millis(5 + (i % 4) * 10));
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    // An empty file: refused like an invalid edit, on each gateway.
    let mut failed = Vec::new();
    for g in &gateways {
        failed.push(series(&g.metrics().await, KEYS_FAILED));
    }
    std::fs::write(&path, b"").unwrap();
    for (g, before) in gateways.iter().zip(&failed) {
        wait_for_series(g, KEYS_FAILED, before + 1.0).await;
    }
    std::fs::write(&path, &original).unwrap();
    // Deleted, for longer than the watcher's debounce: refused too.
    let mut failed = Vec::new();
    for g in &gateways {
        failed.push(series(&g.metrics().await, KEYS_FAILED));
    }
    std::fs::remove_file(&path).unwrap();
    for (g, before) in gateways.iter().zip(&failed) {
        wait_for_series(g, KEYS_FAILED, before + 1.0).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Restored, with a key added meanwhile: picked up again.
    let (late, record) = fluxrouter::auth::new_key("late", "payg", 0);
    let mut file: fluxrouter::config::KeysFile = serde_norway::from_slice(&original).unwrap();
    file.keys.push(record);
    std::fs::write(&path, serde_norway::to_string(&file).unwrap()).unwrap();
    for g in &gateways {
        g.wait_for_key(&late).await;
    }
    let log = first.log_containing("keys file is missing").await;
    assert!(log.contains("keeping the previous keys table"), "{log}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let statuses = c.await.unwrap();
        let refused: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
        assert!(
            refused.is_empty(),
            "{} of {} requests with a valid key refused: {:?}",
            refused.len(),
            statuses.len(),
            &refused[..refused.len().min(10)]
        );
        total += statuses.len();
    }
    assert!(total > 100, "the load ran: {total} requests");
    for g in &gateways {
        assert!(
            g.log().contains("keys file is empty"),
            "the refusal is logged with its reason"
        );
    }
}

#[tokio::test]
async fn an_edit_that_revokes_a_key_still_takes_effect() {
    let flux = Flux::start().await;
    let leaver = flux.new_key("payg", "leaver");
    flux.wait_for_key(&leaver).await;
    let path = flux.dir.path().join("keys.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    for k in doc["keys"].as_sequence_mut().unwrap() {
        if k["name"] == "leaver" {
            k["status"] = "revoked".into();
        }
    }
    let revoked = serde_norway::to_string(&doc).unwrap();
    assert_ne!(revoked, text);
    // Written in place, slowly: the finished file is what counts.
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        rewrite_in_place(&p, revoked.as_bytes(), Duration::from_millis(30))
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while flux.get("/v1/models", &leaver).await.status() != 401 {
        assert!(Instant::now() < deadline, "the revoked key still works");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flux.get("/v1/models", &flux.key).await.status(), 200);
}

#[tokio::test]
async fn a_key_made_with_the_cli_works_the_moment_it_is_printed() {
    let mut flux = Flux::start().await;
    let mut keys = Vec::new();
    for i in 0..20 {
        let key = flux.new_key("payg", &format!("instant-{i}"));
        // Used at once, without waiting for anything.
        let r = flux.get("/v1/models", &key).await;
        assert_eq!(r.status(), 200, "key {i} refused on its first use");
        keys.push(key);
    }
    // Suspended or revoked: refused the moment the command returns; resumed: back at once.
    for (args, key, status) in [
        (["keys", "suspend", "instant-0"], &keys[0], 401),
        (["keys", "resume", "instant-0"], &keys[0], 200),
        (["keys", "revoke", "instant-1"], &keys[1], 401),
    ] {
        let out = flux.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("loaded by the gateway at"), "{err}");
        let r = flux.get("/v1/models", key).await;
        assert_eq!(r.status().as_u16(), status, "{args:?}");
    }

    // Without the admin token the CLI cannot ask the gateway, and says so.
    let out = cli_at(
        &flux.config,
        &["keys", "new", "--plan", "payg", "--name", "no-token"],
        None,
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FLUX_TEST_ADMIN_TOKEN is not set"), "{err}");
    let late = String::from_utf8(out.stdout).unwrap().trim().to_string();
    flux.wait_for_key(&late).await;

    // With no gateway running, the key is still made, and the CLI says when it applies.
    flux.signal("TERM");
    assert!(flux.wait_exit(Duration::from_secs(15)).await.is_some());
    let out = flux.cli(&["keys", "new", "--plan", "payg", "--name", "offline"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no gateway is running at"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .starts_with("sk-"));
}
