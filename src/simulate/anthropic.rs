//! Anthropic Messages: the request parser and the renderers of the simulated
//! reply (a `message` object, or the `message_start` … `message_stop` stream).
//!
//! Everything here is pure (no I/O, no clock), so tests can predict every byte.

use bytes::Bytes;
use serde_json::{json, Value};

use super::model::{
    halves, json_bytes, named_event, Envelope, Finish, PromptCount, Reply, ReplyContent, SimInput,
    ToolChoice, DEFAULT_MODEL, IMAGE_PART_BYTES,
};
use super::prefix::PromptChain;
use crate::errors::{Error, Fault};

/// Reads a request body; the error is a message for a 400 response.
pub fn parse(body: &Value) -> Result<SimInput, Error> {
    let object = body
        .as_object()
        .ok_or_else(|| Error::new(Fault::Invalid, "request body must be a JSON object"))?;
    let messages = match object.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => {
            return Err(Error::new(
                Fault::Invalid,
                "messages: at least one message is required",
            ))
        }
        Some(_) => {
            return Err(Error::new(
                Fault::Invalid,
                "messages: Input should be a valid list",
            ))
        }
        None => return Err(Error::new(Fault::Invalid, "messages: Field required")),
    };
    // Required by the real API: a gateway translating into this format must set it.
    let max_tokens = match object.get("max_tokens") {
        Some(Value::Number(number)) => number.as_u64().ok_or_else(|| {
            Error::new(
                Fault::Invalid,
                "max_tokens: Input should be a valid integer",
            )
        })?,
        Some(_) => {
            return Err(Error::new(
                Fault::Invalid,
                "max_tokens: Input should be a valid integer",
            ))
        }
        None => return Err(Error::new(Fault::Invalid, "max_tokens: Field required")),
    };

    let model = body["model"].as_str().unwrap_or(DEFAULT_MODEL);
    let mut chain = PromptChain::new(model, &body["tools"]);
    let mut count = PromptCount::default();
    match object.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let content = Content::of(system);
            count.add_message(content.bytes, content.cached_bytes);
            chain.push(system, PromptCount::message_tokens(content.bytes), false);
        }
    }

    let mut last_user_text = None;
    let mut tool_result = None;
    for message in messages {
        let content = Content::of(&message["content"]);
        count.add_message(content.bytes, content.cached_bytes);
        let is_user = message["role"] == "user";
        // Tool results come back in user messages: every user message is input.
        chain.push(message, PromptCount::message_tokens(content.bytes), is_user);
        if is_user && !content.texts.is_empty() {
            last_user_text = Some(content.texts.join(" "));
        }
        tool_result = if is_user { content.tool_result } else { None };
    }

    let thinking = matches!(
        body["thinking"]["type"].as_str(),
        Some("enabled" | "adaptive")
    );

    Ok(SimInput {
        model: model.to_owned(),
        stream: body["stream"].as_bool().unwrap_or(false),
        include_usage: true,
        max_tokens: Some(max_tokens),
        last_user_text,
        prompt_tokens: count.tokens,
        cached_tokens: count.cached,
        tools: offered_tools(&body["tools"]),
        tool_choice: tool_choice(&body["tool_choice"]),
        tool_result,
        thinking,
        chain,
    })
}

/// What a `system` or message `content` (a string or an array of blocks) holds.
#[derive(Default)]
struct Content {
    /// The text blocks' texts (tool results left out).
    texts: Vec<String>,
    bytes: u64,
    /// Bytes of the blocks that carry `cache_control`.
    cached_bytes: u64,
    /// The text of the last tool_result block.
    tool_result: Option<String>,
}

