//! The internal representation every wire format converts to and from.
//!
//! A client's request is parsed once into a [`Request`] that borrows from the client's bytes:
//! strings without escapes are slices of the body, and JSON the gateway never looks inside
//! (tool schemas, tool inputs, unknown fields) stays a `&RawValue` slice. Peak memory is thus
//! a small multiple of the body whatever it contains (a 32 MiB array of numbers is one slice).
//!
//! Same format in and out: only `model` is spliced into the client's bytes (`raw` and
//! `model_span`) and the IR is used for routing alone. Different formats: the target format's
//! encoder writes its body from the IR. Responses and stream events go the same way, provider
//! format -> IR -> client format, so there is one converter per format, not one per pair.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::value::RawValue;

use super::format::Format;
use crate::units::{Usage, Usd};

/// A parsed client request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The format the client spoke.
    pub format: Format,
    /// The client's bytes (after gzip decoding), forwarded as they are on passthrough.
    pub raw: &'a [u8],
    /// Where the top-level `model` value (with its quotes) sits in `raw`.
    pub model_span: Range<usize>,
    /// What the client asked for: `flux-auto`, a lane alias or a pinned id.
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, whichever the format has.
    pub max_tokens: Option<u64>,
    /// Top-level instructions: Anthropic `system`, Responses `instructions`. System or
    /// developer messages inside the conversation stay in `messages` with [`Role::System`].
    pub system: Vec<Block<'a>>,
    pub messages: Vec<Message<'a>>,
    pub tools: Vec<Tool<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    pub parallel_tool_calls: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<Cow<'a, str>>,
    /// Reasoning effort or budget, when the client asked for one.
    pub reasoning: Option<Reasoning>,
    /// Anthropic `metadata.user_id`, OpenAI `user` / `safety_identifier`.
    pub user: Option<Cow<'a, str>>,
    /// Chat `stream_options.include_usage`.
    pub include_usage: bool,
    /// Where the top-level `stream_options` value sits in `raw` (Chat), so a passthrough
    /// stream can ask for usage without re-reading the body.
    pub stream_options_span: Option<Range<usize>>,
    /// FluxRouter's own `provider` member (routing preferences, OpenRouter's shape): its
    /// value, and the bytes to cut so a same-format provider never sees it.
    pub preferences: Option<&'a RawValue>,
    pub preferences_cut: Option<Range<usize>>,
    /// Responses `previous_response_id`: only a Responses-format provider can honour it.
    pub previous_response_id: Option<Cow<'a, str>>,
    /// Top-level fields no IR field carries. They pass through to a same-format provider and
    /// are dropped (and counted in the access log) when translating.
    pub unknown: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Request<'a> {
    /// The client's own name for the conversation's prompt cache: OpenAI `prompt_cache_key`
    /// (Codex sends its conversation id), else [`Request::user`] (Claude Code's
    /// `metadata.user_id` names its session). The raw JSON text of a `prompt_cache_key`.
    pub fn cache_key(&self) -> Option<&str> {
        self.unknown
            .iter()
            .find(|(name, _)| name == "prompt_cache_key")
            .map(|(_, value)| value.get())
            .filter(|v| *v != "null")
            .or(self.user.as_deref())
    }

    /// Take the body's `provider` member (routing preferences for FluxRouter, never
    /// forwarded).
    pub fn set_preferences(&mut self, value: &'a RawValue) -> Result<(), crate::errors::FluxError> {
        let cut = super::json::member_cut(self.raw, "provider", value).ok_or_else(|| {
            crate::errors::FluxError::new(
                crate::errors::ErrorKind::InvalidRequest,
                "'provider' must be written as a plain key (no escapes).",
            )
        })?;
        self.preferences = Some(value);
        self.preferences_cut = Some(cut);
        Ok(())
    }

    /// A request of `format` over `raw` with nothing read yet; each format's parser fills it.
    pub fn empty(format: Format, raw: &'a [u8]) -> Self {
        Request {
            format,
            raw,
            model_span: 0..0,
            model: Cow::Borrowed(""),
            stream: false,
            max_tokens: None,
            system: Vec::new(),
            messages: Vec::new(),
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            reasoning: None,
            user: None,
            include_usage: false,
            stream_options_span: None,
            preferences: None,
            preferences_cut: None,
            previous_response_id: None,
            unknown: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `system` and `developer` messages (and Responses `developer` input items).
    System,
    User,
    Assistant,
}

/// One conversation turn. Tool results live in `User` messages as [`Block::ToolResult`]
/// (Anthropic's model); the Chat encoder splits them into `tool` messages.
#[derive(Debug)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Vec<Block<'a>>,
}

