//! Streams: decode a provider's SSE events into IR stream events, and encode IR stream
//! events as the SSE grammar a client of this format expects.
//!
//! The grammar (both ways): `message_start`, `ping`, then per content block
//! `content_block_start`, `content_block_delta`s and `content_block_stop`, then
//! `message_delta` (stop reason and cumulative usage) and `message_stop`; `error` at any
//! point. Blocks never interleave on the wire: the encoder holds back a block that starts
//! while another is open (OpenAI parallel tool calls) and writes it once that one stops.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{
    empty_object, message_id, non_null, stop_from_wire, stop_to_wire, str_of, tool_id, BlockIn,
    Str, UsageOut, WireUsage,
};
use crate::errors::{Error, Fault};
use crate::units::{Usage, Usd};
use crate::wire::ir::{BlockStart, Delta, StopReason, StreamEvent, StreamMeta};
use crate::wire::sse::{self, Event};

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    content_block: Option<&'a RawValue>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageStartIn<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    partial_json: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stop_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
}

/// One content block the provider opened.
#[derive(Debug)]
struct Slot {
    /// The provider's `index`.
    wire: u64,
    /// The IR index, or None for a block kind the IR does not carry (server tools).
    ir: Option<usize>,
    open: bool,
}

/// Push-style decoder of a provider stream, one per request.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    /// Usage so far, in Anthropic's terms (merged before converting).
    usage: WireUsage,
    slots: Vec<Slot>,
    next: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder::default()
    }

    /// Decode one SSE event into zero or more IR events. Unknown events are skipped; the
    /// error is for data that cannot be parsed at all.
    pub fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let data = event.data.as_ref();
        let e: EventIn = match serde_json::from_str(data) {
            Ok(e) => e,
            Err(err) => {
                // JSON of an unexpected shape is skipped; only non-JSON is an error.
                return match serde_json::from_str::<&RawValue>(data) {
                    Ok(_) => Ok(()),
                    Err(_) => Err(Error::new(Fault::Malformed, "not JSON").because(err)),
                };
            }
        };
        let kind = e.kind.as_ref().map(|k| k.0.as_ref()).or(event.name);
        match kind {
            Some("message_start") => {
                let m: Option<MessageStartIn> =
                    non_null(e.message).and_then(|m| serde_json::from_str(m.get()).ok());
                let (id, model, usage) = match m {
                    Some(m) => (m.id, m.model, m.usage),
                    None => (None, None, None),
                };
                if !self.started {
                    self.started = true;
                    out.push(StreamEvent::Start {
                        id: id.map(|s| s.0.into_owned()).unwrap_or_default(),
                        model: model.map(|s| s.0.into_owned()).unwrap_or_default(),
                    });
                }
                self.usage(usage, out);
            }
            Some("content_block_start") => {
                let Some(wire) = e.index else { return Ok(()) };
                let Some(b) = non_null(e.content_block)
                    .and_then(|b| serde_json::from_str::<BlockIn>(b.get()).ok())
                else {
                    return Ok(());
                };
                self.start(wire, b, out);
            }
            Some("content_block_delta") => {
                let Some(wire) = e.index else { return Ok(()) };
                let Some(d) =
                    non_null(e.delta).and_then(|d| serde_json::from_str::<DeltaIn>(d.get()).ok())
                else {
                    return Ok(());
                };
                self.delta(wire, d, out);
            }
            Some("content_block_stop") => {
                let Some(wire) = e.index else { return Ok(()) };
                if let Some(slot) = self.slots.iter_mut().rev().find(|s| s.wire == wire) {
                    if slot.open {
                        slot.open = false;
                        if let Some(index) = slot.ir {
                            out.push(StreamEvent::BlockStop { index });
                        }
                    }
                }
            }
            Some("message_delta") => {
                let reason = non_null(e.delta)
                    .and_then(|d| serde_json::from_str::<DeltaIn>(d.get()).ok())
                    .and_then(|d| str_of(non_null(d.stop_reason)).map(|r| stop_from_wire(&r)));
                if let Some(reason) = reason {
                    out.push(StreamEvent::Stop(reason));
                }
                self.usage(e.usage, out);
            }
            Some("error") => {
                let err: Option<ErrorIn> =
                    non_null(e.error).and_then(|e| serde_json::from_str(e.get()).ok());
                let message = match err {
                    Some(ErrorIn {
                        message: Some(m), ..
                    }) => m.0.into_owned(),
                    Some(ErrorIn { kind: Some(k), .. }) => k.0.into_owned(),
                    _ => "the provider reported an error in its stream".to_owned(),
                };
                out.push(StreamEvent::Error { message });
            }
            _ => {} // ping, message_stop and events of later API versions
        }
        Ok(())
    }

    fn usage(&mut self, usage: Option<&RawValue>, out: &mut Vec<StreamEvent>) {
        let Some(u) = non_null(usage).and_then(|u| serde_json::from_str::<WireUsage>(u.get()).ok())
        else {
            return;
        };
        self.usage.merge(&u);
        out.push(StreamEvent::Usage(self.usage.to_ir()));
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: String::new(),
                model: String::new(),
            });
        }
    }

    fn start(&mut self, wire: u64, b: BlockIn<'_>, out: &mut Vec<StreamEvent>) {
        self.ensure_started(out);
        let owned = |v: Option<&RawValue>| str_of(non_null(v)).map(Cow::into_owned);
        // Opening content (Anthropic sends it empty; other servers may not).
        let (block, initial) = match str_of(non_null(b.kind)).as_deref() {
            Some("text") => (Some(BlockStart::Text), owned(b.text).map(Delta::Text)),
            Some("tool_use") => {
                let input = non_null(b.input)
                    .map(|i| i.get())
                    .filter(|i| i.chars().any(|c| !matches!(c, '{' | '}' | ' ' | '\n')));
                (
                    Some(BlockStart::ToolCall {
                        id: owned(b.id).unwrap_or_default(),
                        name: owned(b.name).unwrap_or_default(),
                    }),
                    input.map(|i| Delta::ToolArguments(i.to_owned())),
                )
            }
            Some("thinking") => (
                Some(BlockStart::Thinking),
                owned(b.thinking).map(Delta::Thinking),
            ),
            Some("redacted_thinking") => (
                Some(BlockStart::RedactedThinking {
                    data: owned(b.data).unwrap_or_default(),
                }),
                None,
            ),
            _ => (None, None),
        };
        let signature = owned(b.signature).map(Delta::Signature);
        let ir = block.map(|block| {
            let index = self.next;
            self.next += 1;
            out.push(StreamEvent::BlockStart { index, block });
            for delta in [initial, signature].into_iter().flatten() {
                if !delta_is_empty(&delta) {
                    out.push(StreamEvent::Delta { index, delta });
                }
            }
            index
        });
        self.slots.push(Slot {
            wire,
            ir,
            open: true,
        });
    }

    fn delta(&mut self, wire: u64, d: DeltaIn<'_>, out: &mut Vec<StreamEvent>) {
        let owned = |v: Option<&RawValue>| str_of(non_null(v)).map(Cow::into_owned);
        let delta = match str_of(non_null(d.kind)).as_deref() {
            Some("text_delta") => owned(d.text).map(Delta::Text),
            Some("input_json_delta") => owned(d.partial_json).map(Delta::ToolArguments),
            Some("thinking_delta") => owned(d.thinking).map(Delta::Thinking),
            Some("signature_delta") => owned(d.signature).map(Delta::Signature),
            _ => None, // citations and later delta types
        };
        let Some(delta) = delta else { return };
        let index = match self.slots.iter().rev().find(|s| s.wire == wire) {
            Some(slot) if slot.open => match slot.ir {
                Some(index) => index,
                None => return,
            },
            Some(_) => return,
            None => {
                // A delta for a block never started: open one when its kind is evident.
                let block = match delta {
                    Delta::Text(_) => BlockStart::Text,
                    Delta::Thinking(_) => BlockStart::Thinking,
                    Delta::ToolArguments(_) | Delta::Signature(_) => return,
                };
                self.ensure_started(out);
                let index = self.next;
                self.next += 1;
                out.push(StreamEvent::BlockStart { index, block });
                self.slots.push(Slot {
                    wire,
                    ir: Some(index),
                    open: true,
                });
                index
            }
        };
        out.push(StreamEvent::Delta { index, delta });
    }

    /// The provider's stream ended: emit whatever closes open blocks.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        for slot in &mut self.slots {
            if slot.open {
                slot.open = false;
                if let Some(index) = slot.ir {
                    out.push(StreamEvent::BlockStop { index });
                }
            }
        }
    }
}

