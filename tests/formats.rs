//! Every client format against every provider format, through the real binary and the
//! simulated provider: bodies, streams (each client's full grammar), tool calls, errors,
//! what the provider received, and the captured Codex and Claude Code bodies replayed.

mod common;

use common::*;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    Chat,
    Responses,
    Anthropic,
}

const CLIENTS: [Client; 3] = [Client::Chat, Client::Responses, Client::Anthropic];
/// (pinned model, the path its provider receives, its provider format's name)
const PROVIDERS: [(&str, &str, &str); 3] = [
    ("flux-pinned-on-chat", "/v1/chat/completions", "openai"),
    (
        "flux-pinned-on-responses",
        "/v1/responses",
        "openai_responses",
    ),
    ("flux-pinned-on-anthropic", "/v1/messages", "anthropic"),
];

impl Client {
    fn path(self) -> &'static str {
        match self {
            Client::Chat => "/v1/chat/completions",
            Client::Responses => "/v1/responses",
            Client::Anthropic => "/anthropic/v1/messages",
        }
    }

    /// A one-turn request saying `text`.
    fn request(self, model: &str, text: &str, stream: bool) -> Value {
        match self {
            Client::Chat => json!({"model": model, "stream": stream,
                "messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": text}]}),
            Client::Responses => json!({"model": model, "stream": stream,
                "instructions": "be brief",
                "input": [{"type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": text}]}]}),
            Client::Anthropic => json!({"model": model, "stream": stream, "max_tokens": 256,
                "system": "be brief",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}),
        }
    }

    /// The same with one `get_weather` tool whose use is required.
    fn tool_request(self, model: &str) -> Value {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut r = self.request(model, "weather in Paris?", false);
        match self {
            Client::Chat => {
                r["tools"] = json!([{"type": "function", "function":
                    {"name": "get_weather", "description": "weather", "parameters": schema}}]);
                r["tool_choice"] = json!("required");
            }
            Client::Responses => {
                r["tools"] = json!([{"type": "function", "name": "get_weather",
                    "description": "weather", "parameters": schema}]);
                r["tool_choice"] = json!("required");
            }
            Client::Anthropic => {
                r["tools"] = json!([{"name": "get_weather", "description": "weather",
                    "input_schema": schema}]);
                r["tool_choice"] = json!({"type": "any"});
            }
        }
        r
    }

    /// The text of a non-streamed answer, checking the body's shape.
    fn text_of(self, body: &Value) -> String {
        match self {
            Client::Chat => {
                assert_eq!(body["object"], "chat.completion", "{body}");
                assert!(
                    body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
                    "{body}"
                );
                body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            Client::Responses => {
                assert_eq!(body["object"], "response", "{body}");
                assert_eq!(body["status"], "completed", "{body}");
                assert!(
                    body["usage"]["input_tokens"].as_u64().unwrap() > 0,
                    "{body}"
                );
                let msg = body["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|i| i["type"] == "message")
                    .unwrap_or_else(|| panic!("no message item: {body}"));
                msg["content"][0]["text"].as_str().unwrap().to_string()
            }
            Client::Anthropic => {
                assert_eq!(body["type"], "message", "{body}");
                assert_eq!(body["stop_reason"], "end_turn", "{body}");
                assert!(
                    body["usage"]["output_tokens"].as_u64().unwrap() > 0,
                    "{body}"
                );
                let block = body["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|b| b["type"] == "text")
                    .unwrap_or_else(|| panic!("no text block: {body}"));
                block["text"].as_str().unwrap().to_string()
            }
        }
    }

    /// (call id, name, arguments as JSON) of the one tool call in a non-streamed answer.
    fn tool_call_of(self, body: &Value) -> (String, String, Value) {
        match self {
            Client::Chat => {
                assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{body}");
                let calls = body["choices"][0]["message"]["tool_calls"]
                    .as_array()
                    .unwrap();
                assert_eq!(calls.len(), 1, "{body}");
                let f = &calls[0]["function"];
                (
                    calls[0]["id"].as_str().unwrap().into(),
                    f["name"].as_str().unwrap().into(),
                    serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap(),
                )
            }
            Client::Responses => {
                let calls: Vec<&Value> = body["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i["type"] == "function_call")
                    .collect();
                assert_eq!(calls.len(), 1, "{body}");
                (
                    calls[0]["call_id"].as_str().unwrap().into(),
                    calls[0]["name"].as_str().unwrap().into(),
                    serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap(),
                )
            }
            Client::Anthropic => {
                assert_eq!(body["stop_reason"], "tool_use", "{body}");
                let calls: Vec<&Value> = body["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|b| b["type"] == "tool_use")
                    .collect();
                assert_eq!(calls.len(), 1, "{body}");
                (
                    calls[0]["id"].as_str().unwrap().into(),
                    calls[0]["name"].as_str().unwrap().into(),
                    calls[0]["input"].clone(),
                )
            }
        }
    }

    /// The tool request followed by the model's call and its result.
    fn tool_follow_up(self, model: &str, id: &str, args: &Value) -> Value {
        let mut r = self.tool_request(model);
        r["tool_choice"] = match self {
            Client::Anthropic => json!({"type": "auto"}),
            _ => json!("auto"),
        };
        let args_text = args.to_string();
        match self {
            Client::Chat => {
                let m = r["messages"].as_array_mut().unwrap();
                m.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id,
                    "type": "function", "function": {"name": "get_weather", "arguments": args_text}}]}));
                m.push(json!({"role": "tool", "tool_call_id": id, "content": "sunny and 21C"}));
            }
            Client::Responses => {
                let i = r["input"].as_array_mut().unwrap();
                i.push(
                    json!({"type": "function_call", "call_id": id, "name": "get_weather",
                    "arguments": args_text}),
                );
                i.push(json!({"type": "function_call_output", "call_id": id,
                    "output": "sunny and 21C"}));
            }
            Client::Anthropic => {
                let m = r["messages"].as_array_mut().unwrap();
                m.push(
                    json!({"role": "assistant", "content": [{"type": "tool_use", "id": id,
                    "name": "get_weather", "input": args}]}),
                );
                m.push(json!({"role": "user", "content": [{"type": "tool_result",
                    "tool_use_id": id, "content": "sunny and 21C"}]}));
            }
        }
        r
    }
}

