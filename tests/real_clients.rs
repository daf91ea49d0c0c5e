//! The real clients against the real gateway, for every client x provider format.
//!
//! Clients: openai-python (Chat Completions and Responses), anthropic-python (Messages, with
//! Bearer and with x-api-key), Codex CLI (`codex exec --json`) and Claude Code
//! (`claude -p --output-format json`), installed by `scripts/clients/install.sh` into
//! `.clients/` and driven by `scripts/clients/*.sh` and `tests/clients/sdk.py`.
//! Provider formats: the gateway's healthy `sim` provider is configured as `openai`,
//! `openai_responses` or `anthropic`, in front of the built-in simulated provider, and every
//! model of every lane uses it.
//!
//! Each test is one cell of that matrix: it runs the cell's scenarios one after another and
//! reports every failing one at the end. Tool round trips are asked of the simulator with a
//! `[sim:call NAME {args}]` directive in the prompt; what the gateway sent upstream is checked
//! from the simulator's recording. The tests fail (they never skip) when the clients are not
//! installed.
//!
//! At the edge (the `*_over_tls` tests and `curl_*`): the same clients reach a TLS listener
//! whose certificate is signed by a CA made in the test and written to a file, which each client
//! is told to trust the way a user would (the SDKs' httpx2 `SSL_CERT_FILE`, Codex
//! `CODEX_CA_CERTIFICATE`, Claude Code `NODE_EXTRA_CA_CERTS`, curl `--cacert`); HTTP/2 is
//! asked of httpx2 (`http2=True`, by ALPN) and of curl (`--http2` over TLS,
//! `--http2-prior-knowledge` to an h2c listener). A client that is not told about the CA is
//! refused, which shows the trust is what makes the others work.

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Ca, Custom, Flux};
use serde_json::{json, Value};

