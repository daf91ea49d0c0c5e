//! Requests: parse the client's body into the IR (validating it), and encode an IR request
//! as this format's body when translating for a provider of this format.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{join, opt_str, reasoning_text, RawItem, RawPart};
use crate::errors::{ErrorKind, FluxError};
use crate::wire::ir::{
    Arguments, Block, Effort, Image, Message, Reasoning, Request, Role, Tool, ToolChoice,
};
use crate::wire::json::{self, bad, shown};
use crate::wire::Format;

/// Parse and validate a client request of this format. Malformed input is a 400
/// (`invalid_request`; `empty_prompt` when there is no content at all).
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, FluxError> {
    let members = json::top_level(raw)?;
    let mut req = Request {
        format: Format::OpenAiResponses,
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
    let mut input = None;
    let mut safety_identifier = None;
    for (key, value) in members {
        match key.as_ref() {
            "model" => model = Some(value),
            "input" => input = Some(value),
            "stream" => {
                req.stream = json::field::<Option<bool>>("stream", value)
                    .map_err(|_| bad("'stream' must be a boolean (true or false)."))?
                    .unwrap_or(false)
            }
            "instructions" => match json::field::<Option<Cow<'_, str>>>("instructions", value)
                .map_err(|_| bad("'instructions' must be a string."))?
            {
                Some(text) if !text.is_empty() => req.system.push(Block::Text {
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
            "user" => req.user = json::field(&key, value)?,
            "safety_identifier" => safety_identifier = json::field(&key, value)?,
            "previous_response_id" => req.previous_response_id = json::field(&key, value)?,
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
            json::field::<Cow<'_, str>>("model", v)
                .map_err(|_| bad("'model' must be a string."))?,
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
            let text: Cow<'_, str> = json::field("input", input)?;
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

fn empty(why: &str) -> FluxError {
    FluxError::new(
        ErrorKind::EmptyPrompt,
        format!("The prompt is empty: {why}"),
    )
}

/// The JSON type of a raw value, for messages.
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
    let fields: RawItem<'a> = json::field(&format!("input[{i}]"), item)?;
    let kind = match fields.kind {
        None => None,
        Some(k) if json::is_null(k) => None,
        Some(k) => Some(
            json::field::<Cow<'a, str>>("type", k)
                .map_err(|_| bad(format!("input[{i}].type must be a string.")))?,
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
                Some(a) => json::field(&format!("input[{i}].arguments"), a)?,
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
                    let text: Cow<'a, str> = json::field(&format!("input[{i}].output"), o)?;
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
        Some(v) if !json::is_null(v) => json::field::<Cow<'a, str>>(name, v)
            .map_err(|_| bad(format!("input[{i}].{name} must be a string."))),
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
            let text: Cow<'a, str> = json::field(&format!("input[{i}].content"), c)?;
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
    let list: Vec<&'a RawValue> = json::field(&format!("input[{i}].{field}"), raw)?;
    let mut has_content = false;
    for (j, part) in list.into_iter().enumerate() {
        if !is_object(part) {
            return Err(bad(format!("input[{i}].{field}[{j}] must be an object.")));
        }
        let p: RawPart<'a> = json::field(&format!("input[{i}].{field}[{j}]"), part)?;
        let Some(kind) = opt_str(p.kind) else {
            return Err(bad(format!("input[{i}].{field}[{j}] needs a 'type'.")));
        };
        match kind.as_ref() {
            "input_text" | "output_text" | "text" | "summary_text" => {
                let text = match p.text {
                    Some(t) => json::field::<Cow<'a, str>>("text", t).ok(),
                    None => None,
                }
                .ok_or_else(|| bad(format!("input[{i}].{field}[{j}].text must be a string.")))?;
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
    let t: RawTool<'a> = json::field(path, raw)?;
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
        name: Option<Cow<'a, str>>,
    }
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(Some(None)), // null
        Some(b'"') => {
            let s: Cow<'_, str> = json::field("tool_choice", raw)?;
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
                ("function", Some(name)) => Ok(Some(Some(ToolChoice::Named(name)))),
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