async fn send(flux: &Flux, client: Client, body: &Value) -> reqwest::Response {
    let req = flux
        .client
        .post(format!("{}{}", flux.base, client.path()))
        .json(body);
    let req = match client {
        // Claude Code's way: x-api-key and the Anthropic headers.
        Client::Anthropic => req
            .header("x-api-key", &flux.key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "interleaved-thinking-2025-05-14"),
        _ => req.bearer_auth(&flux.key),
    };
    req.send().await.unwrap()
}

/// (event name, data) of each SSE event, in order.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = Vec::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.trim_start().to_string());
                }
            }
            (name, data.join("\n"))
        })
        .filter(|(n, d)| n.is_some() || !d.is_empty())
        .collect()
}

/// Check a complete stream in the client's grammar; returns the text it carried.
fn check_stream(client: Client, text: &str) -> String {
    let events = sse_events(text);
    assert!(!events.is_empty(), "empty stream");
    let mut out = String::new();
    match client {
        Client::Chat => {
            assert_eq!(events.last().unwrap().1, "[DONE]", "{text}");
            let mut finish = None;
            for (_, data) in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["object"], "chat.completion.chunk", "{data}");
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    out.push_str(c);
                }
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
            assert_eq!(finish.as_deref(), Some("stop"), "{text}");
        }
        Client::Responses => {
            let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
            assert_eq!(names[0], "response.created", "{names:?}");
            assert_eq!(names[1], "response.in_progress", "{names:?}");
            assert_eq!(*names.last().unwrap(), "response.completed", "{names:?}");
            for needed in [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
            ] {
                assert!(names.contains(&needed), "{needed} missing: {names:?}");
            }
            for (i, (name, data)) in events.iter().enumerate() {
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["type"].as_str(), name.as_deref(), "{data}");
                assert_eq!(v["sequence_number"], i, "{data}");
                if v["type"] == "response.output_text.delta" {
                    out.push_str(v["delta"].as_str().unwrap());
                }
            }
            let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
            let resp = &done["response"];
            assert_eq!(resp["object"], "response");
            assert_eq!(resp["status"], "completed");
            assert!(resp["id"].as_str().unwrap().starts_with("resp"), "{resp}");
            assert!(
                resp["usage"]["input_tokens"].as_u64().unwrap() > 0,
                "{resp}"
            );
            assert!(
                resp["usage"]["output_tokens"].as_u64().unwrap() > 0,
                "{resp}"
            );
            let full = resp["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["type"] == "message")
                .unwrap()["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(full, out, "completed output matches the deltas");
        }
        Client::Anthropic => {
            let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
            assert_eq!(names[0], "message_start", "{names:?}");
            assert_eq!(*names.last().unwrap(), "message_stop", "{names:?}");
            assert!(names.contains(&"message_delta"), "{names:?}");
            let start: Value = serde_json::from_str(&events[0].1).unwrap();
            assert!(
                start["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0,
                "message_start carries the input usage: {start}"
            );
            for (name, data) in &events {
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["type"].as_str(), name.as_deref(), "{data}");
                if v["type"] == "content_block_delta" && v["delta"]["type"] == "text_delta" {
                    out.push_str(v["delta"]["text"].as_str().unwrap());
                }
                if v["type"] == "message_delta" {
                    assert_eq!(v["delta"]["stop_reason"], "end_turn", "{data}");
                    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0, "{data}");
                }
            }
        }
    }
    out
}

