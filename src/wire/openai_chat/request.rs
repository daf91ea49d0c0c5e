//! Requests: parse the client's body into the IR (validating it), and encode an IR request
//! as this format's body when translating for a provider of this format.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::errors::{ErrorKind, FluxError};
use crate::wire::format::Format;
use crate::wire::ir::{
    Arguments, Block, Effort, Image, Message, Reasoning, Request, Role, Tool, ToolChoice,
};
use crate::wire::json::{self, bad, is_null};

use super::schema::{tool_calls_out, ToolCallOut};

/// Parse and validate a client request of this format. Malformed input is a 400
/// (`invalid_request`; `empty_prompt` when there is no content at all).
///
/// Only `model`, `stream` and `messages` can make a request invalid. Any other member the
/// IR models but cannot read (a `temperature` that is a string, `tools` that is not an
/// array) is kept in `unknown`, as the previous parser let the provider judge it.
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, FluxError> {
    let members = json::top_level(raw)?;
    let mut model_raw = None;
    let mut stream_raw = None;
    let mut messages_raw = None;
    let mut req = Request::empty(Format::OpenAiChat, raw);
    let mut max_tokens: Option<u64> = None;
    let mut max_completion_tokens: Option<u64> = None;
    let mut functions = Vec::new();
    let mut function_call = None;
    let mut safety_identifier = None;
    for (key, value) in members {
        if key == "stream_options" {
            // Kept even when null or not an object: a passthrough stream splices over it.
            req.stream_options_span = Some(json::span_of(raw, value));
        }
        let known = match key.as_ref() {
            "model" => {
                model_raw = Some(value);
                true
            }
            "stream" => {
                stream_raw = Some(value);
                true
            }
            "messages" => {
                messages_raw = Some(value);
                true
            }
            "provider" => {
                req.set_preferences(value)?;
                true
            }
            // A null optional member is the same as an absent one.
            _ if is_null(value) => true,
            "stream_options" => object::<StreamOptions>(value)
                .map(|o| req.include_usage = o.include_usage.unwrap_or(false))
                .is_some(),
            "max_tokens" => parsed(value, &mut max_tokens),
            "max_completion_tokens" => parsed(value, &mut max_completion_tokens),
            "temperature" => parsed(value, &mut req.temperature),
            "top_p" => parsed(value, &mut req.top_p),
            "parallel_tool_calls" => parsed(value, &mut req.parallel_tool_calls),
            "tools" => parse_tools(value, &mut req.tools),
            "functions" => parse_functions(value, &mut functions),
            "tool_choice" => parse_tool_choice(value)
                .map(|c| req.tool_choice = Some(c))
                .is_some(),
            "function_call" => parse_function_call(value)
                .map(|c| function_call = Some(c))
                .is_some(),
            "stop" => parse_stop(value, &mut req.stop),
            "reasoning_effort" => parse_effort(value)
                .map(|e| req.reasoning = Some(Reasoning::Effort(e)))
                .is_some(),
            "user" => string(value).map(|u| req.user = Some(u)).is_some(),
            "safety_identifier" => string(value).map(|u| safety_identifier = Some(u)).is_some(),
            _ => false,
        };
        if !known {
            req.unknown.push((key, value));
        }
    }

    // The same checks, in the same order and words, as the previous Chat parser.
    let model_raw = match model_raw {
        Some(m) if !is_null(m) => m,
        _ => return Err(model_required()),
    };
    req.model = string(model_raw).ok_or_else(|| bad("'model' must be a string."))?;
    if req.model.is_empty() {
        return Err(model_required());
    }
    req.model_span = json::span_of(raw, model_raw);
    req.stream = match stream_raw.map(RawValue::get) {
        None | Some("null") => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(bad("'stream' must be a boolean (true or false).")),
    };
    let messages_raw = messages_raw
        .ok_or_else(|| bad("'messages' is required: an array of {role, content} objects."))?;
    let messages: Vec<&RawValue> = match messages_raw.get().starts_with('[') {
        true => json::field("messages", messages_raw)?,
        false => {
            return Err(bad(
                "'messages' must be an array of {role, content} objects.",
            ))
        }
    };
    if messages.is_empty() {
        return Err(FluxError::new(
            ErrorKind::EmptyPrompt,
            "The prompt is empty: 'messages' has no entries.",
        ));
    }
    let mut conv = Conversation::default();
    for (i, message) in messages.into_iter().enumerate() {
        conv.message(i, message)?;
    }
    if !conv.has_content {
        return Err(FluxError::new(
            ErrorKind::EmptyPrompt,
            "The prompt is empty: add message content.",
        ));
    }
    req.messages = conv.messages;

    req.max_tokens = match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if req.tools.is_empty() {
        req.tools = functions;
    }
    if req.tool_choice.is_none() {
        req.tool_choice = function_call;
    }
    if req.user.is_none() {
        req.user = safety_identifier;
    }
    Ok(req)
}

