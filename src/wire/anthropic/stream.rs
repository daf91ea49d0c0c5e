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

use super::{
    empty_object, message_id, non_null, stop_from_wire, stop_to_wire, str_of, tool_id, Str,
    UsageOut, WireUsage,
};
use crate::wire::ir::{BlockStart, Delta, StopReason, StreamEvent, StreamMeta, Usage};
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
struct BlockIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
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
    pub fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let data = event.data.as_ref();
        let e: EventIn = match serde_json::from_str(data) {
            Ok(e) => e,
            Err(err) => {
                // JSON of an unexpected shape is skipped; only non-JSON is an error.
                return match serde_json::from_str::<&RawValue>(data) {
                    Ok(_) => Ok(()),
                    Err(_) => Err(format!("not JSON: {err}")),
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
        usage: UsageOut,
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
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'r> {
    TextDelta { text: &'r str },
    InputJsonDelta { partial_json: &'r str },
    ThinkingDelta { thinking: &'r str },
    SignatureDelta { signature: &'r str },
}

#[derive(Serialize)]
struct MessageDeltaOut {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
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
            Delta::Text(text) => DeltaOut::TextDelta { text },
            Delta::ToolArguments(partial_json) => DeltaOut::InputJsonDelta { partial_json },
            Delta::Thinking(thinking) => DeltaOut::ThinkingDelta { thinking },
            Delta::Signature(signature) => DeltaOut::SignatureDelta { signature },
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

    /// The provider's stream ended normally: write the closing events.
    pub fn finish(&mut self, out: &mut BytesMut) {
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
        self.write(
            &Out::MessageDelta {
                delta: MessageDeltaOut {
                    stop_reason,
                    stop_sequence: None,
                },
                usage,
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
