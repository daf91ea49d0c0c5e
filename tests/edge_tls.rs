//! The edge itself: TLS listeners (SNI, renewal on disk, refusals), HTTP/2 by ALPN and h2c,
//! and the PROXY protocol. The real binary; a throwaway CA made here; real TLS and HTTP/2
//! clients (reqwest over rustls, the `h2` crate for what no polite client does).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client trusting only `ca`, reaching each `(host, addr)` by name (SNI is the host).
fn tls_client(ca: &Ca, hosts: &[(&str, SocketAddr)]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(30));
    for (host, addr) in hosts {
        b = b.resolve(host, *addr);
    }
    b
}

/// The names (DNS and IP) of the certificate the server presented.
fn served_names(r: &reqwest::Response) -> Vec<String> {
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let der = info.peer_certificate().expect("a peer certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(ip) if ip.len() == 4 => {
                std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()
            }
            other => format!("{other:?}"),
        })
        .collect()
}

/// A gateway with a TLS listener serving `api.test` and `chat.test` (the default, which also
/// covers 127.0.0.1), HSTS on, and a 1 s handshake deadline. Returns the TLS address.
async fn start_tls(ca: &Ca, extra_limits: &str) -> (Flux, SocketAddr) {
    let (api_cert, api_key) = ca.issue(&["api.test"]);
    let (chat_cert, chat_key) = ca.issue(&["chat.test", "127.0.0.1"]);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!(
        "{{address: \"{addr}\", tls: {{certificates: [{{name: api, certificate: api.pem, key: api.key}}, \
         {{name: chat, certificate: chat.pem, key: chat.key}}], default: chat, \
         handshake_timeout_ms: 1000, hsts: {{max_age: 600, include_subdomains: true}}}}}}"
    );
    let files: Vec<(&str, &[u8])> = vec![
        ("api.pem", api_cert.as_bytes()),
        ("api.key", api_key.as_bytes()),
        ("chat.pem", chat_cert.as_bytes()),
        ("chat.key", chat_key.as_bytes()),
    ];
    let flux = Flux::start_custom(&Custom {
        extra_listen: &listen,
        extra_limits,
        files: &files,
        ..Custom::default()
    })
    .await;
    (flux, addr)
}

