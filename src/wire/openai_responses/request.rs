//! Requests: parse the client's body into the IR (validating it), and encode an IR request
//! as this format's body when translating for a provider of this format.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{join, opt_str, reasoning_text, RawItem, RawPart, Str};
use crate::errors::{ErrorKind, FluxError};
use crate::wire::format::Format;
use crate::wire::ir::{
    Arguments, Block, Effort, Image, Message, Reasoning, Request, Role, Tool, ToolChoice,
};
use crate::wire::json::{self, bad, shown};

/// Parse and validate a client request of this format. Malformed input is a 400
/// (`invalid_request`; `empty_prompt` when there is no content at all).
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, FluxError> {
    let members = json::top_level(raw)?;
    let mut req = Request::empty(Format::OpenAiResponses, raw);
    let mut model = None;
    let mut input = None;
    let mut safety_identifier = None;
    for (key, value) in members {
        match key.as_ref() {
            "model" => model = Some(value),
            "input" => input = Some(value),
            "provider" => req.set_preferences(value)?,
            "stream" => {
                req.stream = json::field::<Option<bool>>("stream", value)
                    .map_err(|_| bad("'stream' must be a boolean (true or false)."))?
                    .unwrap_or(false)
            }
            "instructions" => match json::field::<Option<Str<'_>>>("instructions", value)
                .map_err(|_| bad("'instructions' must be a string."))?
            {
                Some(Str(text)) if !text.is_empty() => req.system.push(Block::Text {
                    text,
                    cache_control: None,
                }),
                _ => {}
            },
            "max_output_tokens" => req.max_tokens = json::field(&key, value)?,
            "tools" => tools(value, &mut req.tools)?,
            "tool_choice" => match tool_choice(value)? {
                Some(choice) => req.tool_choice = choice,
                None => req.unknown.push((key, value)),
            },
            "parallel_tool_calls" => req.parallel_tool_calls = json::field(&key, value)?,
            "temperature" => req.temperature = json::field(&key, value)?,
            "top_p" => req.top_p = json::field(&key, value)?,
            "reasoning" => req.reasoning = reasoning(value)?,
            "user" => req.user = json::field::<Option<Str<'_>>>(&key, value)?.map(|s| s.0),
            "safety_identifier" => {
                safety_identifier = json::field::<Option<Str<'_>>>(&key, value)?.map(|s| s.0)
            }
            "previous_response_id" => {
                req.previous_response_id = json::field::<Option<Str<'_>>>(&key, value)?.map(|s| s.0)
            }
            _ => req.unknown.push((key, value)),
        }
    }
    if req.user.is_none() {
        req.user = safety_identifier;
    }

    let model = match model {
        None => None,
        Some(v) if json::is_null(v) => None,
        Some(v) => Some((
            v,
            json::field::<Str<'_>>("model", v)
                .map_err(|_| bad("'model' must be a string."))?
                .0,
        )),
    };
    match model {
        Some((v, m)) if !m.is_empty() => {
            req.model_span = json::span_of(raw, v);
            req.model = m;
        }
        _ => {
            return Err(bad(
                "'model' is required: use flux-auto, a lane alias or a pinned id.",
            ))
        }
    }

    let input = match input {
        Some(v) if !json::is_null(v) => v,
        _ => {
            return Err(bad(
                "'input' is required: a string or an array of input items.",
            ))
        }
    };
    let has_content = match input.get().as_bytes().first() {
        Some(b'"') => {
            let Str(text) = json::field("input", input)?;
            if text.trim().is_empty() {
                return Err(empty("'input' is an empty string."));
            }
            req.messages.push(Message {
                role: Role::User,
                content: vec![Block::Text {
                    text,
                    cache_control: None,
                }],
            });
            true
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = json::field("input", input)?;
            if items.is_empty() {
                return Err(empty("'input' has no items."));
            }
            let mut has_content = false;
            for (i, item) in items.into_iter().enumerate() {
                has_content |= input_item(i, item, &mut req.messages)?;
            }
            has_content
        }
        _ => return Err(bad("'input' must be a string or an array of input items.")),
    };
    if !has_content {
        return Err(empty("add input content."));
    }
    Ok(req)
}

/// Deserialize a nested value; the error names it (the name is built only on error).
fn read<'a, T: Deserialize<'a>>(
    v: &'a RawValue,
    name: impl FnOnce() -> String,
) -> Result<T, FluxError> {
    serde_json::from_str(v.get()).map_err(|e| {
        let e = e.to_string();
        let e = e.split(" at line").next().unwrap_or(&e);
        bad(format!("'{}' is invalid: {e}.", name()))
    })
}

fn empty(why: &str) -> FluxError {
    FluxError::new(
        ErrorKind::EmptyPrompt,
        format!("The prompt is empty: {why}"),
    )
}

/// Whether a raw value is a JSON object (raw values start at their first token).
fn is_object(v: &RawValue) -> bool {
    v.get().starts_with('{')
}

