//! [`Format`]: which wire format a client speaks or a provider is configured with, and the
//! few facts every part of `wire/` names it by. A leaf: the format folders, the codec trait
//! and the transcoder all read it; the table that maps a format to its codec is in `mod.rs`.

use serde::{Deserialize, Serialize};

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

/// How a format's client SDKs read an error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","code"}}` (both OpenAI formats).
    OpenAi,
    /// `{"type":"error","error":{"type","message","code"},"request_id"}`.
    Anthropic,
}
