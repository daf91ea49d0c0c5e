//! End-to-end tests: a raw HTTP/1.1 client over a real TCP connection, so the
//! framing, flushing and disconnects are observed the way a gateway sees them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const AUTH: &str = "Bearer sk-sim-test";

fn start() -> SocketAddr {
    spawn_background("127.0.0.1:0".parse().unwrap()).expect("simulator starts")
}

/// The bytes of one request that asks the server to close the connection afterwards.
fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nAuthorization: {AUTH}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends one request and reads until the server closes; a reset counts as a close.
async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request_bytes(method, path, body))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("server closes the connection");
    if let Err(err) = read {
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    raw
}

struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether a chunked body ended with its terminating chunk.
    complete: bool,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Parses one HTTP/1.1 response, decoding a chunked body.
fn parse(raw: &[u8]) -> Parsed {
    let head_end = find(raw, b"\r\n\r\n").expect("complete response head");
    let head = std::str::from_utf8(&raw[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    let mut parsed = Parsed {
        status: status.parse().unwrap(),
        headers,
        body: Vec::new(),
        complete: true,
    };
    let mut rest = &raw[head_end + 4..];
    if parsed.header("transfer-encoding") != Some("chunked") {
        parsed.body = rest.to_vec();
        return parsed;
    }
    parsed.complete = false;
    while let Some(line_end) = find(rest, b"\r\n") {
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text, 16).unwrap();
        if size == 0 {
            parsed.complete = true;
            break;
        }
        let data = &rest[line_end + 2..];
        if data.len() < size {
            parsed.body.extend_from_slice(data);
            break;
        }
        parsed.body.extend_from_slice(&data[..size]);
        rest = data.get(size + 2..).unwrap_or_default();
    }
    parsed
}

/// The payloads of the `data: …` events in an event-stream body.
fn events(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| event.strip_prefix("data: ").expect("data event").to_owned())
        .collect()
}

fn chat_body(content: &str, stream: bool) -> Vec<u8> {
    json!({
        "model": "gpt-sim",
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn non_streamed_completion_with_usage() {
    let addr = start();
    let raw = exchange(
        addr,
        "POST",
        "/openai/v1/chat/completions?api-version=1",
        &chat_body("tell me a story", false),
    )
    .await;
    let response = parse(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let length: usize = response.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, response.body.len());
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-sim-"));
    assert_eq!(body["model"], "gpt-sim");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from gpt-sim. You said: tell me a story"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // One message of 15 bytes: 4 + 4; nine reply words.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17,
               "prompt_tokens_details": {"cached_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0}})
    );
}

#[tokio::test]
async fn slow_stream_events_arrive_one_by_one() {
    let addr = start();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = json!({
        "model": "m",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "one two three"}],
    });
    stream
        .write_all(&request_bytes(
            "POST",
            "/_sim/slow=50/v1/chat/completions",
            body.to_string().as_bytes(),
        ))
        .await
        .unwrap();

    let mut raw = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    // When each read that brought new events arrived, and how many events it brought.
    let mut arrivals: Vec<Instant> = Vec::new();
    let mut events_seen = 0;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("stream keeps moving")
            .unwrap();
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&buffer[..read]);
        let events_now = raw.windows(6).filter(|w| w == b"data: ").count();
        if events_now > events_seen {
            arrivals.push(Instant::now());
            events_seen = events_now;
        }
    }

    let response = parse(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert!(response.complete);
    let events = events(&response.body);
    // role + 8 words + finish + usage + [DONE]
    assert_eq!(events.len(), 12);
    assert_eq!(events_seen, events.len());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 8);

    assert!(
        arrivals.len() >= events.len() / 2,
        "events should arrive in separate reads, got {} reads for {} events",
        arrivals.len(),
        events.len()
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    let minimum = Duration::from_millis(50) * (events.len() as u32 - 2);
    assert!(
        spread >= minimum,
        "events spread over {spread:?}, expected at least {minimum:?}"
    );
}

