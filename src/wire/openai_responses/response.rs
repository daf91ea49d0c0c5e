//! Non-streamed responses: decode a provider's body into the IR, encode the IR for a client.

use std::borrow::Cow;

use super::schema::{
    id_base, item_id, opt_str, reasoning_text, response_id, OutItem, Outcome, RawItem, RawPart,
    RawResponse, ResponseObject, Status,
};
use crate::errors::{Context, Error, Fault};
use crate::wire::ir::{Arguments, Block, Response};

/// Decode a provider's successful (2xx) body. The error is a reason for the log.
pub fn decode_response(body: &[u8]) -> Result<Response<'_>, Error> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(Error::new(
            Fault::Malformed,
            "the provider's Responses body is not a JSON object",
        ));
    }
    let raw: RawResponse<'_> = serde_json::from_slice(body).context(
        Fault::Malformed,
        "the provider's Responses body is not a response object",
    )?;
    if raw.status() == Some("failed") {
        return Err(Error::new(
            Fault::Malformed,
            format!("the provider's response failed: {}", raw.error_message()),
        ));
    }
    let mut content = Vec::new();
    let mut called = false;
    for item in raw.output.iter().flatten() {
        let Ok(fields) = serde_json::from_str::<RawItem<'_>>(item.get()) else {
            continue;
        };
        match opt_str(fields.kind).as_deref() {
            Some("message") => {
                let parts: Vec<RawPart<'_>> = fields
                    .content
                    .and_then(|c| serde_json::from_str(c.get()).ok())
                    .unwrap_or_default();
                for p in parts {
                    let text = match opt_str(p.kind).as_deref() {
                        Some("output_text") => opt_str(p.text),
                        Some("refusal") => opt_str(p.refusal),
                        _ => None,
                    };
                    if let Some(text) = text {
                        content.push(Block::Text {
                            text,
                            cache_control: None,
                        });
                    }
                }
            }
            Some("function_call") => {
                called = true;
                content.push(Block::ToolCall {
                    id: opt_str(fields.call_id).unwrap_or_default(),
                    name: opt_str(fields.name).unwrap_or_default(),
                    arguments: Arguments::Text(opt_str(fields.arguments).unwrap_or_default()),
                });
            }
            Some("reasoning") => {
                let text = reasoning_text(fields.summary, fields.content);
                let encrypted = opt_str(fields.encrypted_content).filter(|e| !e.is_empty());
                match (text.is_empty(), encrypted) {
                    (false, signature) => content.push(Block::Thinking { text, signature }),
                    (true, Some(data)) => content.push(Block::RedactedThinking { data }),
                    (true, None) => {}
                }
            }
            _ => {} // hosted tool calls and the like: nothing another format can show
        }
    }
    Ok(Response {
        stop: raw.stop(called),
        usage: raw.usage().unwrap_or_default(),
        id: raw.id.map(|s| s.0).unwrap_or_default(),
        model: raw.model.map(|s| s.0).unwrap_or_default(),
        content,
    })
}