/// Read one input item into the conversation. Returns whether it carried content.
fn input_item<'a>(
    i: usize,
    item: &'a RawValue,
    messages: &mut Vec<Message<'a>>,
) -> Result<bool, FluxError> {
    if !is_object(item) {
        return Err(bad(format!(
            "input[{i}] must be an object (a message or another input item)."
        )));
    }
    let fields: RawItem<'a> = read(item, || format!("input[{i}]"))?;
    let kind = match fields.kind {
        None => None,
        Some(k) if json::is_null(k) => None,
        Some(k) => Some(
            opt_str(Some(k)).ok_or_else(|| bad(format!("input[{i}].type must be a string.")))?,
        ),
    };
    match kind.as_deref() {
        // An item with a role and no type is a message (the "easy input message").
        Some("message") => message(i, &fields, messages),
        None if fields.role.is_some() => message(i, &fields, messages),
        None => Err(bad(format!(
            "input[{i}] needs a 'type' (or a 'role' for a message)."
        ))),
        Some("function_call") => {
            let call_id = required_str(i, "call_id", fields.call_id)?;
            let name = required_str(i, "name", fields.name)?;
            let arguments = match fields.arguments {
                None => Cow::Borrowed(""),
                Some(a) if json::is_null(a) => Cow::Borrowed(""),
                Some(a) => read::<Str<'a>>(a, || format!("input[{i}].arguments"))?.0,
            };
            assistant(messages).push(Block::ToolCall {
                id: call_id,
                name,
                arguments: Arguments::Text(arguments),
            });
            Ok(true)
        }
        Some("function_call_output") => {
            let call_id = required_str(i, "call_id", fields.call_id)?;
            let content = match fields.output {
                Some(o) if o.get().starts_with('"') => {
                    let Str(text) = read(o, || format!("input[{i}].output"))?;
                    vec![Block::Text {
                        text,
                        cache_control: None,
                    }]
                }
                Some(o) if o.get().starts_with('[') => {
                    let mut blocks = Vec::new();
                    parts(i, "output", o, &mut blocks)?;
                    blocks
                }
                _ => {
                    return Err(bad(format!(
                        "input[{i}].output must be a string or an array of content parts."
                    )))
                }
            };
            let result = Block::ToolResult {
                call_id,
                content,
                is_error: false,
                cache_control: None,
            };
            // Consecutive outputs share one user message.
            match messages.last_mut() {
                Some(m)
                    if m.role == Role::User
                        && m.content
                            .iter()
                            .all(|b| matches!(b, Block::ToolResult { .. })) =>
                {
                    m.content.push(result)
                }
                _ => messages.push(Message {
                    role: Role::User,
                    content: vec![result],
                }),
            }
            Ok(true)
        }
        Some("reasoning") => {
            let text = reasoning_text(fields.summary, fields.content);
            let encrypted = opt_str(fields.encrypted_content).filter(|e| !e.is_empty());
            let block = match (text.is_empty(), encrypted) {
                (false, signature) => Block::Thinking { text, signature },
                (true, Some(data)) => Block::RedactedThinking { data },
                (true, None) => return Ok(false),
            };
            assistant(messages).push(block);
            Ok(false)
        }
        // item_reference, web_search_call, custom_tool_call, compaction, …: the provider's
        // business on passthrough, dropped when translating. Not an error, and content.
        Some(_) => Ok(true),
    }
}

/// The assistant message that assistant-side items join: the last message when it is the
/// assistant's, a new one otherwise.
fn assistant<'a, 'm>(messages: &'m mut Vec<Message<'a>>) -> &'m mut Vec<Block<'a>> {
    if messages.last().map(|m| m.role) != Some(Role::Assistant) {
        messages.push(Message {
            role: Role::Assistant,
            content: Vec::new(),
        });
    }
    let last = messages.len() - 1;
    &mut messages[last].content
}

fn required_str<'a>(
    i: usize,
    name: &str,
    v: Option<&'a RawValue>,
) -> Result<Cow<'a, str>, FluxError> {
    match v {
        Some(v) if !json::is_null(v) => {
            opt_str(Some(v)).ok_or_else(|| bad(format!("input[{i}].{name} must be a string.")))
        }
        _ => Err(bad(format!("input[{i}].{name} is required."))),
    }
}

fn message<'a>(
    i: usize,
    fields: &RawItem<'a>,
    messages: &mut Vec<Message<'a>>,
) -> Result<bool, FluxError> {
    let role = match opt_str(fields.role).as_deref() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system" | "developer") => Role::System,
        Some(other) => {
            return Err(bad(format!(
                "input[{i}].role '{}' is not one of user, assistant, system, developer.",
                shown(other)
            )))
        }
        None => return Err(bad(format!("input[{i}].role is required."))),
    };
    let mut content = Vec::new();
    let has_content;
    match fields.content {
        Some(c) if c.get().starts_with('"') => {
            let Str(text) = read(c, || format!("input[{i}].content"))?;
            has_content = !text.trim().is_empty();
            content.push(Block::Text {
                text,
                cache_control: None,
            });
        }
        Some(c) if c.get().starts_with('[') => has_content = parts(i, "content", c, &mut content)?,
        Some(_) => {
            return Err(bad(format!(
                "input[{i}].content must be a string or an array of content parts."
            )))
        }
        None => return Err(bad(format!("input[{i}].content is required."))),
    }
    if role == Role::Assistant {
        // Reasoning and function calls of the same turn join this message.
        assistant(messages).append(&mut content);
    } else {
        messages.push(Message { role, content });
    }
    Ok(has_content)
}

