//! Non-streamed responses: decode a provider's body into the IR, encode the IR for a client.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{
    block_out, empty_object, message_id, non_null, stop_from_wire, stop_to_wire, str_of, tool_id,
    BlockIn, BlockOut, Str, UsageOut, WireUsage,
};
use crate::errors::{Context, Error, Fault};
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

/// What [`decode_usage`] reads of a body: the content is skipped, not decoded.
#[derive(Deserialize)]
struct UsageOnly<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(default)]
    content: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The usage of a provider's successful (2xx) body, refused as [`decode_response`] refuses
/// it, without decoding its content blocks.
pub fn decode_usage(body: &[u8]) -> Result<crate::units::Usage, Error> {
    let m: UsageOnly =
        serde_json::from_slice(body).context(Fault::Malformed, "not an Anthropic message")?;
    refuse_non_message(m.kind.as_ref(), m.error, m.content.is_some())?;
    Ok(m.usage.unwrap_or_default().to_ir())
}

/// A body that is not a message (an error, another type, no content) is not an answer.
fn refuse_non_message(
    kind: Option<&Str<'_>>,
    error: Option<&RawValue>,
    has_content: bool,
) -> Result<(), Error> {
    match kind.map(|k| k.0.as_ref()) {
        Some("message") | None => {}
        Some("error") => {
            let detail = error.map_or("", |e| e.get());
            return Err(Error::new(
                Fault::Malformed,
                format!("the provider answered with an error: {detail}"),
            ));
        }
        Some(other) => {
            return Err(Error::new(
                Fault::Malformed,
                format!("not an Anthropic message: type '{other}'"),
            ))
        }
    }
    if !has_content {
        return Err(Error::new(
            Fault::Malformed,
            "not an Anthropic message: no 'content'",
        ));
    }
    Ok(())
}

