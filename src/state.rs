//! The snapshot the hot path reads, and the background reloader that swaps it.
//!
//! `lanes.yaml` and the keys file are compiled into a [`RouteTable`] and a [`KeyTable`], each
//! behind an `ArcSwap`. A request loads each once (lock-free) and keeps that snapshot to the
//! end, so a reload never changes a request in flight. An invalid edit is logged and the
//! previous table stays.
//!
//! The keys file is read only once it is whole: a file that a writer still has open is not
//! read (the watcher sees the writer's close), what is read must stay the same for a moment
//! (a writer the watcher cannot see), and a missing or empty file is refused like an invalid
//! one, so that neither a half-written file nor a deleted one logs anyone out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
use crate::file_watch::{FileEvent, FileWatch};
use crate::limits::Limits;
use crate::metering::budget::Budget;
use crate::metering::ledger::{EmbeddedLedger, LedgerOptions};
use crate::routing::RouteTable;
use crate::units::clock::unix_now;
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
    /// The key store: accounts and keys created one row at a time, served beside the keys
    /// file's; other processes' changes arrive through its feed ([`AppState::follow_key_store`]).
    pub directory: Arc<crate::accounts::Directory>,
    /// The low-priority thread the management API's key store operations run on.
    pub management: crate::background::Worker,
    /// Each plan's compiled terms, for the key store's accounts.
    pub plan_terms: std::collections::HashMap<String, Arc<Terms>>,
    /// When lanes.yaml and the keys file were last (re)loaded, unix seconds.
    pub lanes_loaded_at: std::sync::atomic::AtomicU64,
    pub keys_loaded_at: std::sync::atomic::AtomicU64,
    /// Serializes the keys file's reloads (watcher, SIGHUP, console, admin endpoint), and
    /// knows what the table in use was compiled from.
    keys_source: Mutex<KeysSource>,
    /// What the file watcher sees of writers changing the keys file in place.
    keys_writes: Writes,
    /// Set when an upgrade or a shutdown begins: responses then close their connections, so
    /// clients reconnect (to the new process) instead of racing Pingora's drop of idle
    /// keep-alive connections when it stops.
    pub draining: std::sync::atomic::AtomicBool,
    /// Where recent conversations' last turns went, for cache-aware flux-auto.
    pub conversations: crate::routing::conversations::Conversations,
    /// The operator's routing policy hook (`policy:`), when configured.
    pub policy: Option<crate::policy::Policy>,
    /// The proxies whose forwarding header names the client (`trusted_proxies`).
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// What one client address may do before authenticating (`limits.per_address`), shared
    /// by the client and admin listeners.
    pub address_limits: crate::address_limits::AddressLimits,
    /// The same moment, for whoever waits for it: HTTP/2 connections send GOAWAY then (they
    /// have no `Connection: close`), so their clients move to the new process early too.
    pub drain: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Load and validate everything; the first error stops the start.
    pub fn load(config: ServerConfig) -> Result<(Self, Vec<String>), ConfigError> {
        let (providers, warnings) = Providers::build(&config, &|var| std::env::var(var).ok());
        if let Some(admin) = &config.admin {
            admin.tokens(&|var| std::env::var(var).ok())?;
        }
        let routes = load_routes(&config, &providers)?;
        let policy = match &config.policy {
            None => None,
            Some(p) => Some(
                crate::policy::Policy::new(p)
                    .map_err(|e| ConfigError::new(Path::new("fluxrouter.yaml"), "policy.url", e))?,
            ),
        };
        let (keys, keys_source) = load_keys_and_digest(&config)?;
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
                    .map_err(|e| ConfigError::new(Path::new("redis"), "redis", e.to_string()))?,
            ),
            None => None,
        };
        let store_path = config.key_store_path();
        let directory = Arc::new(
            crate::accounts::Directory::open(&store_path)
                .map_err(|e| ConfigError::new(&store_path, "key_store", e.to_string()))?,
        );
        // Fleet mode: the key store is the fleet's (Redis), this file its local copy.
        if let Some(fleet) = &fleet {
            crate::fleet::share_key_store(fleet, &directory, true);
        }
        let plan_terms = compile_plans(&config);
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
            trusted_proxies: crate::client_addr::TrustedProxies::new(
                config.trusted_proxies.clone(),
                config.forwarded_header,
            ),
            address_limits: crate::address_limits::AddressLimits::new(config.limits.per_address),
            lanes_loaded_at: now.into(),
            keys_loaded_at: now.into(),
            keys_source: Mutex::new(KeysSource {
                loaded: keys_source,
                refused: None,
            }),
            keys_writes: Writes::default(),
            fleet,
            directory,
            management: crate::background::Worker::default(),
            plan_terms,
            draining: std::sync::atomic::AtomicBool::new(false),
            conversations: Default::default(),
            policy,
            drain: tokio::sync::watch::Sender::new(false),
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

    /// Check a presented key against the keys file's table, then the key store's.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        now: u64,
    ) -> Result<Arc<crate::auth::Account>, crate::errors::FluxError> {
        let plans = |plan: &str| self.plan_terms.get(plan).cloned();
        self.keys.load().authenticate_or(presented, now, &|digest| {
            let found = self.directory.lookup(digest)?;
            let account = crate::auth::from_store(&found, &plans, now);
            if account.is_ok() {
                self.directory.record_use(&found.0, now);
            }
            Some(account)
        })
    }

    /// The management API's principal: a management key of the key store. An inference key
    /// that would authenticate (key store or keys file) gets 403; anything else the 401 a
    /// generation request would get.
    pub fn authenticate_manager(
        &self,
        presented: Option<&str>,
        now: u64,
    ) -> Result<crate::auth::Manager, crate::errors::FluxError> {
        if let Some(found) =
            presented.and_then(|p| self.directory.lookup(&crate::accounts::digest_of(p)))
        {
            let manager = crate::auth::manager_from_store(&found, now);
            if manager.is_ok() {
                self.directory.record_use(&found.0, now);
            }
            return manager;
        }
        self.authenticate(presented, now)?;
        Err(crate::auth::inference_key_on_management())
    }

    /// Follow the key store's feed: what `fluxrouter accounts` (or another gateway on the
    /// same file) wrote is served within a quarter of a second.
    pub fn follow_key_store(&self) -> tokio::task::JoinHandle<()> {
        self.directory
            .clone()
            .spawn_refresher(Duration::from_millis(250))
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
            table.catalogue().count(),
            table.rules().len()
        );
        table.inherit(&self.routes.load());
        self.routes.store(Arc::new(table));
        self.lanes_loaded_at
            .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Re-read the keys file and swap it in if it is whole, not empty and valid; unchanged
    /// content is not compiled again unless `force`d (SIGHUP). A missing file, an empty one
    /// or one that lists no keys without saying `keys: []` is refused like an invalid one
    /// (the table in use stays, the reason is logged and
    /// `flux_reloads_total{file="keys",outcome="failure"}` counts it): keys are removed by
    /// revoking them, never by losing the file. A table with no keys has nothing to keep, so
    /// a fresh install without a keys file reloads quietly.
    ///
    /// Blocking (it reads the file and waits for it to settle): call it from a blocking
    /// thread.
    pub fn reload_keys(&self, force: bool) -> Result<KeysReload, ConfigError> {
        let mut source = self
            .keys_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let path = &self.config.keys_file;
        let unchanged = |sha256| KeysReload::Unchanged {
            keys: self.keys.load().len(),
            sha256,
        };
        let found = self.read_keys(source.loaded, force).inspect_err(|e| {
            self.metrics.reload("keys", "failure");
            error!("{e}; keeping the previous keys table");
        })?;
        let found = match found {
            Found::Deferred => return Ok(KeysReload::Deferred),
            Found::Same(digest) => {
                source.refused = None;
                return Ok(unchanged(digest));
            }
            Found::Gone => None,
            Found::New(bytes) => Some((sha256(&bytes), bytes)),
        };
        // What is refused: the content (none: missing), and the writes seen before it.
        let refused = (
            found.as_ref().map(|(digest, _)| *digest),
            self.keys_writes.events(),
        );
        let compiled = match found {
            None => Err(ConfigError::new(
                path,
                "(file)",
                "the keys file is missing (remove a key with `fluxrouter keys revoke`, never \
                 by deleting the file)",
            )),
            Some((digest, bytes)) => compile_keys(&self.config, &bytes).and_then(|table| {
                // Losing every key takes saying so: an empty file, or a file cut short
                // after `keys:`, is no such statement.
                if table.is_empty() && !self.keys.load().is_empty() && !lists_no_keys(&bytes) {
                    let what = if is_blank(&bytes) {
                        "is empty"
                    } else {
                        "lists no keys"
                    };
                    return Err(ConfigError::new(
                        path,
                        "keys",
                        format!("the keys file {what} (to remove every key, write `keys: []`)"),
                    ));
                }
                Ok((table, digest))
            }),
        };
        let (table, digest) = match compiled {
            Ok(loaded) => loaded,
            Err(e) => {
                // Once per change: the watcher often sees several events for one (a removal
                // is also a change of the file's link count); a file written again is a new
                // change, even with the same content.
                if force || source.refused != Some(refused) {
                    self.metrics.reload("keys", "failure");
                    error!("{e}; keeping the previous keys table");
                }
                source.refused = Some(refused);
                return Err(e);
            }
        };
        self.metrics.reload("keys", "success");
        info!("reloaded {}: {} keys", path.display(), table.len());
        let keys = table.len();
        self.keys.store(Arc::new(table));
        *source = KeysSource {
            loaded: Some(digest),
            refused: None,
        };
        self.keys_loaded_at.store(unix_now(), Ordering::Relaxed);
        Ok(KeysReload::Loaded {
            keys,
            sha256: digest,
        })
    }

    /// Read the keys file for a reload, once it is whole (see the module's notes).
    fn read_keys(&self, loaded: Option<[u8; 32]>, force: bool) -> Result<Found, ConfigError> {
        let path = &self.config.keys_file;
        if self.keys_writes.busy() {
            return Ok(Found::Deferred);
        }
        let seen = self.keys_writes.events();
        let first = read_file(path)?;
        let digest = first.as_deref().map(sha256);
        if !force && digest.is_some() && digest == loaded {
            return Ok(Found::Same(digest));
        }
        // A change: it must hold still for a moment before it is believed.
        let bytes = settle(path, first)?;
        if self.keys_writes.busy() || self.keys_writes.events() != seen {
            // A writer got to the file while it was read: read it again after the writer.
            return Ok(Found::Deferred);
        }
        let digest = bytes.as_deref().map(sha256);
        Ok(match bytes {
            Some(_) if !force && digest == loaded => Found::Same(digest),
            Some(b) => Found::New(b),
            // An empty table has nothing to keep: a fresh install without a keys file.
            None if self.keys.load().is_empty() => Found::Same(None),
            None => Found::Gone,
        })
    }

    /// [`Self::reload_keys`] for someone waiting on the answer (the console, the admin
    /// endpoint): while a writer has the file open, wait for it, up to [`WRITER_STALL`].
    /// Blocking, like `reload_keys`.
    pub fn reload_keys_now(&self) -> Result<KeysReload, ConfigError> {
        let deadline = std::time::Instant::now() + WRITER_STALL + Duration::from_secs(1);
        loop {
            match self.reload_keys(false)? {
                KeysReload::Deferred if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                KeysReload::Deferred => {
                    return Err(ConfigError::new(
                        &self.config.keys_file,
                        "(file)",
                        "the keys file is being written; try again",
                    ))
                }
                done => return Ok(done),
            }
        }
    }
}

