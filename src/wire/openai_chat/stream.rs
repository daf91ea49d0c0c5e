//! Streams: decode a provider's SSE events into IR stream events, and encode IR stream
//! events as the SSE grammar a client of this format expects.
//!
//! Chat chunks have no block boundaries: the decoder opens a block at the first delta of each
//! kind (text, reasoning, each `tool_calls[].index`), closes the current one when another kind
//! begins, and closes all of them at `finish_reason`. Parallel tool calls stay open together.

use std::borrow::Cow;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{chat_id, finish_reason, stop_reason, UsageIn, UsageOut};
use crate::errors::{Error, Fault};
use crate::units::Usage;
use crate::units::Usd;
use crate::wire::ir::{BlockStart, Delta, StopReason, StreamEvent, StreamMeta};
use crate::wire::sse::{self, Event};

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceIn<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    /// DeepSeek style.
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter / vLLM style.
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDeltaIn<'a>>>,
    /// Legacy single function call.
    #[serde(borrow, default)]
    function_call: Option<FunctionDeltaIn<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDeltaIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDeltaIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionDeltaIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorIn<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// A tool call seen in the stream.
#[derive(Debug)]
struct ToolSlot {
    /// The provider's `tool_calls[].index` (None when it sent none).
    key: Option<u64>,
    /// The provider's id (None when the gateway made one up).
    id: Option<String>,
    /// The IR block index.
    index: usize,
    open: bool,
}

