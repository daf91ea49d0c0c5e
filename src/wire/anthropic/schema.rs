//! Anthropic Messages' wire types, declared once for request, response and stream: the
//! content block (in and out), usage, stop reasons and id conventions.
//!
//! Anthropic reports usage with uncached input apart (`input_tokens` excludes
//! `cache_read_input_tokens` and `cache_creation_input_tokens`); the IR counts every input
//! token in `input`. [`WireUsage`] converts both ways.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::units::Usage;
use crate::wire::ir::{Arguments, Block, Image, StopReason};

/// A string that borrows from the input when it has no escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(super) struct Str<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

/// A raw value read as a string, if it is one.
pub(super) fn str_of(value: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let value = value?;
    serde_json::from_str::<Str>(value.get()).ok().map(|s| s.0)
}

/// A raw value unless it is JSON `null`.
pub(super) fn non_null(value: Option<&RawValue>) -> Option<&RawValue> {
    value.filter(|v| v.get() != "null")
}

/// `{}`, for tool inputs that are missing or not a JSON object.
pub(super) fn empty_object() -> &'static RawValue {
    const EMPTY: &str = "{}";
    // A constant that is valid JSON: this cannot fail.
    serde_json::from_str(EMPTY).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

/// Tool-call arguments as the JSON object Anthropic's `input` must be: JSON text is parsed
/// (borrowing from it); anything that is not an object becomes `{}`.
pub(super) fn input_object<'r>(arguments: &'r Arguments<'_>) -> &'r RawValue {
    let raw: Option<&RawValue> = match arguments {
        Arguments::Json(raw) => Some(raw),
        Arguments::Text(text) => serde_json::from_str(text).ok(),
    };
    match raw {
        Some(raw) if raw.get().starts_with('{') => raw,
        _ => empty_object(),
    }
}

/// Anthropic's usage object. Every count is optional on the wire (`message_delta` carries
/// only `output_tokens` at times); absent counts read as 0.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub(super) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Merge a later, cumulative report: the larger count is the current one.
    pub(super) fn merge(&mut self, later: &WireUsage) {
        fn max(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        }
        self.input_tokens = max(self.input_tokens, later.input_tokens);
        self.output_tokens = max(self.output_tokens, later.output_tokens);
        self.cache_read_input_tokens =
            max(self.cache_read_input_tokens, later.cache_read_input_tokens);
        self.cache_creation_input_tokens = max(
            self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
    }

    pub(super) fn to_ir(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write),
            cached_input: read,
            cache_write: write,
            output: self.output_tokens.unwrap_or(0),
            reasoning: 0,
        }
    }
}

/// Usage as Anthropic writes it, in the order of the official API.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(super) struct UsageOut {
    pub(super) input_tokens: u64,
    pub(super) cache_creation_input_tokens: u64,
    pub(super) cache_read_input_tokens: u64,
    pub(super) output_tokens: u64,
}

impl From<&Usage> for UsageOut {
    fn from(u: &Usage) -> Self {
        UsageOut {
            input_tokens: u
                .input
                .saturating_sub(u.cached_input)
                .saturating_sub(u.cache_write),
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cached_input,
            output_tokens: u.output,
        }
    }
}

pub(super) fn stop_from_wire(reason: &str) -> StopReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "tool_use" => StopReason::ToolUse,
        "stop_sequence" => StopReason::StopSequence,
        "refusal" => StopReason::ContentFilter,
        "pause_turn" => StopReason::Pause,
        _ => StopReason::EndTurn,
    }
}

pub(super) fn stop_to_wire(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ToolUse => "tool_use",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ContentFilter => "refusal",
        StopReason::Pause => "pause_turn",
    }
}

/// A message id with Anthropic's `msg_` prefix: the provider's own when it has it, else
/// derived from it (another format's prefix replaced), else a fresh one.
pub(super) fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        return id.to_owned();
    }
    let rest = ["chatcmpl-", "resp_", "msg-"]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id);
    if rest.is_empty() {
        return format!("msg_{}", random_suffix());
    }
    format!("msg_{rest}")
}

/// A tool-use id: the provider's, or a fresh `toolu_` one when it sent none.
pub(super) fn tool_id(id: &str) -> Cow<'_, str> {
    if id.is_empty() {
        Cow::Owned(format!("toolu_{}", random_suffix()))
    } else {
        Cow::Borrowed(id)
    }
}

