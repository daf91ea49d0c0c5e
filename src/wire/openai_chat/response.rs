//! Non-streamed responses: decode a provider's body into the IR, encode the IR for a client.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{
    chat_id, finish_reason, stop_reason, tool_calls_out, ToolCallOut, UsageIn, UsageOut,
};
use crate::errors::{Context, Error, Fault};
use crate::wire::ir::{Arguments, Block, Response, StopReason};

#[derive(Deserialize)]
struct CompletionIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceIn<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    message: Option<MessageIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter / vLLM name for the same.
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionIn<'a>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// What [`decode_usage`] reads of a body: the rest is skipped, not decoded.
#[derive(Deserialize)]
struct UsageOnly<'a> {
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The usage of a provider's successful (2xx) body, refused as [`decode_response`] refuses
/// it (not a JSON object, or an `error` member), without decoding its choices.
pub fn decode_usage(body: &[u8]) -> Result<crate::units::Usage, Error> {
    let c: UsageOnly =
        serde_json::from_slice(body).context(Fault::Malformed, "not a chat.completion")?;
    refuse_error(c.error)?;
    Ok(c.usage.as_ref().map(UsageIn::ir).unwrap_or_default())
}

fn refuse_error(error: Option<&RawValue>) -> Result<(), Error> {
    match error.filter(|e| e.get() != "null") {
        Some(error) => Err(Error::new(
            Fault::Malformed,
            format!("the provider sent an error: {}", error.get()),
        )),
        None => Ok(()),
    }
}

/// Decode a provider's successful (2xx) body. The error is a reason for the log.
pub fn decode_response(body: &[u8]) -> Result<Response<'_>, Error> {
    let c: CompletionIn =
        serde_json::from_slice(body).context(Fault::Malformed, "not a chat.completion")?;
    refuse_error(c.error)?;
    let mut choices = c.choices.unwrap_or_default();
    // With n > 1 only the first choice is translated.
    let pos = choices.iter().position(|ch| ch.index.unwrap_or(0) == 0);
    let choice = pos.map(|p| choices.swap_remove(p));
    let mut content = Vec::new();
    let mut finish = None;
    if let Some(choice) = choice {
        finish = choice.finish_reason;
        if let Some(m) = choice.message {
            if let Some(r) = m
                .reasoning_content
                .or(m.reasoning)
                .filter(|r| !r.is_empty())
            {
                content.push(Block::Thinking {
                    text: r,
                    signature: None,
                });
            }
            if let Some(t) = m.content.or(m.refusal).filter(|t| !t.is_empty()) {
                content.push(Block::Text {
                    text: t,
                    cache_control: None,
                });
            }
            let calls = m.tool_calls.unwrap_or_default().into_iter();
            let legacy = m.function_call.map(|f| ToolCallIn {
                id: None,
                function: Some(f),
            });
            for (k, call) in calls.chain(legacy).enumerate() {
                let f = call.function.unwrap_or(FunctionIn {
                    name: None,
                    arguments: None,
                });
                content.push(Block::ToolCall {
                    id: call.id.unwrap_or_else(|| Cow::Owned(format!("call_{k}"))),
                    name: f.name.unwrap_or_default(),
                    arguments: Arguments::Text(f.arguments.unwrap_or_default()),
                });
            }
        }
    }
    let has_calls = content.iter().any(|b| matches!(b, Block::ToolCall { .. }));
    let stop = match finish.as_deref() {
        Some(f) => stop_reason(f),
        None if has_calls => StopReason::ToolUse,
        None => StopReason::EndTurn,
    };
    Ok(Response {
        id: c.id.unwrap_or_default(),
        model: c.model.unwrap_or_default(),
        content,
        stop,
        usage: c.usage.as_ref().map(UsageIn::ir).unwrap_or_default(),
    })
}

#[derive(Serialize)]
struct CompletionOut<'r> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'r str,
    choices: [ChoiceOut<'r>; 1],
    usage: UsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'r> {
    index: u32,
    message: MessageOut<'r>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut<'r> {
    role: &'static str,
    content: Option<Cow<'r, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Cow<'r, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'r>>,
}

/// Concatenate the pieces `pick` finds; None when it finds none.
fn joined<'r>(
    blocks: &'r [Block<'_>],
    pick: impl Fn(&'r Block<'_>) -> Option<&'r str>,
) -> Option<Cow<'r, str>> {
    let mut pieces = blocks.iter().filter_map(pick);
    let first = pieces.next()?;
    let mut out = Cow::Borrowed(first);
    for p in pieces {
        out.to_mut().push_str(p);
    }
    Some(out)
}

/// Encode a response for a client of this format.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    encode_response_at(resp, crate::units::clock::unix_now())
}

