//! The simulated model, shared by every wire format: each format's parser turns
//! its request into a [`SimInput`], [`Reply::for_input`] decides the answer, and
//! each format's renderers write that answer in the format's own grammar.
//!
//! Everything here is pure (no I/O, no clock), so tests can predict every byte.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::mode::{directives_in_text, Directive};
use super::prefix::PromptChain;

/// How many words of the user's last message (or of a tool's output) the reply echoes back.
pub const ECHOED_WORDS: usize = 8;
/// Text bytes an image (or other binary) part is counted as, whatever its size.
pub const IMAGE_PART_BYTES: u64 = 85;
/// Per-message overhead in the prompt token count.
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Completion tokens reported for each tool call.
pub const TOOL_CALL_TOKENS: u64 = 5;
/// Model name used when a request names none.
pub const DEFAULT_MODEL: &str = "sim-model";
/// Arguments of a call made by `[sim:tool]`, `[sim:parallel]` or a forcing `tool_choice`.
pub const DEFAULT_TOOL_ARGUMENTS: &str = r#"{"sim":true}"#;

/// What the model was asked to do with tools (each format's `tool_choice`, in common terms).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Tools may be called; the simulator calls one only when a directive asks.
    #[default]
    Auto,
    /// Tools must not be called (Chat/Responses `"none"`, Anthropic `{"type":"none"}`).
    Never,
    /// Some tool must be called (Chat/Responses `"required"`, Anthropic `{"type":"any"}`).
    Required,
    /// This tool must be called.
    Named(String),
}

/// The parts of a request, in any format, that the simulated model acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimInput {
    pub model: String,
    pub stream: bool,
    /// Chat `stream_options.include_usage` (the other formats always report usage).
    pub include_usage: bool,
    /// The format's output limit (the smallest, when it has several).
    pub max_tokens: Option<u64>,
    /// Text of the last user message that has text (its text parts joined by a space).
    pub last_user_text: Option<String>,
    pub prompt_tokens: u64,
    /// The part of `prompt_tokens` served from the (simulated) prompt cache.
    pub cached_tokens: u64,
    /// Names of the function tools offered, in order.
    pub tools: Vec<String>,
    pub tool_choice: ToolChoice,
    /// The text of the tool output the conversation ends with, when it ends with one.
    pub tool_result: Option<String>,
    /// Whether the request asked for thinking / reasoning.
    pub thinking: bool,
    /// The prompt's blocks as the target's prefix cache keys them.
    pub chain: PromptChain,
}

/// Adds up prompt tokens message by message: each message costs
/// [`TOKENS_PER_MESSAGE`] plus a quarter of its text bytes, rounded up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PromptCount {
    pub tokens: u64,
    /// Tokens of the cached text, counted the same way (without the per-message overhead).
    pub cached: u64,
}

impl PromptCount {
    /// Counts one message of `bytes` text bytes, `cached_bytes` of which are cached.
    pub fn add_message(&mut self, bytes: u64, cached_bytes: u64) {
        self.tokens += TOKENS_PER_MESSAGE + bytes.div_ceil(4);
        self.cached += cached_bytes.min(bytes).div_ceil(4);
    }

    /// The whole cost of one message, as cached tokens (a cached system prompt).
    pub fn message_tokens(bytes: u64) -> u64 {
        TOKENS_PER_MESSAGE + bytes.div_ceil(4)
    }
}

/// One function call the reply makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as compact JSON object text.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyContent {
    /// Text, as the pieces a stream sends one by one (each word keeps its following space).
    Text(Vec<String>),
    /// One call or more (two for `[sim:parallel]`).
    ToolCalls(Vec<ToolCall>),
}

/// Why the reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    /// Cut short by the request's output limit.
    Length,
    ToolCalls,
}

/// The thinking the reply starts with, when the request asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thinking {
    /// The pieces a stream sends one by one, as for text.
    pub pieces: Vec<String>,
    pub signature: String,
}

impl Thinking {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub thinking: Option<Thinking>,
    pub content: ReplyContent,
    pub finish: Finish,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Every output token, thinking included (OpenAI's and Anthropic's convention).
    pub completion_tokens: u64,
    /// The thinking part of `completion_tokens`.
    pub reasoning_tokens: u64,
}

impl Reply {
    pub fn for_input(input: &SimInput) -> Reply {
        let thinking = input.thinking.then(|| thinking_for(input));
        let reasoning_tokens = thinking.as_ref().map_or(0, |t| t.pieces.len() as u64);

        let calls = tool_calls_for(input);
        if !calls.is_empty() {
            let completion_tokens = reasoning_tokens + TOOL_CALL_TOKENS * calls.len() as u64;
            return Reply {
                thinking,
                content: ReplyContent::ToolCalls(calls),
                finish: Finish::ToolCalls,
                prompt_tokens: input.prompt_tokens,
                cached_tokens: input.cached_tokens,
                completion_tokens,
                reasoning_tokens,
            };
        }

        let text = match &input.tool_result {
            Some(output) => {
                let echoed = first_words(output);
                if echoed.is_empty() {
                    format!("Hello from {}. The tool returned nothing.", input.model)
                } else {
                    format!("Hello from {}. The tool said: {echoed}", input.model)
                }
            }
            None => {
                let echoed = first_words(input.last_user_text.as_deref().unwrap_or_default());
                if echoed.is_empty() {
                    format!("Hello from {}.", input.model)
                } else {
                    format!("Hello from {}. You said: {echoed}", input.model)
                }
            }
        };
        let mut pieces = pieces_of(&text);

        let mut finish = Finish::Stop;
        if let Some(limit) = input.max_tokens {
            // Thinking counts against the limit first, as it does for real models.
            let room = limit.saturating_sub(reasoning_tokens);
            if room < pieces.len() as u64 {
                pieces.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                finish = Finish::Length;
            }
        }

        Reply {
            thinking,
            completion_tokens: reasoning_tokens + pieces.len() as u64,
            reasoning_tokens,
            content: ReplyContent::Text(pieces),
            finish,
            prompt_tokens: input.prompt_tokens,
            cached_tokens: input.cached_tokens,
        }
    }

