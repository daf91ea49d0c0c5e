//! The connection guard: the gateway's HTTP/1 service wraps each accepted stream with a
//! header deadline and a keep-alive idle timeout, and answers in the gateway's own shape where
//! Pingora would answer for it (a header it cannot read, a method it refuses).
//!
//! Before HTTP, the listener's plan ([`ListenerPlan`]) runs: a PROXY protocol header read
//! (its client address becomes the peer Pingora reports), the count of that address's open
//! connections (`limits.per_address.connections`, `crate::address_limits`: a connection
//! past it is closed at once), the TLS handshake under its own deadline, and the choice of
//! HTTP/2 (ALPN `h2`, or h2c's preface) served by Pingora's own HTTP/2 loop, or HTTP/1.1
//! served here.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::ALPN;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::access_log::AccessLine;
use crate::errors::{ErrorKind, FluxError};
use crate::listener::{proxy_protocol, ListenerPlan};
use crate::state::AppState;
use crate::units::clock;

/// What an HTTP/2 client with prior knowledge (h2c) sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a request's start kept to name its method and path when Pingora refuses it.
const HEAD_KEPT: usize = 512;

/// What the gateway and a connection's stream share: which request the connection is on,
/// and whether that request's header has reached the gateway.
#[derive(Debug, Default)]
struct ConnState {
    request: AtomicU64,
    header_done: AtomicBool,
}

impl ConnState {
    fn begin_request(&self) {
        self.header_done.store(false, Ordering::Release);
        self.request.fetch_add(1, Ordering::AcqRel);
    }
}

tokio::task_local! {
    static CONN: Arc<ConnState>;
}

/// Called by the gateway once Pingora has parsed a request's header (early_request_filter):
/// the header deadline no longer applies, and what Pingora writes from now on is the
/// gateway's own answer.
pub(super) fn header_received() {
    let _ = CONN.try_with(|c| c.header_done.store(true, Ordering::Release));
}

/// An access-log line for a request the gateway answered at the connection level (a header
/// Pingora could not read, or one that did not arrive in time): no `ProxyHttp` phase ran.
fn log_refused(
    state: &AppState,
    peer: Option<IpAddr>,
    id: &str,
    method: &str,
    status: u16,
    code: &'static str,
) {
    let log = &state.access_log;
    if !log.enabled() {
        return;
    }
    log.record(&AccessLine {
        error: Some(code),
        client_ip: peer,
        ..AccessLine::bare(clock::unix_secs_millis(), id, method, status)
    });
}

/// `work` within `limit`: `None` when it fails or is late, logged at debug (scanners and
/// health checks make these all day) naming `what`; the connection is then closed.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    work: impl Future<Output = Result<T, E>>,
    what: &str,
) -> Option<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            log::debug!("closed a connection: {what} failed: {e}");
            None
        }
        Err(_) => {
            log::debug!("closed a connection: {what} did not come in time");
            None
        }
    }
}

/// The accepted stream's peer (none on a Unix socket). A PROXY-protocol layer that rewrites
/// the socket digest's peer is seen here too.
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    Some(digest.peer_addr()?.as_inet()?.ip().to_canonical())
}

/// The gateway's HTTP/1 service: Pingora's proxy app behind a per-connection guard.
///
/// Pingora reads a request header with a per-read timeout only (a client sending a byte every
/// few seconds holds its connection forever), and answers an unreadable header (over 1 MiB,
/// more than 256 fields, malformed) itself, before any `ProxyHttp` phase: without the
/// request id, the error shape or an access-log line. The guard wraps each accepted stream:
/// it arms a deadline at a request's first byte (`limits.header_timeout_ms`) and answers 408
/// when it passes, and it replaces Pingora's own error answer with the gateway's.
///
/// Generic over the HTTP app it guards (the gateway's `HttpProxy`), so the guard knows nothing
/// of the pipeline behind it.
pub struct Edge<A> {
    proxy: Arc<A>,
    state: Arc<AppState>,
    plan: Arc<ListenerPlan>,
}

impl<A> Edge<A> {
    pub fn new(proxy: A, state: Arc<AppState>, plan: Arc<ListenerPlan>) -> Self {
        Edge {
            proxy: Arc::new(proxy),
            state,
            plan,
        }
    }

