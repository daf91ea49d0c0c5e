//! The `fluxrouter` command: serve, demo, check, keys, usage, simulate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use fluxrouter::config::server::BaseUrl;
use fluxrouter::config::{KeyStatus, KeysFile, ServerConfig};
use fluxrouter::metering::ledger::{LedgerReader, ReportRow};
use fluxrouter::server::{self, RunOptions};
use fluxrouter::state::{self, AppState};
use fluxrouter::units::clock::unix_now;
use fluxrouter::units::{Month, Usd};
use fluxrouter::upstream::Providers;

/// jemalloc returns memory after bursts of large request bodies where glibc's malloc keeps
/// much of it (README: measured with 40 concurrent 30 MB uploads). Chosen by the program, not
/// the library: a crate that links the library (a bench, another binary) picks its own.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "fluxrouter",
    version,
    about = "An OpenAI- and Anthropic-compatible LLM gateway"
)]
struct Cli {
    /// Server configuration file.
    #[arg(
        long,
        global = true,
        env = "FLUX_CONFIG",
        default_value = "conf/fluxrouter.yaml"
    )]
    config: PathBuf,
    /// Serve an embedded default: the built-in simulated provider, a fresh demo key.
    #[arg(long)]
    demo: bool,
    /// With --demo: where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Take over the listeners of a running instance (zero-downtime upgrade; then SIGQUIT the old one).
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the server configuration, lanes.yaml and the keys file; non-zero exit on a problem.
    Check,
    /// Manage client keys (only their SHA-256 is stored).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Spend, requests and tokens by key, lane and model for a month, from the ledger file
    /// (safe while the gateway runs), or in fleet mode from the fleet's shared ledger (Redis).
    Usage {
        /// In fleet mode: this gateway's own record (its ledger file) instead of the fleet's;
        /// the fleet's spend is the sum of every gateway's record.
        #[arg(long)]
        node: bool,
        /// Requests and spend by UTC day instead of by key, lane and model (from the ledger
        /// file: in fleet mode, with --node).
        #[arg(long)]
        by_day: bool,
        /// Only this key: its name in the keys file, or its id.
        #[arg(long)]
        key: Option<String>,
        /// The month, YYYY-MM (default: the current month, UTC).
        #[arg(long)]
        month: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// flux-auto's routing: explain one decision, score a labelled file, or train the
    /// classifier.
    Route {
        /// A request body (Chat Completions, Responses or Anthropic Messages; `-` for stdin):
        /// print the lane, each lane's score, the features that weighed most, the rule.
        #[arg(long, conflicts_with_all = ["eval", "train"])]
        explain: Option<PathBuf>,
        /// A JSONL file of `{"lane": ..., "request": {...}}`: accuracy, under-routing, cost
        /// index against always-daily, and the confusion matrix.
        #[arg(long, conflicts_with = "train")]
        eval: Option<PathBuf>,
        /// Train the classifier from this corpus folder (requests/*.jsonl, docs/*.txt) and
        /// write the weights file, unless it under-routes on the held-out split.
        #[arg(long)]
        train: Option<PathBuf>,
        /// With --train: where to write the weights (default: the file lanes.yaml names).
        #[arg(long)]
        out: Option<PathBuf>,
        /// lanes.yaml to route with (default: the one the server configuration names).
        #[arg(long)]
        lanes: Option<PathBuf>,
    },
    /// Run the simulated OpenAI-compatible provider.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; it is printed once and never stored.
    New {
        #[arg(long)]
        plan: String,
        #[arg(long)]
        name: String,
    },
    /// Revoke a key by name or id, for good.
    Revoke { name: String },
    /// Suspend a key by name or id (`resume` undoes it).
    Suspend { name: String },
    /// Let a suspended key work again.
    Resume { name: String },
    /// Move a key to another plan.
    Plan {
        name: String,
        #[arg(long)]
        plan: String,
    },
    /// List keys (ids, names, plans, status; never keys).
    List,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Keys { action }) => keys(&cli.config, action),
        Some(Command::Usage {
            key,
            month,
            json,
            node,
            by_day,
        }) => usage(&cli.config, key, month, json, node, by_day),
        Some(Command::Route {
            explain,
            eval,
            train,
            out,
            lanes,
        }) => route(&cli.config, explain, eval, train, out, lanes),
        Some(Command::Simulate { listen }) => simulate(listen),
        None if cli.demo => demo(cli.listen),
        None => serve(
            &cli.config,
            RunOptions {
                upgrade: cli.upgrade,
                daemon: cli.daemon,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxrouter: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn serve(config_path: &Path, options: RunOptions) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    start(config, options)
}

fn start(config: ServerConfig, mut options: RunOptions) -> CliResult {
    if options.daemon {
        // Before AppState starts its threads (see `server::daemonize`).
        fluxrouter::server::daemonize(&config.server)?;
        options.daemon = false;
    }
    let (state, warnings) = AppState::load(config)?;
    for w in warnings {
        log::warn!("{w}");
    }
    log::info!(
        "FluxRouter {} listening on {:?}",
        env!("CARGO_PKG_VERSION"),
        state.config.listen
    );
    server::run(Arc::new(state), options);
    Ok(())
}

fn check(config_path: &Path) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let (providers, warnings) = Providers::build(&config, &|var| std::env::var(var).ok());
    if let Some(admin) = &config.admin {
        admin.tokens(&|var| std::env::var(var).ok())?;
    }
    let routes = state::load_routes(&config, &providers)?;
    let keys = state::load_keys(&config)?;
    for w in warnings {
        println!("warning: {w}");
    }
    println!(
        "ok: {} ({} providers, {} plans), {} ({} lanes, {} models, {} rules), {} ({} keys)",
        config_path.display(),
        config.providers.len(),
        config.plans.len(),
        config.lanes_file.display(),
        routes.lanes().len(),
        routes.models().len(),
        routes.rules().len(),
        config.keys_file.display(),
        keys.len()
    );
    Ok(())
}

