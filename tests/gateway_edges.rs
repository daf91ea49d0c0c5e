//! Everything around the chat path: auth, paths, /v1/models, hot reload, the CLI, the demo.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[tokio::test]
async fn healthz_needs_no_key() {
    let flux = Flux::start().await;
    let r = flux
        .client
        .get(format!("{}/healthz", flux.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-flux-request-id").starts_with("req_"));
}

#[tokio::test]
async fn each_auth_failure_is_a_401_that_says_why_without_echoing_the_key() {
    let flux = Flux::start().await;
    let url = format!("{}/v1/chat/completions", flux.base);
    let body = ping("flux-auto");

    let r = flux.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(header(&r, "x-should-retry"), "false");
    let m = expect_openai_error(r, 401, "invalid_api_key").await;
    assert!(m.contains("Missing"), "{m}");

    let revoked = flux.new_key("payg", "leaver");
    flux.wait_for_key(&revoked).await;
    let out = flux.cli(&["keys", "revoke", "leaver"]);
    assert!(out.status.success());

    let cases = [
        (
            "sk-doesnotexist000000000000000000000000000",
            "Incorrect API key",
        ),
        ("sk-ant-api03-abcdefghijklmnop", "Anthropic"),
        ("sk-proj-abcdefghijklmnop", "OpenAI"),
        ("not-a-key-at-all", "start with 'sk-'"),
        (revoked.as_str(), "revoked"),
    ];
    for (key, expect) in cases {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = flux.post("/v1/chat/completions", key, &body).await;
            if r.status() == 200 && key == revoked && Instant::now() < deadline {
                // The revocation is still on its way through the file watcher.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let m = expect_openai_error(r, 401, "invalid_api_key").await;
            assert!(m.contains(expect), "{key}: {m}");
            assert!(!m.contains(&key[3..]), "key echoed: {m}");
            break;
        }
    }
    // The same Flux key in x-api-key is not accepted on the OpenAI paths.
    let r = flux
        .client
        .post(&url)
        .header("x-api-key", &flux.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let m = expect_openai_error(r, 401, "invalid_api_key").await;
    assert!(
        m.contains("Authorization: Bearer") && m.contains("/anthropic"),
        "{m}"
    );
    for seen in flux.sim.requests().await {
        assert_eq!(
            seen["headers"]["authorization"],
            format!("Bearer {PROVIDER_KEY}")
        );
    }
}

#[tokio::test]
async fn unserved_paths_get_403_with_a_diagnosis() {
    let flux = Flux::start().await;
    let cases = [
        ("/chat", "no bare /chat"),
        ("/chat/completions", "missing /v1"),
        ("/v1/v1/chat/completions", "doubled /v1"),
        ("/keys", "missing /v1"),
    ];
    for (path, expect) in cases {
        let r = flux.post(path, &flux.key, &ping("flux-auto")).await;
        let m = expect_openai_error(r, 403, "endpoint_not_served").await;
        assert!(m.contains(expect), "{path}: {m}");
    }
    // A mistyped path to the owner's page: the diagnosis names the accounts routes too.
    let r = flux.get("/acount", &flux.key).await;
    let m = expect_openai_error(r, 403, "endpoint_not_served").await;
    for served in ["GET /account.", "/v1/keys/{id}/rotate", "/v1/account/usage"] {
        assert!(m.contains(served), "{served}: {m}");
    }
    // Anthropic clients with a wrong base URL read the Anthropic error shape.
    for (path, expect) in [
        ("/v1/messages?beta=true", "without /anthropic"),
        ("/anthropic/messages", "missing /v1 after /anthropic"),
    ] {
        let r = flux.post(path, &flux.key, &ping("flux-auto")).await;
        assert_eq!(r.status(), 403);
        assert!(header(&r, "x-flux-request-id").starts_with("req_"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "permission_error");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(expect),
            "{path}: {body}"
        );
    }

    // Query strings on served paths are ignored.
    let r = flux
        .post(
            "/v1/chat/completions?beta=true",
            &flux.key,
            &ping("flux-auto"),
        )
        .await;
    assert_eq!(r.status(), 200);
    // A served path with the wrong method.
    let r = flux.get("/v1/chat/completions", &flux.key).await;
    expect_openai_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn models_lists_what_the_plan_allows() {
    let flux = Flux::start().await;
    let ids = |v: Value| -> Vec<String> {
        assert_eq!(v["object"], "list");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ids(flux
        .get("/v1/models", &flux.key)
        .await
        .json()
        .await
        .unwrap());
    for id in [
        "flux-auto",
        "flux-fast",
        "flux-standard",
        "flux-reasoning",
        "flux-image",
        "flux-pinned-alpha",
        "flux-pinned-vision",
    ] {
        assert!(all.contains(&id.to_string()), "{id} in {all:?}");
    }
    let free = flux.new_key("free", "free-user");
    flux.wait_for_key(&free).await;
    let mut listed = ids(flux.get("/v1/models", &free).await.json().await.unwrap());
    listed.sort();
    assert_eq!(
        listed,
        [
            "flux-auto",
            "flux-fast",
            "flux-pinned-alpha",
            "flux-pinned-beta"
        ]
    );
    // And what is not listed is refused.
    let r = flux
        .post("/v1/chat/completions", &free, &ping("flux-image"))
        .await;
    let m = expect_openai_error(r, 402, "plan_model_not_included").await;
    assert!(m.contains("Plan does not include this model yet"), "{m}");
    let r = flux
        .client
        .get(format!("{}/v1/models", flux.base))
        .send()
        .await
        .unwrap();
    expect_openai_error(r, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn editing_lanes_under_load_swaps_the_table_without_failing_a_request() {
    let flux = std::sync::Arc::new(Flux::start().await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (flux, stop) = (flux.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = flux.chat(&ping("flux-fast")).await;
                if r.status() == 200 {
                    ok += 1;
                } else {
                    failed.push(r.status().as_u16());
                }
            }
            (ok, failed)
        }));
    }
    let swapped = TEST_LANES.replace(
        "default: flux-pinned-alpha\n    fallbacks: [flux-pinned-beta]",
        "default: flux-pinned-beta\n    fallbacks: [flux-pinned-alpha]",
    );
    assert_ne!(swapped, TEST_LANES);
    let served_by =
        || async { header(&flux.chat(&ping("flux-fast")).await, "x-flux-model").to_string() };
    let wait_for = |want: &'static str| {
        let served_by = &served_by;
        async move {
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let got = served_by().await;
                if got == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "still served by {got} a second after the edit"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for _ in 0..3 {
        std::fs::write(flux.lanes_path(), &swapped).unwrap();
        wait_for("flux-pinned-beta").await;
        std::fs::write(flux.lanes_path(), TEST_LANES).unwrap();
        wait_for("flux-pinned-alpha").await;
    }
    // An invalid edit is refused and the old table stays.
    std::fs::write(
        flux.lanes_path(),
        TEST_LANES.replace("default: flux-pinned-alpha", "default: flux-pinned-nope"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_by().await, "flux-pinned-alpha");
    assert!(
        flux.log().contains("lanes.express.default"),
        "the rejection is logged with its reason"
    );
    std::fs::write(flux.lanes_path(), &swapped).unwrap();
    wait_for("flux-pinned-beta").await;
    // SIGHUP forces a reload even when no file changed.
    let reloads = || flux.log().matches("reloaded").count();
    let before = reloads();
    flux.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(2);
    while reloads() == before {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 20, "load ran: {total} requests");
}

#[test]
fn check_accepts_the_shipped_config_and_names_problems() {
    let out = Command::new(BIN)
        .args(["check", "--config", "conf/fluxrouter.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 lanes, 37 models"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let conf = std::fs::read_to_string("conf/fluxrouter.yaml").unwrap();
    std::fs::write(
        dir.path().join("fluxrouter.yaml"),
        conf.replace("../lanes.yaml", "lanes.yaml"),
    )
    .unwrap();
    let lanes = std::fs::read_to_string("lanes.yaml").unwrap();
    std::fs::write(
        dir.path().join("lanes.yaml"),
        lanes.replace("alias: flux-image", "alias: flux-fast"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("fluxrouter.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lanes.yaml") && stderr.contains("lanes.image.alias"),
        "{stderr}"
    );
}

#[tokio::test]
async fn keys_are_stored_hashed() {
    let flux = Flux::start().await;
    let stored = std::fs::read_to_string(flux.dir.path().join("keys.yaml")).unwrap();
    assert!(!stored.contains(&flux.key[3..]), "the key itself is stored");
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(flux.key.as_bytes()));
    assert!(stored.contains(&digest));
}

#[tokio::test]
async fn the_demo_prints_a_key_and_serves_the_readme_curl() {
    // The console listens on the next port: find two free in a row.
    let port = loop {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let mut child = Command::new(BIN)
        .args(["--demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut key = None;
    let mut console = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(k) = line.strip_prefix("Demo key (plan payg): ") {
            key = Some(k.to_string());
        }
        if let Some(c) = line.strip_prefix("Operator console: ") {
            console = Some(c.to_string());
        }
        if line.contains("curl") {
            break;
        }
    }
    let key = key.expect("demo printed a key");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match client
            .post(&url)
            .bearer_auth(&key)
            .json(&ping("flux-auto"))
            .send()
            .await
        {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    // The operator console it prints opens with the token it prints.
    let console = console.expect("demo printed the console");
    let (url, token) = console
        .strip_suffix(')')
        .and_then(|c| c.split_once(" (admin token: "))
        .expect("address and token");
    assert_eq!(url, format!("http://127.0.0.1:{}/console", port + 1));
    let signed = client
        .post(format!("{}/api/session", url))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(signed.status(), 200);
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-flux-model").starts_with("flux-pinned-"));
    assert_eq!(header(&r, "x-flux-lane"), "express");
    let body: Value = r.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("Hello"));
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_in_the_error_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let flux = Flux::start().await;
    let addr = flux.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":",
        flux.key
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the gateway answers within its body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-flux-request-id: req_"),
        "{answer}"
    );
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(flux.sim.requests().await.is_empty());
}

#[tokio::test]
async fn an_idle_gateway_does_not_keep_rereading_its_files() {
    let flux = Flux::start().await;
    let read_syscalls = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", flux.pid())).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // Let the start-up reload pass settle, then watch a quiet second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_syscalls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = read_syscalls() - before;
    // The file watcher once woke itself up with its own reads (inotify access events),
    // re-reading both files ~20 times a second: over 80 reads here.
    assert!(reads < 20, "{reads} read syscalls in an idle second");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_keeps_every_access_log_line() {
    let mut flux = Flux::start().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = flux.chat(&ping("flux-fast")).await;
        assert_eq!(r.status(), 200);
        ids.push(header(&r, "x-flux-request-id").to_string());
    }
    flux.signal("TERM");
    let exit = flux
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the gateway exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let log = flux.log();
    for id in ids {
        assert!(log.contains(&id), "access line for {id} lost at shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let mut flux = Flux::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let old_gone = Arc::new(AtomicBool::new(false));
    let served_after = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, key) = (
            flux.client.clone(),
            format!("{}/v1/chat/completions", flux.base),
            flux.key.clone(),
        );
        let (stop, old_gone, served_after) = (stop.clone(), old_gone.clone(), served_after.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&ping("flux-fast"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        if old_gone.load(Ordering::Relaxed) {
                            served_after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    upgrade_under_load(&mut flux, workers, &old_gone, &stop).await;
    assert!(
        served_after.load(Ordering::Relaxed) > 0,
        "the new process served after the old one left"
    );
}

/// Wait until `key` gets `status` on `body` (the keys file reaches the gateway through its
/// watcher), and return that answer.
async fn when_status(
    flux: &Flux,
    key: &str,
    body: &serde_json::Value,
    status: u16,
) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = flux.post("/v1/chat/completions", key, body).await;
        if r.status() == status || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_keys_cli_suspends_resumes_and_moves_a_key_between_plans() {
    let flux = Flux::start().await;
    let key = flux.new_key("express_only", "mover");
    flux.wait_for_key(&key).await;
    let deep = ping("flux-reasoning");
    let fast = ping("flux-fast");
    let r = flux.post("/v1/chat/completions", &key, &deep).await;
    expect_openai_error(r, 402, "plan_model_not_included").await;

    let out = flux.cli(&["keys", "plan", "mover", "--plan", "payg"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("now on plan payg"));
    // On payg the deep lane is included (its providers here fail: a 502, not a 402).
    let r = when_status(&flux, &key, &deep, 502).await;
    assert_eq!(r.status(), 502);

    let out = flux.cli(&["keys", "suspend", "mover"]);
    assert!(out.status.success());
    let r = when_status(&flux, &key, &fast, 401).await;
    let m = expect_openai_error(r, 401, "invalid_api_key").await;
    assert!(m.contains("suspended"), "{m}");
    let out = flux.cli(&["keys", "resume", "mover"]);
    assert!(out.status.success());
    assert_eq!(when_status(&flux, &key, &fast, 200).await.status(), 200);

    // Revoked is for good; a plan that does not exist is refused; the file is unchanged.
    assert!(flux.cli(&["keys", "revoke", "mover"]).status.success());
    let out = flux.cli(&["keys", "resume", "mover"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked for good"));
    let out = flux.cli(&["keys", "plan", "mover", "--plan", "gold"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown plan 'gold'"));
    let list = String::from_utf8_lossy(&flux.cli(&["keys", "list"]).stdout).into_owned();
    let line = list
        .lines()
        .find(|l| l.contains("\tmover\t"))
        .unwrap()
        .to_string();
    assert!(line.ends_with("\tpayg\tRevoked"), "{line}");
}
