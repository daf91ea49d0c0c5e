//! The policy hook's transport: one POST over Pingora's pooled connector (the providers'
//! pool), so a hook on loopback costs one write and one read per request, no handshake.
//! Questions are idempotent (the hook decides, it does no work), so a pooled connection the
//! hook had closed is retried once on a fresh one.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::config::server::BaseUrl;

use super::MAX_ANSWER_BYTES;

pub struct Client {
    base: BaseUrl,
    peer: Arc<HttpPeer>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// Resolve the hook's host (blocking DNS: at start only).
    pub fn new(base: &BaseUrl) -> Result<Client, String> {
        let addr = (base.host.as_str(), base.port)
            .to_socket_addrs()
            .map_err(|e| format!("policy.url: cannot resolve {}: {e}", base.host))?
            .next()
            .ok_or_else(|| format!("policy.url: {} has no address", base.host))?;
        let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Client {
            base: base.clone(),
            peer: Arc::new(peer),
        })
    }

    fn header(&self, len: usize) -> pingora::Result<RequestHeader> {
        let path = if self.base.path.is_empty() {
            "/"
        } else {
            self.base.path.as_str()
        };
        let mut h = RequestHeader::build("POST", path.as_bytes(), Some(5))?;
        h.insert_header(http::header::HOST, self.base.authority())?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, len)?;
        h.insert_header(
            http::header::USER_AGENT,
            concat!("fluxrouter/", env!("CARGO_PKG_VERSION")),
        )?;
        Ok(h)
    }

    /// POST `body`; the answer's body when the hook answered 2xx. The caller bounds the time.
    pub async fn post(&self, connector: &Connector, body: Vec<u8>) -> Result<Bytes, String> {
        let body = Bytes::from(body);
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut session, reused) = connector
                .get_http_session(&*self.peer)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let header = self.header(body.len()).map_err(|e| e.to_string())?;
            let sent = async {
                session.write_request_header(Box::new(header)).await?;
                session.write_request_body(body.clone(), true).await?;
                session.finish_request_body().await?;
                session.read_response_header().await
            }
            .await;
            if let Err(e) = sent {
                if reused && tries == 1 {
                    continue;
                }
                return Err(format!("exchange: {e}"));
            }
            let status = session.response_header().map_or(0, |h| h.status.as_u16());
            let mut answer = BytesMut::new();
            loop {
                match session.read_response_body().await {
                    Ok(Some(chunk)) => {
                        if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                            return Err(format!("answer over {MAX_ANSWER_BYTES} bytes"));
                        }
                        answer.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("reading the answer: {e}")),
                }
            }
            connector
                .release_http_session(session, &*self.peer, Some(Duration::from_secs(60)))
                .await;
            if !(200..300).contains(&status) {
                return Err(format!("the hook answered {status}"));
            }
            return Ok(answer.freeze());
        }
    }
}