/// What the keys table in use was compiled from, and what was last refused.
struct KeysSource {
    /// SHA-256 of the file's bytes (none: there was no file at start).
    loaded: Option<[u8; 32]>,
    /// The file last refused (its digest, none: missing; the in-place writes seen before
    /// it), not logged again.
    refused: Option<(Option<[u8; 32]>, u64)>,
}

/// What a reload found in the keys file.
enum Found {
    /// What the table in use was compiled from (or nothing, for a table with no keys).
    Same(Option<[u8; 32]>),
    /// A writer has it open.
    Deferred,
    /// Missing, while the table has keys.
    Gone,
    /// New content, whole.
    New(Vec<u8>),
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What a keys reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysReload {
    /// A new table was compiled from the file (of this SHA-256) and swapped in.
    Loaded { keys: usize, sha256: [u8; 32] },
    /// The table in use already is the file's (none: there is no file).
    Unchanged {
        keys: usize,
        sha256: Option<[u8; 32]>,
    },
    /// A writer has the file open: it is read again once the writer is done.
    Deferred,
}

impl KeysReload {
    /// The SHA-256 of the keys file the table in use was compiled from.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        match self {
            KeysReload::Loaded { sha256, .. } => Some(*sha256),
            KeysReload::Unchanged { sha256, .. } => *sha256,
            KeysReload::Deferred => None,
        }
    }
}