fn encode_response_at(resp: &Response<'_>, created: u64) -> Vec<u8> {
    let tool_calls = tool_calls_out(&resp.content);
    let body = CompletionOut {
        id: chat_id(&resp.id),
        object: "chat.completion",
        created,
        model: &resp.model,
        choices: [ChoiceOut {
            index: 0,
            message: MessageOut {
                role: "assistant",
                content: joined(&resp.content, |b| match b {
                    Block::Text { text, .. } => Some(text),
                    _ => None,
                }),
                reasoning_content: joined(&resp.content, |b| match b {
                    Block::Thinking { text, .. } => Some(text),
                    _ => None,
                }),
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(resp.stop),
        }],
        usage: UsageOut::new(&resp.usage),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Usage;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/wire/openai_chat/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_usage_alone_is_read_as_the_whole_decode_reads_it_and_refused_alike() {
        for name in [
            "response_text.json",
            "response_tools.json",
            "response_reasoning.json",
        ] {
            let body = fixture(name);
            let whole = decode_response(&body).unwrap().usage;
            assert_ne!(whole, Usage::default(), "{name}");
            assert_eq!(decode_usage(&body).unwrap(), whole, "{name}");
        }
        for bad in [
            &b"[1]"[..],
            b"not json",
            br#"{"error":{"message":"overloaded"},"usage":{"prompt_tokens":1}}"#,
        ] {
            assert!(decode_response(bad).is_err());
            assert!(
                decode_usage(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // An error member that is null is no error.
        let fine = br#"{"error":null,"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        assert_eq!(decode_usage(fine).unwrap().input, 5);
    }

    #[test]
    fn a_text_response_decodes_with_cached_usage() {
        let body = fixture("response_text.json");
        let r = decode_response(&body).unwrap();
        assert_eq!(r.id, "chatcmpl-CbXAresponseText");
        assert_eq!(r.model, "gpt-4o-mini-2024-07-18");
        assert!(matches!(&r.content[..],
            [Block::Text { text, .. }] if text == "Hello! How can I help you today?"));
        assert_eq!(r.stop, StopReason::EndTurn);
        assert_eq!(
            r.usage,
            Usage {
                input: 1536,
                cached_input: 1024,
                cache_write: 0,
                output: 10,
                reasoning: 0
            }
        );
    }

    #[test]
    fn parallel_tool_calls_decode_in_order() {
        let body = fixture("response_tools.json");
        let r = decode_response(&body).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        let calls: Vec<_> = r
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
                ("call_W1xa", "get_weather", r#"{"city":"Paris"}"#),
                ("call_T2yb", "get_time", r#"{"tz":"CET"}"#)
            ]
        );
        assert_eq!(r.usage.input, 84);
        assert_eq!(r.usage.output, 41);
    }

    #[test]
    fn reasoning_content_is_thinking_without_signature() {
        let body = fixture("response_reasoning.json");
        let r = decode_response(&body).unwrap();
        match &r.content[..] {
            [Block::Thinking {
                text,
                signature: None,
            }, Block::Text { text: t, .. }] => {
                assert_eq!((text.as_ref(), t.as_ref()), ("The user wants 2+2.", "4"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stop, StopReason::MaxTokens);
        // DeepSeek's prompt_cache_hit_tokens counts even beside a cached_tokens of 0.
        assert_eq!(r.usage.cached_input, 64);
        assert_eq!(r.usage.reasoning, 15);
        let body = br#"{"id":"x","model":"deepseek-chat","choices":[],"usage":{"prompt_tokens":64,"completion_tokens":1,"prompt_cache_hit_tokens":60}}"#;
        let r = decode_response(body).unwrap();
        assert_eq!(r.usage.cached_input, 60);
        assert!(r.content.is_empty());
    }

    #[test]
    fn bodies_that_are_not_completions_are_reasons() {
        assert!(decode_response(b"<html>").is_err());
        assert!(decode_response(br#"{"error":{"message":"boom"}}"#)
            .unwrap_err()
            .to_string()
            .contains("boom"));
        assert!(decode_response(br#"{"choices":"x"}"#).is_err());
    }

    #[test]
    fn encoding_writes_a_chat_completion() {
        let args = RawValue::from_string(r#"{"q": 1}"#.to_owned()).unwrap();
        let resp = Response {
            id: "msg_01AbC".into(),
            model: "claude-sonnet-4-5".into(),
            content: vec![
                Block::Thinking {
                    text: "plan".into(),
                    signature: Some("sig".into()),
                },
                Block::Text {
                    text: "Let me ".into(),
                    cache_control: None,
                },
                Block::Text {
                    text: "look.".into(),
                    cache_control: None,
                },
                Block::ToolCall {
                    id: "toolu_9".into(),
                    name: "search".into(),
                    arguments: Arguments::Json(&args),
                },
            ],
            stop: StopReason::ToolUse,
            usage: Usage {
                input: 100,
                cached_input: 80,
                cache_write: 10,
                output: 20,
                reasoning: 5,
            },
        };
        let out = String::from_utf8(encode_response_at(&resp, 1764400000)).unwrap();
        assert_eq!(
            out,
            concat!(
                r#"{"id":"chatcmpl-01AbC","object":"chat.completion","created":1764400000,"#,
                r#""model":"claude-sonnet-4-5","choices":[{"index":0,"message":{"role":"assistant","#,
                r#""content":"Let me look.","reasoning_content":"plan","tool_calls":[{"id":"toolu_9","#,
                r#""type":"function","function":{"name":"search","arguments":"{\"q\": 1}"}}]},"#,
                r#""logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":100,"#,
                r#""completion_tokens":20,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":80},"#,
                r#""completion_tokens_details":{"reasoning_tokens":5}}}"#
            )
        );
    }

    #[test]
    fn decode_then_encode_keeps_the_completion() {
        let body = fixture("response_tools.json");
        let r = decode_response(&body).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&encode_response(&r)).unwrap();
        let orig: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["id"], orig["id"]);
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"],
            orig["choices"][0]["message"]["tool_calls"]
        );
        assert_eq!(
            out["choices"][0]["message"]["content"],
            serde_json::Value::Null
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["usage"]["prompt_tokens"], 84);
        // Ids of other formats get the Chat prefix; an empty one a fresh id.
        assert_eq!(chat_id("resp_abc"), "chatcmpl-abc");
        assert_eq!(chat_id("gen-1"), "chatcmpl-gen-1");
        assert!(chat_id("").len() > "chatcmpl-".len());
    }
}
