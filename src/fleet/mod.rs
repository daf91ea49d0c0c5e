//! Fleet mode: several gateways share spend, reservations and rate limits through Redis (or
//! Valkey), with the guarantees of a single node.
//!
//! Every decision that must hold across the fleet is one Lua script run atomically on the
//! server ([`lua`]): reserve a worst case only if it fits under every limit of the account,
//! settle to the real cost, release, admit against per-minute limits (GCRA on the server's
//! clock). Spend, holds and caps count per account, as on a single gateway; a key keeps its
//! share of the month, its usage and, when it has one, its own limit's holds; see
//! [`Layout`].
//!
//! Redis is reached from a runtime of its own (one thread, `flux-redis`): the client's
//! connection drivers and reconnects live there, whatever runtime a request runs on, and a
//! request only waits for its answer, bounded by `command_timeout_ms`. A failed or late
//! answer marks Redis down for this gateway: requests then follow the configured policy
//! ([`WhenRedisDown`]) without waiting on Redis, while a probe tries it every
//! `probe_interval_ms` and brings the gateway back by itself. The probe is also the
//! heartbeat that tells the fleet how many gateways are alive (a node's share of a rate
//! limit while Redis is down), and it replays the settlements Redis missed.

mod keystore;
mod layout;
mod payer;
mod queue;
pub mod rate;
mod shared;
pub mod spend;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, RedisResult, Script};

pub use keystore::{share_key_store, KEY_STORE_FEED_KEEP};
pub use layout::Layout;
pub use payer::Payer;
pub use queue::Settlement;
pub use shared::FleetState;
pub use spend::Refused;

use crate::config::server::{RedisConfig, WhenRedisDown};
use crate::errors::{Context, Error, Fault};
use crate::metrics::{FleetView, RedisSeries};

/// Redis could not answer in time (or at all): the caller applies the down policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What a round trip to Redis was for (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Reserve,
    Settle,
    Release,
    Standing,
    Rate,
    Heartbeat,
    Report,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Reserve,
        Op::Settle,
        Op::Release,
        Op::Standing,
        Op::Rate,
        Op::Heartbeat,
        Op::Report,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::Reserve => "reserve",
            Op::Settle => "settle",
            Op::Release => "release",
            Op::Standing => "standing",
            Op::Rate => "rate",
            Op::Heartbeat => "heartbeat",
            Op::Report => "report",
        }
    }
}

impl Fleet {
    /// What the metrics show of this gateway's view of Redis (`metrics` knows no fleet).
    pub fn view(&self) -> FleetView<'_> {
        FleetView {
            up: self.is_up(),
            gateways: self.nodes(),
            settlements_pending: self.pending_len(),
            series: &self.stats,
            ops: Op::ALL.map(Op::label),
        }
    }
}

/// The shared store and this gateway's view of it.
pub struct Fleet {
    handle: tokio::runtime::Handle,
    conns: Box<[ConnectionManager]>,
    next: AtomicUsize,
    timeout: Duration,
    probe_interval: Duration,
    up: AtomicBool,
    /// When Redis was last seen down (for the log line when it returns).
    down_since: Mutex<Option<Instant>>,
    pub layout: Layout,
    /// This gateway's id in the fleet (hold ids start with it).
    node: Box<str>,
    /// A gateway (counted in the fleet by its heartbeat), not a tool reading the ledger.
    member: bool,
    /// Gateways that beat in the last few probe intervals, this one included.
    nodes: AtomicU64,
    pub when_down: WhenRedisDown,
    pub stats: RedisSeries,
    hold_seq: AtomicU64,
    pending: Mutex<queue::Pending>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.node)
            .field("up", &self.is_up())
            .field("nodes", &self.nodes())
            .finish()
    }
}

/// How long a gateway counts as alive after its last heartbeat, in probe intervals.
const ALIVE_INTERVALS: u64 = 6;

