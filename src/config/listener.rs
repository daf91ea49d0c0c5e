//! A `listen` entry: a bare address (`"0.0.0.0:8080"`, plaintext HTTP/1.1) or a map that
//! adds TLS, h2c (HTTP/2 with prior knowledge on plaintext) and the PROXY protocol.
//!
//! ```yaml
//! listen:
//!   - 127.0.0.1:8080
//!   - address: 0.0.0.0:8443
//!     tls: { certificate: certs/api.pem, key: certs/api.key }
//!   - address: 0.0.0.0:443
//!     proxy_protocol: true
//!     tls:
//!       certificates:
//!         - { name: api, certificate: certs/api.pem, key: certs/api.key }
//!         - { name: chat, certificate: certs/chat.pem, key: certs/chat.key }
//!       default: api
//!       hsts: { max_age: 31536000, include_subdomains: true }
//! ```
//!
//! The shape is checked here, once, at load; the files themselves are read (and re-read on
//! renewal) by [`crate::listener`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// One listening address and what it speaks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub address: SocketAddr,
    /// Terminate TLS here (HTTP/2 by ALPN, HTTP/1.1 fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 with prior knowledge on a plaintext listener (meshes, internal balancers).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client;
    /// one without is closed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

impl Listener {
    /// A plaintext HTTP/1.1 listener (today's bare address).
    pub fn plain(address: SocketAddr) -> Self {
        Listener {
            address,
            tls: None,
            h2c: false,
            proxy_protocol: false,
        }
    }

    /// Whether two listeners differ only in their address (they can share one service).
    pub fn same_kind(&self, other: &Listener) -> bool {
        self.tls == other.tls
            && self.h2c == other.h2c
            && self.proxy_protocol == other.proxy_protocol
    }

    /// Resolve certificate paths against the config file's folder.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for pair in tls.certificates.iter_mut() {
                pair.certificate = base.join(&pair.certificate);
                pair.key = base.join(&pair.key);
            }
        }
    }

    /// The shape's rules; `field` names this entry (`listen[1]`).
    pub(super) fn validate(&self, field: &str) -> Result<(), (String, String)> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let f = |rest: &str| format!("{field}.tls{rest}");
        if self.h2c {
            return Err((
                format!("{field}.h2c"),
                "h2c is HTTP/2 on plaintext; a TLS listener offers HTTP/2 by ALPN".into(),
            ));
        }
        if tls.certificates.is_empty() {
            return Err((
                f(""),
                "needs `certificate` and `key`, or `certificates: [{certificate, key}, ...]`"
                    .into(),
            ));
        }
        for (i, pair) in tls.certificates.iter().enumerate() {
            if pair.name.is_empty() {
                return Err((f(&format!(".certificates[{i}].name")), "is empty".into()));
            }
            if let Some(j) = tls.certificates[..i]
                .iter()
                .position(|p| p.name == pair.name)
            {
                return Err((
                    f(&format!(".certificates[{i}].name")),
                    format!("`{}` also names certificates[{j}]", pair.name),
                ));
            }
        }
        if let Err(reason) = tls.default_index() {
            return Err((f(".default"), reason));
        }
        if tls.handshake_timeout_ms == 0 {
            return Err((f(".handshake_timeout_ms"), "must be positive".into()));
        }
        Ok(())
    }
}

/// A listener's certificates and TLS settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsConfig {
    /// Each certificate chain and its key; SNI picks among them by the certificates' names.
    pub certificates: Vec<CertificatePair>,
    /// The pair served to a client that sends no SNI or a name no certificate covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<PairChoice>,
    /// How long a client has to finish its handshake (Pingora would wait 60 s).
    pub handshake_timeout_ms: u64,
    /// `Strict-Transport-Security` on every response of this listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsConfig>,
}

impl TlsConfig {
    /// Which of `certificates` is the default; an error names what is wrong with `default`.
    pub fn default_index(&self) -> Result<usize, String> {
        match &self.default {
            None => Ok(0),
            Some(PairChoice::Index(i)) if *i < self.certificates.len() => Ok(*i),
            Some(PairChoice::Index(i)) => Err(format!(
                "{i} is past the last certificate (there are {})",
                self.certificates.len()
            )),
            Some(PairChoice::Name(name)) => self
                .certificates
                .iter()
                .position(|p| &p.name == name)
                .ok_or_else(|| format!("no certificate is named `{name}`")),
        }
    }
}

/// One certificate chain (PEM, leaf first) and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// What logs, `fluxrouter check` and `flux_tls_certificate_expiry_seconds` call it;
    /// absent: the certificate file's name without its extension.
    #[serde(default)]
    pub name: String,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// `default:` by a pair's name or its position.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PairChoice {
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// Seconds a browser remembers to use HTTPS only.
    pub max_age: u64,
    #[serde(default)]
    pub include_subdomains: bool,
}

impl HstsConfig {
    /// The header's value.
    pub fn header_value(&self) -> String {
        if self.include_subdomains {
            format!("max-age={}; includeSubDomains", self.max_age)
        } else {
            format!("max-age={}", self.max_age)
        }
    }
}

const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// `tls:` as written: one pair inline, or a list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsForm {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    certificates: Vec<CertificatePair>,
    default: Option<PairChoice>,
    #[serde(default = "default_handshake_timeout_ms")]
    handshake_timeout_ms: u64,
    hsts: Option<HstsConfig>,
}

fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}

