//! Integration harness: the real `fluxrouter` binary on a loopback port, in front of the
//! built-in simulated provider, with its own config, lanes and keys in a temp folder.
#![allow(dead_code)]

pub mod accounts;
pub mod browser;
pub mod tls;

// Not every suite uses the accounts helpers.
#[allow(unused_imports)]
pub use accounts::*;
#[allow(unused_imports)]
pub use tls::Ca;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fluxrouter");

/// The gateway binary the tests run: `FLUX_TEST_BIN` when set (a copy taken right after
/// `cargo build`, when several worktrees share one target dir and overwrite its binary),
/// else cargo's.
pub fn bin() -> String {
    std::env::var("FLUX_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}
/// The provider key the gateway reads from its environment; must reach the provider only.
pub const PROVIDER_KEY: &str = "sim-provider-key-0123456789";

/// Lanes for the tests: healthy, failing, unreachable, cut and slow targets.
pub const TEST_LANES: &str = r#"
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 4.0 }
    default: flux-pinned-alpha
    fallbacks: [flux-pinned-beta]
  daily:
    alias: flux-standard
    title: Daily Driver
    price: { input_per_mtok: 2.0, output_per_mtok: 8.0 }
    default: flux-pinned-fails
    fallbacks: [flux-pinned-unreachable, flux-pinned-gamma]
  deep:
    alias: flux-reasoning
    title: Deep Thought
    premium: true
    price: { input_per_mtok: 4.0, output_per_mtok: 16.0 }
    default: flux-pinned-deep-dead
    fallbacks: [flux-pinned-deep-500]
  image:
    alias: flux-image
    title: Image Lane
    price: { input_per_mtok: 2.5, output_per_mtok: 10.0 }
    default: flux-pinned-vision
  cut:
    alias: flux-cut
    title: Cut Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-cutter
  slow:
    alias: flux-slow
    title: Slow Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-slowpoke
  formats:
    alias: flux-formats
    title: One model per provider format
    price: { input_per_mtok: 2.00, cached_input_per_mtok: 0.50, output_per_mtok: 8.00 }
    default: flux-pinned-on-chat
    fallbacks: [flux-pinned-on-responses, flux-pinned-on-anthropic]
  throttle:
    alias: flux-throttle
    title: A provider answering 429, with no fallback
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-throttled
models:
  flux-pinned-on-chat: { upstream: chat-upstream, provider: sim, lane: formats, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
  flux-pinned-on-responses: { upstream: responses-upstream, provider: sim_responses, lane: formats, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, vision, streaming, reasoning] }
  flux-pinned-on-anthropic: { upstream: anthropic-upstream, provider: sim_anthropic, lane: formats, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
  flux-pinned-cut-chat: { upstream: cut-chat, provider: sim_cut, lane: formats, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-cut-responses: { upstream: cut-responses, provider: sim_cut_responses, lane: formats, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-cut-anthropic: { upstream: cut-anthropic, provider: sim_cut_anthropic, lane: formats, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-alpha: { upstream: alpha-upstream, provider: sim, lane: express, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
  flux-pinned-beta: { upstream: beta-upstream, provider: sim, lane: express, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-fails: { upstream: fails-upstream, provider: sim_500, lane: daily, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-unreachable: { upstream: unreachable-upstream, provider: dead, lane: daily, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-gamma: { upstream: gamma-upstream, provider: sim, lane: daily, context_window: 100000, max_output_tokens: 4096, capabilities: [tools, streaming] }
  flux-pinned-deep-dead: { upstream: deep-dead-upstream, provider: dead, lane: deep, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-deep-500: { upstream: deep-500-upstream, provider: sim_500, lane: deep, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-vision: { upstream: vision-upstream, provider: sim, lane: image, context_window: 100000, max_output_tokens: 4096, capabilities: [vision, streaming] }
  flux-pinned-cutter: { upstream: cutter-upstream, provider: sim_cut, lane: cut, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-slowpoke: { upstream: slowpoke-upstream, provider: sim_slow, lane: slow, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
  flux-pinned-throttled: { upstream: throttled-upstream, provider: sim_429, lane: throttle, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }
auto:
  reasoning_cues: ["step by step", "prove"]
  code_markers: ["```"]
  rules:
    - { name: images, when: { images: true }, lane: image }
    - { name: reasoning, when: { reasoning: true }, lane: deep }
    - { name: tools, when: { tools: true }, lane: daily }
    - { name: default, lane: express }
"#;

/// The admin token the test gateways read from their environment.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// The metrics token (GET /metrics on the admin listener).
pub const METRICS_TOKEN: &str = "metrics-token-for-tests-9876543210";

fn spawn_gateway(config: &std::path::Path, log: std::fs::File) -> Child {
    Command::new(bin())
        .arg("--config")
        .arg(config)
        .env("FLUX_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .env("FLUX_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLUX_TEST_METRICS_TOKEN", METRICS_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The simulated provider, in this process.
pub struct Sim {
    pub addr: SocketAddr,
}

impl Sim {
    pub fn start() -> Sim {
        let addr = fluxrouter::simulate::spawn_background("127.0.0.1:0".parse().unwrap()).unwrap();
        Sim { addr }
    }

    /// Every chat request the provider received, oldest first.
    pub async fn requests(&self) -> Vec<Value> {
        let url = format!("http://{}/_sim/requests", self.addr);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    /// How many requests the simulator's `hang` mode holds right now.
    pub async fn hanging(&self) -> u64 {
        let url = format!("http://{}/_sim/hanging", self.addr);
        let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        v["hanging"].as_u64().unwrap_or_else(|| panic!("{v}"))
    }

    /// Forget the recorded requests (so a test step sees only its own).
    pub async fn clear_requests(&self) {
        let url = format!("http://{}/_sim/requests", self.addr);
        let r = reqwest::Client::new().delete(url).send().await.unwrap();
        assert!(
            r.status().is_success(),
            "clearing the recording: {}",
            r.status()
        );
    }
}

/// What a test gateway is started with, besides the harness's fixed config.
#[derive(Clone, Copy)]
pub struct Custom<'a> {
    pub lanes: &'a str,
    /// The healthy `sim` provider's format.
    pub sim_format: &'a str,
    pub body_timeout_ms: u64,
    /// Provider lines added to `providers:` (two-space indent); `{sim}` stands for the
    /// simulator's address, e.g. `  x: { format: openai, base_url: "http://{sim}/_sim/hang/v1" }`.
    pub extra_providers: &'a str,
    /// Top-level YAML appended to the config (e.g. `traffic: {...}`); `{sim}` as above.
    pub extra_config: &'a str,
    /// More `limits:` entries (a YAML flow-map fragment).
    pub extra_limits: &'a str,
    /// Files written beside the config before the gateway starts (name, content).
    pub files: &'a [(&'a str, &'a [u8])],
    /// Another gateway whose keys file (and main key) this one uses: a fleet's nodes share
    /// their keys.
    pub keys_from: Option<&'a Flux>,
    /// More `listen:` entries after the plaintext one the harness uses (a YAML flow-sequence
    /// fragment, e.g. `{address: "127.0.0.1:9443", tls: {certificate: a.pem, key: a.key}}`).
    pub extra_listen: &'a str,
    /// More `admin.listen:` entries, likewise.
    pub extra_admin_listen: &'a str,
}

impl Default for Custom<'_> {
    fn default() -> Self {
        Custom {
            lanes: TEST_LANES,
            sim_format: "openai",
            body_timeout_ms: 1000,
            extra_providers: "",
            extra_config: "",
            extra_limits: "",
            files: &[],
            keys_from: None,
            extra_listen: "",
            extra_admin_listen: "",
        }
    }
}

/// The lane names a lanes file defines, in order.
fn lane_names(lanes: &str) -> Vec<String> {
    let doc: serde_norway::Value = serde_norway::from_str(lanes).expect("lanes YAML");
    doc["lanes"]
        .as_mapping()
        .expect("a lanes mapping")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect()
}

/// A running gateway.
pub struct Flux {
    pub base: String,
    /// The admin listener.
    pub admin_base: String,
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// A key on the plan allowing every lane.
    pub key: String,
    pub client: reqwest::Client,
    child: Child,
}

/// Read a streamed answer's head from `client` until its first event has arrived; the
/// request id it carries.
pub async fn read_to_first_event(client: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data:") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .find_map(|l| l.strip_prefix("x-flux-request-id: "))
        .expect("a request id")
        .trim()
        .to_string()
}

impl Flux {
    pub async fn start() -> Flux {
        Self::start_with(TEST_LANES).await
    }

    pub async fn start_with(lanes: &str) -> Flux {
        Self::start_with_sim_format(lanes, "openai").await
    }

    /// Like [`Flux::start_with`], with the healthy `sim` provider configured in another wire
    /// format (`openai`, `openai_responses` or `anthropic`); the failing ones stay `openai`.
    pub async fn start_with_sim_format(lanes: &str, sim_format: &str) -> Flux {
        Self::start_with_options(lanes, sim_format, 1000).await
    }

    /// With a longer wait for request bodies than the 1 s the stall test wants: big uploads
    /// on a loaded 2-core machine can pause longer than that.
    pub async fn start_with_body_timeout(body_read_timeout_ms: u64) -> Flux {
        Self::start_with_options(TEST_LANES, "openai", body_read_timeout_ms).await
    }

    /// With more `limits:` entries (a YAML flow-map fragment such as
    /// `"header_timeout_ms: 2000, keepalive_timeout_seconds: 2"`).
    pub async fn start_with_limits(extra_limits: &str) -> Flux {
        Self::start_custom(&Custom {
            extra_limits,
            ..Custom::default()
        })
        .await
    }

    async fn start_with_options(lanes: &str, sim_format: &str, body_timeout_ms: u64) -> Flux {
        let custom = Custom {
            lanes,
            sim_format,
            body_timeout_ms,
            ..Custom::default()
        };
        Self::start_custom(&custom).await
    }

    /// A gateway with extra providers and top-level config (e.g. `traffic:`).
    pub async fn start_custom(custom: &Custom<'_>) -> Flux {
        // The gateway's port is picked free but only bound later; a parallel test may take it
        // in between, and the gateway then exits at start. Another port is tried then.
        for attempt in 1..=3 {
            match Self::try_start(custom).await {
                Ok(flux) => return flux,
                Err(log) if attempt < 3 && log.contains("in use") => continue,
                Err(log) => panic!("gateway did not start: {log}"),
            }
        }
        unreachable!()
    }

    async fn try_start(custom: &Custom<'_>) -> Result<Flux, String> {
        let Custom {
            lanes,
            sim_format,
            body_timeout_ms,
            extra_providers,
            extra_config,
            extra_limits,
            files,
            keys_from,
            extra_listen,
            extra_admin_listen,
        } = *custom;
        let extra_listen = match extra_listen {
            "" => String::new(),
            more => format!(", {more}"),
        };
        let extra_admin_listen = match extra_admin_listen {
            "" => String::new(),
            more => format!(", {more}"),
        };
        let keys_file = match keys_from {
            Some(f) => f.dir.path().join("keys.yaml").display().to_string(),
            None => "keys.yaml".to_string(),
        };
        // The payg plan (the main key's) may use every lane of the lanes file.
        let payg_lanes = lane_names(lanes).join(", ");
        let sim = Sim::start();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        // Port 1 on loopback refuses connections, and no test binds it (they bind port 0).
        let dead = 1;
        let d = dir.path().display();
        let s = sim.addr;
        let extra_providers = extra_providers.replace("{sim}", &s.to_string());
        let extra_config = extra_config.replace("{sim}", &s.to_string());
        // The extra limits may set their own body timeout.
        let body_timeout = match (extra_limits.contains("body_read_timeout_ms"), extra_limits) {
            (true, _) => String::new(),
            (false, "") => format!("body_read_timeout_ms: {body_timeout_ms}"),
            (false, _) => format!("body_read_timeout_ms: {body_timeout_ms}, "),
        };
        let config = format!(
            r#"
listen: ["127.0.0.1:{port}"{extra_listen}]
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "{d}/pid", upgrade_sock: "{d}/upgrade.sock" }}
limits: {{ {body_timeout}{extra_limits} }}
keys_file: "{keys_file}"
lanes_file: lanes.yaml
providers:
  sim: {{ format: {sim_format}, base_url: "http://{s}/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }}
  sim_500: {{ format: openai, base_url: "http://{s}/_sim/fail500/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }}
  sim_cut: {{ format: openai, base_url: "http://{s}/_sim/cut/v1" }}
  sim_responses: {{ format: openai_responses, base_url: "http://{s}/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }}
  sim_anthropic: {{ format: anthropic, base_url: "http://{s}/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }}
  sim_cut_responses: {{ format: openai_responses, base_url: "http://{s}/_sim/cut/v1" }}
  sim_cut_anthropic: {{ format: anthropic, base_url: "http://{s}/_sim/cut/v1" }}
  sim_slow: {{ format: openai, base_url: "http://{s}/_sim/slow=100/v1" }}
  sim_429: {{ format: openai, base_url: "http://{s}/_sim/fail429/v1" }}
  sim_401: {{ format: openai, base_url: "http://{s}/_sim/fail401/v1", api_key_env: FLUX_TEST_PROVIDER_KEY }}
  sim_503: {{ format: openai, base_url: "http://{s}/_sim/fail503/v1" }}
  sim_hang: {{ format: openai, base_url: "http://{s}/_sim/hang/v1" }}
{extra_providers}  dead: {{ format: openai, base_url: "http://127.0.0.1:{dead}/v1", timeouts: {{ connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000 }} }}
plans:
  payg: {{ lanes: [{payg_lanes}] }}
  free: {{ lanes: [express], free: true, monthly_credit_usd: 1.00 }}
  tiny: {{ lanes: [express, formats], free: true, monthly_credit_usd: 0.05 }}
  prepaid: {{ lanes: [express], monthly_credit_usd: 0.000001 }}
  capped: {{ lanes: [express], monthly_credit_usd: 0, overage: true, ceiling_usd: 0.000001 }}
  hourly: {{ lanes: [express], hourly_limit_usd: 0.000001 }}
  premium: {{ lanes: [express, deep], premium_needs_payment_method: true }}
  rpm600: {{ lanes: [express, formats], requests_per_minute: 600 }}
  rpm2: {{ lanes: [express, formats], requests_per_minute: 2 }}
  tpm: {{ lanes: [express, formats], tokens_per_minute: 600 }}
  chatty: {{ lanes: [express, formats], max_messages: 4 }}
  short_input: {{ lanes: [express, formats], max_input_tokens: 1000 }}
  express_only: {{ lanes: [express] }}
admin: {{ listen: ["127.0.0.1:{admin_port}"{extra_admin_listen}], token_env: FLUX_TEST_ADMIN_TOKEN, metrics_token_env: FLUX_TEST_METRICS_TOKEN }}
{extra_config}
"#
        );
        let config_path = dir.path().join("fluxrouter.yaml");
        std::fs::write(&config_path, config).unwrap();
        std::fs::write(dir.path().join("lanes.yaml"), lanes).unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        // The main key is in the keys file before the gateway starts: its first answers
        // are never a 401 for a key still on its way through the file watcher. (Without the
        // admin token: no gateway to ask yet, and its admin port is not ours until it runs.)
        let key = match keys_from {
            Some(f) => f.key.clone(),
            None => new_key_at(&config_path, "payg", "main", None),
        };
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut flux = Flux {
            base: format!("http://127.0.0.1:{port}"),
            admin_base: format!("http://127.0.0.1:{admin_port}"),
            sim,
            config: config_path.clone(),
            key,
            client: reqwest::Client::new(),
            child: spawn_gateway(&config_path, log),
            dir,
        };
        flux.wait_ready().await?;
        // Each listener is bound by its own service as the server starts: the main one
        // answering does not mean the others accept yet.
        let others = [custom.extra_listen, custom.extra_admin_listen].join(" ");
        let mut addresses = vec![format!("127.0.0.1:{admin_port}")];
        addresses.extend(others.split("127.0.0.1:").skip(1).filter_map(|rest| {
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (!port.is_empty()).then(|| format!("127.0.0.1:{port}"))
        }));
        for address in addresses {
            let deadline = Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(&address).await.is_err() {
                assert!(Instant::now() < deadline, "{address} never accepted");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(flux)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    break;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("gateway exited with {status}: {}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Keys created after start arrive through the reloader. Until then this also proves
        // the answers come from this gateway: if its port was taken by another test's gateway
        // (ports are picked free but bound later), this one exits and the start is retried.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .client
                .get(format!("{}/v1/models", self.base))
                .bearer_auth(&self.key)
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("gateway exited with {status}: {}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "key never became valid: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the gateway with SIGKILL (no flush, no goodbye) and start it again on the same
    /// files and ports.
    pub async fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        self.child = spawn_gateway(&self.config, log);
        self.wait_ready().await.unwrap();
    }

    /// Change fields of the named key in the keys file, as an operator would, and wait for
    /// the gateway to reload it.
    pub async fn edit_key(&self, name: &str, fields: &[(&str, serde_norway::Value)]) {
        let path = self.dir.path().join("keys.yaml");
        let mut doc: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let key = doc["keys"]
            .as_sequence_mut()
            .unwrap()
            .iter_mut()
            .find(|k| k["name"].as_str() == Some(name))
            .unwrap();
        for (field, value) in fields {
            key[*field] = value.clone();
        }
        let tmp = self.dir.path().join(".keys.yaml.tmp");
        std::fs::write(&tmp, serde_norway::to_string(&doc).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        // Reloads are asynchronous; the file's mtime changes at once, the table within ~1 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    /// GET an admin endpoint with a token.
    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.client.post(format!("{}{path}", self.admin_base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.admin_base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// The Prometheus text from GET /metrics (with the metrics token).
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics", Some(METRICS_TOKEN)).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The metrics page once `ready` holds for it (bounded by 5 s; the last page otherwise):
    /// a request is counted in `logging()`, just after its answer is written, so the count
    /// of the request a test just read may land a moment later.
    pub async fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics().await;
            if ready(&text) || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll until a key created after start authenticates (the file watcher swapped it in).
    pub async fn wait_for_key(&self, key: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.get("/v1/models", key).await;
            if r.status() == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "key never became valid: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run a `fluxrouter` subcommand against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.config, args, Some(ADMIN_TOKEN))
    }

    /// Create a key with the CLI: usable at once (the CLI waits for the running gateway to
    /// load the keys file).
    pub fn new_key(&self, plan: &str, name: &str) -> String {
        new_key_at(&self.config, plan, name, Some(ADMIN_TOKEN))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of the gateway's /proc status, in kB (`VmHWM` = peak RSS, `VmRSS` = now).
    pub fn memory_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// Send a signal (`HUP`, `TERM`, `QUIT`) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Wait for the gateway process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Start a second gateway on the same config with `-u`: it takes the listening sockets
    /// over from this one once this one gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("gateway-new.log")).unwrap();
        Command::new(bin())
            .arg("--config")
            .arg(&self.config)
            .arg("-u")
            .env("FLUX_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env("FLUX_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The log once it mentions `needle` (access lines are written in batches).
    pub async fn log_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never mentioned {needle}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The access-log line of request `id`, once written.
    pub async fn access_line(&self, id: &str) -> Value {
        let needle = format!("\"id\":\"{id}\"");
        let log = self.log_containing(&needle).await;
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap()
    }

    pub fn lanes_path(&self) -> PathBuf {
        self.dir.path().join("lanes.yaml")
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// A chat completion with another key.
    pub async fn chat_with_key(&self, body: &Value, key: &str) -> reqwest::Response {
        self.post("/v1/chat/completions", key, body).await
    }

    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/chat/completions", &self.key, body).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

impl Drop for Flux {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a `fluxrouter` subcommand against a config, with the admin token in the environment
/// when given (as an operator on the gateway's host has it).
pub fn cli_at(config: &std::path::Path, args: &[&str], admin_token: Option<&str>) -> Output {
    let mut command = Command::new(bin());
    command.arg("--config").arg(config).args(args);
    if let Some(token) = admin_token {
        command.env("FLUX_TEST_ADMIN_TOKEN", token);
    }
    command.stdin(Stdio::null()).output().unwrap()
}

/// Create a key with the CLI; prints it.
pub fn new_key_at(
    config: &std::path::Path,
    plan: &str,
    name: &str,
    admin_token: Option<&str>,
) -> String {
    let out = cli_at(
        config,
        &["keys", "new", "--plan", plan, "--name", name],
        admin_token,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {:?}", r.headers()))
        .to_str()
        .unwrap()
}

/// Assert an OpenAI-shaped error with this status and code; returns the message.
pub async fn expect_openai_error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    let id = header(&r, "x-flux-request-id").to_string();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(
        header(&r, "x-request-id"),
        id,
        "request id mirrored for Codex"
    );
    assert_eq!(header(&r, "content-type"), "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

pub fn ping(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ping"}]})
}

/// The zero-downtime upgrade under load: with `workers` sending requests (each returns its
/// failures), start a new process on `flux`'s sockets, stop the old one (SIGQUIT) and wait
/// for it to exit, let the new one serve for half a second, then stop the workers. Asserts
/// the old process exited cleanly and no request failed; `old_gone` is set once it is gone.
pub async fn upgrade_under_load(
    flux: &mut Flux,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
    old_gone: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = flux.spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(700)).await; // the new process waits for the sockets
    flux.signal("QUIT");
    // Pingora keeps the old process serving for 5 s after the hand-over, then drains it.
    let exit = flux
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the old process exits");
    assert!(exit.success(), "{exit:?}");
    old_gone.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
