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

use crate::config::server::{BaseUrl, ProviderTimeouts};
use crate::config::ServerConfig;
use crate::wire::{AuthHeader, Format, ANTHROPIC_VERSION};

/// A configured provider, ready for requests.
pub struct Provider {
    pub name: String,
    pub format: Format,
    pub base: BaseUrl,
    host_header: String,
    /// Where requests go: the base path and the format's path, computed once.
    path: String,
    /// None while the host cannot be resolved; attempts then fail over. Re-resolved in the
    /// background ([`Provider::refresh_address`]), so a provider's DNS change is followed.
    peer: ArcSwapOption<HttpPeer>,
    /// The key from the provider's environment variable, as the header its format wants
    /// (`Authorization: Bearer …` or `x-api-key`), marked sensitive so it is never logged.
    auth: Option<(http::HeaderName, http::HeaderValue)>,
    pub timeouts: ProviderTimeouts,
}

impl std::fmt::Debug for Provider {
    // Hand-written so the key can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("resolved", &self.peer.load().is_some())
            .field("has_key", &self.auth.is_some())
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
            let base = p.base_url.clone();
            let auth = match &p.api_key_env {
                Some(var) => match env(var) {
                    Some(key) if !key.is_empty() => match auth_header(p.format, &key) {
                        Some(h) => Some(h),
                        None => {
                            warnings.push(format!("provider {name}: the key in {var} is not a valid header value; requests go without a key"));
                            None
                        }
                    },
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
                path: base.endpoint(p.format),
                base,
                peer: ArcSwapOption::new(peer),
                auth,
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

fn auth_header(format: Format, key: &str) -> Option<(http::HeaderName, http::HeaderValue)> {
    let (name, value) = match format.auth_header() {
        AuthHeader::Bearer => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        AuthHeader::XApiKey => (http::HeaderName::from_static("x-api-key"), key.to_string()),
    };
    let mut value = http::HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// What one attempt sends, besides what the provider's config fixes.
pub struct Outgoing<'a> {
    pub body: Bytes,
    pub stream: bool,
    /// The client's `anthropic-version` and `anthropic-beta`, for Anthropic-format providers.
    pub anthropic_version: Option<&'a http::HeaderValue>,
    pub anthropic_beta: Option<&'a http::HeaderValue>,
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
        out: &Outgoing<'_>,
    ) -> Result<UpstreamResponse, AttemptFailure> {
        let body = &out.body;
        let fail = |reason: String| AttemptFailure {
            provider: self.name.clone(),
            reason,
        };
        let peer = self
            .peer
            .load_full()
            .ok_or_else(|| fail(format!("address of {} not resolved", self.base.host)))?;
        let header = self
            .request_header(out)
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

    fn request_header(&self, out: &Outgoing<'_>) -> pingora::Result<RequestHeader> {
        let mut h = RequestHeader::build("POST", self.path.as_bytes(), Some(10))?;
        h.insert_header(http::header::HOST, &self.host_header)?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, out.body.len().to_string())?;
        h.insert_header(
            http::header::ACCEPT,
            if out.stream {
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
        if let Some((name, value)) = &self.auth {
            h.insert_header(name.clone(), value.clone())?;
        }
        if self.format == Format::Anthropic {
            match out.anthropic_version {
                Some(v) => h.insert_header("anthropic-version", v.clone())?,
                None => h.insert_header("anthropic-version", ANTHROPIC_VERSION)?,
            }
            if let Some(beta) = out.anthropic_beta {
                h.insert_header("anthropic-beta", beta.clone())?;
            }
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
    fn each_format_gets_its_auth_header_marked_sensitive() {
        let (name, value) = auth_header(Format::OpenAiChat, "k1").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer k1")
        );
        assert!(value.is_sensitive());
        let (name, value) = auth_header(Format::OpenAiResponses, "k2").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer k2")
        );
        let (name, value) = auth_header(Format::Anthropic, "k3").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-api-key", "k3")
        );
        assert!(auth_header(Format::Anthropic, "bad\nkey").is_none());
    }
}