/// Push-style decoder of a provider stream, one per request.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    stopped: bool,
    next_index: usize,
    text: Option<usize>,
    thinking: Option<usize>,
    tools: Vec<ToolSlot>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder::default()
    }

    /// Decode one SSE event into zero or more IR events. Unknown events are skipped; the
    /// error is for data that cannot be parsed at all.
    pub fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let chunk: ChunkIn = match serde_json::from_str(data) {
            Ok(c) => c,
            // JSON of another shape is an event this decoder does not know: skip it.
            Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok() => return Ok(()),
            Err(e) => return Err(Error::new(Fault::Malformed, "chat chunk is not JSON").because(e)),
        };
        if let Some(error) = chunk.error.filter(|e| e.get() != "null") {
            let message = match error.get().starts_with('{') {
                true => serde_json::from_str::<ErrorIn>(error.get())
                    .ok()
                    .and_then(|e| e.message)
                    .map(Cow::into_owned),
                false => serde_json::from_str::<String>(error.get()).ok(),
            };
            out.push(StreamEvent::Error {
                message: message.unwrap_or_else(|| error.get().to_owned()),
            });
            return Ok(());
        }
        if chunk.id.is_none() && chunk.choices.is_none() && chunk.usage.is_none() {
            return Ok(()); // an object of another kind (a keep-alive, a vendor event)
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.id.unwrap_or_default().into_owned(),
                model: chunk.model.unwrap_or_default().into_owned(),
            });
        }
        // With n > 1 only the first choice is translated.
        for choice in chunk.choices.into_iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.delta(delta, out);
            }
            if let Some(reason) = choice.finish_reason {
                self.close_all(out);
                if !self.stopped {
                    self.stopped = true;
                    let mut stop = stop_reason(&reason);
                    // Some providers say "stop" after tool calls.
                    if stop == StopReason::EndTurn && !self.tools.is_empty() {
                        stop = StopReason::ToolUse;
                    }
                    out.push(StreamEvent::Stop(stop));
                }
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::Usage(usage.ir()));
        }
        Ok(())
    }

    /// The provider's stream ended: emit whatever closes open blocks.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.close_all(out);
    }

    fn delta(&mut self, delta: DeltaIn<'_>, out: &mut Vec<StreamEvent>) {
        if let Some(r) = delta.reasoning_content.or(delta.reasoning) {
            if !r.is_empty() {
                let index = match self.thinking {
                    Some(i) => i,
                    None => self.open(BlockStart::Thinking, out),
                };
                self.thinking = Some(index);
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Thinking(r.into_owned()),
                });
            }
        }
        if let Some(t) = delta.content.or(delta.refusal) {
            if !t.is_empty() {
                let index = match self.text {
                    Some(i) => i,
                    None => self.open(BlockStart::Text, out),
                };
                self.text = Some(index);
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Text(t.into_owned()),
                });
            }
        }
        for call in delta.tool_calls.into_iter().flatten() {
            self.tool(call.index, call.id, call.function, out);
        }
        if let Some(f) = delta.function_call {
            self.tool(Some(u64::MAX), None, Some(f), out);
        }
    }

    fn tool(
        &mut self,
        key: Option<u64>,
        id: Option<Cow<'_, str>>,
        function: Option<FunctionDeltaIn<'_>>,
        out: &mut Vec<StreamEvent>,
    ) {
        let id = id.filter(|i| !i.is_empty());
        let (name, arguments) = match function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let found = match (key, &id) {
            // A known index, unless it comes with another id (a provider reusing index 0).
            (Some(k), _) => self.tools.iter().rposition(|t| {
                t.key == Some(k)
                    && match (&id, &t.id) {
                        (Some(new), Some(known)) => new == known,
                        _ => true,
                    }
            }),
            (None, Some(i)) => self
                .tools
                .iter()
                .rposition(|t| t.id.as_deref() == Some(i.as_ref())),
            (None, None) => self.tools.iter().rposition(|t| t.open),
        };
        let slot = match found {
            Some(s) => s,
            None => {
                let call_id = match &id {
                    Some(i) => i.clone().into_owned(),
                    None => format!("call_{}", self.tools.len()),
                };
                let index = self.open(
                    BlockStart::ToolCall {
                        id: call_id,
                        name: name.unwrap_or_default().into_owned(),
                    },
                    out,
                );
                self.tools.push(ToolSlot {
                    key,
                    id: id.map(Cow::into_owned),
                    index,
                    open: true,
                });
                self.tools.len() - 1
            }
        };
        let slot = &self.tools[slot];
        // Arguments for a call already closed (another kind of block came between) have no
        // block to go to.
        if let Some(a) = arguments.filter(|a| !a.is_empty() && slot.open) {
            out.push(StreamEvent::Delta {
                index: slot.index,
                delta: Delta::ToolArguments(a.into_owned()),
            });
        }
    }

    /// Start a block at the next index, closing the blocks it cannot interleave with: any
    /// open one, except that tool calls stay open beside a new tool call.
    fn open(&mut self, block: BlockStart, out: &mut Vec<StreamEvent>) -> usize {
        let keep_tools = matches!(block, BlockStart::ToolCall { .. });
        let mut closing: Vec<usize> = self.text.take().into_iter().collect();
        closing.extend(self.thinking.take());
        if !keep_tools {
            for t in self.tools.iter_mut().filter(|t| t.open) {
                t.open = false;
                closing.push(t.index);
            }
        }
        closing.sort_unstable();
        out.extend(
            closing
                .into_iter()
                .map(|index| StreamEvent::BlockStop { index }),
        );
        let index = self.next_index;
        self.next_index += 1;
        out.push(StreamEvent::BlockStart { index, block });
        index
    }

    fn close_all(&mut self, out: &mut Vec<StreamEvent>) {
        let mut closing: Vec<usize> = self.text.take().into_iter().collect();
        closing.extend(self.thinking.take());
        for t in self.tools.iter_mut().filter(|t| t.open) {
            t.open = false;
            closing.push(t.index);
        }
        closing.sort_unstable();
        out.extend(
            closing
                .into_iter()
                .map(|index| StreamEvent::BlockStop { index }),
        );
    }
}

#[derive(Serialize)]
struct ChunkOut<'r> {
    id: &'r str,
    object: &'static str,
    created: u64,
    model: &'r str,
    choices: &'r [ChoiceOut<'r>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageCostOut>,
}

/// The usage chunk's `usage`, with the gateway's `cost` (OpenRouter's convention) when the
/// stream is priced: dollars as a JSON number written from exact digits, never a float.
#[derive(Serialize)]
struct UsageCostOut {
    #[serde(flatten)]
    usage: UsageOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct ChoiceOut<'r> {
    index: u32,
    delta: DeltaOut<'r>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'r> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolDeltaOut<'r>; 1]>,
}

#[derive(Serialize)]
struct ToolDeltaOut<'r> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'r str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDeltaOut<'r>,
}

#[derive(Serialize)]
struct FunctionDeltaOut<'r> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'r str>,
    arguments: &'r str,
}

