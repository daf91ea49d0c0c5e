//! Providers and the exchange with them: peer, headers, key, timeouts.
//!
//! The gateway performs the upstream exchange itself (Pingora's pooled connector) rather than
//! through the proxy path, so bodies of any size pass and the response header can wait for
//! what the gateway learns from the upstream (see NOTES-pingora: the 64 KiB retry buffer).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};

use crate::config::server::{ProviderTimeouts, WireFormat};
use crate::config::ServerConfig;

/// A provider base URL, split once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1` or `/v1beta/openai` (may be empty).
    pub path: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("'{url}' must start with http:// or https://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("'{url}' has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(format!("'{url}' must not have a query string"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(BaseUrl {
            tls,
            host,
            port,
            path,
        })
    }

    /// The Host header: the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// Map a client path (`/v1/chat/completions`) onto this base URL. The client's `/v1` is
    /// replaced by the base path, so a base URL ending in `/v1` never yields `/v1/v1`.
    pub fn upstream_path(&self, client_path: &str) -> String {
        let rest = client_path.strip_prefix("/v1").unwrap_or(client_path);
        if self.path.is_empty() {
            format!("/v1{rest}")
        } else {
            format!("{}{rest}", self.path)
        }
    }
}

/// A configured provider, ready for requests.
pub struct Provider {
    pub name: String,
    pub format: WireFormat,
    pub base: BaseUrl,
    host_header: String,
    /// None while the host cannot be resolved; attempts then fail over. Re-resolved in the
    /// background ([`Provider::refresh_address`]), so a provider's DNS change is followed.
    peer: ArcSwapOption<HttpPeer>,
    /// `Bearer <key>` from the provider's environment variable.
    authorization: Option<String>,
    pub timeouts: ProviderTimeouts,
}

impl std::fmt::Debug for Provider {
    // Hand-written so the key can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("resolved", &self.peer.load().is_some())
            .field("has_key", &self.authorization.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
}

impl Providers {
    /// Resolve addresses and read keys from the environment. Runs at start, off the request
    /// path (DNS here is blocking). Problems are returned as warnings: a provider that cannot
    /// be reached is skipped over by fallbacks rather than stopping the gateway.
    pub fn build(
        config: &ServerConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut by_name = HashMap::new();
        for (name, p) in &config.providers {
            let base = BaseUrl::parse(&p.base_url).expect("validated at load");
            let authorization = match &p.api_key_env {
                Some(var) => match env(var) {
                    Some(key) if !key.is_empty() => Some(format!("Bearer {key}")),
                    _ => {
                        warnings.push(format!("provider {name}: environment variable {var} is not set; requests go without a key"));
                        None
                    }
                },
                None => None,
            };
            let peer = match (base.host.as_str(), base.port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(addr)) => Some(Arc::new(make_peer(addr, &base, &p.timeouts))),
                Ok(None) | Err(_) => {
                    warnings.push(format!(
                        "provider {name}: cannot resolve {}; its models will fail over",
                        base.host
                    ));
                    None
                }
            };
            let provider = Provider {
                name: name.clone(),
                format: p.format,
                host_header: base.authority(),
                base,
                peer: ArcSwapOption::new(peer),
                authorization,
                timeouts: p.timeouts.clone(),
            };
            by_name.insert(name.clone(), Arc::new(provider));
        }
        (Providers { by_name }, warnings)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}

fn make_peer(addr: SocketAddr, base: &BaseUrl, t: &ProviderTimeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
    let connect = Duration::from_millis(t.connect_ms);
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    peer.options.write_timeout = Some(Duration::from_millis(t.idle_ms));
    peer.options.read_timeout = Some(Duration::from_millis(t.idle_ms));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

/// Why an attempt at a provider failed before its response could be used.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    pub provider: String,
    pub reason: String,
}

/// A response whose header has arrived; the body is still to be read.
pub struct UpstreamResponse {
    pub session: HttpSession,
    pub status: u16,
    pub content_type: Option<String>,
    /// The peer the connection belongs to, for returning it to the right pool.
    peer: Arc<HttpPeer>,
}

impl UpstreamResponse {
    /// Return a connection whose response was read to the end to the pool.
    pub async fn release(self, connector: &Connector) {
        connector
            .release_http_session(self.session, &*self.peer, Some(Duration::from_secs(60)))
            .await;
    }
}

impl Provider {
    /// Send one request and wait for the response header.
    pub async fn send(
        &self,
        connector: &Connector,
        client_path: &str,
        body: Bytes,
        stream: bool,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let fail = |reason: String| AttemptFailure {
            provider: self.name.clone(),
            reason,
        };
        let peer = self
            .peer
            .load_full()
            .ok_or_else(|| fail(format!("address of {} not resolved", self.base.host)))?;
        let header = self
            .request_header(client_path, body.len(), stream)
            .map_err(|e| fail(format!("building request: {e}")))?;
        // A pooled connection the provider already closed fails on first use; one fresh
        // connection is then tried before the attempt counts as failed.
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut session, reused) = connector
                .get_http_session(&*peer)
                .await
                .map_err(|e| fail(format!("connect: {e}")))?;
            session.set_read_timeout(Some(Duration::from_millis(self.timeouts.first_byte_ms)));
            let sent = async {
                session
                    .write_request_header(Box::new(header.clone()))
                    .await?;
                session.write_request_body(body.clone(), true).await?;
                session.finish_request_body().await?;
                session.read_response_header().await
            }
            .await;
            match sent {
                Ok(()) => {
                    let resp = session.response_header().expect("header was read");
                    let status = resp.status.as_u16();
                    let content_type = resp
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    session.set_read_timeout(Some(Duration::from_millis(self.timeouts.idle_ms)));
                    return Ok(UpstreamResponse {
                        session,
                        status,
                        content_type,
                        peer,
                    });
                }
                // A slow provider is not a stale connection: only a closed one is retried.
                Err(e) if reused && tries == 1 && !is_timeout(&e) => continue,
                Err(e) => return Err(fail(format!("exchange: {e}"))),
            }
        }
    }

    fn request_header(
        &self,
        client_path: &str,
        len: usize,
        stream: bool,
    ) -> pingora::Result<RequestHeader> {
        let path = self.base.upstream_path(client_path);
        let mut h = RequestHeader::build("POST", path.as_bytes(), Some(8))?;
        h.insert_header(http::header::HOST, &self.host_header)?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        h.insert_header(
            http::header::ACCEPT,
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        )?;
        // Plain bodies: the gateway reads usage out of them.
        h.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        h.insert_header(
            http::header::USER_AGENT,
            concat!("fluxrouter/", env!("CARGO_PKG_VERSION")),
        )?;
        if let Some(auth) = &self.authorization {
            let mut value = http::HeaderValue::from_str(auth).map_err(|_| {
                pingora::Error::explain(
                    pingora::ErrorType::InternalError,
                    "provider key is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            h.insert_header(http::header::AUTHORIZATION, value)?;
        }
        Ok(h)
    }

    /// Resolve the host again; returns the new address when it changed. IP literals are
    /// left alone.
    pub async fn refresh_address(&self) -> std::io::Result<Option<SocketAddr>> {
        if self.base.host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(None);
        }
        let addr = tokio::net::lookup_host((self.base.host.as_str(), self.base.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let current = self.peer.load();
        if current
            .as_ref()
            .is_some_and(|p| p.address().as_inet() == Some(&addr))
        {
            return Ok(None);
        }
        self.peer
            .store(Some(Arc::new(make_peer(addr, &self.base, &self.timeouts))));
        Ok(Some(addr))
    }
}

fn is_timeout(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        pingora::ErrorType::ReadTimedout | pingora::ErrorType::WriteTimedout
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_split_and_map_paths_without_doubling_v1() {
        let b = BaseUrl::parse("https://api.openai.com/v1").unwrap();
        assert_eq!(
            (b.tls, b.port, b.authority()),
            (true, 443, "api.openai.com".to_string())
        );
        assert_eq!(
            b.upstream_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );

        let b = BaseUrl::parse("https://generativelanguage.googleapis.com/v1beta/openai/").unwrap();
        assert_eq!(
            b.upstream_path("/v1/chat/completions"),
            "/v1beta/openai/chat/completions"
        );

        let b = BaseUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (b.tls, b.authority()),
            (false, "127.0.0.1:9000".to_string())
        );
        assert_eq!(
            b.upstream_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );

        let b = BaseUrl::parse("http://[::1]:9000/_sim/fail500/v1").unwrap();
        assert_eq!(b.host, "::1");
        assert_eq!(b.authority(), "[::1]:9000");
        assert_eq!(
            b.upstream_path("/v1/chat/completions"),
            "/_sim/fail500/v1/chat/completions"
        );
    }

    #[test]
    fn bad_base_urls_are_rejected() {
        assert!(BaseUrl::parse("ftp://x/v1").is_err());
        assert!(BaseUrl::parse("api.openai.com/v1").is_err());
        assert!(BaseUrl::parse("https://x/v1?key=1").is_err());
    }
}