async fn chat(client: &reqwest::Client, base: &str, key: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Read until the peer closes (bounded by `limit`): what it sent, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn tls_serves_the_api_with_sni_choosing_the_certificate_and_hsts() {
    let ca = Ca::new();
    let (flux, addr) = start_tls(&ca, "").await;
    let port = addr.port();

    // SNI api.test: the api certificate; a chat completion over TLS (HTTP/1.1 here).
    let client = tls_client(&ca, &[("api.test", addr), ("chat.test", addr)])
        .http1_only()
        .build()
        .unwrap();
    let r = chat(
        &client,
        &format!("https://api.test:{port}"),
        &flux.key,
        &ping("flux-fast"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(served_names(&r), ["api.test"]);
    assert_eq!(
        header(&r, "strict-transport-security"),
        "max-age=600; includeSubDomains"
    );
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-alpha");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");

    // SNI chat.test: the chat certificate.
    let r = client
        .get(format!("https://chat.test:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_names(&r), ["chat.test", "127.0.0.1"]);

    // No SNI (an IP address): the default, chat.
    let r = tls_client(&ca, &[])
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_names(&r), ["chat.test", "127.0.0.1"]);

    // A name no certificate covers: the default too (which the client then rightly refuses
    // to trust for that name; it looks anyway).
    let r = tls_client(&ca, &[("other.test", addr)])
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://other.test:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_names(&r), ["chat.test", "127.0.0.1"]);

    // The plaintext listener is unchanged: no HSTS there.
    let r = flux.chat(&ping("flux-fast")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("strict-transport-security").is_none());

    // Each certificate's expiry is a metric.
    let metrics = flux.metrics().await;
    for name in ["api", "chat"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "flux_tls_certificate_expiry_seconds{{certificate=\"{name}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no expiry for {name}: {metrics}"));
        let at: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(at > now + 86_400, "{line}");
    }
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_while_kept_alive_connections_go_on() {
    let ca = Ca::new();
    let (flux, addr) = start_tls(&ca, "").await;
    let base = format!("https://api.test:{}", addr.port());
    // One kept-alive connection from before the renewal.
    let kept = tls_client(&ca, &[("api.test", addr)])
        .http1_only()
        .build()
        .unwrap();
    let r = chat(&kept, &base, &flux.key, &ping("flux-fast")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_names(&r), ["api.test"]);
    let _ = r.bytes().await.unwrap();

    // Renew as certbot does: new files beside the old ones, renamed over them.
    let (cert, key) = ca.issue(&["api.test", "www.api.test"]);
    let dir = flux.dir.path();
    std::fs::write(dir.join("api.pem.new"), cert).unwrap();
    std::fs::write(dir.join("api.key.new"), key).unwrap();
    std::fs::rename(dir.join("api.pem.new"), dir.join("api.pem")).unwrap();
    std::fs::rename(dir.join("api.key.new"), dir.join("api.key")).unwrap();
    let renewed_at = Instant::now();

    // New handshakes get the new certificate (polled: the watcher looks every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let took = loop {
        let fresh = tls_client(&ca, &[("api.test", addr)]).build().unwrap();
        let r = fresh.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if served_names(&r) == ["api.test", "www.api.test"] {
            break renewed_at.elapsed();
        }
        assert!(Instant::now() < deadline, "the renewal was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("renewal served to a new handshake after {took:?}");

    // The connection from before still works, on its old certificate (the same connection).
    let r = chat(&kept, &base, &flux.key, &ping("flux-fast")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(served_names(&r), ["api.test"]);

    // A mismatched pair (the key of another certificate) is refused; the renewed one stays.
    let (cert, _) = ca.issue(&["api.test", "bad.api.test"]);
    let (_, stray_key) = ca.issue(&["api.test"]);
    std::fs::write(dir.join("api.pem.new"), cert).unwrap();
    std::fs::write(dir.join("api.key.new"), stray_key).unwrap();
    std::fs::rename(dir.join("api.pem.new"), dir.join("api.pem")).unwrap();
    std::fs::rename(dir.join("api.key.new"), dir.join("api.key")).unwrap();
    let log = flux.log_containing("was refused").await;
    assert!(
        log.contains("certificate `api` changed on disk but was refused (the key does not match"),
        "{log}"
    );
    let fresh = tls_client(&ca, &[("api.test", addr)]).build().unwrap();
    let r = fresh.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_names(&r), ["api.test", "www.api.test"]);
}

#[tokio::test]
async fn plaintext_old_tls_and_stalled_handshakes_are_closed() {
    let ca = Ca::new();
    let (flux, addr) = start_tls(&ca, "").await;

    // HTTP in plaintext to the TLS port: closed at once, never an HTTP answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the connection stayed open");
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");

    // A TLS 1.1 ClientHello (no client library here speaks it): a protocol_version alert.
    let mut hello = vec![0x01, 0, 0, 0, 0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[1, 0]); // no compression
    let body_len = (hello.len() - 4) as u32;
    hello[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    record.extend_from_slice(&hello);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&record).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    // A fatal alert record (21, level 2): handshake_failure (40) or protocol_version (70).
    assert_eq!(got.first(), Some(&0x15), "{got:?}");
    assert_eq!(got.get(5), Some(&2), "{got:?}");
    assert!(matches!(got.get(6), Some(40 | 70)), "{got:?}");

    // A client that starts a handshake and stalls is cut at the deadline (1 s here).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&record[..3]).await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(closed, "a stalled handshake was kept");

    // TLS 1.2 and 1.3 are both served.
    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let r = tls_client(&ca, &[("api.test", addr)])
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap()
            .get(format!("https://api.test:{}/healthz", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The gateway still answers.
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
}

/// A request for each of the three APIs.
fn api_requests(stream: bool) -> [(&'static str, Value); 3] {
    [
        (
            "/v1/chat/completions",
            json!({"model": "flux-pinned-on-chat", "stream": stream,
                   "messages": [{"role": "user", "content": "hello there"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "flux-pinned-on-chat", "stream": stream,
                   "input": [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": "hello there"}]}]}),
        ),
        (
            "/anthropic/v1/messages",
            json!({"model": "flux-pinned-on-chat", "stream": stream, "max_tokens": 256,
                   "messages": [{"role": "user", "content": "hello there"}]}),
        ),
    ]
}

/// The three APIs over an HTTP/2 client: answers, streams event by event, errors with
/// request ids, a large body.
async fn exercise_h2(client: &reqwest::Client, base: &str, key: &str) {
    for (path, body) in api_requests(false) {
        let r = client
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{path}");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "x-flux-model"), "flux-pinned-on-chat");
        assert!(!header(&r, "x-flux-request-id").is_empty());
        let v: Value = r.json().await.unwrap();
        assert!(v.get("usage").is_some(), "{path}: {v}");
    }
    for (path, body) in api_requests(true) {
        let r = client
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), "text/event-stream");
        assert!(!header(&r, "x-flux-request-id").is_empty());
        let mut chunks = 0;
        let mut text = String::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            chunks += 1;
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(chunks > 1, "{path}: the stream came in one piece: {text}");
        assert!(text.contains("data: "), "{path}: {text}");
        assert!(
            text.contains("x-flux-cost-usd"),
            "{path}: no cost line: {text}"
        );
    }
    // Errors keep both shapes and the request id.
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("fx-wrong")
        .json(&ping("flux-fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = header(&r, "x-flux-request-id").to_string();
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v.to_string().contains(&id) || !id.is_empty());
    let r = client
        .post(format!("{base}/anthropic/v1/messages"))
        .bearer_auth(key)
        .json(&json!({"model": "no-such-model", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert!(!header(&r, "x-flux-request-id").is_empty());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    // A 30 MB body (the default limit is 32 MiB) arrives whole.
    let big = "lorem ipsum ".repeat(30 * 1024 * 1024 / 12);
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "flux-pinned-on-chat",
                      "messages": [{"role": "user", "content": big}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 4_000_000,
        "{v}"
    );
}

#[tokio::test]
async fn http2_by_alpn_on_tls_serves_the_three_apis() {
    let ca = Ca::new();
    let (flux, addr) = start_tls(&ca, "").await;
    let client = tls_client(&ca, &[("api.test", addr)]).build().unwrap();
    let base = format!("https://api.test:{}", addr.port());
    exercise_h2(&client, &base, &flux.key).await;
    // A client offering only HTTP/1.1 is served HTTP/1.1.
    let h1 = tls_client(&ca, &[("api.test", addr)])
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // HSTS over HTTP/2 too.
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let r = chat(&client, &base, &flux.key, &ping("flux-fast")).await;
    assert_eq!(
        header(&r, "strict-transport-security"),
        "max-age=600; includeSubDomains"
    );
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_a_plaintext_listener() {
    let port = free_port();
    let listen = format!("{{address: \"127.0.0.1:{port}\", h2c: true}}");
    let flux = Flux::start_custom(&Custom {
        extra_listen: &listen,
        ..Custom::default()
    })
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    exercise_h2(&h2, &base, &flux.key).await;
    // HTTP/1.1 still works on an h2c listener.
    let r = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // Even a request shorter than HTTP/2's 24-byte preface is told apart at its first byte
    // and answered (well before the 10 s header deadline).
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed && got.starts_with(b"HTTP/1."),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The plaintext listener without h2c does not speak HTTP/2.
    assert!(h2
        .get(format!("{}/healthz", flux.base))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn http2_rapid_reset_and_a_body_never_sent_leave_the_gateway_answering() {
    let port = free_port();
    let listen = format!("{{address: \"127.0.0.1:{port}\", h2c: true}}");
    let flux = Flux::start_custom(&Custom {
        extra_listen: &listen,
        extra_limits: "h2_max_concurrent_streams: 20",
        ..Custom::default()
    })
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let request = |end: bool| {
        let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .header("authorization", format!("Bearer {}", flux.key))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        (req, end)
    };

    // Rapid reset (CVE-2023-44487): open streams and cancel them at once, many times.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..2000 {
        let (req, end) = request(true);
        match client.send_request(req, end) {
            Ok((resp, _)) => {
                drop(resp); // drop = RST_STREAM(CANCEL)
                sent += 1;
            }
            Err(_) => break, // the server sent GOAWAY: fine
        }
        if sent % 50 == 0 && client.clone().ready().await.is_err() {
            break;
        }
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    eprintln!("rapid reset: {sent} streams opened and cancelled");

    // Streams whose bodies never come: held by the body deadline, not forever, and nobody
    // else waits for them.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut c = client.clone().ready().await.unwrap();
        let (req, end) = request(false);
        let (resp, body) = c.send_request(req, end).unwrap();
        held.push((resp, body));
    }
    // Meanwhile every API answers, over HTTP/2 and HTTP/1.1.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(&flux.key)
        .json(&ping("flux-fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
    // The held streams end with an answer (408 when the body deadline passes), not never.
    let (resp, _body) = held.remove(0);
    let answer = tokio::time::timeout(Duration::from_secs(30), resp).await;
    match answer {
        Ok(Ok(r)) => assert_eq!(r.status(), 408),
        Ok(Err(e)) => eprintln!("held stream reset: {e}"),
        Err(_) => panic!("a stream without a body was held past the body deadline"),
    }
    drop(held);
    driver.abort();
}

/// The status line's code from a raw HTTP/1.1 answer.
fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"))
}

/// Send `preamble` then a wrong admin token; the status.
async fn wrong_admin_token(addr: SocketAddr, preamble: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(preamble).await.unwrap();
    s.write_all(
        b"GET /admin/v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-the-admin-token-at-all-0123456789\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    status_of(&got)
}

fn proxy_v2(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&443u16.to_be_bytes());
    out
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_address_and_is_required() {
    // On the admin listener, whose wrong-token limit counts per client address: what the
    // PROXY header names is the address counted.
    let port = free_port();
    let admin_listen = format!("{{address: \"127.0.0.1:{port}\", proxy_protocol: true}}");
    let client_port = free_port();
    let listen = format!("{{address: \"127.0.0.1:{client_port}\", proxy_protocol: true}}");
    let flux = Flux::start_custom(&Custom {
        extra_listen: &listen,
        extra_admin_listen: &admin_listen,
        // Ten wrong tokens an address, then 429 (limits.per_address).
        extra_limits: "per_address: { failed_auth_per_minute: 10 }",
        ..Custom::default()
    })
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n";
    for _ in 0..10 {
        assert_eq!(wrong_admin_token(addr, v1).await, 403);
    }
    // 203.0.113.7 is now limited, by v1 and by v2 alike...
    assert_eq!(wrong_admin_token(addr, v1).await, 429);
    assert_eq!(
        wrong_admin_token(addr, &proxy_v2([203, 0, 113, 7], 40001)).await,
        429
    );
    // ...and another address is not (v2 names it).
    assert_eq!(
        wrong_admin_token(addr, &proxy_v2([198, 51, 100, 9], 40002)).await,
        403
    );
    // Nor is the harness's own loopback address on the plain admin listener.
    let r = flux
        .client
        .get(format!("{}/admin/v1/usage", flux.admin_base))
        .bearer_auth("not-the-admin-token-at-all-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Without a header the connection is closed, unanswered.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /admin/v1/usage HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed && got.is_empty(),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // A client listener with the PROXY protocol serves the API behind it.
    let mut s = TcpStream::connect(format!("127.0.0.1:{client_port}"))
        .await
        .unwrap();
    let body = ping("flux-fast").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        flux.key,
        body.len()
    );
    s.write_all(&proxy_v2([192, 0, 2, 1], 5000)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), 200, "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn check_validates_pairs_names_and_expiry() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(&["api.test"]);
    let (_, other_key) = ca.issue(&["api.test"]);
    std::fs::write(dir.path().join("api.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("api.key"), &key).unwrap();
    std::fs::write(dir.path().join("wrong.key"), &other_key).unwrap();
    // rcgen's default validity ends in 4096: far. A short-lived one warns.
    let mut params = rcgen::CertificateParams::new(vec!["soon.test".to_string()]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + (now - Duration::from_secs(86_400));
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + Duration::from_secs(3 * 86_400));
    let soon_key = rcgen::KeyPair::generate().unwrap();
    let soon = params.signed_by(&soon_key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.path().join("soon.pem"), soon.pem()).unwrap();
    std::fs::write(dir.path().join("soon.key"), soon_key.serialize_pem()).unwrap();

    let check = |pairs: &str| {
        let config = format!(
            "listen:\n  - address: 127.0.0.1:9443\n    tls: {{certificates: [{pairs}]}}\n\
             keys_file: keys.yaml\nlanes_file: lanes.yaml\n\
             providers:\n  sim: {{ format: openai, base_url: \"http://127.0.0.1:9/v1\" }}\n\
             plans:\n  payg: {{ lanes: [express] }}\n"
        );
        std::fs::write(dir.path().join("fluxrouter.yaml"), config).unwrap();
        std::fs::write(
            dir.path().join("lanes.yaml"),
            "lanes:\n  express:\n    alias: flux-fast\n    title: E\n    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }\n    default: flux-pinned-m\nmodels:\n  flux-pinned-m: { upstream: u, provider: sim, lane: express, context_window: 1000, max_output_tokens: 100 }\nauto:\n  rules:\n    - { name: default, lane: express }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("keys.yaml"), "keys: []\n").unwrap();
        let out = std::process::Command::new(bin())
            .arg("check")
            .arg("--config")
            .arg(dir.path().join("fluxrouter.yaml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = check("{certificate: api.pem, key: api.key}");
    assert!(ok, "{out}");
    let (ok, out) = check("{certificate: api.pem, key: wrong.key}");
    assert!(!ok, "{out}");
    assert!(out.contains("does not match"), "{out}");
    // Serving that configuration stops at start, with the reason, before taking any socket.
    let mut gateway = std::process::Command::new(bin())
        .arg("--config")
        .arg(dir.path().join("fluxrouter.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gateway.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = gateway.kill();
            panic!("a gateway with a mismatched pair kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = gateway.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!status.success());
    assert!(
        text.contains("listener 127.0.0.1:9443: certificate `api`: the key does not match"),
        "{text}"
    );
    let (ok, out) = check(
        "{certificate: api.pem, key: api.key}, {name: soon, certificate: soon.pem, key: soon.key}",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("certificate `soon` expires in 2 day(s)")
            || out.contains("certificate `soon` expires in 3 day(s)"),
        "{out}"
    );
    let (ok, out) = check(
        "{certificate: api.pem, key: api.key}, {name: again, certificate: api.pem, key: api.key}",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("`api.test` is covered by both `api` and `again`"),
        "{out}"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_keepalive_timeout() {
    let port = free_port();
    let listen = format!("{{address: \"127.0.0.1:{port}\", h2c: true}}");
    let flux = Flux::start_custom(&Custom {
        extra_listen: &listen,
        extra_limits: "keepalive_timeout_seconds: 1",
        ..Custom::default()
    })
    .await;
    let tcp = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut c = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://127.0.0.1:{port}/healthz"))
        .body(())
        .unwrap();
    let (resp, _) = c.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // Left idle, the server ends the connection (the driver returns); bounded at 15 s.
    let ended = tokio::time::timeout(Duration::from_secs(15), driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was kept open");
    drop(c);
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
}

/// A TLS client trusting only `ca` and offering `alpn`, for raw bytes over TLS.
fn raw_tls(ca: &Ca, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    raw_tls_versions(ca, alpn, rustls::DEFAULT_VERSIONS)
}

/// The same, speaking only `versions`.
fn raw_tls_versions(
    ca: &Ca,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test]
async fn a_tls_client_that_chose_h2_and_stays_silent_is_closed_at_the_header_deadline() {
    let ca = Ca::new();
    let (flux, addr) = start_tls(&ca, "header_timeout_ms: 1000").await;
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = raw_tls(&ca, &[b"h2"]).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Nothing sent: closed once the deadline passes (bounded at 15 s here).
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "a silent h2 connection was kept");
    // The gateway answers HTTP/2 clients that do speak.
    let client = tls_client(&ca, &[("api.test", addr)]).build().unwrap();
    let r = chat(
        &client,
        &format!("https://api.test:{}", addr.port()),
        &flux.key,
        &ping("flux-fast"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn a_proxy_header_comes_before_the_tls_handshake() {
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["api.test"]);
    let port = free_port();
    let admin_listen = format!(
        "{{address: \"127.0.0.1:{port}\", proxy_protocol: true, \
         tls: {{certificate: api.pem, key: api.key}}}}"
    );
    let files: Vec<(&str, &[u8])> = vec![("api.pem", cert.as_bytes()), ("api.key", key.as_bytes())];
    let _flux = Flux::start_custom(&Custom {
        extra_admin_listen: &admin_listen,
        files: &files,
        extra_limits: "per_address: { failed_auth_per_minute: 10 }",
        ..Custom::default()
    })
    .await;
    let connector = raw_tls(&ca, &[]);
    // One wrong token from an address named by PROXY v2, over TLS: `from` is what is counted.
    let attempt = |ip: [u8; 4]| {
        let connector = connector.clone();
        async move {
            let mut tcp = TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap();
            tcp.write_all(&proxy_v2(ip, 1234)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(
                b"GET /admin/v1/usage HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer not-the-admin-token-at-all-0123456789\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
            status_of(&got)
        }
    };
    for _ in 0..10 {
        assert_eq!(attempt([203, 0, 113, 50]).await, 403);
    }
    assert_eq!(attempt([203, 0, 113, 50]).await, 429);
    assert_eq!(attempt([203, 0, 113, 51]).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_tls_load_over_http1_and_http2_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let ca = Ca::new();
    let (mut flux, addr) = start_tls(&ca, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let old_gone = Arc::new(AtomicBool::new(false));
    let served_after = Arc::new(AtomicU32::new(0));
    let retried = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for i in 0..8 {
        // Half over HTTP/1.1, half over HTTP/2 (many requests on one connection).
        let mut builder = tls_client(&ca, &[("api.test", addr)]);
        if i % 2 == 0 {
            builder = builder.http1_only();
        }
        let i = i as usize;
        let client = builder.build().unwrap();
        let url = format!("https://api.test:{}/v1/chat/completions", addr.port());
        let key = flux.key.clone();
        let (stop, old_gone, served_after) = (stop.clone(), old_gone.clone(), served_after.clone());
        let retried = retried.clone();
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let send = || {
                    client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&ping("flux-fast"))
                        .send()
                };
                let mut answer = send().await;
                // hyper cancels a request it had queued on an HTTP/2 connection that then
                // closed (after the old process's GOAWAY) without writing it: the gateway
                // never saw it, and SDKs retry such connection errors (the OpenAI SDKs twice).
                // So does this client; anything the gateway received and failed still counts.
                let mut canceled = 0;
                while matches!(&answer, Err(e) if format!("{e:?}").contains("Canceled")) {
                    canceled += 1;
                    assert!(canceled <= 3, "canceled {canceled} times: {answer:?}");
                    answer = send().await;
                }
                retried.fetch_add(canceled, Ordering::Relaxed);
                match answer {
                    Ok(r) if r.status() == 200 => {
                        if old_gone.load(Ordering::Relaxed) {
                            served_after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => failures.push(format!("h{}: status {}", 1 + i % 2, r.status())),
                    Err(e) => failures.push(format!("h{}: {e:?}", 1 + i % 2)),
                }
            }
            failures
        }));
    }
    upgrade_under_load(&mut flux, workers, &old_gone, &stop).await;
    assert!(
        served_after.load(Ordering::Relaxed) > 0,
        "the new process served after the old one left"
    );
    eprintln!(
        "HTTP/2 requests canceled unsent by the client and retried: {}",
        retried.load(Ordering::Relaxed)
    );
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Write `frames` (one buffer) until `limit` bytes went out or the server stops taking
/// them: closed, or not reading for 5 s. Returns the bytes written and whether it closed.
async fn flood(stream: &mut TcpStream, chunk: &[u8], limit: usize) -> (usize, bool) {
    let mut sent = 0;
    while sent < limit {
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => return (sent, true),
            Err(_) => return (sent, false),
        }
    }
    (sent, false)
}

#[tokio::test]
async fn http2_continuation_settings_and_ping_floods_stay_bounded() {
    let port = free_port();
    let listen = format!("{{address: \"127.0.0.1:{port}\", h2c: true}}");
    let flux = Flux::start_custom(&Custom {
        extra_listen: &listen,
        ..Custom::default()
    })
    .await;
    let addr = format!("127.0.0.1:{port}");
    let start = |extra: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            hello.extend_from_slice(&frame(0x4, 0, 0, &[])); // SETTINGS
            hello.extend_from_slice(&extra);
            s.write_all(&hello).await.unwrap();
            s
        }
    };
    let before_kb = flux.memory_kb("VmRSS");

    // CONTINUATION flood (CVE-2024-27316): a header block that never ends.
    // :method GET, :scheme http, :path /, then CONTINUATION frames of 16 KB literals.
    let headers = frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]);
    let mut literal = vec![0x00, 0x01, b'x', 0x7f];
    // value length 16000 as HPACK integer with a 7-bit prefix: 127 + 15873
    let mut rest = 16_000 - 127;
    while rest >= 128 {
        literal.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    literal.push(rest as u8);
    literal.extend(std::iter::repeat_n(b'a', 16_000));
    let continuation = frame(0x9, 0, 1, &literal);
    let mut s = start(headers).await;
    let (sent, closed) = flood(&mut s, &continuation, 64 * 1024 * 1024).await;
    eprintln!("CONTINUATION flood: {sent} bytes taken, closed: {closed}");
    assert!(
        sent < 64 * 1024 * 1024,
        "the server read a 64 MB header block"
    );

    // SETTINGS and PING floods: each asks for an answer the client never reads.
    for (name, f) in [
        ("SETTINGS", frame(0x4, 0, 0, &[])),
        ("PING", frame(0x6, 0, 0, &[0; 8])),
    ] {
        let burst: Vec<u8> = f.repeat(1000);
        let mut s = start(Vec::new()).await;
        let (sent, closed) = flood(&mut s, &burst, 32 * 1024 * 1024).await;
        eprintln!("{name} flood: {sent} bytes taken, closed: {closed}");
        drop(s);
    }

    // Many idle streams: open the allowed number with no body and leave them.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut idle = Vec::new();
    for _ in 0..100 {
        let Ok(mut c) = client.clone().ready().await else {
            break;
        };
        let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("authorization", format!("Bearer {}", flux.key))
            .body(())
            .unwrap();
        match c.send_request(req, false) {
            Ok(pair) => idle.push(pair),
            Err(_) => break,
        }
    }
    eprintln!("{} idle streams open", idle.len());

    // The gateway answers, and its memory stayed bounded.
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
    let after_kb = flux.memory_kb("VmRSS");
    eprintln!("RSS {before_kb} kB before the floods, {after_kb} kB after");
    assert!(
        after_kb < before_kb + 64 * 1024,
        "memory grew by {} kB",
        after_kb - before_kb
    );
    drop(idle);
    driver.abort();
}

/// A chat completion on a raw HTTP/2 connection, its whole body sent: the answer to come,
/// and the stream (to reset it).
async fn h2_chat(
    client: &h2::client::SendRequest<bytes::Bytes>,
    port: u16,
    key: &str,
    body: &Value,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let mut c = client.clone().ready().await.unwrap();
    let body = body.to_string();
    let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let (resp, mut send) = c.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from(body), true).unwrap();
    (resp, send)
}

#[tokio::test]
async fn an_http2_stream_reset_stops_the_provider_and_bills_what_was_used() {
    let lanes = TEST_LANES.replacen(
        "models:\n",
        "models:\n  flux-pinned-h2-hang: { upstream: hang-upstream, provider: sim_hang, lane: express, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }\n  flux-pinned-h2-drip: { upstream: drip-upstream, provider: sim_drip, lane: express, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }\n",
        1,
    );
    let port = free_port();
    let listen = format!("{{address: \"127.0.0.1:{port}\", h2c: true}}");
    let flux = Flux::start_custom(&Custom {
        lanes: &lanes,
        extra_listen: &listen,
        extra_providers:
            "  sim_drip: { format: openai, base_url: \"http://{sim}/_sim/slow=1500/v1\" }\n",
        ..Custom::default()
    })
    .await;
    let tcp = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    for stream in [false, true] {
        let body = json!({"model": "flux-pinned-h2-hang", "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]});
        let (resp, mut send) = h2_chat(&client, port, &flux.key, &body).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while flux.sim.hanging().await != 1 {
            assert!(
                Instant::now() < deadline,
                "the provider never got the request"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // RST_STREAM(CANCEL): the client leaves this stream; the connection stays.
        send.send_reset(h2::Reason::CANCEL);
        drop(resp);
        let deadline = Instant::now() + Duration::from_secs(5);
        while flux.sim.hanging().await != 0 {
            assert!(
                Instant::now() < deadline,
                "the provider still works for a reset stream (stream={stream})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The same connection serves on.
    let mut c = client.clone().ready().await.unwrap();
    let req = http::Request::get(format!("http://127.0.0.1:{port}/healthz"))
        .body(())
        .unwrap();
    let (resp, _) = c.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let log = flux.log_containing("\"error\":\"client_closed\"").await;
    assert!(log.contains("\"status\":499"), "{log}");

    // Reset mid-stream, after the first event: the stream is billed for what was used.
    let body = json!({"model": "flux-pinned-h2-drip", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (resp, mut send) = h2_chat(&client, port, &flux.key, &body).await;
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-flux-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut events = resp.into_body();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data:") {
        let chunk = events.data().await.expect("a first event").unwrap();
        got.extend_from_slice(&chunk);
    }
    send.send_reset(h2::Reason::CANCEL);
    drop(events);
    let line = flux.access_line(&id).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    assert!(line["cost_usd"].is_string(), "{line}");
    // Far shorter than the whole stream (a dozen events 1.5 s apart).
    assert!(line["duration_ms"].as_f64().unwrap() < 4000.0, "{line}");
    driver.abort();
}

#[tokio::test]
async fn sessions_resume_over_tls_1_2_and_1_3() {
    let ca = Ca::new();
    let (_flux, addr) = start_tls(&ca, "").await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        // One client config: its session store carries the ticket or id to the next handshake.
        let connector = raw_tls_versions(&ca, &[b"http/1.1"], &[version]);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
            assert_eq!(status_of(&got), 200);
            kinds.push(tls.get_ref().1.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{version:?}"
        );
    }
}