/// What the provider received last.
async fn last_upstream(flux: &Flux) -> Value {
    flux.sim
        .requests()
        .await
        .pop()
        .expect("the provider saw a request")
}

fn check_upstream(seen: &Value, path: &str, format: &str) {
    assert_eq!(seen["path"], path, "{seen}");
    let h = &seen["headers"];
    match format {
        "anthropic" => {
            assert_eq!(h["x-api-key"], PROVIDER_KEY, "{h}");
            assert!(h.get("authorization").is_none(), "{h}");
            assert!(h["anthropic-version"].is_string(), "{h}");
            assert!(seen["body"]["messages"].is_array(), "{seen}");
            assert!(seen["body"]["max_tokens"].is_u64(), "{seen}");
        }
        _ => {
            assert_eq!(h["authorization"], format!("Bearer {PROVIDER_KEY}"), "{h}");
            assert!(h.get("x-api-key").is_none(), "{h}");
            let conversation = if format == "openai" {
                "messages"
            } else {
                "input"
            };
            assert!(seen["body"][conversation].is_array(), "{seen}");
        }
    }
}

#[tokio::test]
async fn every_client_format_is_served_by_every_provider_format() {
    let flux = Flux::start().await;
    for client in CLIENTS {
        for (model, path, format) in PROVIDERS {
            let r = send(
                &flux,
                client,
                &client.request(model, "hello there general", false),
            )
            .await;
            let status = r.status();
            let pair = format!("{client:?} client, {format} provider");
            assert_eq!(status, 200, "{pair}: {}", r.text().await.unwrap());
            assert_eq!(header(&r, "x-flux-model"), model, "{pair}");
            assert_eq!(header(&r, "x-flux-routed"), "false", "{pair}");
            assert_eq!(header(&r, "content-type"), "application/json", "{pair}");
            let body: Value = r.json().await.unwrap();
            let text = client.text_of(&body);
            assert!(
                text.contains("You said: hello there general"),
                "{pair}: {text}"
            );
            let seen = last_upstream(&flux).await;
            check_upstream(&seen, path, format);
            assert!(
                !seen.to_string().contains(&flux.key),
                "{pair}: client key upstream"
            );
        }
    }
}

#[tokio::test]
async fn every_pair_streams_in_the_clients_own_grammar_with_chunked_framing() {
    let flux = Flux::start().await;
    for client in CLIENTS {
        for (model, path, format) in PROVIDERS {
            let pair = format!("{client:?} client, {format} provider");
            let r = send(
                &flux,
                client,
                &client.request(model, "stream me a reply", true),
            )
            .await;
            assert_eq!(r.status(), 200, "{pair}");
            assert_eq!(header(&r, "content-type"), "text/event-stream", "{pair}");
            assert_eq!(header(&r, "transfer-encoding"), "chunked", "{pair}");
            assert_eq!(header(&r, "x-flux-model"), model, "{pair}");
            let text = r.text().await.unwrap();
            let said = check_stream(client, &text);
            assert!(
                said.contains("You said: stream me a reply"),
                "{pair}: {said}"
            );
            let seen = last_upstream(&flux).await;
            check_upstream(&seen, path, format);
            assert_eq!(seen["body"]["stream"], true, "{pair}");
            if format == "openai" && client != Client::Chat {
                assert_eq!(
                    seen["body"]["stream_options"]["include_usage"], true,
                    "{pair}: usage asked for"
                );
            }
        }
    }
}