#[tokio::test]
async fn stream_without_usage_ends_with_done() {
    let addr = start();
    let raw = exchange(addr, "POST", "/v1/chat/completions", &chat_body("hi", true)).await;
    let response = parse(&raw);
    assert!(response.complete);
    assert!(response.header("content-length").is_none());
    let events = events(&response.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|event| !event.contains("\"usage\"")));
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn refuse_closes_without_response() {
    let addr = start();
    let raw = exchange(
        addr,
        "POST",
        "/v1/chat/completions",
        &chat_body("please [sim:refuse]", false),
    )
    .await;
    assert!(raw.is_empty(), "got {:?}", String::from_utf8_lossy(&raw));
    let raw = exchange(addr, "POST", "/_sim/refuse/v1/chat/completions", b"{}").await;
    assert!(raw.is_empty());
}

#[tokio::test]
async fn cut_stream_stops_midway_without_done() {
    let addr = start();
    let raw = exchange(
        addr,
        "POST",
        "/_sim/cut/v1/chat/completions",
        &chat_body("a b c d e f", true),
    )
    .await;
    let response = parse(&raw);
    assert_eq!(response.status, 200);
    assert!(!response.complete, "no terminating chunk");
    // 14 events in full (role, 11 words, finish, [DONE]): half of them arrive
    // whole, then the first half of the next one's bytes.
    let text = std::str::from_utf8(&response.body).unwrap();
    let (whole, partial) = text.rsplit_once("\n\n").unwrap();
    let whole_events = events(format!("{whole}\n\n").as_bytes());
    assert_eq!(whole_events.len(), 7);
    assert!(whole_events[0].contains("\"role\":\"assistant\""));
    assert!(whole_events[1].contains("\"content\":\"Hello \""));
    assert!(partial.starts_with("data: {\"id\""), "{partial:?}");
    assert!(serde_json::from_str::<Value>(&partial[6..]).is_err());

    // cut-clean stops after whole events.
    let raw = exchange(
        addr,
        "POST",
        "/_sim/cut-clean/v1/chat/completions",
        &chat_body("a b c d e f", true),
    )
    .await;
    let response = parse(&raw);
    assert!(!response.complete, "no terminating chunk");
    assert!(response.body.ends_with(b"\n\n"));
    assert_eq!(events(&response.body).len(), 7);

    let raw = exchange(
        addr,
        "POST",
        "/v1/chat/completions",
        &chat_body("[sim:cut]", false),
    )
    .await;
    assert!(raw.is_empty(), "a non-streamed cut sends nothing");
}

#[tokio::test]
async fn fail_modes_answer_with_openai_errors() {
    let addr = start();
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/fail500/v1/chat/completions",
            &chat_body("hi", false),
        )
        .await,
    );
    assert_eq!(response.status, 500);
    assert_eq!(
        response.json(),
        json!({"error": {"message": "simulated upstream failure", "type": "server_error",
                         "param": null, "code": "sim_fail"}})
    );

    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/chat/completions",
            &chat_body("[sim:fail429] hi", true),
        )
        .await,
    );
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.json()["error"]["code"], "rate_limit_exceeded");

    let response = parse(&exchange(addr, "GET", "/_sim/fail503/v1/models", b"").await);
    assert_eq!(response.status, 503);

    let response = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/explode/v1/chat/completions",
            &chat_body("hi", false),
        )
        .await,
    );
    assert_eq!(response.status, 400);
    assert!(response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("explode"));
}

