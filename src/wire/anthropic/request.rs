//! Requests: parse the client's body into the IR (validating it), and encode an IR request
//! as this format's body when translating for a provider of this format.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{empty_object, input_object, non_null, str_of, Str};
use crate::errors::{ErrorKind, FluxError};
use crate::wire::ir::{
    Arguments, Block, Effort, Image, Message, Reasoning, Request, Role, Tool, ToolChoice,
};
use crate::wire::json::{self, bad, shown};
use crate::wire::Format;

/// Top-level members read into IR fields (besides `model` and `messages`).
const KNOWN: [&str; 11] = [
    "stream",
    "max_tokens",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "stop_sequences",
    "thinking",
    "metadata",
    "output_config",
];

/// `max_tokens` when the IR has none: Anthropic requires the field.
const DEFAULT_MAX_TOKENS: u64 = 8192;

/// Parse and validate a client request of this format. Malformed input is a 400
/// (`invalid_request`; `empty_prompt` when there is no content at all).
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, FluxError> {
    let members = json::top_level(raw)?;
    let mut req = Request {
        format: Format::Anthropic,
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
        previous_response_id: None,
        unknown: Vec::new(),
    };
    let mut model = None;
    let mut messages = None;
    let mut thinking: Option<ThinkingIn> = None;
    let mut effort = None;
    for (key, value) in members {
        let null = json::is_null(value);
        match key.as_ref() {
            "model" => model = Some(value),
            "messages" => messages = Some(value),
            // An explicit null is the same as leaving a known field out.
            k if null && KNOWN.contains(&k) => {}
            "stream" => {
                req.stream = serde_json::from_str(value.get())
                    .map_err(|_| bad("'stream' must be a boolean (true or false)."))?
            }
            "max_tokens" => req.max_tokens = Some(json::field("max_tokens", value)?),
            "system" => system(value, &mut req.system)?,
            "tools" => tools(value, &mut req.tools)?,
            "tool_choice" => {
                let (choice, parallel) = tool_choice(value)?;
                req.tool_choice = choice;
                req.parallel_tool_calls = parallel;
            }
            "temperature" => req.temperature = Some(json::field("temperature", value)?),
            "top_p" => req.top_p = Some(json::field("top_p", value)?),
            "stop_sequences" => {
                let stop: Vec<Str> = json::field("stop_sequences", value)?;
                req.stop = stop.into_iter().map(|s| s.0).collect();
            }
            "thinking" => thinking = Some(json::field("thinking", value)?),
            "metadata" => {
                let meta: MetadataIn = json::field("metadata", value)?;
                req.user = meta.user_id.map(|s| s.0);
            }
            "output_config" => {
                // Effort is read; the rest (e.g. a structured output format) only passes
                // through to an Anthropic-format provider.
                let config: OutputConfigIn = json::field("output_config", value)?;
                effort = config.effort.and_then(|e| parse_effort(&e.0));
                req.unknown.push((key, value));
            }
            _ => req.unknown.push((key, value)),
        }
    }

    let model = match model {
        Some(m) if !json::is_null(m) => m,
        _ => {
            return Err(bad(
                "'model' is required: use flux-auto, a lane alias or a pinned id.",
            ))
        }
    };
    let name: Str =
        serde_json::from_str(model.get()).map_err(|_| bad("'model' must be a string."))?;
    if name.0.is_empty() {
        return Err(bad(
            "'model' is required: use flux-auto, a lane alias or a pinned id.",
        ));
    }
    req.model = name.0;
    req.model_span = json::span_of(raw, model);

    req.reasoning = match thinking {
        Some(ThinkingIn {
            kind: Some(ref k),
            budget_tokens: Some(budget),
        }) if k.0 == "enabled" => Some(Reasoning::Budget(budget)),
        Some(ThinkingIn {
            kind: Some(ref k), ..
        }) if k.0 == "adaptive" => Some(effort.map_or(Reasoning::Adaptive, Reasoning::Effort)),
        _ => effort.map(Reasoning::Effort),
    };

    let messages = match messages {
        Some(m) if !json::is_null(m) => m,
        _ => {
            return Err(bad(
                "'messages' is required: an array of {role, content} objects.",
            ))
        }
    };
    let list: Vec<&RawValue> = serde_json::from_str(messages.get())
        .map_err(|_| bad("'messages' must be an array of {role, content} objects."))?;
    if list.is_empty() {
        return Err(FluxError::new(
            ErrorKind::EmptyPrompt,
            "The prompt is empty: 'messages' has no entries.",
        ));
    }
    let mut has_content = false;
    req.messages.reserve(list.len());
    for (i, m) in list.into_iter().enumerate() {
        req.messages.push(message(i, m, &mut has_content)?);
    }
    if !has_content {
        return Err(FluxError::new(
            ErrorKind::EmptyPrompt,
            "The prompt is empty: add message content.",
        ));
    }
    Ok(req)
}

