//! OpenAI Responses: the request parser and the renderers of the simulated
//! reply (a `response` object, or the `response.*` event stream, every event
//! numbered by `sequence_number`).
//!
//! Everything here is pure (no I/O, no clock), so tests can predict every byte.

use bytes::Bytes;
use serde_json::{json, Value};

use super::chat::tool_call_id;
use super::model::{
    halves, json_bytes, named_event, Envelope, Finish, PromptCount, Reply, ReplyContent, SimInput,
    Thinking, ToolCall, ToolChoice, DEFAULT_MODEL, IMAGE_PART_BYTES,
};
use super::prefix::PromptChain;
use crate::errors::{Error, Fault};

/// Reads a request body; the error is a message for a 400 response.
pub fn parse(body: &Value) -> Result<SimInput, Error> {
    let object = body
        .as_object()
        .ok_or_else(|| Error::new(Fault::Invalid, "request body must be a JSON object"))?;

    let model = body["model"].as_str().unwrap_or(DEFAULT_MODEL);
    let mut chain = PromptChain::new(model, &body["tools"]);
    let mut count = PromptCount::default();
    // Tokens of the system prompt: `instructions` and system/developer messages.
    let mut system_tokens = 0;
    match object.get("instructions") {
        None | Some(Value::Null) => {}
        Some(instructions @ Value::String(text)) => {
            let bytes = text.len() as u64;
            count.add_message(bytes, 0);
            system_tokens += PromptCount::message_tokens(bytes);
            chain.push(instructions, PromptCount::message_tokens(bytes), false);
        }
        // Instructions given as input items (a prompt template's messages).
        Some(Value::Array(items)) => {
            for item in items {
                let (_, bytes) = item_text(item);
                count.add_message(bytes, 0);
                system_tokens += PromptCount::message_tokens(bytes);
                chain.push(item, PromptCount::message_tokens(bytes), false);
            }
        }
        Some(_) => {
            return Err(Error::new(
                Fault::Invalid,
                "'instructions' must be a string or an array of items",
            ))
        }
    }

    let mut last_user_text = None;
    let mut tool_result = None;
    match object.get("input") {
        Some(input @ Value::String(text)) => {
            let bytes = text.len() as u64;
            count.add_message(bytes, 0);
            chain.push(input, PromptCount::message_tokens(bytes), true);
            last_user_text = Some(text.clone());
        }
        Some(Value::Array(items)) => {
            for item in items {
                let (text, bytes) = item_text(item);
                count.add_message(bytes, 0);
                let input = match item_type(item) {
                    Some("message") => item["role"] == "user",
                    kind => matches!(
                        kind,
                        Some("function_call_output" | "custom_tool_call_output")
                    ),
                };
                chain.push(item, PromptCount::message_tokens(bytes), input);
                if item_type(item) == Some("message") {
                    match item["role"].as_str() {
                        Some("user") => last_user_text = Some(text.clone()),
                        Some("system" | "developer") => {
                            system_tokens += PromptCount::message_tokens(bytes);
                        }
                        _ => {}
                    }
                }
                tool_result = matches!(
                    item_type(item),
                    Some("function_call_output" | "custom_tool_call_output")
                )
                .then_some(text);
            }
        }
        Some(_) => {
            return Err(Error::new(
                Fault::Invalid,
                "'input' must be a string or an array of items",
            ))
        }
        None => {
            return Err(Error::new(
                Fault::Invalid,
                "missing required parameter: 'input'",
            ))
        }
    }

    // A prompt cache key lets the (simulated) provider reuse the system prompt.
    let cached_tokens = if body["prompt_cache_key"].is_string() {
        system_tokens.min(count.tokens)
    } else {
        0
    };
    let thinking = match &body["reasoning"] {
        Value::Object(reasoning) => reasoning.get("effort").and_then(Value::as_str) != Some("none"),
        _ => false,
    };

    Ok(SimInput {
        model: model.to_owned(),
        stream: body["stream"].as_bool().unwrap_or(false),
        include_usage: true,
        max_tokens: body["max_output_tokens"].as_u64(),
        last_user_text,
        prompt_tokens: count.tokens,
        cached_tokens,
        tools: offered_tools(&body["tools"]),
        tool_choice: tool_choice(&body["tool_choice"]),
        tool_result,
        thinking,
        chain,
    })
}

