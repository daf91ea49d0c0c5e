//! `fluxrouter keys`: create, revoke, suspend, resume, re-plan and list client keys, and
//! wait for the running gateway to load the change.

use std::net::SocketAddr;
use std::path::Path;

use clap::Subcommand;

use fluxrouter::auth;
use fluxrouter::config::{KeyStatus, KeysFile, ServerConfig};
use fluxrouter::errors::{Context, Error, Fault};
use fluxrouter::state;
use fluxrouter::units::clock::unix_now;

use super::CliResult;

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create a key; it is printed once and never stored. With `--plan` the key is an
    /// account of its own; with `--account` it joins that account (`keys account`).
    New {
        #[arg(long, required_unless_present = "account", conflicts_with = "account")]
        plan: Option<String>,
        #[arg(long)]
        name: String,
        /// The account (`acct_…` id or name) the key belongs to.
        #[arg(long)]
        account: Option<String>,
        /// The key's own monthly spend limit in USD, within its account's.
        #[arg(long)]
        monthly_limit: Option<fluxrouter::units::Usd>,
    },
    /// Create an account that owns keys (`keys new --account`); prints its id.
    Account {
        #[arg(long)]
        name: String,
        #[arg(long)]
        plan: String,
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

pub fn keys(config_path: &Path, action: KeysAction) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let path = &config.keys_file;
    let plans: Vec<&str> = config.plans.keys().map(String::as_str).collect();
    // Every change is checked as the gateway will load it, so it never writes a file the
    // gateway refuses.
    let edit = |change: &dyn Fn(&mut KeysFile) -> Result<String, Error>| {
        KeysFile::edit(path, |f| {
            let out = change(f)?;
            state::keys_table(&config, f).context(Fault::Invalid, "the gateway would refuse it")?;
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
        KeysAction::New {
            plan,
            name,
            account,
            monthly_limit,
        } => {
            let (key, mut record) =
                auth::new_key(&name, plan.as_deref().unwrap_or_default(), unix_now());
            record.monthly_limit_usd = monthly_limit;
            let id = record.id.clone();
            let owner = edit(&|f| {
                let mut record = record.clone();
                if let Some(account) = &account {
                    let found = f.find_account(account)?;
                    record.account = Some(found.id.clone());
                }
                let owner = record.account_id();
                f.add(record, &plans)?;
                Ok(owner)
            })?;
            let confirmed = confirm_keys_loaded(&config);
            eprintln!("created {id} ({name}, account {owner}); the key is shown once:");
            println!("{key}");
            return confirmed;
        }
        KeysAction::Account { name, plan } => {
            let account = auth::new_account(&name, &plan, unix_now());
            let id = account.id.clone();
            edit(&|f| {
                f.add_account(account.clone(), &plans)
                    .map(|()| String::new())
            })?;
            eprintln!("created account {id} ({name}, plan {plan})");
            println!("{id}");
            return confirm_keys_loaded(&config);
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
            let file = KeysFile::load(path)?;
            for a in &file.accounts {
                println!("{}\t{}\t{}\taccount", a.id, a.name, a.plan);
            }
            for k in &file.keys {
                let plan = match &k.account {
                    Some(account) => account.as_str(),
                    None => k.plan.as_str(),
                };
                println!("{}\t{}\t{}\t{:?}", k.id, k.name, plan, k.status);
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
/// now, and the key store's latest changes: it is asked through its admin listener (`POST
/// /admin/v1/keys/reload`, with the admin token from the environment), so that a new key
/// works, and a revoked one is refused, the moment the command returns. When no gateway runs, or it cannot be asked, says so on
/// stderr (its file watcher loads the change within a second); an error when the gateway
/// answers but has not loaded it.
pub(super) fn confirm_keys_loaded(config: &ServerConfig) -> CliResult {
    let Some(admin) = &config.admin else {
        eprintln!(
            "note: no admin listener is configured, so a running gateway cannot be asked to \
             load the change now; its file watcher loads it within a second"
        );
        return Ok(());
    };
    let token = std::env::var(&admin.token_env).unwrap_or_default();
    // Asked in plaintext HTTP/1.1: a TLS or PROXY-protocol admin listener is left to the
    // file watcher.
    let Some(listen) = admin
        .listen
        .iter()
        .find(|l| l.tls.is_none() && !l.proxy_protocol)
        .map(|l| l.address)
    else {
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
