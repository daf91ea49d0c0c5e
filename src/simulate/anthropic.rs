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

/// Reads a request body; the error is a message for a 400 response.
pub fn parse(body: &Value) -> Result<SimInput, String> {
    let object = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let messages = match object.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return Err("messages: at least one message is required".into()),
        Some(_) => return Err("messages: Input should be a valid list".into()),
        None => return Err("messages: Field required".into()),
    };
    // Required by the real API: a gateway translating into this format must set it.
    let max_tokens = match object.get("max_tokens") {
        Some(Value::Number(number)) => number
            .as_u64()
            .ok_or("max_tokens: Input should be a valid integer")?,
        Some(_) => return Err("max_tokens: Input should be a valid integer".into()),
        None => return Err("max_tokens: Field required".into()),
    };

    let mut count = PromptCount::default();
    match object.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let content = Content::of(system);
            count.add_message(content.bytes, content.cached_bytes);
        }
    }

    let mut last_user_text = None;
    let mut tool_result = None;
    for message in messages {
        let content = Content::of(&message["content"]);
        count.add_message(content.bytes, content.cached_bytes);
        let is_user = message["role"] == "user";
        if is_user && !content.texts.is_empty() {
            last_user_text = Some(content.texts.join(" "));
        }
        tool_result = if is_user {
            content.tool_result
        } else {
            None
        };
    }

    let thinking = matches!(body["thinking"]["type"].as_str(), Some("enabled" | "adaptive"));

    Ok(SimInput {
        model: body["model"].as_str().unwrap_or(DEFAULT_MODEL).to_owned(),
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