#[tokio::test]
async fn recording_lists_requests_with_headers() {
    let addr = start();
    exchange(
        addr,
        "POST",
        "/_sim/fail500/v1/chat/completions?trace=1",
        &chat_body("recorded", true),
    )
    .await;
    let log = parse(&exchange(addr, "GET", "/_sim/requests", b"").await).json();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1);
    let entry = &log[0];
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/_sim/fail500/v1/chat/completions");
    assert_eq!(entry["query"], "trace=1");
    assert_eq!(entry["headers"]["authorization"], AUTH);
    assert_eq!(entry["model"], "gpt-sim");
    assert_eq!(entry["stream"], true);
    assert_eq!(entry["body"]["messages"][0]["content"], "recorded");
    assert_eq!(entry["body_bytes"], chat_body("recorded", true).len());

    let cleared = parse(&exchange(addr, "DELETE", "/_sim/requests", b"").await);
    assert_eq!(cleared.json(), json!({"cleared": 1}));
    let log = parse(&exchange(addr, "GET", "/_sim/requests", b"").await).json();
    assert_eq!(log, json!([]));
}

#[tokio::test]
async fn accepts_a_ten_megabyte_body() {
    let addr = start();
    let filler = "x".repeat(10 * 1024 * 1024);
    let body =
        json!({"model": "big", "messages": [{"role": "user", "content": filler}]}).to_string();
    let response = parse(&exchange(addr, "POST", "/v1/chat/completions", body.as_bytes()).await);
    assert_eq!(response.status, 200);
    let usage = &response.json()["usage"];
    assert_eq!(usage["prompt_tokens"], 4 + 10 * 1024 * 1024 / 4);

    let log = parse(&exchange(addr, "GET", "/_sim/requests", b"").await).json();
    assert_eq!(log[0]["body_bytes"], body.len());
    assert_eq!(
        log[0]["body"],
        Value::Null,
        "large bodies are logged by size only"
    );
    assert_eq!(log[0]["model"], "big");
}