#[tokio::test]
async fn tool_calls_round_trip_between_every_pair_exactly_once() {
    let flux = Flux::start().await;
    for client in CLIENTS {
        for (model, _, format) in PROVIDERS {
            let pair = format!("{client:?} client, {format} provider");
            let r = send(&flux, client, &client.tool_request(model)).await;
            assert_eq!(r.status(), 200, "{pair}");
            let body: Value = r.json().await.unwrap();
            let (id, name, args) = client.tool_call_of(&body);
            assert_eq!(name, "get_weather", "{pair}");
            assert!(args.is_object(), "{pair}: {args}");

            let r = send(&flux, client, &client.tool_follow_up(model, &id, &args)).await;
            assert_eq!(r.status(), 200, "{pair}");
            let body: Value = r.json().await.unwrap();
            let text = client.text_of(&body);
            assert!(!text.is_empty(), "{pair}");
            // The provider got the call and its result once each, under the same id.
            let seen = last_upstream(&flux).await.to_string();
            assert_eq!(seen.matches(&id).count(), 2, "{pair}: {seen}");
            assert_eq!(seen.matches("sunny and 21C").count(), 1, "{pair}: {seen}");
        }
    }
}

#[tokio::test]
async fn a_broken_stream_ends_with_one_parseable_error_event_in_the_clients_grammar() {
    let flux = Flux::start().await;
    for client in CLIENTS {
        for model in [
            "flux-pinned-cut-chat",
            "flux-pinned-cut-responses",
            "flux-pinned-cut-anthropic",
        ] {
            let pair = format!("{client:?} client, {model}");
            let r = send(
                &flux,
                client,
                &client.request(model, "a b c d e f g h", true),
            )
            .await;
            assert_eq!(r.status(), 200, "{pair}");
            let text = r.text().await.unwrap();
            assert!(text.ends_with("\n\n"), "{pair}: no partial event: {text:?}");
            let events = sse_events(&text);
            // Every event parses: nothing partial was forwarded.
            for (_, data) in &events {
                serde_json::from_str::<Value>(data)
                    .unwrap_or_else(|e| panic!("{pair}: unparseable {data:?}: {e}"));
            }
            let (name, data) = events.last().unwrap();
            let last: Value = serde_json::from_str(data).unwrap();
            match client {
                Client::Chat => {
                    assert_eq!(last["error"]["code"], "upstream_error", "{pair}: {text}");
                    assert!(!text.contains("[DONE]"), "{pair}");
                }
                Client::Responses => {
                    assert_eq!(name.as_deref(), Some("response.failed"), "{pair}: {text}");
                    assert_eq!(last["response"]["status"], "failed", "{pair}");
                }
                Client::Anthropic => {
                    assert_eq!(name.as_deref(), Some("error"), "{pair}: {text}");
                    assert_eq!(last["error"]["type"], "api_error", "{pair}");
                }
            }
            let errors = events
                .iter()
                .filter(|(n, d)| {
                    matches!(n.as_deref(), Some("error" | "response.failed"))
                        || d.starts_with("{\"error\"")
                })
                .count();
            assert_eq!(errors, 1, "{pair}: {text}");
        }
    }
}

#[tokio::test]
async fn captured_codex_and_claude_code_bodies_are_served_by_every_provider_format() {
    let flux = Flux::start().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients");
    let captured = [
        ("codex-0.169.0-1.json", Client::Responses),
        ("codex-0.169.0-2.json", Client::Responses),
        ("codex-0.169.0-3.json", Client::Responses),
        ("claude-code-2.1.330-1.json", Client::Anthropic),
        ("claude-code-2.1.330-2.json", Client::Anthropic),
        ("claude-code-2.1.330-3.json", Client::Anthropic),
        ("claude-code-2.1.330-4.json", Client::Anthropic),
    ];
    for (file, client) in captured {
        let capture: Value =
            serde_json::from_slice(&std::fs::read(fixtures.join(file)).unwrap()).unwrap();
        for (model, path, format) in PROVIDERS {
            let pair = format!("{file} to the {format} provider");
            let mut body = capture["body"].clone();
            body["model"] = json!(model);
            let url = format!("{}{}?beta=true", flux.base, client.path());
            let r = flux
                .client
                .post(url)
                .bearer_auth(&flux.key)
                .header(
                    "anthropic-beta",
                    "claude-code-20250219,interleaved-thinking-2025-05-14",
                )
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{pair}");
            let text = r.text().await.unwrap();
            check_stream(client, &text);
            let seen = last_upstream(&flux).await;
            check_upstream(&seen, path, format);
            if format == "anthropic" && client == Client::Anthropic {
                assert_eq!(
                    seen["headers"]["anthropic-beta"],
                    "claude-code-20250219,interleaved-thinking-2025-05-14",
                    "{pair}: betas reach Anthropic-format providers"
                );
            }
            if format == "anthropic" && client == Client::Responses {
                assert!(seen["headers"].get("anthropic-beta").is_none(), "{pair}");
            }
            // Claude Code always asks for high effort: translated only for a model that
            // takes it (the Responses-format test model does, the Chat one does not).
            if client == Client::Anthropic && format == "openai" {
                assert!(seen["body"].get("reasoning_effort").is_none(), "{pair}");
            }
            if client == Client::Anthropic && format == "openai_responses" {
                assert_eq!(seen["body"]["reasoning"]["effort"], "high", "{pair}");
            }
        }
    }
}

