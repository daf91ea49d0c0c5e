//! What a listener does with an accepted connection before HTTP: read a PROXY protocol
//! header, terminate TLS (SNI among several certificates, ALPN `h2` then `http/1.1`), and
//! tell HTTP/2 from HTTP/1.1. The connection guard ([`crate::gateway::Edge`]) drives it; this
//! module holds the plain parts: [`certs`] (pairs, SNI, renewal) and [`proxy_protocol`].

pub mod certs;
pub mod proxy_protocol;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::Acceptor;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

use crate::config::server::{Listener, TlsConfig};
use certs::{CertificateSet, LoadedPair, WatchedPair};

/// Sessions a TLS listener remembers for resumption by id (TLS 1.2 clients without
/// tickets); tickets (stateless, both versions) need no memory.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// Warn about a certificate that expires sooner than this.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The `Strict-Transport-Security` value of each TLS listener that sets one, by address:
/// filled once at start, read when a response header is written on a TLS connection.
static HSTS: std::sync::OnceLock<Vec<(std::net::SocketAddr, http::HeaderValue)>> =
    std::sync::OnceLock::new();

/// Remember the listeners' HSTS values (at start; later calls change nothing).
pub fn set_hsts(listeners: &[&Listener]) {
    let table = listeners
        .iter()
        .filter_map(|l| {
            let hsts = l.tls.as_ref()?.hsts.as_ref()?;
            let value = http::HeaderValue::from_str(&hsts.header_value()).ok()?;
            Some((l.address, value))
        })
        .collect();
    let _ = HSTS.set(table);
}

/// The HSTS value for a TLS connection accepted at `local` (the socket's own address: a
/// listener on `0.0.0.0:443` matches any address on port 443).
pub fn hsts_for(local: std::net::SocketAddr) -> Option<http::HeaderValue> {
    let table = HSTS.get()?;
    table
        .iter()
        .find(|(a, _)| *a == local)
        .or_else(|| {
            table
                .iter()
                .find(|(a, _)| a.ip().is_unspecified() && a.port() == local.port())
        })
        .map(|(_, v)| v.clone())
}

/// How a listener handles a connection before HTTP.
pub struct ListenerPlan {
    pub tls: Option<TlsEndpoint>,
    /// HTTP/2 with prior knowledge on plaintext.
    pub h2c: bool,
    pub proxy_protocol: bool,
}

impl ListenerPlan {
    /// The plan for `listener`, its certificates loaded and checked.
    pub fn load(listener: &Listener, now: i64) -> Result<Self, String> {
        let tls = match &listener.tls {
            Some(tls) => Some(TlsEndpoint::load(tls, now)?),
            None => None,
        };
        Ok(ListenerPlan {
            tls,
            h2c: listener.h2c,
            proxy_protocol: listener.proxy_protocol,
        })
    }

    /// Plain HTTP/1.1, nothing before it (today's listeners).
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && !self.h2c && !self.proxy_protocol
    }
}

/// A TLS listener's acceptor and the certificates it serves.
pub struct TlsEndpoint {
    pub acceptor: Acceptor,
    pub certificates: Arc<CertificateSet>,
    pub handshake_timeout: Duration,
    config: TlsConfig,
}

impl TlsEndpoint {
    pub fn load(config: &TlsConfig, now: i64) -> Result<Self, String> {
        let mut pairs = Vec::with_capacity(config.certificates.len());
        for pair in &config.certificates {
            pairs.push(
                certs::load_pair(pair, now)
                    .map_err(|e| format!("certificate `{}`: {e}", pair.name))?,
            );
        }
        let default = config.default_index()?;
        let certificates = Arc::new(CertificateSet::new(pairs, default));
        let server = server_config(certificates.clone())?;
        Ok(TlsEndpoint {
            acceptor: Acceptor::from_server_config(Arc::new(server)),
            certificates,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            config: config.clone(),
        })
    }

    /// A watcher entry for each of this endpoint's pairs.
    pub fn watched(&self) -> Vec<WatchedPair> {
        self.config
            .certificates
            .iter()
            .enumerate()
            .map(|(i, pair)| WatchedPair::new(self.certificates.clone(), i, pair.clone()))
            .collect()
    }
}

/// TLS 1.2 and 1.3 only, resumption by tickets and by session id, ALPN `h2` then `http/1.1`.
fn server_config(certificates: Arc<CertificateSet>) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(config)
}

/// What `fluxrouter check` says about one listener's certificates: problems (the gateway
/// would not start) and warnings (close to expiry, a name no certificate covers).
pub fn check_tls(config: &TlsConfig, now: i64) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let mut loaded: Vec<LoadedPair> = Vec::new();
    for pair in &config.certificates {
        match certs::load_pair(pair, now) {
            Ok(p) => {
                let left = p.not_after - now;
                if left < EXPIRY_WARNING.as_secs() as i64 {
                    warnings.push(format!(
                        "certificate `{}` expires in {} day(s)",
                        p.name,
                        left / 86_400
                    ));
                }
                if p.dns_names.is_empty() {
                    warnings.push(format!(
                        "certificate `{}` names no host (no DNS subject alternative name): \
                         only clients that skip name checks accept it",
                        p.name
                    ));
                }
                loaded.push(p);
            }
            Err(e) => problems.push(format!("certificate `{}`: {e}", pair.name)),
        }
    }
    // Two pairs for the same name: SNI always picks the first.
    for (i, p) in loaded.iter().enumerate() {
        for name in &p.dns_names {
            if let Some(first) = loaded[..i].iter().find(|o| o.dns_names.contains(name)) {
                warnings.push(format!(
                    "`{name}` is covered by both `{}` and `{}`; SNI picks `{}`",
                    first.name, p.name, first.name
                ));
            }
        }
    }
    (problems, warnings)
}

/// Told each pair served (its name) and its expiry (unix seconds): the metrics.
pub type OnServed = Box<dyn Fn(&str, i64) + Send + Sync>;

/// Follows every TLS listener's certificate files and swaps renewed pairs in.
pub struct CertificateWatcher {
    pub pairs: std::sync::Mutex<Vec<WatchedPair>>,
    pub on_served: OnServed,
}

impl CertificateWatcher {
    pub fn new(pairs: Vec<WatchedPair>, on_served: OnServed) -> Self {
        CertificateWatcher {
            pairs: std::sync::Mutex::new(pairs),
            on_served,
        }
    }
}

#[async_trait]
impl BackgroundService for CertificateWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut pairs) = self.pairs.lock().map(|mut p| std::mem::take(&mut *p)) else {
            return;
        };
        if pairs.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(certs::POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = crate::units::clock::unix_now() as i64;
            for pair in pairs.iter_mut() {
                match pair.poll(now) {
                    None => {}
                    Some(Ok(served)) => {
                        log::info!(
                            "tls: certificate `{}` renewed: now serving one valid until {} \
                             (unix), for {:?}",
                            served.name,
                            served.not_after,
                            served.dns_names
                        );
                        (self.on_served)(&served.name, served.not_after);
                    }
                    Some(Err(e)) => log::warn!(
                        "tls: certificate `{}` changed on disk but was refused ({e}); the \
                         previous one is still served",
                        pair.name()
                    ),
                }
            }
        }
    }
}
