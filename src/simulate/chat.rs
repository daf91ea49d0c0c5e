//! OpenAI Chat Completions: the request parser and the renderers of the
//! simulated reply (a `chat.completion` object, or `chat.completion.chunk`
//! events ending with `data: [DONE]`).
//!
//! Everything here is pure (no I/O, no clock), so tests can predict every byte.

use bytes::Bytes;
use serde_json::{json, Value};

use super::model::{
    asks_for_cache, json_bytes, Envelope, Finish, PromptCount, Reply, ReplyContent, SimInput,
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
            return Err(Error::new(Fault::Invalid, "'messages' must not be empty"))
        }
        Some(_) => return Err(Error::new(Fault::Invalid, "'messages' must be an array")),
        None => {
            return Err(Error::new(
                Fault::Invalid,
                "missing required parameter: 'messages'",
            ))
        }
    };

    let model = body["model"].as_str().unwrap_or(DEFAULT_MODEL);
    let mut chain = PromptChain::new(model, &body["tools"]);
    let mut count = PromptCount::default();
    let mut last_user_text = None;
    for message in messages {
        let (text, mut bytes) = content_text(&message["content"]);
        if let Some(calls) = message["tool_calls"].as_array() {
            bytes += calls
                .iter()
                .map(|call| json_bytes(&call["function"]["arguments"]))
                .sum::<u64>();
        }
        count.add_message(bytes, 0);
        let input = matches!(message["role"].as_str(), Some("user" | "tool" | "function"));
        chain.push(message, PromptCount::message_tokens(bytes), input);
        if message["role"] == "user" {
            last_user_text = Some(text);
        }
    }

    let last = messages.last();
    let tool_result = last
        .filter(|message| message["role"] == "tool")
        .map(|message| content_text(&message["content"]).0);

    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|key| body[*key].as_u64())
        .min();
    let cached_tokens = if asks_for_cache(last_user_text.as_deref()) {
        count.tokens / 2
    } else {
        0
    };
    let thinking = match &body["reasoning_effort"] {
        Value::String(effort) => effort != "none",
        _ => false,
    };

    Ok(SimInput {
        model: model.to_owned(),
        stream: body["stream"].as_bool().unwrap_or(false),
        include_usage: body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false),
        max_tokens,
        last_user_text,
        prompt_tokens: count.tokens,
        cached_tokens,
        tools: offered_tools(&body["tools"]),
        tool_choice: tool_choice(&body["tool_choice"]),
        tool_result,
        thinking,
        chain,
    })
}

/// The text of a message's `content` and the byte count used for its prompt tokens.
fn content_text(content: &Value) -> (String, u64) {
    match content {
        Value::String(text) => (text.clone(), text.len() as u64),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            let mut bytes = 0;
            for part in parts {
                match part["type"].as_str() {
                    Some("text") => {
                        let text = part["text"].as_str().unwrap_or_default();
                        bytes += text.len() as u64;
                        texts.push(text);
                    }
                    Some("image_url" | "input_audio" | "file") => bytes += IMAGE_PART_BYTES,
                    _ => {}
                }
            }
            (texts.join(" "), bytes)
        }
        _ => (String::new(), 0),
    }
}

/// The names of the offered function tools, in order.
fn offered_tools(tools: &Value) -> Vec<String> {
    let Some(tools) = tools.as_array() else {
        return Vec::new();
    };
    tools
        .iter()
        .filter(|tool| tool["type"] == "function")
        .filter_map(|tool| tool["function"]["name"].as_str())
        .map(str::to_owned)
        .collect()
}

fn tool_choice(choice: &Value) -> ToolChoice {
    match choice {
        Value::String(mode) if mode == "none" => ToolChoice::Never,
        Value::String(mode) if mode == "required" => ToolChoice::Required,
        Value::Object(_) => match choice["function"]["name"].as_str() {
            Some(name) => ToolChoice::Named(name.to_owned()),
            None => ToolChoice::Auto,
        },
        _ => ToolChoice::Auto,
    }
}