#[tokio::test]
async fn the_anthropic_path_takes_either_header_and_answers_errors_in_its_shape() {
    let flux = Flux::start().await;
    let body = Client::Anthropic.request("flux-pinned-on-chat", "hi", false);
    // Bearer, as the anthropic Python SDK sends it.
    let r = flux.post("/anthropic/v1/messages", &flux.key, &body).await;
    assert_eq!(r.status(), 200);
    // A wrong key: Anthropic's shape, FluxRouter's code, the request id, no retry.
    let r = flux
        .client
        .post(format!("{}/anthropic/v1/messages", flux.base))
        .header("x-api-key", "sk-wrong0000000000000000000000000000000000000")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-should-retry"), "false");
    let id = header(&r, "request-id").to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["request_id"], id);
    // An unknown model.
    let r = send(
        &flux,
        Client::Anthropic,
        &Client::Anthropic.request("gpt-9", "hi", false),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn a_duplicated_model_is_refused_on_every_path() {
    let flux = Flux::start().await;
    for client in CLIENTS {
        let body = client.request("flux-fast", "hi", false).to_string();
        // The cheap model first, a premium one last: the gateway must not pick one.
        let dup = body.replacen("{", "{\"model\":\"flux-pinned-deep-500\",", 1);
        let r = flux
            .client
            .post(format!("{}{}", flux.base, client.path()))
            .bearer_auth(&flux.key)
            .header("content-type", "application/json")
            .body(dup)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{client:?}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("'model' appears more than once"),
            "{client:?}: {text}"
        );
    }
    assert!(
        flux.sim.requests().await.is_empty(),
        "nothing was forwarded"
    );
}

