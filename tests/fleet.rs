//! Fleet mode: three real gateways on one real Redis (`redis-server` from the distribution,
//! started by each test on its own loopback port) keep a single node's guarantees.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fluxrouter::fleet::Payer;
use fluxrouter::units::Usd;
use serde_json::{json, Value};

/// A `redis-server` of this test's own, persisting as README recommends (AOF, fsync every
/// second).
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// TLS only, with this CA (PEM) behind the server's certificate.
    tls_ca: Option<Vec<u8>>,
}

impl Redis {
    fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls_ca: None,
        };
        r.spawn();
        r
    }

    /// TLS on its port (no plaintext port), with a certificate for 127.0.0.1 from a CA made
    /// here with openssl.
    fn start_tls() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=flux test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let mut r = Redis {
            port: free_port(),
            tls_ca: Some(std::fs::read(d.join("ca.pem")).unwrap()),
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    fn client(&self) -> redis::Client {
        match &self.tls_ca {
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .unwrap(),
            None => redis::Client::open(self.url()).unwrap(),
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        match self.tls_ca {
            None => command.args(["--port", &port]),
            Some(_) => command.args(["--port", "0", "--tls-port", &port]).args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.pem",
                "--tls-auth-clients",
                "no",
            ]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .current_dir(self.dir.path())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// Stop it gracefully (SIGTERM: it writes out its append-only file first).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), "TERM");
            c.wait().unwrap();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// The `redis:` section of three gateways sharing `redis`, plus more top-level YAML.
fn fleet_config(redis: &Redis, extra: &str) -> String {
    format!(
        "redis: {{ url: \"{}\", key_prefix: \"t:\", command_timeout_ms: 500, probe_interval_ms: 200 }}\n{extra}",
        redis.url()
    )
}

async fn fleet_of(n: usize, config: &str, lanes: &str) -> Vec<Flux> {
    let first = Flux::start_custom(&Custom {
        lanes,
        extra_config: config,
        ..Custom::default()
    })
    .await;
    let mut nodes = vec![first];
    for _ in 1..n {
        let next = Flux::start_custom(&Custom {
            lanes,
            extra_config: config,
            keys_from: Some(&nodes[0]),
            ..Custom::default()
        })
        .await;
        nodes.push(next);
    }
    nodes
}

/// A key on `plan` that every node accepts.
async fn shared_key(nodes: &[Flux], plan: &str, name: &str) -> String {
    let key = nodes[0].new_key(plan, name);
    for n in nodes {
        n.wait_for_key(&key).await;
    }
    key
}

fn cost_of(r: &reqwest::Response) -> Option<Usd> {
    r.headers()
        .get("x-flux-cost-usd")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn usd(v: &Value) -> Usd {
    v.as_str().unwrap().parse().unwrap()
}

/// The key's standing once every settlement has landed (they go to Redis in the background)
/// and no hold is left: its month's spend must then be exactly `billed`.
async fn settled(node: &Flux, key: &str, billed: Usd) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node.get("/v1/usage", key).await;
        if r.status() == 503 && Instant::now() < deadline {
            // Redis just came back and this gateway has not seen it yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.status(), 200);
        let s = r.json::<Value>().await.unwrap()["spend"].clone();
        let done = s["reserved_usd"] == "0.0" && usd(&s["month_usd"]) == billed;
        if done || Instant::now() > deadline {
            assert_eq!(
                usd(&s["month_usd"]),
                billed,
                "every served request billed once: {s}"
            );
            assert_eq!(s["reserved_usd"], "0.0", "no hold left: {s}");
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_gateways_never_settle_past_the_last_five_cents_and_bill_every_request() {
    let redis = Redis::start();
    let nodes = fleet_of(3, &fleet_config(&redis, ""), TEST_LANES).await;
    let key = shared_key(&nodes, "tiny", "tiny").await;
    // About $0.005 of input each at $2 per million: ten fit in $0.05, 300 are sent at once.
    let text = "lorem ipsum dolor sit amet ".repeat(370);
    let body = json!({"model": "flux-pinned-on-chat", "max_tokens": 50,
                      "messages": [{"role": "user", "content": text}]});
    let results = futures_util::future::join_all((0..300).map(|i| {
        let (node, key, body) = (&nodes[i % 3], &key, &body);
        async move {
            let r = node.post("/v1/chat/completions", key, body).await;
            let (status, cost) = (r.status().as_u16(), cost_of(&r));
            (i % 3, status, cost, r.text().await.unwrap())
        }
    }))
    .await;
    let mut served_by = [0; 3];
    let mut billed = Usd::ZERO;
    for (node, status, cost, text) in &results {
        match status {
            200 => {
                served_by[*node] += 1;
                billed = billed.saturating_add(cost.expect("a served request says its cost"));
            }
            402 => assert!(text.contains("free_allowance_exhausted"), "{text}"),
            _ => panic!("only 200 and 402 expected, got {status}: {text}"),
        }
    }
    let served: usize = served_by.iter().sum();
    eprintln!("300 concurrent over 3 gateways on $0.05: served {served_by:?}, billed ${billed}");
    assert!(served >= 5, "{served_by:?}");
    assert!(served < 300, "the allowance must run out");
    // Every node reads the same shared spend: exactly what was billed, never past $0.05.
    for node in &nodes {
        settled(node, &key, billed).await;
    }
    assert!(billed <= "0.05".parse().unwrap(), "settled ${billed}");

    // The fleet's report (admin API and CLI) and the nodes' own ledgers agree with it.
    let r = nodes[1]
        .admin_get("/admin/v1/usage?key=tiny", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(usd(&report["total_usd"]), billed, "{report}");
    assert_eq!(report["data"][0]["requests"], served as u64, "{report}");
    let cli = nodes[2].cli(&["usage", "--key", "tiny", "--json"]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let fleet: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let mut own = Usd::ZERO;
    for (i, node) in nodes.iter().enumerate() {
        // The node's ledger writer commits within its flush interval.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mine = loop {
            let out = node.cli(&["usage", "--node", "--key", "tiny", "--json"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["total"]["requests"] == served_by[i] as u64 || Instant::now() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            mine["total"]["requests"], served_by[i] as u64,
            "node {i}: {mine}"
        );
        own = own.saturating_add(usd(&mine["total"]["cost_usd"]));
    }
    assert_eq!(usd(&fleet["total"]["cost_usd"]), billed, "{fleet}");
    assert_eq!(own, billed, "the nodes' own records add up to the fleet's");
}

#[tokio::test]
async fn a_stream_past_a_hard_cap_is_told_what_the_fleet_billed() {
    let redis = Redis::start();
    let nodes = fleet_of(1, &fleet_config(&redis, ""), TEST_LANES).await;
    let node = &nodes[0];
    // The reservations below count tokens: the vocabulary is loaded first (counting loads it).
    let count = json!({"model": "flux-fast", "messages": [{"role": "user", "content": "hi"}]});
    let r = node
        .post("/anthropic/v1/messages/count_tokens", &node.key, &count)
        .await;
    assert_eq!(r.status(), 200);
    // Held: about $0.032 (the tokenizer's count with its margin); used: about $0.063 (the
    // simulated provider's count); left: $0.05. The bill waits for Redis, which caps it.
    let text = "internationalization ".repeat(6000);
    let cap: Usd = "0.05".parse().unwrap();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "flux-pinned-on-chat", "stream": true, "max_tokens": 100,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": text}]}),
        ),
        (
            "/anthropic/v1/messages",
            json!({"model": "flux-pinned-on-chat", "stream": true, "max_tokens": 100,
                   "messages": [{"role": "user", "content": text}]}),
        ),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let name = format!("capped{i}");
        let key = shared_key(&nodes, "tiny", &name).await;
        let r = node.post(path, &key, body).await;
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        let comment = text
            .lines()
            .find_map(|l| l.strip_prefix(": x-flux-cost-usd="))
            .map(|c| c.split(' ').next().unwrap().to_string());
        let in_usage: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["usage"].get("cost").map(Value::to_string))
            .collect();
        assert_eq!(comment, Some(cap.to_decimal()), "{path}: {text}");
        assert_eq!(in_usage, [cap.to_decimal()], "{path}: {text}");
        // The fleet's ledger (Redis) and the gateway's own record billed the same.
        settled(node, &key, cap).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = node.cli(&["usage", "--node", "--key", &name, "--json"]);
            assert!(out.status.success());
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["total"]["requests"] == 1 {
                assert_eq!(usd(&v["total"]["cost_usd"]), cap, "{v}");
                break;
            }
            assert!(Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_600_per_minute_limit_hit_from_three_gateways_allows_600() {
    let redis = Redis::start();
    let nodes = fleet_of(3, &fleet_config(&redis, ""), TEST_LANES).await;
    let key = shared_key(&nodes, "rpm600", "rpm").await;
    let body = ping("flux-pinned-alpha");
    let started = Instant::now();
    // 1,200 requests, 16 at a time per node.
    let (key, body) = (&key, &body);
    let all = futures_util::future::join_all(nodes.iter().map(|node| async move {
        let mut statuses = Vec::new();
        for _ in 0..25 {
            let batch =
                futures_util::future::join_all((0..16).map(|_| node.chat_with_key(body, key)))
                    .await;
            for r in batch {
                if r.status() == 429 {
                    assert!(r.headers().contains_key("retry-after"));
                }
                statuses.push(r.status().as_u16());
            }
        }
        statuses
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted: Vec<usize> = all
        .iter()
        .map(|s| s.iter().filter(|&&c| c == 200).count())
        .collect();
    for s in &all {
        assert!(s.iter().all(|&c| c == 200 || c == 429), "{s:?}");
    }
    let total: usize = admitted.iter().sum();
    // GCRA: the whole minute's 600 at once, then 10 a second for the rest of the run.
    let allowed = 600.0 + 10.0 * elapsed;
    eprintln!(
        "600/min from 3 gateways: {total} of 1200 admitted ({admitted:?}) in {elapsed:.2} s \
         (the limit allows {allowed:.1})"
    );
    assert!(
        total as f64 >= 600.0 * 0.99,
        "{total}: the burst was not all admitted"
    );
    assert!(
        total as f64 <= allowed * 1.01,
        "{total} admitted: over the limit's {allowed:.1}"
    );
    assert!(admitted.iter().all(|&n| n > 0), "{admitted:?}");
}

#[tokio::test]
async fn redis_stopped_mid_run_refuses_what_needs_a_hold_and_the_fleet_recovers_unaided() {
    let mut redis = Redis::start();
    let nodes = fleet_of(3, &fleet_config(&redis, ""), TEST_LANES).await;
    let capped = shared_key(&nodes, "tiny", "tiny").await;
    let limited = shared_key(&nodes, "rpm2", "rpm2").await;
    let open = nodes[0].key.clone(); // pay as you go: no spend limit to hold against
    let body = ping("flux-pinned-alpha");
    let mut billed_open = Usd::ZERO;
    let mut billed_capped = Usd::ZERO;
    for node in &nodes {
        for (key, billed) in [(&open, &mut billed_open), (&capped, &mut billed_capped)] {
            let r = node.chat_with_key(&body, key).await;
            assert_eq!(r.status(), 200, "{}", node.log());
            *billed = billed.saturating_add(cost_of(&r).unwrap());
        }
    }

    redis.stop();
    let down_at = Instant::now();
    for node in &nodes {
        // Money is never risked: the capped key waits...
        let r = node.chat_with_key(&body, &capped).await;
        assert_eq!(r.status(), 503);
        assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "ledger_unavailable", "{e}");
        // ... the key without a limit is served, its spend kept for Redis ...
        let r = node.chat_with_key(&body, &open).await;
        assert_eq!(r.status(), 200);
        billed_open = billed_open.saturating_add(cost_of(&r).unwrap());
        // ... and rate limits hold at this node's share: 2 a minute over 3 gateways is 1.
        assert_eq!(node.chat_with_key(&body, &limited).await.status(), 200);
        let r = node.chat_with_key(&body, &limited).await;
        assert_eq!(r.status(), 429, "over the node's share");
        let m = node.metrics().await;
        assert!(m.contains("flux_redis_up 0"), "{m}");
    }
    assert!(
        down_at.elapsed() < Duration::from_secs(10),
        "nothing waited on the dead Redis"
    );
    // Started again on the same port and files: every node comes back by itself.
    redis.spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in &nodes {
        loop {
            let r = node.chat_with_key(&body, &capped).await;
            if r.status() == 200 {
                billed_capped = billed_capped.saturating_add(cost_of(&r).unwrap());
                break;
            }
            assert_eq!(r.status(), 503);
            assert!(Instant::now() < deadline, "not back: {}", node.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m = node.metrics().await;
        assert!(m.contains("flux_redis_up 1"), "{m}");
        assert!(
            m.contains("flux_redis_transitions_total{to=\"down\"} 1"),
            "{m}"
        );
        assert!(node.log().contains("redis: up again"), "{}", node.log());
    }
    // What was served while Redis was down reaches it: nothing lost, nothing twice.
    settled(&nodes[1], &open, billed_open).await;
    settled(&nodes[2], &capped, billed_capped).await;
}

#[tokio::test]
async fn a_killed_gateway_s_holds_block_the_fleet_until_they_expire() {
    let redis = Redis::start();
    // The express lane hangs at the provider, so its requests hold their reservations.
    let lanes = TEST_LANES
        .replace(
            "    default: flux-pinned-alpha\n    fallbacks: [flux-pinned-beta]",
            "    default: flux-pinned-hangs",
        )
        .replace(
            "\nmodels:\n",
            "\nmodels:\n  flux-pinned-hangs: { upstream: h, provider: sim_hang, lane: express, context_window: 100000, max_output_tokens: 4096 }\n",
        );
    let config = fleet_config(&redis, "ledger: { hold_ttl_seconds: 5 }");
    let nodes = fleet_of(2, &config, &lanes).await;
    let key = shared_key(&nodes, "tiny", "tiny").await;
    // Worst case 4,096 tokens at $4 per million: about $0.0164 each, three fill $0.05.
    let hanging = json!({"model": "flux-pinned-hangs", "max_tokens": 4096,
                         "messages": [{"role": "user", "content": "wait"}]});
    let probe = json!({"model": "flux-pinned-on-chat", "max_tokens": 500,
                       "messages": [{"role": "user", "content": "ping"}]});
    // A refusal near a cap is recounted with the tokenizer, which loads on first need (seconds
    // in a debug build on a busy machine): load it on the probing node now, so the probe's
    // answer below is not taken after the holds' 5 s lifetime.
    let count = json!({"model": "flux-fast", "messages": [{"role": "user", "content": "hi"}]});
    let r = nodes[0]
        .post("/anthropic/v1/messages/count_tokens", &nodes[0].key, &count)
        .await;
    assert_eq!(r.status(), 200);
    let reserved_at = Instant::now();
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        let (base, key, body) = (nodes[1].base.clone(), key.clone(), hanging.clone());
        in_flight.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while nodes[1].sim.hanging().await < 3 {
        assert!(Instant::now() < deadline, "{}", nodes[1].log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other gateway sees the holds: its request does not fit.
    let r = nodes[0].chat_with_key(&probe, &key).await;
    assert_eq!(r.status(), 402, "holds are shared");
    let mut nodes = nodes;
    let mut killed = nodes.pop().unwrap();
    killed.signal("KILL");
    killed
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
    let r = nodes[0].chat_with_key(&probe, &key).await;
    assert_eq!(
        r.status(),
        402,
        "a dead gateway's holds outlive it until they expire"
    );
    let killed_after = reserved_at.elapsed();
    // Then they expire, and the fleet serves again without anyone's help.
    let deadline = Instant::now() + Duration::from_secs(20);
    let billed: Usd = loop {
        let r = nodes[0].chat_with_key(&probe, &key).await;
        if r.status() == 200 {
            break header(&r, "x-flux-cost-usd").parse().unwrap();
        }
        assert_eq!(r.status(), 402);
        assert!(Instant::now() < deadline, "holds never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let freed_after = reserved_at.elapsed();
    eprintln!(
        "holds of a SIGKILLed gateway: still held {killed_after:?} after reserving, freed after \
         {freed_after:?} (ttl 5 s)"
    );
    // Redis expires holds on its wall clock, in whole milliseconds; this test measures on the
    // monotonic clock: a few milliseconds either way are the clocks, not an early release.
    assert!(
        freed_after >= Duration::from_millis(4_900),
        "freed before expiry"
    );
    // The probe is the account's only spend: billed once, nothing of the dead gateway's
    // holds left (a settlement may reach Redis a moment after its answer on a loaded machine).
    assert_ne!(billed, Usd::ZERO);
    settled(&nodes[0], &key, billed).await;
    for h in in_flight {
        assert!(
            h.await.unwrap().is_err(),
            "the killed gateway's clients saw it go"
        );
    }
}

#[tokio::test]
async fn money_stays_exact_past_what_a_lua_number_holds() {
    // $9,007 is 2^53 pico-dollars, where a Lua number stops counting exactly.
    let redis = Redis::start();
    let config = fluxrouter::config::server::RedisConfig {
        url: Some(redis.url()),
        key_prefix: "x:".into(),
        ..Default::default()
    };
    let fleet = fluxrouter::fleet::Fleet::connect(&config, true).unwrap();
    assert!(fleet.is_up());
    let now = 1_800_000_000;
    let month = fluxrouter::units::Month::of(now);
    let spent = Usd(10_000 * fluxrouter::units::PICOS_PER_USD + 1);
    // Accounts named as a keys file names them (neither is a key of its own account, so no
    // carry-over from before accounts is involved).
    let k = Payer {
        account_id: "acct_k",
        key_id: "key_k1",
        key_limit: None,
    };
    let r = Payer {
        account_id: "acct_r",
        key_id: "key_r1",
        key_limit: None,
    };
    let _: () = redis::cmd("SET")
        .arg(format!("x:{{acct_k}}:m:{month}"))
        .arg(spent.0)
        .query(&mut redis.conn())
        .unwrap();
    // A cap one pico-dollar above the spend: one pico fits, a second does not.
    let cap = Usd(spent.0 + 1);
    let one = Usd(1);
    let held = fleet
        .reserve(k, one, &[cap], None, 60, now, &[])
        .await
        .unwrap();
    assert!(held.is_ok(), "{held:?}");
    let refused = fleet
        .reserve(k, one, &[cap], None, 60, now, &[])
        .await
        .unwrap();
    assert_eq!(
        refused,
        Err(fluxrouter::fleet::Refused::Cap {
            index: 0,
            committed: Usd(spent.0 + 1)
        })
    );
    let [m, _, reserved, key_month] = fleet.standing(k, now).await.unwrap();
    assert_eq!((m, reserved, key_month), (spent, one, Usd::ZERO));
    // Settling bills to the pico-dollar, past 2^53.
    let billed = fleet
        .settle(fluxrouter::fleet::Settlement {
            account_id: "acct_k".into(),
            key_id: "key_k1".into(),
            hold: held.unwrap(),
            held: Some(one),
            at_unix: now,
            lane: "fast".into(),
            model: "m".into(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost: Usd(3),
            hard_cap: Some(cap),
            key_limit: None,
        })
        .await;
    assert_eq!(billed, one, "capped at the one pico-dollar left");
    let [m, _, reserved, key_month] = fleet.standing(k, now).await.unwrap();
    assert_eq!((m, reserved, key_month), (cap, Usd::ZERO, one));

    // A rate limit and a reservation in one script: the second request of a 1-per-minute
    // key is refused by the rate, and takes no hold.
    let rpm1 = [fluxrouter::limits::Charge {
        dimension: fluxrouter::limits::Dimension::Requests,
        per_minute: 1,
        cost: 1,
    }];
    let dollar = Usd(fluxrouter::units::PICOS_PER_USD);
    let first = fleet
        .reserve(r, one, &[dollar], None, 60, now, &rpm1)
        .await
        .unwrap();
    assert!(first.is_ok(), "{first:?}");
    match fleet
        .reserve(r, one, &[dollar], None, 60, now, &rpm1)
        .await
        .unwrap()
    {
        Err(fluxrouter::fleet::Refused::Rate { index: 0, wait }) => {
            assert!(
                wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
                "{wait:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    let [_, _, reserved, _] = fleet.standing(r, now).await.unwrap();
    assert_eq!(reserved, one, "only the admitted request holds");

    // A failed request's hold is released (in the background), and only once.
    let id = first.unwrap();
    fleet.release_in_background(r, &id, one);
    fleet.release_in_background(r, &id, one);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.standing(r, now).await.unwrap()[2] != Usd::ZERO {
        assert!(Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = fleet
        .reserve(r, one, &[dollar], None, 60, now, &[])
        .await
        .unwrap();
    assert!(held.is_ok());
    fleet.release_in_background(r, &id, one); // the old hold again: nothing to release
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fleet.standing(r, now).await.unwrap()[2], one);
}

#[tokio::test]
async fn redis_counts_per_account_a_key_limit_holds_and_a_key_from_before_accounts_keeps_its_month()
{
    let redis = Redis::start();
    let config = fluxrouter::config::server::RedisConfig {
        url: Some(redis.url()),
        key_prefix: "u:".into(),
        ..Default::default()
    };
    let fleet = fluxrouter::fleet::Fleet::connect(&config, true).unwrap();
    assert!(fleet.is_up());
    let now = 1_800_000_000;
    let (month, hour) = (fluxrouter::units::Month::of(now), now / 3600);
    let cents = |n: u64| Usd(n * fluxrouter::units::PICOS_PER_USD / 100);
    let dollar = cents(100);
    let set = |key: String, value: Usd, ttl: u64| {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value.0)
            .arg("EX")
            .arg(ttl)
            .query(&mut redis.conn())
            .unwrap();
    };

    // A fleet from before accounts kept this key's month and hour under its key id; the key
    // is now its own account, acct_ + its id's random part.
    set(format!("u:{{key_old1}}:m:{month}"), cents(3), 86_400);
    set(format!("u:{{key_old1}}:h:{hour}"), cents(1), 3_000);
    let own = Payer {
        account_id: "acct_old1",
        key_id: "key_old1",
        key_limit: None,
    };
    assert!(own.carries_over());
    // The first reserve carries the month over: $0.03 spent, so $0.02 fits a $0.05 cap and
    // one cent more does not.
    let held = fleet
        .reserve(own, cents(2), &[cents(5)], Some(dollar), 60, now, &[])
        .await
        .unwrap()
        .expect("fits");
    let refused = fleet
        .reserve(own, cents(1), &[cents(5)], Some(dollar), 60, now, &[])
        .await
        .unwrap();
    assert_eq!(
        refused,
        Err(fluxrouter::fleet::Refused::Cap {
            index: 0,
            committed: cents(5)
        })
    );
    // And the hour, each with the key's remaining lifetime.
    assert_eq!(
        fleet.standing(own, now).await.unwrap(),
        [cents(3), cents(1), cents(2), cents(3)]
    );
    let ttl = |key: String| -> i64 { redis::cmd("TTL").arg(key).query(&mut redis.conn()).unwrap() };
    let carried = ttl(format!("u:{{acct_old1}}:m:{month}"));
    assert!(carried > 86_000 && carried <= 86_400, "{carried}");
    let carried = ttl(format!("u:{{acct_old1}}:h:{hour}"));
    assert!(carried > 2_900 && carried <= 3_000, "{carried}");
    // Settling adds to the account and to the key; nothing is carried twice.
    let settle = |p: Payer<'_>, hold: Box<str>, held: Option<Usd>, cost: Usd| {
        fluxrouter::fleet::Settlement {
            account_id: p.account_id.into(),
            key_id: p.key_id.into(),
            hold,
            held,
            at_unix: now,
            lane: "fast".into(),
            model: "m".into(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost,
            hard_cap: Some(cents(5)),
            key_limit: p.key_limit,
        }
    };
    let billed = fleet
        .settle(settle(own, held, Some(cents(2)), cents(1)))
        .await;
    assert_eq!(billed, cents(1));
    assert_eq!(
        fleet.standing(own, now).await.unwrap(),
        [cents(4), cents(2), Usd::ZERO, cents(4)]
    );
    // A key of a named account carries nothing over, whatever is under its key id.
    set(format!("u:{{key_moved1}}:m:{month}"), cents(7), 86_400);
    let moved = Payer {
        account_id: "acct_team",
        key_id: "key_moved1",
        key_limit: None,
    };
    assert!(!moved.carries_over());
    assert_eq!(
        fleet.standing(moved, now).await.unwrap(),
        [Usd::ZERO, Usd::ZERO, Usd::ZERO, cents(7)]
    );

    // Two keys of one account, the second with a limit of its own: its holds count against
    // its limit and the account's caps; its sibling is not held back by its limit.
    let free_hand = Payer {
        account_id: "acct_team",
        key_id: "key_a1",
        key_limit: None,
    };
    let limited = Payer {
        account_id: "acct_team",
        key_id: "key_b1",
        key_limit: Some(cents(2)),
    };
    let held = fleet
        .reserve(limited, cents(2), &[dollar], None, 60, now, &[])
        .await
        .unwrap()
        .expect("fits its limit");
    assert_eq!(
        fleet
            .reserve(limited, cents(1), &[dollar], None, 60, now, &[])
            .await
            .unwrap(),
        Err(fluxrouter::fleet::Refused::Key {
            committed: cents(2)
        })
    );
    let sibling = fleet
        .reserve(free_hand, cents(1), &[dollar], None, 60, now, &[])
        .await
        .unwrap()
        .expect("a sibling spends on");
    assert_eq!(fleet.standing(free_hand, now).await.unwrap()[2], cents(3));
    // The provider counted more than the worst case: the key pays at most its limit.
    let billed = fleet
        .settle(settle(limited, held, Some(cents(2)), cents(5)))
        .await;
    assert_eq!(billed, cents(2));
    assert_eq!(
        fleet.standing(limited, now).await.unwrap(),
        [cents(2), cents(2), cents(1), cents(2)]
    );
    assert!(fleet
        .reserve(limited, Usd(1), &[dollar], None, 60, now, &[])
        .await
        .unwrap()
        .is_err());
    // A release frees the account's hold (and a limited key's).
    fleet.release_in_background(free_hand, &sibling, cents(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.standing(free_hand, now).await.unwrap()[2] != Usd::ZERO {
        assert!(Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hold = fleet
        .reserve(
            Payer {
                key_limit: Some(cents(3)),
                ..limited
            },
            cents(1),
            &[dollar],
            None,
            60,
            now,
            &[],
        )
        .await
        .unwrap()
        .expect("a raised limit");
    let raised = Payer {
        key_limit: Some(cents(3)),
        ..limited
    };
    fleet.release_in_background(raised, &hold, cents(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let key_reserved: Option<String> = redis::cmd("GET")
            .arg("u:{key_b1}:reserved")
            .query(&mut redis.conn())
            .unwrap();
        if key_reserved.is_none() && fleet.standing(raised, now).await.unwrap()[2] == Usd::ZERO {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never released: {key_reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A key of `account` that every node accepts.
async fn key_of(nodes: &[Flux], account: &str, name: &str, limit: Option<&str>) -> String {
    let mut args = vec!["keys", "new", "--account", account, "--name", name];
    if let Some(limit) = limit {
        args.extend(["--monthly-limit", limit]);
    }
    let out = nodes[0].cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    for n in nodes {
        n.wait_for_key(&key).await;
    }
    key
}

async fn usage(node: &Flux, key: &str) -> Value {
    let r = node.get("/v1/usage", key).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn two_gateways_hold_three_keys_of_one_account_to_its_one_allowance() {
    let redis = Redis::start();
    let nodes = fleet_of(2, &fleet_config(&redis, ""), TEST_LANES).await;
    // "tiny": a free allowance of $0.05 a month, for the account.
    let account = new_file_account(&nodes[0], "team", "tiny");
    let mut keys = Vec::new();
    for name in ["ci", "laptop", "server"] {
        keys.push(key_of(&nodes, "team", name, None).await);
    }
    // About 3,100 input tokens, $0.003 at the express lane's $1 per million: about 15 fit,
    // 150 are sent at once over three keys and two gateways.
    let text = "internationalization ".repeat(600);
    let body = json!({"model": "flux-fast", "messages": [{"role": "user", "content": text}]});
    let results = futures_util::future::join_all((0..150).map(|i| {
        let (node, key, body) = (&nodes[i % 2], &keys[i % 3], &body);
        async move {
            let r = node.chat_with_key(body, key).await;
            let (status, cost) = (r.status().as_u16(), cost_of(&r));
            (status, cost, r.text().await.unwrap())
        }
    }))
    .await;
    let (mut served, mut billed) = (0, Usd::ZERO);
    for (status, cost, text) in &results {
        match status {
            200 => {
                served += 1;
                billed = billed.saturating_add(cost.expect("a served request says its cost"));
            }
            402 => assert!(text.contains("free_allowance_exhausted"), "{text}"),
            _ => panic!("only 200 and 402 expected, got {status}: {text}"),
        }
    }
    eprintln!(
        "150 concurrent, 3 keys of one account, 2 gateways: served {served}, billed ${billed}"
    );
    assert!(served >= 5, "{served}");
    // Per key (three allowances) about 45 would fit: the account's one allowance stops it.
    assert!(served <= 20, "{served} served: more than one allowance");
    assert!(billed <= "0.05".parse().unwrap(), "settled ${billed}");
    // Every key on every gateway reads the account's one standing; the shares add up to it.
    for node in &nodes {
        for key in &keys {
            settled(node, key, billed).await;
        }
    }
    let mut shares = Usd::ZERO;
    for key in &keys {
        let v = usage(&nodes[1], key).await;
        assert_eq!(v["account"]["id"], account.as_str(), "{v}");
        shares = shares.saturating_add(usd(&v["key"]["month_usd"]));
    }
    assert_eq!(shares, billed);
    if billed.saturating_add("0.0001".parse().unwrap()) > "0.05".parse().unwrap() {
        for node in &nodes {
            let r = node.chat_with_key(&ping("flux-fast"), &keys[2]).await;
            expect_openai_error(r, 402, "free_allowance_exhausted").await;
        }
    }
}

#[tokio::test]
async fn a_key_over_its_own_limit_is_refused_by_every_gateway_while_its_sibling_goes_on() {
    let redis = Redis::start();
    let nodes = fleet_of(2, &fleet_config(&redis, ""), TEST_LANES).await;
    new_file_account(&nodes[0], "shop", "payg");
    let limited = key_of(&nodes, "shop", "intern", Some("0.001")).await;
    let free_hand = key_of(&nodes, "shop", "lead", None).await;

    // Each costs a few hundred-thousandths of a dollar and holds at most $0.0003 while it
    // runs: the key's limit stops it after a few dozen, sent through both gateways in turn.
    let body = json!({"model": "flux-fast", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "ping"}]});
    let (mut statuses, mut limited_billed) = (vec![], Usd::ZERO);
    for i in 0..100 {
        let r = nodes[i % 2].chat_with_key(&body, &limited).await;
        let status = r.status().as_u16();
        statuses.push(status);
        if status == 402 {
            let message = expect_openai_error(r, 402, "key_spend_limit_reached").await;
            assert!(message.contains("other keys"), "{message}");
            break;
        }
        assert_eq!(status, 200);
        limited_billed = limited_billed.saturating_add(cost_of(&r).unwrap());
    }
    assert!(statuses.len() > 3, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&402), "{statuses:?}");
    assert!(
        limited_billed <= "0.001".parse().unwrap(),
        "${limited_billed}"
    );
    // Through either gateway: the key stays refused, its sibling is served.
    let mut sibling_billed = Usd::ZERO;
    for node in &nodes {
        let r = node.chat_with_key(&body, &limited).await;
        expect_openai_error(r, 402, "key_spend_limit_reached").await;
        let r = node.chat_with_key(&body, &free_hand).await;
        assert_eq!(r.status(), 200);
        sibling_billed = sibling_billed.saturating_add(cost_of(&r).unwrap());
    }
    let before = limited_billed.saturating_add(sibling_billed);
    settled(&nodes[1], &limited, before).await;
    // What gateway A serves the sibling shows in the account's spend through gateway B.
    let mut on_a = Usd::ZERO;
    for _ in 0..3 {
        let r = nodes[0].chat_with_key(&body, &free_hand).await;
        assert_eq!(r.status(), 200);
        on_a = on_a.saturating_add(cost_of(&r).unwrap());
    }
    assert!(on_a > Usd::ZERO);
    settled(&nodes[1], &limited, before.saturating_add(on_a)).await;
    let v = usage(&nodes[1], &free_hand).await;
    assert_eq!(
        usd(&v["key"]["month_usd"]),
        sibling_billed.saturating_add(on_a),
        "{v}"
    );
    let v = usage(&nodes[1], &limited).await;
    assert_eq!(usd(&v["key"]["month_usd"]), limited_billed, "{v}");
    assert_eq!(v["key"]["monthly_limit_usd"], "0.001", "{v}");
}

#[tokio::test]
async fn a_hung_redis_costs_a_request_at_most_the_command_timeout() {
    let redis = Redis::start();
    let nodes = fleet_of(2, &fleet_config(&redis, ""), TEST_LANES).await;
    let capped = shared_key(&nodes, "tiny", "tiny").await;
    let body = ping("flux-pinned-alpha");
    assert_eq!(nodes[0].chat_with_key(&body, &capped).await.status(), 200);
    // SIGSTOP: the connections stay open and nothing answers, the worst kind of slow.
    let pid = redis.child.as_ref().unwrap().id();
    unsafe_kill(pid, "STOP");
    for node in &nodes {
        let started = Instant::now();
        let r = node.chat_with_key(&body, &capped).await;
        let waited = started.elapsed();
        assert_eq!(r.status(), 503, "{}", node.log());
        eprintln!("hung Redis: 503 ledger_unavailable after {waited:?} (command timeout 500 ms)");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        // Once seen down, nothing waits on it.
        let started = Instant::now();
        assert_eq!(node.chat_with_key(&body, &capped).await.status(), 503);
        assert_eq!(node.chat_with_key(&body, &node.key).await.status(), 200);
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }
    unsafe_kill(pid, "CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in &nodes {
        while node.chat_with_key(&body, &capped).await.status() != 200 {
            assert!(Instant::now() < deadline, "not back: {}", node.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(node.log().contains("redis: down ("), "{}", node.log());
    }
}

#[tokio::test]
async fn a_revoked_key_stops_on_every_gateway_and_an_upgrade_loses_no_spend() {
    let redis = Redis::start();
    let nodes = fleet_of(3, &fleet_config(&redis, ""), TEST_LANES).await;
    let key = shared_key(&nodes, "free", "free").await;
    let doomed = shared_key(&nodes, "payg", "doomed").await;

    // Revoked in the shared keys file: every gateway refuses it within a moment.
    let revoked_at = Instant::now();
    let out = nodes[0].cli(&["keys", "revoke", "doomed"]);
    assert!(out.status.success());
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.get("/v1/models", &doomed).await.status() != 401 {
            assert!(Instant::now() < deadline, "still accepted: {}", node.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "revoked key refused by all 3 gateways {:?} after the file changed",
        revoked_at.elapsed()
    );

    // Node 0 is upgraded (a new binary takes its sockets) while clients keep sending to
    // every node: each request is billed once in the shared ledger, none fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let url = format!("{}/v1/chat/completions", nodes[w % 3].base);
        let (key, stop) = (key.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut billed, mut failures) = (Usd::ZERO, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&ping("flux-fast"))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        billed = billed.saturating_add(cost_of(&r).unwrap());
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (billed, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut nodes = nodes;
    let mut new = nodes[0].spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes[0].signal("QUIT");
    let exit = nodes[0].wait_exit(Duration::from_secs(30)).await;
    assert!(exit.expect("the old process exits").success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut billed, mut failures) = (Usd::ZERO, Vec::new());
    for w in workers {
        let (b, f) = w.await.unwrap();
        billed = billed.saturating_add(b);
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{failures:?}");
    settled(&nodes[1], &key, billed).await;
    let _ = new.kill();
    let _ = new.wait();
    nodes.remove(0);
}

#[tokio::test]
async fn the_other_down_policies_serve_money_and_refuse_rates() {
    let mut redis = Redis::start();
    let config = format!(
        "redis: {{ url: \"{}\", command_timeout_ms: 500, probe_interval_ms: 200, \
         when_down: {{ money: serve, rate_limits: refuse, retry_after_seconds: 3 }} }}\n",
        redis.url()
    );
    let nodes = fleet_of(2, &config, TEST_LANES).await;
    let capped = shared_key(&nodes, "tiny", "tiny").await;
    let limited = shared_key(&nodes, "rpm600", "rpm").await;
    let body = ping("flux-pinned-alpha");
    let mut billed = Usd::ZERO;
    let r = nodes[0].chat_with_key(&body, &capped).await;
    assert_eq!(r.status(), 200);
    billed = billed.saturating_add(cost_of(&r).unwrap());

    redis.stop();
    for node in &nodes {
        // `serve`: the capped key is served against the gateway's own record...
        let r = node.chat_with_key(&body, &capped).await;
        assert_eq!(r.status(), 200, "{}", node.log());
        billed = billed.saturating_add(cost_of(&r).unwrap());
        // ... and `refuse`: a rate-limited key waits for Redis.
        let r = node.chat_with_key(&body, &limited).await;
        assert_eq!(r.status(), 503);
        assert_eq!(header(&r, "retry-after"), "3");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "ledger_unavailable", "{e}");
    }
    redis.spawn();
    // What the gateways served on their own reaches the fleet's ledger once Redis is back.
    settled(&nodes[1], &capped, billed).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while nodes[1].chat_with_key(&body, &limited).await.status() != 200 {
        assert!(Instant::now() < deadline, "{}", nodes[1].log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn served_while_redis_is_down_an_account_s_keys_are_billed_to_the_account_when_it_returns() {
    let mut redis = Redis::start();
    let config = format!(
        "redis: {{ url: \"{}\", command_timeout_ms: 500, probe_interval_ms: 200, \
         when_down: {{ money: serve }} }}\n",
        redis.url()
    );
    let nodes = fleet_of(2, &config, TEST_LANES).await;
    new_file_account(&nodes[0], "team", "tiny");
    let first = key_of(&nodes, "team", "first", None).await;
    let second = key_of(&nodes, "team", "second", Some("0.04")).await;
    let body = ping("flux-pinned-alpha");
    let mut billed = Usd::ZERO;
    let r = nodes[0].chat_with_key(&body, &first).await;
    assert_eq!(r.status(), 200);
    billed = billed.saturating_add(cost_of(&r).unwrap());

    redis.stop();
    // `serve`: each gateway checks the account (and the key's limit) against its own record,
    // and queues the settlements, which name the account, for Redis.
    let mut second_billed = Usd::ZERO;
    for node in &nodes {
        let r = node.chat_with_key(&body, &second).await;
        assert_eq!(r.status(), 200, "{}", node.log());
        let cost = cost_of(&r).unwrap();
        billed = billed.saturating_add(cost);
        second_billed = second_billed.saturating_add(cost);
    }
    redis.spawn();
    // Replayed to the account: either key reads the account's whole spend.
    settled(&nodes[1], &first, billed).await;
    settled(&nodes[0], &second, billed).await;
    let v = usage(&nodes[1], &second).await;
    assert_eq!(usd(&v["key"]["month_usd"]), second_billed, "{v}");
}

/// Kills a background gateway when the test ends, however it ends.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

#[tokio::test]
async fn a_gateway_started_in_the_background_keeps_its_redis_and_ledger_threads() {
    let redis = Redis::start();
    let mut nodes = fleet_of(1, &fleet_config(&redis, ""), TEST_LANES).await;
    let key = shared_key(&nodes, "tiny", "tiny").await;
    let node = &mut nodes[0];
    node.signal("KILL");
    node.wait_exit(Duration::from_secs(5))
        .await
        .expect("stopped");
    let pid_file = node.dir.path().join("pid");
    let _ = std::fs::remove_file(&pid_file);
    let log = std::fs::File::create(node.dir.path().join("daemon.log")).unwrap();
    // `-d`: the command returns once the gateway runs in the background.
    let status = Command::new(bin())
        .arg("--config")
        .arg(&node.config)
        .arg("-d")
        .env("FLUX_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .env("FLUX_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLUX_TEST_METRICS_TOKEN", METRICS_TOKEN)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    assert!(status.success());
    // The background process writes its pid file itself, a moment after the command returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: u32 = loop {
        match std::fs::read_to_string(&pid_file).map(|t| t.trim().parse()) {
            Ok(Ok(pid)) => break pid,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("no pid file: {other:?}"),
        }
    };
    let _daemon = Daemon(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = (node.client.get(format!("{}/v1/models", node.base)))
            .bearer_auth(&key)
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background gateway never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A capped key needs Redis (the runtime thread) and the ledger (its writer thread).
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        node.chat_with_key(&ping("flux-pinned-alpha"), &key),
    )
    .await
    .expect("answered, not hung on a thread the fork lost");
    assert_eq!(r.status(), 200);
    let billed = cost_of(&r).unwrap();
    settled(node, &key, billed).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = node.cli(&["usage", "--node", "--key", "tiny", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["total"]["requests"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger writer never wrote: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_over_tls_is_verified_against_the_configured_ca() {
    let redis = Redis::start_tls();
    let ca = redis.tls_ca.clone().unwrap();
    let config = format!(
        "redis: {{ url: \"{}\", tls_ca_file: ca.pem, command_timeout_ms: 1000 }}\n",
        redis.url()
    );
    let files: &[(&str, &[u8])] = &[("ca.pem", &ca)];
    let node = Flux::start_custom(&Custom {
        extra_config: &config,
        files,
        ..Custom::default()
    })
    .await;
    let key = node.new_key("tiny", "tiny");
    node.wait_for_key(&key).await;
    let r = node.chat_with_key(&ping("flux-pinned-alpha"), &key).await;
    assert_eq!(r.status(), 200, "{}", node.log());
    let billed = cost_of(&r).unwrap();
    settled(&node, &key, billed).await;
    // The spend is in this Redis, over TLS.
    let month = fluxrouter::units::Month::of(fluxrouter::units::clock::unix_now());
    let id = node.cli(&["keys", "list"]);
    let id = String::from_utf8_lossy(&id.stdout)
        .lines()
        .find(|l| l.contains("\ttiny\t"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    let spent: u64 = redis::cmd("GET")
        .arg(format!("flux:{{{id}}}:m:{month}"))
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(Usd(spent), billed);

    // Without the CA (the system's roots), the certificate is refused: Redis is down for
    // that gateway, and the capped key waits.
    let config = format!("redis: {{ url: \"{}\" }}\n", redis.url());
    let untrusting = Flux::start_custom(&Custom {
        extra_config: &config,
        ..Custom::default()
    })
    .await;
    let key = untrusting.new_key("tiny", "tiny");
    untrusting.wait_for_key(&key).await;
    let r = untrusting
        .chat_with_key(&ping("flux-pinned-alpha"), &key)
        .await;
    assert_eq!(r.status(), 503);
    assert!(
        untrusting.log().contains("redis: unreachable at start"),
        "{}",
        untrusting.log()
    );
}

/// Wait until `node` answers `key` with `status`; how long that took (at most a second).
async fn within_a_second(node: &Flux, key: &str, status: u16, what: &str) -> Duration {
    until_status_within(node, key, status, Duration::from_secs(1), what).await
}

#[tokio::test]
async fn the_key_store_is_the_fleet_s_a_change_through_any_gateway_holds_on_all_within_a_second() {
    use reqwest::Method;
    let mut redis = Redis::start();
    let config = fleet_config(&redis, "");
    let nodes = fleet_of(2, &config, TEST_LANES).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // An account and a key made through A's admin API serve on B.
    let (status, account) = admin_call(
        a,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "shop", "plan": "payg"})),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_str().unwrap().to_string();
    let keys = format!("/admin/v1/accounts/{id}/keys");
    let (status, web) = admin_call(a, Method::POST, &keys, Some(json!({"name": "web"}))).await;
    assert_eq!(status, 201, "{web}");
    let web_secret = web["key"].as_str().unwrap().to_string();
    let took = within_a_second(b, &web_secret, 200, "a key made through A, on B").await;
    eprintln!("a key made through gateway A served by B after {took:?}");
    let (status, app) = admin_call(a, Method::POST, &keys, Some(json!({"name": "app"}))).await;
    assert_eq!(status, 201, "{app}");
    let app_secret = app["key"].as_str().unwrap().to_string();
    within_a_second(b, &app_secret, 200, "a second key on B").await;

    // Revoked through B: refused on A.
    let revoke = format!("/admin/v1/keys/{}/revoke", web["id"].as_str().unwrap());
    let (status, v) = admin_call(b, Method::POST, &revoke, None).await;
    assert_eq!(status, 200, "{v}");
    let took = within_a_second(a, &web_secret, 401, "a key revoked through B, on A").await;
    eprintln!("a key revoked through gateway B refused by A after {took:?}");

    // Put on hold through A: 402 on B.
    let (status, v) = admin_call(
        a,
        Method::PATCH,
        &format!("/admin/v1/accounts/{id}"),
        Some(json!({"on_hold": true})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let took = within_a_second(b, &app_secret, 402, "an account held through A, on B").await;
    eprintln!("an account held through gateway A refused by B after {took:?}");

    // A key of another account, made through B's admin API, then a gateway started after all
    // of it: it knows every write from its first request.
    let (status, other) = admin_call(
        b,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "lab", "plan": "payg"})),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    let (status, lab) = admin_call(
        b,
        Method::POST,
        &format!("/admin/v1/accounts/{}/keys", other["id"].as_str().unwrap()),
        Some(json!({"name": "lab"})),
    )
    .await;
    assert_eq!(status, 201, "{lab}");
    let lab_secret = lab["key"].as_str().unwrap().to_string();
    let c = Flux::start_custom(&Custom {
        lanes: TEST_LANES,
        extra_config: &config,
        keys_from: Some(a),
        ..Custom::default()
    })
    .await;
    assert_eq!(chat_status(&c, &lab_secret).await, 200, "{}", c.log());
    assert_eq!(chat_status(&c, &web_secret).await, 401, "revoked");
    assert_eq!(chat_status(&c, &app_secret).await, 402, "on hold");
    let (_, listed) = admin_call(&c, Method::GET, "/admin/v1/accounts", None).await;
    assert!(listed.to_string().contains("\"lab\""), "{listed}");

    // The CLI on B's host writes through Redis too: A serves its key.
    let cli = |args: &[&str]| {
        let out = b.cli(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    cli(&["accounts", "new", "--name", "ops", "--plan", "payg"]);
    let ops = cli(&["accounts", "key", "--account", "ops", "--name", "ci"]);
    let took = within_a_second(a, &ops, 200, "a key made with the CLI on B's host, on A").await;
    eprintln!("a key made with the CLI beside gateway B served by A after {took:?}");

    // Rotated with the CLI beside B, with a second's grace: A serves the new key at once,
    // and once the grace is over refuses the old one as revoked, and lists it so.
    let shown = admin_account(a, "ops").await;
    let ops_id = shown["keys"][0]["id"].as_str().unwrap().to_string();
    let rotated = cli(&["accounts", "rotate", &ops_id, "--grace-seconds", "1"]);
    within_a_second(a, &rotated, 200, "a rotated key's successor, on A").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while chat_status(a, &ops).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the rotated key still works on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = a.chat_with_key(&ping("flux-fast"), &ops).await;
    let message = expect_openai_error(r, 401, "invalid_api_key").await;
    assert!(message.contains("revoked"), "{message}");
    let shown = admin_account(a, "ops").await;
    assert_eq!(
        with_id(&shown["keys"], &ops_id)["status"],
        "revoked",
        "{shown}"
    );

    // Redis down: what is loaded keeps authenticating; a write is refused with a 503.
    redis.stop();
    let (status, v) = admin_call(a, Method::POST, &keys, Some(json!({"name": "late"}))).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "ledger_unavailable", "{v}");
    let out = b.cli(&["accounts", "new", "--name", "late", "--plan", "payg"]);
    assert!(!out.status.success(), "the CLI refuses too");
    let r = c.get("/v1/models", &lab_secret).await;
    assert_eq!(r.status(), 200);
}

/// Start-up with a large fleet key store: `cargo test --test fleet --release --
/// --ignored a_gateway_loads_100k --nocapture` prints how long the load took.
#[tokio::test]
#[ignore]
async fn a_gateway_loads_100k_keys_of_the_fleet_s_store_at_start() {
    let keys_n: usize = std::env::var("FLUX_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    // 1,000 accounts of 100 keys each.
    let mut pipe = redis::pipe();
    for a in 0..1000 {
        let account = json!({"id": format!("acct_{a:08}"), "name": format!("a{a}"),
            "plan": "payg", "payment_method": false, "on_hold": false, "ceiling": null,
            "models": null, "created_at": 1});
        pipe.cmd("HSET")
            .arg("t:{accounts}:rows:a")
            .arg(format!("acct_{a:08}"))
            .arg(account.to_string())
            .ignore();
    }
    pipe.exec(&mut conn).unwrap();
    let (secret, digest) = fluxrouter::accounts::new_secret();
    for chunk in 0..keys_n / 1000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let sha = if i == 0 {
                digest
            } else {
                fluxrouter::accounts::digest_of(&format!("k{i}"))
            };
            let row = json!({"id": format!("key_{i:012}"), "account_id": format!("acct_{:08}", i % 1000),
                "name": format!("k{i}"), "sha256": hex::encode(sha), "kind": "inference",
                "status": "active", "expires_at": null, "created_at": 1, "monthly_limit": null,
                "models": null});
            pipe.cmd("HSET")
                .arg("t:{accounts}:rows:k")
                .arg(format!("key_{i:012}"))
                .arg(row.to_string())
                .ignore();
        }
        pipe.exec(&mut conn).unwrap();
    }
    let started = Instant::now();
    let mut node = Flux::start_custom(&Custom {
        lanes: TEST_LANES,
        extra_config: &fleet_config(&redis, ""),
        ..Custom::default()
    })
    .await;
    eprintln!("gateway ready {:?} after its start", started.elapsed());
    let line = node.log_containing("loaded the fleet's key store").await;
    eprintln!(
        "{}",
        line.lines()
            .find(|l| l.contains("loaded the fleet"))
            .unwrap_or("")
    );
    assert_eq!(chat_status(&node, &secret).await, 200);
    // A restart resumes from the local copy.
    let started = Instant::now();
    node.kill9_and_restart().await;
    eprintln!(
        "restarted gateway ready {:?} after its start",
        started.elapsed()
    );
    let line = node.log_containing("resumed the fleet's key store").await;
    eprintln!(
        "{}",
        line.lines()
            .find(|l| l.contains("resumed the fleet"))
            .unwrap_or("")
    );
    assert_eq!(chat_status(&node, &secret).await, 200);
}

#[tokio::test]
async fn turning_fleet_mode_on_copies_the_first_gateway_s_key_store_into_redis() {
    use reqwest::Method;
    // A single gateway's key store, with an account and a key made through its admin API.
    let mut single = Flux::start().await;
    let (status, account) = admin_call(
        &single,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "old", "plan": "payg"})),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let (status, key) = admin_call(
        &single,
        Method::POST,
        &format!(
            "/admin/v1/accounts/{}/keys",
            account["id"].as_str().unwrap()
        ),
        Some(json!({"name": "old"})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["key"].as_str().unwrap().to_string();
    let store = single.dir.path().join("accounts.sqlite");
    assert!(store.exists(), "{}", store.display());
    // Stopped (its folder, with the store, stays until `single` is dropped).
    single.signal("TERM");
    single.wait_exit(Duration::from_secs(30)).await;

    // The fleet's first gateway runs on that store: the other, on a store of its own, serves
    // the key too.
    let redis = Redis::start();
    let first = Flux::start_custom(&Custom {
        lanes: TEST_LANES,
        extra_config: &fleet_config(&redis, &format!("key_store: \"{}\"", store.display())),
        ..Custom::default()
    })
    .await;
    let second = Flux::start_custom(&Custom {
        lanes: TEST_LANES,
        extra_config: &fleet_config(&redis, ""),
        keys_from: Some(&first),
        ..Custom::default()
    })
    .await;
    assert_eq!(chat_status(&first, &secret).await, 200, "{}", first.log());
    assert_eq!(chat_status(&second, &secret).await, 200, "{}", second.log());
}

#[tokio::test]
async fn a_restarted_gateway_resumes_from_its_copy_and_drops_what_the_fleet_lacks() {
    use fluxrouter::accounts::{Directory, KeyKind, KeyLimits, NewAccount};
    use reqwest::Method;
    let redis = Redis::start();
    let config = fleet_config(&redis, "");
    let mut nodes = fleet_of(2, &config, TEST_LANES).await;
    let key_of = |v: &Value| v["key"].as_str().unwrap().to_string();
    let (status, account) = admin_call(
        &nodes[0],
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "shop", "plan": "payg"})),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let keys = format!(
        "/admin/v1/accounts/{}/keys",
        account["id"].as_str().unwrap()
    );
    let (_, web) = admin_call(&nodes[0], Method::POST, &keys, Some(json!({"name": "web"}))).await;
    let (_, app) = admin_call(&nodes[0], Method::POST, &keys, Some(json!({"name": "app"}))).await;
    within_a_second(&nodes[1], &key_of(&web), 200, "web on B").await;
    within_a_second(&nodes[1], &key_of(&app), 200, "app on B").await;

    // B is killed; through A one key is revoked and another made meanwhile.
    unsafe_kill(nodes[1].pid(), "KILL");
    let revoke = format!("/admin/v1/keys/{}/revoke", web["id"].as_str().unwrap());
    assert_eq!(
        admin_call(&nodes[0], Method::POST, &revoke, None).await.0,
        200
    );
    let (status, late) = admin_call(
        &nodes[0],
        Method::POST,
        &keys,
        Some(json!({"name": "late"})),
    )
    .await;
    assert_eq!(status, 201, "{late}");
    // And B's copy holds rows the fleet's store lacks, as a crash between a local write and
    // its publication would leave them.
    let store = fluxrouter::config::ServerConfig::load(&nodes[1].config)
        .unwrap()
        .key_store_path();
    let local = Directory::open(&store).unwrap();
    let ghost_account = local
        .create_account(NewAccount {
            name: "ghost".into(),
            plan: "payg".into(),
            ..NewAccount::default()
        })
        .unwrap();
    let (ghost, _) = local
        .create_key(
            &ghost_account.id,
            "ghost",
            KeyKind::Inference,
            KeyLimits::default(),
        )
        .unwrap();
    drop(local);

    // B resumes from its copy (no full load) and knows all of it from its first request.
    nodes[1].kill9_and_restart().await;
    let b = &nodes[1];
    let log = b.log_containing("resumed the fleet's key store").await;
    assert_eq!(
        log.matches("loaded the fleet's key store").count(),
        1,
        "only B's first start loads every row: {log}"
    );
    assert_eq!(chat_status(b, &key_of(&late)).await, 200, "{}", b.log());
    assert_eq!(
        chat_status(b, &key_of(&web)).await,
        401,
        "revoked while B was down"
    );
    assert_eq!(chat_status(b, &key_of(&app)).await, 200);
    assert_eq!(
        chat_status(b, &ghost).await,
        401,
        "a row the fleet lacks is dropped"
    );
    let (_, listed) = admin_call(b, Method::GET, "/admin/v1/accounts", None).await;
    assert!(!listed.to_string().contains("ghost"), "{listed}");

    // The fleet's stream trimmed past B's mark while B is down: B loads every row again.
    unsafe_kill(nodes[1].pid(), "KILL");
    let (_, later) = admin_call(
        &nodes[0],
        Method::POST,
        &keys,
        Some(json!({"name": "later"})),
    )
    .await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg("t:{accounts}:feed")
        .arg("MAXLEN")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    nodes[1].kill9_and_restart().await;
    let b = &nodes[1];
    let log = b.log();
    assert_eq!(
        log.matches("loaded the fleet's key store").count(),
        2,
        "a stream that lost changes after the mark is not trusted: {log}"
    );
    assert_eq!(chat_status(b, &key_of(&later)).await, 200);
    assert_eq!(chat_status(b, &key_of(&web)).await, 401);
}