#[tokio::test]
async fn other_routes_and_bad_requests() {
    let addr = start();
    let response = parse(&exchange(addr, "GET", "/healthz", b"").await);
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, &b"ok"[..])
    );

    let response = parse(&exchange(addr, "GET", "/openai/v1/models", b"").await);
    assert_eq!(
        response.json(),
        json!({"object": "list", "data": [{"id": "sim-model", "object": "model", "created": 0, "owned_by": "fluxrouter-sim"}]})
    );

    let response = parse(&exchange(addr, "GET", "/v1/embeddings", b"").await);
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"]["code"], "not_found");
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");

    let response = parse(&exchange(addr, "POST", "/v1/chat/completions", b"{not json").await);
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");

    let response =
        parse(&exchange(addr, "POST", "/v1/chat/completions", br#"{"model":"m"}"#).await);
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn keeps_connections_alive() {
    let addr = start();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = chat_body("first", false);
    let keep_alive = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(keep_alive.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    stream
        .write_all(&request_bytes("GET", "/healthz", b""))
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let responses = raw.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(responses, 2, "{}", String::from_utf8_lossy(&raw));
}

#[tokio::test]
async fn hang_holds_the_request_until_the_client_leaves() {
    let simulator = Arc::new(Simulator::new(Duration::ZERO));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(run(simulator.clone(), listener));

    let wait_for_hanging = |expected: usize| {
        let simulator = simulator.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while simulator.hanging.load(Ordering::SeqCst) != expected {
                assert!(
                    Instant::now() < deadline,
                    "expected {expected} hanging requests"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request_bytes(
            "POST",
            "/_sim/hang/v1/chat/completions",
            &chat_body("wait", false),
        ))
        .await
        .unwrap();
    wait_for_hanging(1).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
    assert!(read.is_err(), "no response while hanging");

    drop(stream);
    wait_for_hanging(0).await;
    server.abort();
}

/// Sends one request with exactly these extra headers (no Authorization unless given).
async fn exchange_with(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: sim\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("server closes the connection");
    if let Err(err) = read {
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    raw
}

/// The `event: NAME\ndata: JSON` events of an event-stream body.
fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event
                .strip_prefix("event: ")
                .and_then(|rest| rest.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("badly framed event {event:?}"));
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn responses_body(input: &str, stream: bool) -> Vec<u8> {
    json!({"model": "codex-sim", "stream": stream, "input": input,
           "tools": [{"type": "function", "name": "exec_command", "parameters": {}}]})
    .to_string()
    .into_bytes()
}

fn messages_body(content: &str, stream: bool) -> Vec<u8> {
    json!({"model": "claude-sim", "max_tokens": 1024, "stream": stream,
           "messages": [{"role": "user", "content": content}],
           "tools": [{"name": "Read", "input_schema": {"type": "object"}}]})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn responses_route_answers_whole_and_streamed() {
    let addr = start();
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/responses",
            &responses_body("say hi", false),
        )
        .await,
    );
    assert_eq!(response.status, 200);
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("resp_sim_"));
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Hello from codex-sim. You said: say hi"
    );
    assert_eq!(body["usage"]["input_tokens"], 4 + 2);

    let response = parse(
        &exchange(
            addr,
            "POST",
            "/responses",
            &responses_body("run it [sim:tool]", true),
        )
        .await,
    );
    assert!(response.complete);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events = named_events(&response.body);
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    for (index, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], *name);
        assert_eq!(data["sequence_number"], index);
    }
    let call = &events.last().unwrap().1["response"]["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "exec_command");
    assert_eq!(call["arguments"], "{\"sim\":true}");
}

#[tokio::test]
async fn messages_route_streams_and_records_the_api_key_header() {
    let addr = start();
    let response = parse(
        &exchange_with(
            addr,
            "/anthropic/v1/messages?beta=true",
            "x-api-key: sk-ant-sim\r\nanthropic-version: 2023-06-01\r\n",
            &messages_body("say hi", true),
        )
        .await,
    );
    assert_eq!(response.status, 200);
    assert!(response.complete);
    let events = named_events(&response.body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(events[0].1["message"]["id"]
        .as_str()
        .unwrap()
        .starts_with("msg_sim_"));
    assert_eq!(events[11].1["usage"]["output_tokens"], 7);

    let log = parse(&exchange(addr, "GET", "/_sim/requests", b"").await).json();
    let entry = &log[0];
    assert_eq!(entry["path"], "/anthropic/v1/messages");
    assert_eq!(entry["query"], "beta=true");
    assert_eq!(
        entry["auth"],
        json!([{"header": "x-api-key", "scheme": null, "key": "sk-ant-sim"}])
    );
    assert_eq!(entry["headers"]["x-api-key"], "sk-ant-sim");
    assert_eq!(entry["headers"]["anthropic-version"], "2023-06-01");
    assert!(entry["headers"].get("authorization").is_none());

    let whole = parse(&exchange(addr, "POST", "/v1/messages", &messages_body("hi", false)).await);
    assert_eq!(whole.json()["type"], "message");
    assert_eq!(
        whole.json()["content"][0]["text"],
        "Hello from claude-sim. You said: hi"
    );
    let log = parse(&exchange(addr, "GET", "/_sim/requests", b"").await).json();
    assert_eq!(
        log[1]["auth"],
        json!([{"header": "authorization", "scheme": "Bearer", "key": "sk-sim-test"}])
    );
}

#[tokio::test]
async fn failures_answer_in_each_formats_error_shape() {
    let addr = start();
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/fail401/v1/messages",
            &messages_body("hi", true),
        )
        .await,
    );
    assert_eq!(response.status, 401);
    assert_eq!(
        response.json(),
        json!({"type": "error", "error": {"type": "authentication_error",
               "message": "simulated authentication failure: invalid API key"}})
    );
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/responses",
            &responses_body("[sim:fail401]", true),
        )
        .await,
    );
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error"]["code"], "invalid_api_key");
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");

    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/messages",
            &messages_body("[sim:fail429]", false),
        )
        .await,
    );
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.json()["error"]["type"], "rate_limit_error");
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/messages",
            &messages_body("[sim:fail503]", false),
        )
        .await,
    );
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"]["type"], "api_error");

    // Bad requests too: a missing max_tokens, an unknown directive.
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/messages",
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await,
    );
    assert_eq!(response.status, 400);
    assert_eq!(
        response.json(),
        json!({"type": "error", "error": {"type": "invalid_request_error",
               "message": "max_tokens: Field required"}})
    );
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/messages",
            &messages_body("[sim:explode]", false),
        )
        .await,
    );
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["type"], "error");
    assert!(response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("explode"));
}