    /// The PROXY header, under the header deadline; `None`: the connection is closed (logged
    /// at debug: scanners and health checks make these).
    async fn read_proxy_header(&self, mut stream: Stream) -> Option<Stream> {
        let deadline = Duration::from_millis(self.state.config.limits.header_timeout_ms);
        let header = within(
            deadline,
            proxy_protocol::read_header(&mut stream),
            "a PROXY header",
        )
        .await?;
        if let Some(source) = header.source {
            // What `client_addr()` reports from now on; the local side stays the socket's.
            let digest = SocketDigest::from_raw_fd(stream.id());
            let _ = digest.peer_addr.set(Some(source.into()));
            stream.set_socket_digest(digest);
        }
        Some(stream)
    }

    /// The TLS handshake on a TLS listener, under its deadline; `None`: the connection is
    /// closed (logged at debug).
    async fn handshake(&self, mut stream: Stream) -> Option<Stream> {
        if let Some(tls) = &self.plan.tls {
            // The listener hands over its TCP stream boxed; the handshake wants it by type.
            let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
                log::error!("a TLS listener accepted a stream that is not TCP");
                return None;
            };
            // Plaintext sent here fails the handshake at its first bytes (not a TLS record),
            // and the connection closes at once.
            let tls_stream = within(
                tls.handshake_timeout,
                tls.acceptor.tls_handshake(*tcp),
                "a TLS handshake",
            )
            .await?;
            stream = Box::new(tls_stream);
        }
        Some(stream)
    }

    /// Whether the connection speaks HTTP/2: ALPN said so, or h2c's preface starts it. The
    /// bytes read to tell are put back for whichever protocol reads next.
    async fn speaks_h2(&self, stream: Stream) -> Option<(Stream, bool)> {
        if self.plan.tls.is_some() {
            let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
            return Some((stream, h2));
        }
        if !self.plan.h2c {
            return Some((stream, false));
        }
        let Ok(mut tcp) = stream.into_any().downcast::<L4Stream>() else {
            log::error!("an h2c listener accepted a stream that is not TCP");
            return None;
        };
        // Read no more than the preface, and stop at the first byte that differs from it:
        // an HTTP/1.1 request is told at once, however short (Pingora's own peek waits for
        // 24 bytes). `read` is cancel-safe: nothing is lost when the deadline cuts it.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.state.config.limits.header_timeout_ms);
        let mut got = Vec::with_capacity(H2_PREFACE.len());
        let mut buf = [0u8; H2_PREFACE.len()];
        while got.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&got) {
            let want = H2_PREFACE.len() - got.len();
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf[..want])).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                // Closed, failed or silent: the HTTP/1.1 path ends it in its own way.
                _ => break,
            }
        }
        tcp.rewind(&got);
        let h2 = got.as_slice() == H2_PREFACE;
        Some((tcp as Stream, h2))
    }

    /// Wait for HTTP/2's preface on a TLS connection that chose `h2`, within the header
    /// deadline (Pingora's HTTP/2 handshake waits forever: a client could finish TLS and
    /// hold the connection in silence). h2c's preface was read before, under the same
    /// deadline. `None`: silent, closed or not HTTP/2; the connection is closed.
    async fn preface_in_time(&self, mut stream: Stream) -> Option<Stream> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.state.config.limits.header_timeout_ms);
        let mut got = vec![0u8; H2_PREFACE.len()];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut got)).await {
            Ok(Ok(_)) if got.as_slice() == H2_PREFACE => Some(Box::new(Replayed {
                inner: stream,
                replay: got,
                at: 0,
            })),
            _ => {
                log::debug!("closed a TLS connection that chose h2 and sent no preface in time");
                None
            }
        }
    }

    /// Pingora's HTTP/2 loop (each stream a task), with the proxy's h2 settings (streams per
    /// connection, header size, idle timeout). It sends GOAWAY when its shutdown watch fires;
    /// the watch given fires at the start of a drain (upgrade or termination) as well as at
    /// shutdown, so HTTP/2 clients leave early, as `Connection: close` moves HTTP/1.1 ones.
    async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let mut drain = self.state.drain.subscribe();
        let (leave, leave_watch) =
            tokio::sync::watch::channel(*shutdown.borrow() || *drain.borrow());
        let mut shut = shutdown.clone();
        let relay = tokio::spawn(async move {
            tokio::select! {
                _ = shut.wait_for(|s| *s) => {}
                _ = drain.wait_for(|d| *d) => {}
            }
            let _ = leave.send(true);
        });
        let served = ServerApp::process_new(&self.proxy, stream, &leave_watch).await;
        relay.abort();
        served
    }

    fn keepalive(&self) -> Option<u64> {
        match self.state.config.limits.keepalive_timeout_seconds {
            0 => None,
            s => Some(s),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The PROXY header first: it names the peer the limits below count.
        let stream = match self.plan.proxy_protocol {
            true => self.read_proxy_header(stream).await?,
            false => stream,
        };
        let peer = peer_ip(&stream);
        // Connections per address (`limits.per_address.connections`): the slot is held until
        // this connection ends. Trusted proxies are exempt: theirs carry many clients.
        let _slot = match peer {
            Some(ip) => {
                let limits = &self.state.address_limits;
                match limits.connect(ip, self.state.trusted_proxies.trusts(ip)) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        // Closed before a byte is read (or a handshake made): a request costs
                        // more than the answer.
                        self.state.metrics.address_refused(refusal.reason());
                        limits.warn_refused_connection(ip);
                        return None;
                    }
                }
            }
            None => None,
        };
        let stream = if self.plan.is_plain() {
            stream
        } else {
            let stream = self.handshake(stream).await?;
            let (stream, h2) = self.speaks_h2(stream).await?;
            if h2 {
                let stream = match self.plan.tls {
                    Some(_) => self.preface_in_time(stream).await?,
                    None => stream,
                };
                return self.serve_h2(stream, shutdown).await;
            }
            stream
        };
        let conn = Arc::new(ConnState::default());
        let header_timeout = Duration::from_millis(self.state.config.limits.header_timeout_ms);
        let stream: Stream = Box::new(Guarded::new(
            stream,
            conn.clone(),
            header_timeout,
            self.state.clone(),
            peer,
        ));
        let keepalive = self.keepalive();
        let serve = async {
            // Pingora's own HTTP/1 loop, with the idle timeout from the config: it bounds the
            // wait for a new connection's first request and between keep-alive requests
            // (Pingora fixes 60 s for the first one).
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive(if *shutdown.borrow() { None } else { keepalive });
            let mut result = self.proxy.process_new_http(session, shutdown).await;
            while let Some((stream, settings)) = result.map(|r| r.consume()) {
                conn.begin_request();
                let mut session = ServerSession::new_http1(stream);
                if let Some(settings) = settings {
                    settings.apply_to_session(&mut session);
                }
                result = self.proxy.process_new_http(session, shutdown).await;
            }
        };
        CONN.scope(conn.clone(), serve).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// An accepted stream with the header deadline and Pingora's answers replaced.