impl Content {
    fn of(content: &Value) -> Content {
        let mut seen = Content::default();
        match content {
            Value::String(text) => {
                seen.bytes = text.len() as u64;
                seen.texts.push(text.clone());
            }
            Value::Array(blocks) => {
                for block in blocks {
                    let bytes = match block["type"].as_str() {
                        Some("text") => {
                            let text = block["text"].as_str().unwrap_or_default();
                            seen.texts.push(text.to_owned());
                            text.len() as u64
                        }
                        Some("image" | "document") => IMAGE_PART_BYTES,
                        Some("tool_use" | "server_tool_use") => json_bytes(&block["input"]),
                        Some("tool_result") => {
                            let (text, bytes) = tool_result_text(&block["content"]);
                            seen.tool_result = Some(text);
                            bytes
                        }
                        Some("thinking") => json_bytes(&block["thinking"]),
                        _ => 0,
                    };
                    seen.bytes += bytes;
                    if block.get("cache_control").is_some_and(|c| !c.is_null()) {
                        seen.cached_bytes += bytes;
                    }
                }
            }
            _ => {}
        }
        seen
    }
}

/// A tool_result's `content`: a string or an array of text/image blocks.
fn tool_result_text(content: &Value) -> (String, u64) {
    match content {
        Value::String(text) => (text.clone(), text.len() as u64),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            let mut bytes = 0;
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or_default();
                        bytes += text.len() as u64;
                        texts.push(text);
                    }
                    Some("image" | "document") => bytes += IMAGE_PART_BYTES,
                    _ => {}
                }
            }
            (texts.join(" "), bytes)
        }
        _ => (String::new(), 0),
    }
}

/// The names of the offered client tools (no `type`, or `custom`), in order.
/// Server tools (`web_search_…`) and deferred tools are not callable directly.
fn offered_tools(tools: &Value) -> Vec<String> {
    let Some(tools) = tools.as_array() else {
        return Vec::new();
    };
    tools
        .iter()
        .filter(|tool| tool["type"].is_null() || tool["type"] == "custom")
        .filter(|tool| tool["defer_loading"] != true)
        .filter_map(|tool| tool["name"].as_str())
        .map(str::to_owned)
        .collect()
}

fn tool_choice(choice: &Value) -> ToolChoice {
    match choice["type"].as_str() {
        Some("none") => ToolChoice::Never,
        Some("any") => ToolChoice::Required,
        Some("tool") => match choice["name"].as_str() {
            Some(name) => ToolChoice::Named(name.to_owned()),
            None => ToolChoice::Required,
        },
        _ => ToolChoice::Auto,
    }
}

pub fn tool_use_id(index: usize) -> String {
    format!("toolu_sim_{}", index + 1)
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
    }
}

/// Anthropic counts cached tokens apart: `input_tokens` is the uncached rest.
fn usage_json(reply: &Reply, output_tokens: u64) -> Value {
    json!({
        "input_tokens": reply.prompt_tokens.saturating_sub(reply.cached_tokens),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": output_tokens,
    })
}

/// A call's arguments as the `input` object (they are always an object's JSON text).
fn input_of(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

fn message_object(reply: &Reply, envelope: Envelope<'_>, content: Vec<Value>, done: bool) -> Value {
    json!({
        "id": envelope.id,
        "type": "message",
        "role": "assistant",
        "model": envelope.model,
        "content": content,
        "stop_reason": if done { json!(stop_reason(reply.finish)) } else { Value::Null },
        "stop_sequence": null,
        "usage": usage_json(reply, if done { reply.completion_tokens } else { 1 }),
    })
}

/// The body of a non-streamed response.
pub fn message_json(reply: &Reply, envelope: Envelope<'_>) -> Value {
    let mut content = Vec::new();
    if let Some(thinking) = &reply.thinking {
        content.push(json!({
            "type": "thinking",
            "thinking": thinking.text(),
            "signature": thinking.signature,
        }));
    }
    match &reply.content {
        ReplyContent::Text(pieces) => {
            content.push(json!({"type": "text", "text": pieces.concat()}));
        }
        ReplyContent::ToolCalls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                content.push(json!({
                    "type": "tool_use",
                    "id": tool_use_id(index),
                    "name": call.name,
                    "input": input_of(&call.arguments),
                }));
            }
        }
    }
    message_object(reply, envelope, content, true)
}

