//! The snapshot the hot path reads, and the background reloader that swaps it.
//!
//! `lanes.yaml` and the keys file are compiled into a [`RouteTable`] and a [`KeyTable`], each
//! behind an `ArcSwap`. A request loads each once (lock-free) and keeps that snapshot to the
//! end, so a reload never changes a request in flight. An invalid edit is logged and the
//! previous table stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{error, info, warn};
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::access_log::AccessLog;
use crate::admission::{Admission, InProcess, SharedState};
use crate::auth::{KeyTable, Terms};
use crate::config::{ConfigError, KeysFile, ServerConfig};
use crate::limits::Limits;
use crate::metering::budget::Budget;
use crate::metering::ledger::{EmbeddedLedger, LedgerOptions};
use crate::routing::RouteTable;
use crate::upstream::Providers;

/// Everything a request needs, shared by all of them.
pub struct AppState {
    pub config: ServerConfig,
    pub providers: Providers,
    pub routes: ArcSwap<RouteTable>,
    pub keys: ArcSwap<KeyTable>,
    pub connector: Connector,
    pub access_log: AccessLog,
    /// Prometheus metrics, recorded lock-free by every request.
    pub metrics: crate::metrics::Metrics,
    /// Whether a request may go upstream: its bounds, rate limits and spend reservation,
    /// over the shared state picked at load (this process's, or the fleet's).
    pub admission: Admission,
    /// This node's own ledger file (the budget reads it through the `Ledger` trait); kept
    /// here for its writer's statistics in the metrics.
    pub ledger: Arc<EmbeddedLedger>,
    /// Fleet mode: what the gateways share through Redis.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// When lanes.yaml and the keys file were last (re)loaded, unix seconds.
    pub lanes_loaded_at: std::sync::atomic::AtomicU64,
    pub keys_loaded_at: std::sync::atomic::AtomicU64,
    /// Set when an upgrade or a shutdown begins: responses then close their connections, so
    /// clients reconnect (to the new process) instead of racing Pingora's drop of idle
    /// keep-alive connections when it stops.
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Load and validate everything; the first error stops the start.
    pub fn load(config: ServerConfig) -> Result<(Self, Vec<String>), ConfigError> {
        let (providers, warnings) = Providers::build(&config, &|var| std::env::var(var).ok());
        if let Some(admin) = &config.admin {
            admin.tokens(&|var| std::env::var(var).ok())?;
        }
        let routes = load_routes(&config, &providers)?;
        let keys = load_keys(&config)?;
        let mut connector_options =
            pingora::connectors::ConnectorOptions::new(config.server.upstream_keepalive_pool_size);
        connector_options.keepalive_pool_size = config.server.upstream_keepalive_pool_size;
        let access_log = AccessLog::open(&config.access_log.options()).map_err(|e| {
            ConfigError::new(
                Path::new(&config.access_log.destination),
                "access_log",
                format!("cannot open: {e}"),
            )
        })?;
        let ledger = EmbeddedLedger::open(
            &config.ledger.path,
            LedgerOptions::from_config(&config.ledger),
        )
        .map_err(|e| ConfigError::new(&config.ledger.path, "ledger", e.to_string()))?;
        let fleet = match &config.redis {
            Some(redis) => Some(
                crate::fleet::Fleet::connect(redis, true)
                    .map_err(|e| ConfigError::new(Path::new("redis"), "redis", e))?,
            ),
            None => None,
        };
        let ttl = config.ledger.hold_ttl_seconds;
        let ledger = Arc::new(ledger);
        let budget = Budget::new(ledger.clone(), ttl);
        let shared: Arc<dyn SharedState> = match &fleet {
            Some(fleet) => Arc::new(crate::fleet::FleetState::new(fleet.clone(), budget)),
            None => Arc::new(InProcess::new(Limits::default(), budget)),
        };
        let admission = Admission::new(shared, config.limits.max_model_id_bytes);
        let now = unix_now();
        let state = AppState {
            lanes_loaded_at: now.into(),
            keys_loaded_at: now.into(),
            fleet,
            draining: std::sync::atomic::AtomicBool::new(false),
            access_log,
            metrics: crate::metrics::Metrics::default(),
            admission,
            ledger,
            providers,
            routes: ArcSwap::from_pointee(routes),
            keys: ArcSwap::from_pointee(keys),
            connector: Connector::new(Some(connector_options)),
            config,
        };
        Ok((state, warnings))
    }