impl<'de> Deserialize<'de> for TlsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let form = TlsForm::deserialize(d)?;
        let mut certificates = form.certificates;
        match (form.certificate, form.key) {
            (Some(certificate), Some(key)) => {
                if !certificates.is_empty() {
                    return Err(de::Error::custom(
                        "give either `certificate` and `key`, or `certificates`, not both",
                    ));
                }
                certificates.push(CertificatePair {
                    name: String::new(),
                    certificate,
                    key,
                });
            }
            (None, None) => {}
            _ => {
                return Err(de::Error::custom(
                    "`certificate` and `key` go together (the chain and its private key)",
                ))
            }
        }
        for pair in &mut certificates {
            if pair.name.is_empty() {
                pair.name = pair
                    .certificate
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
            }
        }
        Ok(TlsConfig {
            certificates,
            default: form.default,
            handshake_timeout_ms: form.handshake_timeout_ms,
            hsts: form.hsts,
        })
    }
}

/// The map form of a `listen` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerForm {
    address: SocketAddr,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    h2c: bool,
    #[serde(default)]
    proxy_protocol: bool,
}

impl<'de> Deserialize<'de> for Listener {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> Visitor<'de> for Form {
            type Value = Listener;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an address (`127.0.0.1:8080`) or `{address, tls, h2c, proxy_protocol}`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listener, E> {
                v.parse()
                    .map(Listener::plain)
                    .map_err(|e| E::custom(format!("`{v}` is not an address with a port: {e}")))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Listener, M::Error> {
                let form = ListenerForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Listener {
                    address: form.address,
                    tls: form.tls,
                    h2c: form.h2c,
                    proxy_protocol: form.proxy_protocol,
                })
            }
        }
        d.deserialize_any(Form)
    }
}

/// Rules across a list of listeners (`field` is `listen` or `admin.listen`).
pub(super) fn validate_all(listeners: &[Listener], field: &str) -> Result<(), (String, String)> {
    if listeners.is_empty() {
        return Err((field.into(), "at least one listener is needed".into()));
    }
    for (i, l) in listeners.iter().enumerate() {
        if listeners[..i].iter().any(|o| o.address == l.address) {
            return Err((
                format!("{field}[{i}].address"),
                format!("{} is listed twice", l.address),
            ));
        }
        l.validate(&format!("{field}[{i}]"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Listener>, String> {
        serde_norway::from_str::<Vec<Listener>>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bare_address_is_a_plaintext_listener() {
        let l = parse("[127.0.0.1:8080, \"[::1]:9000\"]").unwrap();
        assert_eq!(l[0], Listener::plain("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(l[1].address, "[::1]:9000".parse().unwrap());
        assert!(parse("[localhost]").unwrap_err().contains("not an address"));
    }

    #[test]
    fn one_pair_inline_takes_its_name_from_the_file() {
        let l =
            parse("- address: 0.0.0.0:8443\n  tls: {certificate: /c/api.pem, key: /c/api.key}\n")
                .unwrap();
        let tls = l[0].tls.as_ref().unwrap();
        assert_eq!(tls.certificates.len(), 1);
        assert_eq!(tls.certificates[0].name, "api");
        assert_eq!(tls.handshake_timeout_ms, 10_000);
        assert_eq!(tls.default_index(), Ok(0));
        assert!(validate_all(&l, "listen").is_ok());
    }

    #[test]
    fn the_default_pair_is_chosen_by_name_or_index() {
        let text = |default: &str| {
            format!(
                "- address: 0.0.0.0:443\n  tls:\n    certificates:\n      - {{certificate: a.pem, key: a.key}}\n      - {{name: chat, certificate: b.pem, key: b.key}}\n    default: {default}\n"
            )
        };
        let index = |d: &str| {
            parse(&text(d)).unwrap()[0]
                .tls
                .clone()
                .unwrap()
                .default_index()
        };
        assert_eq!(index("chat"), Ok(1));
        assert_eq!(index("a"), Ok(0));
        assert_eq!(index("1"), Ok(1));
        assert!(index("2").unwrap_err().contains("past the last"));
        let l = parse(&text("nope")).unwrap();
        let (field, reason) = validate_all(&l, "listen").unwrap_err();
        assert_eq!(field, "listen[0].tls.default");
        assert!(reason.contains("`nope`"), "{reason}");
    }

    #[test]
    fn malformed_tls_and_listener_shapes_are_refused() {
        let e = parse("- address: 0.0.0.0:1\n  tls: {certificate: a.pem}\n").unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = parse(
            "- address: 0.0.0.0:1\n  tls: {certificate: a, key: b, certificates: [{certificate: c, key: d}]}\n",
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = parse("- address: 0.0.0.0:1\n  tsl: {}\n").unwrap_err();
        assert!(e.contains("tsl"), "{e}");
        let l =
            parse("- address: 0.0.0.0:1\n  h2c: true\n  tls: {certificate: a, key: b}\n").unwrap();
        assert_eq!(validate_all(&l, "listen").unwrap_err().0, "listen[0].h2c");
        let l = parse("- address: 0.0.0.0:1\n  tls: {}\n").unwrap();
        assert_eq!(validate_all(&l, "listen").unwrap_err().0, "listen[0].tls");
        let l = parse("[0.0.0.0:1, {address: 0.0.0.0:1, h2c: true}]").unwrap();
        assert_eq!(
            validate_all(&l, "listen").unwrap_err().0,
            "listen[1].address"
        );
        let l = parse("- address: 0.0.0.0:1\n  tls:\n    certificates: [{name: x, certificate: a, key: b}, {name: x, certificate: c, key: d}]\n").unwrap();
        assert!(validate_all(&l, "listen")
            .unwrap_err()
            .1
            .contains("also names"));
    }

    #[test]
    fn hsts_renders_its_header() {
        let h = HstsConfig {
            max_age: 600,
            include_subdomains: true,
        };
        assert_eq!(h.header_value(), "max-age=600; includeSubDomains");
    }
}