/// Read content parts into blocks. Returns whether any carried content.
fn parts<'a>(
    i: usize,
    field: &str,
    raw: &'a RawValue,
    out: &mut Vec<Block<'a>>,
) -> Result<bool, FluxError> {
    let list: Vec<&'a RawValue> = read(raw, || format!("input[{i}].{field}"))?;
    let mut has_content = false;
    for (j, part) in list.into_iter().enumerate() {
        if !is_object(part) {
            return Err(bad(format!("input[{i}].{field}[{j}] must be an object.")));
        }
        let p: RawPart<'a> = read(part, || format!("input[{i}].{field}[{j}]"))?;
        let Some(kind) = opt_str(p.kind) else {
            return Err(bad(format!("input[{i}].{field}[{j}] needs a 'type'.")));
        };
        match kind.as_ref() {
            "input_text" | "output_text" | "text" | "summary_text" => {
                let text = opt_str(p.text).ok_or_else(|| {
                    bad(format!("input[{i}].{field}[{j}].text must be a string."))
                })?;
                has_content |= !text.trim().is_empty();
                out.push(Block::Text {
                    text,
                    cache_control: None,
                });
            }
            "refusal" => {
                if let Some(text) = opt_str(p.refusal) {
                    has_content |= !text.trim().is_empty();
                    out.push(Block::Text {
                        text,
                        cache_control: None,
                    });
                }
            }
            "input_image" => {
                has_content = true;
                // `image_url` is a URL or a data: URL; an uploaded `file_id` has no IR form
                // and only reaches a Responses provider (passthrough).
                if let Some(url) = opt_str(p.image_url).filter(|u| !u.is_empty()) {
                    out.push(Block::Image(Image::Url(url)));
                }
            }
            // input_file, input_audio, …: content the provider judges.
            _ => has_content = true,
        }
    }
    Ok(has_content)
}

/// A tool object, every field raw.
#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    description: Option<&'a RawValue>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow, default)]
    strict: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
}

fn tools<'a>(raw: &'a RawValue, out: &mut Vec<Tool<'a>>) -> Result<(), FluxError> {
    if json::is_null(raw) {
        return Ok(());
    }
    let list: Vec<&'a RawValue> =
        json::field("tools", raw).map_err(|_| bad("'tools' must be an array of tools."))?;
    for (i, tool) in list.into_iter().enumerate() {
        one_tool(&format!("tools[{i}]"), tool, out, true)?;
    }
    Ok(())
}

fn one_tool<'a>(
    path: &str,
    raw: &'a RawValue,
    out: &mut Vec<Tool<'a>>,
    nest: bool,
) -> Result<(), FluxError> {
    if !is_object(raw) {
        return Err(bad(format!("{path} must be an object.")));
    }
    let t: RawTool<'a> = read(raw, || path.to_string())?;
    let kind = opt_str(t.kind);
    let name = opt_str(t.name);
    if kind.as_deref() == Some("function") {
        let name = name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(format!("{path}.name is required for a function tool.")))?;
        out.push(Tool {
            name,
            description: opt_str(t.description),
            parameters: t.parameters.filter(|p| !json::is_null(p)),
            strict: t
                .strict
                .and_then(|s| serde_json::from_str::<Option<bool>>(s.get()).ok())
                .flatten(),
            other: None,
            cache_control: None,
        });
        return Ok(());
    }
    let Some(label) = name.or(kind) else {
        return Err(bad(format!("{path} needs a 'type'.")));
    };
    out.push(Tool {
        name: label,
        description: opt_str(t.description),
        parameters: None,
        strict: None,
        other: Some(raw),
        cache_control: None,
    });
    // A namespace's function tools are also plain tools, so a translation can offer them.
    if let (true, Some(nested)) = (nest, t.tools) {
        if let Ok(list) = serde_json::from_str::<Vec<&'a RawValue>>(nested.get()) {
            for (j, tool) in list.into_iter().enumerate() {
                let mut inner = Vec::new();
                one_tool(&format!("{path}.tools[{j}]"), tool, &mut inner, false)?;
                out.extend(inner.into_iter().filter(|t| t.other.is_none()));
            }
        }
    }
    Ok(())
}

/// `tool_choice`. `Ok(None)`: a form the IR does not model (`allowed_tools`, a hosted
/// tool), kept as an unknown field.
#[allow(clippy::type_complexity)]
fn tool_choice<'a>(raw: &'a RawValue) -> Result<Option<Option<ToolChoice<'a>>>, FluxError> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        name: Option<Str<'a>>,
    }
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(Some(None)), // null
        Some(b'"') => {
            let Str(s) = json::field("tool_choice", raw)?;
            match s.as_ref() {
                "auto" => Ok(Some(Some(ToolChoice::Auto))),
                "none" => Ok(Some(Some(ToolChoice::None))),
                "required" => Ok(Some(Some(ToolChoice::Required))),
                other => Err(bad(format!(
                    "'tool_choice' '{}' is not one of auto, none, required (or a tool object).",
                    shown(other)
                ))),
            }
        }
        Some(b'{') => {
            let n: Named<'a> = json::field("tool_choice", raw)?;
            match (n.kind.as_ref(), n.name) {
                ("function", Some(Str(name))) => Ok(Some(Some(ToolChoice::Named(name)))),
                ("function", None) => Err(bad("'tool_choice' of type function needs a 'name'.")),
                _ => Ok(None),
            }
        }
        _ => Err(bad(
            "'tool_choice' must be auto, none, required or a tool object.",
        )),
    }
}