/// An input item's type; an item with a `role` and no `type` is a message.
fn item_type(item: &Value) -> Option<&str> {
    match item["type"].as_str() {
        Some(kind) => Some(kind),
        None => item.get("role").map(|_| "message"),
    }
}

/// The text an input item carries (joined by spaces) and its byte count.
fn item_text(item: &Value) -> (String, u64) {
    match item_type(item) {
        Some("message") => parts_text(&item["content"]),
        Some("function_call" | "custom_tool_call") => {
            let arguments = if item["arguments"].is_null() {
                &item["input"]
            } else {
                &item["arguments"]
            };
            (String::new(), json_bytes(arguments))
        }
        Some("function_call_output" | "custom_tool_call_output") => parts_text(&item["output"]),
        Some("reasoning") => {
            let mut texts = Vec::new();
            for part in item["summary"].as_array().into_iter().flatten() {
                if let Some(text) = part["text"].as_str() {
                    texts.push(text);
                }
            }
            let bytes = texts.iter().map(|text| text.len() as u64).sum();
            (texts.join(" "), bytes)
        }
        _ => (String::new(), 0),
    }
}

/// A message content (or tool output): a string or an array of parts.
fn parts_text(content: &Value) -> (String, u64) {
    match content {
        Value::String(text) => (text.clone(), text.len() as u64),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            let mut bytes = 0;
            for part in parts {
                match part["type"].as_str() {
                    Some("input_text" | "output_text" | "text" | "summary_text") => {
                        let text = part["text"].as_str().unwrap_or_default();
                        bytes += text.len() as u64;
                        texts.push(text);
                    }
                    Some("refusal") => bytes += json_bytes(&part["refusal"]),
                    Some("input_image" | "input_file" | "input_audio") => {
                        bytes += IMAGE_PART_BYTES;
                    }
                    _ => {}
                }
            }
            (texts.join(" "), bytes)
        }
        _ => (String::new(), 0),
    }
}

/// The names of the offered function tools (top-level `name`), in order.
fn offered_tools(tools: &Value) -> Vec<String> {
    let Some(tools) = tools.as_array() else {
        return Vec::new();
    };
    tools
        .iter()
        .filter(|tool| tool["type"] == "function")
        .filter_map(|tool| tool["name"].as_str())
        .map(str::to_owned)
        .collect()
}

fn tool_choice(choice: &Value) -> ToolChoice {
    match choice {
        Value::String(mode) if mode == "none" => ToolChoice::Never,
        Value::String(mode) if mode == "required" => ToolChoice::Required,
        Value::Object(_) if choice["type"] == "function" => match choice["name"].as_str() {
            Some(name) => ToolChoice::Named(name.to_owned()),
            None => ToolChoice::Required,
        },
        _ => ToolChoice::Auto,
    }
}

/// The ids of one answer's output items, derived from the response id.
struct ItemIds<'a> {
    tail: &'a str,
}

impl<'a> ItemIds<'a> {
    fn new(envelope: Envelope<'a>) -> ItemIds<'a> {
        ItemIds {
            tail: envelope.id.strip_prefix("resp_").unwrap_or(envelope.id),
        }
    }
    fn reasoning(&self) -> String {
        format!("rs_{}", self.tail)
    }
    fn message(&self) -> String {
        format!("msg_{}", self.tail)
    }
    fn function_call(&self, index: usize) -> String {
        format!("fc_{}_{}", self.tail, index + 1)
    }
}

fn usage_json(reply: &Reply) -> Value {
    json!({
        "input_tokens": reply.prompt_tokens,
        "input_tokens_details": {"cached_tokens": reply.cached_tokens},
        "output_tokens": reply.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    })
}

fn reasoning_item(id: &str, thinking: &Thinking) -> Value {
    json!({
        "id": id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": thinking.text()}],
        "encrypted_content": thinking.signature,
    })
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    })
}

