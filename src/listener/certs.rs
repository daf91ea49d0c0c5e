//! A TLS listener's certificates: loading and checking a pair (chain, key, names, validity),
//! choosing one by SNI for each handshake, and swapping a renewed pair in without a restart.
//!
//! The handshake reads an `ArcSwap` of loaded pairs (no lock); the watcher, a background task,
//! polls each pair's files (inode, size, modification time: certbot and cert-manager write new
//! files and rename them over the old ones, Kubernetes swaps a symlink) and swaps a pair that
//! loads and checks; one that does not is refused with a log line, and the previous one stays.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::server::CertificatePair;

/// How often the watcher looks at the files: a renewal is served within a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A checked pair, ready to serve.
#[derive(Debug)]
pub struct LoadedPair {
    pub name: String,
    pub key: Arc<CertifiedKey>,
    /// The names the leaf certificate covers (its DNS SANs, lowercase; `*.` wildcards kept).
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl LoadedPair {
    /// Whether the certificate covers `host` (lowercase).
    pub fn covers(&self, host: &str) -> bool {
        self.dns_names.iter().any(|name| name_matches(name, host))
    }
}

/// A certificate name against a host: exact, or a `*.` wildcard standing for one label.
fn name_matches(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == host,
    }
}

/// Read and check one pair from its files.
pub fn load_pair(pair: &CertificatePair, now: i64) -> Result<LoadedPair, String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let chain = read(&pair.certificate, "certificate")?;
    let key = read(&pair.key, "key")?;
    pair_from_pem(&pair.name, &chain, &key, now)
}

/// Check a chain (PEM, leaf first) and its key (PEM): they parse, the key is the leaf's, and
/// the leaf is valid at `now`.
pub fn pair_from_pem(
    name: &str,
    chain_pem: &[u8],
    key_pem: &[u8],
    now: i64,
) -> Result<LoadedPair, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file does not parse as PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the certificate file holds no certificate".into());
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file holds no private key: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = general {
                dns_names.push(n.to_ascii_lowercase());
            }
        }
    }
    if dns_names.is_empty() {
        // No SAN: clients ignore the subject's CN today, but name it for `check`.
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                dns_names.push(cn.to_ascii_lowercase());
            }
        }
    }
    if now >= not_after {
        return Err(format!(
            "the certificate expired {} day(s) ago",
            (now - not_after) / 86_400
        ));
    }
    if now < not_before {
        return Err("the certificate is not valid yet".into());
    }
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the key does not match the certificate (it is another certificate's key)".into()
        }
        e => format!("the key is not usable: {e}"),
    })?;
    Ok(LoadedPair {
        name: name.to_string(),
        key: Arc::new(key),
        dns_names,
        not_before,
        not_after,
    })
}

/// A listener's pairs as the handshake sees them: SNI picks one, the default otherwise.
#[derive(Debug)]
pub struct CertificateSet {
    pairs: ArcSwap<Vec<Arc<LoadedPair>>>,
    default: usize,
}

impl CertificateSet {
    pub fn new(pairs: Vec<LoadedPair>, default: usize) -> Self {
        assert!(default < pairs.len(), "the default is one of the pairs");
        CertificateSet {
            pairs: ArcSwap::from_pointee(pairs.into_iter().map(Arc::new).collect()),
            default,
        }
    }

    /// The pair for a client that sent `sni` (or none): the first that covers the name, else
    /// the default.
    pub fn choose(&self, sni: Option<&str>) -> Arc<LoadedPair> {
        let pairs = self.pairs.load();
        if let Some(host) = sni {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if let Some(p) = pairs.iter().find(|p| p.covers(&host)) {
                return p.clone();
            }
        }
        pairs[self.default].clone()
    }

    /// The pairs served now.
    pub fn current(&self) -> Arc<Vec<Arc<LoadedPair>>> {
        self.pairs.load_full()
    }

    /// Serve `pair` in place of the one at `index`, from the next handshake on.
    pub fn replace(&self, index: usize, pair: LoadedPair) {
        let pair = Arc::new(pair);
        self.pairs.rcu(|pairs| {
            let mut next = (**pairs).clone();
            next[index] = pair.clone();
            next
        });
    }
}

impl ResolvesServerCert for CertificateSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).key.clone())
    }
}

/// What identifies a file's content without reading it: a rename over it changes the inode, a
/// write in place the size or time, a symlink swap the target's inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    device: u64,
    size: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        inode: m.ino(),
        device: m.dev(),
        size: m.len(),
        modified: m.modified().ok(),
    })
}

/// One pair's files as last seen.
#[derive(Debug)]
pub struct WatchedPair {
    set: Arc<CertificateSet>,
    index: usize,
    config: CertificatePair,
    seen: (Option<FileStamp>, Option<FileStamp>),
}

impl WatchedPair {
    pub fn new(set: Arc<CertificateSet>, index: usize, config: CertificatePair) -> Self {
        let seen = (stamp(&config.certificate), stamp(&config.key));
        WatchedPair {
            set,
            index,
            config,
            seen,
        }
    }