/// How long a changed keys file must stay the same before it is read as the new table, and
/// how many times it is read again while it keeps changing.
const SETTLE: Duration = Duration::from_millis(25);
const SETTLE_READS: usize = 40;

/// How long a writer the watcher saw open the file may go without writing before the file
/// is read anyway (a writer whose close was never seen).
const WRITER_STALL: Duration = Duration::from_secs(5);

/// The file's bytes; `None` when there is no file.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::new(
            path,
            "(file)",
            format!("cannot read: {e}"),
        )),
    }
}

/// Read `path` again until two reads `SETTLE` apart agree (`last` is the first read): a
/// writer the watcher cannot see (another host on a shared volume, a platform without
/// close events) is not read mid-write unless it pauses longer than that.
fn settle(path: &Path, mut last: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, ConfigError> {
    for _ in 0..SETTLE_READS {
        std::thread::sleep(SETTLE);
        let now = read_file(path)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Err(ConfigError::new(
        path,
        "(file)",
        format!(
            "still changing after {} ms of reads",
            SETTLE.as_millis() * SETTLE_READS as u128
        ),
    ))
}

/// The file says `keys: []`: every key is to go.
fn lists_no_keys(bytes: &[u8]) -> bool {
    serde_norway::from_slice::<serde_norway::Value>(bytes)
        .ok()
        .and_then(|doc| doc.get("keys")?.as_sequence().map(Vec::is_empty))
        .unwrap_or(false)
}

/// Nothing but blank lines and comments: no YAML document at all.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.split(|b| *b == b'\n').all(|line| {
        let line = line.trim_ascii();
        line.is_empty() || line.starts_with(b"#")
    })
}