impl Fleet {
    /// Connect (lazily: a gateway starts even while Redis is down, and follows the down
    /// policy until it answers) and start the probe. The first contact is awaited, bounded by
    /// `connect_timeout_ms`, so a reachable Redis is in use from the first request.
    /// `member`: a gateway, counted in the fleet (not `fluxrouter usage` reading it).
    pub fn connect(config: &RedisConfig, member: bool) -> Result<Arc<Fleet>, Error> {
        let url = config
            .resolve_url(&|var| std::env::var(var).ok())
            .ok_or_else(|| {
                Error::new(
                    Fault::Invalid,
                    format!(
                        "redis: no URL ({} is not set)",
                        config.url_env.as_deref().unwrap_or("url_env")
                    ),
                )
            })?;
        // The client's own error would quote the URL, and with it any password.
        let bad_url = || {
            Error::new(
                Fault::Invalid,
                "redis: the URL does not parse (redis[s]://[user:password@]host:port[/db])",
            )
        };
        let client = match &config.tls_ca_file {
            Some(ca) => {
                let root_cert = std::fs::read(ca)
                    .with_context(Fault::Io, || format!("redis.tls_ca_file {}", ca.display()))?;
                pingora::tls::install_default_crypto_provider();
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(url.as_str(), certs).map_err(|e| {
                    if e.kind() == redis::ErrorKind::InvalidClientConfig {
                        bad_url()
                    } else {
                        Error::new(
                            Fault::Invalid,
                            format!("redis.tls_ca_file {}", ca.display()),
                        )
                        .because(e)
                    }
                })?
            }
            None => {
                if url.starts_with("rediss:") {
                    pingora::tls::install_default_crypto_provider();
                }
                redis::Client::open(url.as_str()).map_err(|_| bad_url())?
            }
        };
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(config.command_timeout_ms)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(config.probe_interval_ms));
        let pool = config.pool_size;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("flux-redis".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(Error::new(
                            Fault::Io,
                            "redis: cannot start its runtime",
                        )
                        .because(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let conns: RedisResult<Vec<ConnectionManager>> = (0..pool)
                        .map(|_| {
                            ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
                        })
                        .collect();
                    let conns = conns.context(Fault::Unavailable, "redis");
                    let _ = tx.send(conns.map(|c| (tokio::runtime::Handle::current(), c)));
                    // The runtime lives as long as the process: its thread parks here.
                    std::future::pending::<()>().await
                });
            })
            .context(Fault::Io, "redis: cannot start its thread")?;
        let (handle, conns) = rx
            .recv()
            .map_err(|_| Error::new(Fault::Unavailable, "redis: its thread stopped"))??;
        let fleet = Arc::new(Fleet {
            handle,
            conns: conns.into_boxed_slice(),
            next: AtomicUsize::new(0),
            timeout: Duration::from_millis(config.command_timeout_ms),
            probe_interval: Duration::from_millis(config.probe_interval_ms),
            up: AtomicBool::new(false),
            down_since: Mutex::new(None),
            layout: Layout::new(&config.key_prefix),
            node: format!("{:016x}", rand::random::<u64>()).into(),
            member,
            nodes: AtomicU64::new(1),
            when_down: config.when_down,
            stats: RedisSeries::default(),
            hold_seq: AtomicU64::new(0),
            pending: Mutex::new(queue::Pending::default()),
        });
        let first = Arc::clone(&fleet);
        let (tx, rx) = std::sync::mpsc::channel();
        fleet.handle.spawn(async move {
            let _ = tx.send(first.beat().await);
        });
        let wait = Duration::from_millis(config.connect_timeout_ms + config.command_timeout_ms);
        match rx.recv_timeout(wait) {
            Ok(true) => log::info!(
                "redis: connected; fleet mode with {} gateway(s) alive",
                fleet.nodes()
            ),
            _ => {
                *lock(&fleet.down_since) = Some(Instant::now());
                log::warn!(
                    "redis: unreachable at start; {} until it answers",
                    fleet.policy_text()
                )
            }
        }
        if member {
            fleet.handle.spawn(probe(Arc::downgrade(&fleet)));
        }
        Ok(fleet)
    }

    /// Whether Redis answered the last time this gateway asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Gateways alive in the fleet (at least this one), as last counted.
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed).max(1)
    }

    /// A fresh hold id, unique across the fleet.
    pub fn hold_id(&self) -> Box<str> {
        let n = self.hold_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.node).into()
    }

    /// Run one Redis call on the Redis runtime, bounded by the command timeout, unless
    /// Redis is known to be down (then at once). A failure marks it down.
    async fn run<T, F, Fut>(&self, op: Op, call: F) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        if !self.is_up() {
            return Err(Unavailable);
        }
        self.run_anyway(op, call).await
    }

    async fn run_anyway<T, F, Fut>(&self, op: Op, call: F) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let conn = self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()].clone();
        let timeout = self.timeout;
        let started = Instant::now();
        let fut = call(conn);
        let outcome = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, fut).await })
            .await;
        self.stats.seconds[op as usize].observe(started.elapsed());
        let why = match outcome {
            Ok(Ok(Ok(v))) => return Ok(v),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("no answer within {} ms", timeout.as_millis()),
            Err(e) => format!("task failed: {e}"),
        };
        self.stats.errors[op as usize].add(1);
        self.went_down(op, &why);
        Err(Unavailable)
    }

    /// Invoke a script with string keys and arguments.
    async fn script<T>(
        &self,
        op: Op,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, Unavailable>
    where
        T: FromRedisValue + Send + 'static,
    {
        self.run(op, move |mut conn| async move {
            let mut invocation = script.prepare_invoke();
            for k in &keys {
                invocation.key(k.as_str());
            }
            for a in &args {
                invocation.arg(a.as_str());
            }
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    fn went_down(&self, op: Op, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            *lock(&self.down_since) = Some(Instant::now());
            self.stats.went_down.add(1);
            log::warn!(
                "redis: down ({} failed: {why}); {} until it answers again",
                op.label(),
                self.policy_text()
            );
        } else {
            log::debug!("redis: {} failed: {why}", op.label());
        }
    }

    fn came_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            let since = lock(&self.down_since).take();
            self.stats.came_up.add(1);
            // The first contact at start is logged by `connect`.
            if since.is_some() {
                log::warn!(
                    "redis: up again after {:.1} s; {} gateway(s) alive, {} settlement(s) to replay",
                    since.map_or(0.0, |s| s.elapsed().as_secs_f64()),
                    self.nodes(),
                    self.pending_len()
                );
            }
        }
    }

    fn policy_text(&self) -> String {
        use crate::config::server::{MoneyWhenDown, RatesWhenDown};
        let money = match self.when_down.money {
            MoneyWhenDown::Refuse => "accounts with a spend limit get 503 ledger_unavailable",
            MoneyWhenDown::Serve => "spend limits hold per gateway only",
        };
        let rates = match self.when_down.rate_limits {
            RatesWhenDown::NodeShare => "rate limits are split between gateways",
            RatesWhenDown::Refuse => "rate-limited keys get 503 ledger_unavailable",
        };
        format!("{money}, {rates}")
    }

    /// One heartbeat: say this gateway is alive, learn how many are. True when Redis is up
    /// after it. A down Redis comes back only with an answer well within the command timeout
    /// (one that only just made it would bring a slow Redis back for a moment, then fail the
    /// requests that follow).
    async fn beat(&self) -> bool {
        static HEARTBEAT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| lua::script(lua::HEARTBEAT));
        let key = self.layout.nodes();
        let node = self.node.to_string();
        let window = (self.probe_interval.as_millis() as u64 * ALIVE_INTERVALS).to_string();
        let member = self.member;
        let started = Instant::now();
        let answer = self
            .run_anyway(Op::Heartbeat, move |mut conn| async move {
                if !member {
                    return redis::cmd("PING")
                        .query_async::<()>(&mut conn)
                        .await
                        .map(|()| 1);
                }
                HEARTBEAT
                    .key(key)
                    .arg(node)
                    .arg(window)
                    .invoke_async::<u64>(&mut conn)
                    .await
            })
            .await;
        match answer {
            Ok(n) => {
                self.nodes.store(n, Ordering::Relaxed);
                // Back up only when it answers well within the timeout; while up, a slow
                // beat (a busy moment) is not an outage: only failures and timeouts are.
                if self.is_up() || started.elapsed() < self.timeout / 2 {
                    self.came_up();
                    true
                } else {
                    false
                }
            }
            Err(Unavailable) => false,
        }
    }
}

/// The heartbeat, the way back after an outage, and the replay of missed settlements.
async fn probe(fleet: Weak<Fleet>) {
    let interval = match fleet.upgrade() {
        Some(f) => f.probe_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fleet) = fleet.upgrade() else { return };
        if fleet.beat().await {
            fleet.replay().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind every lock here; a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Lua sources. Each script is the shared helpers followed by its own body.
pub(crate) mod lua {
    use redis::Script;

    const LIB: &str = include_str!("lua/lib.lua");
    pub const RESERVE: &str = include_str!("lua/reserve.lua");
    pub const SETTLE: &str = include_str!("lua/settle.lua");
    pub const RELEASE: &str = include_str!("lua/release.lua");
    pub const STANDING: &str = include_str!("lua/standing.lua");
    pub const RATE: &str = include_str!("lua/rate.lua");
    pub const ADMIT: &str = include_str!("lua/admit.lua");
    pub const HEARTBEAT: &str = include_str!("lua/heartbeat.lua");

    /// A script with the shared helpers (lib.lua) in front. Redis caches it by its SHA-1;
    /// the client sends only the hash after the first call.
    pub fn script(body: &str) -> Script {
        Script::new(&format!("{LIB}\n{body}"))
    }
}