/// Stateful encoder of a client stream, one per request.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// The first chunk (with the role) was written.
    opened: bool,
    /// IR block index -> position among the tool calls (`tool_calls[].index`).
    tools: Vec<(usize, usize)>,
    usage: Usage,
    done: bool,
}

impl StreamEncoder {
    pub fn new(meta: &StreamMeta) -> Self {
        StreamEncoder {
            id: String::new(),
            model: String::new(),
            created: meta.created,
            include_usage: meta.include_usage,
            opened: false,
            tools: Vec::new(),
            usage: Usage::default(),
            done: false,
        }
    }

    /// Encode one IR event as zero or more SSE events of this format.
    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                if !self.opened {
                    self.id = chat_id(id);
                    self.model.clone_from(model);
                    self.open(out);
                }
            }
            StreamEvent::BlockStart { index, block } => {
                self.open(out);
                if let BlockStart::ToolCall { id, name } = block {
                    let k = self.tools.len();
                    self.tools.push((*index, k));
                    self.delta(
                        DeltaOut {
                            tool_calls: Some([ToolDeltaOut {
                                index: k,
                                id: Some(id),
                                kind: Some("function"),
                                function: FunctionDeltaOut {
                                    name: Some(name),
                                    arguments: "",
                                },
                            }]),
                            ..DeltaOut::default()
                        },
                        out,
                    );
                }
            }
            StreamEvent::Delta { index, delta } => {
                self.open(out);
                let d = match delta {
                    Delta::Text(t) if !t.is_empty() => DeltaOut {
                        content: Some(t),
                        ..DeltaOut::default()
                    },
                    Delta::Thinking(t) if !t.is_empty() => DeltaOut {
                        reasoning_content: Some(t),
                        ..DeltaOut::default()
                    },
                    Delta::ToolArguments(a) if !a.is_empty() => {
                        let Some(&(_, k)) = self.tools.iter().rev().find(|(i, _)| i == index)
                        else {
                            return;
                        };
                        DeltaOut {
                            tool_calls: Some([ToolDeltaOut {
                                index: k,
                                id: None,
                                kind: None,
                                function: FunctionDeltaOut {
                                    name: None,
                                    arguments: a,
                                },
                            }]),
                            ..DeltaOut::default()
                        }
                    }
                    // Signatures (and empty pieces) have no Chat form.
                    _ => return,
                };
                self.delta(d, out);
            }
            StreamEvent::BlockStop { .. } => {}
            StreamEvent::Stop(reason) => {
                self.open(out);
                self.chunk(
                    &[ChoiceOut {
                        index: 0,
                        delta: DeltaOut::default(),
                        finish_reason: Some(finish_reason(*reason)),
                    }],
                    None,
                    out,
                );
            }
            StreamEvent::Usage(u) => self.usage.merge(u),
            StreamEvent::Error { message } => self.fail(message, out),
        }
    }

    /// The provider's stream ended normally: write the closing events, with `cost` (what
    /// was billed) in the usage chunk.
    pub fn finish(&mut self, cost: Option<Usd>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.open(out);
        if self.include_usage {
            let cost = cost.and_then(|c| RawValue::from_string(c.to_decimal()).ok());
            let usage = UsageCostOut {
                usage: UsageOut::new(&self.usage),
                cost,
            };
            self.chunk(&[], Some(usage), out);
        }
        sse::write_event(out, None, b"[DONE]");
        self.done = true;
    }

    /// The provider's stream broke: write one complete, parseable error event in this
    /// format's grammar. Nothing is written after it.
    pub fn fail(&mut self, message: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
        let body = serde_json::json!({
            "error": {"message": message, "type": "server_error", "code": "upstream_error"}
        });
        sse::write_event(out, None, body.to_string().as_bytes());
    }

    /// Write the first chunk (`role: assistant`) if it was not written yet.
    fn open(&mut self, out: &mut BytesMut) {
        if self.opened {
            return;
        }
        self.opened = true;
        if !self.id.starts_with("chatcmpl-") {
            self.id = chat_id(&self.id);
        }
        self.delta(
            DeltaOut {
                role: Some("assistant"),
                content: Some(""),
                ..DeltaOut::default()
            },
            out,
        );
    }

    fn delta(&self, delta: DeltaOut<'_>, out: &mut BytesMut) {
        self.chunk(
            &[ChoiceOut {
                index: 0,
                delta,
                finish_reason: None,
            }],
            None,
            out,
        );
    }

    fn chunk(&self, choices: &[ChoiceOut<'_>], usage: Option<UsageCostOut>, out: &mut BytesMut) {
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        if let Ok(data) = serde_json::to_vec(&chunk) {
            sse::write_event(out, None, &data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sse::SseParser;
    use StreamEvent as E;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/wire/openai_chat/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Decode a whole stream as the transcoder does (comments skipped), finish included.
    fn decode_all(bytes: &[u8]) -> Vec<StreamEvent> {
        let mut parser = SseParser::default();
        parser.push(bytes);
        let mut decoder = StreamDecoder::new();
        let mut out = Vec::new();
        while let Some(frame) = parser.next_frame().unwrap() {
            let event = frame.event();
            if !event.data.is_empty() {
                decoder.decode(&event, &mut out).unwrap();
            }
        }
        decoder.finish(&mut out);
        out
    }

    fn start(id: &str, model: &str) -> StreamEvent {
        E::Start {
            id: id.into(),
            model: model.into(),
        }
    }

    fn block(index: usize, block: BlockStart) -> StreamEvent {
        E::BlockStart { index, block }
    }

    fn tool(id: &str, name: &str) -> BlockStart {
        BlockStart::ToolCall {
            id: id.into(),
            name: name.into(),
        }
    }

    fn text(index: usize, t: &str) -> StreamEvent {
        E::Delta {
            index,
            delta: Delta::Text(t.into()),
        }
    }

    fn thinking(index: usize, t: &str) -> StreamEvent {
        E::Delta {
            index,
            delta: Delta::Thinking(t.into()),
        }
    }

    fn args(index: usize, t: &str) -> StreamEvent {
        E::Delta {
            index,
            delta: Delta::ToolArguments(t.into()),
        }
    }

    fn stop(index: usize) -> StreamEvent {
        E::BlockStop { index }
    }

    fn usage(input: u64, cached_input: u64, output: u64, reasoning: u64) -> StreamEvent {
        E::Usage(crate::units::Usage {
            input,
            cached_input,
            cache_write: 0,
            output,
            reasoning,
        })
    }

    #[test]
    fn a_text_stream_gets_synthesized_blocks() {
        assert_eq!(
            decode_all(&fixture("stream_text.sse")),
            [
                start("chatcmpl-CbX7r2TextDemo", "gpt-4o-mini-2024-07-18"),
                block(0, BlockStart::Text),
                text(0, "Hello"),
                text(0, " there"),
                text(0, "! \"hi\""),
                stop(0),
                E::Stop(StopReason::EndTurn),
            ]
        );
    }

    #[test]
    fn parallel_tool_calls_are_open_together() {
        assert_eq!(
            decode_all(&fixture("stream_tools_parallel.sse")),
            [
                start("chatcmpl-CbX8toolsPar", "gpt-4.1-2025-04-14"),
                block(0, tool("call_W1xa", "get_weather")),
                args(0, "{\"city\": "),
                args(0, "\"Paris\"}"),
                block(1, tool("call_T2yb", "get_time")),
                args(1, "{\"tz\": \"CET\"}"),
                stop(0),
                stop(1),
                E::Stop(StopReason::ToolUse),
                usage(84, 0, 41, 0),
            ]
        );
    }

    #[test]
    fn usage_on_a_chunk_with_choices_and_cached_tokens() {
        assert_eq!(
            decode_all(&fixture("stream_usage_cached.sse")),
            [
                start("gen-1764400200-cachedDemo", "openai/o4-mini"),
                block(0, BlockStart::Text),
                text(0, "Cached"),
                text(0, " answer"),
                stop(0),
                E::Stop(StopReason::MaxTokens),
                usage(2048, 1920, 300, 256),
            ]
        );
    }

    #[test]
    fn reasoning_content_opens_a_thinking_block() {
        assert_eq!(
            decode_all(&fixture("stream_reasoning.sse")),
            [
                start("5f1a7c9e-reasoning-demo", "deepseek-reasoner"),
                block(0, BlockStart::Thinking),
                thinking(0, "The user"),
                thinking(0, " wants 2+2."),
                stop(0),
                block(1, BlockStart::Text),
                text(1, "4"),
                stop(1),
                E::Stop(StopReason::EndTurn),
                usage(12, 0, 20, 15),
            ]
        );
    }

    #[test]
    fn a_provider_error_is_an_error_event() {
        assert_eq!(
            decode_all(&fixture("stream_error.sse")),
            [
                start("chatcmpl-CbX9errorDemo", "gpt-4o"),
                block(0, BlockStart::Text),
                text(0, "Par"),
                E::Error {
                    message: "The server had an error while processing your request. Sorry \
                              about that!"
                        .into()
                },
                // finish() closes what was open.
                stop(0),
            ]
        );
    }

    #[test]
    fn odd_chunks_are_handled_without_panics() {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        let ev = |data: &'static str| Event {
            name: None,
            data: data.into(),
        };
        assert!(d.decode(&ev("{not json"), &mut out).is_err());
        d.decode(&ev("[1,2]"), &mut out).unwrap();
        d.decode(&ev(r#"{"choices":"x"}"#), &mut out).unwrap();
        d.decode(&ev(r#"{"type":"ping"}"#), &mut out).unwrap();
        d.decode(&ev(r#"{"error":"quota"}"#), &mut out).unwrap();
        assert_eq!(
            out,
            [E::Error {
                message: "quota".into()
            }]
        );
        out.clear();
        let chunks = [
            // index 0 reused for a second call with another id; a call without an index;
            // text after the calls closes them; late arguments for a closed call are dropped.
            r#"{"id":"c","model":"m","choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"z","function":{"name":"h"}}]}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
            r#"{"choices":[{"delta":{"content":"done"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"arguments":"late"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
        ];
        for c in chunks {
            d.decode(&ev(c), &mut out).unwrap();
        }
        d.finish(&mut out);
        assert_eq!(
            out,
            [
                start("c", "m"),
                block(0, tool("a", "f")),
                args(0, "{"),
                block(1, tool("b", "g")),
                args(1, "{}"),
                args(1, "}"),
                block(2, tool("z", "h")),
                stop(0),
                stop(1),
                stop(2),
                block(3, BlockStart::Text),
                text(3, "done"),
                stop(3),
                // "stop" after tool calls is a tool-use stop.
                E::Stop(StopReason::ToolUse),
            ]
        );
    }

    fn meta(include_usage: bool) -> StreamMeta {
        StreamMeta {
            estimated_input_tokens: 7,
            include_usage,
            created: 1764400000,
        }
    }

    fn chunk(delta: &str, finish: &str) -> String {
        format!(
            "data: {{\"id\":\"chatcmpl-01X\",\"object\":\"chat.completion.chunk\",\"created\":1764400000,\
             \"model\":\"claude-x\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    }

    #[test]
    fn the_encoder_writes_the_chat_grammar() {
        let events = [
            start("msg_01X", "claude-x"),
            block(0, BlockStart::Thinking),
            thinking(0, "hm"),
            E::Delta {
                index: 0,
                delta: Delta::Signature("sig".into()),
            },
            stop(0),
            block(1, BlockStart::Text),
            text(1, "Hi"),
            stop(1),
            block(2, tool("toolu_1", "Read")),
            args(2, "{\"p\":"),
            args(2, "1}"),
            stop(2),
            block(3, tool("toolu_2", "Grep")),
            args(3, "{}"),
            stop(3),
            E::Stop(StopReason::ToolUse),
            usage(100, 80, 20, 5),
        ];
        let mut enc = StreamEncoder::new(&meta(true));
        let mut out = BytesMut::new();
        for e in &events {
            enc.encode(e, &mut out);
        }
        enc.finish(None, &mut out);
        let expected = [
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            chunk(r#"{"reasoning_content":"hm"}"#, "null"),
            chunk(r#"{"content":"Hi"}"#, "null"),
            chunk(
                r#"{"tool_calls":[{"index":0,"id":"toolu_1","type":"function","function":{"name":"Read","arguments":""}}]}"#,
                "null",
            ),
            chunk(
                r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"p\":"}}]}"#,
                "null",
            ),
            chunk(r#"{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}"#, "null"),
            chunk(
                r#"{"tool_calls":[{"index":1,"id":"toolu_2","type":"function","function":{"name":"Grep","arguments":""}}]}"#,
                "null",
            ),
            chunk(r#"{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}"#, "null"),
            chunk("{}", "\"tool_calls\""),
            concat!(
                r#"data: {"id":"chatcmpl-01X","object":"chat.completion.chunk","created":1764400000,"#,
                r#""model":"claude-x","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":20,"#,
                r#""total_tokens":120,"prompt_tokens_details":{"cached_tokens":80},"#,
                r#""completion_tokens_details":{"reasoning_tokens":5}}}"#,
                "\n\n"
            )
            .to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);

        // Without include_usage there is no usage chunk.
        let mut enc = StreamEncoder::new(&meta(false));
        let mut out = BytesMut::new();
        for e in &events {
            enc.encode(e, &mut out);
        }
        enc.finish(None, &mut out);
        let s = std::str::from_utf8(&out).unwrap();
        assert!(!s.contains("\"usage\"") && s.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn the_encoder_opens_lazily_and_fails_cleanly() {
        let mut enc = StreamEncoder::new(&meta(true));
        let mut out = BytesMut::new();
        enc.encode(&block(0, BlockStart::Text), &mut out);
        enc.encode(&text(0, "x"), &mut out);
        enc.fail("upstream went away", &mut out);
        enc.encode(&text(0, "y"), &mut out);
        enc.finish(None, &mut out);
        let s = std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = s.split_terminator("\n\n").collect();
        assert_eq!(lines.len(), 3, "{s}");
        let first: serde_json::Value = serde_json::from_str(&lines[0][6..]).unwrap();
        assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            lines[2],
            r#"data: {"error":{"message":"upstream went away","type":"server_error","code":"upstream_error"}}"#
        );

        // A provider error event ends the stream the same way.
        let mut enc = StreamEncoder::new(&meta(false));
        let mut out = BytesMut::new();
        enc.encode(&start("chatcmpl-1", "m"), &mut out);
        enc.encode(
            &E::Error {
                message: "boom".into(),
            },
            &mut out,
        );
        enc.finish(None, &mut out);
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.ends_with(
            "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":\"upstream_error\"}}\n\n"
        ), "{s}");
    }

    #[test]
    fn decode_encode_decode_keeps_the_events() {
        for name in [
            "stream_text.sse",
            "stream_tools_parallel.sse",
            "stream_usage_cached.sse",
            "stream_reasoning.sse",
        ] {
            let events = decode_all(&fixture(name));
            let mut enc = StreamEncoder::new(&meta(true));
            let mut out = BytesMut::new();
            for e in &events {
                enc.encode(e, &mut out);
            }
            enc.finish(None, &mut out);
            let mut again = decode_all(&out);
            let mut events = events;
            // The id gains the chatcmpl- prefix; a usage chunk is always written when asked.
            if let (E::Start { id, .. }, E::Start { id: id2, .. }) = (&mut events[0], &again[0]) {
                *id = id2.clone();
            }
            if !events.iter().any(|e| matches!(e, E::Usage(_))) {
                again.retain(|e| !matches!(e, E::Usage(_)));
            }
            assert_eq!(again, events, "{name}");
        }
    }

    #[test]
    fn a_made_up_id_gives_way_to_the_providers() {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        for data in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"real","function":{"arguments":"}"}}]}}]}"#,
        ] {
            let event = Event {
                name: None,
                data: data.into(),
            };
            d.decode(&event, &mut out).unwrap();
        }
        assert_eq!(
            out,
            [
                start("", ""),
                block(0, tool("call_0", "f")),
                args(0, "{"),
                args(0, "}")
            ]
        );
    }

    #[test]
    fn passthrough_relays_bytes_and_meters_usage() {
        use crate::wire::format::Format;
        use crate::wire::transcode::StreamTranscoder;
        let input = fixture("stream_tools_parallel.sse");
        let mut t = StreamTranscoder::new(Format::OpenAiChat, Format::OpenAiChat, meta(true));
        let mut out = BytesMut::new();
        for piece in input.chunks(37) {
            t.push(piece, &mut out).unwrap();
        }
        t.finish(&mut out).unwrap();
        t.close(None, &mut out);
        assert_eq!(&out[..], &input[..]);
        assert_eq!(t.stop_reason(), Some(StopReason::ToolUse));
        assert_eq!((t.usage().input, t.usage().output), (84, 41));
    }
}