fn model_required() -> FluxError {
    bad("'model' is required: use flux-auto, a lane alias or a pinned id.")
}

/// The string a raw JSON value holds, borrowed when it has no escapes; None for a non-string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    if s.len() < 2 || !s.starts_with('"') {
        return None;
    }
    if !s.contains('\\') {
        // A raw value is valid JSON: a string without escapes is its text between quotes.
        return Some(Cow::Borrowed(&s[1..s.len() - 1]));
    }
    serde_json::from_str::<String>(s).ok().map(Cow::Owned)
}

/// Deserialize a JSON object (serde would also read a struct from an array).
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    match raw.get().starts_with('{') {
        true => serde_json::from_str(raw.get()).ok(),
        false => None,
    }
}

/// Read an optional member into `slot`; false (so it is kept as unknown) when it does not fit.
fn parsed<'a, T: Deserialize<'a>>(value: &'a RawValue, slot: &mut Option<T>) -> bool {
    match serde_json::from_str(value.get()) {
        Ok(v) => {
            *slot = Some(v);
            true
        }
        Err(_) => false,
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `{"type":"function","function":{...}}` (or another tool type, kept raw).
#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
}

/// A function definition: `tools[].function` or a legacy `functions[]` entry.
#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

impl<'a> FunctionIn<'a> {
    fn tool(self) -> Tool<'a> {
        Tool {
            name: self.name,
            description: self.description,
            parameters: self.parameters.filter(|p| !is_null(p)),
            strict: self.strict,
            other: None,
            cache_control: None,
        }
    }
}

fn parse_tools<'a>(value: &'a RawValue, tools: &mut Vec<Tool<'a>>) -> bool {
    let Ok(items) = serde_json::from_str::<Vec<&'a RawValue>>(value.get()) else {
        return false;
    };
    for item in items {
        let parsed = object::<ToolIn<'a>>(item);
        let kind = parsed.as_ref().and_then(|t| t.kind).and_then(string);
        let function = parsed
            .as_ref()
            .filter(|_| kind.as_deref().is_none_or(|k| k == "function"))
            .and_then(|t| t.function)
            .and_then(object::<FunctionIn<'a>>);
        match function {
            Some(f) => tools.push(f.tool()),
            None => tools.push(Tool {
                name: parsed
                    .as_ref()
                    .and_then(|t| t.name)
                    .and_then(string)
                    .or(kind)
                    .unwrap_or(Cow::Borrowed("")),
                description: None,
                parameters: None,
                strict: None,
                other: Some(item),
                cache_control: None,
            }),
        }
    }
    true
}

fn parse_functions<'a>(value: &'a RawValue, tools: &mut Vec<Tool<'a>>) -> bool {
    let Ok(items) = serde_json::from_str::<Vec<&'a RawValue>>(value.get()) else {
        return false;
    };
    let Some(fs) = items
        .into_iter()
        .map(object::<FunctionIn<'a>>)
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    tools.extend(fs.into_iter().map(FunctionIn::tool));
    true
}

#[derive(Deserialize)]
struct NamedIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ToolChoiceIn<'a> {
    #[serde(borrow, default)]
    function: Option<NamedIn<'a>>,
}

fn mode(value: &RawValue) -> Option<ToolChoice<'static>> {
    match string(value)?.as_ref() {
        "auto" => Some(ToolChoice::Auto),
        "none" => Some(ToolChoice::None),
        "required" => Some(ToolChoice::Required),
        _ => None,
    }
}

/// `"auto" | "none" | "required" | {"type":"function","function":{"name"}}`.
fn parse_tool_choice(value: &RawValue) -> Option<ToolChoice<'_>> {
    if value.get().starts_with('"') {
        return mode(value);
    }
    let choice: ToolChoiceIn = object(value)?;
    choice.function.map(|f| ToolChoice::Named(f.name))
}

/// Legacy `function_call`: `"auto" | "none" | {"name"}`.
fn parse_function_call(value: &RawValue) -> Option<ToolChoice<'_>> {
    if value.get().starts_with('"') {
        return mode(value);
    }
    let named: NamedIn = object(value)?;
    Some(ToolChoice::Named(named.name))
}