pub fn tool_call_id(index: usize) -> String {
    format!("call_sim_{}", index + 1)
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
    }
}

fn usage_json(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
    })
}

/// The body of a non-streamed response.
pub fn completion_json(reply: &Reply, envelope: Envelope<'_>) -> Value {
    let mut message = match &reply.content {
        ReplyContent::Text(pieces) => json!({"role": "assistant", "content": pieces.concat()}),
        ReplyContent::ToolCalls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(index, call)| {
                    json!({
                        "id": tool_call_id(index),
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect();
            json!({"role": "assistant", "content": null, "tool_calls": calls})
        }
    };
    if let Some(thinking) = &reply.thinking {
        message["reasoning_content"] = json!(thinking.text());
    }
    json!({
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reply.finish)}],
        "usage": usage_json(reply),
    })
}

/// The events of a streamed response, each framed as `data: …\n\n`, ending with `data: [DONE]`.
pub fn stream_events(reply: &Reply, envelope: Envelope<'_>, include_usage: bool) -> Vec<Bytes> {
    let chunk = |choices: Value| {
        json!({
            "id": envelope.id,
            "object": "chat.completion.chunk",
            "created": envelope.created,
            "model": envelope.model,
            "choices": choices,
        })
    };
    let delta = |delta: Value, finish_reason: Value| {
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]))
    };

    let mut chunks = Vec::new();
    let mut role_sent = false;
    if let Some(thinking) = &reply.thinking {
        chunks.push(delta(
            json!({"role": "assistant", "content": null, "reasoning_content": ""}),
            Value::Null,
        ));
        role_sent = true;
        for piece in &thinking.pieces {
            chunks.push(delta(json!({"reasoning_content": piece}), Value::Null));
        }
    }
    match &reply.content {
        ReplyContent::Text(pieces) => {
            if !role_sent {
                chunks.push(delta(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ));
            }
            for piece in pieces {
                chunks.push(delta(json!({"content": piece}), Value::Null));
            }
        }
        ReplyContent::ToolCalls(calls) => {
            // As OpenAI does: a call's first delta names it with empty arguments,
            // the arguments follow in later deltas of the same index.
            for (index, call) in calls.iter().enumerate() {
                let mut head = json!({
                    "tool_calls": [{
                        "index": index,
                        "id": tool_call_id(index),
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }],
                });
                if !role_sent {
                    head["role"] = json!("assistant");
                    head["content"] = Value::Null;
                    role_sent = true;
                }
                chunks.push(delta(head, Value::Null));
                chunks.push(delta(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}),
                    Value::Null,
                ));
            }
        }
    }
    chunks.push(delta(json!({}), json!(finish_reason(reply.finish))));
    if include_usage {
        let mut usage_chunk = chunk(json!([]));
        usage_chunk["usage"] = usage_json(reply);
        chunks.push(usage_chunk);
    }

    let mut events: Vec<Bytes> = chunks.iter().map(data_event).collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn data_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// An error body in OpenAI's shape (Chat and Responses share it).
pub fn error_json(error_type: &str, code: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
}

