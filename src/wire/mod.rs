//! The one format boundary. Everything that knows what a wire format looks like lives here:
//! [`Format`] (paths, auth header, error body), the internal representation ([`ir`]), one
//! module per format (request, response and stream parts), the SSE codec ([`sse`]) and the
//! (client format, provider format) table with its stream transcoder ([`transcode`]).
//!
//! Same format in and out: the body passes through with only `model` rewritten. Different
//! formats: request, response and stream go through the IR, never a converter per pair.

pub mod anthropic;
pub mod ir;
pub mod json;
pub mod openai_chat;
#[doc(hidden)]
pub mod openai_chat_old;
pub mod openai_responses;
pub mod sse;
pub mod transcode;

use serde::{Deserialize, Serialize};

use crate::errors::FluxError;

/// A wire format, as a client speaks it and as a provider is configured with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Format {
    /// OpenAI Chat Completions (`format: openai` in the config).
    #[serde(rename = "openai")]
    OpenAiChat,
    /// OpenAI Responses (`format: openai_responses`).
    #[serde(rename = "openai_responses")]
    OpenAiResponses,
    /// Anthropic Messages (`format: anthropic`).
    #[serde(rename = "anthropic")]
    Anthropic,
}

/// How a provider of a format expects its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthHeader {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `x-api-key: <key>` (with `anthropic-version`)
    XApiKey,
}

/// The `anthropic-version` sent to Anthropic-format providers when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Format {
    pub const ALL: [Format; 3] = [
        Format::OpenAiChat,
        Format::OpenAiResponses,
        Format::Anthropic,
    ];

    /// The client path that speaks this format.
    pub fn client_path(self) -> &'static str {
        match self {
            Format::OpenAiChat => "/v1/chat/completions",
            Format::OpenAiResponses => "/v1/responses",
            Format::Anthropic => "/anthropic/v1/messages",
        }
    }

    /// Appended to a provider's base URL (which ends in its version, e.g. `/v1`).
    pub fn provider_path(self) -> &'static str {
        match self {
            Format::OpenAiChat => "/chat/completions",
            Format::OpenAiResponses => "/responses",
            Format::Anthropic => "/messages",
        }
    }

    pub fn auth_header(self) -> AuthHeader {
        match self {
            Format::Anthropic => AuthHeader::XApiKey,
            Format::OpenAiChat | Format::OpenAiResponses => AuthHeader::Bearer,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Format::OpenAiChat => "openai",
            Format::OpenAiResponses => "openai_responses",
            Format::Anthropic => "anthropic",
        }
    }

    /// The error body a client of this format reads: OpenAI's
    /// `{"error":{"message","type","code"}}` for both OpenAI formats, Anthropic's
    /// `{"type":"error","error":{"type","message","code"},"request_id"}`.
    pub fn error_body(self, err: &FluxError, request_id: &str) -> Vec<u8> {
        let value = match self {
            Format::OpenAiChat | Format::OpenAiResponses => serde_json::json!({
                "error": {
                    "message": err.message,
                    "type": err.kind.openai_type(),
                    "code": err.code(),
                }
            }),
            Format::Anthropic => serde_json::json!({
                "type": "error",
                "error": {
                    "type": err.kind.anthropic_type(),
                    "message": err.message,
                    "code": err.code(),
                },
                "request_id": request_id,
            }),
        };
        serde_json::to_vec(&value).expect("a JSON value always serializes")
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
    fn formats_read_from_the_config_names() {
        let f: Vec<Format> = serde_yaml::from_str("[openai, openai_responses, anthropic]").unwrap();
        assert_eq!(f, Format::ALL);
    }
}