/// What the file watcher saw of writers changing the keys file in place (open, truncate,
/// write in pieces, close): while one has it open, the file is not read.
#[derive(Debug)]
struct Writes {
    /// In-place write events seen (data written, file created, writer closed).
    events: AtomicU64,
    /// When a writer last wrote without closing the file yet (ms after `epoch`, from 1); 0
    /// when none has it open.
    open_since: AtomicU64,
    epoch: std::time::Instant,
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            events: AtomicU64::new(0),
            open_since: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }
}

impl Writes {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// A writer created or wrote the file.
    fn written(&self) {
        self.events.fetch_add(1, Ordering::SeqCst);
        self.open_since.store(self.now_ms(), Ordering::SeqCst);
    }

    /// A writer closed the file.
    fn closed(&self) {
        self.events.fetch_add(1, Ordering::SeqCst);
        self.open_since.store(0, Ordering::SeqCst);
    }

    /// The file was removed or replaced by a rename: any writer has the old one.
    fn replaced(&self) {
        self.open_since.store(0, Ordering::SeqCst);
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// A writer has the file open and wrote less than [`WRITER_STALL`] ago.
    fn busy(&self) -> bool {
        let since = self.open_since.load(Ordering::SeqCst);
        since != 0 && self.now_ms().saturating_sub(since) < WRITER_STALL.as_millis() as u64
    }
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

/// The keys table (`fluxrouter check`, the start): a missing file is an empty one (a fresh
/// install has no keys yet).
pub fn load_keys(config: &ServerConfig) -> Result<KeyTable, ConfigError> {
    load_keys_and_digest(config).map(|(table, _)| table)
}

/// The keys table and the SHA-256 of the file it came from (none: no file).
fn load_keys_and_digest(
    config: &ServerConfig,
) -> Result<(KeyTable, Option<[u8; 32]>), ConfigError> {
    match read_file(&config.keys_file)? {
        Some(bytes) => Ok((
            compile_keys(config, &bytes)?,
            Some(Sha256::digest(&bytes).into()),
        )),
        None => Ok((keys_table(config, &KeysFile::default())?, None)),
    }
}

fn compile_keys(config: &ServerConfig, bytes: &[u8]) -> Result<KeyTable, ConfigError> {
    let path = &config.keys_file;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ConfigError::new(path, "(file)", format!("not UTF-8: {e}")))?;
    let file: KeysFile = crate::config::parse_yaml(path, text)?;
    keys_table(config, &file)
}

/// Check a keys file against the configured plans and compile it.
pub fn keys_table(config: &ServerConfig, file: &KeysFile) -> Result<KeyTable, ConfigError> {
    let plans = compile_plans(config);
    KeyTable::compile(&config.keys_file, file, &|plan| plans.get(plan).cloned())
}

/// Each plan compiled once, its terms shared by the accounts on it.
fn compile_plans(config: &ServerConfig) -> std::collections::HashMap<String, Arc<Terms>> {
    config
        .plans
        .iter()
        .map(|(name, plan)| (name.clone(), Arc::new(Terms::compile(plan))))
        .collect()
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
        // Stopped with this task: the feed needs no goodbye.
        let follower = self.state.follow_key_store();
        let _stop_following = AbortOnDrop(follower);
        let changed = Arc::new(Notify::new());
        // Editors and `keys new` replace files by rename: the watch follows the name.
        let weights_path = || {
            self.state
                .routes
                .load()
                .classifier()
                .map(|c| c.path.clone())
        };
        let mut weights = weights_path().map(|p| Watched::new(&p));
        let _watcher = match watch_files(
            self.state.clone(),
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
            // Unchanged keys are recognized by their digest in `reload_keys`; a file being
            // written in place is read after its writer closes it (a wake-up of its own), or
            // after `WRITER_STALL`, for a writer whose close went unseen.
            let state = self.state.clone();
            let keys = tokio::task::spawn_blocking(move || state.reload_keys(forced)).await;
            let deferred = matches!(keys, Ok(Ok(KeysReload::Deferred)));
            if let Err(e) = keys {
                error!("keys reload task: {e}");
            }
            forced = loop {
                tokio::select! {
                    _ = changed.notified() => break false,
                    _ = tokio::time::sleep(WRITER_STALL), if deferred => break false,
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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

/// Watch lanes.yaml, the keys file and the classifier's weights (as named at start; a
/// weights file moved elsewhere later is reloaded with SIGHUP), and tell the keys file's
/// writers apart (see [`Writes`]).
fn watch_files(
    state: Arc<AppState>,
    weights: Option<PathBuf>,
    changed: Arc<Notify>,
) -> std::io::Result<FileWatch> {
    let config = &state.config;
    let files: Vec<PathBuf> = [config.keys_file.clone(), config.lanes_file.clone()]
        .into_iter()
        .chain(weights)
        .collect();
    // The keys file is first.
    FileWatch::start(&files, move |i, event| {
        if i == 0 {
            let writes = &state.keys_writes;
            match event {
                FileEvent::Written => writes.written(),
                FileEvent::Closed => writes.closed(),
                FileEvent::Replaced => writes.replaced(),
            }
        }
        changed.notify_one();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_blank_lines_and_comments_holds_no_keys_document() {
        for blank in [
            "",
            "\n\n",
            "  \n\t\n",
            "# FluxRouter keys\n",
            "# a\n  # b\n\n",
        ] {
            assert!(is_blank(blank.as_bytes()), "{blank:?}");
        }
        for doc in ["keys: []\n", "# header\nkeys:\n", "---\n", "x"] {
            assert!(!is_blank(doc.as_bytes()), "{doc:?}");
        }
    }

    #[test]
    fn only_an_explicit_empty_list_says_every_key_is_to_go() {
        assert!(lists_no_keys(b"# header\nkeys: []\n"));
        for not in [
            "",
            "---\n",
            "keys:\n",
            "# FluxRouter keys\nkeys:\n",
            "keys: [{}]",
        ] {
            assert!(!lists_no_keys(not.as_bytes()), "{not:?}");
        }
    }

    #[test]
    fn a_writer_holds_the_file_until_it_closes_it_or_the_file_is_replaced() {
        let w = Writes::default();
        assert!(!w.busy());
        w.written();
        w.written();
        assert!(w.busy());
        w.closed();
        assert!(!w.busy());
        assert_eq!(w.events(), 3);
        w.written();
        w.replaced();
        assert!(!w.busy());
    }
}