fn function_call_item(
    id: &str,
    index: usize,
    call: &ToolCall,
    arguments: &str,
    status: &str,
) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": tool_call_id(index),
        "name": call.name,
    })
}

/// The complete output items of a reply, in order.
fn output_items(reply: &Reply, ids: &ItemIds<'_>) -> Vec<Value> {
    let mut output = Vec::new();
    if let Some(thinking) = &reply.thinking {
        output.push(reasoning_item(&ids.reasoning(), thinking));
    }
    match &reply.content {
        ReplyContent::Text(pieces) => {
            output.push(message_item(&ids.message(), &pieces.concat(), "completed"));
        }
        ReplyContent::ToolCalls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                let id = ids.function_call(index);
                output.push(function_call_item(
                    &id,
                    index,
                    call,
                    &call.arguments,
                    "completed",
                ));
            }
        }
    }
    output
}

/// A `response` object in the given state; `output` and `usage` are empty until it is done.
fn response_object(
    envelope: Envelope<'_>,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let incomplete_details = if status == "incomplete" {
        json!({"reason": "max_output_tokens"})
    } else {
        Value::Null
    };
    json!({
        "id": envelope.id,
        "object": "response",
        "created_at": envelope.created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete_details,
        "model": envelope.model,
        "output": output,
        "usage": usage,
    })
}

fn final_status(reply: &Reply) -> &'static str {
    match reply.finish {
        Finish::Length => "incomplete",
        Finish::Stop | Finish::ToolCalls => "completed",
    }
}

/// The body of a non-streamed response.
pub fn response_json(reply: &Reply, envelope: Envelope<'_>) -> Value {
    let ids = ItemIds::new(envelope);
    response_object(
        envelope,
        final_status(reply),
        output_items(reply, &ids),
        usage_json(reply),
    )
}

/// Collects the events of a stream, numbering them as it goes.
struct EventLog {
    events: Vec<Bytes>,
}

impl EventLog {
    fn push(&mut self, name: &str, data: Value) {
        // `type` first and `sequence_number` last, as OpenAI writes them.
        let mut event = serde_json::Map::new();
        event.insert("type".into(), json!(name));
        if let Value::Object(fields) = data {
            event.extend(fields);
        }
        event.insert("sequence_number".into(), json!(self.events.len()));
        self.events.push(named_event(name, &Value::Object(event)));
    }
}