/// The events of a streamed response, each framed as `event: …\ndata: …\n\n`.
pub fn stream_events(reply: &Reply, envelope: Envelope<'_>) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut push = |name: &str, data: Value| events.push(named_event(name, &data));
    push(
        "message_start",
        json!({"type": "message_start", "message": message_object(reply, envelope, Vec::new(), false)}),
    );
    push("ping", json!({"type": "ping"}));

    let mut index = 0;
    let mut block = |push: &mut dyn FnMut(&str, Value), start: Value, deltas: Vec<Value>| {
        push(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        for delta in deltas {
            push(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        );
        index += 1;
    };

    if let Some(thinking) = &reply.thinking {
        let mut deltas: Vec<Value> = thinking
            .pieces
            .iter()
            .map(|piece| json!({"type": "thinking_delta", "thinking": piece}))
            .collect();
        deltas.push(json!({"type": "signature_delta", "signature": thinking.signature}));
        block(
            &mut push,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
            deltas,
        );
    }
    match &reply.content {
        ReplyContent::Text(pieces) => {
            let deltas = pieces
                .iter()
                .map(|piece| json!({"type": "text_delta", "text": piece}))
                .collect();
            block(&mut push, json!({"type": "text", "text": ""}), deltas);
        }
        ReplyContent::ToolCalls(calls) => {
            for (call_index, call) in calls.iter().enumerate() {
                let (first, second) = halves(&call.arguments);
                let deltas = [first, second]
                    .iter()
                    .map(|part| json!({"type": "input_json_delta", "partial_json": part}))
                    .collect();
                block(
                    &mut push,
                    json!({"type": "tool_use", "id": tool_use_id(call_index),
                           "name": call.name, "input": {}}),
                    deltas,
                );
            }
        }
    }

    push(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reply.finish), "stop_sequence": null},
            "usage": {"output_tokens": reply.completion_tokens},
        }),
    );
    push("message_stop", json!({"type": "message_stop"}));
    events
}

/// An error body in Anthropic's shape.
pub fn error_json(error_type: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type, "message": message}})
}