/// Decode a provider's successful (2xx) body. The error is a reason for the log.
pub fn decode_response(body: &[u8]) -> Result<Response<'_>, Error> {
    let m: MessageIn =
        serde_json::from_slice(body).context(Fault::Malformed, "not an Anthropic message")?;
    refuse_non_message(m.kind.as_ref(), m.error, m.content.is_some())?;
    let list = m.content.unwrap_or_default(); // present: checked above
    let mut content = Vec::with_capacity(list.len());
    for raw in list {
        let Ok(b) = serde_json::from_str::<BlockIn>(raw.get()) else {
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
                input: super::schema::input_object(arguments),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Usage;
    use serde_json::{json, Value};

    const TEXT: &str = include_str!("../../../tests/fixtures/wire/anthropic/message_text.json");
    const TOOLS: &str =
        include_str!("../../../tests/fixtures/wire/anthropic/message_tool_use.json");
    const REDACTED: &str =
        include_str!("../../../tests/fixtures/wire/anthropic/message_redacted.json");

    #[test]
    fn messages_decode_into_the_ir() {
        let r = decode_response(TEXT.as_bytes()).unwrap();
        assert_eq!(r.id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
        assert_eq!(r.stop, StopReason::EndTurn);
        assert!(
            matches!(&r.content[..], [Block::Text { text, .. }] if text == "Hi! My name is Claude.")
        );
        assert_eq!(
            r.usage,
            Usage {
                input: 2095,
                output: 503,
                ..Usage::default()
            }
        );

        let r = decode_response(TOOLS.as_bytes()).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        assert_eq!(
            r.usage,
            Usage {
                input: 5020,
                cached_input: 4000,
                cache_write: 1000,
                output: 120,
                reasoning: 0
            }
        );
        // The server tool block is skipped.
        assert_eq!(r.content.len(), 4);
        assert!(
            matches!(&r.content[0], Block::Thinking { signature: Some(s), .. }
            if s == "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL+==")
        );
        assert!(
            matches!(&r.content[2], Block::ToolCall { id, name, arguments: Arguments::Json(a) }
            if id == "toolu_01A09q90qw90lq917835lq9" && name == "get_weather"
                && a.get() == r#"{"location": "San Francisco, CA", "unit": "celsius"}"#)
        );

        let r = decode_response(REDACTED.as_bytes()).unwrap();
        assert_eq!(r.stop, StopReason::ContentFilter);
        assert!(
            matches!(&r.content[0], Block::RedactedThinking { data } if data.starts_with("EmwK"))
        );
    }

    #[test]
    fn the_usage_alone_is_read_as_the_whole_decode_reads_it_and_refused_alike() {
        for body in [TEXT, TOOLS] {
            let whole = decode_response(body.as_bytes()).unwrap().usage;
            assert_ne!(whole, Usage::default());
            assert_eq!(decode_usage(body.as_bytes()).unwrap(), whole);
        }
        for bad in [
            &b"not json"[..],
            br#"{"type":"error","error":{"type":"overloaded_error"}}"#,
            br#"{"type":"message","id":"x","usage":{"input_tokens":3}}"#,
            br#"{"type":"completion","content":[]}"#,
        ] {
            assert!(decode_response(bad).is_err());
            assert!(
                decode_usage(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bodies_that_are_not_messages_are_refused() {
        assert!(decode_response(b"not json").is_err());
        assert!(
            decode_response(br#"{"type":"error","error":{"type":"overloaded_error"}}"#)
                .unwrap_err()
                .to_string()
                .contains("overloaded_error")
        );
        assert!(decode_response(br#"{"type":"message","id":"x"}"#).is_err());
    }

    #[test]
    fn messages_encode_as_the_api_writes_them() {
        for fixture in [TEXT, TOOLS, REDACTED] {
            let r = decode_response(fixture.as_bytes()).unwrap();
            let out: Value = serde_json::from_slice(&encode_response(&r)).unwrap();
            let mut want: Value = serde_json::from_str(fixture).unwrap();
            // What the IR does not carry: citations, server tools, the service tier.
            let content = want["content"].as_array_mut().unwrap();
            content.retain(|b| b["type"] != "server_tool_use");
            for b in content {
                b.as_object_mut().unwrap().remove("citations");
            }
            want["usage"] = json!({
                "input_tokens": want["usage"]["input_tokens"],
                "cache_creation_input_tokens": want["usage"]["cache_creation_input_tokens"].as_u64().unwrap_or(0),
                "cache_read_input_tokens": want["usage"]["cache_read_input_tokens"].as_u64().unwrap_or(0),
                "output_tokens": want["usage"]["output_tokens"],
            });
            assert_eq!(out, want);
        }
    }

    #[test]
    fn other_formats_responses_get_anthropic_ids_and_objects() {
        let args = "{\"q\": \"x\"}".to_owned();
        let r = Response {
            id: "chatcmpl-abc".into(),
            model: "gpt-x".into(),
            content: vec![
                Block::Thinking {
                    text: "t".into(),
                    signature: None,
                },
                Block::Text {
                    text: "".into(),
                    cache_control: None,
                },
                Block::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: Arguments::Text(args.as_str().into()),
                },
                Block::ToolCall {
                    id: "".into(),
                    name: "g".into(),
                    arguments: Arguments::Text("nope".into()),
                },
            ],
            stop: StopReason::ToolUse,
            usage: Usage {
                input: 100,
                cached_input: 40,
                cache_write: 0,
                output: 9,
                reasoning: 3,
            },
        };
        let out: Value = serde_json::from_slice(&encode_response(&r)).unwrap();
        assert_eq!(out["id"], "msg_abc");
        assert_eq!(out["type"], "message");
        assert_eq!(out["stop_reason"], "tool_use");
        assert_eq!(out["stop_sequence"], Value::Null);
        assert_eq!(
            out["content"][0],
            json!({"type": "thinking", "thinking": "t", "signature": ""})
        );
        assert_eq!(out["content"][1], json!({"type": "text", "text": ""}));
        assert_eq!(
            out["content"][2],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {"q": "x"}})
        );
        assert!(out["content"][3]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_"));
        assert_eq!(out["content"][3]["input"], json!({}));
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 60, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 40, "output_tokens": 9})
        );
    }
}