fn keys(config_path: &Path, action: KeysAction) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let path = &config.keys_file;
    let plans: Vec<&str> = config.plans.keys().map(String::as_str).collect();
    // Every change is checked as the gateway will load it, so it never writes a file the
    // gateway refuses.
    let edit = |change: &dyn Fn(&mut KeysFile) -> Result<String, String>| {
        KeysFile::edit(path, |f| {
            let out = change(f)?;
            state::keys_table(&config, f).map_err(|e| e.to_string())?;
            Ok(out)
        })
    };
    let status = |name: &str, status: KeyStatus| {
        edit(&|f| {
            f.set_status(name, status)?;
            Ok(f.find_mut(name)?.id.clone())
        })
    };
    // What is printed once the running gateway has the change (or none runs).
    let done: String = match action {
        KeysAction::New { plan, name } => {
            let (key, record) = fluxrouter::auth::new_key(&name, &plan, unix_now());
            let id = record.id.clone();
            edit(&|f| f.add(record.clone(), &plans).map(|()| String::new()))?;
            let confirmed = confirm_keys_loaded(&config);
            eprintln!("created {id} ({name}, plan {plan}); the key is shown once:");
            println!("{key}");
            return confirmed;
        }
        KeysAction::Revoke { name } => {
            format!("revoked {} ({name})", status(&name, KeyStatus::Revoked)?)
        }
        KeysAction::Suspend { name } => {
            format!(
                "suspended {} ({name})",
                status(&name, KeyStatus::Suspended)?
            )
        }
        KeysAction::Resume { name } => {
            format!("resumed {} ({name})", status(&name, KeyStatus::Active)?)
        }
        KeysAction::Plan { name, plan } => {
            let id = edit(&|f| {
                f.set_plan(&name, &plan, &plans)?;
                Ok(f.find_mut(&name)?.id.clone())
            })?;
            format!("{id} ({name}) is now on plan {plan}")
        }
        KeysAction::List => {
            for k in &KeysFile::load(path)?.keys {
                println!("{}\t{}\t{}\t{:?}", k.id, k.name, k.plan, k.status);
            }
            return Ok(());
        }
    };
    let confirmed = confirm_keys_loaded(&config);
    println!("{done}");
    confirmed
}