fn reasoning(raw: &RawValue) -> Result<Option<Reasoning>, FluxError> {
    #[derive(Deserialize)]
    struct R<'a> {
        #[serde(borrow, default)]
        effort: Option<Cow<'a, str>>,
    }
    let r: Option<R<'_>> = json::field("reasoning", raw)?;
    Ok(match r.and_then(|r| r.effort).as_deref() {
        Some("minimal") => Some(Effort::Minimal),
        Some("low") => Some(Effort::Low),
        Some("medium") => Some(Effort::Medium),
        Some("high" | "xhigh" | "max") => Some(Effort::High),
        _ => None, // none, null, or a level the IR does not know
    }
    .map(Reasoning::Effort))
}

// ---------------------------------------------------------------------------------------
// Encoding

#[derive(Serialize)]
struct Body<'r> {
    model: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    instructions: Option<Cow<'r, str>>,
    input: Vec<Item<'r>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<FunctionTool<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Choice<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<ReasoningOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_response_id: Option<&'r str>,
    store: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    include: Option<[&'static str; 1]>,
    stream: bool,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Item<'r> {
    Message {
        role: &'static str,
        content: Vec<Part<'r>>,
    },
    FunctionCall {
        call_id: &'r str,
        name: &'r str,
        arguments: &'r str,
    },
    FunctionCallOutput {
        call_id: &'r str,
        output: Output<'r>,
    },
    Reasoning {
        summary: Vec<Summary<'r>>,
        encrypted_content: &'r str,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Output<'r> {
    Text(Cow<'r, str>),
    Parts(Vec<Part<'r>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'r> {
    InputText {
        text: &'r str,
    },
    OutputText {
        text: &'r str,
        annotations: [(); 0],
    },
    InputImage {
        image_url: Cow<'r, str>,
        detail: &'static str,
    },
}

#[derive(Serialize)]
struct Summary<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'r str,
}

#[derive(Serialize)]
struct FunctionTool<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    parameters: &'r RawValue,
    strict: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Choice<'r> {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        name: &'r str,
    },
}

#[derive(Serialize)]
struct ReasoningOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    effort: Option<&'static str>,
    summary: &'static str,
}

/// The API's smallest `max_output_tokens`: a smaller value is a 400 from OpenAI.
const MIN_OUTPUT_TOKENS: u64 = 16;
/// The longest `user` / `safety_identifier` the API accepts.
const MAX_USER_LEN: usize = 64;

fn empty_schema() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_string())
            .expect("a constant JSON object")
    })
}

fn image_url<'r>(image: &'r Image<'_>) -> Cow<'r, str> {
    match image {
        Image::Url(u) => Cow::Borrowed(u.as_ref()),
        Image::Base64 { media_type, data } => {
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
    }
}

fn arguments<'r>(a: &'r Arguments<'_>) -> &'r str {
    match a {
        Arguments::Text(t) => t,
        Arguments::Json(raw) => raw.get(),
    }
}

/// Write the request as this format's body for a provider, with `model` as the provider's
/// id and `stream` as asked. Only used when the client spoke another format.
pub fn encode_request(req: &Request<'_>, model: &str, stream: bool) -> Vec<u8> {
    let instructions = join(
        req.system
            .iter()
            .filter_map(|b| match b {
                Block::Text { text, .. } if !text.is_empty() => Some(Cow::Borrowed(text.as_ref())),
                _ => None,
            })
            .collect(),
        "\n\n",
    );
    let mut input = Vec::new();
    let mut thinking = false;
    for m in &req.messages {
        thinking |= message_items(m, &mut input);
    }
    let tools: Vec<FunctionTool<'_>> = req
        .tools
        .iter()
        .filter(|t| t.other.is_none())
        .map(|t| FunctionTool {
            kind: "function",
            name: &t.name,
            description: t.description.as_deref(),
            parameters: match t.parameters {
                Some(p) => p,
                None => empty_schema(),
            },
            // The Responses API makes function tools strict unless told otherwise, which
            // refuses schemas written for other formats.
            strict: t.strict.unwrap_or(false),
        })
        .collect();
    let tool_choice = match (&req.tool_choice, tools.is_empty()) {
        (_, true) | (None, _) => None,
        (Some(ToolChoice::Auto), _) => Some(Choice::Mode("auto")),
        (Some(ToolChoice::None), _) => Some(Choice::Mode("none")),
        (Some(ToolChoice::Required), _) => Some(Choice::Mode("required")),
        (Some(ToolChoice::Named(name)), _) => Some(Choice::Named {
            kind: "function",
            name,
        }),
    };
    let reasoning = req.reasoning.map(|r| ReasoningOut {
        effort: match r {
            Reasoning::Effort(Effort::Minimal) => Some("minimal"),
            Reasoning::Effort(Effort::Low) => Some("low"),
            Reasoning::Effort(Effort::Medium) => Some("medium"),
            Reasoning::Effort(Effort::High) => Some("high"),
            Reasoning::Budget(n) if n < 4_096 => Some("low"),
            Reasoning::Budget(n) if n < 16_384 => Some("medium"),
            Reasoning::Budget(_) => Some("high"),
            Reasoning::Adaptive => None,
        },
        summary: "auto",
    });
    let include = (reasoning.is_some() || thinking).then_some(["reasoning.encrypted_content"]);
    let body = Body {
        model,
        instructions: (!instructions.is_empty()).then_some(instructions),
        input,
        parallel_tool_calls: if tools.is_empty() {
            None
        } else {
            req.parallel_tool_calls
        },
        tools,
        tool_choice,
        max_output_tokens: req.max_tokens.map(|n| n.max(MIN_OUTPUT_TOKENS)),
        temperature: req.temperature,
        top_p: req.top_p,
        reasoning,
        user: req.user.as_deref().filter(|u| u.len() <= MAX_USER_LEN),
        previous_response_id: req.previous_response_id.as_deref(),
        store: false,
        include,
        stream,
    };
    serde_json::to_vec(&body).expect("the request body always serializes")
}

/// The items of one IR message. Returns whether it had thinking to send back.
fn message_items<'r>(m: &'r Message<'_>, out: &mut Vec<Item<'r>>) -> bool {
    let mut thinking = false;
    let mut parts: Vec<Part<'r>> = Vec::new();
    let (role, assistant) = match m.role {
        Role::System => ("developer", false),
        Role::User => ("user", false),
        Role::Assistant => ("assistant", true),
    };
    let flush = |parts: &mut Vec<Part<'r>>, out: &mut Vec<Item<'r>>| {
        if !parts.is_empty() {
            out.push(Item::Message {
                role,
                content: std::mem::take(parts),
            });
        }
    };
    // Tool results answer the calls just before them: they go first.
    for b in &m.content {
        if let Block::ToolResult {
            call_id, content, ..
        } = b
        {
            out.push(Item::FunctionCallOutput {
                call_id,
                output: tool_output(content),
            });
        }
    }
    for b in &m.content {
        match b {
            Block::Text { text, .. } => parts.push(if assistant {
                Part::OutputText {
                    text,
                    annotations: [],
                }
            } else {
                Part::InputText { text }
            }),
            Block::Image(image) if !assistant => parts.push(Part::InputImage {
                image_url: image_url(image),
                detail: "auto",
            }),
            Block::Image(_) | Block::ToolResult { .. } => {}
            Block::ToolCall {
                id,
                name,
                arguments: a,
            } => {
                flush(&mut parts, out);
                out.push(Item::FunctionCall {
                    call_id: id,
                    name,
                    arguments: arguments(a),
                });
            }
            Block::Thinking {
                text,
                signature: Some(signature),
            } => {
                flush(&mut parts, out);
                thinking = true;
                out.push(Item::Reasoning {
                    summary: if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![Summary {
                            kind: "summary_text",
                            text,
                        }]
                    },
                    encrypted_content: signature,
                });
            }
            Block::Thinking { .. } => {} // no signature: nothing the provider can verify
            Block::RedactedThinking { data } => {
                flush(&mut parts, out);
                thinking = true;
                out.push(Item::Reasoning {
                    summary: Vec::new(),
                    encrypted_content: data,
                });
            }
        }
    }
    flush(&mut parts, out);
    thinking
}