#[tokio::test]
async fn count_tokens_is_counted_locally_and_never_forwarded() {
    let flux = Flux::start().await;
    let short = Client::Anthropic.request("flux-auto", "hi", false);
    let long = Client::Anthropic.request("flux-auto", &"lorem ipsum dolor ".repeat(200), false);
    let mut counts = Vec::new();
    for body in [&short, &long] {
        let r = flux
            .client
            .post(format!(
                "{}/anthropic/v1/messages/count_tokens?beta=true",
                flux.base
            ))
            .header("x-api-key", &flux.key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        counts.push(v["input_tokens"].as_u64().unwrap());
    }
    assert!(counts[0] > 0 && counts[0] < 20, "{counts:?}");
    assert!(counts[1] > 500, "{counts:?}");
    assert!(
        flux.sim.requests().await.is_empty(),
        "count_tokens reached the provider"
    );
}

#[tokio::test]
async fn previous_response_id_needs_a_responses_format_provider() {
    let flux = Flux::start().await;
    let mut body = Client::Responses.request("flux-pinned-on-chat", "continue", false);
    body["previous_response_id"] = json!("resp_123");
    // The pinned chat model cannot continue it; the lane's Responses-format model can.
    let r = send(&flux, Client::Responses, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-flux-model"), "flux-pinned-on-responses");
    let seen = last_upstream(&flux).await;
    assert_eq!(seen["body"]["previous_response_id"], "resp_123");

    // A lane with no Responses-format provider: a 400 that says what to do.
    let mut body = Client::Responses.request("flux-fast", "continue", false);
    body["previous_response_id"] = json!("resp_123");
    let r = send(&flux, Client::Responses, &body).await;
    let m = expect_openai_error(r, 400, "invalid_request").await;
    assert!(
        m.contains("keeps no responses") && m.contains("full conversation"),
        "{m}"
    );
}

#[tokio::test]
async fn probes_and_paths_behave_as_clients_expect() {
    let flux = Flux::start().await;
    // `/anthropic/api/hello`: Claude Code's preconnect at start (HEAD), no key.
    for path in ["/", "/healthz", "/anthropic/api/hello"] {
        let r = flux
            .client
            .head(format!("{}{path}", flux.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "HEAD {path}");
        assert!(header(&r, "x-flux-request-id").starts_with("req_"));
        let r = flux
            .client
            .get(format!("{}{path}", flux.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        assert_eq!(header(&r, "content-type"), "text/plain", "GET {path}");
    }
    let r = flux
        .client
        .get(format!("{}/anthropic/api/hello", flux.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let r = flux
        .client
        .delete(format!("{}/healthz", flux.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
    let r = flux.get("/anthropic/v1/messages", &flux.key).await;
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "POST");
    // A trailing slash stays with the client: the provider gets its own path.
    let r = flux
        .post(
            "/v1/chat/completions/",
            &flux.key,
            &ping("flux-pinned-on-anthropic"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(last_upstream(&flux).await["path"], "/v1/messages");
    let r = flux
        .post("/v1/responses/", &flux.key, &ping("flux-pinned-on-chat"))
        .await;
    // A chat body on the Responses path lacks `input`: a 400 naming it.
    let m = expect_openai_error(r, 400, "invalid_request").await;
    assert!(m.contains("input"), "{m}");
}

#[tokio::test]
async fn unknown_fields_pass_through_to_the_same_format_and_are_dropped_otherwise() {
    let flux = Flux::start().await;
    let mut body = Client::Responses.request("flux-pinned-on-responses", "hi", false);
    body["client_metadata"] = json!({"thread_id": "t1"});
    body["prompt_cache_key"] = json!("k1");
    body["some_future_field"] = json!([1, 2, 3]);
    let r = send(&flux, Client::Responses, &body).await;
    assert_eq!(r.status(), 200);
    let seen = last_upstream(&flux).await;
    assert_eq!(seen["body"]["client_metadata"]["thread_id"], "t1");
    assert_eq!(seen["body"]["some_future_field"], json!([1, 2, 3]));

    body["model"] = json!("flux-pinned-on-anthropic");
    let r = send(&flux, Client::Responses, &body).await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-flux-request-id").to_string();
    let seen = last_upstream(&flux).await;
    assert!(seen["body"].get("client_metadata").is_none(), "{seen}");
    assert!(seen["body"].get("some_future_field").is_none(), "{seen}");
    let log = flux.log_containing(&id).await;
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("dropped_fields"))
        .unwrap();
    let v: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert!(v["dropped_fields"].as_u64().unwrap() >= 3, "{line}");
    assert_eq!(v["client_format"], "openai_responses");
    assert_eq!(v["provider_format"], "anthropic");
}

/// A 32 MiB body of small numbers (the shape that made a DOM parse take 37x its size).
fn numbers_body(model: &str) -> Vec<u8> {
    let mut body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"sum these"}}],"numbers":["#
    )
    .into_bytes();
    let target = 32 * 1024 * 1024 - 64;
    while body.len() < target {
        body.extend_from_slice(b"1,");
    }
    body.extend_from_slice(b"1]}");
    body
}

#[tokio::test]
async fn peak_memory_stays_a_small_multiple_of_the_body() {
    let flux = Flux::start_with_body_timeout(30_000).await;
    // Passthrough (chat to a chat provider) and translation (chat to Anthropic, which drops
    // the unknown field) both parse the whole body.
    let warm = flux.chat(&ping("flux-pinned-on-chat")).await;
    assert_eq!(warm.status(), 200);
    let body = numbers_body("flux-pinned-on-anthropic");
    let mib = body.len() as u64 / 1024;
    let before = flux.memory_kb("VmHWM");
    let r = flux
        .client
        .post(format!("{}/v1/chat/completions", flux.base))
        .bearer_auth(&flux.key)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let one = flux.memory_kb("VmHWM").saturating_sub(before);
    let base = before;
    eprintln!("peak RSS growth for one 32 MiB body: {} MiB", one / 1024);
    assert!(
        one < 5 * mib,
        "one body of {mib} kB grew the peak by {one} kB"
    );

    let body = numbers_body("flux-pinned-on-chat");
    let four = futures_util::future::join_all((0..4).map(|_| {
        flux.client
            .post(format!("{}/v1/chat/completions", flux.base))
            .bearer_auth(&flux.key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    }))
    .await;
    for r in four {
        let r = r.unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
    }
    let four = flux.memory_kb("VmHWM").saturating_sub(base);
    eprintln!(
        "peak RSS growth for four concurrent 32 MiB bodies: {} MiB",
        four / 1024
    );
    assert!(four < 4 * 5 * mib, "four bodies grew the peak by {four} kB");
}