/// The events of a streamed response, each framed as `event: …\ndata: …\n\n`.
pub fn stream_events(reply: &Reply, envelope: Envelope<'_>) -> Vec<Bytes> {
    let ids = ItemIds::new(envelope);
    let mut log = EventLog { events: Vec::new() };
    let pending = response_object(envelope, "in_progress", Vec::new(), Value::Null);
    log.push("response.created", json!({"response": pending}));
    log.push("response.in_progress", json!({"response": pending}));

    let mut output_index = 0;
    if let Some(thinking) = &reply.thinking {
        let id = ids.reasoning();
        let text = thinking.text();
        let at = |extra: Value| {
            let mut data = json!({"item_id": id, "output_index": output_index, "summary_index": 0});
            if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
                data.extend(extra);
            }
            data
        };
        log.push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": {"id": id, "type": "reasoning", "summary": []}}),
        );
        log.push(
            "response.reasoning_summary_part.added",
            at(json!({"part": {"type": "summary_text", "text": ""}})),
        );
        for piece in &thinking.pieces {
            log.push(
                "response.reasoning_summary_text.delta",
                at(json!({"delta": piece})),
            );
        }
        log.push(
            "response.reasoning_summary_text.done",
            at(json!({"text": text})),
        );
        log.push(
            "response.reasoning_summary_part.done",
            at(json!({"part": {"type": "summary_text", "text": text}})),
        );
        log.push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": reasoning_item(&id, thinking)}),
        );
        output_index += 1;
    }

    match &reply.content {
        ReplyContent::Text(pieces) => {
            let id = ids.message();
            let text = pieces.concat();
            let at = |extra: Value| {
                let mut data =
                    json!({"item_id": id, "output_index": output_index, "content_index": 0});
                if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
                    data.extend(extra);
                }
                data
            };
            let mut added = message_item(&id, "", "in_progress");
            added["content"] = json!([]);
            log.push(
                "response.output_item.added",
                json!({"output_index": output_index, "item": added}),
            );
            log.push(
                "response.content_part.added",
                at(json!({"part": text_part("")})),
            );
            for piece in pieces {
                log.push(
                    "response.output_text.delta",
                    at(json!({"delta": piece, "logprobs": []})),
                );
            }
            log.push(
                "response.output_text.done",
                at(json!({"text": text, "logprobs": []})),
            );
            log.push(
                "response.content_part.done",
                at(json!({"part": text_part(&text)})),
            );
            log.push(
                "response.output_item.done",
                json!({"output_index": output_index, "item": message_item(&id, &text, "completed")}),
            );
        }
        ReplyContent::ToolCalls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                let id = ids.function_call(index);
                log.push(
                    "response.output_item.added",
                    json!({"output_index": output_index,
                           "item": function_call_item(&id, index, call, "", "in_progress")}),
                );
                let (first, second) = halves(&call.arguments);
                for delta in [first, second] {
                    log.push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": output_index, "delta": delta}),
                    );
                }
                log.push(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": output_index, "arguments": call.arguments}),
                );
                log.push(
                    "response.output_item.done",
                    json!({"output_index": output_index,
                           "item": function_call_item(&id, index, call, &call.arguments, "completed")}),
                );
                output_index += 1;
            }
        }
    }

    let status = final_status(reply);
    let done = response_object(
        envelope,
        status,
        output_items(reply, &ids),
        usage_json(reply),
    );
    let name = if status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    log.push(name, json!({"response": done}));
    log.events
}

