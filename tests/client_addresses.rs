//! The client's address and the limits per address before authentication, on the real
//! binary: loopback has all of 127.0.0.0/8, so a client bound to 127.0.0.2 before it
//! connects is another address to the gateway than one bound to 127.0.0.3.
//!
//! Failed keys per minute (429 for that address only; valid keys and other addresses
//! served), a spoofed `X-Forwarded-For` from an untrusted peer ignored and a trusted
//! proxy's believed, requests per second, and open connections per address.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client whose connections come from `ip`.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn chat_body() -> Value {
    ping("flux-fast")
}

fn anthropic_body() -> Value {
    json!({"model": "flux-fast", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

/// A chat completion from `client` with `key` (and an `X-Forwarded-For` when given).
async fn chat(
    flux: &Flux,
    client: &reqwest::Client,
    key: &str,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut r = client
        .post(format!("{}/v1/chat/completions", flux.base))
        .bearer_auth(key)
        .json(&chat_body());
    if let Some(xff) = xff {
        r = r.header("x-forwarded-for", xff);
    }
    r.send().await.unwrap()
}

/// The access-log line of the request `r` answered.
async fn log_line(flux: &Flux, r: &reqwest::Response) -> Value {
    flux.access_line(header(r, "x-flux-request-id")).await
}

fn retry_after(r: &reqwest::Response) -> u64 {
    header(r, "retry-after").parse().unwrap()
}

const WRONG: &str = "sk-wrong-0123456789abcdefghijklmnopqrstuvwxyz";

#[tokio::test]
async fn failed_keys_limit_their_address_only_and_valid_keys_are_still_served() {
    let flux = Flux::start_with_limits("per_address: { failed_auth_per_minute: 5 }").await;
    let attacker = client_from("127.0.0.2");
    for i in 0..5 {
        let r = chat(&flux, &attacker, WRONG, None).await;
        assert_eq!(r.status(), 401, "wrong key {i}");
    }
    // Past the limit: 429 in the OpenAI shape, with the seconds until the minute passes.
    let r = chat(&flux, &attacker, WRONG, None).await;
    let after = retry_after(&r);
    assert!((1..=60).contains(&after), "Retry-After {after}");
    let line = log_line(&flux, &r).await;
    assert_eq!(line["client_ip"], "127.0.0.2", "{line}");
    assert_eq!(line["status"], 429, "{line}");
    let m = expect_openai_error(r, 429, "rate_limited").await;
    assert!(m.contains("Too many failed authentications"), "{m}");
    // The same on the Anthropic path, in the Anthropic shape.
    let r = attacker
        .post(format!("{}/anthropic/v1/messages", flux.base))
        .header("x-api-key", WRONG)
        .json(&anthropic_body())
        .send()
        .await
        .unwrap();
    assert!((1..=60).contains(&retry_after(&r)));
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // A request without a key is no guess: still the plain 401.
    let r = attacker
        .post(format!("{}/v1/chat/completions", flux.base))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A valid key from the limited address is served (README: keys are beyond guessing;
    // a NAT's other clients keep working).
    let r = chat(&flux, &attacker, &flux.key, None).await;
    assert_eq!(r.status(), 200);

    // Another address: its wrong key is a plain 401, its valid key served.
    let other = client_from("127.0.0.3");
    assert_eq!(chat(&flux, &other, WRONG, None).await.status(), 401);
    let r = chat(&flux, &other, &flux.key, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(log_line(&flux, &r).await["client_ip"], "127.0.0.3");

    let text = flux
        .metrics_when(|t| t.contains("flux_address_refusals_total{reason=\"failed_auth\"} 2"))
        .await;
    assert!(
        text.contains("flux_address_refusals_total{reason=\"failed_auth\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn the_admin_listener_shares_the_address_s_failures() {
    let flux = Flux::start_with_limits("per_address: { failed_auth_per_minute: 4 }").await;
    let from = client_from("127.0.0.4");
    // Four wrong keys on the client listener use the address's minute up...
    for _ in 0..4 {
        assert_eq!(chat(&flux, &from, WRONG, None).await.status(), 401);
    }
    // ...so the console's sign-in from it is refused without comparing, the right token too.
    let r = from
        .post(format!("{}/console/api/session", flux.admin_base))
        .json(&json!({ "token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("set-cookie").is_none());
    assert!((1..=60).contains(&retry_after(&r)));
    let m = expect_openai_error(r, 429, "rate_limited").await;
    assert!(m.contains("Too many wrong tokens"), "{m}");
    // Another address signs in.
    let r = client_from("127.0.0.5")
        .post(format!("{}/console/api/session", flux.admin_base))
        .json(&json!({ "token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_untrusted_peer_s_x_forwarded_for_is_ignored() {
    // No trusted proxies (the default): the header is the client's own word.
    let flux = Flux::start_with_limits("per_address: { failed_auth_per_minute: 3 }").await;
    let spoofer = client_from("127.0.0.6");
    for i in 0..3 {
        let xff = format!("198.51.100.{i}");
        let r = chat(&flux, &spoofer, WRONG, Some(&xff)).await;
        assert_eq!(r.status(), 401);
        assert_eq!(log_line(&flux, &r).await["client_ip"], "127.0.0.6");
    }
    // A fresh forwarded address each time does not move the count off the real one.
    let r = chat(&flux, &spoofer, WRONG, Some("203.0.113.99")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(log_line(&flux, &r).await["client_ip"], "127.0.0.6");
}

#[tokio::test]
async fn a_trusted_proxy_s_x_forwarded_for_is_believed() {
    let flux = Flux::start_custom(&Custom {
        extra_limits: "per_address: { failed_auth_per_minute: 3 }",
        extra_config: "trusted_proxies: [127.0.0.1/32]",
        ..Custom::default()
    })
    .await;
    let proxy = client_from("127.0.0.1");
    // The proxy forwards a client that guesses; what the client wrote left of its own
    // address (a spoof) is not believed.
    for _ in 0..3 {
        let r = chat(&flux, &proxy, WRONG, Some("6.6.6.6, 198.51.100.7")).await;
        assert_eq!(r.status(), 401);
        assert_eq!(log_line(&flux, &r).await["client_ip"], "198.51.100.7");
    }
    let r = chat(&flux, &proxy, WRONG, Some("6.6.6.7, 198.51.100.7")).await;
    assert_eq!(r.status(), 429);
    // The limit is that client's, not the proxy's: another client through the same proxy,
    // and the proxy's own requests, are unaffected.
    let r = chat(&flux, &proxy, WRONG, Some("198.51.100.8")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(log_line(&flux, &r).await["client_ip"], "198.51.100.8");
    assert_eq!(chat(&flux, &proxy, WRONG, None).await.status(), 401);
    // A peer outside trusted_proxies sending the same header is itself the client.
    let r = chat(
        &flux,
        &client_from("127.0.0.7"),
        WRONG,
        Some("198.51.100.7"),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(log_line(&flux, &r).await["client_ip"], "127.0.0.7");
}

#[tokio::test]
async fn requests_per_second_are_limited_per_address() {
    let flux = Flux::start_with_limits("per_address: { requests_per_second: 10 }").await;
    let busy = client_from("127.0.0.8");
    let healthz = |c: &reqwest::Client| c.get(format!("{}/healthz", flux.base)).send();
    // Back to back, the address passes ten a second: within a few hundred requests one is
    // refused, whatever the machine's speed.
    let mut refused = None;
    for _ in 0..500 {
        let r = healthz(&busy).await.unwrap();
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = refused.expect("never limited");
    assert_eq!(header(&r, "retry-after"), "1");
    let m = expect_openai_error(r, 429, "rate_limited").await;
    assert!(m.contains("Too many requests from this address"), "{m}");
    // Another address is served meanwhile.
    assert_eq!(
        healthz(&client_from("127.0.0.9")).await.unwrap().status(),
        200
    );
    // And the busy one again once its second has passed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthz(&busy).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "still limited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = flux
        .metrics_when(|t| t.contains("flux_address_refusals_total{reason=\"requests_per_second\"}"))
        .await;
    assert!(
        text.contains("flux_address_refusals_total{reason=\"requests_per_second\"}"),
        "{text}"
    );
}

/// A TCP connection to the gateway from `ip`.
async fn connect_from(ip: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Send a `/healthz` request on `stream`; the status line's code, or None when the
/// gateway closed the connection without an answer.
async fn healthz_on(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    status_on(stream, "/healthz").await
}

/// Send `GET path` on `stream`; the status line's code, or None when the listener closed the
/// connection without an answer.
async fn status_on(stream: &mut tokio::net::TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("no answer and no close")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .map(|code| code.parse().unwrap())
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_for_that_address_only() {
    let flux = Flux::start_with_limits("per_address: { connections: 4 }").await;
    let addr: SocketAddr = flux.base.trim_start_matches("http://").parse().unwrap();
    // Four connections from one address, each served (so each is surely counted).
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from("127.0.0.10", addr).await;
        assert_eq!(healthz_on(&mut c).await, Some(200));
        open.push(c);
    }
    // The fifth is closed without an answer.
    let mut fifth = connect_from("127.0.0.10", addr).await;
    assert_eq!(healthz_on(&mut fifth).await, None);
    // Another address connects as usual.
    let mut other = connect_from("127.0.0.11", addr).await;
    assert_eq!(healthz_on(&mut other).await, Some(200));
    // Once one of the four closes, the address may open another.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from("127.0.0.10", addr).await;
        if healthz_on(&mut again).await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = flux
        .metrics_when(|t| t.contains("flux_address_refusals_total{reason=\"connections\"}"))
        .await;
    assert!(
        text.contains("flux_address_refusals_total{reason=\"connections\"}"),
        "{text}"
    );
    flux.log_containing("over limits.per_address.connections (4); latest from 127.0.0.10")
        .await;
}

/// Ask for an admin page without a token on `stream` (403 when served).
async fn admin_on(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    status_on(stream, "/admin/v1/accounts").await
}

#[tokio::test]
async fn the_admin_listener_keeps_the_same_connection_and_request_limits() {
    let flux =
        Flux::start_with_limits("per_address: { connections: 2, requests_per_second: 5 }").await;
    let addr: SocketAddr = flux
        .admin_base
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from("127.0.0.12", addr).await;
        assert_eq!(admin_on(&mut c).await, Some(403));
        open.push(c);
    }
    // A third connection from the address is closed unanswered; another address is served.
    let mut third = connect_from("127.0.0.12", addr).await;
    assert_eq!(admin_on(&mut third).await, None);
    let mut other = connect_from("127.0.0.13", addr).await;
    assert_eq!(admin_on(&mut other).await, Some(403));
    // Requests per second: back to back on one connection, one is refused with a 429.
    let mut limited = false;
    for _ in 0..200 {
        match admin_on(&mut other).await {
            Some(429) => {
                limited = true;
                break;
            }
            Some(403) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(limited, "never limited");
}