    /// How many generation steps the reply takes; `slow` mode paces a
    /// non-streamed answer by this many delays.
    pub fn steps(&self) -> usize {
        let thinking = self.thinking.as_ref().map_or(0, |t| t.pieces.len());
        thinking
            + match &self.content {
                ReplyContent::Text(pieces) => pieces.len(),
                // Each call's header and its arguments.
                ReplyContent::ToolCalls(calls) => 2 * calls.len(),
            }
    }

    /// The reply's text, when it answers with text.
    #[cfg(test)]
    pub fn text(&self) -> Option<String> {
        match &self.content {
            ReplyContent::Text(pieces) => Some(pieces.concat()),
            ReplyContent::ToolCalls(_) => None,
        }
    }
}

/// The first [`ECHOED_WORDS`] words of `text`, joined by single spaces.
pub fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(ECHOED_WORDS)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits text into the pieces a stream sends: one word each, every word but the
/// last keeping a following space.
fn pieces_of(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            if i < last {
                format!("{word} ")
            } else {
                (*word).to_owned()
            }
        })
        .collect()
}

fn thinking_for(input: &SimInput) -> Thinking {
    let words = first_words(input.last_user_text.as_deref().unwrap_or_default());
    let text = if words.is_empty() {
        "Thinking about: nothing in particular".to_owned()
    } else {
        format!("Thinking about: {words}")
    };
    Thinking {
        signature: signature_of(&text),
        pieces: pieces_of(&text),
    }
}

/// A deterministic stand-in for a provider's thinking signature. Real ones are
/// base64, so this one carries `/` and `+` too (`/` is one a JSON encoder may escape).
pub fn signature_of(text: &str) -> String {
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    format!("sig-sim/{}+{}", &digest[..16], &digest[16..32])
}

/// The calls the reply makes: only when asked for, by a `[sim:…]` directive in the
/// last user text or by a `tool_choice` that forces one, and never in answer to a
/// tool result (a real model answers it, instead of looping on tool calls forever).
fn tool_calls_for(input: &SimInput) -> Vec<ToolCall> {
    if input.tool_result.is_some() || input.tool_choice == ToolChoice::Never {
        return Vec::new();
    }
    let offered = |name: &str| input.tools.iter().any(|tool| tool == name);
    let default_call = |name: &String| ToolCall {
        name: name.clone(),
        arguments: DEFAULT_TOOL_ARGUMENTS.to_owned(),
    };

    let text = input.last_user_text.as_deref().unwrap_or_default();
    for directive in directives_in_text(text) {
        match directive {
            Directive::Call { name, arguments } if offered(name) => {
                let arguments = match arguments {
                    Some(arguments) => arguments.to_string(),
                    None => "{}".to_owned(),
                };
                return vec![ToolCall {
                    name: name.to_owned(),
                    arguments,
                }];
            }
            Directive::Tool if !input.tools.is_empty() => {
                return input.tools.iter().take(1).map(default_call).collect();
            }
            Directive::Parallel if !input.tools.is_empty() => {
                return input.tools.iter().take(2).map(default_call).collect();
            }
            _ => {}
        }
    }

    match &input.tool_choice {
        ToolChoice::Required => input.tools.first().map(default_call).into_iter().collect(),
        ToolChoice::Named(name) if offered(name) => vec![default_call(name)],
        _ => Vec::new(),
    }
}

/// The `[sim:cached]` directive is in `text`.
pub fn asks_for_cache(text: Option<&str>) -> bool {
    text.is_some_and(|text| {
        directives_in_text(text)
            .iter()
            .any(|d| matches!(d, Directive::Cached))
    })
}

/// The text bytes of a JSON value the gateway may have re-encoded (tool call
/// arguments, tool inputs): its compact serialization.
pub fn json_bytes(value: &Value) -> u64 {
    match value {
        Value::Null => 0,
        Value::String(text) => text.len() as u64,
        other => other.to_string().len() as u64,
    }
}

/// The identity of one answer, shared by all of its events.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The answer's id (`chatcmpl-sim-N`, `resp_sim_N`, `msg_sim_N`).
    pub id: &'a str,
    /// Unix seconds (Chat `created`, Responses `created_at`; Anthropic has none).
    pub created: u64,
    pub model: &'a str,
}

/// Frames one named server-sent event: `event: NAME\ndata: JSON\n\n`.
pub fn named_event(name: &str, data: &Value) -> bytes::Bytes {
    bytes::Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Splits `text` in two at the char boundary nearest its middle, so streamed
/// arguments arrive in two deltas a gateway has to join.
pub fn halves(text: &str) -> (&str, &str) {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    text.split_at(middle)
}