    /// Re-read lanes.yaml and swap it in if valid.
    pub fn reload_routes(&self) -> Result<(), ConfigError> {
        let table = load_routes(&self.config, &self.providers)
            .inspect_err(|_| self.metrics.reload("lanes", "failure"))?;
        self.metrics.reload("lanes", "success");
        info!(
            "reloaded {}: {} lanes, {} models, {} rules",
            self.config.lanes_file.display(),
            table.lanes().len(),
            table.models().len(),
            table.rules().len()
        );
        self.routes.store(Arc::new(table));
        self.lanes_loaded_at
            .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Re-read the keys file and swap it in if valid.
    pub fn reload_keys(&self) -> Result<(), ConfigError> {
        let table =
            load_keys(&self.config).inspect_err(|_| self.metrics.reload("keys", "failure"))?;
        self.metrics.reload("keys", "success");
        info!(
            "reloaded {}: {} keys",
            self.config.keys_file.display(),
            table.len()
        );
        self.keys.store(Arc::new(table));
        self.keys_loaded_at
            .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Compile lanes.yaml against the providers, and check that every plan's lanes exist in it
/// (at start, on every reload and in `fluxrouter check` alike: an edit that drops a lane a
/// plan relies on is refused).
pub fn load_routes(
    config: &ServerConfig,
    providers: &Providers,
) -> Result<RouteTable, ConfigError> {
    let routes = RouteTable::load(&config.lanes_file, &|name| providers.contains(name))?;
    for (name, plan) in &config.plans {
        if let Some(lane) = plan
            .lanes
            .iter()
            .find(|l| !routes.lanes().iter().any(|x| &x.name == *l))
        {
            return Err(ConfigError::new(
                &config.lanes_file,
                "lanes",
                format!("plan '{name}' uses lane '{lane}', which lanes.yaml does not define"),
            ));
        }
    }
    Ok(routes)
}

pub fn load_keys(config: &ServerConfig) -> Result<KeyTable, ConfigError> {
    let file = KeysFile::load(&config.keys_file)?;
    // Each plan compiled once, its terms shared by the accounts on it.
    let plans: std::collections::HashMap<&str, Arc<Terms>> = config
        .plans
        .iter()
        .map(|(name, plan)| (name.as_str(), Arc::new(Terms::compile(plan))))
        .collect();
    KeyTable::compile(&config.keys_file, &file, &|plan| plans.get(plan).cloned())
}

/// Watches lanes.yaml and the keys file (and SIGHUP) and swaps the tables on change.
pub struct Reloader {
    pub state: Arc<AppState>,
}

/// A file the reloader follows, with the digest of what was last applied (editors often
/// write a file several times per save; unchanged content is not reloaded).
struct Watched {
    path: PathBuf,
    digest: Option<[u8; 32]>,
}

impl Watched {
    fn new(path: &Path) -> Self {
        Watched {
            path: path.to_path_buf(),
            digest: file_digest(path),
        }
    }

    /// True when the content differs from what was last seen.
    fn changed(&mut self) -> bool {
        let now = file_digest(&self.path);
        if now == self.digest {
            return false;
        }
        self.digest = now;
        true
    }
}

fn file_digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let changed = Arc::new(Notify::new());
        // Watch the folders, not the files: editors and `keys new` replace files by rename,
        // which a watch on the old inode would miss.
        let weights_path = || {
            self.state
                .routes
                .load()
                .classifier()
                .map(|c| c.path.clone())
        };
        let mut weights = weights_path().map(|p| Watched::new(&p));
        let _watcher = match watch_folders(
            &self.state.config,
            weights.as_ref().map(|w| w.path.clone()),
            changed.clone(),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("file watching unavailable ({e}); reload with SIGHUP");
                None
            }
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut lanes = Watched::new(&self.state.config.lanes_file);
        let mut keys = Watched::new(&self.state.config.keys_file);
        let mut dns = tokio::time::interval(DNS_REFRESH);
        dns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        dns.tick().await; // the first tick is immediate; addresses were resolved at start
                          // A file may have changed between the start-up load and the watch taking effect:
                          // the first pass re-reads both, so no such edit is lost.
        let mut forced = true;
        loop {
            // The classifier's weights are part of the lanes table: either file changing
            // recompiles it (`|` so both digests are brought up to date).
            let weights_changed = weights.as_mut().is_some_and(Watched::changed);
            if lanes.changed() | weights_changed || forced {
                if let Err(e) = self.state.reload_routes() {
                    error!("{e}; keeping the previous lanes table");
                }
                let now = weights_path();
                if now.as_ref() != weights.as_ref().map(|w| &w.path) {
                    weights = now.map(|p| Watched::new(&p));
                }
            }
            if keys.changed() || forced {
                if let Err(e) = self.state.reload_keys() {
                    error!("{e}; keeping the previous keys table");
                }
            }
            forced = loop {
                tokio::select! {
                    _ = changed.notified() => break false,
                    Some(_) = async { match hangup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => break true,
                    _ = dns.tick() => self.refresh_addresses().await,
                    _ = shutdown.changed() => return,
                }
            };
            // Let a burst of write events settle before reading.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How often provider host names are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(60);

impl Reloader {
    async fn refresh_addresses(&self) {
        for provider in self.state.providers.iter() {
            match provider.refresh_address().await {
                Ok(Some(addr)) => info!(
                    "provider {}: {} now resolves to {addr}",
                    provider.name, provider.base.host
                ),
                Ok(None) => {}
                Err(e) => warn!(
                    "provider {}: cannot resolve {}: {e}",
                    provider.name, provider.base.host
                ),
            }
        }
    }
}

/// Watch the folders of lanes.yaml, the keys file and the classifier's weights (as named at
/// start; a weights file moved elsewhere later is reloaded with SIGHUP).
fn watch_folders(
    config: &ServerConfig,
    weights: Option<PathBuf>,
    changed: Arc<Notify>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let watched: Vec<PathBuf> = [config.lanes_file.clone(), config.keys_file.clone()]
        .into_iter()
        .chain(weights)
        .collect();
    let files: Vec<PathBuf> = watched
        .iter()
        .filter_map(|p| p.file_name().map(PathBuf::from))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Reading a file raises access events; reacting to those would make the
            // reloader's own reads wake it again, forever.
            if !(event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove()) {
                return;
            }
            let ours = event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| files.iter().any(|f| f.as_os_str() == n))
            });
            if ours {
                changed.notify_one();
            }
        }
    })?;
    let mut folders: Vec<PathBuf> = Vec::new();
    for file in &watched {
        let folder = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !folders.contains(&folder) {
            if let Err(e) = std::fs::create_dir_all(&folder) {
                warn!("cannot create {}: {e}", folder.display());
            }
            watcher.watch(&folder, RecursiveMode::NonRecursive)?;
            folders.push(folder);
        }
    }
    Ok(watcher)
}