/// Every lane the harness's plans name, each served by a healthy model on the `sim` provider;
/// upstream names all start with `sim-`, which the simulator's "Hello from <model>" echoes.
const LANES: &str = r#"
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 4.0 }
    default: flux-pinned-alpha
  daily:
    alias: flux-standard
    title: Daily Driver
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
    price: { input_per_mtok: 2.5, output_per_mtok: 10.0 }
    default: flux-pinned-vision
  cut:
    alias: flux-cut
    title: Cut Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-cutless
  slow:
    alias: flux-slow
    title: Slow Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-quick
  formats:
    alias: flux-formats
    title: One model per provider format
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    default: flux-pinned-formats
models:
  flux-pinned-alpha: { upstream: sim-alpha, provider: sim, lane: express, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
  flux-pinned-gamma: { upstream: sim-gamma, provider: sim, lane: daily, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
  flux-pinned-deep: { upstream: sim-deep, provider: sim, lane: deep, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
  flux-pinned-vision: { upstream: sim-vision, provider: sim, lane: image, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
  flux-pinned-cutless: { upstream: sim-cutless, provider: sim, lane: cut, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
  flux-pinned-formats: { upstream: sim-formats, provider: sim, lane: formats, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
  flux-pinned-quick: { upstream: sim-quick, provider: sim, lane: slow, context_window: 1000000, max_output_tokens: 64000, capabilities: [tools, vision, streaming] }
auto:
  reasoning_cues: ["step by step", "prove"]
  code_markers: ["```"]
  rules:
    - { name: images, when: { images: true }, lane: image }
    - { name: reasoning, when: { reasoning: true }, lane: deep }
    - { name: tools, when: { tools: true }, lane: daily }
    - { name: default, lane: express }
"#;

/// What every simulated answer reaching a client starts with (`Hello from sim-<name>.`).
const REPLY: &str = "Hello from sim-";
/// What the simulated answer after a tool result says before echoing the tool's output.
const AFTER_TOOL: &str = "The tool said:";
/// Longest a single client run may take (the scripts enforce it with `timeout`).
const CLIENT_TIMEOUT_S: u64 = 120;

// The SDK tool scenario (tests/clients/sdk.py keeps the same values).
const SDK_TOOL: &str = "get_weather";
const SDK_TOOL_RESULT: &str = "sunny, 21 C in Paris (tool result 7f3a)";

/// Contents of the file Claude Code is made to `Read`.
const CLAUDE_FILE_TEXT: &str = "FLUXFILE-4471 is the file's content";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    repo().join(".clients/venv/bin/python")
}

/// Fail (not skip) when a client is missing: the suite's contract is that every cell runs.
fn require_installed() {
    let needed = [
        repo().join(".clients/npm/node_modules/.bin/codex"),
        repo().join(".clients/npm/node_modules/.bin/claude"),
        python(),
    ];
    let missing: Vec<String> = needed
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "real clients not installed ({}): run `bash scripts/clients/install.sh`",
        missing.join(", ")
    );
}

/// The provider path the simulator records for a provider format.
fn provider_path(format: &str) -> &'static str {
    match format {
        "openai" => "/v1/chat/completions",
        "openai_responses" => "/v1/responses",
        "anthropic" => "/v1/messages",
        other => panic!("unknown format {other}"),
    }
}

/// The id the simulator gives its first tool call in a provider format.
fn sim_call_id(format: &str) -> &'static str {
    match format {
        "anthropic" => "toolu_sim_1",
        _ => "call_sim_1",
    }
}

struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "{} -> exit {:?} after {:.1}s\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}",
            self.what,
            self.code,
            self.elapsed.as_secs_f64(),
            tail(&self.stdout, 6000),
            tail(&self.stderr, 3000)
        )
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Run a client command to completion (the command itself carries the timeout).
fn run(what: String, mut cmd: Command) -> Run {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let run = Run {
        what,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    // FLUX_CLIENTS_VERBOSE=1 (with --nocapture) shows what every client printed.
    if std::env::var_os("FLUX_CLIENTS_VERBOSE").is_some() {
        eprintln!("{}\n", run.describe());
    }
    run
}

/// One cell of the matrix: a gateway with its `sim` provider in `format`, a work folder under
/// target/ for the clients' homes, and the failures found so far.
struct Cell {
    name: &'static str,
    format: &'static str,
    flux: Flux,
    /// The root URL the clients are given: the plaintext listener, or the TLS one.
    base: String,
    /// Set when the gateway also listens with TLS and h2c.
    edge: Option<Edge>,
    work: tempfile::TempDir,
    failures: Vec<String>,
    passed: Vec<String>,
}

/// A TLS cell's edge: the CA file its clients trust, and its h2c listener.
struct Edge {
    ca_file: PathBuf,
    h2c_base: String,
}

impl Cell {
    async fn start(name: &'static str, format: &'static str) -> Cell {
        require_installed();
        let flux = Flux::start_with_sim_format(LANES, format).await;
        Cell::with_flux(name, format, flux)
    }

    fn with_flux(name: &'static str, format: &'static str, flux: Flux) -> Cell {
        // Codex refuses to put its helper binaries under /tmp: keep client homes in target/.
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-clients");
        std::fs::create_dir_all(&root).unwrap();
        let work = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&root)
            .unwrap();
        Cell {
            name,
            format,
            base: flux.base.clone(),
            flux,
            edge: None,
            work,
            failures: Vec::new(),
            passed: Vec::new(),
        }
    }

    /// A cell whose gateway also listens with TLS (a certificate for 127.0.0.1 signed by a CA
    /// made here) and with h2c; the clients are given the TLS listener's URL, and `ca.pem` in
    /// the cell's folder is the CA they are told to trust.
    async fn start_tls(name: &'static str, format: &'static str) -> Cell {
        require_installed();
        let ca = Ca::new();
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        let (tls_port, h2c_port) = (free_port(), free_port());
        let listen = format!(
            "{{address: \"127.0.0.1:{tls_port}\", tls: {{certificate: edge.pem, key: edge.key}}}}, \
             {{address: \"127.0.0.1:{h2c_port}\", h2c: true}}"
        );
        let files: [(&str, &[u8]); 2] =
            [("edge.pem", cert.as_bytes()), ("edge.key", key.as_bytes())];
        let flux = Flux::start_custom(&Custom {
            lanes: LANES,
            sim_format: format,
            extra_listen: &listen,
            files: &files,
            ..Custom::default()
        })
        .await;
        let mut cell = Cell::with_flux(name, format, flux);
        let ca_file = cell.work.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        cell.base = format!("https://127.0.0.1:{tls_port}");
        cell.edge = Some(Edge {
            ca_file,
            h2c_base: format!("http://127.0.0.1:{h2c_port}"),
        });
        cell
    }

    fn dir(&self, step: &str) -> PathBuf {
        let d = self.work.path().join(step);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The provider requests the simulator recorded since the last `clear_requests`.
    async fn upstream(&self) -> Vec<Value> {
        let path = provider_path(self.format);
        self.flux
            .sim
            .requests()
            .await
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(path)))
            .collect()
    }

    fn record(&mut self, step: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.passed.push(step.to_string()),
            Err(e) => self.failures.push(format!("[{}] {step}: {e}", self.name)),
        }
    }

    /// Panic with every failure of the cell, keeping the client folders for a look.
    fn finish(self) {
        if self.failures.is_empty() {
            eprintln!("{}: all passed: {}", self.name, self.passed.join(", "));
            return;
        }
        let kept = self.work.keep();
        let mut msg = format!(
            "{}: {} failed, {} passed ({}); client folders kept in {}\n",
            self.name,
            self.failures.len(),
            self.passed.len(),
            self.passed.join(", "),
            kept.display()
        );
        for f in &self.failures {
            let _ = writeln!(msg, "\n{f}");
        }
        let _ = writeln!(
            msg,
            "\n--- gateway log (tail) ---\n{}",
            tail(&self.flux.log(), 4000)
        );
        panic!("{msg}");
    }

    // --- the SDKs --------------------------------------------------------------------------

    /// The CA file the clients are told to trust (TLS cells only).
    fn ca_file(&self) -> Option<&PathBuf> {
        self.edge.as_ref().map(|e| &e.ca_file)
    }

    /// Run one `sdk.py` scenario; on success returns its JSON line.
    async fn sdk(&mut self, step: &str, args: &[&str]) -> Option<Value> {
        let run = self.sdk_run(step, args, true).await;
        let line = run.stdout.lines().last().unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_str(line).ok();
        let ok = run.code == Some(0) && parsed.as_ref().is_some_and(|v| v["ok"] == true);
        if ok {
            parsed
        } else {
            self.record(step, Err(run.describe()));
            None
        }
    }

    /// Run `sdk.py`, in a TLS cell with `SSL_CERT_FILE` naming the test's CA when `trust_ca`
    /// (httpx2, the SDKs' HTTP client, reads it as OpenSSL-based clients do).
    async fn sdk_run(&mut self, step: &str, args: &[&str], trust_ca: bool) -> Run {
        self.flux.sim.clear_requests().await;
        let home = self.dir(step);
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=5")
            .arg(CLIENT_TIMEOUT_S.to_string())
            .arg(python())
            .arg(repo().join("tests/clients/sdk.py"))
            .args(args)
            .arg("--base-url")
            .arg(&self.base)
            .arg("--key")
            .arg(&self.flux.key)
            // No OPENAI_*/ANTHROPIC_*, SSL_* or proxy settings from the caller's environment.
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home)
            .env("LANG", "C.UTF-8");
        if let Some(ca) = self.ca_file().filter(|_| trust_ca) {
            cmd.env("SSL_CERT_FILE", ca);
        }
        run(format!("sdk.py {}", args.join(" ")), cmd)
    }

    /// A text-only SDK scenario: the simulated reply reaches the client, with Flux headers.
    async fn sdk_text(&mut self, step: &str, args: &[&str]) {
        let Some(out) = self.sdk(step, args).await else {
            return;
        };
        let upstream = self.upstream().await;
        let result = check_sdk_text(&out)
            .and_then(|()| check_http_version(&out, args))
            .and_then(|()| check_plain_upstream(&upstream));
        self.record(
            step,
            result.map_err(|e| format!("{e}\nclient printed: {out}")),
        );
    }

    /// An SDK tool round trip: the call reached the client, its result reached the provider
    /// once, and the answer after it reached the client.
    async fn sdk_tool(&mut self, step: &str, args: &[&str]) {
        let Some(out) = self.sdk(step, args).await else {
            return;
        };
        let upstream = self.upstream().await;
        let result = check_sdk_text(&out)
            .and_then(|()| check_http_version(&out, args))
            .and_then(|()| {
                let text = out["text"].as_str().unwrap_or_default();
                ensure(
                    text.contains(&format!("{AFTER_TOOL} sunny,")),
                    format!("the answer after the tool does not echo its result: {text:?}"),
                )
            })
            .and_then(|()| {
                check_round_trip(
                    self.format,
                    &upstream,
                    SDK_TOOL,
                    &json!({"city": "Paris"}),
                    SDK_TOOL_RESULT,
                )
            });
        self.record(
            step,
            result.map_err(|e| format!("{e}\nclient printed: {out}")),
        );
    }

    /// httpx2 alone with `http2=True`: a chat completion and the same streamed, both over
    /// HTTP/2, the stream ending with `[DONE]` and carrying the cost line.
    async fn httpx_h2(&mut self, step: &str) {
        let Some(out) = self.sdk(step, &["httpx-h2"]).await else {
            return;
        };
        let upstream = self.upstream().await;
        let result = check_sdk_text(&out)
            .and_then(|()| check_http_version(&out, &["--http2"]))
            .and_then(|()| {
                let streamed = out["streamed_text"].as_str().unwrap_or_default();
                ensure(
                    streamed.contains(REPLY),
                    format!("the streamed reply did not reach the client: {streamed:?}"),
                )
            })
            .and_then(|()| {
                let cost = out["cost_line"].as_str().unwrap_or_default();
                ensure(
                    cost.starts_with(": x-flux-cost-usd="),
                    format!("cost line {cost:?}"),
                )
            })
            .and_then(|()| {
                ensure(
                    upstream.len() == 2,
                    format!(
                        "expected 2 upstream requests, the simulator saw {}",
                        upstream.len()
                    ),
                )
            });
        self.record(
            step,
            result.map_err(|e| format!("{e}\nclient printed: {out}")),
        );
    }

    /// An SDK not told about the test's CA is refused by its own certificate check, and
    /// nothing reaches the provider.
    async fn sdk_refused(&mut self, step: &str, args: &[&str]) {
        let run = self.sdk_run(step, args, false).await;
        let upstream = self.upstream().await;
        let result = ensure(
            run.code == Some(1),
            "the client succeeded without trusting the CA",
        )
        .and_then(|()| {
            ensure(
                run.stderr.contains("CERTIFICATE_VERIFY_FAILED"),
                "the failure is not a certificate verification failure",
            )
        })
        .and_then(|()| {
            ensure(
                upstream.is_empty(),
                format!("the provider saw {}", summary(&upstream)),
            )
        });
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }

    // --- curl ---------------------------------------------------------------------------------

    /// `curl -i` with `args` and a chat completion body; returns the run and, when curl
    /// succeeded, the response as (status line, headers lower-cased, body).
    fn curl(&self, step: &str, url: &str, args: &[&str], stream: bool) -> (Run, Option<Curled>) {
        let body = json!({"model": "flux-fast", "stream": stream,
                          "messages": [{"role": "user", "content": "say hi"}]});
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-i", "-N", "--max-time"])
            .arg(CLIENT_TIMEOUT_S.to_string())
            .args(args)
            .arg("-H")
            .arg(format!("authorization: Bearer {}", self.flux.key))
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(body.to_string())
            .arg(format!("{url}/v1/chat/completions"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.dir(step));
        let run = run(format!("curl {} {url}", args.join(" ")), cmd);
        let curled = (run.code == Some(0))
            .then(|| Curled::parse(&run.stdout))
            .flatten();
        (run, curled)
    }

    /// A chat completion with curl, not streamed and streamed, over HTTP/2.
    fn curl_http2(&mut self, what: &str, url: &str, args: &[&str]) {
        for stream in [false, true] {
            let step = format!("curl {what}{}", if stream { " (stream)" } else { "" });
            let (run, curled) = self.curl(&step.replace(' ', "-"), url, args, stream);
            let result = match curled {
                None => Err("curl failed or printed no response".to_string()),
                Some(c) => check_curled(&c, stream),
            };
            self.record(
                &step,
                result.map_err(|e| format!("{e}\n{}", run.describe())),
            );
        }
    }

    fn curl_refused(&mut self, url: &str) {
        let step = "curl --http2 without --cacert";
        let (run, _) = self.curl("curl-refused", url, &["--http2"], false);
        // 60: "Peer certificate cannot be authenticated with known CA certificates".
        let result = ensure(run.code == Some(60), "curl did not refuse the certificate");
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }

    /// A client not told about the test's CA fails, and nothing reaches the provider: it does
    /// check the certificate, so the runs that trust the CA show that trusting it works.
    async fn refused(&mut self, step: &str, run: Run, failed: impl Fn(&Run) -> bool) {
        let upstream = self.upstream().await;
        let result =
            ensure(failed(&run), "the client did not fail without the CA").and_then(|()| {
                ensure(
                    upstream.is_empty(),
                    format!("the provider saw {}", summary(&upstream)),
                )
            });
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }

    /// Codex does not give up on a refused certificate (`request_max_retries = 0`
    /// notwithstanding, it goes on "Reconnecting... waiting for network"), so its run is cut
    /// short and judged by what it reported meanwhile.
    async fn codex_refused(&mut self) {
        let run = self.codex_run("codex-refused", "say hi", false, 20).await;
        self.refused("codex without the CA", run, |r| {
            r.code != Some(0)
                && r.stdout
                    .contains("Connection failed: error sending request")
                && !r.stdout.contains("agent_message")
        })
        .await;
    }

    async fn claude_refused(&mut self) {
        let run = self
            .claude_run("claude-refused", "x-api-key", "say hi", false)
            .await;
        // Claude Code says so: "SSL certificate verification failed (UNABLE_TO_VERIFY_LEAF_…)".
        self.refused("claude without the CA", run, |r| {
            r.code != Some(0)
                && serde_json::from_str::<Value>(r.stdout.trim()).is_ok_and(|v| {
                    v["is_error"] == true
                        && v["result"]
                            .as_str()
                            .is_some_and(|t| t.contains("certificate verification failed"))
                })
        })
        .await;
    }

    // --- Codex CLI --------------------------------------------------------------------------

    /// Run `codex.sh` for at most `timeout_s` (in a TLS cell, told to trust the test's CA
    /// when `trust_ca`).
    async fn codex_run(&mut self, step: &str, prompt: &str, trust_ca: bool, timeout_s: u64) -> Run {
        self.flux.sim.clear_requests().await;
        let dir = self.dir(step);
        let base = format!("{}/v1", self.base);
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/clients/codex.sh"))
            .arg("--base-url")
            .arg(&base)
            .arg("--key")
            .arg(&self.flux.key)
            .arg("--dir")
            .arg(&dir)
            .arg("--timeout")
            .arg(timeout_s.to_string());
        if let Some(ca) = self.ca_file().filter(|_| trust_ca) {
            cmd.arg("--ca").arg(ca);
        }
        cmd.arg(prompt);
        run(format!("codex.sh {base} {prompt:?}"), cmd)
    }

    async fn codex(&mut self, step: &str, prompt: &str) -> Option<(Run, Vec<Value>)> {
        let run = self.codex_run(step, prompt, true, CLIENT_TIMEOUT_S).await;
        if run.code != Some(0) {
            self.record(step, Err(run.describe()));
            return None;
        }
        let events: Vec<Value> = run
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Some((run, events))
    }

    async fn codex_plain(&mut self) {
        let step = "codex say hi";
        let Some((run, events)) = self.codex("codex-plain", "say hi").await else {
            return;
        };
        let upstream = self.upstream().await;
        let result =
            check_codex_reply(&events, REPLY).and_then(|()| check_plain_upstream(&upstream));
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }

    async fn codex_tool(&mut self) {
        let step = "codex tool round trip (exec_command)";
        let prompt = r#"run the command [sim:call exec_command {"cmd":"echo hi"}]"#;
        let Some((run, events)) = self.codex("codex-tool", prompt).await else {
            return;
        };
        let upstream = self.upstream().await;
        let result = check_codex_command(&events)
            .and_then(|()| check_codex_reply(&events, AFTER_TOOL))
            .and_then(|()| {
                check_round_trip(
                    self.format,
                    &upstream,
                    "exec_command",
                    &json!({"cmd": "echo hi"}),
                    "hi",
                )
            });
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }

    // --- Claude Code ------------------------------------------------------------------------

    /// Run `claude_code.sh` (in a TLS cell, told to trust the test's CA when `trust_ca`;
    /// without it, with no retries: Claude Code would otherwise retry a refused handshake with
    /// backoff for minutes).
    async fn claude_run(&mut self, step: &str, auth: &str, prompt: &str, trust_ca: bool) -> Run {
        self.flux.sim.clear_requests().await;
        let dir = self.dir(step);
        let base = format!("{}/anthropic", self.base);
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/clients/claude_code.sh"))
            .arg("--base-url")
            .arg(&base)
            .arg("--key")
            .arg(&self.flux.key)
            .arg("--auth")
            .arg(auth)
            .arg("--dir")
            .arg(&dir)
            .arg("--timeout")
            .arg(CLIENT_TIMEOUT_S.to_string());
        match self.ca_file() {
            Some(ca) if trust_ca => {
                cmd.arg("--ca").arg(ca);
            }
            Some(_) => {
                cmd.args(["--max-retries", "0"]);
            }
            None => {}
        }
        cmd.arg(prompt);
        run(
            format!("claude_code.sh --auth {auth} {base} {prompt:?}"),
            cmd,
        )
    }

    async fn claude(&mut self, step: &str, auth: &str, prompt: &str) -> Option<(Run, Value)> {
        let run = self.claude_run(step, auth, prompt, true).await;
        let parsed: Option<Value> = serde_json::from_str(run.stdout.trim()).ok();
        match parsed {
            Some(v) if run.code == Some(0) && v["is_error"] == false => Some((run, v)),
            _ => {
                self.record(step, Err(run.describe()));
                None
            }
        }
    }

    async fn claude_plain(&mut self) {
        let step = "claude say hi (x-api-key)";
        let Some((run, out)) = self.claude("claude-plain", "x-api-key", "say hi").await else {
            return;
        };
        let upstream = self.upstream().await;
        let result =
            check_claude_result(&out, REPLY, 1).and_then(|()| check_plain_upstream(&upstream));
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }

    async fn claude_tool(&mut self) {
        let step = "claude tool round trip (Read, Bearer)";
        let dir = self.dir("claude-tool");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let file = work.join("notes.txt");
        std::fs::write(&file, format!("{CLAUDE_FILE_TEXT}\n")).unwrap();
        let args = json!({"file_path": file.to_str().unwrap()});
        let prompt = format!("read the notes [sim:call Read {args}]");
        let Some((run, out)) = self.claude("claude-tool", "bearer", &prompt).await else {
            return;
        };
        let upstream = self.upstream().await;
        let result = check_claude_result(&out, AFTER_TOOL, 2)
            .and_then(|()| {
                let text = out["result"].as_str().unwrap_or_default();
                ensure(
                    text.contains("FLUXFILE-4471"),
                    format!("the answer does not echo the file's content: {text:?}"),
                )
            })
            .and_then(|()| {
                check_round_trip(self.format, &upstream, "Read", &args, CLAUDE_FILE_TEXT)
            });
        self.record(step, result.map_err(|e| format!("{e}\n{}", run.describe())));
    }
}

