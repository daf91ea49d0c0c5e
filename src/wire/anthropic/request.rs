//! Requests: parse the client's body into the IR (validating it), and encode an IR request
//! as this format's body when translating for a provider of this format.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{block_out, empty_object, non_null, str_of, BlockIn, BlockOut, SourceIn, Str};
use crate::errors::{ErrorKind, FluxError};
use crate::wire::format::Format;
use crate::wire::ir::{
    Arguments, Block, Effort, Image, Message, Reasoning, Request, Role, Tool, ToolChoice,
};
use crate::wire::json::{self, bad, shown};

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
    let mut req = Request::empty(Format::Anthropic, raw);
    let mut model = None;
    let mut messages = None;
    let mut thinking: Option<ThinkingIn> = None;
    let mut effort = None;
    for (key, value) in members {
        let null = json::is_null(value);
        match key.as_ref() {
            "model" => model = Some(value),
            "messages" => messages = Some(value),
            "provider" => req.set_preferences(value)?,
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
        let mut content: Vec<BlockOut> = m.content.iter().filter_map(block_out).collect();
        // Anthropic wants a user turn's tool results before anything else in it.
        content.sort_by_key(|b| !matches!(b, BlockOut::ToolResult { .. }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The captured Claude Code bodies (1 = "say hi" with x-api-key, 2 = with Bearer,
    /// 3 = first turn of a tool run, 4 = its follow-up with the tool_result).
    fn claude_code(n: usize) -> String {
        let path = format!(
            "{}/tests/fixtures/clients/claude-code-2.1.330-{n}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let capture: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        capture["body"].to_string()
    }

    fn text_of<'r>(b: &'r Block<'_>) -> &'r str {
        match b {
            Block::Text { text, .. } => text,
            other => panic!("not text: {other:?}"),
        }
    }

    #[allow(clippy::ptr_arg)] // the point is to look at the Cow itself
    fn is_borrowed(c: &Cow<'_, str>) -> bool {
        matches!(c, Cow::Borrowed(_))
    }

    #[test]
    fn claude_code_bodies_parse_with_the_expected_shape() {
        let bodies: Vec<String> = (1..=4).map(claude_code).collect();
        for (n, body) in bodies.iter().enumerate() {
            let r = parse_request(body.as_bytes()).unwrap_or_else(|e| panic!("body {n}: {e}"));
            assert_eq!(r.format, Format::Anthropic);
            assert_eq!(r.model, "flux-auto");
            assert_eq!(&body.as_bytes()[r.model_span.clone()], b"\"flux-auto\"");
            assert!(r.stream);
            assert_eq!(r.max_tokens, Some(32000));
            // adaptive thinking with output_config.effort high
            assert_eq!(r.reasoning, Some(Reasoning::Effort(Effort::High)));
            assert!(r.user.as_deref().unwrap().starts_with("{\"device_id\":"));
            let unknown: Vec<&str> = r.unknown.iter().map(|(k, _)| k.as_ref()).collect();
            assert_eq!(unknown, ["context_management", "output_config"]);

            // system: 3 text blocks, the last two with cache_control
            assert_eq!(r.system.len(), 3);
            assert!(!text_of(&r.system[0]).is_empty());
            let cc: Vec<Option<&str>> = r
                .system
                .iter()
                .map(|b| match b {
                    Block::Text { cache_control, .. } => cache_control.map(|c| c.get()),
                    _ => unreachable!(),
                })
                .collect();
            assert_eq!(
                cc,
                [
                    None,
                    Some(r#"{"type":"ephemeral"}"#),
                    Some(r#"{"type":"ephemeral"}"#)
                ]
            );

            // 12 function tools; DeferredToolPlaceholder (defer_loading) is one of them
            assert_eq!(r.tools.len(), 12);
            assert!(r
                .tools
                .iter()
                .all(|t| t.other.is_none() && t.parameters.is_some()));
            assert!(r.tools.iter().any(|t| t.name == "DeferredToolPlaceholder"));
            assert!(r.tools.iter().any(|t| t.name == "Read"));

            // user [3 texts], then a system message in the middle of the conversation
            let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
            let expected: &[Role] = if n == 3 {
                &[Role::User, Role::System, Role::Assistant, Role::User]
            } else {
                &[Role::User, Role::System]
            };
            assert_eq!(roles, expected, "body {n}");
            assert_eq!(r.messages[0].content.len(), 3);
            assert!(matches!(r.messages[1].content[..], [Block::Text { .. }]));
            // Texts without escapes are slices of the body.
            assert!(
                matches!(&r.messages[0].content[2], Block::Text { text, .. } if is_borrowed(text))
            );
        }

        // Body 4: the tool round trip.
        let body = claude_code(4);
        let r = parse_request(body.as_bytes()).unwrap();
        match &r.messages[2].content[..] {
            [Block::ToolCall {
                id,
                name,
                arguments: Arguments::Json(input),
            }] => {
                assert_eq!(id, "toolu_000021mock");
                assert_eq!(name, "Read");
                let v: Value = serde_json::from_str(input.get()).unwrap();
                assert_eq!(v, json!({"file_path": "test"}));
            }
            other => panic!("{other:?}"),
        }
        match &r.messages[3].content[..] {
            [Block::ToolResult {
                call_id,
                content,
                is_error,
                cache_control,
            }] => {
                assert_eq!(call_id, "toolu_000021mock");
                assert!(*is_error);
                assert_eq!(cache_control.unwrap().get(), r#"{"type":"ephemeral"}"#);
                assert!(matches!(&content[..], [Block::Text { .. }]));
            }
            other => panic!("{other:?}"),
        }
        // The mid-conversation system message is a plain string there.
        assert!(matches!(
            r.messages[1].content[..],
            [Block::Text {
                cache_control: None,
                ..
            }]
        ));
    }

    fn parse(v: Value) -> Result<(), FluxError> {
        let raw = serde_json::to_vec(&v).unwrap();
        parse_request(&raw).map(|_| ())
    }

    #[test]
    fn shape_errors_are_400_with_the_reason() {
        let ok = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": ok}), "'model' is required"),
            (json!({"model": "", "messages": ok}), "'model' is required"),
            (
                json!({"model": 7, "messages": ok}),
                "'model' must be a string",
            ),
            (
                json!({"model": "m", "messages": ok, "stream": "yes"}),
                "'stream' must be a boolean",
            ),
            (json!({"model": "m"}), "'messages' is required"),
            (
                json!({"model": "m", "messages": {}}),
                "'messages' must be an array",
            ),
            (
                json!({"model": "m", "messages": ["hi"]}),
                "messages[0] must be an object",
            ),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "messages[0].role is required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "not one of",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "messages[0].content is required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                "must be a string or an array",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                "messages[0].content[0] needs a 'type'",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [7]}]}),
                "messages[0].content[0] must be an object",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
                "messages[0].content[0].text must be a string",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]}),
                "messages[0].content[0].id must be a string",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}]}]}),
                "messages[0].content[0].content[0].text must be a string",
            ),
            (
                json!({"model": "m", "messages": ok, "system": 3}),
                "'system' must be a string",
            ),
            (
                json!({"model": "m", "messages": ok, "max_tokens": "x"}),
                "'max_tokens' is invalid",
            ),
            (
                json!({"model": "m", "messages": ok, "tools": [{"description": "no name"}]}),
                "tools[0].name must be a string",
            ),
            (
                json!({"model": "m", "messages": ok, "tool_choice": {"type": "sometimes"}}),
                "not one of auto, any, tool, none",
            ),
            (
                json!({"model": "m", "messages": ok, "tool_choice": {"type": "tool"}}),
                "needs a 'name'",
            ),
        ];
        for (body, expect) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{body}");
            assert!(e.message.contains(expect), "{body}: {}", e.message);
        }
        let e = parse_request(br#"{"model":"m","model":"n","messages":[]}"#).unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
    }

    #[test]
    fn empty_prompts_are_400_empty_prompt() {
        for body in [
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"role": "user", "content": "  "}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "empty_prompt"), "{body}");
        }
    }

    #[test]
    fn every_block_kind_parses_and_unknown_ones_are_skipped() {
        let raw = br#"{"model":"claude","max_tokens":null,"stream":false,"temperature":0.5,"top_p":0.9,
            "stop_sequences":["END","\n\nHuman:"],"top_k":5,"service_tier":"auto",
            "thinking":{"type":"enabled","budget_tokens":2048},"output_config":{"effort":"low"},
            "system":"be brief",
            "tool_choice":{"type":"any","disable_parallel_tool_use":true},
            "tools":[{"name":"f","description":"d","input_schema":{"type":"object"},"cache_control":{"type":"ephemeral"}},
                     {"type":"custom","name":"g","input_schema":{}},
                     {"type":"web_search_20250305","name":"web_search","max_uses":5},
                     {"type":"bash_20250124","name":"bash"}],
            "messages":[
              {"role":"user","content":[
                {"type":"text","text":"look","cache_control":{"type":"ephemeral","ttl":"1h"}},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
                {"type":"image","source":{"type":"url","url":"https://example.com/a.png"}},
                {"type":"image","source":{"type":"file","file_id":"file_1"}},
                {"type":"document","source":{"type":"text","media_type":"text/plain","data":"doc"},"title":7},
                {"type":"search_result","source":"https://x","title":"t","content":[{"type":"text","text":"r"}]}
              ]},
              {"role":"assistant","content":[
                {"type":"thinking","thinking":"hmm","signature":"sig=="},
                {"type":"redacted_thinking","data":"opaque"},
                {"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"q"}},
                {"type":"web_search_tool_result","tool_use_id":"srvtoolu_1","content":[]},
                {"type":"tool_use","id":"toolu_1","name":"f","input":{"a":[1,2,{"b":null}]}}
              ]},
              {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"ok"},{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j="}}]},
                {"type":"tool_result","tool_use_id":"toolu_2"}
              ]}
            ]}"#;
        let r = parse_request(raw).unwrap();
        assert_eq!(r.max_tokens, None);
        assert!(!r.stream);
        assert_eq!((r.temperature, r.top_p), (Some(0.5), Some(0.9)));
        assert_eq!(r.stop, ["END", "\n\nHuman:"]);
        assert!(is_borrowed(&r.stop[0]) && !is_borrowed(&r.stop[1]));
        assert_eq!(r.reasoning, Some(Reasoning::Budget(2048)));
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.parallel_tool_calls, Some(false));
        let unknown: Vec<&str> = r.unknown.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(unknown, ["top_k", "service_tier", "output_config"]);
        assert_eq!(text_of(&r.system[0]), "be brief");

        let tools: Vec<(&str, bool)> = r
            .tools
            .iter()
            .map(|t| (t.name.as_ref(), t.other.is_some()))
            .collect();
        assert_eq!(
            tools,
            [
                ("f", false),
                ("g", false),
                ("web_search", true),
                ("bash", true)
            ]
        );
        assert_eq!(r.tools[0].description.as_deref(), Some("d"));
        assert!(r.tools[0].cache_control.is_some());
        assert!(r.tools[2].other.unwrap().get().contains("max_uses"));

        let user = &r.messages[0].content;
        assert_eq!(user.len(), 3, "{user:?}");
        assert!(
            matches!(&user[0], Block::Text { cache_control: Some(c), .. } if c.get().contains("1h"))
        );
        assert!(
            matches!(&user[1], Block::Image(Image::Base64 { media_type, data })
            if media_type == "image/png" && data == "iVBORw0KGgo=")
        );
        assert!(
            matches!(&user[2], Block::Image(Image::Url(u)) if u == "https://example.com/a.png")
        );

        let assistant = &r.messages[1].content;
        assert_eq!(assistant.len(), 3, "{assistant:?}");
        assert!(
            matches!(&assistant[0], Block::Thinking { text, signature: Some(s) }
            if text == "hmm" && s == "sig==")
        );
        assert!(matches!(&assistant[1], Block::RedactedThinking { data } if data == "opaque"));
        assert!(
            matches!(&assistant[2], Block::ToolCall { arguments: Arguments::Json(a), .. }
            if a.get() == r#"{"a":[1,2,{"b":null}]}"#)
        );

        let results = &r.messages[2].content;
        assert!(
            matches!(&results[0], Block::ToolResult { content, is_error: false, .. }
            if content.len() == 2)
        );
        assert!(matches!(&results[1], Block::ToolResult { content, .. } if content.is_empty()));
    }

    #[test]
    fn reasoning_forms() {
        let cases = [
            (
                json!({"type": "enabled", "budget_tokens": 1024}),
                json!(null),
                Some(Reasoning::Budget(1024)),
            ),
            (
                json!({"type": "enabled", "budget_tokens": 1024}),
                json!({"effort": "low"}),
                Some(Reasoning::Budget(1024)),
            ),
            (
                json!({"type": "adaptive"}),
                json!(null),
                Some(Reasoning::Adaptive),
            ),
            (
                json!({"type": "adaptive"}),
                json!({"effort": "medium"}),
                Some(Reasoning::Effort(Effort::Medium)),
            ),
            (json!({"type": "disabled"}), json!(null), None),
            (
                json!(null),
                json!({"effort": "max"}),
                Some(Reasoning::Effort(Effort::High)),
            ),
            (
                json!(null),
                json!({"format": {"type": "json_schema"}}),
                None,
            ),
        ];
        for (thinking, config, expected) in cases {
            let raw = serde_json::to_vec(&json!({"model": "m", "thinking": thinking,
                "output_config": config, "messages": [{"role": "user", "content": "x"}]}))
            .unwrap();
            let r = parse_request(&raw).unwrap();
            assert_eq!(r.reasoning, expected, "{thinking} {config}");
        }
        for (choice, expected, parallel) in [
            (json!({"type": "auto"}), ToolChoice::Auto, None),
            (json!({"type": "none"}), ToolChoice::None, None),
            (
                json!({"type": "any", "disable_parallel_tool_use": false}),
                ToolChoice::Required,
                Some(true),
            ),
            (
                json!({"type": "tool", "name": "f"}),
                ToolChoice::Named(Cow::Borrowed("f")),
                None,
            ),
        ] {
            let raw = serde_json::to_vec(&json!({"model": "m", "tool_choice": choice,
                "messages": [{"role": "user", "content": "x"}]}))
            .unwrap();
            let r = parse_request(&raw).unwrap();
            assert_eq!(r.tool_choice, Some(expected));
            assert_eq!(r.parallel_tool_calls, parallel);
        }
    }

    #[test]
    fn a_signature_with_escapes_survives_byte_exact() {
        // JSON escapes in the signature: \/ \u002b \" \\ — the value, not the escapes, is what
        // Anthropic verifies.
        let raw = br#"{"model":"m","messages":[{"role":"user","content":"q"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"a\nb","signature":"Ab\/c\u002bd==\"e\\f"}]},
            {"role":"user","content":"next"}]}"#;
        let r = parse_request(raw).unwrap();
        let Block::Thinking {
            text,
            signature: Some(sig),
        } = &r.messages[1].content[0]
        else {
            panic!()
        };
        assert_eq!(text, "a\nb");
        assert_eq!(sig, "Ab/c+d==\"e\\f");
        let out: Value = serde_json::from_slice(&encode_request(&r, "claude-x", false)).unwrap();
        assert_eq!(
            out["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "a\nb", "signature": "Ab/c+d==\"e\\f"})
        );
        // A plain base64 signature is a slice of the body.
        let raw = br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"EqQBCgIYAhIM+/=="}]}]}"#;
        let r = parse_request(raw).unwrap();
        assert!(matches!(&r.messages[0].content[0],
            Block::Thinking { signature: Some(s), .. } if is_borrowed(s) && s == "EqQBCgIYAhIM+/=="));
    }

    #[test]
    fn requests_round_trip() {
        let body = json!({
            "model": "claude-x",
            "max_tokens": 1000,
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}},
                    {"type": "image", "source": {"type": "url", "url": "https://e.com/i.png"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "redacted_thinking", "data": "r"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
                {"role": "system", "content": [{"type": "text", "text": "mid"}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "bad"}], "is_error": true,
                     "cache_control": {"type": "ephemeral"}}]}
            ],
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
            "temperature": 0.2,
            "top_p": 0.8,
            "stop_sequences": ["X"],
            "thinking": {"type": "enabled", "budget_tokens": 500},
            "metadata": {"user_id": "u1"},
            "stream": true
        });
        let raw = serde_json::to_vec(&body).unwrap();
        let r = parse_request(&raw).unwrap();
        let out: Value = serde_json::from_slice(&encode_request(&r, "claude-x", true)).unwrap();
        assert_eq!(out, body);
        // Key order as the API documents it.
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys[..4], ["model", "max_tokens", "system", "messages"]);
    }

    #[test]
    fn encoding_from_other_formats() {
        // As an OpenAI client's request arrives in the IR.
        let req = Request {
            format: Format::OpenAiChat,
            raw: b"",
            model_span: 0..0,
            model: Cow::Borrowed("flux-auto"),
            stream: false,
            max_tokens: None,
            system: Vec::new(),
            messages: vec![
                Message {
                    role: Role::System,
                    content: vec![Block::Text {
                        text: "lead".into(),
                        cache_control: None,
                    }],
                },
                Message {
                    role: Role::User,
                    content: vec![
                        Block::Text {
                            text: "see".into(),
                            cache_control: None,
                        },
                        Block::Text {
                            text: "".into(),
                            cache_control: None,
                        },
                        Block::Image(Image::Url("data:image/jpeg;base64,/9j/4AAQ".into())),
                        Block::Image(Image::Url("https://e.com/a.png".into())),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Block::Thinking {
                            text: "unsigned".into(),
                            signature: None,
                        },
                        Block::ToolCall {
                            id: "call_1".into(),
                            name: "f".into(),
                            arguments: Arguments::Text("{\"a\": 1}".into()),
                        },
                        Block::ToolCall {
                            id: "call_2".into(),
                            name: "g".into(),
                            arguments: Arguments::Text("".into()),
                        },
                    ],
                },
                Message {
                    role: Role::User,
                    content: vec![
                        Block::Text {
                            text: "and then?".into(),
                            cache_control: None,
                        },
                        Block::ToolResult {
                            call_id: "call_1".into(),
                            content: vec![Block::Text {
                                text: "1".into(),
                                cache_control: None,
                            }],
                            is_error: false,
                            cache_control: None,
                        },
                        Block::ToolResult {
                            call_id: "call_2".into(),
                            content: Vec::new(),
                            is_error: true,
                            cache_control: None,
                        },
                    ],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![Block::Thinking {
                        text: "only".into(),
                        signature: None,
                    }],
                },
                Message {
                    role: Role::System,
                    content: vec![Block::Text {
                        text: "later".into(),
                        cache_control: None,
                    }],
                },
            ],
            tools: vec![
                Tool {
                    name: "f".into(),
                    description: None,
                    parameters: None,
                    strict: Some(true),
                    other: None,
                    cache_control: None,
                },
                Tool {
                    name: "web_search".into(),
                    description: None,
                    parameters: None,
                    strict: None,
                    other: Some(empty_object()),
                    cache_control: None,
                },
            ],
            tool_choice: None,
            parallel_tool_calls: Some(false),
            temperature: None,
            top_p: None,
            stop: vec!["STOP".into()],
            reasoning: Some(Reasoning::Effort(Effort::Minimal)),
            user: Some("u".into()),
            include_usage: true,
            stream_options_span: None,
            preferences: None,
            preferences_cut: None,
            previous_response_id: None,
            unknown: Vec::new(),
        };
        let out: Value =
            serde_json::from_slice(&encode_request(&req, "claude-haiku", true)).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-haiku",
                "max_tokens": 8192,
                "system": [{"type": "text", "text": "lead"}],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                        {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}}]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                        {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "1"}]},
                        {"type": "tool_result", "tool_use_id": "call_2", "is_error": true},
                        {"type": "text", "text": "and then?"}]},
                    {"role": "system", "content": [{"type": "text", "text": "later"}]}
                ],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
                "stop_sequences": ["STOP"],
                "output_config": {"effort": "low"},
                "metadata": {"user_id": "u"},
                "stream": true
            })
        );
    }
}
