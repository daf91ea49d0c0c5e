//! Anthropic Messages: request, response and stream, to and from the [IR](super::ir).
//!
//! Anthropic reports usage with uncached input apart (`input_tokens` excludes
//! `cache_read_input_tokens` and `cache_creation_input_tokens`); the IR counts every input
//! token in `input`. [`WireUsage`] converts both ways.

mod request;
mod response;
mod stream;

pub use request::{encode_request, parse_request};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};

use super::codec::{Codec, ErrorShape, StreamDecode, StreamEncode};
use super::sse::Event;
use super::transcode::UsageProbe;
use super::AuthHeader;
use crate::metering::Usd;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ir::{StopReason, Usage};

/// A string that borrows from the input when it has no escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// A raw value read as a string, if it is one.
fn str_of(value: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let value = value?;
    serde_json::from_str::<Str>(value.get()).ok().map(|s| s.0)
}

/// A raw value unless it is JSON `null`.
fn non_null(value: Option<&RawValue>) -> Option<&RawValue> {
    value.filter(|v| v.get() != "null")
}

/// `{}`, for tool inputs that are missing or not a JSON object.
fn empty_object() -> &'static RawValue {
    const EMPTY: &str = "{}";
    // A constant that is valid JSON: this cannot fail.
    serde_json::from_str(EMPTY).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

/// Tool-call arguments as the JSON object Anthropic's `input` must be: JSON text is parsed
/// (borrowing from it); anything that is not an object becomes `{}`.
fn input_object<'r>(arguments: &'r super::ir::Arguments<'_>) -> &'r RawValue {
    let raw: Option<&RawValue> = match arguments {
        super::ir::Arguments::Json(raw) => Some(raw),
        super::ir::Arguments::Text(text) => serde_json::from_str(text).ok(),
    };
    match raw {
        Some(raw) if raw.get().starts_with('{') => raw,
        _ => empty_object(),
    }
}

/// Anthropic's usage object. Every count is optional on the wire (`message_delta` carries
/// only `output_tokens` at times); absent counts read as 0.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
struct WireUsage {
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
    fn merge(&mut self, later: &WireUsage) {
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

    fn to_ir(self) -> Usage {
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
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
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

fn stop_from_wire(reason: &str) -> StopReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "tool_use" => StopReason::ToolUse,
        "stop_sequence" => StopReason::StopSequence,
        "refusal" => StopReason::ContentFilter,
        "pause_turn" => StopReason::Pause,
        _ => StopReason::EndTurn,
    }
}

fn stop_to_wire(reason: StopReason) -> &'static str {
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
fn message_id(id: &str) -> String {
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
fn tool_id(id: &str) -> Cow<'_, str> {
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

/// The Anthropic Messages codec (`format: anthropic`).
pub struct Messages;

impl Codec for Messages {
    fn label(&self) -> &'static str {
        "anthropic"
    }
    fn client_path(&self) -> &'static str {
        "/anthropic/v1/messages"
    }
    fn provider_path(&self) -> &'static str {
        "/messages"
    }
    fn auth_header(&self) -> AuthHeader {
        AuthHeader::XApiKey
    }
    fn error_shape(&self) -> ErrorShape {
        ErrorShape::Anthropic
    }
    fn parse_request<'r>(
        &self,
        raw: &'r [u8],
    ) -> Result<crate::wire::ir::Request<'r>, crate::errors::FluxError> {
        parse_request(raw)
    }
    fn encode_request(
        &self,
        req: &crate::wire::ir::Request<'_>,
        model: &str,
        stream: bool,
    ) -> Vec<u8> {
        encode_request(req, model, stream)
    }
    fn decode_response<'b>(&self, body: &'b [u8]) -> Result<crate::wire::ir::Response<'b>, String> {
        decode_response(body)
    }
    fn encode_response(&self, resp: &crate::wire::ir::Response<'_>) -> Vec<u8> {
        encode_response(resp)
    }
    fn stream_decoder(&self) -> Box<dyn StreamDecode> {
        Box::new(StreamDecoder::new())
    }
    fn stream_encoder(&self, meta: &crate::wire::ir::StreamMeta) -> Box<dyn StreamEncode> {
        Box::new(StreamEncoder::new(meta))
    }
    /// `message_delta`'s `usage`.
    fn final_usage<'d>(&self, kind: Option<&str>, event: &UsageProbe<'d>) -> Option<&'d RawValue> {
        match kind {
            Some("message_delta") => event.usage,
            _ => None,
        }
    }
}

impl StreamDecode for StreamDecoder {
    fn decode(
        &mut self,
        event: &Event<'_>,
        out: &mut Vec<crate::wire::ir::StreamEvent>,
    ) -> Result<(), String> {
        StreamDecoder::decode(self, event, out)
    }
    fn finish(&mut self, out: &mut Vec<crate::wire::ir::StreamEvent>) {
        StreamDecoder::finish(self, out)
    }
}

impl StreamEncode for StreamEncoder {
    fn encode(&mut self, event: &crate::wire::ir::StreamEvent, out: &mut bytes::BytesMut) {
        StreamEncoder::encode(self, event, out)
    }
    fn finish(&mut self, cost: Option<Usd>, out: &mut bytes::BytesMut) {
        StreamEncoder::finish(self, cost, out)
    }
    fn fail(&mut self, message: &str, out: &mut bytes::BytesMut) {
        StreamEncoder::fail(self, message, out)
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
