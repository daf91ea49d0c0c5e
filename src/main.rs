//! The `fluxrouter` command: argument parsing and dispatch; the commands are in [`cli`]
//! (serve, demo, check, keys, usage, route, simulate).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use fluxrouter::server::RunOptions;

use cli::keys::KeysAction;

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
    /// Manage accounts and their keys in the key store (one row per change, served by a
    /// running gateway within a quarter of a second).
    Accounts {
        #[command(subcommand)]
        action: cli::accounts::AccountsAction,
    },
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check) => cli::check::check(&cli.config),
        Some(Command::Accounts { action }) => cli::accounts::accounts(&cli.config, action),
        Some(Command::Keys { action }) => cli::keys::keys(&cli.config, action),
        Some(Command::Usage {
            key,
            month,
            json,
            node,
            by_day,
        }) => cli::usage::usage(&cli.config, key, month, json, node, by_day),
        Some(Command::Route {
            explain,
            eval,
            train,
            out,
            lanes,
        }) => cli::route::route(&cli.config, explain, eval, train, out, lanes),
        Some(Command::Simulate { listen }) => cli::simulate::simulate(listen),
        None if cli.demo => cli::demo::demo(cli.listen),
        None => cli::serve::serve(
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