#[derive(Debug)]
pub enum Block<'a> {
    Text {
        text: Cow<'a, str>,
        /// Anthropic `cache_control` (kept raw, passed on to Anthropic-format providers).
        cache_control: Option<&'a RawValue>,
    },
    Image(Image<'a>),
    /// The assistant asked for a tool.
    ToolCall {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        arguments: Arguments<'a>,
    },
    /// The result of a tool call, sent back by the client.
    ToolResult {
        call_id: Cow<'a, str>,
        /// Text and images; a plain string result is one text block.
        content: Vec<Block<'a>>,
        is_error: bool,
        cache_control: Option<&'a RawValue>,
    },
    /// Model reasoning with its provider signature, which must travel verbatim.
    Thinking {
        text: Cow<'a, str>,
        signature: Option<Cow<'a, str>>,
    },
    /// Anthropic `redacted_thinking` or a Responses reasoning item with only
    /// `encrypted_content`: opaque data for the provider that produced it.
    RedactedThinking {
        data: Cow<'a, str>,
    },
}

#[derive(Debug)]
pub enum Image<'a> {
    /// An http(s) URL, or a `data:` URL as OpenAI formats carry inline images.
    Url(Cow<'a, str>),
    /// Anthropic's inline form.
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
}

/// Tool-call arguments: OpenAI formats carry a JSON-encoded string, Anthropic a JSON value.
#[derive(Debug)]
pub enum Arguments<'a> {
    /// The JSON text itself (OpenAI `arguments`, already unescaped).
    Text(Cow<'a, str>),
    /// A JSON value as it appeared in the body (Anthropic `input`).
    Json(&'a RawValue),
}

#[derive(Debug)]
pub struct Tool<'a> {
    pub name: Cow<'a, str>,
    pub description: Option<Cow<'a, str>>,
    /// JSON schema of the parameters, kept raw.
    pub parameters: Option<&'a RawValue>,
    pub strict: Option<bool>,
    /// A tool type other than a plain function (Responses `web_search`, `namespace`, an
    /// Anthropic server tool): kept raw for a same-format provider, dropped when translating.
    /// Function tools nested in a `namespace` are flattened into plain tools beside it.
    pub other: Option<&'a RawValue>,
    pub cache_control: Option<&'a RawValue>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    Auto,
    /// No tool may be called.
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`).
    Required,
    Named(Cow<'a, str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reasoning {
    /// `low`, `medium`, `high` effort (OpenAI `reasoning_effort`, Anthropic `output_config`).
    Effort(Effort),
    /// An explicit thinking budget in tokens (Anthropic `thinking.budget_tokens`).
    Budget(u64),
    /// Anthropic `thinking: {type: "adaptive"}`.
    Adaptive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Minimal,
    Low,
    Medium,
    High,
}

/// What a streamed response is told it cost, at its end: the amount billed for it and the
/// usage billed. The settlement decides it (`metering::budget::Hold::settle`, a hard cap
/// included); the wire formats only write it, never price anything themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub cost: Usd,
    pub usage: Usage,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    ToolUse,
    StopSequence,
    ContentFilter,
    /// Anthropic `pause_turn` (a long server-tool turn to be continued).
    Pause,
}

/// A provider's complete (non-streamed) answer, borrowing from its body.
#[derive(Debug)]
pub struct Response<'a> {
    pub id: Cow<'a, str>,
    pub model: Cow<'a, str>,
    /// Assistant content: text, tool calls, thinking.
    pub content: Vec<Block<'a>>,
    pub stop: StopReason,
    pub usage: Usage,
}

/// One step of a streamed answer, in provider-neutral terms. Content comes in numbered
/// blocks (Anthropic's model): each block is started, receives deltas, and is stopped; blocks
/// do not interleave except that several tool calls may be open at once (OpenAI parallel tool
/// calls). Decoders synthesize starts and stops where a format has none.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The message begins. Sent once, before any block.
    Start {
        id: String,
        model: String,
    },
    BlockStart {
        index: usize,
        block: BlockStart,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    /// Usage so far (merged with [`Usage::merge`]).
    Usage(Usage),
    /// The model stopped; usage may still follow.
    Stop(StopReason),
    /// The provider reported an error inside the stream.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum BlockStart {
    Text,
    ToolCall { id: String, name: String },
    Thinking,
    RedactedThinking { data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    /// A piece of the JSON text of a tool call's arguments.
    ToolArguments(String),
    Thinking(String),
    /// The thinking block's signature (verbatim).
    Signature(String),
}

/// What an encoder of a client stream needs to know besides the events.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    /// Input tokens counted by the gateway before sending, for formats that announce input
    /// usage before the provider reports it (Anthropic `message_start`).
    pub estimated_input_tokens: u64,
    /// Whether the client asked for a usage chunk (Chat `stream_options.include_usage`).
    /// On a Chat passthrough without it, the gateway asked the provider for usage
    /// (`transcode::encode_request`) and the transcoder drops the usage chunk after metering.
    pub include_usage: bool,
    /// Unix seconds, for `created` fields.
    pub created: u64,
}
