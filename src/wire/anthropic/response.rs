//! Non-streamed responses: decode a provider's body into the IR, encode the IR for a client.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::request::{block_out, BlockOut};
use super::{
    empty_object, message_id, non_null, stop_from_wire, stop_to_wire, str_of, tool_id, Str,
    UsageOut, WireUsage,
};
use crate::wire::ir::{Arguments, Block, Response, StopReason};

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The members of the content blocks a message can hold, each raw (unknown types skipped).
#[derive(Deserialize)]
struct ContentIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Decode a provider's successful (2xx) body. The error is a reason for the log.
pub fn decode_response(body: &[u8]) -> Result<Response<'_>, String> {
    let m: MessageIn =
        serde_json::from_slice(body).map_err(|e| format!("not an Anthropic message: {e}"))?;
    match m.kind.as_ref().map(|k| k.0.as_ref()) {
        Some("message") | None => {}
        Some("error") => {
            let detail = m.error.map_or("", |e| e.get());
            return Err(format!("the provider answered with an error: {detail}"));
        }
        Some(other) => return Err(format!("not an Anthropic message: type '{other}'")),
    }
    let Some(list) = m.content else {
        return Err("not an Anthropic message: no 'content'".into());
    };
    let mut content = Vec::with_capacity(list.len());
    for raw in list {
        let Ok(b) = serde_json::from_str::<ContentIn>(raw.get()) else {
            continue;
        };
        match str_of(non_null(b.kind)).as_deref() {
            Some("text") => content.push(Block::Text {
                text: str_of(non_null(b.text)).unwrap_or_default(),
                cache_control: None,
            }),
            Some("tool_use") => content.push(Block::ToolCall {
                id: str_of(non_null(b.id)).unwrap_or_default(),
                name: str_of(non_null(b.name)).unwrap_or_default(),
                arguments: Arguments::Json(match non_null(b.input) {
                    Some(input) => input,
                    None => empty_object(),
                }),
            }),
            Some("thinking") => content.push(Block::Thinking {
                text: str_of(non_null(b.thinking)).unwrap_or_default(),
                signature: str_of(non_null(b.signature)),
            }),
            Some("redacted_thinking") => {
                if let Some(data) = str_of(non_null(b.data)) {
                    content.push(Block::RedactedThinking { data });
                }
            }
            _ => {} // server tool use and its results: nothing another format can carry
        }
    }
    Ok(Response {
        id: m.id.map(|s| s.0).unwrap_or_default(),
        model: m.model.map(|s| s.0).unwrap_or_default(),
        content,
        stop: m
            .stop_reason
            .map_or(StopReason::EndTurn, |r| stop_from_wire(&r.0)),
        usage: m.usage.unwrap_or_default().to_ir(),
    })
}

#[derive(Serialize)]
struct MessageOut<'r> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'r str,
    content: Vec<BlockOut<'r>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'r str>,
    usage: UsageOut,
}

/// Encode a response for a client of this format.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    let content = resp
        .content
        .iter()
        .filter_map(|b| match b {
            // A client reads back what the model said: keep empty text and unsigned thinking.
            Block::Text { text, .. } => Some(BlockOut::Text {
                text,
                cache_control: None,
            }),
            Block::Thinking { text, signature } => Some(BlockOut::Thinking {
                thinking: text,
                signature: signature.as_deref().unwrap_or(""),
            }),
            Block::ToolCall {
                id,
                name,
                arguments,
            } => Some(BlockOut::ToolUse {
                id: tool_id(id),
                name,
                input: super::input_object(arguments),
            }),
            other => block_out(other),
        })
        .collect();
    let body = MessageOut {
        id: message_id(&resp.id),
        kind: "message",
        role: "assistant",
        model: &resp.model,
        content,
        stop_reason: stop_to_wire(resp.stop),
        stop_sequence: None,
        usage: UsageOut::from(&resp.usage),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