#[tokio::test]
async fn error_event_ends_each_format_cleanly_after_a_few_events() {
    let addr = start();
    // Chat: the error replaces the rest, with no [DONE].
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/chat/completions",
            &chat_body("a b c [sim:error-event]", true),
        )
        .await,
    );
    assert!(response.complete, "the stream ends normally");
    let chat = events(&response.body);
    assert!(chat.len() > 2);
    let last: Value = serde_json::from_str(chat.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(chat[0].contains("chat.completion.chunk"));

    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/responses",
            &responses_body("a b c [sim:error-event]", true),
        )
        .await,
    );
    assert!(response.complete);
    let events = named_events(&response.body);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["sequence_number"], events.len() - 1);
    assert_eq!(events[0].0, "response.created");

    let response = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/error-event/v1/messages",
            &messages_body("a b c", true),
        )
        .await,
    );
    assert!(response.complete);
    let events = named_events(&response.body);
    assert_eq!(events[0].0, "message_start");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");

    // Not streamed: a 500 in the format's shape.
    let response = parse(
        &exchange(
            addr,
            "POST",
            "/v1/messages",
            &messages_body("[sim:error-event]", false),
        )
        .await,
    );
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["error"]["type"], "api_error");
}

#[tokio::test]
async fn cut_breaks_every_format_in_the_middle_of_an_event() {
    let addr = start();
    for (path, body, first) in [
        (
            "/_sim/cut/v1/responses",
            responses_body("a b c d e f", true),
            "event: response.created",
        ),
        (
            "/_sim/cut/v1/messages",
            messages_body("a b c d e f", true),
            "event: message_start",
        ),
    ] {
        let response = parse(&exchange(addr, "POST", path, &body).await);
        assert_eq!(response.status, 200);
        assert!(!response.complete, "{path}: no terminating chunk");
        let text = std::str::from_utf8(&response.body).unwrap();
        assert!(text.starts_with(first), "{text}");
        let (whole, partial) = text.rsplit_once("\n\n").unwrap();
        assert!(!partial.is_empty(), "{path}: a partial event ends the body");
        assert!(!partial.ends_with('\n'));
        let whole_events = named_events(format!("{whole}\n\n").as_bytes());
        assert!(whole_events.len() >= 2);
    }
}

// Named targets: per-target latency and prompt cache.

/// A system prompt of 4,100 bytes: 4 + 1,025 = 1,029 prompt tokens, over the cache minimum.
fn long_system_prompt() -> String {
    "You are a careful agent. ".repeat(164)
}

/// A chat conversation: the long system prompt, then the turns (user first, alternating).
fn chat_conversation(turns: &[&str], stream: bool) -> Vec<u8> {
    let mut messages = vec![json!({"role": "system", "content": long_system_prompt()})];
    for (index, text) in turns.iter().enumerate() {
        let role = if index % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": text}));
    }
    json!({"model": "gpt-sim", "stream": stream, "stream_options": {"include_usage": stream},
           "messages": messages})
    .to_string()
    .into_bytes()
}