/// The in-stream `error` event a Responses stream ends with, numbered after
/// the `sent` events before it.
pub fn error_event(message: &str, sent: usize) -> Bytes {
    let data = json!({
        "type": "error",
        "code": "server_error",
        "message": message,
        "param": null,
        "sequence_number": sent,
    });
    named_event("error", &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::model::signature_of;

    const ENVELOPE: Envelope<'static> = Envelope {
        id: "resp_sim_7",
        created: 1700000000,
        model: "m",
    };

    fn reply(body: Value) -> Reply {
        Reply::for_input(&parse(&body).expect("valid request"))
    }

    /// Parses `event: NAME\ndata: JSON\n\n` events, checking that each data's
    /// `type` is the event name and that `sequence_number`s count from 0.
    fn parse_events(events: &[Bytes]) -> Vec<(String, Value)> {
        events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let text = std::str::from_utf8(event).unwrap();
                let (name, data) = text
                    .strip_prefix("event: ")
                    .and_then(|rest| rest.strip_suffix("\n\n"))
                    .and_then(|rest| rest.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("badly framed event {text:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], name);
                assert_eq!(data["sequence_number"], index, "{text}");
                (name.to_owned(), data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn parses_items_instructions_tools_and_the_cache_key() {
        let body = json!({
            "model": "codex-sim",
            "stream": true,
            "instructions": "0123456789ab",
            "input": [
                {"type": "message", "role": "developer",
                 "content": [{"type": "input_text", "text": "abcdefgh"}]},
                {"role": "user", "content": "list the files"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}],
                 "encrypted_content": "opaque"},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
                 "arguments": "{\"cmd\":\"ls\"}"},
                {"type": "function_call_output", "call_id": "call_1",
                 "output": "Cargo.toml src tests README.md"},
            ],
            "tools": [
                {"type": "function", "name": "exec_command", "parameters": {}},
                {"type": "web_search"},
                {"type": "namespace", "name": "agents", "tools": []},
                {"type": "function", "name": "view_image"},
            ],
            "tool_choice": "auto",
            "reasoning": {"summary": "auto"},
            "max_output_tokens": 100,
            "prompt_cache_key": "session-1",
        });
        let input = parse(&body).unwrap();
        assert_eq!(input.model, "codex-sim");
        assert!(input.stream && input.thinking);
        assert_eq!(input.tools, ["exec_command", "view_image"]);
        assert_eq!(input.tool_choice, ToolChoice::Auto);
        assert_eq!(input.max_tokens, Some(100));
        assert_eq!(input.last_user_text.as_deref(), Some("list the files"));
        assert_eq!(
            input.tool_result.as_deref(),
            Some("Cargo.toml src tests README.md")
        );
        // instructions 12 B -> 7, developer 8 B -> 6, user 14 B -> 8, reasoning 3 B -> 5,
        // call 12 B -> 7, output 30 B -> 12.
        assert_eq!(input.prompt_tokens, 7 + 6 + 8 + 5 + 7 + 12);
        assert_eq!(input.cached_tokens, 7 + 6);

        let mut uncached = body.clone();
        uncached.as_object_mut().unwrap().remove("prompt_cache_key");
        assert_eq!(parse(&uncached).unwrap().cached_tokens, 0);

        let reply = Reply::for_input(&input);
        assert_eq!(
            reply.text().unwrap(),
            "Hello from codex-sim. The tool said: Cargo.toml src tests README.md"
        );
    }

    #[test]
    fn parses_string_input_and_tool_choices() {
        let input = parse(&json!({"model": "m", "input": "hello there"})).unwrap();
        assert_eq!(input.last_user_text.as_deref(), Some("hello there"));
        assert_eq!(input.prompt_tokens, 4 + 3);
        assert!(!input.stream && !input.thinking);
        for (choice, expected) in [
            (json!("none"), ToolChoice::Never),
            (json!("required"), ToolChoice::Required),
            (
                json!({"type": "function", "name": "f"}),
                ToolChoice::Named("f".into()),
            ),
            (json!("auto"), ToolChoice::Auto),
        ] {
            let body = json!({"model": "m", "input": "x", "tool_choice": choice});
            assert_eq!(parse(&body).unwrap().tool_choice, expected);
        }
        assert!(parse(&json!({"model": "m"})).is_err());
        assert!(parse(&json!({"model": "m", "input": 3})).is_err());
        assert!(parse(&json!({"model": "m", "input": "x", "instructions": 1})).is_err());
    }

    #[test]
    fn text_stream_has_the_official_grammar() {
        let reply = reply(json!({"model": "m", "input": "hi there", "stream": true}));
        let events = parse_events(&stream_events(&reply, ENVELOPE));
        let mut expected = vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ];
        expected.extend(["response.output_text.delta"; 7]);
        expected.extend([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(names(&events), expected);

        let created = &events[0].1["response"];
        assert_eq!(created["id"], "resp_sim_7");
        assert_eq!(created["object"], "response");
        assert_eq!(created["created_at"], 1700000000);
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["output"], json!([]));
        assert_eq!(
            events[2].1["item"],
            json!({"id": "msg_sim_7", "type": "message", "status": "in_progress",
                   "role": "assistant", "content": []})
        );
        assert_eq!(
            events[3].1,
            json!({"type": "response.content_part.added", "item_id": "msg_sim_7",
                   "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                   "sequence_number": 3})
        );
        let streamed: String = events
            .iter()
            .filter(|(name, _)| name == "response.output_text.delta")
            .map(|(_, data)| data["delta"].as_str().unwrap())
            .collect();
        assert_eq!(streamed, "Hello from m. You said: hi there");
        assert_eq!(events[11].1["text"], streamed);
        assert_eq!(events[12].1["part"]["text"], streamed);
        assert_eq!(events[13].1["item"]["status"], "completed");

        let completed = &events[14].1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["output"], json!([events[13].1["item"]]));
        assert_eq!(
            completed["usage"],
            json!({"input_tokens": 6, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 13})
        );
        // The non-streamed body is the completed response.
        assert_eq!(&response_json(&reply, ENVELOPE), completed);
    }

    #[test]
    fn reasoning_comes_first_as_a_summarised_item_with_encrypted_content() {
        let reply = reply(json!({
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "why"}]}],
            "reasoning": {"effort": "high"},
            "stream": true,
        }));
        let events = parse_events(&stream_events(&reply, ENVELOPE));
        assert_eq!(
            names(&events)[..10],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
            ]
        );
        assert_eq!(
            events[2].1["item"],
            json!({"id": "rs_sim_7", "type": "reasoning", "summary": []})
        );
        assert_eq!(events[4].1["summary_index"], 0);
        assert_eq!(events[7].1["text"], "Thinking about: why");
        let signature = signature_of("Thinking about: why");
        assert!(signature.starts_with("sig-sim/") && signature.contains('+'));
        let item = json!({"id": "rs_sim_7", "type": "reasoning",
                          "summary": [{"type": "summary_text", "text": "Thinking about: why"}],
                          "encrypted_content": signature});
        assert_eq!(events[9].1["item"], item);
        // Then the message, at output index 1.
        assert_eq!(events[10].1["output_index"], 1);
        assert_eq!(events[10].1["item"]["type"], "message");
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(completed["output"][0], item);
        assert_eq!(
            completed["usage"]["output_tokens_details"]["reasoning_tokens"],
            3
        );
        assert_eq!(completed["usage"]["output_tokens"], 3 + 6);
    }

    #[test]
    fn function_calls_stream_their_arguments_in_two_deltas() {
        let reply = reply(json!({
            "model": "m",
            "input": "run both [sim:parallel]",
            "tools": [{"type": "function", "name": "exec_command"},
                      {"type": "function", "name": "view_image"}],
        }));
        let events = parse_events(&stream_events(&reply, ENVELOPE));
        let per_call = [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ];
        let mut expected = vec!["response.created", "response.in_progress"];
        expected.extend(per_call);
        expected.extend(per_call);
        expected.push("response.completed");
        assert_eq!(names(&events), expected);

        assert_eq!(
            events[2].1["item"],
            json!({"id": "fc_sim_7_1", "type": "function_call", "status": "in_progress",
                   "arguments": "", "call_id": "call_sim_1", "name": "exec_command"})
        );
        assert_eq!(events[3].1["delta"], "{\"sim\"");
        assert_eq!(events[4].1["delta"], ":true}");
        assert_eq!(events[5].1["arguments"], "{\"sim\":true}");
        assert_eq!(events[7].1["output_index"], 1);
        assert_eq!(events[7].1["item"]["call_id"], "call_sim_2");
        assert_eq!(events[7].1["item"]["name"], "view_image");
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(completed["output"].as_array().unwrap().len(), 2);
        assert_eq!(completed["output"][1]["status"], "completed");
        assert_eq!(completed["output"][1]["arguments"], "{\"sim\":true}");
        assert_eq!(completed["usage"]["output_tokens"], 10);

        // A named tool_choice forces that call; the default is a text answer.
        let named = self::reply(json!({
            "model": "m", "input": "x",
            "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "function", "name": "b"},
        }));
        assert_eq!(response_json(&named, ENVELOPE)["output"][0]["name"], "b");
        let plain = self::reply(json!({
            "model": "m", "input": "x",
            "tools": [{"type": "function", "name": "a"}],
        }));
        assert!(plain.text().is_some());
    }

    #[test]
    fn output_limit_ends_incomplete() {
        let reply = reply(json!({"model": "m", "input": "a b c", "max_output_tokens": 2}));
        let body = response_json(&reply, ENVELOPE);
        assert_eq!(body["status"], "incomplete");
        assert_eq!(
            body["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(body["output"][0]["content"][0]["text"], "Hello from ");
        let events = parse_events(&stream_events(&reply, ENVELOPE));
        assert_eq!(events.last().unwrap().0, "response.incomplete");
    }

    #[test]
    fn error_event_continues_the_numbering() {
        let event = error_event("boom", 5);
        assert_eq!(
            &event[..],
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"boom\",\"param\":null,\"sequence_number\":5}\n\n"
        );
    }
}