fn tool_output<'r>(content: &'r [Block<'_>]) -> Output<'r> {
    if content.iter().any(|b| matches!(b, Block::Image(_))) {
        return Output::Parts(
            content
                .iter()
                .filter_map(|b| match b {
                    Block::Text { text, .. } => Some(Part::InputText { text }),
                    Block::Image(image) => Some(Part::InputImage {
                        image_url: image_url(image),
                        detail: "auto",
                    }),
                    _ => None,
                })
                .collect(),
        );
    }
    Output::Text(join(
        content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text, .. } => Some(Cow::Borrowed(text.as_ref())),
                _ => None,
            })
            .collect(),
        "\n",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn codex(n: u8) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/clients/codex-0.169.0-{n}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let capture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        serde_json::to_vec(&capture["body"]).unwrap()
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn roles(req: &Request<'_>) -> Vec<Role> {
        req.messages.iter().map(|m| m.role).collect()
    }

    fn text_of<'b>(b: &'b Block<'_>) -> &'b str {
        match b {
            Block::Text { text, .. } => text,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn codex_bodies_parse() {
        for n in 1..=3 {
            let raw = codex(n);
            let req = parse_request(&raw).unwrap_or_else(|e| panic!("codex {n}: {e}"));
            assert_eq!(req.format, Format::OpenAiResponses);
            assert_eq!(req.model, "flux-auto");
            assert!(matches!(req.model, Cow::Borrowed(_)));
            assert_eq!(&raw[req.model_span.clone()], b"\"flux-auto\"");
            assert!(req.stream);
            assert!(req.system.is_empty(), "Codex sends no instructions");
            // Two developer items, the environment context and the prompt.
            assert_eq!(
                roles(&req)[..4],
                [Role::System, Role::System, Role::User, Role::User]
            );
            // 9 tools: 7 functions, a namespace of 5 functions (flattened beside it) and
            // web_search.
            assert_eq!(req.tools.len(), 7 + 1 + 5 + 1);
            let other: Vec<&str> = req
                .tools
                .iter()
                .filter(|t| t.other.is_some())
                .map(|t| t.name.as_ref())
                .collect();
            assert_eq!(other, ["multi_agent_v1", "web_search"]);
            let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_ref()).collect();
            for name in ["exec_command", "update_goal", "spawn_agent", "wait_agent"] {
                assert!(names.contains(&name), "codex {n}: {name}");
            }
            let exec = &req.tools[0];
            assert_eq!(exec.strict, Some(false));
            assert!(exec.parameters.unwrap().get().starts_with('{'));
            assert!(exec.description.is_some());
            assert_eq!(req.tool_choice, Some(ToolChoice::Auto));
            assert_eq!(req.parallel_tool_calls, Some(true));
            assert_eq!(
                req.reasoning, None,
                "reasoning: {{summary: auto}} has no effort"
            );
            let unknown: Vec<&str> = req.unknown.iter().map(|(k, _)| k.as_ref()).collect();
            assert_eq!(
                unknown,
                ["store", "include", "prompt_cache_key", "client_metadata"]
            );
        }
        let raw = codex(1);
        let req = parse_request(&raw).unwrap();
        // Strings without escapes are slices of the body.
        assert!(matches!(
            &req.messages[3].content[0],
            Block::Text {
                text: Cow::Borrowed("say hi"),
                ..
            }
        ));
        assert!(matches!(req.tools[0].name, Cow::Borrowed("exec_command")));
        let raw = codex(2);
        let req = parse_request(&raw).unwrap();
        assert_eq!(req.messages.len(), 4);
        assert_eq!(
            text_of(&req.messages[3].content[0]),
            "Run the command, please. mock:call=exec_command"
        );
    }

    #[test]
    fn codex_tool_round_trip_parses_into_a_call_and_its_result() {
        let raw = codex(3);
        let req = parse_request(&raw).unwrap();
        assert_eq!(
            roles(&req),
            [
                Role::System,
                Role::System,
                Role::User,
                Role::User,
                Role::Assistant,
                Role::User
            ]
        );
        match &req.messages[4].content[..] {
            [Block::ToolCall {
                id,
                name,
                arguments: Arguments::Text(args),
            }] => {
                assert_eq!(id, "call_000007mock");
                assert_eq!(name, "exec_command");
                assert_eq!(args, "{\"cmd\": \"echo hi\"}");
            }
            other => panic!("{other:?}"),
        }
        match &req.messages[5].content[..] {
            [Block::ToolResult {
                call_id,
                content,
                is_error: false,
                ..
            }] => {
                assert_eq!(call_id, "call_000007mock");
                assert_eq!(content.len(), 1);
                assert!(text_of(&content[0]).starts_with("lorem ipsum"));
            }
            other => panic!("{other:?}"),
        }
        // And it translates back into the same items.
        let encoded: Value =
            serde_json::from_slice(&encode_request(&req, "gpt-5.4", true)).unwrap();
        let input = encoded["input"].as_array().unwrap();
        assert_eq!(input.len(), 6);
        assert_eq!(input[0]["role"], "developer");
        assert_eq!(
            input[4],
            json!({"type": "function_call", "call_id": "call_000007mock",
                   "name": "exec_command", "arguments": "{\"cmd\": \"echo hi\"}"})
        );
        assert_eq!(input[5]["type"], "function_call_output");
        assert_eq!(input[5]["call_id"], "call_000007mock");
        // Only the function tools go to a provider of another client's format.
        assert_eq!(encoded["tools"].as_array().unwrap().len(), 12);
    }

    #[test]
    fn string_input_and_instructions() {
        let raw = body(
            json!({"model": "m", "input": "hello", "instructions": "be brief",
                              "max_output_tokens": 300, "temperature": 0.2, "top_p": 0.9,
                              "user": "u1", "previous_response_id": "resp_1",
                              "reasoning": {"effort": "high", "summary": "auto"},
                              "tool_choice": {"type": "function", "name": "f"},
                              "metadata": {"a": "b"}, "text": {"format": {"type": "text"}}}),
        );
        let req = parse_request(&raw).unwrap();
        assert_eq!(roles(&req), [Role::User]);
        assert_eq!(text_of(&req.messages[0].content[0]), "hello");
        assert_eq!(text_of(&req.system[0]), "be brief");
        assert_eq!(req.max_tokens, Some(300));
        assert_eq!(req.temperature, Some(0.2));
        assert_eq!(req.top_p, Some(0.9));
        assert_eq!(req.user.as_deref(), Some("u1"));
        assert_eq!(req.previous_response_id.as_deref(), Some("resp_1"));
        assert_eq!(req.reasoning, Some(Reasoning::Effort(Effort::High)));
        assert_eq!(req.tool_choice, Some(ToolChoice::Named(Cow::Borrowed("f"))));
        let unknown: Vec<&str> = req.unknown.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(unknown, ["metadata", "text"]);
        // safety_identifier stands in for user.
        let raw = body(json!({"model": "m", "input": "x", "safety_identifier": "s1"}));
        assert_eq!(parse_request(&raw).unwrap().user.as_deref(), Some("s1"));
    }

    #[test]
    fn items_merge_into_turns() {
        let raw = body(json!({"model": "m", "input": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                                         {"type": "input_image", "file_id": "file_1"},
                                         {"type": "input_audio", "input_audio": {}}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "a"},
                                                            {"type": "summary_text", "text": "b"}],
             "encrypted_content": "enc"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "calling", "annotations": []},
                {"type": "refusal", "refusal": "no"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r1"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "r2"}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {}},
            {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
            {"type": "reasoning", "summary": []},
            {"type": "item_reference", "id": "x"},
            {"role": "developer", "content": "mid"},
            {"type": "message", "role": "user", "content": "next"}
        ]}));
        let req = parse_request(&raw).unwrap();
        assert_eq!(
            roles(&req),
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::System,
                Role::User
            ]
        );
        let user = &req.messages[1].content;
        assert_eq!(user.len(), 2, "{user:?}");
        assert!(
            matches!(&user[1], Block::Image(Image::Url(u)) if u == "data:image/png;base64,AAAA")
        );
        let a = &req.messages[2].content;
        assert!(
            matches!(&a[0], Block::Thinking { text, signature: Some(s) } if text == "a\n\nb" && s == "enc")
        );
        assert_eq!(text_of(&a[1]), "calling");
        assert_eq!(text_of(&a[2]), "no");
        assert!(matches!(&a[3], Block::ToolCall { id, .. } if id == "c1"));
        assert!(matches!(&a[4], Block::ToolCall { id, name, .. } if id == "c2" && name == "g"));
        let results = &req.messages[3].content;
        assert_eq!(results.len(), 2);
        assert!(
            matches!(&results[1], Block::ToolResult { call_id, content, .. } if call_id == "c2" && text_of(&content[0]) == "r2")
        );
        assert!(
            matches!(&req.messages[4].content[..], [Block::RedactedThinking { data }] if data == "opaque")
        );
    }

    #[test]
    fn tools_of_every_kind() {
        let raw = body(json!({"model": "m", "input": "x", "tools": [
            {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true},
            {"type": "function", "name": "g"},
            {"type": "namespace", "name": "ns", "description": "n", "tools": [
                {"type": "function", "name": "inner", "parameters": {}},
                {"type": "web_search"}]},
            {"type": "web_search", "external_web_access": false},
            {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}
        ]}));
        let req = parse_request(&raw).unwrap();
        let summary: Vec<(&str, bool)> = req
            .tools
            .iter()
            .map(|t| (t.name.as_ref(), t.other.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                ("f", false),
                ("g", false),
                ("ns", true),
                ("inner", false),
                ("web_search", true),
                ("apply_patch", true)
            ]
        );
        assert_eq!(req.tools[0].strict, Some(true));
        assert_eq!(req.tools[0].description.as_deref(), Some("d"));
        assert_eq!(
            req.tools[0].parameters.unwrap().get(),
            r#"{"type":"object"}"#
        );
        assert!(req.tools[1].parameters.is_none());
    }

    #[test]
    fn shape_errors_are_400_naming_the_field() {
        let cases = [
            (json!({"input": "x"}), "'model' is required"),
            (json!({"model": "", "input": "x"}), "'model' is required"),
            (
                json!({"model": 7, "input": "x"}),
                "'model' must be a string",
            ),
            (json!({"model": "m"}), "'input' is required"),
            (json!({"model": "m", "input": null}), "'input' is required"),
            (
                json!({"model": "m", "input": 5}),
                "'input' must be a string or an array",
            ),
            (
                json!({"model": "m", "input": {}}),
                "'input' must be a string or an array",
            ),
            (
                json!({"model": "m", "input": "x", "stream": "yes"}),
                "'stream' must be a boolean",
            ),
            (
                json!({"model": "m", "input": ["hi"]}),
                "input[0] must be an object",
            ),
            (
                json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}),
                "input[0].role 'wizard' is not one of",
            ),
            (
                json!({"model": "m", "input": [{"type": "message", "content": "x"}]}),
                "input[0].role is required",
            ),
            (
                json!({"model": "m", "input": [{"role": "user"}]}),
                "input[0].content is required",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": 5}]}),
                "input[0].content must be a string or an array",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [7]}]}),
                "input[0].content[0] must be an object",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"text": "x"}]}]}),
                "input[0].content[0] needs a 'type'",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
                "input[0].content[0].text must be a string",
            ),
            (
                json!({"model": "m", "input": [{"content": "x"}]}),
                "input[0] needs a 'type'",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
                "input[0].call_id is required",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}),
                "input[0].output must be a string or an array",
            ),
            (
                json!({"model": "m", "input": "x", "tools": {}}),
                "'tools' must be an array",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
                "tools[0].name is required",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": "sometimes"}),
                "'tool_choice' 'sometimes' is not one of",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": "many"}),
                "'max_output_tokens' is invalid",
            ),
            (
                json!({"model": "m", "input": "x", "instructions": 3}),
                "'instructions' must be a string",
            ),
        ];
        for (v, expect) in cases {
            let raw = body(v.clone());
            let e = parse_request(&raw).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{v}");
            assert!(e.message.contains(expect), "{v}: {}", e.message);
        }
        let e = parse_request(br#"{"model":"m","input":"x","model":"n"}"#).unwrap_err();
        assert!(
            e.message.contains("appears more than once"),
            "{}",
            e.message
        );
    }

    #[test]
    fn empty_prompts_are_empty_prompt() {
        for v in [
            json!({"model": "m", "input": ""}),
            json!({"model": "m", "input": "  \n"}),
            json!({"model": "m", "input": []}),
            json!({"model": "m", "input": [{"role": "user", "content": ""}]}),
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": " "}]}]}),
            json!({"model": "m", "input": [{"type": "reasoning", "summary": [], "encrypted_content": "e"}]}),
        ] {
            let raw = body(v.clone());
            let e = parse_request(&raw).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "empty_prompt"), "{v}");
        }
        // Unknown item and part types are content the provider judges, not errors.
        for v in [
            json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
        ] {
            assert!(parse_request(&body(v.clone())).is_ok(), "{v}");
        }
    }

    #[test]
    fn encodes_a_translated_request() {
        // What an Anthropic client's request looks like once parsed.
        let schema = RawValue::from_string(
            r#"{"type":"object","properties":{"p":{"type":"string"}}}"#.into(),
        )
        .unwrap();
        let input = RawValue::from_string(r#"{"p": "x"}"#.into()).unwrap();
        let web =
            RawValue::from_string(r#"{"type":"web_search_20250305","name":"web_search"}"#.into())
                .unwrap();
        let text = |t: &'static str| Block::Text {
            text: Cow::Borrowed(t),
            cache_control: None,
        };
        let req = Request {
            format: Format::Anthropic,
            raw: b"",
            model_span: 0..0,
            model: Cow::Borrowed("flux-auto"),
            stream: true,
            max_tokens: Some(1),
            system: vec![text("You are Claude Code."), text("Be terse.")],
            messages: vec![
                Message { role: Role::User, content: vec![text("hi"), Block::Image(Image::Base64 {
                    media_type: Cow::Borrowed("image/png"), data: Cow::Borrowed("AAAA") })] },
                Message { role: Role::System, content: vec![text("env info")] },
                Message { role: Role::Assistant, content: vec![
                    Block::Thinking { text: Cow::Borrowed("hmm"), signature: Some(Cow::Borrowed("sig")) },
                    Block::Thinking { text: Cow::Borrowed("unsigned"), signature: None },
                    Block::RedactedThinking { data: Cow::Borrowed("red") },
                    text("Reading."),
                    Block::ToolCall { id: Cow::Borrowed("toolu_1"), name: Cow::Borrowed("Read"),
                                      arguments: Arguments::Json(&input) },
                ] },
                Message { role: Role::User, content: vec![
                    text("and then?"),
                    Block::ToolResult { call_id: Cow::Borrowed("toolu_1"),
                        content: vec![text("line 1"), text("line 2")], is_error: true, cache_control: None },
                ] },
            ],
            tools: vec![
                Tool { name: Cow::Borrowed("Read"), description: Some(Cow::Borrowed("reads")),
                       parameters: Some(&schema), strict: None, other: None, cache_control: None },
                Tool { name: Cow::Borrowed("web_search"), description: None, parameters: None,
                       strict: None, other: Some(&web), cache_control: None },
                Tool { name: Cow::Borrowed("Noop"), description: None, parameters: None,
                       strict: Some(true), other: None, cache_control: None },
            ],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(false),
            temperature: None,
            top_p: Some(0.5),
            stop: vec![Cow::Borrowed("END")],
            reasoning: Some(Reasoning::Budget(10_000)),
            user: Some(Cow::Borrowed("{\"device_id\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}")),
            include_usage: false,
            stream_options_span: None,
            preferences: None,
            preferences_cut: None,
            previous_response_id: None,
            unknown: vec![],
        };
        let got: Value = serde_json::from_slice(&encode_request(&req, "gpt-5.4", true)).unwrap();
        assert_eq!(
            got,
            json!({
                "model": "gpt-5.4",
                "instructions": "You are Claude Code.\n\nBe terse.",
                "input": [
                    {"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": "hi"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"}]},
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "env info"}]},
                    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}], "encrypted_content": "sig"},
                    {"type": "reasoning", "summary": [], "encrypted_content": "red"},
                    {"type": "message", "role": "assistant", "content": [
                        {"type": "output_text", "text": "Reading.", "annotations": []}]},
                    {"type": "function_call", "call_id": "toolu_1", "name": "Read", "arguments": "{\"p\": \"x\"}"},
                    {"type": "function_call_output", "call_id": "toolu_1", "output": "line 1\nline 2"},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and then?"}]}
                ],
                "tools": [
                    {"type": "function", "name": "Read", "description": "reads",
                     "parameters": {"type": "object", "properties": {"p": {"type": "string"}}}, "strict": false},
                    {"type": "function", "name": "Noop", "parameters": {"type": "object", "properties": {}}, "strict": true}
                ],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "max_output_tokens": 16,
                "top_p": 0.5,
                "reasoning": {"effort": "medium", "summary": "auto"},
                "store": false,
                "include": ["reasoning.encrypted_content"],
                "stream": true
            })
        );
    }

    #[test]
    fn plain_requests_encode_without_reasoning_or_tools() {
        let raw = body(json!({"model": "m", "input": "hi", "tool_choice": "auto"}));
        let req = parse_request(&raw).unwrap();
        let got: Value = serde_json::from_slice(&encode_request(&req, "p", false)).unwrap();
        assert_eq!(
            got,
            json!({"model": "p", "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "hi"}]}],
                   "store": false, "stream": false})
        );
    }

    /// Parse, encode, parse again: the conversation survives.
    #[test]
    fn request_round_trip() {
        let raw = body(json!({"model": "m", "stream": true, "instructions": "sys",
        "max_output_tokens": 500, "parallel_tool_calls": true, "temperature": 0.3,
        "reasoning": {"effort": "low"}, "tool_choice": "required",
        "tools": [{"type": "function", "name": "f", "description": "d",
                   "parameters": {"type": "object"}, "strict": false}],
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "q \"quoted\" \u{e9}"},
                {"type": "input_image", "image_url": "https://x/y.png"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}], "encrypted_content": "enc"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"k\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "out"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "more"}]}
        ]}));
        let first = parse_request(&raw).unwrap();
        let encoded = encode_request(&first, "m", true);
        let second = parse_request(&encoded).unwrap();
        assert_eq!(
            format!("{:?}", first.messages),
            format!("{:?}", second.messages)
        );
        assert_eq!(
            format!("{:?}", first.system),
            format!("{:?}", second.system)
        );
        assert_eq!(format!("{:?}", first.tools), format!("{:?}", second.tools));
        assert_eq!(first.tool_choice, second.tool_choice);
        assert_eq!(first.reasoning, second.reasoning);
        assert_eq!(first.max_tokens, second.max_tokens);
        assert_eq!(first.temperature, second.temperature);
        assert_eq!(first.parallel_tool_calls, second.parallel_tool_calls);
        assert!(second.stream);
    }
}
