//! The simulated model: turns an OpenAI Chat Completions request into a
//! deterministic reply, and renders that reply as a JSON completion or as the
//! server-sent events of a stream.
//!
//! Everything here is pure (no I/O, no clock), so tests can predict every byte.

use bytes::Bytes;
use serde_json::{json, Value};

/// How many words of the user's last message the reply echoes back.
const ECHOED_WORDS: usize = 8;
/// Text bytes an image part is counted as, whatever its size.
const IMAGE_PART_BYTES: u64 = 85;
/// Per-message overhead in the prompt token count.
const TOKENS_PER_MESSAGE: u64 = 4;
/// Completion tokens reported for a tool call.
const TOOL_CALL_TOKENS: u64 = 5;
/// Model name used when a request names none.
pub const DEFAULT_MODEL: &str = "sim-model";

pub const TOOL_CALL_ID: &str = "call_sim_1";
pub const TOOL_CALL_ARGUMENTS: &str = r#"{"sim":true}"#;

/// The parts of a chat completions request the simulator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The smaller of `max_tokens` and `max_completion_tokens`, when either is given.
    pub max_tokens: Option<u64>,
    /// The function to "call" instead of answering with text, when tools apply.
    pub tool_to_call: Option<String>,
    /// Text of the last message whose role is `user` (text parts joined by a space).
    pub last_user_text: Option<String>,
    pub prompt_tokens: u64,
}

impl ChatRequest {
    /// Reads a request body; the error is a message for a 400 response.
    pub fn from_json(body: &Value) -> Result<ChatRequest, String> {
        let object = body
            .as_object()
            .ok_or("request body must be a JSON object")?;
        let messages = match object.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => messages,
            Some(Value::Array(_)) => return Err("'messages' must not be empty".into()),
            Some(_) => return Err("'messages' must be an array".into()),
            None => return Err("missing required parameter: 'messages'".into()),
        };

        let mut prompt_tokens = 0;
        let mut last_user_text = None;
        for message in messages {
            let (text, text_bytes) = content_text(&message["content"]);
            prompt_tokens += TOKENS_PER_MESSAGE + text_bytes.div_ceil(4);
            if message["role"] == "user" {
                last_user_text = Some(text);
            }
        }

        let last_role = messages.last().and_then(|m| m["role"].as_str());
        let tool_to_call = if last_role == Some("tool") {
            // The conversation already carries a tool result: answer with text,
            // as a real model would, instead of looping on tool calls forever.
            None
        } else {
            choose_tool(&body["tools"], &body["tool_choice"])
        };

        let max_tokens = ["max_tokens", "max_completion_tokens"]
            .iter()
            .filter_map(|key| body[*key].as_u64())
            .min();

        Ok(ChatRequest {
            model: body["model"].as_str().unwrap_or(DEFAULT_MODEL).to_owned(),
            stream: body["stream"].as_bool().unwrap_or(false),
            include_usage: body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            max_tokens,
            tool_to_call,
            last_user_text,
            prompt_tokens,
        })
    }
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
                    Some("image_url") => bytes += IMAGE_PART_BYTES,
                    _ => {}
                }
            }
            (texts.join(" "), bytes)
        }
        _ => (String::new(), 0),
    }
}

