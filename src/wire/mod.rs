//! The one format boundary. Everything that knows what a wire format looks like lives here:
//! [`Format`] ([`mod@format`], a leaf), the codec trait ([`codec`]: a format's paths, auth
//! header, error shape, request / response / stream parts) and the table mapping each format
//! to its codec ([`Format::codec`], here, above the folders that implement it), the internal
//! representation ([`ir`]), one folder per format implementing its codec, the SSE codec
//! ([`sse`]) and the (client format, provider format) plan with its stream transcoder
//! ([`transcode`]).
//!
//! Same format in and out: the body passes through with only `model` rewritten. Different
//! formats: request, response and stream go through the IR, never a converter per pair.

pub mod anthropic;
pub mod codec;
pub mod format;
pub mod ir;
pub mod json;
pub mod openai_chat;
pub mod openai_responses;
pub mod sse;
pub mod transcode;

use serde::Deserialize;

use crate::errors::FluxError;
use codec::Codec;
pub use format::{AuthHeader, ErrorShape, Format, ANTHROPIC_VERSION};

impl Format {
    pub const ALL: [Format; 3] = [
        Format::OpenAiChat,
        Format::OpenAiResponses,
        Format::Anthropic,
    ];

    /// The client path that speaks this format.
    pub fn client_path(self) -> &'static str {
        self.codec().client_path()
    }

    /// Appended to a provider's base URL (which ends in its version, e.g. `/v1`).
    pub fn provider_path(self) -> &'static str {
        self.codec().provider_path()
    }

    pub fn auth_header(self) -> AuthHeader {
        self.codec().auth_header()
    }

    /// A short name for logs and metrics labels.
    pub fn label(self) -> &'static str {
        self.codec().label()
    }

    /// The error body a client of this format reads: OpenAI's
    /// `{"error":{"message","type","code"}}` for both OpenAI formats, Anthropic's
    /// `{"type":"error","error":{"type","message","code"},"request_id"}`.
    pub fn error_body(self, err: &FluxError, request_id: &str) -> Vec<u8> {
        let mut value = match self.codec().error_shape() {
            ErrorShape::OpenAi => serde_json::json!({
                "error": {
                    "message": err.message,
                    "type": crate::errors::openai_type(err.status()),
                    "code": err.code(),
                }
            }),
            ErrorShape::Anthropic => serde_json::json!({
                "type": "error",
                "error": {
                    "type": crate::errors::anthropic_type(err.status()),
                    "message": err.message,
                    "code": err.code(),
                },
                "request_id": request_id,
            }),
        };
        if let Some(seconds) = err.retry_after {
            value["error"]["retry_after"] = seconds.into();
        }
        serde_json::to_vec(&value).expect("a JSON value always serializes")
    }
}

/// A provider's error body (4xx) for a client of `client` format: as it is when the formats
/// match, otherwise its message re-worded in the client's error shape, so the client's SDK
/// can read it. The provider's own code (or type) is kept as `code`.
pub fn translate_error(
    client: Format,
    provider: Format,
    status: u16,
    body: &[u8],
    request_id: &str,
) -> bytes::Bytes {
    if client == provider {
        return bytes::Bytes::copy_from_slice(body);
    }
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        error: Option<Inner<'a>>,
    }
    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        message: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        code: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let parsed = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.error);
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.as_deref())
        .map(json::shown_long)
        .unwrap_or_else(|| json::shown_long(&String::from_utf8_lossy(body)));
    let code = parsed
        .as_ref()
        .and_then(|e| e.code.as_deref().or(e.kind.as_deref()))
        .filter(|c| c.len() <= 64)
        .unwrap_or("upstream_error");
    let message = format!("The provider refused the request ({status}): {message}");
    let value = match client.codec().error_shape() {
        ErrorShape::OpenAi => serde_json::json!({
            "error": {"message": message, "type": crate::errors::openai_type(status), "code": code}
        }),
        ErrorShape::Anthropic => serde_json::json!({
            "type": "error",
            "error": {"type": crate::errors::anthropic_type(status), "message": message, "code": code},
            "request_id": request_id,
        }),
    };
    serde_json::to_vec(&value)
        .expect("a JSON value always serializes")
        .into()
}

impl Format {
    /// The format table: this format's codec.
    pub fn codec(self) -> &'static dyn Codec {
        match self {
            Format::OpenAiChat => &openai_chat::ChatCompletions,
            Format::OpenAiResponses => &openai_responses::Responses,
            Format::Anthropic => &anthropic::Messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorKind;
    use serde_json::{json, Value};

    #[test]
    fn error_bodies_follow_each_format() {
        let err = FluxError::new(ErrorKind::InvalidApiKey, "Incorrect API key provided.");
        let body: Value =
            serde_json::from_slice(&Format::OpenAiChat.error_body(&err, "req_1")).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "Incorrect API key provided.",
                             "type": "invalid_request_error", "code": "invalid_api_key"}})
        );
        let body: Value =
            serde_json::from_slice(&Format::Anthropic.error_body(&err, "req_1")).unwrap();
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "authentication_error",
                   "message": "Incorrect API key provided.", "code": "invalid_api_key"},
                   "request_id": "req_1"})
        );
    }

    #[test]
    fn provider_errors_are_reworded_in_the_client_shape() {
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#;
        let out = translate_error(Format::OpenAiChat, Format::Anthropic, 400, anthropic, "r1");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_request_error");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens: too big"));
        let out = translate_error(
            Format::Anthropic,
            Format::OpenAiChat,
            429,
            b"slow down",
            "r2",
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["request_id"], "r2");
        let same = translate_error(Format::Anthropic, Format::Anthropic, 400, anthropic, "r3");
        assert_eq!(&same[..], &anthropic[..]);
    }

    #[test]
    fn formats_read_from_the_config_names() {
        let f: Vec<Format> =
            serde_norway::from_str("[openai, openai_responses, anthropic]").unwrap();
        assert_eq!(f, Format::ALL);
    }
}