struct Guarded {
    inner: Stream,
    conn: Arc<ConnState>,
    header_timeout: Duration,
    /// The request the fields below belong to.
    request: u64,
    /// When the request's first byte arrived: the header deadline counts from it.
    first_byte: Option<tokio::time::Instant>,
    /// The header deadline's timer, taken only when the header did not come whole in the read
    /// that brought its first byte (Pingora reads again): most requests never need one, and
    /// each timer locks the runtime's timer wheel and may wake a parked worker.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The start of the request as received.
    head: Vec<u8>,
    /// The gateway's answer replacing Pingora's, and how much of it is written.
    reply: Option<(Vec<u8>, usize)>,
    state: Arc<AppState>,
    /// The connection's peer, for the log lines of requests refused here.
    peer: Option<IpAddr>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("conn", &self.conn)
            .finish()
    }
}

impl Guarded {
    fn new(
        inner: Stream,
        conn: Arc<ConnState>,
        header_timeout: Duration,
        state: Arc<AppState>,
        peer: Option<IpAddr>,
    ) -> Self {
        Guarded {
            peer,
            inner,
            conn,
            header_timeout,
            request: 0,
            first_byte: None,
            deadline: None,
            head: Vec::new(),
            reply: None,
            state,
        }
    }

    /// Forget the previous request's deadline and head once a new request began.
    fn sync(&mut self) {
        let request = self.conn.request.load(Ordering::Acquire);
        if request != self.request {
            self.request = request;
            self.first_byte = None;
            self.deadline = None;
            self.head.clear();
            self.reply = None;
        }
    }

    fn in_header(&self) -> bool {
        !self.conn.header_done.load(Ordering::Acquire)
    }

    /// The method and path of the request line, as far as it arrived.
    fn request_line(&self) -> (String, String) {
        let line = self.head.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let mut parts = line.split(|&b| b == b' ');
        let text = |p: Option<&[u8]>| {
            let s = String::from_utf8_lossy(p.unwrap_or(&[])).trim().to_string();
            s.chars().take(200).collect::<String>()
        };
        let method = text(parts.next());
        let target = text(parts.next());
        // An absolute-form target names the path after its authority.
        let path = match target.split_once("://") {
            Some((_, rest)) => rest
                .find('/')
                .map_or("/".to_string(), |i| rest[i..].to_string()),
            None => target,
        };
        (method, path)
    }

