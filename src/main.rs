//! The `fluxrouter` command: serve, demo, check, keys, simulate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use fluxrouter::config::server::BaseUrl;
use fluxrouter::config::{KeyStatus, KeysFile, ServerConfig};
use fluxrouter::server::{self, RunOptions};
use fluxrouter::state::{self, AppState};
use fluxrouter::upstream::Providers;

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
    /// Revoke a key by name or id.
    Revoke { name: String },
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn serve(config_path: &Path, options: RunOptions) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    start(config, options)
}

fn start(config: ServerConfig, options: RunOptions) -> CliResult {
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

/// Serialize writers of the keys file across processes.
fn lock_keys_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    lock.lock()?;
    Ok(lock)
}

fn keys(config_path: &Path, action: KeysAction) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let path = &config.keys_file;
    let _lock = lock_keys_file(path)?;
    let mut file = KeysFile::load(path)?;
    match action {
        KeysAction::New { plan, name } => {
            if !config.plans.contains_key(&plan) {
                let known: Vec<&String> = config.plans.keys().collect();
                return Err(format!("unknown plan '{plan}' (plans: {known:?})").into());
            }
            if file.keys.iter().any(|k| k.name == name) {
                return Err(format!("a key named '{name}' already exists").into());
            }
            let (key, record) = fluxrouter::auth::new_key(&name, &plan, now());
            let id = record.id.clone();
            file.keys.push(record);
            file.save(path)?;
            eprintln!("created {id} ({name}, plan {plan}); the key is shown once:");
            println!("{key}");
        }
        KeysAction::Revoke { name } => {
            let record = file
                .keys
                .iter_mut()
                .find(|k| k.name == name || k.id == name)
                .ok_or_else(|| format!("no key named '{name}'"))?;
            record.status = KeyStatus::Revoked;
            let id = record.id.clone();
            file.save(path)?;
            println!("revoked {id} ({name})");
        }
        KeysAction::List => {
            for k in &file.keys {
                println!("{}\t{}\t{}\t{:?}", k.id, k.name, k.plan, k.status);
            }
        }
    }
    Ok(())
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

const DEMO_CONFIG: &str = include_str!("../conf/fluxrouter.yaml");
const DEMO_LANES: &str = include_str!("../lanes.yaml");

/// The embedded default: shipped lanes and plans, every provider pointed at an in-process
/// simulated provider, and a new key on the pay-as-you-go plan.
fn demo(listen: SocketAddr) -> CliResult {
    let sim = fluxrouter::simulate::spawn_background("127.0.0.1:0".parse()?)?;
    let dir = std::env::temp_dir().join(format!("fluxrouter-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lanes = dir.join("lanes.yaml");
    std::fs::write(&lanes, DEMO_LANES)?;
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
    let (key, record) = fluxrouter::auth::new_key("demo", "payg", now());
    KeysFile { keys: vec![record] }.save(&config.keys_file)?;

    println!(
        "FluxRouter demo: simulated provider on http://{sim}, files in {}",
        dir.display()
    );
    println!("Demo key (plan payg): {key}");
    println!("Try:");
    println!(
        "  curl -i http://{listen}/v1/chat/completions -H \"Authorization: Bearer {key}\" \
         -H \"Content-Type: application/json\" \
         -d '{{\"model\":\"flux-auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"ping\"}}]}}'"
    );
    start(config, RunOptions::default())
}