/// The in-stream `error` event an Anthropic stream ends with.
pub fn error_event(message: &str) -> Bytes {
    named_event("error", &error_json("overloaded_error", message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::model::signature_of;

    const ENVELOPE: Envelope<'static> = Envelope {
        id: "msg_sim_3",
        created: 1700000000,
        model: "claude-sim",
    };

    fn reply(body: Value) -> Reply {
        Reply::for_input(&parse(&body).expect("valid request"))
    }

    /// Parses `event: NAME\ndata: JSON\n\n` events, checking each data's `type`.
    fn parse_events(events: &[Bytes]) -> Vec<(String, Value)> {
        events
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let (name, data) = text
                    .strip_prefix("event: ")
                    .and_then(|rest| rest.strip_suffix("\n\n"))
                    .and_then(|rest| rest.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("badly framed event {text:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], name);
                (name.to_owned(), data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// A request shaped like Claude Code's: system blocks with cache_control, a
    /// mid-conversation system message, many tools, adaptive thinking.
    fn claude_code_like(last: Value) -> Value {
        json!({
            "model": "claude-sim",
            "max_tokens": 32000,
            "stream": true,
            "thinking": {"type": "adaptive", "display": "omitted"},
            "system": [
                {"type": "text", "text": "billing"},
                {"type": "text", "text": "0123456789abcdef", "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>"},
                    {"type": "text", "text": "read the file", "cache_control": {"type": "ephemeral"}},
                ]},
                {"role": "system", "content": "env info"},
                last,
            ],
            "tools": [
                {"name": "Bash", "description": "d", "input_schema": {"type": "object"}},
                {"name": "Read", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search"},
                {"name": "DeferredToolPlaceholder", "input_schema": {}, "defer_loading": true},
            ],
        })
    }

    #[test]
    fn parses_system_blocks_cache_control_tools_and_thinking() {
        let input = parse(&claude_code_like(
            json!({"role": "assistant", "content": [{"type": "text", "text": "ok"}]}),
        ))
        .unwrap();
        assert_eq!(input.tools, ["Bash", "Read"]);
        assert!(input.thinking && input.stream);
        assert_eq!(input.max_tokens, Some(32000));
        assert_eq!(
            input.last_user_text.as_deref(),
            Some("<system-reminder> read the file")
        );
        assert_eq!(input.tool_result, None);
        // system 23 B -> 4+6; user 30 B -> 4+8; system message 8 B -> 4+2; assistant 2 B -> 4+1.
        assert_eq!(input.prompt_tokens, 10 + 12 + 6 + 5);
        // Cached: 16 B of system -> 4, 13 B of the user message -> 4.
        assert_eq!(input.cached_tokens, 8);

        for (choice, expected) in [
            (json!({"type": "none"}), ToolChoice::Never),
            (json!({"type": "any"}), ToolChoice::Required),
            (
                json!({"type": "tool", "name": "Read"}),
                ToolChoice::Named("Read".into()),
            ),
            (json!({"type": "auto"}), ToolChoice::Auto),
        ] {
            let mut body = claude_code_like(json!({"role": "user", "content": "x"}));
            body["tool_choice"] = choice;
            assert_eq!(parse(&body).unwrap().tool_choice, expected);
        }
    }

    #[test]
    fn rejects_what_the_real_api_rejects() {
        let ok =
            json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
        assert!(parse(&ok).is_ok());
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("max_tokens");
        assert_eq!(
            parse(&missing).unwrap_err().to_string(),
            "max_tokens: Field required"
        );
        assert!(parse(&json!({"model": "m", "max_tokens": 10, "messages": []})).is_err());
        assert!(parse(&json!({"model": "m", "max_tokens": 10})).is_err());
        assert!(parse(&json!({"model": "m", "max_tokens": "10", "messages": []})).is_err());
    }

    #[test]
    fn text_stream_with_thinking_has_the_official_grammar() {
        let reply = reply(claude_code_like(
            json!({"role": "user", "content": [{"type": "text", "text": "hello you"}]}),
        ));
        let events = parse_events(&stream_events(&reply, ENVELOPE));
        let mut expected = vec!["message_start", "ping", "content_block_start"];
        expected.extend(["content_block_delta"; 4]); // "Thinking about: hello you"
        expected.extend([
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
        ]);
        expected.extend(["content_block_delta"; 7]); // "Hello from claude-sim. You said: hello you"
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names(&events), expected);

        // system 10 + user 12 + system message 6 + "hello you" 4+3 = 35, 8 of them cached.
        assert_eq!(
            events[0].1,
            json!({"type": "message_start", "message": {
                "id": "msg_sim_3", "type": "message", "role": "assistant", "model": "claude-sim",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 27, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 8, "output_tokens": 1}}})
        );
        assert_eq!(events[1].1, json!({"type": "ping"}));
        assert_eq!(
            events[2].1,
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "thinking_delta", "thinking": "Thinking "})
        );
        let signature = signature_of("Thinking about: hello you");
        assert_eq!(
            events[7].1,
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "signature_delta", "signature": signature}})
        );
        assert_eq!(
            events[8].1,
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            events[9].1,
            json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "text", "text": ""}})
        );
        let text: String = events
            .iter()
            .filter(|(_, data)| data["delta"]["type"] == "text_delta")
            .map(|(_, data)| data["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello from claude-sim. You said: hello you");
        assert_eq!(
            events[events.len() - 2].1,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": 4 + 7}})
        );

        let body = message_json(&reply, ENVELOPE);
        assert_eq!(
            body["content"],
            json!([{"type": "thinking", "thinking": "Thinking about: hello you", "signature": signature},
                   {"type": "text", "text": "Hello from claude-sim. You said: hello you"}])
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 27, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 8, "output_tokens": 11})
        );
    }

    #[test]
    fn tool_use_streams_input_json_in_two_deltas() {
        let mut body = claude_code_like(json!({"role": "user", "content":
            r#"read it [sim:call Read {"file_path": "/tmp/a b"}]"#}));
        body["thinking"] = json!({"type": "disabled"});
        let reply = reply(body);
        let events = parse_events(&stream_events(&reply, ENVELOPE));
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[2].1["content_block"],
            json!({"type": "tool_use", "id": "toolu_sim_1", "name": "Read", "input": {}})
        );
        let first = events[3].1["delta"]["partial_json"].as_str().unwrap();
        let second = events[4].1["delta"]["partial_json"].as_str().unwrap();
        assert_eq!(events[3].1["delta"]["type"], "input_json_delta");
        assert!(!first.is_empty() && !second.is_empty());
        assert_eq!(format!("{first}{second}"), r#"{"file_path":"/tmp/a b"}"#);
        assert_eq!(events[6].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[6].1["usage"]["output_tokens"], 5);

        let body = message_json(&reply, ENVELOPE);
        assert_eq!(
            body["content"],
            json!([{"type": "tool_use", "id": "toolu_sim_1", "name": "Read",
                    "input": {"file_path": "/tmp/a b"}}])
        );
        assert_eq!(body["stop_reason"], "tool_use");
    }

    #[test]
    fn forced_and_parallel_calls_but_never_after_a_tool_result() {
        let mut any = claude_code_like(json!({"role": "user", "content": "go"}));
        any["tool_choice"] = json!({"type": "any"});
        any.as_object_mut().unwrap().remove("thinking");
        let body = message_json(&reply(any), ENVELOPE);
        assert_eq!(body["content"][0]["name"], "Bash");
        assert_eq!(body["content"][0]["input"], json!({"sim": true}));

        let parallel = claude_code_like(json!({"role": "user", "content": "[sim:parallel]"}));
        let body = message_json(&reply(parallel), ENVELOPE);
        let names: Vec<&str> = body["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|block| block["name"].as_str())
            .collect();
        assert_eq!(names, ["Bash", "Read"]);
        assert_eq!(body["content"][2]["id"], "toolu_sim_2");

        // Claude Code's follow-up: the tool result (with cache_control) ends the conversation.
        let mut after = claude_code_like(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_sim_1", "is_error": true,
             "content": "File does not exist.", "cache_control": {"type": "ephemeral"}},
        ]}));
        after["tool_choice"] = json!({"type": "any"});
        let input = parse(&after).unwrap();
        assert_eq!(input.tool_result.as_deref(), Some("File does not exist."));
        assert_eq!(
            input.last_user_text.as_deref(),
            Some("<system-reminder> read the file"),
            "a message of tool results only is not user text"
        );
        // 20 B of tool result: 4 + 5 tokens, all of its text cached.
        assert_eq!(input.cached_tokens, 8 + 5);
        let reply = Reply::for_input(&input);
        assert_eq!(
            reply.text().unwrap(),
            "Hello from claude-sim. The tool said: File does not exist."
        );
    }

    #[test]
    fn max_tokens_stops_with_max_tokens() {
        let reply = reply(json!({"model": "m", "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "a b"}]}));
        let body = message_json(&reply, ENVELOPE);
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["content"][0]["text"], "Hello from ");
    }

    #[test]
    fn errors_have_the_anthropic_shape() {
        assert_eq!(
            error_json("authentication_error", "bad key"),
            json!({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})
        );
        assert_eq!(
            &error_event("busy")[..],
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n"
        );
    }
}