/// POSTs a body and returns the JSON answer, asserting a 200.
async fn post_json(addr: SocketAddr, path: &str, body: &[u8]) -> Value {
    let response = parse(&exchange(addr, "POST", path, body).await);
    assert_eq!(
        response.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

async fn target_stats(addr: SocketAddr, name: &str) -> Value {
    let response = parse(&exchange(addr, "GET", &format!("/_sim/targets/{name}"), b"").await);
    assert_eq!(response.status, 200);
    response.json()
}

// Token counts of the conversation's parts: the system prompt 1,029; "first question"
// 4 + 4; "the answer" 4 + 3; "second question" 4 + 4.
const SYSTEM_AND_FIRST: u64 = 1029 + 8;
const SECOND_TURN_PROMPT: u64 = SYSTEM_AND_FIRST + 7 + 8;

#[tokio::test]
async fn prefix_cache_hits_on_the_next_turn_at_the_same_target_only() {
    let addr = start();
    let chat_a = "/_sim/target=a/v1/chat/completions";
    let turn1 = chat_conversation(&["first question"], false);
    let turn2 = chat_conversation(&["first question", "the answer", "second question"], false);

    let first = post_json(addr, chat_a, &turn1).await;
    assert_eq!(first["usage"]["prompt_tokens"], SYSTEM_AND_FIRST);
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    // The next turn's prefix is the first turn's whole prompt.
    let second = post_json(addr, chat_a, &turn2).await;
    assert_eq!(second["usage"]["prompt_tokens"], SECOND_TURN_PROMPT);
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        SYSTEM_AND_FIRST
    );

    // Another target has its own cache; the same turn misses there.
    let elsewhere = post_json(addr, "/_sim/target=b/v1/chat/completions", &turn2).await;
    assert_eq!(
        elsewhere["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );
    // And so has the default target (no target segment).
    let default = post_json(addr, "/v1/chat/completions", &turn2).await;
    assert_eq!(
        default["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );

    // Streamed, the usage chunk reports it too: turn 2 again hits up to its reply.
    let raw = exchange(
        addr,
        "POST",
        chat_a,
        &chat_conversation(&["first question", "the answer", "second question"], true),
    )
    .await;
    let events = events(&parse(&raw).body);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"],
        SYSTEM_AND_FIRST + 7
    );

    assert_eq!(
        target_stats(addr, "a").await,
        json!({"first_byte_ms": 0, "requests": 3, "cached_requests": 2,
               "input_tokens": SYSTEM_AND_FIRST + 2 * SECOND_TURN_PROMPT,
               "cached_tokens": 2 * SYSTEM_AND_FIRST + 7,
               // Turn 1's system prompt, then turn 2's history through the reply, twice.
               "cacheable_tokens": 1029 + 2 * (SYSTEM_AND_FIRST + 7), "waiting": 0})
    );
    let all = parse(&exchange(addr, "GET", "/_sim/targets", b"").await).json();
    let names: Vec<&String> = all["targets"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["a", "b", "default"]);
    assert_eq!(all["targets"]["b"]["requests"], 1);
    assert_eq!(all["targets"]["b"]["cached_requests"], 0);
}

#[tokio::test]
async fn prefix_cache_reports_in_the_responses_and_anthropic_usage_fields() {
    let addr = start();
    let responses = |input: Value| {
        json!({"model": "codex-sim", "instructions": long_system_prompt(), "input": input})
            .to_string()
            .into_bytes()
    };
    let path = "/_sim/target=r/v1/responses";
    let turn1 = json!([{"role": "user", "content": "first question"}]);
    let first = post_json(addr, path, &responses(turn1)).await;
    assert_eq!(first["usage"]["input_tokens_details"]["cached_tokens"], 0);
    let turn2 = json!([
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "the answer"}]},
        {"role": "user", "content": "second question"},
    ]);
    let second = post_json(addr, path, &responses(turn2)).await;
    assert_eq!(second["usage"]["input_tokens"], SECOND_TURN_PROMPT);
    assert_eq!(
        second["usage"]["input_tokens_details"]["cached_tokens"],
        SYSTEM_AND_FIRST
    );

    // Anthropic reports cache reads apart: `input_tokens` is the uncached rest. The
    // client moving its cache breakpoint to the newest message does not break the hit.
    let messages = |messages: Value| {
        json!({"model": "claude-sim", "max_tokens": 100, "system": long_system_prompt(),
               "messages": messages})
        .to_string()
        .into_bytes()
    };
    let path = "/_sim/target=c/v1/messages";
    let breakpoint = json!({"type": "ephemeral"});
    let turn1 = json!([{"role": "user", "content": [
        {"type": "text", "text": "first question", "cache_control": breakpoint}]}]);
    let first = post_json(addr, path, &messages(turn1)).await;
    assert_eq!(first["usage"]["cache_read_input_tokens"], 14 / 4 + 1);
    let turn2 = json!([
        {"role": "user", "content": [{"type": "text", "text": "first question"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "the answer"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "second question", "cache_control": breakpoint}]},
    ]);
    let second = post_json(addr, path, &messages(turn2)).await;
    assert_eq!(second["usage"]["cache_read_input_tokens"], SYSTEM_AND_FIRST);
    assert_eq!(
        second["usage"]["input_tokens"],
        SECOND_TURN_PROMPT - SYSTEM_AND_FIRST
    );
}

#[tokio::test]
async fn the_larger_of_sim_cached_and_the_prefix_cache_is_reported() {
    let addr = start();
    let path = "/_sim/target=both/v1/chat/completions";
    post_json(addr, path, &chat_conversation(&["first question"], false)).await;

    // Half of this prompt is less than the cached prefix.
    let short = chat_conversation(
        &["first question", "the answer", "[sim:cached] more"],
        false,
    );
    let answer = post_json(addr, path, &short).await;
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt / 2 < SYSTEM_AND_FIRST);
    assert_eq!(
        answer["usage"]["prompt_tokens_details"]["cached_tokens"],
        SYSTEM_AND_FIRST
    );

    // Half of this one is more.
    let long_question = format!("[sim:cached] {}", "word ".repeat(1600));
    let long = chat_conversation(&["first question", "the answer", &long_question], false);
    let answer = post_json(addr, path, &long).await;
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt / 2 > SYSTEM_AND_FIRST + 7);
    assert_eq!(
        answer["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt / 2
    );
}