    /// Look at the files; when they changed, load and check the pair and serve it. Returns
    /// the pair swapped in, or the reason a changed pair was refused.
    pub fn poll(&mut self, now: i64) -> Option<Result<Arc<LoadedPair>, String>> {
        let seen = (stamp(&self.config.certificate), stamp(&self.config.key));
        if seen == self.seen {
            return None;
        }
        // Remembered even when refused: the next change (the key written after the
        // certificate, say) tries again; an unchanged bad pair is not retried every tick.
        self.seen = seen;
        Some(match load_pair(&self.config, now) {
            Ok(pair) => {
                self.set.replace(self.index, pair);
                Ok(self.set.current()[self.index].clone())
            }
            Err(e) => Err(e),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The pair served now.
    pub fn served(&self) -> Option<Arc<LoadedPair>> {
        self.set.current().get(self.index).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        crate::units::clock::unix_now() as i64
    }

    /// A self-signed certificate for `names` and its key, valid from `from` to `until`
    /// (days from today).
    fn make(names: &[&str], from: i64, until: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let at = |days: i64| {
            let secs = (now() + days * 86_400) as u64;
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs)
        };
        params.not_before = at(from);
        params.not_after = at(until);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("api.example.com", "api.example.com"));
        assert!(name_matches("*.example.com", "api.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("api.example.com", "chat.example.com"));
    }

    #[test]
    fn a_pair_that_matches_parses_with_its_names_and_dates() {
        let (cert, key) = make(&["API.example.com", "*.chat.example.com"], -1, 30);
        let p = pair_from_pem("api", cert.as_bytes(), key.as_bytes(), now()).unwrap();
        assert_eq!(p.dns_names, ["api.example.com", "*.chat.example.com"]);
        assert!(p.covers("x.chat.example.com"));
        assert!(p.not_after - now() > 29 * 86_400);
    }

    #[test]
    fn mismatched_expired_and_garbage_pairs_are_refused() {
        let (cert, _) = make(&["a.test"], -1, 30);
        let (_, other_key) = make(&["a.test"], -1, 30);
        let e = pair_from_pem("a", cert.as_bytes(), other_key.as_bytes(), now()).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let (cert, key) = make(&["a.test"], -30, -1);
        let e = pair_from_pem("a", cert.as_bytes(), key.as_bytes(), now()).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let (cert, key) = make(&["a.test"], 2, 30);
        let e = pair_from_pem("a", cert.as_bytes(), key.as_bytes(), now()).unwrap_err();
        assert!(e.contains("not valid yet"), "{e}");
        let e = pair_from_pem("a", b"junk", key.as_bytes(), now()).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = pair_from_pem("a", cert.as_bytes(), b"junk", now()).unwrap_err();
        assert!(e.contains("no private key"), "{e}");
    }

    #[test]
    fn sni_picks_the_covering_pair_and_falls_back_to_the_default() {
        let pair = |name: &str, host: &str| {
            let (c, k) = make(&[host], -1, 30);
            pair_from_pem(name, c.as_bytes(), k.as_bytes(), now()).unwrap()
        };
        let set = CertificateSet::new(vec![pair("api", "api.test"), pair("chat", "chat.test")], 1);
        assert_eq!(set.choose(Some("API.test.")).name, "api");
        assert_eq!(set.choose(Some("chat.test")).name, "chat");
        assert_eq!(set.choose(Some("other.test")).name, "chat");
        assert_eq!(set.choose(None).name, "chat");
        set.replace(1, pair("chat2", "chat.test"));
        assert_eq!(set.choose(None).name, "chat2");
    }

    #[test]
    fn the_watcher_swaps_a_renewed_pair_and_keeps_the_old_one_over_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        let write = |names: &[&str]| {
            let (c, k) = make(names, -1, 30);
            // As certbot does: new files, renamed over the old ones.
            std::fs::write(dir.path().join("new.pem"), c).unwrap();
            std::fs::write(dir.path().join("new.key"), k).unwrap();
            std::fs::rename(dir.path().join("new.pem"), &cert_path).unwrap();
            std::fs::rename(dir.path().join("new.key"), &key_path).unwrap();
        };
        write(&["old.test"]);
        let config = CertificatePair {
            name: "a".into(),
            certificate: cert_path.clone(),
            key: key_path.clone(),
        };
        let set = Arc::new(CertificateSet::new(
            vec![load_pair(&config, now()).unwrap()],
            0,
        ));
        let mut watched = WatchedPair::new(set.clone(), 0, config);
        assert!(watched.poll(now()).is_none());
        write(&["new.test"]);
        assert!(watched.poll(now()).unwrap().is_ok());
        assert!(set.choose(None).covers("new.test"));
        // A key from another pair: refused, the renewed one stays, and it is not retried.
        let (_, stray) = make(&["x.test"], -1, 30);
        std::fs::write(dir.path().join("new.key"), stray).unwrap();
        std::fs::rename(dir.path().join("new.key"), &key_path).unwrap();
        assert!(watched.poll(now()).unwrap().is_err());
        assert!(watched.poll(now()).is_none());
        assert!(set.choose(None).covers("new.test"));
    }
}