/// The output items of IR content: consecutive texts share one message.
pub(super) fn output_items<'x>(content: &'x [Block<'_>], base: &str) -> Vec<OutItem<'x>> {
    let mut items: Vec<OutItem<'x>> = Vec::new();
    for b in content {
        let n = items.len();
        match b {
            Block::Text { text, .. } => match items.last_mut() {
                Some(OutItem::Message { parts, .. }) => parts.push(Cow::Borrowed(text)),
                _ => items.push(OutItem::Message {
                    id: item_id("msg", base, n),
                    status: Status::Completed,
                    parts: vec![Cow::Borrowed(text)],
                }),
            },
            Block::ToolCall {
                id,
                name,
                arguments,
            } => items.push(OutItem::FunctionCall {
                id: item_id("fc", base, n),
                call_id: Cow::Borrowed(id),
                name: Cow::Borrowed(name),
                arguments: Cow::Borrowed(match arguments {
                    Arguments::Text(t) => t,
                    Arguments::Json(raw) => raw.get(),
                }),
                status: Status::Completed,
            }),
            Block::Thinking { text, signature } => items.push(OutItem::Reasoning {
                id: item_id("rs", base, n),
                summary: Cow::Borrowed(text),
                encrypted_content: signature.as_deref().map(Cow::Borrowed),
            }),
            Block::RedactedThinking { data } => items.push(OutItem::Reasoning {
                id: item_id("rs", base, n),
                summary: Cow::Borrowed(""),
                encrypted_content: Some(Cow::Borrowed(data)),
            }),
            Block::Image(_) | Block::ToolResult { .. } => {}
        }
    }
    items
}

/// Encode a response for a client of this format.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    let base = id_base(&resp.id);
    let id = response_id(&resp.id, &base);
    let output = output_items(&resp.content, &base);
    let created_at = crate::units::clock::unix_now();
    let object = ResponseObject {
        id: &id,
        created_at,
        model: &resp.model,
        outcome: Outcome::of(Some(resp.stop)),
        error: None,
        output: &output,
        usage: Some(&resp.usage),
    };
    serde_json::to_vec(&object).expect("a response always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Usage;
    use crate::wire::ir::StopReason;
    use serde_json::value::RawValue;
    use serde_json::{json, Value};

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/wire/openai_responses/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn text_of<'b>(b: &'b Block<'_>) -> &'b str {
        match b {
            Block::Text { text, .. } => text,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn decodes_a_text_body() {
        let body = fixture("body_text.json");
        let r = decode_response(&body).unwrap();
        assert_eq!(r.id, "resp_body000000000000000000000000001");
        assert!(matches!(r.id, Cow::Borrowed(_)));
        assert_eq!(r.model, "gpt-5.4-2026-03-05");
        assert_eq!(r.content.len(), 1);
        assert_eq!(text_of(&r.content[0]), "Hello! How can I help?");
        assert_eq!(r.stop, StopReason::EndTurn);
        assert_eq!(
            r.usage,
            Usage {
                input: 19,
                output: 9,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn decodes_function_calls() {
        let body = fixture("body_function_calls.json");
        let r = decode_response(&body).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        let calls: Vec<(&str, &str, &str)> = r
            .content
            .iter()
            .map(|b| match b {
                Block::ToolCall {
                    id,
                    name,
                    arguments: Arguments::Text(a),
                } => (id.as_ref(), name.as_ref(), a.as_ref()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("call_P1", "get_weather", "{\"city\":\"Paris\"}"),
                ("call_P2", "get_weather", "{\"city\":\"Tokyo\"}")
            ]
        );
    }

    #[test]
    fn decodes_reasoning_and_cached_usage() {
        let body = fixture("body_reasoning.json");
        let r = decode_response(&body).unwrap();
        assert!(matches!(
            &r.content[0],
            Block::Thinking { text, signature: Some(s) } if text == "First.\n\nSecond." && s == "gAAAAsig=="
        ));
        assert_eq!(text_of(&r.content[1]), "42");
        assert_eq!(
            r.usage,
            Usage {
                input: 2048,
                cached_input: 1024,
                cache_write: 0,
                output: 300,
                reasoning: 256
            }
        );
    }

    #[test]
    fn decodes_incomplete_and_refuses_failed() {
        let body = fixture("body_incomplete.json");
        assert_eq!(decode_response(&body).unwrap().stop, StopReason::MaxTokens);
        let filtered = br#"{"id":"resp_1","status":"incomplete","incomplete_details":{"reason":"content_filter"},"output":[]}"#;
        assert_eq!(
            decode_response(filtered).unwrap().stop,
            StopReason::ContentFilter
        );
        let failed =
            br#"{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"boom"}}"#;
        assert!(decode_response(failed)
            .unwrap_err()
            .to_string()
            .contains("boom"));
        assert!(decode_response(b"[]").is_err());
        assert!(decode_response(b"{").is_err());
        // Unknown items and odd fields are skipped, not errors.
        let odd = br#"{"id":"r","model":"m","output":[{"type":"web_search_call","action":{}},7,
            {"type":"message","content":[{"type":"output_text","text":5},{"type":"refusal","refusal":"no"}]},
            {"type":"reasoning","summary":[]}],"usage":{"input_tokens":null}}"#;
        let r = decode_response(odd).unwrap();
        assert_eq!(r.content.len(), 1);
        assert_eq!(text_of(&r.content[0]), "no");
        assert_eq!(r.usage, Usage::default());
    }

    fn without_created_at(body: &[u8]) -> Value {
        let mut v: Value = serde_json::from_slice(body).unwrap();
        let created = v.as_object_mut().unwrap().remove("created_at").unwrap();
        assert!(created.as_u64().unwrap() > 1_700_000_000);
        v
    }

    #[test]
    fn encodes_the_response_object() {
        let schema = RawValue::from_string(r#"{"city": "Paris"}"#.into()).unwrap();
        let resp = Response {
            id: Cow::Borrowed("msg_01XyZ"),
            model: Cow::Borrowed("claude-sonnet-4-6"),
            content: vec![
                Block::Thinking {
                    text: Cow::Borrowed("hmm"),
                    signature: Some(Cow::Borrowed("sig")),
                },
                Block::Text {
                    text: Cow::Borrowed("Hello"),
                    cache_control: None,
                },
                Block::Text {
                    text: Cow::Borrowed(" again"),
                    cache_control: None,
                },
                Block::ToolCall {
                    id: Cow::Borrowed("toolu_1"),
                    name: Cow::Borrowed("get_weather"),
                    arguments: Arguments::Json(&schema),
                },
                Block::RedactedThinking {
                    data: Cow::Borrowed("opaque"),
                },
            ],
            stop: StopReason::ToolUse,
            usage: Usage {
                input: 100,
                cached_input: 60,
                cache_write: 10,
                output: 30,
                reasoning: 5,
            },
        };
        let got = without_created_at(&encode_response(&resp));
        assert_eq!(
            got,
            json!({
                "id": "resp_01XyZ",
                "object": "response",
                "status": "completed",
                "error": null,
                "incomplete_details": null,
                "instructions": null,
                "max_output_tokens": null,
                "model": "claude-sonnet-4-6",
                "output": [
                    {"type": "reasoning", "id": "rs_01XyZ_0",
                     "summary": [{"type": "summary_text", "text": "hmm"}], "encrypted_content": "sig"},
                    {"type": "message", "id": "msg_01XyZ_1", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": "Hello", "annotations": []},
                                 {"type": "output_text", "text": " again", "annotations": []}]},
                    {"type": "function_call", "id": "fc_01XyZ_2", "call_id": "toolu_1",
                     "name": "get_weather", "arguments": "{\"city\": \"Paris\"}", "status": "completed"},
                    {"type": "reasoning", "id": "rs_01XyZ_3", "summary": [], "encrypted_content": "opaque"}
                ],
                "parallel_tool_calls": true,
                "previous_response_id": null,
                "store": false,
                "temperature": null,
                "tool_choice": "auto",
                "tools": [],
                "top_p": null,
                "truncation": "disabled",
                "usage": {"input_tokens": 100,
                          "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
                          "output_tokens": 30,
                          "output_tokens_details": {"reasoning_tokens": 5},
                          "total_tokens": 130},
                "user": null,
                "metadata": {}
            })
        );
    }

    #[test]
    fn encoded_responses_decode_back() {
        for name in [
            "body_text.json",
            "body_function_calls.json",
            "body_reasoning.json",
            "body_incomplete.json",
        ] {
            let body = fixture(name);
            let first = decode_response(&body).unwrap();
            let encoded = encode_response(&first);
            let v: Value = serde_json::from_slice(&encoded).unwrap();
            // A resp_ id is kept as it is.
            assert_eq!(v["id"], first.id.as_ref(), "{name}");
            let again = decode_response(&encoded).unwrap();
            assert_eq!(
                format!("{:?}", (&again.content, again.stop, again.usage)),
                format!("{:?}", (&first.content, first.stop, first.usage)),
                "{name}"
            );
        }
        // Incomplete keeps its reason.
        let body = fixture("body_incomplete.json");
        let v = without_created_at(&encode_response(&decode_response(&body).unwrap()));
        assert_eq!(v["status"], "incomplete");
        assert_eq!(
            v["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
    }
}