/// How long `fluxrouter keys` waits for the running gateway to load its change.
const KEYS_RELOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait until the gateway this configuration describes has loaded the keys file as it is
/// now: it is asked through its admin listener (`POST /admin/v1/keys/reload`, with the admin
/// token from the environment), so that a new key works, and a revoked one is refused, the
/// moment the command returns. When no gateway runs, or it cannot be asked, says so on
/// stderr (its file watcher loads the change within a second); an error when the gateway
/// answers but has not loaded it.
fn confirm_keys_loaded(config: &ServerConfig) -> CliResult {
    let Some(admin) = &config.admin else {
        eprintln!(
            "note: no admin listener is configured, so a running gateway cannot be asked to \
             load the change now; its file watcher loads it within a second"
        );
        return Ok(());
    };
    let token = std::env::var(&admin.token_env).unwrap_or_default();
    let Some(&listen) = admin.listen.first() else {
        return Ok(());
    };
    if token.is_empty() {
        eprintln!(
            "note: {} is not set, so the running gateway cannot be asked to load the change \
             now; its file watcher loads it within a second",
            admin.token_env
        );
        return Ok(());
    }
    // The admin listener on all addresses is reached on loopback.
    let addr = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        ip if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    let not_loaded = |why: String| -> Box<dyn std::error::Error> {
        format!(
            "{} is written, but the gateway at {addr} has not loaded it: {why}",
            config.keys_file.display()
        )
        .into()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = std::time::Instant::now() + KEYS_RELOAD_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let answer = runtime
            .block_on(async { tokio::time::timeout(left, post_keys_reload(addr, &token)).await });
        let (status, body) = match answer {
            Err(_) => return Err(not_loaded("no answer in time".into())),
            Ok(Err(e)) if *e.etype() == pingora::ErrorType::ConnectRefused => {
                eprintln!(
                    "note: no gateway is running at {addr}; the change applies when it starts"
                );
                return Ok(());
            }
            Ok(Err(e)) => return Err(not_loaded(e.to_string())),
            Ok(Ok(answer)) => answer,
        };
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != 200 {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            return Err(not_loaded(format!("{status} {message}")));
        }
        // The file as it is now: a later change (under the same lock) includes this one.
        let on_disk = std::fs::read(&config.keys_file)
            .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)))
            .ok();
        let loaded = body["sha256"].as_str();
        if loaded.is_some() && loaded == on_disk.as_deref() {
            eprintln!(
                "loaded by the gateway at {addr} ({} keys)",
                body["keys"].as_u64().unwrap_or_default()
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(not_loaded(format!(
                "it uses another keys file (sha256 {}): does it run with this configuration?",
                loaded.unwrap_or("none")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `POST /admin/v1/keys/reload` on the admin listener at `addr`: its status and body.
async fn post_keys_reload(addr: SocketAddr, token: &str) -> pingora::Result<(u16, Vec<u8>)> {
    use pingora::http::RequestHeader;
    let connector = pingora::connectors::http::Connector::new(None);
    let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
    let (mut session, _) = connector.get_http_session(&peer).await?;
    let path = fluxrouter::gateway::admin::RELOAD_KEYS;
    let mut request = RequestHeader::build("POST", path.as_bytes(), None)?;
    request.insert_header("host", addr.to_string())?;
    request.insert_header("authorization", format!("Bearer {token}"))?;
    request.insert_header("content-length", "0")?;
    session.write_request_header(Box::new(request)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

fn usage(
    config_path: &Path,
    key: Option<String>,
    month: Option<String>,
    json: bool,
    node: bool,
    by_day: bool,
) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let month = match month {
        Some(m) => m.parse::<Month>()?,
        None => Month::of(unix_now()),
    };
    // Names are a convenience: a broken keys file still leaves the ids to show.
    let keys = KeysFile::load(&config.keys_file).unwrap_or_else(|e| {
        eprintln!("warning: {e}; showing key ids");
        KeysFile::default()
    });
    let key_id = key.map(|k| {
        keys.keys
            .iter()
            .find(|r| r.name == k)
            .map_or(k, |r| r.id.clone())
    });
    if by_day {
        if config.redis.is_some() && !node {
            return Err(
                "--by-day reads a gateway's own ledger: in fleet mode add --node (the \
                        fleet's days are the sum over its gateways)"
                    .into(),
            );
        }
        let days = LedgerReader::open(&config.ledger.path)?.days(month, key_id.as_deref())?;
        if json {
            let v = serde_json::json!({"month": month.to_string(), "days": days});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{:<10}  {:>10}  {:>14}", "day", "requests", "cost");
            for d in &days {
                println!("{:<10}  {:>10}  {:>14}", d.day, d.requests, dollars(d.cost));
            }
        }
        return Ok(());
    }
    let (rows, source) = match &config.redis {
        Some(redis) if !node => {
            let fleet = fluxrouter::fleet::Fleet::connect(redis, false)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let rows = runtime.block_on(fleet.report(month, key_id.as_deref()))?;
            (rows, "the fleet's shared ledger (Redis)".to_string())
        }
        _ => {
            let reader = LedgerReader::open(&config.ledger.path)?;
            let rows = reader.report(month, key_id.as_deref())?;
            (rows, config.ledger.path.display().to_string())
        }
    };
    let name_of = |id: &str| {
        keys.keys
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.clone())
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&usage_json(month, &rows, &name_of))?
        );
    } else if rows.is_empty() {
        println!(
            "no usage in {month}{} ({})",
            key_id.map(|k| format!(" for {k}")).unwrap_or_default(),
            source
        );
    } else {
        print!("{}", usage_table(&rows, &name_of));
    }
    Ok(())
}

fn usage_totals(rows: &[ReportRow]) -> ReportRow {
    let mut total = ReportRow::default();
    for r in rows {
        total.requests += r.requests;
        total.input_tokens += r.input_tokens;
        total.cached_input_tokens += r.cached_input_tokens;
        total.output_tokens += r.output_tokens;
        total.cost = total.cost.saturating_add(r.cost);
    }
    total
}

fn usage_json(
    month: Month,
    rows: &[ReportRow],
    name_of: &dyn Fn(&str) -> Option<String>,
) -> serde_json::Value {
    let total = usage_totals(rows);
    serde_json::json!({
        "month": month.to_string(),
        "rows": rows.iter().map(|r| serde_json::json!({
            "key_id": r.key_id,
            "key_name": name_of(&r.key_id),
            "lane": r.lane,
            "model": r.model,
            "requests": r.requests,
            "input_tokens": r.input_tokens,
            "cached_input_tokens": r.cached_input_tokens,
            "output_tokens": r.output_tokens,
            "cost_usd": r.cost,
        })).collect::<Vec<_>>(),
        "total": {
            "requests": total.requests,
            "input_tokens": total.input_tokens,
            "cached_input_tokens": total.cached_input_tokens,
            "output_tokens": total.output_tokens,
            "cost_usd": total.cost,
        },
    })
}

/// Dollars to the micro-dollar, rounded half up: `$12.345679`.
fn dollars(usd: Usd) -> String {
    let micros = usd.0 / 1_000_000 + u64::from(usd.0 % 1_000_000 >= 500_000);
    format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn usage_table(rows: &[ReportRow], name_of: &dyn Fn(&str) -> Option<String>) -> String {
    let line = |r: &ReportRow, key: String| {
        [
            key,
            r.lane.clone(),
            r.model.clone(),
            r.requests.to_string(),
            r.input_tokens.to_string(),
            r.cached_input_tokens.to_string(),
            r.output_tokens.to_string(),
            dollars(r.cost),
        ]
    };
    let mut lines = vec![[
        "KEY", "LANE", "MODEL", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "SPEND",
    ]
    .map(String::from)];
    for r in rows {
        lines.push(line(
            r,
            name_of(&r.key_id).unwrap_or_else(|| r.key_id.clone()),
        ));
    }
    lines.push(line(&usage_totals(rows), "TOTAL".into()));
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut text = String::new();
        for (i, (cell, w)) in l.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i < 3 {
                text.push_str(&format!("{cell:<w$}"));
            } else {
                text.push_str(&format!("{cell:>w$}"));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn simulate(listen: SocketAddr) -> CliResult {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("simulated provider on http://{}", listener.local_addr()?);
        fluxrouter::simulate::serve(listener).await
    })?;
    Ok(())
}

/// The lanes file to route with: `--lanes`, or the one the server configuration names.
fn lanes_path(
    config_path: &Path,
    lanes: Option<PathBuf>,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    match lanes {
        Some(p) => Ok(p),
        None => Ok(ServerConfig::load(config_path)?.lanes_file),
    }
}

fn route(
    config_path: &Path,
    explain: Option<PathBuf>,
    eval: Option<PathBuf>,
    train: Option<PathBuf>,
    out: Option<PathBuf>,
    lanes: Option<PathBuf>,
) -> CliResult {
    use fluxrouter::routing::classifier::{cli, train as trainer};
    use fluxrouter::routing::RouteTable;
    let read = |p: &Path| -> std::io::Result<Vec<u8>> {
        if p == Path::new("-") {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
            Ok(b)
        } else {
            std::fs::read(p)
        }
    };
    if let Some(dir) = train {
        let options = trainer::Options::default();
        let (examples, sha) = trainer::load_corpus(&dir, options.buckets)?;
        let outcome = trainer::train(&examples, &sha, &options);
        print!("{}", outcome.report);
        let out = match out {
            Some(p) => p,
            None => {
                let lanes = lanes_path(config_path, lanes)?;
                let file: fluxrouter::config::LanesFile = fluxrouter::config::read_yaml(&lanes)?;
                let weights = file
                    .auto
                    .classifier
                    .ok_or("lanes.yaml names no auto.classifier.weights; pass --out")?
                    .weights;
                lanes.parent().unwrap_or(Path::new("")).join(weights)
            }
        };
        if outcome.held_out.under_routed() > 0 {
            return Err(format!(
                "not written: {} held-out requests under-routed (see above); {} unchanged",
                outcome.held_out.under_routed(),
                out.display()
            )
            .into());
        }
        std::fs::write(&out, outcome.classifier.to_file())?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let lanes = lanes_path(config_path, lanes)?;
    let routes = RouteTable::load(&lanes, &|_| true)?;
    if let Some(file) = explain {
        print!("{}", cli::explain(&routes, &read(&file)?)?);
        return Ok(());
    }
    if let Some(file) = eval {
        let text = String::from_utf8(read(&file)?)?;
        let (tally, problems) = cli::evaluate(&routes, &text);
        for p in &problems {
            eprintln!("skipped {p}");
        }
        print!("{}", tally.report());
        if !problems.is_empty() {
            return Err(format!("{} lines could not be scored", problems.len()).into());
        }
        return Ok(());
    }
    Err("route needs --explain FILE, --eval FILE.jsonl or --train DIR".into())
}

const DEMO_CONFIG: &str = include_str!("../conf/fluxrouter.yaml");
/// The variable the demo's admin token is put in.
const DEMO_ADMIN_TOKEN_ENV: &str = "FLUX_DEMO_ADMIN_TOKEN";
const DEMO_LANES: &str = include_str!("../lanes.yaml");
/// The weights lanes.yaml names (auto.classifier.weights), written beside it.
const DEMO_CLASSIFIER: &[u8] = include_bytes!("../flux-auto.classifier.json");

/// The embedded default: shipped lanes and plans, every provider pointed at an in-process
/// simulated provider, and a new key on the pay-as-you-go plan.
fn demo(listen: SocketAddr) -> CliResult {
    // The operator console's token, in the environment as a real deployment keeps it; set
    // before any thread starts (the simulator's is the first).
    let console_token = format!("admin-{}", hex::encode(rand::random::<[u8; 16]>()));
    std::env::set_var(DEMO_ADMIN_TOKEN_ENV, &console_token);
    let sim = fluxrouter::simulate::spawn_background("127.0.0.1:0".parse()?)?;
    let dir = std::env::temp_dir().join(format!("fluxrouter-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lanes = dir.join("lanes.yaml");
    std::fs::write(&lanes, DEMO_LANES)?;
    std::fs::write(dir.join("flux-auto.classifier.json"), DEMO_CLASSIFIER)?;
    let mut config = ServerConfig::from_yaml(&dir.join("fluxrouter.yaml"), DEMO_CONFIG)?;
    config.listen = vec![listen];
    config.lanes_file = lanes;
    config.keys_file = dir.join("keys.yaml");
    config.server.pid_file = dir.join("fluxrouter.pid").display().to_string();
    config.server.upgrade_sock = dir.join("upgrade.sock").display().to_string();
    for (name, provider) in config.providers.iter_mut() {
        provider.base_url = BaseUrl::parse(&format!("http://{sim}/{name}/v1"))?;
        provider.api_key_env = None;
    }
    // The operator listener (the console) beside the client one; the demo key has a card on
    // file so every lane, premium included, can be tried.
    let admin = SocketAddr::new(listen.ip(), listen.port().checked_add(1).unwrap_or(8081));
    config.admin = Some(fluxrouter::config::server::AdminConfig {
        listen: vec![admin],
        token_env: DEMO_ADMIN_TOKEN_ENV.into(),
        metrics_token_env: DEMO_ADMIN_TOKEN_ENV.into(),
    });
    config.ledger.path = dir.join("ledger.sqlite");
    let (key, mut record) = fluxrouter::auth::new_key("demo", "payg", unix_now());
    record.payment_method = true;
    KeysFile { keys: vec![record] }.save(&config.keys_file)?;

    println!(
        "FluxRouter demo: simulated provider on http://{sim}, files in {}",
        dir.display()
    );
    println!("Demo key (plan payg): {key}");
    println!("Operator console: http://{admin}/console (admin token: {console_token})");
    println!("Try:");
    println!(
        "  curl -i http://{listen}/v1/chat/completions -H \"Authorization: Bearer {key}\" \
         -H \"Content-Type: application/json\" \
         -d '{{\"model\":\"flux-auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"ping\"}}]}}'"
    );
    start(config, RunOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, lane: &str, requests: u64, cost: u64) -> ReportRow {
        ReportRow {
            key_id: key.into(),
            lane: lane.into(),
            model: "gpt-x".into(),
            requests,
            input_tokens: requests * 1000,
            cached_input_tokens: requests * 100,
            output_tokens: requests * 10,
            cost: Usd(cost),
        }
    }

    #[test]
    fn usage_prints_names_totals_and_dollars() {
        let rows = [
            row("key_1", "fast", 3, 1_234_567_890_123),
            row("key_2", "slow", 1, 499_999),
        ];
        let name_of = |id: &str| (id == "key_1").then(|| "alice".to_string());
        let table = usage_table(&rows, &name_of);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("KEY    LANE  MODEL  REQUESTS"),
            "{table}"
        );
        assert!(lines[1].starts_with("alice  fast  gpt-x") && lines[1].ends_with("$1.234568"));
        assert!(lines[2].starts_with("key_2") && lines[2].ends_with("$0.000000"));
        assert!(lines[3].starts_with("TOTAL") && lines[3].ends_with("$1.234568"));
        assert!(lines[3].contains(" 4000 "), "{table}");

        let json = usage_json("2026-03".parse().unwrap(), &rows, &name_of);
        assert_eq!(json["month"], "2026-03");
        assert_eq!(json["rows"][0]["key_name"], "alice");
        assert!(json["rows"][1]["key_name"].is_null());
        assert_eq!(json["rows"][0]["cost_usd"], "1.234567890123");
        assert_eq!(json["total"]["cost_usd"], "1.234568390122");
        assert_eq!(json["total"]["requests"], 4);
    }

    #[test]
    fn dollars_round_to_the_micro_dollar() {
        assert_eq!(dollars(Usd(0)), "$0.000000");
        assert_eq!(dollars(Usd(500_000)), "$0.000001");
        assert_eq!(dollars(Usd(2_999_999_500_000)), "$3.000000");
        assert_eq!(dollars(Usd(12_345_678_000_000)), "$12.345678");
    }
}