/// The function tool to call: the one `tool_choice` names if it is offered,
/// otherwise the first function tool; none when `tool_choice` is `"none"`.
fn choose_tool(tools: &Value, tool_choice: &Value) -> Option<String> {
    if tool_choice == "none" {
        return None;
    }
    let offered: Vec<&str> = tools
        .as_array()?
        .iter()
        .filter(|tool| tool["type"] == "function")
        .filter_map(|tool| tool["function"]["name"].as_str())
        .collect();
    let named = tool_choice["function"]["name"].as_str();
    let chosen = named
        .filter(|name| offered.contains(name))
        .or_else(|| offered.first().copied())?;
    Some(chosen.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyContent {
    /// Text, as the pieces a stream sends one by one (each word keeps its following space).
    Text(Vec<String>),
    /// A call to the named function with [`TOOL_CALL_ARGUMENTS`].
    ToolCall(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub content: ReplyContent,
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Reply {
    pub fn for_request(request: &ChatRequest) -> Reply {
        if let Some(name) = &request.tool_to_call {
            return Reply {
                content: ReplyContent::ToolCall(name.clone()),
                finish_reason: "tool_calls",
                prompt_tokens: request.prompt_tokens,
                completion_tokens: TOOL_CALL_TOKENS,
            };
        }

        let echoed: Vec<&str> = request
            .last_user_text
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .take(ECHOED_WORDS)
            .collect();
        let text = if echoed.is_empty() {
            format!("Hello from {}.", request.model)
        } else {
            format!(
                "Hello from {}. You said: {}",
                request.model,
                echoed.join(" ")
            )
        };

        let words: Vec<&str> = text.split_whitespace().collect();
        let last = words.len() - 1;
        let mut pieces: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, word)| {
                if i < last {
                    format!("{word} ")
                } else {
                    (*word).to_owned()
                }
            })
            .collect();

        let mut finish_reason = "stop";
        if let Some(limit) = request.max_tokens {
            if limit < pieces.len() as u64 {
                pieces.truncate(limit as usize);
                finish_reason = "length";
            }
        }

        Reply {
            completion_tokens: pieces.len() as u64,
            content: ReplyContent::Text(pieces),
            finish_reason,
            prompt_tokens: request.prompt_tokens,
        }
    }

    /// How many generation steps the reply takes; `slow` mode paces a
    /// non-streamed answer by this many delays.
    pub fn steps(&self) -> usize {
        match &self.content {
            ReplyContent::Text(pieces) => pieces.len(),
            // The tool call header and its arguments.
            ReplyContent::ToolCall(_) => 2,
        }
    }

    fn usage_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// The fields every response object of one completion shares.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

/// The body of a non-streamed response.
pub fn completion_json(reply: &Reply, envelope: Envelope<'_>) -> Value {
    let message = match &reply.content {
        ReplyContent::Text(pieces) => json!({"role": "assistant", "content": pieces.concat()}),
        ReplyContent::ToolCall(name) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": TOOL_CALL_ID,
                "type": "function",
                "function": {"name": name, "arguments": TOOL_CALL_ARGUMENTS},
            }],
        }),
    };
    json!({
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": reply.usage_json(),
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
    match &reply.content {
        ReplyContent::Text(pieces) => {
            chunks.push(delta(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            for piece in pieces {
                chunks.push(delta(json!({"content": piece}), Value::Null));
            }
        }
        ReplyContent::ToolCall(name) => {
            // As OpenAI does: the first delta names the call with empty arguments,
            // the arguments follow in later deltas of the same index.
            chunks.push(delta(
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }],
                }),
                Value::Null,
            ));
            chunks.push(delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": TOOL_CALL_ARGUMENTS}}]}),
                Value::Null,
            ));
        }
    }
    chunks.push(delta(json!({}), json!(reply.finish_reason)));
    if include_usage {
        let mut usage_chunk = chunk(json!([]));
        usage_chunk["usage"] = reply.usage_json();
        chunks.push(usage_chunk);
    }

    let mut events: Vec<Bytes> = chunks
        .iter()
        .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
        .collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: Envelope<'static> = Envelope {
        id: "chatcmpl-sim-1",
        created: 1700000000,
        model: "m",
    };

    fn request(body: Value) -> ChatRequest {
        ChatRequest::from_json(&body).expect("valid request")
    }

    fn text_of(reply: &Reply) -> String {
        match &reply.content {
            ReplyContent::Text(pieces) => pieces.concat(),
            other => panic!("expected text, got {other:?}"),
        }
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

    #[test]
    fn reply_echoes_first_eight_words_with_deterministic_usage() {
        let request = request(json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "one two three four five six seven eight nine ten"},
            ],
        }));
        let reply = Reply::for_request(&request);
        assert_eq!(
            text_of(&reply),
            "Hello from gpt-x. You said: one two three four five six seven eight"
        );
        // "be brief" = 8 bytes -> 4 + 2; the user text = 48 bytes -> 4 + 12.
        assert_eq!(reply.prompt_tokens, 6 + 16);
        assert_eq!(reply.completion_tokens, 13);
        assert_eq!(reply.finish_reason, "stop");
        // Determinism: the same request gives the same reply.
        assert_eq!(reply, Reply::for_request(&request));

        let body = completion_json(&reply, ENVELOPE);
        assert_eq!(body["usage"]["total_tokens"], 35);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["object"], "chat.completion");
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
            text_of(&Reply::for_request(&request)),
            "Hello from vision. You said: abcde"
        );

        let silent =
            self::request(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        let reply = Reply::for_request(&silent);
        assert_eq!(text_of(&reply), "Hello from m.");
        assert_eq!(reply.completion_tokens, 3);
    }

    #[test]
    fn max_tokens_truncates_with_length_finish() {
        for key in ["max_tokens", "max_completion_tokens"] {
            let request = request(json!({
                "model": "m",
                "messages": [{"role": "user", "content": "a b c"}],
                key: 3,
            }));
            let reply = Reply::for_request(&request);
            assert_eq!(
                reply.content,
                ReplyContent::Text(vec!["Hello ".into(), "from ".into(), "m. ".into()])
            );
            assert_eq!(reply.completion_tokens, 3);
            assert_eq!(reply.finish_reason, "length");
        }
        // A limit that is not smaller than the reply leaves it whole.
        let request = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "a"}],
            "max_tokens": 7,
        }));
        let reply = Reply::for_request(&request);
        assert_eq!(reply.finish_reason, "stop");
        assert_eq!(reply.completion_tokens, 6);
    }

    #[test]
    fn rejects_bodies_without_messages() {
        assert!(ChatRequest::from_json(&json!({"model": "m"})).is_err());
        assert!(ChatRequest::from_json(&json!({"model": "m", "messages": "hi"})).is_err());
        assert!(ChatRequest::from_json(&json!({"model": "m", "messages": []})).is_err());
        assert!(ChatRequest::from_json(&json!([1, 2])).is_err());
    }

    #[test]
    fn stream_events_are_framed_like_openai() {
        let request = request(json!({
            "model": "m",
            "stream": true,
            "messages": [{"role": "user", "content": "hi there"}],
        }));
        let reply = Reply::for_request(&request);
        let events = parse_events(&stream_events(&reply, ENVELOPE, false));
        let pieces = reply.completion_tokens as usize;
        // role chunk, one chunk per piece, finish chunk, [DONE].
        assert_eq!(events.len(), pieces + 3);
        let first = events[0].as_ref().unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "chatcmpl-sim-1");
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
        let reply = Reply::for_request(&request);
        let events = parse_events(&stream_events(&reply, ENVELOPE, true));
        let usage_chunk = events[events.len() - 2].as_ref().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(
            usage_chunk["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11})
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

    #[test]
    fn tools_produce_a_tool_call() {
        let tools = json!([
            {"type": "retrieval"},
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "function", "function": {"name": "get_time"}},
        ]);
        let request = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": tools,
        }));
        let reply = Reply::for_request(&request);
        assert_eq!(reply.content, ReplyContent::ToolCall("get_weather".into()));
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
        let head = &events[0].as_ref().unwrap()["choices"][0]["delta"]["tool_calls"][0];
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
        let named = self::request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "time?"}],
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        }));
        assert_eq!(named.tool_to_call.as_deref(), Some("get_time"));
    }

    #[test]
    fn no_tool_call_when_disabled_or_answering_a_tool_result() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let none = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": tools,
            "tool_choice": "none",
        }));
        assert_eq!(none.tool_to_call, None);
        let after_tool = request(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "tool", "tool_call_id": "call_sim_1", "content": "42"},
            ],
            "tools": tools,
        }));
        assert_eq!(after_tool.tool_to_call, None);
        assert_eq!(
            text_of(&Reply::for_request(&after_tool)),
            "Hello from m. You said: x"
        );
        let empty_tools = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [],
        }));
        assert_eq!(empty_tools.tool_to_call, None);
    }
}