/// The in-stream error a Chat stream ends with (no `[DONE]` follows it).
pub fn error_event(message: &str) -> Bytes {
    data_event(&error_json("server_error", "sim_error_event", message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::model::{ToolCall, DEFAULT_TOOL_ARGUMENTS};

    const ENVELOPE: Envelope<'static> = Envelope {
        id: "chatcmpl-sim-1",
        created: 1700000000,
        model: "m",
    };

    fn request(body: Value) -> SimInput {
        parse(&body).expect("valid request")
    }

    fn reply(body: Value) -> Reply {
        Reply::for_input(&request(body))
    }

    fn text_of(reply: &Reply) -> String {
        reply.text().expect("a text reply")
    }

    /// Parses `data: <json>\n\n` events back into JSON (`None` for `[DONE]`).
    fn parse_events(events: &[Bytes]) -> Vec<Option<Value>> {
        events
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let payload = text
                    .strip_prefix("data: ")
                    .and_then(|rest| rest.strip_suffix("\n\n"))
                    .unwrap_or_else(|| panic!("badly framed event {text:?}"));
                (payload != "[DONE]").then(|| serde_json::from_str(payload).unwrap())
            })
            .collect()
    }

    fn deltas(events: &[Option<Value>]) -> Vec<Value> {
        events
            .iter()
            .flatten()
            .filter_map(|e| e["choices"].get(0).map(|c| c["delta"].clone()))
            .collect()
    }

    #[test]
    fn reply_echoes_first_eight_words_with_deterministic_usage() {
        let body = json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "one two three four five six seven eight nine ten"},
            ],
        });
        let reply = reply(body.clone());
        assert_eq!(
            text_of(&reply),
            "Hello from gpt-x. You said: one two three four five six seven eight"
        );
        // "be brief" = 8 bytes -> 4 + 2; the user text = 48 bytes -> 4 + 12.
        assert_eq!(reply.prompt_tokens, 6 + 16);
        assert_eq!(reply.completion_tokens, 13);
        assert_eq!(reply.finish, Finish::Stop);
        assert_eq!(reply.thinking, None);
        // Determinism: the same request gives the same reply.
        assert_eq!(reply, self::reply(body));

        let body = completion_json(&reply, ENVELOPE);
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 22, "completion_tokens": 13, "total_tokens": 35,
                   "prompt_tokens_details": {"cached_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0}})
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["object"], "chat.completion");
        assert!(body["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
    }

    #[test]
    fn counts_parts_and_images_and_handles_no_user_text() {
        let request = request(json!({
            "model": "vision",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "abcde"},
                {"type": "image_url", "image_url": {"url": "data:..."}},
            ]}],
        }));
        // 5 text bytes + 85 for the image = 90 bytes -> 23 tokens, plus 4.
        assert_eq!(request.prompt_tokens, 27);
        assert_eq!(
            text_of(&Reply::for_input(&request)),
            "Hello from vision. You said: abcde"
        );

        let reply = reply(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        assert_eq!(text_of(&reply), "Hello from m.");
        assert_eq!(reply.completion_tokens, 3);
    }

    #[test]
    fn max_tokens_truncates_with_length_finish() {
        for key in ["max_tokens", "max_completion_tokens"] {
            let reply = reply(json!({
                "model": "m",
                "messages": [{"role": "user", "content": "a b c"}],
                key: 3,
            }));
            assert_eq!(
                reply.content,
                ReplyContent::Text(vec!["Hello ".into(), "from ".into(), "m. ".into()])
            );
            assert_eq!(reply.completion_tokens, 3);
            assert_eq!(reply.finish, Finish::Length);
            assert_eq!(
                completion_json(&reply, ENVELOPE)["choices"][0]["finish_reason"],
                "length"
            );
        }
        // A limit that is not smaller than the reply leaves it whole.
        let reply = reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "a"}],
            "max_tokens": 7,
        }));
        assert_eq!(reply.finish, Finish::Stop);
        assert_eq!(reply.completion_tokens, 6);
    }

    #[test]
    fn rejects_bodies_without_messages() {
        assert!(parse(&json!({"model": "m"})).is_err());
        assert!(parse(&json!({"model": "m", "messages": "hi"})).is_err());
        assert!(parse(&json!({"model": "m", "messages": []})).is_err());
        assert!(parse(&json!([1, 2])).is_err());
    }

    #[test]
    fn stream_events_are_framed_like_openai() {
        let reply = reply(json!({
            "model": "m",
            "stream": true,
            "messages": [{"role": "user", "content": "hi there"}],
        }));
        let events = parse_events(&stream_events(&reply, ENVELOPE, false));
        let pieces = reply.completion_tokens as usize;
        // role chunk, one chunk per piece, finish chunk, [DONE].
        assert_eq!(events.len(), pieces + 3);
        let first = events[0].as_ref().unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "chatcmpl-sim-1");
        assert_eq!(first["created"], 1700000000);
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let streamed: String = events[1..=pieces]
            .iter()
            .map(|e| {
                e.as_ref().unwrap()["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(streamed, "Hello from m. You said: hi there");
        let finish = events[pieces + 1].as_ref().unwrap();
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert!(events
            .iter()
            .all(|e| e.as_ref().is_none_or(|e| e.get("usage").is_none())));
        assert!(events.last().unwrap().is_none(), "[DONE] comes last");
    }

    #[test]
    fn stream_usage_chunk_only_when_asked() {
        let request = request(json!({
            "model": "m",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}],
        }));
        assert!(request.include_usage);
        let reply = Reply::for_input(&request);
        let events = parse_events(&stream_events(&reply, ENVELOPE, true));
        let usage_chunk = events[events.len() - 2].as_ref().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(
            usage_chunk["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11,
                   "prompt_tokens_details": {"cached_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0}})
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.as_ref().is_some_and(|e| e.get("usage").is_some()))
                .count(),
            1
        );
        assert!(events.last().unwrap().is_none(), "[DONE] comes last");
    }

    fn tools() -> Value {
        json!([
            {"type": "retrieval"},
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "function", "function": {"name": "get_time"}},
        ])
    }

    #[test]
    fn tools_alone_get_a_text_answer() {
        let request = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": tools(),
            "tool_choice": "auto",
        }));
        assert_eq!(request.tools, ["get_weather", "get_time"]);
        assert_eq!(
            text_of(&Reply::for_input(&request)),
            "Hello from m. You said: weather?"
        );
    }

    #[test]
    fn required_tool_choice_calls_the_first_tool() {
        let reply = reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": tools(),
            "tool_choice": "required",
        }));
        assert_eq!(
            reply.content,
            ReplyContent::ToolCalls(vec![ToolCall {
                name: "get_weather".into(),
                arguments: DEFAULT_TOOL_ARGUMENTS.into()
            }])
        );
        assert_eq!(reply.completion_tokens, 5);

        let body = completion_json(&reply, ENVELOPE);
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "call_sim_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"sim\":true}"}}])
        );

        let events = parse_events(&stream_events(&reply, ENVELOPE, false));
        assert_eq!(events.len(), 4);
        let head = &events[0].as_ref().unwrap()["choices"][0]["delta"];
        assert_eq!(head["role"], "assistant");
        let head = &head["tool_calls"][0];
        assert_eq!(head["id"], "call_sim_1");
        assert_eq!(head["type"], "function");
        assert_eq!(
            head["function"],
            json!({"name": "get_weather", "arguments": ""})
        );
        let arguments = &events[1].as_ref().unwrap()["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(arguments["index"], 0);
        assert_eq!(arguments["function"]["arguments"], "{\"sim\":true}");
        assert_eq!(
            events[2].as_ref().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );

        // A named tool_choice picks that tool.
        let named = self::reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "time?"}],
            "tools": tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        }));
        let ReplyContent::ToolCalls(calls) = named.content else {
            panic!("a tool call")
        };
        assert_eq!(calls[0].name, "get_time");
    }

    #[test]
    fn directives_call_tools_in_parallel_and_with_exact_arguments() {
        let reply = reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "both [sim:parallel]"}],
            "tools": tools(),
        }));
        let body = completion_json(&reply, ENVELOPE);
        let calls = &body["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["id"], "call_sim_1");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[1]["id"], "call_sim_2");
        assert_eq!(calls[1]["function"]["name"], "get_time");
        assert_eq!(body["usage"]["completion_tokens"], 10);

        let events = parse_events(&stream_events(&reply, ENVELOPE, false));
        let deltas = deltas(&events);
        let indexes: Vec<u64> = deltas
            .iter()
            .filter_map(|d| d["tool_calls"][0]["index"].as_u64())
            .collect();
        assert_eq!(indexes, [0, 0, 1, 1]);
        assert_eq!(deltas[2]["tool_calls"][0]["id"], "call_sim_2");
        assert!(deltas[2].get("role").is_none(), "the role comes once");

        let reply = self::reply(json!({
            "model": "m",
            "messages": [{"role": "user",
                          "content": r#"go [sim:call get_time {"zone": "UTC", "at": [1, 2]}]"#}],
            "tools": tools(),
        }));
        assert_eq!(
            reply.content,
            ReplyContent::ToolCalls(vec![ToolCall {
                name: "get_time".into(),
                arguments: r#"{"zone":"UTC","at":[1,2]}"#.into()
            }])
        );
        // A tool that is not offered is not called.
        let reply = self::reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "[sim:call rm {}]"}],
            "tools": tools(),
        }));
        assert!(reply.text().is_some());
    }

    #[test]
    fn no_tool_call_when_disabled_or_answering_a_tool_result() {
        let none = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x [sim:tool]"}],
            "tools": tools(),
            "tool_choice": "none",
        }));
        assert_eq!(none.tool_choice, ToolChoice::Never);
        assert!(Reply::for_input(&none).text().is_some());
        let after_tool = reply(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "x [sim:tool]"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_sim_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"sim\":true}"}}]},
                {"role": "tool", "tool_call_id": "call_sim_1", "content": "sunny and warm today"},
            ],
            "tools": tools(),
            "tool_choice": "required",
        }));
        assert_eq!(
            text_of(&after_tool),
            "Hello from m. The tool said: sunny and warm today"
        );
        // 12 + 12 (the arguments) + 20 bytes of text: 4+3, 4+3, 4+5.
        assert_eq!(after_tool.prompt_tokens, 23);
        let empty_tools = reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x [sim:tool]"}],
            "tools": [],
        }));
        assert!(empty_tools.text().is_some());
    }

    #[test]
    fn reasoning_effort_streams_reasoning_content_first() {
        let reply = reply(json!({
            "model": "m",
            "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "why is the sky blue"}],
        }));
        let thinking = reply.thinking.as_ref().expect("thinking");
        assert_eq!(thinking.text(), "Thinking about: why is the sky blue");
        assert_eq!(reply.reasoning_tokens, 7);
        assert_eq!(reply.completion_tokens, 7 + 10);

        let body = completion_json(&reply, ENVELOPE);
        let message = &body["choices"][0]["message"];
        assert_eq!(
            message["reasoning_content"],
            "Thinking about: why is the sky blue"
        );
        assert_eq!(
            body["usage"]["completion_tokens_details"]["reasoning_tokens"],
            7
        );

        let deltas = deltas(&parse_events(&stream_events(&reply, ENVELOPE, false)));
        assert_eq!(
            deltas[0],
            json!({"role": "assistant", "content": null, "reasoning_content": ""})
        );
        let reasoning: String = deltas
            .iter()
            .filter_map(|d| d["reasoning_content"].as_str())
            .collect();
        assert_eq!(reasoning, "Thinking about: why is the sky blue");
        assert_eq!(deltas[1]["reasoning_content"], "Thinking ");
        assert_eq!(deltas[8]["content"], "Hello ");

        let none = self::reply(json!({
            "model": "m",
            "reasoning_effort": "none",
            "messages": [{"role": "user", "content": "x"}],
        }));
        assert_eq!(none.thinking, None);
    }

    #[test]
    fn cached_directive_reports_half_the_prompt() {
        let reply = reply(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "0123456789abcdef [sim:cached]"}],
        }));
        // 29 bytes -> 4 + 8 tokens.
        assert_eq!(reply.prompt_tokens, 12);
        assert_eq!(reply.cached_tokens, 6);
        let body = completion_json(&reply, ENVELOPE);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
    }

    #[test]
    fn error_event_has_the_openai_shape() {
        let event = error_event("boom");
        assert_eq!(
            &event[..],
            br#"data: {"error":{"message":"boom","type":"server_error","param":null,"code":"sim_error_event"}}

"#
        );
    }
}