fn ensure(cond: bool, msg: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg.into())
    }
}

fn check_sdk_text(out: &Value) -> Result<(), String> {
    let text = out["text"].as_str().unwrap_or_default();
    ensure(
        text.contains(REPLY),
        format!("the simulated reply did not reach the client: {text:?}"),
    )?;
    for h in out["requests"].as_array().into_iter().flatten() {
        let id = h["x-flux-request-id"].as_str().unwrap_or_default();
        ensure(id.starts_with("req_"), format!("X-Flux-Request-Id {id:?}"))?;
        let model = h["x-flux-model"].as_str().unwrap_or_default();
        ensure(
            model.starts_with("flux-pinned-"),
            format!("X-Flux-Model {model:?}"),
        )?;
    }
    Ok(())
}

/// A plain turn: exactly one upstream request, with the model rewritten, and no tool traffic.
fn check_plain_upstream(upstream: &[Value]) -> Result<(), String> {
    ensure(
        upstream.len() == 1,
        format!(
            "expected 1 upstream request, the simulator saw {}: {}",
            upstream.len(),
            summary(upstream)
        ),
    )?;
    let model = upstream[0]["model"].as_str().unwrap_or_default();
    ensure(
        model.starts_with("sim-"),
        format!("upstream model {model:?} was not rewritten"),
    )
}