fn delta_is_empty(d: &Delta) -> bool {
    match d {
        Delta::Text(s) | Delta::ToolArguments(s) | Delta::Thinking(s) | Delta::Signature(s) => {
            s.is_empty()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'r> {
    MessageStart {
        message: MessageStartOut<'r>,
    },
    Ping,
    ContentBlockStart {
        index: usize,
        content_block: BlockStartOut<'r>,
    },
    ContentBlockDelta {
        index: usize,
        delta: DeltaOut<'r>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDeltaOut,
        usage: DeltaUsageOut,
    },
    MessageStop,
    Error {
        error: ErrorOut<'r>,
    },
}

impl Out<'_> {
    fn name(&self) -> &'static str {
        match self {
            Out::MessageStart { .. } => "message_start",
            Out::Ping => "ping",
            Out::ContentBlockStart { .. } => "content_block_start",
            Out::ContentBlockDelta { .. } => "content_block_delta",
            Out::ContentBlockStop { .. } => "content_block_stop",
            Out::MessageDelta { .. } => "message_delta",
            Out::MessageStop => "message_stop",
            Out::Error { .. } => "error",
        }
    }
}

#[derive(Serialize)]
struct MessageStartOut<'r> {
    id: &'r str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'r str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: UsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockStartOut<'r> {
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'r str,
        name: &'r str,
        input: &'static RawValue,
    },
    Thinking {
        thinking: &'static str,
    },
    RedactedThinking {
        data: &'r str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaOut<'r> {
    #[serde(rename = "text_delta")]
    Text { text: &'r str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'r str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'r str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'r str },
}

#[derive(Serialize)]
struct MessageDeltaOut {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

/// `message_delta.usage`, with the gateway's `cost` (OpenRouter's convention) when the stream
/// is priced: dollars as a JSON number written from exact digits, never a float.
#[derive(Serialize)]
struct DeltaUsageOut {
    #[serde(flatten)]
    usage: UsageOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct ErrorOut<'r> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'r str,
}

/// A block that started while another was on the wire: held until that one stops.
#[derive(Debug)]
struct Held {
    index: usize,
    start: BlockStart,
    deltas: Vec<Delta>,
    stopped: bool,
}

/// Stateful encoder of a client stream, one per request.
#[derive(Debug)]
pub struct StreamEncoder {
    estimated_input: u64,
    id: String,
    model: String,
    started: bool,
    done: bool,
    usage: Usage,
    stop: Option<StopReason>,
    /// The IR index of the block open on the wire, with its wire index.
    live: Option<(usize, usize)>,
    held: VecDeque<Held>,
    /// The next wire index (blocks are numbered 0, 1, 2… in the order they are written).
    next_wire: usize,
    tool_calls: bool,
    scratch: Vec<u8>,
}

impl StreamEncoder {
    pub fn new(meta: &StreamMeta) -> Self {
        StreamEncoder {
            estimated_input: meta.estimated_input_tokens,
            id: String::new(),
            model: String::new(),
            started: false,
            done: false,
            usage: Usage::default(),
            stop: None,
            live: None,
            held: VecDeque::new(),
            next_wire: 0,
            tool_calls: false,
            scratch: Vec::new(),
        }
    }

    fn write(&mut self, event: &Out<'_>, out: &mut BytesMut) {
        self.scratch.clear();
        // Strings, numbers and valid raw JSON only: serializing cannot fail.
        if serde_json::to_writer(&mut self.scratch, event).is_ok() {
            sse::write_event(out, Some(event.name()), &self.scratch);
        }
    }

    /// `message_start` and one `ping`, once, before anything else.
    fn open(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let mut usage = UsageOut::from(&self.usage);
        if self.usage.input == 0 {
            usage.input_tokens = self.estimated_input;
        }
        usage.output_tokens = usage.output_tokens.max(1);
        let id = message_id(&self.id);
        let model = std::mem::take(&mut self.model);
        self.write(
            &Out::MessageStart {
                message: MessageStartOut {
                    id: &id,
                    kind: "message",
                    role: "assistant",
                    model: &model,
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    usage,
                },
            },
            out,
        );
        self.model = model;
        self.write(&Out::Ping, out);
    }

    /// Write a block's start on the wire (it becomes the live block).
    fn write_start(&mut self, index: usize, block: &BlockStart, out: &mut BytesMut) {
        let wire = self.next_wire;
        self.next_wire += 1;
        self.live = Some((index, wire));
        let generated;
        let content_block = match block {
            BlockStart::Text => BlockStartOut::Text { text: "" },
            BlockStart::ToolCall { id, name } => {
                self.tool_calls = true;
                generated = tool_id(id);
                BlockStartOut::ToolUse {
                    id: &generated,
                    name,
                    input: empty_object(),
                }
            }
            BlockStart::Thinking => BlockStartOut::Thinking { thinking: "" },
            BlockStart::RedactedThinking { data } => BlockStartOut::RedactedThinking { data },
        };
        self.write(
            &Out::ContentBlockStart {
                index: wire,
                content_block,
            },
            out,
        );
    }

    fn write_delta(&mut self, wire: usize, delta: &Delta, out: &mut BytesMut) {
        let delta = match delta {
            Delta::Text(text) => DeltaOut::Text { text },
            Delta::ToolArguments(partial_json) => DeltaOut::InputJson { partial_json },
            Delta::Thinking(thinking) => DeltaOut::Thinking { thinking },
            Delta::Signature(signature) => DeltaOut::Signature { signature },
        };
        self.write(&Out::ContentBlockDelta { index: wire, delta }, out);
    }

    /// Close the live block, then write held blocks until one is still open.
    fn stop_live(&mut self, out: &mut BytesMut) {
        if let Some((_, wire)) = self.live.take() {
            self.write(&Out::ContentBlockStop { index: wire }, out);
        }
        while let Some(held) = self.held.pop_front() {
            self.write_start(held.index, &held.start, out);
            let wire = self.next_wire - 1;
            for delta in &held.deltas {
                self.write_delta(wire, delta, out);
            }
            if !held.stopped {
                return;
            }
            self.live = None;
            self.write(&Out::ContentBlockStop { index: wire }, out);
        }
    }

    /// Encode one IR event as zero or more SSE events of this format.
    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                if !self.started {
                    self.id.clone_from(id);
                    self.model.clone_from(model);
                    self.open(out);
                }
            }
            StreamEvent::BlockStart { index, block } => {
                self.open(out);
                let known = self.live.is_some_and(|(i, _)| i == *index)
                    || self.held.iter().any(|h| h.index == *index);
                if known {
                    return;
                }
                if self.live.is_none() && self.held.is_empty() {
                    self.write_start(*index, block, out);
                } else {
                    self.held.push_back(Held {
                        index: *index,
                        start: block.clone(),
                        deltas: Vec::new(),
                        stopped: false,
                    });
                }
            }
            StreamEvent::Delta { index, delta } => {
                if delta_is_empty(delta) {
                    return;
                }
                match self.live {
                    Some((i, wire)) if i == *index => self.write_delta(wire, delta, out),
                    _ => {
                        if let Some(held) = self.held.iter_mut().find(|h| h.index == *index) {
                            hold(&mut held.deltas, delta);
                        }
                    }
                }
            }
            StreamEvent::BlockStop { index } => match self.live {
                Some((i, _)) if i == *index => self.stop_live(out),
                _ => {
                    if let Some(held) = self.held.iter_mut().find(|h| h.index == *index) {
                        held.stopped = true;
                    }
                }
            },
            StreamEvent::Usage(u) => self.usage.merge(u),
            StreamEvent::Stop(reason) => self.stop = Some(*reason),
            StreamEvent::Error { message } => self.fail(message, out),
        }
    }

    /// The provider's stream ended normally: write the closing events, with `cost` (what
    /// was billed) in `message_delta.usage`.
    pub fn finish(&mut self, cost: Option<Usd>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.open(out);
        // Close what is open, held blocks included.
        while self.live.is_some() || !self.held.is_empty() {
            if self.live.is_none() {
                if let Some(h) = self.held.front_mut() {
                    h.stopped = true;
                }
            }
            self.stop_live(out);
        }
        let stop_reason = match self.stop {
            Some(reason) => stop_to_wire(reason),
            None if self.tool_calls => "tool_use",
            None => "end_turn",
        };
        let mut usage = UsageOut::from(&self.usage);
        if self.usage.input == 0 {
            usage.input_tokens = self.estimated_input;
        }
        let cost = cost.and_then(|c| RawValue::from_string(c.to_decimal()).ok());
        self.write(
            &Out::MessageDelta {
                delta: MessageDeltaOut {
                    stop_reason,
                    stop_sequence: None,
                },
                usage: DeltaUsageOut { usage, cost },
            },
            out,
        );
        self.write(&Out::MessageStop, out);
        self.done = true;
    }

    /// The provider's stream broke: write one complete, parseable error event in this
    /// format's grammar. Nothing is written after it.
    pub fn fail(&mut self, message: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.write(
            &Out::Error {
                error: ErrorOut {
                    kind: "api_error",
                    message,
                },
            },
            out,
        );
        self.done = true;
    }
}

