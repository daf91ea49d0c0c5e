//! Traffic control and hardening, against the real binary: memory bounded by the in-flight
//! budget, slow and idle clients cut, broken HTTP answered in the gateway's shape, pipelining.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{expect_openai_error, header, Flux};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn addr(flux: &Flux) -> String {
    flux.base.trim_start_matches("http://").to_string()
}

fn connect(flux: &Flux) -> TcpStream {
    let s = TcpStream::connect(addr(flux)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads responses one after the other from a connection (content-length or chunked).
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(stream: TcpStream) -> Reader {
        Reader {
            stream,
            buf: Vec::new(),
        }
    }

    /// More bytes; false at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn take_until(&mut self, pat: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                let out = self.buf[..i].to_vec();
                self.buf.drain(..i + pat.len());
                return Some(out);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn response(&mut self) -> Option<Raw> {
        let head = String::from_utf8(self.take_until(b"\r\n\r\n")?).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size = String::from_utf8(self.take_until(b"\r\n")?).unwrap();
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let chunk = self.take(size + 2)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
            body
        } else {
            let len = get("content-length").map_or(0, |v| v.parse().unwrap());
            self.take(len)?
        };
        Some(Raw {
            status,
            headers,
            body,
        })
    }

    /// What arrives before the server closes the connection (EOF or reset), bytes already
    /// read included; None when it is still open after `limit`.
    fn rest_until_closed(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(std::mem::take(&mut self.buf))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Whether the server closed the connection within `limit`.
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
            || matches!(self.stream.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// A chat body of about `size` bytes.
fn chat_body(size: usize) -> bytes::Bytes {
    let filler = "a".repeat(size);
    let v = serde_json::json!({
        "model": "flux-formats",
        "messages": [{"role": "user", "content": filler}],
    });
    bytes::Bytes::from(serde_json::to_vec(&v).unwrap())
}

/// RSS once it stops moving: the tokenizer's vocabulary loads in the background after start
/// (tens of MiB in a debug build), which must not count as the test's growth.
async fn settled_rss_kb(flux: &Flux) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = flux.memory_kb("VmRSS");
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = flux.memory_kb("VmRSS");
        if now.abs_diff(last) < 256 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn assert_request_id(r: &Raw) -> String {
    let id = r
        .header("x-flux-request-id")
        .unwrap_or_else(|| panic!("no request id: {r:?}"))
        .to_string();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_memory_stays_within_the_in_flight_budget() {
    // Room for two 30 MB bodies at a time (each counts twice: the buffer and the copy sent
    // upstream): 40 concurrent uploads cannot take more.
    let budget = 128 * MIB;
    let flux = Flux::start_with_limits(&format!(
        "max_body_bytes_in_flight: {budget}, body_read_timeout_ms: 30000"
    ))
    .await;
    let warm = flux.chat(&common::ping("flux-formats")).await;
    assert_eq!(warm.status(), 200);
    settled_rss_kb(&flux).await;
    let before_kb = flux.memory_kb("VmHWM");
    let body = chat_body(30_000_000);
    let started = Instant::now();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let client = flux.client.clone();
            let url = format!("{}/v1/chat/completions", flux.base);
            let key = flux.key.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let id = r.headers().contains_key("x-flux-request-id");
                let body: Value = r.json().await.unwrap();
                (status, retry_after, id, body)
            })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for t in tasks {
        let (status, retry_after, id, body) = t.await.unwrap();
        assert!(id, "request id on every answer");
        match status {
            200 => served += 1,
            503 => {
                refused += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let peak_kb = flux.memory_kb("VmHWM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kb = flux.memory_kb("VmRSS");
    let grew_mib = (peak_kb - before_kb) / 1024;
    eprintln!(
        "40 x 30 MB: {served} served, {refused} refused (503) in {:.1} s; peak RSS {} MiB \
         (+{grew_mib} MiB), {} MiB after",
        started.elapsed().as_secs_f64(),
        peak_kb / 1024,
        after_kb / 1024
    );
    assert!(served >= 1, "some uploads are served");
    assert!(refused >= 1, "the rest are refused, not buffered");
    // The bodies within the budget, plus per admitted request the copy sent upstream
    // (at most budget / 30 MB of them) and the fixed overhead of the process.
    let bound = budget / MIB + 192;
    assert!(
        grew_mib <= bound,
        "peak RSS grew by {grew_mib} MiB, over the {bound} MiB bound"
    );
    // Nothing stays charged: a new request is accepted.
    assert_eq!(flux.chat(&common::ping("flux-fast")).await.status(), 200);
}

#[tokio::test]
async fn declared_lengths_reserve_nothing() {
    let flux = Flux::start().await;
    // Warm: the first requests allocate per-thread state once.
    for _ in 0..4 {
        assert_eq!(flux.chat(&common::ping("flux-fast")).await.status(), 200);
    }
    let before = settled_rss_kb(&flux).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = connect(&flux);
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            flux.key,
            32 * MIB
        )
        .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = flux.memory_kb("VmRSS");
    let grew_kb = after.saturating_sub(before);
    eprintln!("50 connections declaring 32 MiB: RSS {before} -> {after} kB");
    // 64 KiB of buffer each at most, and connection state.
    assert!(grew_kb < 16 * 1024, "RSS grew by {grew_kb} kB");
    // They do not fill the budget either: others are served.
    assert_eq!(flux.chat(&common::ping("flux-fast")).await.status(), 200);
    drop(held);
}

#[tokio::test]
async fn a_full_budget_answers_503_with_retry_after() {
    let flux = Flux::start_with_limits(
        "max_body_bytes: 1048576, max_body_bytes_in_flight: 2097152, body_read_timeout_ms: 20000",
    )
    .await;
    // One upload declares the whole budget and sends most of it, then stalls.
    let mut s = connect(&flux);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n",
        flux.key
    )
    .unwrap();
    s.write_all(&vec![b' '; 900_000]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let r = flux.chat(&common::ping("flux-fast")).await;
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "x-should-retry"), "true");
    expect_openai_error(r, 503, "overloaded").await;
    let r = flux
        .post(
            "/anthropic/v1/messages",
            &flux.key,
            &serde_json::json!({"model": "flux-fast", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
    // The stalled upload leaves: its share is given back.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = flux.chat(&common::ping("flux-fast")).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "budget never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flux.log_containing("\"error\":\"overloaded\"").await;
}

#[tokio::test]
async fn slow_headers_are_cut_at_the_header_deadline() {
    let flux = Flux::start_with_limits("header_timeout_ms: 2000").await;
    let s = connect(&flux);
    let started = Instant::now();
    let request = b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnop";
    // One byte every 700 ms: each read is fast, the header never ends.
    let mut reader = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in request {
                if w.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Reader::new(s.try_clone().unwrap())
    };
    let r = reader.response().expect("an answer before the close");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    let id = assert_request_id(&r);
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "Anthropic shape from the path seen"
    );
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(4500),
        "{elapsed:?}"
    );
    assert!(reader.closed_within(Duration::from_secs(2)));
    flux.log_containing(&id).await;
    let _ = s.shutdown(std::net::Shutdown::Both);
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let flux = Flux::start_with_limits("keepalive_timeout_seconds: 2").await;
    // A served keep-alive connection, then silence.
    let mut s = connect(&flux);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = Reader::new(s.try_clone().unwrap());
    let r = reader.response().unwrap();
    assert_eq!(r.status, 200);
    let started = Instant::now();
    assert!(reader.closed_within(Duration::from_secs(6)), "still open");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
    // A connection that never sends anything is closed after the same time.
    let s = connect(&flux);
    let started = Instant::now();
    let mut reader = Reader::new(s);
    assert!(reader.closed_within(Duration::from_secs(6)));
    assert!(started.elapsed() < Duration::from_secs(4));
}

fn exchange(flux: &Flux, request: &[u8]) -> Option<Raw> {
    let s = connect(flux);
    let mut w = s.try_clone().unwrap();
    let request = request.to_vec();
    // Written from another thread: the gateway may answer before it has read everything.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&request);
    });
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = Reader::new(s).response();
    let _ = writer.join();
    r
}

#[tokio::test]
async fn broken_http_gets_the_request_id_and_the_error_shape() {
    let flux = Flux::start().await;

    // More header fields than Pingora parses (256): Pingora refuses the header before any
    // gateway phase; the gateway's connection guard answers in its place.
    let mut many = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    for i in 0..1000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = exchange(&flux, many.as_bytes()).expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    let id = assert_request_id(&r);
    assert_eq!(r.json()["error"]["code"], "invalid_request");
    flux.log_containing(&id).await;

    // A 1 MB header.
    let mut big = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ");
    big.push_str(&"b".repeat(1_100_000));
    big.push_str("\r\n\r\n");
    let r = exchange(&flux, big.as_bytes()).expect("an answer to a 1 MB header");
    assert_eq!(r.status, 400, "{r:?}");
    let id = assert_request_id(&r);
    assert_eq!(r.json()["error"]["code"], "invalid_request");
    flux.log_containing(&id).await;

    // CONNECT: refused in the gateway's shape, and the connection closed.
    let r = exchange(
        &flux,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 405, "{r:?}");
    let id = assert_request_id(&r);
    assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    flux.log_containing(&id).await;

    // An absolute-form target is read as its path (RFC 9112 §3.2.2).
    let r = exchange(
        &flux,
        b"GET http://example.com/healthz HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_request_id(&r);
    let r = exchange(
        &flux,
        b"GET http://example.com/nowhere HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert_request_id(&r);

    // Malformed framing after a good header: the gateway's 400.
    let r = exchange(
        &flux,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            flux.key
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_request_id(&r);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let flux = Flux::start().await;
    let chat = serde_json::to_vec(&common::ping("flux-fast")).unwrap();
    let mut wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        flux.key,
        chat.len()
    )
    .into_bytes();
    wire.extend_from_slice(&chat);
    wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    wire.extend_from_slice(
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            flux.key
        )
        .as_bytes(),
    );
    wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut s = connect(&flux);
    // All four in one write, back to back.
    s.write_all(&wire).unwrap();
    let mut reader = Reader::new(s);
    let chat = reader.response().expect("first answer");
    assert_eq!(chat.status, 200, "{chat:?}");
    assert_eq!(chat.json()["object"], "chat.completion");
    let health = reader.response().expect("second answer");
    assert_eq!((health.status, &health.body[..]), (200, &b"ok\n"[..]));
    let models = reader.response().expect("third answer");
    assert_eq!(models.json()["object"], "list");
    let root = reader.response().expect("fourth answer");
    assert_eq!(&root.body[..], b"FluxRouter\n");
    let ids: std::collections::HashSet<_> = [&chat, &health, &models, &root]
        .iter()
        .map(|r| assert_request_id(r))
        .collect();
    assert_eq!(ids.len(), 4, "one id per request");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let flux = Flux::start().await;
    let chat = serde_json::to_vec(&common::ping("flux-fast")).unwrap();
    // Both framings (RFC 9112 §6.1): a proxy in front that honours Content-Length would read
    // the rest as another request. The length here covers the chunked body exactly, and a
    // second request follows on the same connection.
    let mut chunked = format!("{:x}\r\n", chat.len()).into_bytes();
    chunked.extend_from_slice(&chat);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        flux.key,
        chunked.len()
    )
    .into_bytes();
    wire.extend_from_slice(&chunked);
    wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = connect(&flux);
    s.write_all(&wire).unwrap();
    let mut reader = Reader::new(s);
    let r = reader.response().expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    assert_request_id(&r);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(r.header("x-should-retry"), Some("false"), "{r:?}");
    let body = r.json();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Content-Length and Transfer-Encoding"),
        "{message}"
    );
    // The connection closes, and the request after it is not answered.
    let rest = reader
        .rest_until_closed(Duration::from_secs(10))
        .expect("the connection stayed open");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Nothing reached a provider.
    assert!(flux.sim.requests().await.is_empty());
}

#[tokio::test]
async fn a_connection_the_client_does_not_keep_alive_is_closed_after_the_answer() {
    let flux = Flux::start().await;
    let requests = [
        // HTTP/1.0 keeps a connection only when asked to.
        "GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n".to_string(),
        format!(
            "GET /v1/models HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            flux.key
        ),
        // HTTP/1.1 with Connection: close.
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            flux.key
        ),
    ];
    for request in &requests {
        let mut s = connect(&flux);
        // A second request right behind: it must not be answered.
        s.write_all(format!("{request}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut reader = Reader::new(s);
        let r = reader.response().expect("an answer");
        assert_eq!(r.status, 200, "{request}: {r:?}");
        let connection = r
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(!connection.contains("keep-alive"), "{request}: {r:?}");
        let rest = reader
            .rest_until_closed(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{request}: the connection stayed open"));
        assert!(
            rest.is_empty(),
            "{request}: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    // An HTTP/1.0 client that asks for keep-alive keeps its connection.
    let mut s = connect(&flux);
    s.write_all(
        b"GET /healthz HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n\
          GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut reader = Reader::new(s);
    let first = reader.response().expect("first answer");
    assert_eq!(first.header("connection"), Some("keep-alive"), "{first:?}");
    let second = reader.response().expect("second answer");
    assert_eq!(&second.body[..], b"FluxRouter\n");
    assert!(reader.rest_until_closed(Duration::from_secs(10)).is_some());
}

#[tokio::test]
async fn a_websocket_attempt_on_responses_gets_426_and_the_connection_serves_the_post() {
    let flux = Flux::start().await;
    // What Codex sends with supports_websockets before it falls back to HTTP (on a 426 only).
    let handshake = format!(
        "GET /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        flux.key
    );
    let mut s = connect(&flux);
    s.write_all(handshake.as_bytes()).unwrap();
    let mut reader = Reader::new(s.try_clone().unwrap());
    let r = reader.response().expect("an answer to the handshake");
    assert_eq!(r.status, 426, "{r:?}");
    assert_request_id(&r);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"]["code"], "websocket_not_served", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("WebSockets are not served"), "{message}");
    assert!(message.contains("POST /v1/responses"), "{message}");
    assert_ne!(r.header("connection"), Some("close"), "{r:?}");

    // The same connection then carries the HTTP request.
    let post =
        serde_json::to_vec(&serde_json::json!({"model": "flux-fast", "input": "hi"})).unwrap();
    let mut wire = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        flux.key,
        post.len()
    )
    .into_bytes();
    wire.extend_from_slice(&post);
    s.write_all(&wire).unwrap();
    let r = reader.response().expect("an answer to the POST");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["object"], "response", "{r:?}");
}
