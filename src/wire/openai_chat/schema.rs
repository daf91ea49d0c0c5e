//! Chat Completions' wire types used by more than one of request, response and stream,
//! declared once: usage (in and out), finish reasons, ids and tool calls as Chat writes them.

use serde::{Deserialize, Serialize};

use crate::units::Usage;
use crate::wire::ir::{Arguments, Block, StopReason};

/// `usage` as Chat reports it, in bodies and in stream chunks.
#[derive(Deserialize, Default)]
pub(super) struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek's name for cached input.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageIn {
    pub(super) fn ir(&self) -> Usage {
        // Whichever of the two names reports more (providers that send both may leave one 0).
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .max(self.prompt_cache_hit_tokens.unwrap_or(0));
        Usage {
            input: self.prompt_tokens.unwrap_or(0),
            cached_input: cached,
            cache_write: 0,
            output: self.completion_tokens.unwrap_or(0),
            reasoning: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Serialize)]
pub(super) struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
    completion_tokens_details: ReasoningOut,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
}

impl UsageOut {
    pub(super) fn new(u: &Usage) -> Self {
        UsageOut {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.input.saturating_add(u.output),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cached_input,
            },
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: u.reasoning,
            },
        }
    }
}

pub(super) fn stop_reason(finish: &str) -> StopReason {
    match finish {
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

pub(super) fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::StopSequence | StopReason::Pause => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

/// A `chatcmpl-` id: the provider's when it has the prefix, else derived from it (its own
/// prefix replaced), else a new one.
pub(super) fn chat_id(id: &str) -> String {
    if id.starts_with("chatcmpl-") {
        return id.to_owned();
    }
    let bare = ["msg_", "resp_"]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id);
    if bare.is_empty() {
        return format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32);
    }
    format!("chatcmpl-{bare}")
}

#[derive(Serialize)]
pub(super) struct ToolCallOut<'r> {
    pub(super) id: &'r str,
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) function: FunctionOut<'r>,
}

#[derive(Serialize)]
pub(super) struct FunctionOut<'r> {
    pub(super) name: &'r str,
    pub(super) arguments: &'r str,
}

/// The tool calls among `blocks`, as Chat writes them (requests and responses alike).
pub(super) fn tool_calls_out<'r>(blocks: &'r [Block<'_>]) -> Vec<ToolCallOut<'r>> {
    blocks
        .iter()
        .filter_map(|b| match b {
            Block::ToolCall {
                id,
                name,
                arguments,
            } => Some(ToolCallOut {
                id,
                kind: "function",
                function: FunctionOut {
                    name,
                    arguments: match arguments {
                        Arguments::Text(t) => t,
                        Arguments::Json(raw) => raw.get(),
                    },
                },
            }),
            _ => None,
        })
        .collect()
}