/// Keep a delta of a held block, joining it to the previous one of the same kind.
fn hold(deltas: &mut Vec<Delta>, delta: &Delta) {
    match (deltas.last_mut(), delta) {
        (Some(Delta::Text(a)), Delta::Text(b))
        | (Some(Delta::ToolArguments(a)), Delta::ToolArguments(b))
        | (Some(Delta::Thinking(a)), Delta::Thinking(b))
        | (Some(Delta::Signature(a)), Delta::Signature(b)) => a.push_str(b),
        _ => deltas.push(delta.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sse::SseParser;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../../tests/fixtures/wire/anthropic/", $name))
        };
    }

    fn decode_all(sse: &str) -> Vec<StreamEvent> {
        let mut parser = SseParser::default();
        parser.push(sse.as_bytes());
        let mut decoder = StreamDecoder::new();
        let mut out = Vec::new();
        let mut frames = Vec::new();
        while let Some(frame) = parser.next_frame().unwrap() {
            frames.push(frame);
        }
        frames.extend(parser.finish());
        for frame in frames {
            let event = frame.event();
            if !event.data.is_empty() {
                decoder.decode(&event, &mut out).unwrap();
            }
        }
        decoder.finish(&mut out);
        out
    }

    fn encode_all(events: &[StreamEvent], estimated: u64) -> String {
        let meta = StreamMeta {
            estimated_input_tokens: estimated,
            include_usage: false,
            created: 1_700_000_000,
        };
        let mut encoder = StreamEncoder::new(&meta);
        let mut out = BytesMut::new();
        for e in events {
            encoder.encode(e, &mut out);
        }
        encoder.finish(None, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn start(id: &str, model: &str) -> StreamEvent {
        StreamEvent::Start {
            id: id.into(),
            model: model.into(),
        }
    }
    fn block(index: usize, block: BlockStart) -> StreamEvent {
        StreamEvent::BlockStart { index, block }
    }
    fn tool(index: usize, id: &str, name: &str) -> StreamEvent {
        block(
            index,
            BlockStart::ToolCall {
                id: id.into(),
                name: name.into(),
            },
        )
    }
    fn delta(index: usize, delta: Delta) -> StreamEvent {
        StreamEvent::Delta { index, delta }
    }
    fn text(index: usize, s: &str) -> StreamEvent {
        delta(index, Delta::Text(s.into()))
    }
    fn args(index: usize, s: &str) -> StreamEvent {
        delta(index, Delta::ToolArguments(s.into()))
    }
    fn stop(index: usize) -> StreamEvent {
        StreamEvent::BlockStop { index }
    }
    fn usage(input: u64, cached_input: u64, cache_write: u64, output: u64) -> StreamEvent {
        StreamEvent::Usage(Usage {
            input,
            cached_input,
            cache_write,
            output,
            reasoning: 0,
        })
    }

    fn script_text() -> Vec<StreamEvent> {
        vec![
            start("msg_01Text", "claude-x"),
            block(0, BlockStart::Text),
            text(0, "Hello"),
            text(0, ""),
            text(0, ", \"world\"\n"),
            stop(0),
            StreamEvent::Stop(StopReason::EndTurn),
            usage(30, 10, 5, 7),
        ]
    }

    /// OpenAI-style parallel tool calls: the second call starts and gets arguments before
    /// the first one is finished.
    fn script_parallel_tools() -> Vec<StreamEvent> {
        vec![
            start("chatcmpl-9Xy", "gpt-4o"),
            tool(0, "call_a", "Read"),
            args(0, "{\"file_path\""),
            tool(1, "call_b", "Read"),
            args(1, "{\"file_path\": "),
            args(1, "\"b.rs\"}"),
            args(0, ": \"a.rs\"}"),
            stop(0),
            stop(1),
            StreamEvent::Stop(StopReason::ToolUse),
            usage(50, 0, 0, 20),
        ]
    }

    /// No Start, thinking with a signature, redacted thinking, a text block left open and
    /// no stop reason or usage: the encoder opens lazily and closes everything in finish.
    fn script_thinking() -> Vec<StreamEvent> {
        vec![
            block(0, BlockStart::Thinking),
            delta(0, Delta::Thinking("hmm".into())),
            delta(0, Delta::Signature("Ab/c+d==\"e\\f".into())),
            stop(0),
            block(
                1,
                BlockStart::RedactedThinking {
                    data: "EmwKAhgB".into(),
                },
            ),
            stop(1),
            block(2, BlockStart::Text),
            text(2, "21"),
        ]
    }

    /// The message id the encoder generated when no Start came, replaced by a fixed one.
    fn fixed_id(s: String) -> String {
        let at = s.find("\"id\":\"msg_").unwrap() + 6;
        let id = &s[at..at + 28];
        assert!(id.starts_with("msg_") && id[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        s.replace(id, "msg_GENERATED")
    }

    #[test]
    fn scripted_ir_encodes_to_the_exact_grammar() {
        assert_eq!(encode_all(&script_text(), 25), fixture!("encode_text.sse"));
        assert_eq!(
            encode_all(&script_parallel_tools(), 25),
            fixture!("encode_parallel_tools.sse")
        );
        assert_eq!(
            fixed_id(encode_all(&script_thinking(), 25)),
            fixture!("encode_thinking.sse")
        );
    }

    fn text_stream() -> Vec<StreamEvent> {
        vec![
            start("msg_01XFDUDYJgAACzvnptvVoYEL", "claude-sonnet-4-5-20250929"),
            usage(25, 0, 0, 1),
            block(0, BlockStart::Text),
            text(0, "Hello"),
            text(0, ", \"world\"!\n"),
            stop(0),
            StreamEvent::Stop(StopReason::EndTurn),
            usage(25, 0, 0, 15),
        ]
    }

    #[test]
    fn provider_streams_decode_into_the_ir() {
        assert_eq!(decode_all(fixture!("text.sse")), text_stream());

        assert_eq!(
            decode_all(fixture!("tool_use.sse")),
            vec![
                start("msg_014p7gG3wDgGV9EUtLvnow3U", "claude-sonnet-4-5-20250929"),
                usage(472, 0, 0, 2),
                block(0, BlockStart::Text),
                text(0, "Let me check the weather."),
                stop(0),
                tool(1, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
                args(1, ""),
                args(1, "{\"location\":"),
                args(1, " \"San Francisco, CA\"}"),
                stop(1),
                StreamEvent::Stop(StopReason::ToolUse),
                usage(472, 0, 0, 89),
            ]
        );

        assert_eq!(
            decode_all(fixture!("two_tool_use.sse")),
            vec![
                start("msg_01Aq9w938a90dw8q", "claude-opus-4-1-20250805"),
                usage(640, 0, 0, 3),
                tool(0, "toolu_01A", "Read"),
                args(0, "{\"file_path\": \"a.rs\"}"),
                stop(0),
                tool(1, "toolu_01B", "Read"),
                args(1, "{\"file_path\""),
                args(1, ": \"b.rs\"}"),
                stop(1),
                StreamEvent::Stop(StopReason::ToolUse),
                usage(640, 0, 0, 71),
            ]
        );

        assert_eq!(
            decode_all(fixture!("thinking.sse")),
            vec![
                start("msg_01ThinkThinkThink", "claude-sonnet-4-5-20250929"),
                usage(85, 0, 0, 1),
                block(0, BlockStart::Thinking),
                delta(
                    0,
                    Delta::Thinking("I need to find the GCD of 1071 and 462.\n\n".into())
                ),
                delta(0, Delta::Thinking("1071 = 2 × 462 + 147".into())),
                // \/ \u002b \" \\ in the JSON: the value, byte for byte.
                delta(
                    0,
                    Delta::Signature("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxDQ/+k9XvY+Xx==\"q\\z".into())
                ),
                stop(0),
                block(
                    1,
                    BlockStart::RedactedThinking {
                        data: "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"
                            .into()
                    }
                ),
                stop(1),
                block(2, BlockStart::Text),
                text(2, "The GCD is 21."),
                stop(2),
                StreamEvent::Stop(StopReason::EndTurn),
                usage(85, 0, 0, 312),
            ]
        );

        // Cached input: message_start's counts and message_delta's cumulative ones.
        let events = decode_all(fixture!("cache_usage.sse"));
        assert_eq!(events[1], usage(9312, 9000, 300, 1));
        assert_eq!(
            events[events.len() - 2..],
            [
                StreamEvent::Stop(StopReason::MaxTokens),
                usage(9312, 9000, 300, 40)
            ]
        );

        // An error event mid-stream; finish closes the open block.
        assert_eq!(
            decode_all(fixture!("error.sse")),
            vec![
                start("msg_01Overloaded", "claude-sonnet-4-5-20250929"),
                usage(30, 0, 0, 1),
                block(0, BlockStart::Text),
                text(0, "Partial"),
                StreamEvent::Error {
                    message: "Overloaded".into()
                },
                stop(0),
            ]
        );

        // Server tool blocks are skipped; the text block is the IR's block 0.
        assert_eq!(
            decode_all(fixture!("server_tool.sse")),
            vec![
                start("msg_01Search", "claude-sonnet-4-5-20250929"),
                usage(2000, 0, 0, 1),
                block(0, BlockStart::Text),
                text(0, "Rust is a language."),
                stop(0),
                StreamEvent::Stop(StopReason::EndTurn),
                usage(2000, 0, 0, 50),
            ]
        );
    }

    #[test]
    fn odd_provider_events_never_break_the_decoder() {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        let ev = |name: Option<&'static str>, data: &'static str| Event {
            name,
            data: data.into(),
        };
        assert!(d
            .decode(&ev(Some("message_start"), "{not json"), &mut out)
            .is_err());
        for (name, data) in [
            (Some("ping"), r#"{"type":"ping"}"#),
            (Some("future_event"), r#"{"type":"future_event","x":[1]}"#),
            (None, r#"[1,2]"#),
            (
                None,
                r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
            ),
            (None, r#"{"type":"content_block_stop","index":99}"#),
            (
                None,
                r#"{"type":"message_delta","usage":{"output_tokens":"many"}}"#,
            ),
            (
                None,
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            ),
            (
                None,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta"}}"#,
            ),
        ] {
            d.decode(&ev(name, data), &mut out).unwrap();
        }
        // A block started before message_start gets a synthesized Start.
        assert_eq!(out, vec![start("", ""), tool(0, "t", "f")]);
        // The event name stands in for a missing type; a delta without a start opens a
        // text block.
        out.clear();
        d.decode(
            &ev(
                Some("content_block_delta"),
                r#"{"index":3,"delta":{"type":"text_delta","text":"y"}}"#,
            ),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![block(1, BlockStart::Text), text(1, "y")]);
        out.clear();
        d.finish(&mut out);
        assert_eq!(out, vec![stop(0), stop(1)]);
    }

    /// Anthropic stream -> IR -> Anthropic stream -> IR: the same events.
    #[test]
    fn streams_round_trip() {
        for sse in [
            fixture!("text.sse"),
            fixture!("tool_use.sse"),
            fixture!("two_tool_use.sse"),
            fixture!("thinking.sse"),
            fixture!("cache_usage.sse"),
        ] {
            let first = decode_all(sse);
            let again = decode_all(&encode_all(&first, 1));
            let content = |events: &[StreamEvent]| -> Vec<StreamEvent> {
                events
                    .iter()
                    .filter(|e| !matches!(e, StreamEvent::Usage(_)))
                    .filter(|e| !matches!(e, StreamEvent::Delta { delta: Delta::ToolArguments(a), .. } if a.is_empty()))
                    .cloned()
                    .collect()
            };
            assert_eq!(content(&again), content(&first));
            assert_eq!(again.last(), first.last(), "final usage");
        }
    }

    #[test]
    fn errors_end_the_client_stream() {
        // A provider error event: an Anthropic error event, nothing after.
        let events = decode_all(fixture!("error.sse"));
        let out = encode_all(&events, 30);
        assert!(out.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Overloaded\"}}\n\n"
        ), "{out}");
        assert!(!out.contains("message_stop"));

        // fail: one complete error event; nothing after, not even from finish.
        let meta = StreamMeta {
            estimated_input_tokens: 1,
            include_usage: false,
            created: 0,
        };
        let mut e = StreamEncoder::new(&meta);
        let mut out = BytesMut::new();
        e.fail("upstream \"timed out\"", &mut out);
        e.encode(&text(0, "late"), &mut out);
        e.finish(None, &mut out);
        e.fail("again", &mut out);
        assert_eq!(
            &out[..],
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream \\\"timed out\\\"\"}}\n\n"
        );
    }

    #[test]
    fn finish_without_a_stop_reason_after_tool_calls_says_tool_use() {
        let out = encode_all(
            &[
                start("msg_1", "m"),
                tool(0, "", "f"),
                args(0, "{}"),
                tool(1, "call_2", "g"),
            ],
            3,
        );
        assert!(out.contains("\"stop_reason\":\"tool_use\""), "{out}");
        assert!(out.contains("\"id\":\"toolu_"), "{out}");
        // Both blocks were closed, in order.
        assert!(
            out.contains("content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}")
        );
        assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}