fn random_suffix() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// A content block as it comes in a request, a response or a stream's `content_block_start`:
/// every member any known block type has, each kept raw, so an unknown block type whose
/// members have other types is skipped, never an error.
#[derive(Deserialize)]
pub(super) struct BlockIn<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) cache_control: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) tool_use_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) is_error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) signature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) data: Option<&'a RawValue>,
}

/// An image block's `source`.
#[derive(Deserialize)]
pub(super) struct SourceIn<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) media_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) url: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum BlockOut<'r> {
    Text {
        text: &'r str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'r RawValue>,
    },
    Image {
        source: SourceOut<'r>,
    },
    ToolUse {
        id: Cow<'r, str>,
        name: &'r str,
        input: &'r RawValue,
    },
    ToolResult {
        tool_use_id: &'r str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<BlockOut<'r>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'r RawValue>,
    },
    Thinking {
        thinking: &'r str,
        signature: &'r str,
    },
    RedactedThinking {
        data: &'r str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum SourceOut<'r> {
    Base64 { media_type: &'r str, data: &'r str },
    Url { url: &'r str },
}

/// An IR block as Anthropic content, or None for what Anthropic cannot take back (thinking
/// without a signature, empty text).
pub(super) fn block_out<'r>(b: &'r Block<'_>) -> Option<BlockOut<'r>> {
    Some(match b {
        Block::Text {
            text,
            cache_control,
        } => {
            if text.is_empty() {
                return None; // Anthropic refuses empty text blocks
            }
            BlockOut::Text {
                text,
                cache_control: *cache_control,
            }
        }
        Block::Image(image) => BlockOut::Image {
            source: source_out(image)?,
        },
        Block::ToolCall {
            id,
            name,
            arguments,
        } => BlockOut::ToolUse {
            id: Cow::Borrowed(id),
            name,
            input: input_object(arguments),
        },
        Block::ToolResult {
            call_id,
            content,
            is_error,
            cache_control,
        } => BlockOut::ToolResult {
            tool_use_id: call_id,
            content: content.iter().filter_map(block_out).collect(),
            is_error: *is_error,
            cache_control: *cache_control,
        },
        Block::Thinking { text, signature } => BlockOut::Thinking {
            thinking: text,
            signature: signature.as_deref()?,
        },
        Block::RedactedThinking { data } => BlockOut::RedactedThinking { data },
    })
}

fn source_out<'r>(image: &'r Image<'_>) -> Option<SourceOut<'r>> {
    match image {
        Image::Base64 { media_type, data } => Some(SourceOut::Base64 { media_type, data }),
        Image::Url(url) => match url.strip_prefix("data:") {
            // data:<media type>;base64,<data>
            Some(rest) => {
                let (head, data) = rest.split_once(',')?;
                let media_type = head.strip_suffix(";base64")?;
                Some(SourceOut::Base64 { media_type, data })
            }
            None => Some(SourceOut::Url { url }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_converts_both_ways() {
        let wire = WireUsage {
            input_tokens: Some(10),
            output_tokens: Some(7),
            cache_read_input_tokens: Some(100),
            cache_creation_input_tokens: Some(5),
        };
        let ir = wire.to_ir();
        assert_eq!(
            ir,
            Usage {
                input: 115,
                cached_input: 100,
                cache_write: 5,
                output: 7,
                reasoning: 0
            }
        );
        assert_eq!(
            UsageOut::from(&ir),
            UsageOut {
                input_tokens: 10,
                cache_creation_input_tokens: 5,
                cache_read_input_tokens: 100,
                output_tokens: 7
            }
        );
    }

    #[test]
    fn ids_get_the_msg_prefix() {
        assert_eq!(message_id("msg_01abc"), "msg_01abc");
        assert_eq!(message_id("chatcmpl-xyz"), "msg_xyz");
        assert_eq!(message_id("resp_123"), "msg_123");
        assert!(message_id("").starts_with("msg_") && message_id("").len() > 10);
        assert_eq!(tool_id("call_1"), "call_1");
        assert!(tool_id("").starts_with("toolu_"));
    }

    #[test]
    fn arguments_become_an_object() {
        use crate::wire::ir::Arguments;
        let t = Arguments::Text(Cow::Borrowed(" {\"a\": [1]} "));
        assert_eq!(input_object(&t).get(), "{\"a\": [1]}");
        for bad in ["", "[1]", "{\"a\":", "null"] {
            assert_eq!(
                input_object(&Arguments::Text(Cow::Borrowed(bad))).get(),
                "{}"
            );
        }
    }
}