fn summary(upstream: &[Value]) -> String {
    upstream
        .iter()
        .map(|r| {
            format!(
                "{} {} model={} bytes={}",
                r["method"], r["path"], r["model"], r["body_bytes"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Tool calls (id, name, arguments) and tool results (id, text) in a provider request body.
#[derive(Debug, Default)]
struct Exchange {
    calls: Vec<(String, String, Value)>,
    results: Vec<(String, String)>,
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Arguments as JSON (they travel as JSON text in the OpenAI formats).
fn args_of(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

/// Text of a tool result's content: a string, or text blocks / parts.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn exchange(format: &str, body: &Value) -> Exchange {
    let mut ex = Exchange::default();
    match format {
        "openai" => {
            for m in body["messages"].as_array().into_iter().flatten() {
                for tc in m["tool_calls"].as_array().into_iter().flatten() {
                    ex.calls.push((
                        str_of(&tc["id"]),
                        str_of(&tc["function"]["name"]),
                        args_of(&tc["function"]["arguments"]),
                    ));
                }
                if m["role"] == "tool" {
                    ex.results
                        .push((str_of(&m["tool_call_id"]), text_of(&m["content"])));
                }
            }
        }
        "openai_responses" => {
            for item in body["input"].as_array().into_iter().flatten() {
                match item["type"].as_str() {
                    Some("function_call") => ex.calls.push((
                        str_of(&item["call_id"]),
                        str_of(&item["name"]),
                        args_of(&item["arguments"]),
                    )),
                    Some("function_call_output") => ex
                        .results
                        .push((str_of(&item["call_id"]), text_of(&item["output"]))),
                    _ => {}
                }
            }
        }
        "anthropic" => {
            for m in body["messages"].as_array().into_iter().flatten() {
                for b in m["content"].as_array().into_iter().flatten() {
                    match b["type"].as_str() {
                        Some("tool_use") => ex.calls.push((
                            str_of(&b["id"]),
                            str_of(&b["name"]),
                            b["input"].clone(),
                        )),
                        Some("tool_result") => ex
                            .results
                            .push((str_of(&b["tool_use_id"]), text_of(&b["content"]))),
                        _ => {}
                    }
                }
            }
        }
        other => panic!("unknown format {other}"),
    }
    ex
}

/// From the simulator's recording of one tool run: two upstream requests; the first carries
/// no tool traffic, the follow-up carries the call (`name`, `args`, the simulator's own call
/// id) exactly once and its result (containing `result_has`) exactly once, with the same id.
fn check_round_trip(
    format: &str,
    upstream: &[Value],
    name: &str,
    args: &Value,
    result_has: &str,
) -> Result<(), String> {
    ensure(
        upstream.len() == 2,
        format!(
            "expected 2 upstream requests (the call, the follow-up), the simulator saw {}: {}",
            upstream.len(),
            summary(upstream)
        ),
    )?;
    for r in upstream {
        ensure(
            r["body"].is_object(),
            format!("a recorded request has no body: {r}"),
        )?;
        let model = r["model"].as_str().unwrap_or_default();
        ensure(
            model.starts_with("sim-"),
            format!("upstream model {model:?} was not rewritten"),
        )?;
    }
    let first = exchange(format, &upstream[0]["body"]);
    ensure(
        first.calls.is_empty() && first.results.is_empty(),
        format!("the first request already carries tool traffic: {first:?}"),
    )?;
    let follow = exchange(format, &upstream[1]["body"]);
    ensure(
        follow.calls.len() == 1,
        format!(
            "the follow-up carries {} tool calls, expected 1: {:?}",
            follow.calls.len(),
            follow.calls
        ),
    )?;
    ensure(
        follow.results.len() == 1,
        format!(
            "the follow-up carries {} tool results, expected 1: {:?}",
            follow.results.len(),
            follow.results
        ),
    )?;
    let (call_id, call_name, call_args) = &follow.calls[0];
    let (result_id, result_text) = &follow.results[0];
    ensure(
        call_name == name,
        format!("the call is to {call_name:?}, expected {name:?}"),
    )?;
    ensure(
        call_args == args,
        format!("the call's arguments are {call_args}, expected {args}"),
    )?;
    ensure(
        call_id == result_id,
        format!("the call id {call_id:?} and the result's id {result_id:?} differ"),
    )?;
    let issued = sim_call_id(format);
    ensure(
        call_id == issued,
        format!("the call id sent back is {call_id:?}, not the provider's own {issued:?}"),
    )?;
    ensure(
        result_text.contains(result_has),
        format!("the tool result {result_text:?} does not contain {result_has:?}"),
    )
}

fn check_codex_reply(events: &[Value], needle: &str) -> Result<(), String> {
    let messages: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
        .filter_map(|e| e["item"]["text"].as_str())
        .collect();
    ensure(
        messages
            .iter()
            .any(|m| m.contains(REPLY) && m.contains(needle)),
        format!("no agent_message with {REPLY:?} and {needle:?}: {messages:?}"),
    )?;
    let done = events.iter().find(|e| e["type"] == "turn.completed");
    let usage = done.map(|e| &e["usage"]);
    ensure(
        usage.is_some_and(|u| u["output_tokens"].as_u64().unwrap_or(0) > 0),
        format!("no turn.completed with output tokens: {usage:?}"),
    )?;
    ensure(
        !events
            .iter()
            .any(|e| e["type"] == "turn.failed" || e["type"] == "error"),
        "codex reported an error event",
    )
}

fn check_codex_command(events: &[Value]) -> Result<(), String> {
    let ran = events
        .iter()
        .find(|e| e["type"] == "item.completed" && e["item"]["type"] == "command_execution");
    let Some(ran) = ran else {
        return Err("codex ran no command".into());
    };
    let item = &ran["item"];
    ensure(
        item["exit_code"] == 0
            && item["aggregated_output"]
                .as_str()
                .is_some_and(|o| o.trim() == "hi"),
        format!("the command did not print hi: {item}"),
    )
}

fn check_claude_result(out: &Value, needle: &str, turns: u64) -> Result<(), String> {
    let result = out["result"].as_str().unwrap_or_default();
    ensure(
        result.contains(REPLY) && result.contains(needle),
        format!("the result {result:?} lacks {REPLY:?} or {needle:?}"),
    )?;
    ensure(
        out["subtype"] == "success",
        format!("subtype {}", out["subtype"]),
    )?;
    ensure(
        out["num_turns"] == turns,
        format!("num_turns {}, expected {turns}", out["num_turns"]),
    )?;
    ensure(
        out["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        format!("no output tokens in {}", out["usage"]),
    )?;
    let denials = &out["permission_denials"];
    ensure(
        denials.as_array().is_none_or(|d| d.is_empty()),
        format!("permission denials: {denials}"),
    )
}

/// What `curl -i` printed: the status line, the headers (names lower-cased) and the body.
struct Curled {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curled {
    fn parse(out: &str) -> Option<Curled> {
        let (head, body) = out.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines.next()?.trim().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Curled {
            status,
            headers,
            body: body.to_string(),
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// An HTTP/2 answer as curl saw it: `HTTP/2 200`, the X-Flux headers, and the reply (in a
/// stream: `data:` events ending with `[DONE]`, and the cost line).
fn check_curled(c: &Curled, stream: bool) -> Result<(), String> {
    ensure(
        c.status == "HTTP/2 200",
        format!("status line {:?}", c.status),
    )?;
    let id = c.header("x-flux-request-id");
    ensure(id.starts_with("req_"), format!("X-Flux-Request-Id {id:?}"))?;
    let model = c.header("x-flux-model");
    ensure(
        model == "flux-pinned-alpha",
        format!("X-Flux-Model {model:?}"),
    )?;
    let lane = c.header("x-flux-lane");
    ensure(lane == "express", format!("X-Flux-Lane {lane:?}"))?;
    if !stream {
        ensure(
            c.header("content-type") == "application/json",
            format!("content-type {:?}", c.header("content-type")),
        )?;
        let cost = c.header("x-flux-cost-usd");
        ensure(
            cost.parse::<f64>().is_ok_and(|v| v > 0.0),
            format!("X-Flux-Cost-Usd {cost:?}"),
        )?;
        let v: Value =
            serde_json::from_str(&c.body).map_err(|e| format!("body is not JSON ({e})"))?;
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        return ensure(text.contains(REPLY), format!("reply {text:?}"));
    }
    ensure(
        c.header("content-type") == "text/event-stream",
        format!("content-type {:?}", c.header("content-type")),
    )?;
    let data: Vec<&str> = c
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    ensure(
        data.last() == Some(&"[DONE]"),
        format!("the stream does not end with [DONE]: {:?}", c.body),
    )?;
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    ensure(
        data.len() > 3 && text.contains(REPLY),
        format!("{} events, text {text:?}", data.len()),
    )?;
    let cost = c
        .body
        .lines()
        .find_map(|l| l.strip_prefix(": x-flux-cost-usd="));
    ensure(
        cost.and_then(|l| l.split(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0),
        format!("no cost line in the stream: {:?}", c.body),
    )
}

/// Every request of an SDK run came over the HTTP version it should: HTTP/2 with `--http2`
/// (ALPN over TLS), else HTTP/1.1 (the SDKs' default).
fn check_http_version(out: &Value, args: &[&str]) -> Result<(), String> {
    let want = if args.contains(&"--http2") {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    };
    for h in out["requests"].as_array().into_iter().flatten() {
        let got = h["http_version"].as_str().unwrap_or_default();
        ensure(got == want, format!("served over {got:?}, expected {want}"))?;
    }
    Ok(())
}

// --- the cells -------------------------------------------------------------------------------

async fn openai_python(name: &'static str, format: &'static str) {
    let mut cell = Cell::start(name, format).await;
    cell.sdk_text("chat stream", &["chat-stream"]).await;
    cell.sdk_tool("chat tool round trip", &["chat-tool"]).await;
    cell.sdk_tool("chat tool round trip (stream)", &["chat-tool", "--stream"])
        .await;
    cell.sdk_text("responses stream", &["responses-stream"])
        .await;
    cell.sdk_tool("responses tool round trip", &["responses-tool"])
        .await;
    cell.sdk_tool(
        "responses tool round trip (stream)",
        &["responses-tool", "--stream"],
    )
    .await;
    cell.finish();
}

async fn anthropic_python(name: &'static str, format: &'static str) {
    let mut cell = Cell::start(name, format).await;
    cell.sdk_text("messages stream (Bearer)", &["messages-stream"])
        .await;
    cell.sdk_text(
        "messages stream (x-api-key)",
        &["messages-stream", "--auth", "x-api-key"],
    )
    .await;
    cell.sdk_tool("messages tool round trip (Bearer)", &["messages-tool"])
        .await;
    cell.sdk_tool(
        "messages tool round trip (stream, x-api-key)",
        &["messages-tool", "--stream", "--auth", "x-api-key"],
    )
    .await;
    cell.finish();
}

async fn codex_cli(name: &'static str, format: &'static str) {
    let mut cell = Cell::start(name, format).await;
    cell.codex_plain().await;
    cell.codex_tool().await;
    cell.finish();
}

async fn claude_code(name: &'static str, format: &'static str) {
    let mut cell = Cell::start(name, format).await;
    cell.claude_plain().await;
    cell.claude_tool().await;
    cell.finish();
}

// --- the cells at the edge: TLS with a test CA, HTTP/2 ------------------------------------------

async fn openai_python_over_tls() {
    let mut cell = Cell::start_tls("openai_python_over_tls", "openai").await;
    cell.sdk_text("chat over TLS", &["chat"]).await;
    cell.sdk_text("chat stream over TLS", &["chat-stream"])
        .await;
    cell.sdk_text("chat over TLS, HTTP/2", &["chat", "--http2"])
        .await;
    cell.sdk_text("chat stream over TLS, HTTP/2", &["chat-stream", "--http2"])
        .await;
    cell.sdk_text(
        "responses stream over TLS, HTTP/2",
        &["responses-stream", "--http2"],
    )
    .await;
    cell.sdk_refused("chat over TLS without the CA", &["chat"])
        .await;
    cell.finish();
}

async fn anthropic_python_over_tls() {
    let mut cell = Cell::start_tls("anthropic_python_over_tls", "openai").await;
    cell.sdk_text("messages over TLS", &["messages"]).await;
    cell.sdk_text("messages stream over TLS", &["messages-stream"])
        .await;
    cell.sdk_text(
        "messages over TLS, HTTP/2 (x-api-key)",
        &["messages", "--http2", "--auth", "x-api-key"],
    )
    .await;
    cell.sdk_text(
        "messages stream over TLS, HTTP/2",
        &["messages-stream", "--http2"],
    )
    .await;
    cell.sdk_refused("messages over TLS without the CA", &["messages"])
        .await;
    cell.finish();
}

#[tokio::test]
async fn openai_python_over_tls_and_http2() {
    openai_python_over_tls().await;
}

#[tokio::test]
async fn anthropic_python_over_tls_and_http2() {
    anthropic_python_over_tls().await;
}

#[tokio::test]
async fn httpx_with_http2_over_tls() {
    let mut cell = Cell::start_tls("httpx_with_http2_over_tls", "openai").await;
    cell.httpx_h2("httpx2 http2=True, plain and streamed").await;
    cell.finish();
}

#[tokio::test]
async fn curl_http2_over_tls_and_h2c_prior_knowledge() {
    let mut cell = Cell::start_tls("curl_http2_over_tls_and_h2c", "openai").await;
    let tls = cell.base.clone();
    let edge = cell.edge.as_ref().unwrap();
    let ca = edge.ca_file.display().to_string();
    let h2c = edge.h2c_base.clone();
    cell.curl_http2("--http2 --cacert", &tls, &["--http2", "--cacert", &ca]);
    cell.curl_http2(
        "--http2-prior-knowledge (h2c)",
        &h2c,
        &["--http2-prior-knowledge"],
    );
    cell.curl_refused(&tls);
    cell.finish();
}

#[tokio::test]
async fn codex_cli_over_tls() {
    let mut cell = Cell::start_tls("codex_cli_over_tls", "openai_responses").await;
    cell.codex_plain().await;
    cell.codex_tool().await;
    cell.codex_refused().await;
    cell.finish();
}

#[tokio::test]
async fn claude_code_over_tls() {
    let mut cell = Cell::start_tls("claude_code_over_tls", "anthropic").await;
    cell.claude_plain().await;
    cell.claude_tool().await;
    cell.claude_refused().await;
    cell.finish();
}

macro_rules! cell {
    ($test:ident, $client:ident, $format:literal) => {
        #[tokio::test]
        async fn $test() {
            $client(stringify!($test), $format).await;
        }
    };
}

cell!(openai_python_via_openai_provider, openai_python, "openai");
cell!(
    openai_python_via_responses_provider,
    openai_python,
    "openai_responses"
);
cell!(
    openai_python_via_anthropic_provider,
    openai_python,
    "anthropic"
);
cell!(
    anthropic_python_via_openai_provider,
    anthropic_python,
    "openai"
);
cell!(
    anthropic_python_via_responses_provider,
    anthropic_python,
    "openai_responses"
);
cell!(
    anthropic_python_via_anthropic_provider,
    anthropic_python,
    "anthropic"
);
cell!(codex_cli_via_openai_provider, codex_cli, "openai");
cell!(
    codex_cli_via_responses_provider,
    codex_cli,
    "openai_responses"
);
cell!(codex_cli_via_anthropic_provider, codex_cli, "anthropic");
cell!(claude_code_via_openai_provider, claude_code, "openai");
cell!(
    claude_code_via_responses_provider,
    claude_code,
    "openai_responses"
);
cell!(claude_code_via_anthropic_provider, claude_code, "anthropic");

#[test]
fn sdk_driver_scenarios_match_this_test() {
    // The tool constants above are repeated in sdk.py; a change to one side must follow.
    let src = std::fs::read_to_string(repo().join("tests/clients/sdk.py")).unwrap();
    assert!(src.contains(&format!("TOOL_NAME = \"{SDK_TOOL}\"")));
    assert!(src.contains(&format!("TOOL_RESULT = \"{SDK_TOOL_RESULT}\"")));
}