fn parse_stop<'a>(value: &'a RawValue, stop: &mut Vec<Cow<'a, str>>) -> bool {
    if let Some(s) = string(value) {
        stop.push(s);
        return true;
    }
    match serde_json::from_str::<Vec<&'a RawValue>>(value.get()) {
        Ok(items) => match items.into_iter().map(string).collect::<Option<Vec<_>>>() {
            Some(items) => {
                *stop = items;
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

fn parse_effort(value: &RawValue) -> Option<Effort> {
    match string(value)?.as_ref() {
        "minimal" => Some(Effort::Minimal),
        "low" => Some(Effort::Low),
        "medium" => Some(Effort::Medium),
        "high" | "xhigh" => Some(Effort::High),
        _ => None,
    }
}

/// One entry of `messages`. Every member is kept raw so that a wrong type is reported in the
/// previous parser's words, not serde's.
#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_call_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ImageUrlIn<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionCallIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

impl<'a> FunctionCallIn<'a> {
    fn block(self, id: Option<Cow<'a, str>>) -> Block<'a> {
        let name = self.name.unwrap_or_default();
        let arguments = match self.arguments {
            None => Arguments::Text(Cow::Borrowed("")),
            Some(a) if is_null(a) => Arguments::Text(Cow::Borrowed("")),
            // Some clients send the arguments as an object rather than its JSON text.
            Some(a) => string(a).map_or(Arguments::Json(a), Arguments::Text),
        };
        Block::ToolCall {
            // Legacy function calls have no id: their result names the function instead.
            id: id.unwrap_or_else(|| name.clone()),
            name,
            arguments,
        }
    }
}

/// The messages as they are read, with what the empty-prompt check needs.
#[derive(Default)]
struct Conversation<'a> {
    messages: Vec<Message<'a>>,
    has_content: bool,
    /// The last message holds tool results only, so the next result joins it.
    in_tool_results: bool,
}

impl<'a> Conversation<'a> {
    fn message(&mut self, i: usize, raw: &'a RawValue) -> Result<(), FluxError> {
        let not_object = || {
            bad(format!(
                "messages[{i}] must be an object with 'role' and 'content'."
            ))
        };
        if !raw.get().starts_with('{') {
            return Err(not_object());
        }
        let m: MessageIn<'a> = serde_json::from_str(raw.get()).map_err(|e| {
            let e = e.to_string();
            let e = e.split(" at line").next().unwrap_or(&e).to_owned();
            bad(format!("messages[{i}] is invalid: {e}."))
        })?;
        let role = m.role.and_then(string);
        let role = match role.as_deref() {
            Some(r @ ("system" | "developer" | "user" | "assistant" | "tool" | "function")) => r,
            Some(other) => {
                return Err(bad(format!(
                "messages[{i}].role '{}' is not one of system, developer, user, assistant, tool.",
                other.chars().take(32).collect::<String>()
            )))
            }
            None => return Err(bad(format!("messages[{i}].role is required."))),
        };
        let mut blocks = Vec::new();
        if role == "assistant" {
            if let Some(r) = m.reasoning_content.and_then(string) {
                if !r.is_empty() {
                    blocks.push(Block::Thinking {
                        text: r,
                        signature: None,
                    });
                }
            }
        }
        self.content(i, m.content, &mut blocks)?;
        match role {
            "system" | "developer" => self.push(Role::System, blocks),
            "user" => self.push(Role::User, blocks),
            "assistant" => {
                if let Some(calls) = m.tool_calls {
                    let calls: Vec<&RawValue> = serde_json::from_str(calls.get())
                        .map_err(|_| bad(format!("messages[{i}].tool_calls must be an array.")))?;
                    self.has_content |= !calls.is_empty();
                    for call in calls {
                        // A call that is not an object carries nothing to translate.
                        if let Some(c) = object::<ToolCallIn<'a>>(call) {
                            let f = c.function.unwrap_or(FunctionCallIn {
                                name: None,
                                arguments: None,
                            });
                            blocks.push(f.block(c.id));
                        }
                    }
                }
                if let Some(call) = m.function_call.filter(|c| !is_null(c)) {
                    if let Some(f) = object::<FunctionCallIn<'a>>(call) {
                        self.has_content = true;
                        blocks.push(f.block(None));
                    }
                }
                self.push(Role::Assistant, blocks)
            }
            // tool, function
            _ => {
                let id = match role {
                    "tool" => m.tool_call_id,
                    _ => m.name,
                };
                let result = Block::ToolResult {
                    call_id: id.and_then(string).unwrap_or_default(),
                    content: blocks,
                    is_error: false,
                    cache_control: None,
                };
                match self.messages.last_mut() {
                    Some(last) if self.in_tool_results => last.content.push(result),
                    _ => self.messages.push(Message {
                        role: Role::User,
                        content: vec![result],
                    }),
                }
                self.in_tool_results = true;
            }
        }
        Ok(())
    }

    fn push(&mut self, role: Role, content: Vec<Block<'a>>) {
        self.messages.push(Message { role, content });
        self.in_tool_results = false;
    }

    fn content(
        &mut self,
        i: usize,
        content: Option<&'a RawValue>,
        blocks: &mut Vec<Block<'a>>,
    ) -> Result<(), FluxError> {
        let Some(content) = content else {
            return Ok(());
        };
        if let Some(text) = string(content) {
            self.text(text, blocks);
            return Ok(());
        }
        let not_parts = || {
            bad(format!(
                "messages[{i}].content must be a string or an array of content parts."
            ))
        };
        if !content.get().starts_with('[') {
            return Err(not_parts());
        }
        let parts: Vec<&'a RawValue> =
            serde_json::from_str(content.get()).map_err(|_| not_parts())?;
        for (j, part) in parts.into_iter().enumerate() {
            let needs_type = || bad(format!("messages[{i}].content[{j}] needs a 'type'."));
            if !part.get().starts_with('{') {
                return Err(needs_type());
            }
            let p: PartIn<'a> = serde_json::from_str(part.get()).map_err(|_| needs_type())?;
            let kind = p.kind.and_then(string).ok_or_else(needs_type)?;
            match kind.as_ref() {
                "text" | "input_text" => {
                    let text = p.text.and_then(string).ok_or_else(|| {
                        bad(format!("messages[{i}].content[{j}].text must be a string."))
                    })?;
                    self.text(text, blocks);
                }
                "image_url" | "input_image" | "image" => {
                    self.has_content = true;
                    let url = p.image_url.and_then(|u| {
                        string(u).or_else(|| object::<ImageUrlIn<'a>>(u).map(|u| u.url))
                    });
                    if let Some(url) = url {
                        blocks.push(Block::Image(Image::Url(url)));
                    }
                }
                // Audio, files: content the provider judges, which translation drops.
                _ => self.has_content = true,
            }
        }
        Ok(())
    }

    fn text(&mut self, text: Cow<'a, str>, blocks: &mut Vec<Block<'a>>) {
        self.has_content |= !text.trim().is_empty();
        if !text.is_empty() {
            blocks.push(Block::Text {
                text,
                cache_control: None,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

#[derive(Serialize)]
struct Body<'r> {
    model: &'r str,
    messages: Vec<MessageOut<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'r [Cow<'r, str>],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'r str>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptionsOut>,
}

#[derive(Serialize)]
struct StreamOptionsOut {
    include_usage: bool,
}

#[derive(Serialize)]
struct MessageOut<'r> {
    role: &'static str,
    /// None is written as `null` (an assistant turn with tool calls only).
    content: ContentOut<'r>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'r str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'r>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'r> {
    Null,
    Text(Cow<'r, str>),
    Parts(Vec<PartOut<'r>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'r> {
    Text { text: &'r str },
    ImageUrl { image_url: UrlOut<'r> },
}

#[derive(Serialize)]
struct UrlOut<'r> {
    url: Cow<'r, str>,
}

#[derive(Serialize)]
struct ToolOut<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolFunctionOut<'r>,
}

#[derive(Serialize)]
struct ToolFunctionOut<'r> {
    name: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'r RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoiceOut<'r> {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedOut<'r>,
    },
}

#[derive(Serialize)]
struct NamedOut<'r> {
    name: &'r str,
}

/// Write the request as this format's body for a provider, with `model` as the provider's
/// id and `stream` as asked. Only used when the client spoke another format.
pub fn encode_request(req: &Request<'_>, model: &str, stream: bool) -> Vec<u8> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = joined_text(&req.system, "\n\n") {
        messages.push(MessageOut {
            role: "system",
            content: ContentOut::Text(system),
            tool_call_id: None,
            tool_calls: Vec::new(),
        });
    }
    for m in &req.messages {
        encode_message(m, &mut messages);
    }
    let tools: Vec<ToolOut> = req
        .tools
        .iter()
        .filter(|t| t.other.is_none())
        .map(|t| ToolOut {
            kind: "function",
            function: ToolFunctionOut {
                name: &t.name,
                description: t.description.as_deref(),
                parameters: t.parameters,
                strict: t.strict,
            },
        })
        .collect();
    // OpenAI refuses tool_choice and parallel_tool_calls without tools.
    let has_tools = !tools.is_empty();
    let body = Body {
        model,
        messages,
        max_completion_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: &req.stop,
        tools,
        tool_choice: req
            .tool_choice
            .as_ref()
            .filter(|_| has_tools)
            .map(|c| match c {
                ToolChoice::Auto => ToolChoiceOut::Mode("auto"),
                ToolChoice::None => ToolChoiceOut::Mode("none"),
                ToolChoice::Required => ToolChoiceOut::Mode("required"),
                ToolChoice::Named(name) => ToolChoiceOut::Named {
                    kind: "function",
                    function: NamedOut { name },
                },
            }),
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| has_tools),
        reasoning_effort: req.reasoning.and_then(effort_name),
        user: req.user.as_deref(),
        stream,
        // The gateway meters a stream from its usage chunk.
        stream_options: stream.then_some(StreamOptionsOut {
            include_usage: true,
        }),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn effort_name(r: Reasoning) -> Option<&'static str> {
    match r {
        Reasoning::Effort(Effort::Minimal) => Some("minimal"),
        Reasoning::Effort(Effort::Low) => Some("low"),
        Reasoning::Effort(Effort::Medium) => Some("medium"),
        Reasoning::Effort(Effort::High) => Some("high"),
        Reasoning::Budget(0) => None,
        Reasoning::Budget(n) if n < 4_096 => Some("low"),
        Reasoning::Budget(n) if n < 16_384 => Some("medium"),
        Reasoning::Budget(_) => Some("high"),
        // The model decides: say nothing.
        Reasoning::Adaptive => None,
    }
}

/// The text blocks of `blocks` joined, or None when there are none.
fn joined_text<'r>(blocks: &'r [Block<'_>], sep: &str) -> Option<Cow<'r, str>> {
    let mut texts = blocks.iter().filter_map(|b| match b {
        Block::Text { text, .. } => Some(text.as_ref()),
        _ => None,
    });
    let first = texts.next()?;
    match texts.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut s = format!("{first}{sep}{second}");
            for t in texts {
                s.push_str(sep);
                s.push_str(t);
            }
            Some(Cow::Owned(s))
        }
    }
}

fn image_url<'r>(image: &'r Image<'_>) -> Cow<'r, str> {
    match image {
        Image::Url(url) => Cow::Borrowed(url),
        Image::Base64 { media_type, data } => {
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
    }
}

/// Text and images as Chat content: one text block as a string, anything else as parts.
fn user_content<'r>(blocks: &[&'r Block<'_>]) -> ContentOut<'r> {
    if let [Block::Text { text, .. }] = blocks {
        return ContentOut::Text(Cow::Borrowed(text));
    }
    ContentOut::Parts(
        blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text { text, .. } => Some(PartOut::Text { text }),
                Block::Image(image) => Some(PartOut::ImageUrl {
                    image_url: UrlOut {
                        url: image_url(image),
                    },
                }),
                _ => None,
            })
            .collect(),
    )
}

fn encode_message<'r>(m: &'r Message<'_>, out: &mut Vec<MessageOut<'r>>) {
    let plain = |role, content| MessageOut {
        role,
        content,
        tool_call_id: None,
        tool_calls: Vec::new(),
    };
    match m.role {
        Role::System => {
            if let Some(text) = joined_text(&m.content, "\n\n") {
                out.push(plain("system", ContentOut::Text(text)));
            }
        }
        Role::User => {
            // Tool results first, as `tool` messages answering the previous assistant turn.
            for b in &m.content {
                if let Block::ToolResult {
                    call_id, content, ..
                } = b
                {
                    out.push(MessageOut {
                        role: "tool",
                        content: ContentOut::Text(
                            joined_text(content, "\n").unwrap_or(Cow::Borrowed("")),
                        ),
                        tool_call_id: Some(call_id),
                        tool_calls: Vec::new(),
                    });
                }
            }
            let rest: Vec<&Block> = m
                .content
                .iter()
                .filter(|b| matches!(b, Block::Text { .. } | Block::Image(_)))
                .collect();
            if !rest.is_empty() {
                out.push(plain("user", user_content(&rest)));
            }
        }
        Role::Assistant => {
            let tool_calls = tool_calls_out(&m.content);
            let content = match joined_text(&m.content, "") {
                Some(text) => ContentOut::Text(text),
                None if !tool_calls.is_empty() => ContentOut::Null,
                // Thinking only: Chat requests do not carry it.
                None => return,
            };
            out.push(MessageOut {
                role: "assistant",
                content,
                tool_call_id: None,
                tool_calls,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const CONVERSATION: &str =
        include_str!("../../../tests/fixtures/wire/openai_chat/request_conversation.json");

    fn parse_value(v: &Value) -> Result<String, FluxError> {
        let raw = serde_json::to_vec(v).unwrap();
        parse_request(&raw).map(|r| ir(&r))
    }

    /// Everything the IR holds but the raw bytes and the unknown members, for comparison.
    fn ir(r: &Request) -> String {
        format!(
            "model={:?} stream={} max={:?} system={:?} messages={:?} tools={:?} choice={:?} \
             parallel={:?} temp={:?} top_p={:?} stop={:?} reasoning={:?} user={:?} usage={}",
            r.model,
            r.stream,
            r.max_tokens,
            r.system,
            r.messages,
            r.tools
                .iter()
                .map(|t| (
                    &t.name,
                    &t.description,
                    t.parameters.map(RawValue::get),
                    t.strict,
                    t.other.map(RawValue::get)
                ))
                .collect::<Vec<_>>(),
            r.tool_choice,
            r.parallel_tool_calls,
            r.temperature,
            r.top_p,
            r.stop,
            r.reasoning,
            r.user,
            r.include_usage,
        )
    }

    #[test]
    fn a_plain_request_parses() {
        let raw = br#"{"model":"flux-auto","messages":[{"role":"user","content":"ping"}]}"#;
        let r = parse_request(raw).unwrap();
        assert_eq!(r.format, Format::OpenAiChat);
        assert_eq!(r.model, "flux-auto");
        assert!(matches!(r.model, Cow::Borrowed(_)));
        assert_eq!(&raw[r.model_span.clone()], b"\"flux-auto\"");
        assert!(!r.stream && !r.include_usage);
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].role, Role::User);
        assert!(matches!(&r.messages[0].content[..], [Block::Text { text, .. }] if text == "ping"));
        assert!(r.unknown.is_empty());
    }

    #[test]
    fn shape_errors_are_400_with_the_old_reasons() {
        let cases = [
            (json!([1]), "JSON object"),
            (
                json!({"messages":[{"role":"user","content":"x"}]}),
                "'model' is required",
            ),
            (
                json!({"model":"","messages":[{"role":"user","content":"x"}]}),
                "'model' is required",
            ),
            (
                json!({"model":null,"messages":[{"role":"user","content":"x"}]}),
                "'model' is required",
            ),
            (json!({"model":7,"messages":[]}), "'model' must be a string"),
            (
                json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}),
                "'stream' must be a boolean",
            ),
            (json!({"model":"m"}), "'messages' is required"),
            (
                json!({"model":"m","messages":{}}),
                "'messages' must be an array",
            ),
            (
                json!({"model":"m","messages":null}),
                "'messages' must be an array",
            ),
            (
                json!({"model":"m","messages":["hi"]}),
                "messages[0] must be an object",
            ),
            (
                json!({"model":"m","messages":[["user","hi"]]}),
                "messages[0] must be an object",
            ),
            (
                json!({"model":"m","messages":[{"role":"wizard","content":"x"}]}),
                "not one of",
            ),
            (
                json!({"model":"m","messages":[{"content":"x"}]}),
                "messages[0].role is required",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":5}]}),
                "must be a string or an array",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":[{"text":"x"}]}]}),
                "messages[0].content[0] needs a 'type'",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":["x"]}]}),
                "messages[0].content[0] needs a 'type'",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":1}]}]}),
                "messages[0].content[0].text must be a string",
            ),
        ];
        for (body, expect) in cases {
            let e = parse_value(&body).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{body}");
            assert!(e.message.contains(expect), "{body}: {}", e.message);
        }
        let e = parse_request(b"{\"model\": ").unwrap_err();
        assert!(e.message.starts_with("Malformed JSON"), "{}", e.message);
        let e = parse_request(br#"{"model":"a","messages":[],"model":"b"}"#).unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
    }

    #[test]
    fn empty_prompts_are_400_empty_prompt() {
        for body in [
            json!({"model":"m","messages":[]}),
            json!({"model":"m","messages":[{"role":"user","content":"   "}]}),
            json!({"model":"m","messages":[{"role":"user","content":null}]}),
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":""}]}]}),
            json!({"model":"m","messages":[{"role":"assistant","content":"","reasoning_content":"hm"}]}),
        ] {
            let e = parse_value(&body).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "empty_prompt"), "{body}");
        }
        // Unknown parts, images and tool calls are content.
        for body in [
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}),
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":"https://x/y.png"}]}]}),
            json!({"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]}),
        ] {
            assert!(parse_value(&body).is_ok(), "{body}");
        }
    }

    #[test]
    fn the_conversation_maps_onto_the_ir() {
        let r = parse_request(CONVERSATION.as_bytes()).unwrap();
        assert_eq!(r.model, "flux-auto");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(1024), "the smaller of the two limits");
        assert_eq!(r.temperature, Some(0.2));
        assert_eq!(r.top_p, Some(0.9));
        assert_eq!(r.stop, ["\nEND", "###"]);
        assert_eq!(r.reasoning, Some(Reasoning::Effort(Effort::Medium)));
        assert_eq!(r.user.as_deref(), Some("user-42"));
        assert_eq!(r.parallel_tool_calls, Some(true));
        assert_eq!(r.tool_choice, Some(ToolChoice::Named("get_weather".into())));
        assert!(r.system.is_empty());
        let unknown: Vec<_> = r
            .unknown
            .iter()
            .map(|(k, v)| (k.as_ref(), v.get()))
            .collect();
        assert_eq!(
            unknown,
            [("seed", "7"), ("logit_bias", r#"{"50256": -100}"#)]
        );

        assert_eq!(r.tools.len(), 2);
        assert_eq!(r.tools[0].name, "get_weather");
        assert_eq!(
            r.tools[0].description.as_deref(),
            Some("Weather for a city")
        );
        assert_eq!(r.tools[0].strict, Some(true));
        assert!(r.tools[0]
            .parameters
            .unwrap()
            .get()
            .starts_with(r#"{"type": "object""#));
        assert_eq!(r.tools[1].description, None);

        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        use Role::*;
        assert_eq!(
            roles,
            [System, User, Assistant, User, System, Assistant, User]
        );
        match &r.messages[1].content[..] {
            [Block::Text { text, .. }, Block::Image(Image::Url(url))] => {
                assert_eq!(text, "Weather and time in Paris? See \"map\":");
                assert_eq!(url, "data:image/png;base64,iVBORw0KGgo=");
            }
            other => panic!("{other:?}"),
        }
        match &r.messages[2].content[..] {
            [Block::ToolCall {
                id,
                name,
                arguments: Arguments::Text(args),
            }, Block::ToolCall { id: id2, .. }] => {
                assert_eq!((id.as_ref(), name.as_ref()), ("call_W1xa", "get_weather"));
                assert_eq!(args, r#"{"city":"Paris"}"#);
                assert_eq!(id2, "call_T2yb");
            }
            other => panic!("{other:?}"),
        }
        // Both tool messages are one user message of tool results.
        match &r.messages[3].content[..] {
            [Block::ToolResult {
                call_id, content, ..
            }, Block::ToolResult {
                call_id: id2,
                content: c2,
                ..
            }] => {
                assert_eq!((call_id.as_ref(), id2.as_ref()), ("call_W1xa", "call_T2yb"));
                assert!(
                    matches!(&content[..], [Block::Text { text, .. }] if text == "18°C, cloudy")
                );
                assert!(matches!(&c2[..], [Block::Text { text, .. }] if text == "14:05"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn legacy_fields_reasoning_and_leniency() {
        let body = json!({
            "model": "m",
            "functions": [{"name": "f", "parameters": {"type": "object"}}],
            "function_call": {"name": "f"},
            "tools": "not an array",
            "temperature": "hot",
            "stop": "END",
            "reasoning_effort": "none",
            "safety_identifier": "sid",
            "max_tokens": null,
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "reasoning_content": "think", "content": "ok",
                 "function_call": {"name": "f", "arguments": "{\"a\":1}"}},
                {"role": "function", "name": "f", "content": "done"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "g", "arguments": {"x": 1}}}, 7
                ]},
                {"role": "user", "content": [{"type": "file", "file": {}}, {"type": "text", "text": "and?"}]}
            ]
        });
        let raw = serde_json::to_vec(&body).unwrap();
        let r = parse_request(&raw).unwrap();
        let unknown: Vec<_> = r.unknown.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(unknown, ["tools", "temperature", "reasoning_effort"]);
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].name, "f");
        assert_eq!(r.tool_choice, Some(ToolChoice::Named("f".into())));
        assert_eq!(r.stop, ["END"]);
        assert_eq!(r.user.as_deref(), Some("sid"));
        assert_eq!(r.max_tokens, None);
        match &r.messages[1].content[..] {
            [Block::Thinking {
                text,
                signature: None,
            }, Block::Text { text: t, .. }, Block::ToolCall { id, name, .. }] => {
                assert_eq!((text.as_ref(), t.as_ref()), ("think", "ok"));
                assert_eq!((id.as_ref(), name.as_ref()), ("f", "f"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &r.messages[2].content[..],
            [Block::ToolResult { call_id, .. }] if call_id == "f"
        ));
        match &r.messages[3].content[..] {
            [Block::ToolCall {
                arguments: Arguments::Json(raw),
                ..
            }] => assert_eq!(raw.get(), r#"{"x":1}"#),
            other => panic!("{other:?}"),
        }
        // The unknown part is skipped, the text kept.
        assert!(matches!(&r.messages[4].content[..], [Block::Text { text, .. }] if text == "and?"));
    }

    #[test]
    fn other_tool_types_are_kept_raw() {
        let body = json!({"model":"m","messages":[{"role":"user","content":"x"}],
            "tools":[{"type":"custom","custom":{"name":"grep"}},
                     {"type":"function","function":{"name":"f"}}],
            "tool_choice":"required"});
        let raw = serde_json::to_vec(&body).unwrap();
        let r = parse_request(&raw).unwrap();
        assert_eq!(r.tools[0].name, "custom");
        assert!(r.tools[0].other.unwrap().get().contains("grep"));
        assert!(r.tools[1].other.is_none());
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        let out: Value = serde_json::from_slice(&encode_request(&r, "p", false)).unwrap();
        assert_eq!(
            out["tools"],
            json!([{"type":"function","function":{"name":"f"}}])
        );
    }

    #[test]
    fn a_32_mib_unknown_array_stays_one_raw_slice() {
        let head = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":["#;
        let mut body = String::with_capacity(32 << 20);
        body.push_str(head);
        while body.len() < (32 << 20) - 4 {
            body.push_str("1,");
        }
        body.push_str("1]}");
        let r = parse_request(body.as_bytes()).unwrap();
        assert_eq!(r.unknown.len(), 1);
        let (key, value) = &r.unknown[0];
        assert_eq!(key, "x");
        let span = json::span_of(body.as_bytes(), value);
        assert_eq!(span, head.len() - 1..body.len() - 1);
    }

    #[test]
    fn round_trip_keeps_the_ir() {
        let first = parse_request(CONVERSATION.as_bytes()).unwrap();
        let encoded = encode_request(&first, "flux-auto", true);
        let second = parse_request(&encoded).unwrap();
        assert_eq!(ir(&first), ir(&second));
        assert!(second.unknown.is_empty(), "unknown members are dropped");
        // And once more, byte for byte.
        assert_eq!(encode_request(&second, "flux-auto", true), encoded);
    }

    #[test]
    fn encoding_writes_a_chat_body() {
        let args = RawValue::from_string(r#"{"path": "a.rs"}"#.to_owned()).unwrap();
        let params = RawValue::from_string(r#"{"type":"object"}"#.to_owned()).unwrap();
        let web = RawValue::from_string(r#"{"type":"web_search"}"#.to_owned()).unwrap();
        let text = |t: &'static str| Block::Text {
            text: t.into(),
            cache_control: None,
        };
        let req = Request {
            format: Format::Anthropic,
            raw: b"",
            model_span: 0..0,
            model: "flux-auto".into(),
            stream: false,
            max_tokens: Some(32000),
            system: vec![text("sys one"), text("sys two")],
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![
                        text("look"),
                        Block::Image(Image::Base64 {
                            media_type: "image/png".into(),
                            data: "AAAA".into(),
                        }),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Block::Thinking {
                            text: "hmm".into(),
                            signature: Some("sig".into()),
                        },
                        Block::ToolCall {
                            id: "toolu_1".into(),
                            name: "Read".into(),
                            arguments: Arguments::Json(&args),
                        },
                    ],
                },
                Message {
                    role: Role::System,
                    content: vec![text("env")],
                },
                Message {
                    role: Role::User,
                    content: vec![
                        Block::ToolResult {
                            call_id: "toolu_1".into(),
                            content: vec![text("line 1"), text("line 2")],
                            is_error: true,
                            cache_control: None,
                        },
                        text("go on"),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![Block::RedactedThinking {
                        data: "opaque".into(),
                    }],
                },
            ],
            tools: vec![
                Tool {
                    name: "Read".into(),
                    description: Some("Read a file".into()),
                    parameters: Some(&params),
                    strict: None,
                    other: None,
                    cache_control: None,
                },
                Tool {
                    name: "web_search".into(),
                    description: None,
                    parameters: None,
                    strict: None,
                    other: Some(&web),
                    cache_control: None,
                },
            ],
            tool_choice: Some(ToolChoice::Auto),
            parallel_tool_calls: Some(false),
            temperature: None,
            top_p: None,
            stop: vec![],
            reasoning: Some(Reasoning::Budget(10_000)),
            user: None,
            include_usage: false,
            stream_options_span: None,
            preferences: None,
            preferences_cut: None,
            previous_response_id: None,
            unknown: vec![],
        };
        let out = String::from_utf8(encode_request(&req, "gpt-4.1", true)).unwrap();
        let expected = concat!(
            r#"{"model":"gpt-4.1","messages":["#,
            r#"{"role":"system","content":"sys one\n\nsys two"},"#,
            r#"{"role":"user","content":[{"type":"text","text":"look"},"#,
            r#"{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},"#,
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"toolu_1","type":"function","#,
            r#""function":{"name":"Read","arguments":"{\"path\": \"a.rs\"}"}}]},"#,
            r#"{"role":"system","content":"env"},"#,
            r#"{"role":"tool","content":"line 1\nline 2","tool_call_id":"toolu_1"},"#,
            r#"{"role":"user","content":"go on"}],"#,
            r#""max_completion_tokens":32000,"#,
            r#""tools":[{"type":"function","function":{"name":"Read","description":"Read a file","#,
            r#""parameters":{"type":"object"}}}],"#,
            r#""tool_choice":"auto","parallel_tool_calls":false,"reasoning_effort":"medium","#,
            r#""stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(out, expected);
        // Without tools, no tool_choice; without streaming, no stream_options.
        let mut req = req;
        req.tools.truncate(0);
        let out: Value = serde_json::from_slice(&encode_request(&req, "m", false)).unwrap();
        assert!(out.get("tool_choice").is_none() && out.get("parallel_tool_calls").is_none());
        assert_eq!(out["stream"], false);
        assert!(out.get("stream_options").is_none());
    }
}