/// PUTs a target's settings and returns the answer.
async fn put_target(addr: SocketAddr, name: &str, settings: &str) -> Parsed {
    let path = format!("/_sim/targets/{name}");
    parse(&exchange(addr, "PUT", &path, settings.as_bytes()).await)
}

#[tokio::test]
async fn a_targets_first_byte_delay_is_set_at_run_time() {
    let addr = start();
    let set = put_target(addr, "slow", r#"{"first_byte_ms": 300}"#).await;
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["first_byte_ms"], 300);
    let delay = Duration::from_millis(300);

    // Lower bounds only: the head comes no sooner than the delay, whole or streamed.
    let started = Instant::now();
    post_json(
        addr,
        "/_sim/target=slow/v1/chat/completions",
        &chat_body("hi", false),
    )
    .await;
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());

    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = request_bytes(
        "POST",
        "/_sim/target=slow/v1/messages",
        &messages_body("hi", true),
    );
    stream.write_all(&request).await.unwrap();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await.unwrap();
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    drop(stream);

    // Simulated failures are as slow as the target, whatever the order of the segments.
    let started = Instant::now();
    let failed = exchange(
        addr,
        "POST",
        "/_sim/fail429/target=slow/v1/chat/completions",
        &chat_body("hi", false),
    )
    .await;
    assert_eq!(parse(&failed).status, 429);
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());

    let stats = target_stats(addr, "slow").await;
    assert_eq!(stats["first_byte_ms"], 300);
    assert_eq!(stats["requests"], 3);

    // Back to no delay.
    let set = put_target(addr, "slow", r#"{"first_byte_ms": 0}"#).await;
    assert_eq!(set.json()["first_byte_ms"], 0);
    assert_eq!(set.json()["requests"], 3);
}