    /// The gateway's answer for a request Pingora refused or the deadline cut, logged.
    fn own_reply(&self, kind: ErrorKind, message: &'static str) -> Vec<u8> {
        let id = crate::headers::new_request_id();
        let (method, path) = self.request_line();
        let format = crate::endpoints::format_for(path.split('?').next().unwrap_or(""));
        let err = FluxError::new(kind, message);
        let body = format.error_body(&err, &id);
        let status = err.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{}: {id}\r\n",
            body.len(),
            crate::headers::REQUEST_ID
        );
        for mirror in crate::headers::REQUEST_ID_MIRRORS {
            out.push_str(&format!("{mirror}: {id}\r\n"));
        }
        out.push_str(&format!(
            "{}: {}\r\n\r\n",
            crate::headers::SHOULD_RETRY,
            err.kind.retryable()
        ));
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        log_refused(&self.state, self.peer, &id, &method, status, err.code());
        out
    }

    /// Write what is left of the reply.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.reply.as_mut() {
            if *written >= bytes.len() {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.sync();
        let in_header = this.in_header();
        if !in_header {
            this.first_byte = None;
            this.deadline = None;
        } else if let Some(first_byte) = this.first_byte {
            let deadline = this.deadline.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(first_byte + this.header_timeout))
            });
            // Registers the waker: the deadline wakes a read that waits for more.
            if deadline.as_mut().poll(cx).is_ready() {
                this.first_byte = None;
                this.deadline = None;
                if this.reply.is_none() {
                    let reply = this.own_reply(
                        ErrorKind::RequestTimeout,
                        "The request header did not arrive in time; send it again.",
                    );
                    // Written when Pingora shuts the connection down, right after this error.
                    this.reply = Some((reply, 0));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request header deadline passed",
                )));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if in_header && matches!(result, Poll::Ready(Ok(()))) {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                let keep = HEAD_KEPT.saturating_sub(this.head.len()).min(got.len());
                this.head.extend_from_slice(&got[..keep]);
                // The timer itself waits for the next read (above): this one returns data.
                this.first_byte
                    .get_or_insert_with(tokio::time::Instant::now);
            }
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        if this.reply.is_none() && this.in_header() && buf.starts_with(b"HTTP/1.") {
            // The gateway never saw this request: Pingora is refusing its header.
            let reply = match buf.get(9..12) {
                Some(b"405") => {
                    this.own_reply(ErrorKind::MethodNotAllowed, "This method is not served.")
                }
                _ => this.own_reply(
                    ErrorKind::InvalidRequest,
                    "The request header could not be read: it is over 1 MiB, has more than \
                     256 fields, or is malformed.",
                ),
            };
            this.reply = Some((reply, 0));
        }
        if this.reply.is_some() {
            // Pingora's bytes are dropped; ours go instead.
            return match this.poll_reply(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        if this.reply.is_some() || this.in_header() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reply.is_some() {
            match this.poll_reply(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reply.is_some() {
            match this.poll_reply(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        if self.reply.is_some() {
            // A reply queued by the header deadline goes out before the connection closes.
            let flush = std::future::poll_fn(|cx| self.poll_reply(cx));
            let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
        }
        self.inner.shutdown().await;
    }
}

/// The digests and identity of a wrapped stream are its inner stream's.
macro_rules! forward_digests {
    ($wrapper:ty) => {
        impl UniqueID for $wrapper {
            fn id(&self) -> UniqueIDType {
                self.inner.id()
            }
        }

        impl Ssl for $wrapper {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }
            fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }
            fn selected_alpn_proto(&self) -> Option<ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        impl GetTimingDigest for $wrapper {
            fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
                self.inner.get_timing_digest()
            }
            fn get_read_pending_time(&self) -> Duration {
                self.inner.get_read_pending_time()
            }
            fn get_write_pending_time(&self) -> Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl GetProxyDigest for $wrapper {
            fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
                self.inner.get_proxy_digest()
            }
        }

        impl GetSocketDigest for $wrapper {
            fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
                self.inner.get_socket_digest()
            }
            fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
                self.inner.set_socket_digest(socket_digest)
            }
        }
    };
}

forward_digests!(Guarded);
forward_digests!(Replayed);

/// A TLS stream whose first bytes (HTTP/2's preface, read to bound the wait for it) were
/// taken: they are read again first.
#[derive(Debug)]
struct Replayed {
    inner: Stream,
    replay: Vec<u8>,
    at: usize,
}

impl AsyncRead for Replayed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.at);
            buf.put_slice(&this.replay[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Replayed {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

#[async_trait]
impl Peek for Replayed {}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