#[derive(Deserialize)]
struct ThinkingIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct MetadataIn<'a> {
    #[serde(borrow, default)]
    user_id: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct OutputConfigIn<'a> {
    #[serde(borrow, default)]
    effort: Option<Str<'a>>,
}

fn parse_effort(e: &str) -> Option<Effort> {
    match e {
        "minimal" => Some(Effort::Minimal),
        "low" => Some(Effort::Low),
        "medium" => Some(Effort::Medium),
        "high" | "max" | "xhigh" => Some(Effort::High),
        _ => None,
    }
}

/// Top-level `system`: a string or an array of text blocks (other block types skipped).
fn system<'a>(value: &'a RawValue, out: &mut Vec<Block<'a>>) -> Result<(), FluxError> {
    match value.get().as_bytes().first() {
        Some(b'"') => {
            let text: Str = json::field("system", value)?;
            if !text.0.is_empty() {
                out.push(Block::Text {
                    text: text.0,
                    cache_control: None,
                });
            }
            Ok(())
        }
        Some(b'[') => {
            let blocks: Vec<&RawValue> = json::field("system", value)?;
            let mut ignored = false;
            for (j, b) in blocks.into_iter().enumerate() {
                block(b, &|| format!("system[{j}]"), out, &mut ignored)?;
            }
            // Only text belongs in a system prompt.
            out.retain(|b| matches!(b, Block::Text { .. }));
            Ok(())
        }
        _ => Err(bad("'system' must be a string or an array of text blocks.")),
    }
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

fn message<'a>(
    i: usize,
    raw: &'a RawValue,
    has_content: &mut bool,
) -> Result<Message<'a>, FluxError> {
    let m: MessageIn = serde_json::from_str(raw.get()).map_err(|_| {
        bad(format!(
            "messages[{i}] must be an object with 'role' and 'content'."
        ))
    })?;
    let role = match str_of(non_null(m.role)).as_deref() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        Some(other) => {
            return Err(bad(format!(
                "messages[{i}].role '{}' is not one of user, assistant, system.",
                shown(other)
            )))
        }
        None => return Err(bad(format!("messages[{i}].role is required."))),
    };
    let mut content = Vec::new();
    let Some(value) = non_null(m.content) else {
        return Err(bad(format!("messages[{i}].content is required.")));
    };
    blocks(
        value,
        &|| format!("messages[{i}].content"),
        &mut content,
        has_content,
    )?;
    Ok(Message { role, content })
}

/// A `content` value: a string (one text block) or an array of blocks.
fn blocks<'a>(
    value: &'a RawValue,
    at: &dyn Fn() -> String,
    out: &mut Vec<Block<'a>>,
    has_content: &mut bool,
) -> Result<(), FluxError> {
    match value.get().as_bytes().first() {
        Some(b'"') => {
            let text: Str = serde_json::from_str(value.get())
                .map_err(|_| bad(format!("{} must be a string.", at())))?;
            *has_content |= !text.0.trim().is_empty();
            out.push(Block::Text {
                text: text.0,
                cache_control: None,
            });
            Ok(())
        }
        Some(b'[') => {
            let list: Vec<&RawValue> = serde_json::from_str(value.get())
                .map_err(|e| bad(format!("{} is invalid: {e}.", at())))?;
            out.reserve(list.len());
            for (j, b) in list.into_iter().enumerate() {
                block(b, &|| format!("{}[{j}]", at()), out, has_content)?;
            }
            Ok(())
        }
        _ => Err(bad(format!(
            "{} must be a string or an array of content blocks.",
            at()
        ))),
    }
}

/// Every member any known block type has, each kept raw: an unknown block type whose
/// members have other types is skipped, never an error.
#[derive(Deserialize)]
struct BlockIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_control: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SourceIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    media_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
}

fn required<'a>(
    value: Option<&'a RawValue>,
    at: &dyn Fn() -> String,
    name: &str,
) -> Result<Cow<'a, str>, FluxError> {
    str_of(non_null(value)).ok_or_else(|| bad(format!("{}.{name} must be a string.", at())))
}