#[tokio::test]
async fn a_first_byte_delay_ends_when_the_client_leaves() {
    let addr = start();
    assert_eq!(
        put_target(addr, "stuck", r#"{"first_byte_ms": 60000}"#)
            .await
            .status,
        200
    );
    let wait_for_waiting = |expected: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while target_stats(addr, "stuck").await["waiting"] != expected {
            assert!(Instant::now() < deadline, "expected {expected} waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = request_bytes(
        "POST",
        "/_sim/target=stuck/v1/chat/completions",
        &chat_body("wait", true),
    );
    stream.write_all(&request).await.unwrap();
    wait_for_waiting(1).await;
    // Other targets answer meanwhile.
    post_json(addr, "/v1/chat/completions", &chat_body("hi", false)).await;
    drop(stream);
    wait_for_waiting(0).await;
}

#[tokio::test]
async fn target_names_and_settings_are_checked() {
    let addr = start();
    for settings in [
        r#"{"first_byte_ms": 60001}"#,
        r#"{"first_byte_ms": -1}"#,
        r#"{"first_byte_ms": 5, "jitter_ms": 1}"#,
        r#"{}"#,
        "not json",
    ] {
        let answer = put_target(addr, "t", settings).await;
        assert_eq!(answer.status, 400, "{settings}");
        assert_eq!(answer.json()["error"]["code"], "invalid_target_settings");
    }
    assert_eq!(
        put_target(addr, "t", r#"{"first_byte_ms": 60000}"#)
            .await
            .status,
        200
    );

    let long_name = "n".repeat(33);
    for name in ["bad.name", "sp%20ace", long_name.as_str()] {
        let answer = put_target(addr, name, r#"{"first_byte_ms": 1}"#).await;
        assert_eq!(answer.status, 400, "{name}");
        assert_eq!(answer.json()["error"]["code"], "invalid_sim_target");
    }

    // A target never used reports its defaults and is not created by being asked about.
    assert_eq!(
        target_stats(addr, "never").await,
        json!({"first_byte_ms": 0, "requests": 0, "cached_requests": 0,
               "input_tokens": 0, "cached_tokens": 0, "cacheable_tokens": 0, "waiting": 0})
    );
    let all = parse(&exchange(addr, "GET", "/_sim/targets", b"").await).json();
    assert!(all["targets"].get("never").is_none());
    assert_eq!(all["targets"]["t"]["first_byte_ms"], 60000);

    // In a base URL, a bad name is a 400 in the format's own error shape.
    let answer = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/target=a.b/v1/messages",
            &messages_body("hi", false),
        )
        .await,
    );
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["type"], "error");
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
    let answer = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/target=a/target=b/v1/chat/completions",
            &chat_body("hi", false),
        )
        .await,
    );
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["code"], "repeated_sim_segment");

    let answer = parse(&exchange(addr, "POST", "/_sim/targets", b"{}").await);
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn targets_are_bounded_and_can_be_forgotten() {
    let addr = start();
    for n in 0..targets::MAX_TARGETS {
        let answer = put_target(addr, &format!("t{n}"), r#"{"first_byte_ms": 0}"#).await;
        assert_eq!(answer.status, 200, "target {n}");
    }
    let answer = put_target(addr, "one-too-many", r#"{"first_byte_ms": 0}"#).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["code"], "too_many_sim_targets");
    let answer = parse(
        &exchange(
            addr,
            "POST",
            "/_sim/target=one-too-many/v1/responses",
            &responses_body("hi", false),
        )
        .await,
    );
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["code"], "too_many_sim_targets");
    // Known targets and the default one still answer.
    post_json(
        addr,
        "/_sim/target=t7/v1/chat/completions",
        &chat_body("hi", false),
    )
    .await;
    post_json(addr, "/v1/chat/completions", &chat_body("hi", false)).await;

    let forgotten = parse(&exchange(addr, "DELETE", "/_sim/targets", b"").await).json();
    assert_eq!(forgotten["forgotten"], targets::MAX_TARGETS + 1);
    assert_eq!(target_stats(addr, "default").await["requests"], 0);
    assert_eq!(
        put_target(addr, "one-too-many", r#"{"first_byte_ms": 0}"#)
            .await
            .status,
        200
    );
}