fn block<'a>(
    raw: &'a RawValue,
    at: &dyn Fn() -> String,
    out: &mut Vec<Block<'a>>,
    has_content: &mut bool,
) -> Result<(), FluxError> {
    let b: BlockIn = serde_json::from_str(raw.get())
        .map_err(|_| bad(format!("{} must be an object with a 'type'.", at())))?;
    let Some(kind) = str_of(non_null(b.kind)) else {
        return Err(bad(format!("{} needs a 'type'.", at())));
    };
    let cache_control = non_null(b.cache_control);
    match kind.as_ref() {
        "text" => {
            let text = required(b.text, at, "text")?;
            *has_content |= !text.trim().is_empty();
            out.push(Block::Text {
                text,
                cache_control,
            });
        }
        "image" => {
            *has_content = true;
            let source: SourceIn = non_null(b.source)
                .and_then(|s| serde_json::from_str(s.get()).ok())
                .ok_or_else(|| bad(format!("{}.source must be an object.", at())))?;
            match str_of(non_null(source.kind)).as_deref() {
                Some("base64") => out.push(Block::Image(Image::Base64 {
                    media_type: required(
                        source.media_type,
                        &|| format!("{}.source", at()),
                        "media_type",
                    )?,
                    data: required(source.data, &|| format!("{}.source", at()), "data")?,
                })),
                Some("url") => out.push(Block::Image(Image::Url(required(
                    source.url,
                    &|| format!("{}.source", at()),
                    "url",
                )?))),
                _ => {} // file ids and future sources: only an Anthropic provider knows them
            }
        }
        "tool_use" => {
            *has_content = true;
            out.push(Block::ToolCall {
                id: required(b.id, at, "id")?,
                name: required(b.name, at, "name")?,
                arguments: Arguments::Json(match non_null(b.input) {
                    Some(input) => input,
                    None => empty_object(),
                }),
            });
        }
        "tool_result" => {
            *has_content = true;
            let call_id = required(b.tool_use_id, at, "tool_use_id")?;
            let mut content = Vec::new();
            if let Some(c) = non_null(b.content) {
                let mut ignored = false;
                blocks(
                    c,
                    &|| format!("{}.content", at()),
                    &mut content,
                    &mut ignored,
                )?;
            }
            let is_error = match non_null(b.is_error) {
                None => false,
                Some(v) => serde_json::from_str(v.get())
                    .map_err(|_| bad(format!("{}.is_error must be a boolean.", at())))?,
            };
            out.push(Block::ToolResult {
                call_id,
                content,
                is_error,
                cache_control,
            });
        }
        "thinking" => {
            *has_content = true;
            out.push(Block::Thinking {
                text: str_of(non_null(b.thinking)).unwrap_or_default(),
                signature: str_of(non_null(b.signature)),
            });
        }
        "redacted_thinking" => {
            *has_content = true;
            if let Some(data) = str_of(non_null(b.data)) {
                out.push(Block::RedactedThinking { data });
            }
        }
        // document, search_result, server tool blocks, container uploads...: content the
        // provider judges, dropped when translating.
        _ => *has_content = true,
    }
    Ok(())
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    description: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_control: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

fn tools<'a>(value: &'a RawValue, out: &mut Vec<Tool<'a>>) -> Result<(), FluxError> {
    let list: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| bad("'tools' must be an array of tool objects."))?;
    out.reserve(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let t: ToolIn = serde_json::from_str(raw.get())
            .map_err(|e| bad(format!("tools[{i}] is invalid: {e}.")))?;
        let kind = str_of(non_null(t.kind));
        let name = str_of(non_null(t.name));
        let cache_control = non_null(t.cache_control);
        match kind.as_deref() {
            None | Some("custom") => {
                let name = name.ok_or_else(|| bad(format!("tools[{i}].name must be a string.")))?;
                out.push(Tool {
                    name,
                    description: str_of(non_null(t.description)),
                    parameters: non_null(t.input_schema),
                    strict: t.strict,
                    other: None,
                    cache_control,
                });
            }
            Some(_) => out.push(Tool {
                name: name.or(kind).unwrap_or_default(),
                description: None,
                parameters: None,
                strict: None,
                other: Some(raw),
                cache_control,
            }),
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ToolChoiceIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

fn tool_choice<'a>(
    value: &'a RawValue,
) -> Result<(Option<ToolChoice<'a>>, Option<bool>), FluxError> {
    let c: ToolChoiceIn = json::field("tool_choice", value)?;
    let choice = match c.kind.as_ref().map(|k| k.0.as_ref()) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => match c.name {
            Some(n) => ToolChoice::Named(n.0),
            None => return Err(bad("'tool_choice' of type 'tool' needs a 'name'.")),
        },
        Some(other) => {
            return Err(bad(format!(
                "'tool_choice.type' '{}' is not one of auto, any, tool, none.",
                shown(other)
            )))
        }
        None => return Err(bad("'tool_choice' needs a 'type'.")),
    };
    let parallel = c.disable_parallel_tool_use.map(|d| !d);
    Ok((Some(choice), parallel))
}

// ---------------------------------------------------------------------------------------
// Encoding

#[derive(Serialize)]
struct BodyOut<'r> {
    model: &'r str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<BlockOut<'r>>,
    messages: Vec<MessageOut<'r>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfigOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'r>>,
    stream: bool,
}

#[derive(Serialize)]
struct MessageOut<'r> {
    role: &'static str,
    content: Vec<BlockOut<'r>>,
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

#[derive(Serialize)]
struct ToolOut<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    input_schema: &'r RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'r RawValue>,
}

#[derive(Serialize)]
struct ToolChoiceOut<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'r str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ThinkingOut {
    Enabled { budget_tokens: u64 },
    Adaptive,
}

#[derive(Serialize)]
struct OutputConfigOut {
    effort: &'static str,
}

#[derive(Serialize)]
struct MetadataOut<'r> {
    user_id: &'r str,
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

fn effort_out(e: Effort) -> &'static str {
    match e {
        Effort::Minimal | Effort::Low => "low",
        Effort::Medium => "medium",
        Effort::High => "high",
    }
}

/// Write the request as this format's body for a provider, with `model` as the provider's
/// id and `stream` as asked. Only used when the client spoke another format.
pub fn encode_request(req: &Request<'_>, model: &str, stream: bool) -> Vec<u8> {
    let mut system: Vec<BlockOut> = req.system.iter().filter_map(block_out).collect();
    let mut messages = Vec::with_capacity(req.messages.len());
    let mut leading = true;
    for m in &req.messages {
        let content: Vec<BlockOut> = m.content.iter().filter_map(block_out).collect();
        let role = match m.role {
            Role::System if leading => {
                system.extend(
                    content
                        .into_iter()
                        .filter(|b| matches!(b, BlockOut::Text { .. })),
                );
                continue;
            }
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        leading = false;
        if !content.is_empty() {
            messages.push(MessageOut { role, content });
        }
    }
    let schema = empty_schema();
    let tools: Vec<ToolOut> = req
        .tools
        .iter()
        .filter(|t| t.other.is_none())
        .map(|t| ToolOut {
            name: &t.name,
            description: t.description.as_deref(),
            input_schema: t.parameters.unwrap_or(schema),
            cache_control: t.cache_control,
        })
        .collect();
    let no_parallel = req.parallel_tool_calls == Some(false);
    let tool_choice = if tools.is_empty() {
        None // Anthropic refuses a tool_choice without tools
    } else {
        let (kind, name) = match &req.tool_choice {
            Some(ToolChoice::Auto) => ("auto", None),
            Some(ToolChoice::None) => ("none", None),
            Some(ToolChoice::Required) => ("any", None),
            Some(ToolChoice::Named(n)) => ("tool", Some(n.as_ref())),
            None if no_parallel => ("auto", None),
            None => ("", None),
        };
        (!kind.is_empty()).then_some(ToolChoiceOut {
            kind,
            name,
            disable_parallel_tool_use: no_parallel && kind != "none",
        })
    };
    let (thinking, output_config) = match req.reasoning {
        Some(Reasoning::Budget(budget_tokens)) => {
            (Some(ThinkingOut::Enabled { budget_tokens }), None)
        }
        Some(Reasoning::Adaptive) => (Some(ThinkingOut::Adaptive), None),
        Some(Reasoning::Effort(e)) => (
            None,
            Some(OutputConfigOut {
                effort: effort_out(e),
            }),
        ),
        None => (None, None),
    };
    let body = BodyOut {
        model,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages,
        tools,
        tool_choice,
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: req.stop.iter().map(|s| s.as_ref()).collect(),
        thinking,
        output_config,
        metadata: req.user.as_deref().map(|user_id| MetadataOut { user_id }),
        stream,
    };
    // Borrowed strings, numbers and valid raw JSON: serializing cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `{"type":"object"}`: Anthropic requires an input schema on every tool.
fn empty_schema() -> &'static RawValue {
    const SCHEMA: &str = r#"{"type":"object"}"#;
    serde_json::from_str(SCHEMA).unwrap_or_else(|_| unreachable!("a constant is JSON"))
}
