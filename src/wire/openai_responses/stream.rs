//! Streams: decode a provider's SSE events into IR stream events, and encode IR stream
//! events as the SSE grammar a client of this format expects.
//!
//! Responses streams are made of output items (`message`, `function_call`, `reasoning`, …),
//! each added, filled and done in turn. One IR block is one text part of a message, one
//! function call, or one reasoning item.

use std::borrow::Cow;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schema::{
    id_base, item_id, opt_str, reasoning_text, response_id, OutItem, Outcome, RawItem, RawPart,
    RawResponse, ResponseObject, Status, Str, SummaryPart, TextPart,
};
use crate::errors::{Context, Error, Fault};
use crate::units::{Usage, Usd};
use crate::wire::format::Format;
use crate::wire::ir::{BlockStart, Delta, StopReason, StreamEvent, StreamMeta};
use crate::wire::sse::{self, Event};
use crate::wire::transcode;

// ---------------------------------------------------------------------------------------
// Decoding

/// Push-style decoder of a provider stream, one per request.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    next_block: usize,
    /// Output items seen, in order (a handful per response: searched linearly).
    items: Vec<ItemState>,
    /// IR blocks open, in the order they opened.
    open: Vec<usize>,
    /// A function call was seen (the stop reason is then ToolUse).
    called: bool,
    /// An error was already reported (an `error` event precedes `response.failed`).
    errored: bool,
}

#[derive(Debug)]
struct ItemState {
    output_index: Option<u64>,
    item_id: Option<String>,
    kind: ItemKind,
}

#[derive(Debug)]
enum ItemKind {
    Message {
        parts: Vec<PartState>,
    },
    FunctionCall {
        block: usize,
        args_sent: bool,
    },
    Reasoning {
        block: Option<usize>,
        /// Summary indexes announced, and whether each got text.
        summaries: Vec<(u64, bool)>,
        any_text: bool,
        encrypted: Option<String>,
    },
    Other,
}

#[derive(Debug)]
struct PartState {
    content_index: u64,
    block: usize,
    got_text: bool,
}

/// One event with every field raw: any event parses, whatever its type.
#[derive(Deserialize, Default)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    item: Option<&'a RawValue>,
    #[serde(borrow, default)]
    part: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_index: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content_index: Option<&'a RawValue>,
    #[serde(borrow, default)]
    summary_index: Option<&'a RawValue>,
    #[serde(borrow, default)]
    item_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
}

fn num(v: Option<&RawValue>) -> Option<u64> {
    v.and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder::default()
    }

    /// Decode one SSE event into zero or more IR events. Unknown events are skipped; the
    /// error is for data that cannot be parsed at all.
    pub fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let data = event.data.trim();
        if data == "[DONE]" || data.is_empty() {
            return Ok(());
        }
        if !data.starts_with('{') {
            // JSON that is not an event object is skipped; anything else is not JSON.
            return match serde_json::from_str::<serde::de::IgnoredAny>(data) {
                Ok(_) => Ok(()),
                Err(e) => Err(
                    Error::new(Fault::Malformed, "a Responses stream event is not JSON").because(e),
                ),
            };
        }
        let ev: RawEvent<'_> = serde_json::from_str(data)
            .context(Fault::Malformed, "a Responses stream event is not JSON")?;
        let kind = opt_str(ev.kind).or_else(|| event.name.map(Cow::Borrowed));
        let Some(kind) = kind else { return Ok(()) };
        match kind.as_ref() {
            "response.created" | "response.in_progress" | "response.queued" => {
                let r = ev.response.and_then(parse_response).unwrap_or_default();
                self.start(Some(&r), out);
            }
            "response.output_item.added" => self.item_added(&ev, out),
            "response.output_item.done" => self.item_done(&ev, out),
            "response.content_part.added" => {
                let part = ev.part.and_then(parse_part).unwrap_or_default();
                if matches!(
                    opt_str(part.kind).as_deref(),
                    Some("output_text" | "refusal")
                ) {
                    let i = self.part(&ev, out);
                    let text = opt_str(part.text).or_else(|| opt_str(part.refusal));
                    self.text(i, text, out);
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                let i = self.part(&ev, out);
                self.text(i, opt_str(ev.delta), out);
            }
            "response.output_text.done" | "response.refusal.done" => {
                let i = self.part(&ev, out);
                if !self.part_state(i).is_some_and(|p| p.got_text) {
                    let text = opt_str(ev.text).or_else(|| opt_str(ev.refusal));
                    self.text(i, text, out);
                }
            }
            "response.content_part.done" => {
                let i = self.part(&ev, out);
                if !self.part_state(i).is_some_and(|p| p.got_text) {
                    let part = ev.part.and_then(parse_part).unwrap_or_default();
                    let text = opt_str(part.text).or_else(|| opt_str(part.refusal));
                    self.text(i, text, out);
                }
                if let Some(p) = self.part_state(i) {
                    let block = p.block;
                    self.close(block, out);
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(i) = self.find(&ev) {
                    self.arguments(i, opt_str(ev.delta), out);
                }
            }
            "response.function_call_arguments.done" => {
                if let Some(i) = self.find(&ev) {
                    if let ItemKind::FunctionCall {
                        args_sent: false, ..
                    } = self.items[i].kind
                    {
                        self.arguments(i, opt_str(ev.arguments), out);
                    }
                }
            }
            "response.reasoning_summary_part.added" => {
                let i = self.reasoning(&ev, out);
                self.summary_part(i, num(ev.summary_index).unwrap_or(0), out);
            }
            "response.reasoning_summary_text.delta" => {
                let i = self.reasoning(&ev, out);
                let s = num(ev.summary_index).unwrap_or(0);
                self.summary_part(i, s, out);
                self.thinking(i, s, opt_str(ev.delta), out);
            }
            "response.reasoning_summary_text.done" => {
                let i = self.reasoning(&ev, out);
                let s = num(ev.summary_index).unwrap_or(0);
                self.summary_part(i, s, out);
                let ItemKind::Reasoning { summaries, .. } = &self.items[i].kind else {
                    return Ok(());
                };
                if !summaries.iter().any(|&(k, got)| k == s && got) {
                    self.thinking(i, s, opt_str(ev.text), out);
                }
            }
            // Raw reasoning text (open-weight models behind Responses-compatible servers).
            "response.reasoning_text.delta" => {
                let i = self.reasoning(&ev, out);
                self.summary_part(i, 0, out);
                self.thinking(i, 0, opt_str(ev.delta), out);
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let r = ev.response.and_then(parse_response).unwrap_or_default();
                self.start(Some(&r), out);
                self.close_all(out);
                if kind == "response.failed" || r.status() == Some("failed") {
                    if !self.errored {
                        self.errored = true;
                        out.push(StreamEvent::Error {
                            message: r.error_message(),
                        });
                    }
                } else {
                    let called = self.called || r.calls_a_function();
                    out.push(StreamEvent::Stop(r.stop(called)));
                }
                if let Some(u) = r.usage() {
                    out.push(StreamEvent::Usage(u));
                }
            }
            "error" => {
                let message = opt_str(ev.message)
                    .or_else(|| opt_str(ev.code))
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| "the provider reported an error".to_string());
                self.errored = true;
                out.push(StreamEvent::Error { message });
            }
            _ => {}
        }
        Ok(())
    }

    /// The provider's stream ended: emit whatever closes open blocks.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.close_all(out);
    }

    fn start(&mut self, r: Option<&RawResponse<'_>>, out: &mut Vec<StreamEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let owned = |s: Option<&Str<'_>>| s.map(|s| s.0.to_string()).unwrap_or_default();
        out.push(StreamEvent::Start {
            id: owned(r.and_then(|r| r.id.as_ref())),
            model: owned(r.and_then(|r| r.model.as_ref())),
        });
    }

    fn open(&mut self, block: BlockStart, out: &mut Vec<StreamEvent>) -> usize {
        self.start(None, out);
        let index = self.next_block;
        self.next_block += 1;
        self.open.push(index);
        out.push(StreamEvent::BlockStart { index, block });
        index
    }

    fn close(&mut self, index: usize, out: &mut Vec<StreamEvent>) {
        if let Some(pos) = self.open.iter().position(|&b| b == index) {
            self.open.remove(pos);
            out.push(StreamEvent::BlockStop { index });
        }
    }

    fn close_all(&mut self, out: &mut Vec<StreamEvent>) {
        for index in self.open.drain(..) {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    /// The item an event is about: by `item_id`, else by `output_index`.
    fn find(&self, ev: &RawEvent<'_>) -> Option<usize> {
        if let Some(id) = opt_str(ev.item_id) {
            if let Some(i) = self
                .items
                .iter()
                .position(|it| it.item_id.as_deref() == Some(&id))
            {
                return Some(i);
            }
        }
        let n = num(ev.output_index)?;
        self.items.iter().position(|it| it.output_index == Some(n))
    }

    fn push_item(&mut self, ev: &RawEvent<'_>, item_id: Option<String>, kind: ItemKind) -> usize {
        self.items.push(ItemState {
            output_index: num(ev.output_index),
            item_id: item_id.or_else(|| opt_str(ev.item_id).map(Cow::into_owned)),
            kind,
        });
        self.items.len() - 1
    }

    fn item_added(&mut self, ev: &RawEvent<'_>, out: &mut Vec<StreamEvent>) {
        let item: RawItem<'_> = ev.item.and_then(parse_item).unwrap_or_default();
        let id = item.id();
        if self.find(ev).is_some() && id.is_some() && self.items.iter().any(|it| it.item_id == id) {
            return; // announced twice
        }
        let kind = match opt_str(item.kind).as_deref() {
            Some("message") => ItemKind::Message { parts: Vec::new() },
            Some("function_call") => {
                self.called = true;
                let block = self.open(
                    BlockStart::ToolCall {
                        id: opt_str(item.call_id).unwrap_or_default().into_owned(),
                        name: opt_str(item.name).unwrap_or_default().into_owned(),
                    },
                    out,
                );
                let args = opt_str(item.arguments).filter(|a| !a.is_empty());
                let args_sent = args.is_some();
                if let Some(a) = args {
                    out.push(StreamEvent::Delta {
                        index: block,
                        delta: Delta::ToolArguments(a.into_owned()),
                    });
                }
                ItemKind::FunctionCall { block, args_sent }
            }
            Some("reasoning") => ItemKind::Reasoning {
                block: None,
                summaries: Vec::new(),
                any_text: false,
                encrypted: opt_str(item.encrypted_content)
                    .filter(|e| !e.is_empty())
                    .map(Cow::into_owned),
            },
            _ => ItemKind::Other,
        };
        self.push_item(ev, id, kind);
    }

    fn item_done(&mut self, ev: &RawEvent<'_>, out: &mut Vec<StreamEvent>) {
        let item: RawItem<'_> = ev.item.and_then(parse_item).unwrap_or_default();
        let found = self.find(ev).or_else(|| {
            let id = item.id()?;
            self.items
                .iter()
                .position(|it| it.item_id.as_deref() == Some(&id))
        });
        match opt_str(item.kind).as_deref() {
            Some("message") => {
                let parts = match found.map(|i| &self.items[i].kind) {
                    Some(ItemKind::Message { parts }) => {
                        parts.iter().map(|p| p.block).collect::<Vec<_>>()
                    }
                    _ => Vec::new(),
                };
                if parts.is_empty() {
                    // Nothing was streamed for it: take the text from the finished item.
                    let raw: Vec<RawPart<'_>> = item
                        .content
                        .and_then(|c| serde_json::from_str(c.get()).ok())
                        .unwrap_or_default();
                    for p in raw {
                        let text = match opt_str(p.kind).as_deref() {
                            Some("output_text") => opt_str(p.text),
                            Some("refusal") => opt_str(p.refusal),
                            _ => None,
                        };
                        if let Some(text) = text {
                            let b = self.open(BlockStart::Text, out);
                            if !text.is_empty() {
                                out.push(StreamEvent::Delta {
                                    index: b,
                                    delta: Delta::Text(text.into_owned()),
                                });
                            }
                            self.close(b, out);
                        }
                    }
                }
                for b in parts {
                    self.close(b, out);
                }
            }
            Some("function_call") => {
                let i = match found {
                    Some(i) if matches!(self.items[i].kind, ItemKind::FunctionCall { .. }) => i,
                    _ => {
                        self.called = true;
                        let block = self.open(
                            BlockStart::ToolCall {
                                id: opt_str(item.call_id).unwrap_or_default().into_owned(),
                                name: opt_str(item.name).unwrap_or_default().into_owned(),
                            },
                            out,
                        );
                        let kind = ItemKind::FunctionCall {
                            block,
                            args_sent: false,
                        };
                        self.push_item(ev, item.id(), kind)
                    }
                };
                if let ItemKind::FunctionCall {
                    block,
                    args_sent: false,
                } = self.items[i].kind
                {
                    self.arguments(i, opt_str(item.arguments), out);
                    self.close(block, out);
                } else if let ItemKind::FunctionCall { block, .. } = self.items[i].kind {
                    self.close(block, out);
                }
            }
            Some("reasoning") => {
                let i = match found {
                    Some(i) if matches!(self.items[i].kind, ItemKind::Reasoning { .. }) => i,
                    _ => {
                        let kind = ItemKind::Reasoning {
                            block: None,
                            summaries: Vec::new(),
                            any_text: false,
                            encrypted: None,
                        };
                        self.push_item(ev, item.id(), kind)
                    }
                };
                let encrypted = opt_str(item.encrypted_content)
                    .filter(|e| !e.is_empty())
                    .map(Cow::into_owned);
                let ItemKind::Reasoning {
                    block,
                    encrypted: e,
                    ..
                } = &mut self.items[i].kind
                else {
                    return;
                };
                let signature = encrypted.or_else(|| e.take());
                let block = *block;
                match block {
                    Some(b) => {
                        if let Some(s) = signature {
                            out.push(StreamEvent::Delta {
                                index: b,
                                delta: Delta::Signature(s),
                            });
                        }
                        self.close(b, out);
                    }
                    None => {
                        let text = reasoning_text(item.summary, item.content);
                        if !text.is_empty() {
                            let b = self.open(BlockStart::Thinking, out);
                            out.push(StreamEvent::Delta {
                                index: b,
                                delta: Delta::Thinking(text.into_owned()),
                            });
                            if let Some(s) = signature {
                                out.push(StreamEvent::Delta {
                                    index: b,
                                    delta: Delta::Signature(s),
                                });
                            }
                            self.close(b, out);
                        } else if let Some(data) = signature {
                            let b = self.open(BlockStart::RedactedThinking { data }, out);
                            self.close(b, out);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The text part an event is about (item and part created when not announced).
    fn part(&mut self, ev: &RawEvent<'_>, out: &mut Vec<StreamEvent>) -> (usize, usize) {
        let i = match self.find(ev) {
            Some(i) if matches!(self.items[i].kind, ItemKind::Message { .. }) => i,
            _ => self.push_item(ev, None, ItemKind::Message { parts: Vec::new() }),
        };
        let content_index = num(ev.content_index).unwrap_or(0);
        if let ItemKind::Message { parts } = &self.items[i].kind {
            if let Some(j) = parts.iter().position(|p| p.content_index == content_index) {
                return (i, j);
            }
        }
        let block = self.open(BlockStart::Text, out);
        match &mut self.items[i].kind {
            ItemKind::Message { parts } => {
                parts.push(PartState {
                    content_index,
                    block,
                    got_text: false,
                });
                (i, parts.len() - 1)
            }
            _ => (i, 0), // unreachable: the item is a message
        }
    }

    fn part_state(&self, (i, j): (usize, usize)) -> Option<&PartState> {
        match &self.items.get(i)?.kind {
            ItemKind::Message { parts } => parts.get(j),
            _ => None,
        }
    }

    fn text(
        &mut self,
        (i, j): (usize, usize),
        text: Option<Cow<'_, str>>,
        out: &mut Vec<StreamEvent>,
    ) {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return;
        };
        if let Some(ItemKind::Message { parts }) = self.items.get_mut(i).map(|it| &mut it.kind) {
            if let Some(p) = parts.get_mut(j) {
                p.got_text = true;
                if self.open.contains(&p.block) {
                    out.push(StreamEvent::Delta {
                        index: p.block,
                        delta: Delta::Text(text.into_owned()),
                    });
                }
            }
        }
    }

    fn arguments(&mut self, i: usize, args: Option<Cow<'_, str>>, out: &mut Vec<StreamEvent>) {
        let Some(args) = args.filter(|a| !a.is_empty()) else {
            return;
        };
        if let ItemKind::FunctionCall { block, args_sent } = &mut self.items[i].kind {
            *args_sent = true;
            if self.open.contains(block) {
                out.push(StreamEvent::Delta {
                    index: *block,
                    delta: Delta::ToolArguments(args.into_owned()),
                });
            }
        }
    }

    /// The reasoning item an event is about, its thinking block open.
    fn reasoning(&mut self, ev: &RawEvent<'_>, out: &mut Vec<StreamEvent>) -> usize {
        let i = match self.find(ev) {
            Some(i) if matches!(self.items[i].kind, ItemKind::Reasoning { .. }) => i,
            _ => {
                let kind = ItemKind::Reasoning {
                    block: None,
                    summaries: Vec::new(),
                    any_text: false,
                    encrypted: None,
                };
                self.push_item(ev, None, kind)
            }
        };
        if let ItemKind::Reasoning { block: None, .. } = self.items[i].kind {
            let b = self.open(BlockStart::Thinking, out);
            if let ItemKind::Reasoning { block, .. } = &mut self.items[i].kind {
                *block = Some(b);
            }
        }
        i
    }

    /// A summary part begins: summaries after the first are set apart by a blank line.
    fn summary_part(&mut self, i: usize, index: u64, out: &mut Vec<StreamEvent>) {
        if let ItemKind::Reasoning {
            block: Some(b),
            summaries,
            any_text,
            ..
        } = &mut self.items[i].kind
        {
            if summaries.iter().any(|&(k, _)| k == index) {
                return;
            }
            summaries.push((index, false));
            if *any_text && self.open.contains(b) {
                out.push(StreamEvent::Delta {
                    index: *b,
                    delta: Delta::Thinking("\n\n".to_string()),
                });
            }
        }
    }

    fn thinking(
        &mut self,
        i: usize,
        index: u64,
        text: Option<Cow<'_, str>>,
        out: &mut Vec<StreamEvent>,
    ) {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return;
        };
        if let ItemKind::Reasoning {
            block: Some(b),
            summaries,
            any_text,
            ..
        } = &mut self.items[i].kind
        {
            *any_text = true;
            if let Some(s) = summaries.iter_mut().find(|(k, _)| *k == index) {
                s.1 = true;
            }
            if self.open.contains(b) {
                out.push(StreamEvent::Delta {
                    index: *b,
                    delta: Delta::Thinking(text.into_owned()),
                });
            }
        }
    }
}

fn parse_response(v: &RawValue) -> Option<RawResponse<'_>> {
    serde_json::from_str(v.get()).ok()
}

fn parse_item(v: &RawValue) -> Option<RawItem<'_>> {
    serde_json::from_str(v.get()).ok()
}

fn parse_part(v: &RawValue) -> Option<RawPart<'_>> {
    serde_json::from_str(v.get()).ok()
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Stateful encoder of a client stream, one per request.
#[derive(Debug)]
pub struct StreamEncoder {
    created: u64,
    seq: u64,
    id: String,
    base: String,
    model: String,
    started: bool,
    done: bool,
    items: Vec<OutItem<'static>>,
    /// IR blocks open: (IR index, output index, summary part announced).
    open: Vec<OpenBlock>,
    stop: Option<StopReason>,
    usage: Usage,
}

#[derive(Debug)]
struct OpenBlock {
    index: usize,
    output: usize,
    summary: bool,
}

#[derive(Serialize)]
struct ResponseEv<'r, 'x> {
    response: ResponseObject<'r, 'x>,
}

#[derive(Serialize)]
struct ItemEv<T> {
    output_index: usize,
    item: T,
}

#[derive(Serialize)]
struct PartEv<'r, P> {
    item_id: &'r str,
    output_index: usize,
    content_index: usize,
    part: P,
}

#[derive(Serialize)]
struct TextEv<'r> {
    item_id: &'r str,
    output_index: usize,
    content_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'r str>,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct ArgsEv<'r> {
    item_id: &'r str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'r str>,
}

#[derive(Serialize)]
struct SummaryPartEv<'r> {
    item_id: &'r str,
    output_index: usize,
    summary_index: usize,
    part: SummaryPart<'r>,
}

#[derive(Serialize)]
struct SummaryTextEv<'r> {
    item_id: &'r str,
    output_index: usize,
    summary_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'r str>,
}

/// Write `event: NAME` and `data: {"type":NAME, …body…, "sequence_number":n}`.
fn emit<T: Serialize>(seq: &mut u64, out: &mut BytesMut, name: &str, body: &T) {
    let data = event_data(seq, name, body);
    sse::write_event(out, Some(name), &data);
}

/// `{"type":NAME, …body…, "sequence_number":n}`, counting the sequence number.
fn event_data<T: Serialize>(seq: &mut u64, name: &str, body: &T) -> Vec<u8> {
    let mut data = Vec::with_capacity(160);
    data.extend_from_slice(b"{\"type\":\"");
    data.extend_from_slice(name.as_bytes());
    data.push(b'"');
    let start = data.len();
    // Every body is a JSON object: splice its members in after "type".
    if serde_json::to_writer(&mut data, body).is_ok() && data.len() > start + 2 {
        data[start] = b',';
        data.pop();
    } else {
        data.truncate(start);
    }
    data.extend_from_slice(b",\"sequence_number\":");
    data.extend_from_slice(seq.to_string().as_bytes());
    data.push(b'}');
    *seq += 1;
    data
}

impl StreamEncoder {
    pub fn new(meta: &StreamMeta) -> Self {
        StreamEncoder {
            created: meta.created,
            seq: 0,
            id: String::new(),
            base: String::new(),
            model: String::new(),
            started: false,
            done: false,
            items: Vec::new(),
            open: Vec::new(),
            stop: None,
            usage: Usage::default(),
        }
    }

    /// Encode one IR event as zero or more SSE events of this format.
    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => self.start(id, model, out),
            StreamEvent::BlockStart { index, block } => self.block_start(*index, block, out),
            StreamEvent::Delta { index, delta } => self.delta(*index, delta, out),
            StreamEvent::BlockStop { index } => {
                if let Some(pos) = self.open.iter().position(|b| b.index == *index) {
                    let b = self.open.remove(pos);
                    self.close(b, Status::Completed, out);
                }
            }
            StreamEvent::Usage(u) => self.usage.merge(u),
            StreamEvent::Stop(r) => self.stop = Some(*r),
            StreamEvent::Error { message } => self.fail(message, out),
        }
    }

    /// The provider's stream ended normally: write the closing events, with `cost` (what
    /// was billed) in `response.usage`.
    pub fn finish(&mut self, cost: Option<Usd>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.start("", "", out);
        let outcome = Outcome::of(self.stop);
        let status = match outcome {
            Outcome::Incomplete(_) => Status::Incomplete,
            _ => Status::Completed,
        };
        for b in std::mem::take(&mut self.open) {
            self.close(b, status, out);
        }
        // An incomplete response ends with `response.completed` carrying status
        // `incomplete` (the gateway's convention, FORMATS.md): the OpenAI SDK's stream helper
        // requires `response.completed`, and Codex then keeps the partial turn instead of
        // treating `response.incomplete` as a stream error to retry.
        let name = "response.completed";
        let body = ResponseEv {
            response: ResponseObject {
                id: &self.id,
                created_at: self.created,
                model: &self.model,
                outcome,
                error: None,
                output: &self.items,
                usage: Some(&self.usage),
            },
        };
        let mut data = event_data(&mut self.seq, name, &body);
        // `response.usage.cost` (OpenRouter's convention).
        if let Some(cost) = cost {
            let priced = std::str::from_utf8(&data).ok().and_then(|d| {
                transcode::with_cost(Format::OpenAiResponses, Some(name), d, &cost.to_decimal())
            });
            if let Some(priced) = priced {
                data = priced.into_bytes();
            }
        }
        sse::write_event(out, Some(name), &data);
        self.done = true;
    }

    /// The provider's stream broke: write one complete, parseable error event in this
    /// format's grammar. Nothing is written after it.
    pub fn fail(&mut self, message: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if !self.started {
            self.base = id_base("");
            self.id = response_id("", &self.base);
        }
        let usage = (!self.usage.is_empty()).then_some(&self.usage);
        let body = ResponseEv {
            response: ResponseObject {
                id: &self.id,
                created_at: self.created,
                model: &self.model,
                outcome: Outcome::Failed,
                error: Some(message),
                output: &self.items,
                usage,
            },
        };
        emit(&mut self.seq, out, "response.failed", &body);
        self.done = true;
    }

    /// `response.created` and `response.in_progress`, once; lazily when no Start came.
    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        self.base = id_base(id);
        self.id = response_id(id, &self.base);
        self.model = model.to_string();
        for name in ["response.created", "response.in_progress"] {
            let body = ResponseEv {
                response: ResponseObject {
                    id: &self.id,
                    created_at: self.created,
                    model: &self.model,
                    outcome: Outcome::InProgress,
                    error: None,
                    output: &[],
                    usage: None,
                },
            };
            emit(&mut self.seq, out, name, &body);
        }
    }

    fn block_start(&mut self, index: usize, block: &BlockStart, out: &mut BytesMut) {
        if self.open.iter().any(|b| b.index == index) {
            return;
        }
        self.start("", "", out);
        let n = self.items.len();
        let item = match block {
            BlockStart::Text => OutItem::Message {
                id: item_id("msg", &self.base, n),
                status: Status::InProgress,
                parts: vec![Cow::Borrowed("")],
            },
            BlockStart::ToolCall { id, name } => OutItem::FunctionCall {
                id: item_id("fc", &self.base, n),
                call_id: Cow::Owned(id.clone()),
                name: Cow::Owned(name.clone()),
                arguments: Cow::Borrowed(""),
                status: Status::InProgress,
            },
            BlockStart::Thinking => OutItem::Reasoning {
                id: item_id("rs", &self.base, n),
                summary: Cow::Borrowed(""),
                encrypted_content: None,
            },
            BlockStart::RedactedThinking { data } => OutItem::Reasoning {
                id: item_id("rs", &self.base, n),
                summary: Cow::Borrowed(""),
                encrypted_content: Some(Cow::Owned(data.clone())),
            },
        };
        let body = ItemEv {
            output_index: n,
            item: item.added(),
        };
        emit(&mut self.seq, out, "response.output_item.added", &body);
        if let OutItem::Message { id, .. } = &item {
            let body = PartEv {
                item_id: id,
                output_index: n,
                content_index: 0,
                part: TextPart(""),
            };
            emit(&mut self.seq, out, "response.content_part.added", &body);
        }
        self.items.push(item);
        self.open.push(OpenBlock {
            index,
            output: n,
            summary: false,
        });
    }

    fn delta(&mut self, index: usize, delta: &Delta, out: &mut BytesMut) {
        let Some(b) = self.open.iter_mut().find(|b| b.index == index) else {
            return;
        };
        let n = b.output;
        let Some(item) = self.items.get_mut(n) else {
            return;
        };
        match (item, delta) {
            (OutItem::Message { id, parts, .. }, Delta::Text(t)) if !t.is_empty() => {
                if let Some(p) = parts.first_mut() {
                    p.to_mut().push_str(t);
                }
                let body = TextEv {
                    item_id: id,
                    output_index: n,
                    content_index: 0,
                    delta: Some(t),
                    text: None,
                    logprobs: [],
                };
                emit(&mut self.seq, out, "response.output_text.delta", &body);
            }
            (OutItem::FunctionCall { id, arguments, .. }, Delta::ToolArguments(a))
                if !a.is_empty() =>
            {
                arguments.to_mut().push_str(a);
                let body = ArgsEv {
                    item_id: id,
                    output_index: n,
                    delta: Some(a),
                    arguments: None,
                };
                emit(
                    &mut self.seq,
                    out,
                    "response.function_call_arguments.delta",
                    &body,
                );
            }
            (OutItem::Reasoning { id, summary, .. }, Delta::Thinking(t)) if !t.is_empty() => {
                if !b.summary {
                    b.summary = true;
                    let body = SummaryPartEv {
                        item_id: id,
                        output_index: n,
                        summary_index: 0,
                        part: SummaryPart(""),
                    };
                    emit(
                        &mut self.seq,
                        out,
                        "response.reasoning_summary_part.added",
                        &body,
                    );
                }
                summary.to_mut().push_str(t);
                let body = SummaryTextEv {
                    item_id: id,
                    output_index: n,
                    summary_index: 0,
                    delta: Some(t),
                    text: None,
                };
                emit(
                    &mut self.seq,
                    out,
                    "response.reasoning_summary_text.delta",
                    &body,
                );
            }
            (
                OutItem::Reasoning {
                    encrypted_content, ..
                },
                Delta::Signature(s),
            ) => match encrypted_content {
                Some(e) => e.to_mut().push_str(s),
                None => *encrypted_content = Some(Cow::Owned(s.clone())),
            },
            _ => {} // a delta that does not fit its block
        }
    }

    fn close(&mut self, b: OpenBlock, status: Status, out: &mut BytesMut) {
        let n = b.output;
        let Some(item) = self.items.get_mut(n) else {
            return;
        };
        match item {
            OutItem::Message {
                id,
                parts,
                status: s,
            } => {
                *s = status;
                let text = parts.first().map(|p| p.as_ref()).unwrap_or("");
                let body = TextEv {
                    item_id: id,
                    output_index: n,
                    content_index: 0,
                    delta: None,
                    text: Some(text),
                    logprobs: [],
                };
                emit(&mut self.seq, out, "response.output_text.done", &body);
                let body = PartEv {
                    item_id: id,
                    output_index: n,
                    content_index: 0,
                    part: TextPart(text),
                };
                emit(&mut self.seq, out, "response.content_part.done", &body);
            }
            OutItem::FunctionCall {
                id,
                arguments,
                status: s,
                ..
            } => {
                *s = status;
                let body = ArgsEv {
                    item_id: id,
                    output_index: n,
                    delta: None,
                    arguments: Some(arguments),
                };
                emit(
                    &mut self.seq,
                    out,
                    "response.function_call_arguments.done",
                    &body,
                );
            }
            OutItem::Reasoning { id, summary, .. } => {
                if b.summary {
                    let body = SummaryTextEv {
                        item_id: id,
                        output_index: n,
                        summary_index: 0,
                        delta: None,
                        text: Some(summary),
                    };
                    emit(
                        &mut self.seq,
                        out,
                        "response.reasoning_summary_text.done",
                        &body,
                    );
                    let body = SummaryPartEv {
                        item_id: id,
                        output_index: n,
                        summary_index: 0,
                        part: SummaryPart(summary),
                    };
                    emit(
                        &mut self.seq,
                        out,
                        "response.reasoning_summary_part.done",
                        &body,
                    );
                }
            }
        }
        let body = ItemEv {
            output_index: n,
            item: &self.items[n],
        };
        emit(&mut self.seq, out, "response.output_item.done", &body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::format::Format;
    use crate::wire::sse::SseParser;
    use crate::wire::transcode::StreamTranscoder;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/wire/openai_responses/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn decode_all(stream: &str) -> Vec<StreamEvent> {
        let mut parser = SseParser::default();
        parser.push(stream.as_bytes());
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
        StreamEvent::Start {
            id: id.into(),
            model: model.into(),
        }
    }
    fn block(index: usize, block: BlockStart) -> StreamEvent {
        StreamEvent::BlockStart { index, block }
    }
    fn delta(index: usize, delta: Delta) -> StreamEvent {
        StreamEvent::Delta { index, delta }
    }
    fn stop(index: usize) -> StreamEvent {
        StreamEvent::BlockStop { index }
    }
    fn text(s: &str) -> Delta {
        Delta::Text(s.into())
    }
    fn args(s: &str) -> Delta {
        Delta::ToolArguments(s.into())
    }
    fn call(id: &str, name: &str) -> BlockStart {
        BlockStart::ToolCall {
            id: id.into(),
            name: name.into(),
        }
    }
    fn usage(input: u64, cached_input: u64, output: u64, reasoning: u64) -> StreamEvent {
        StreamEvent::Usage(Usage {
            input,
            cached_input,
            cache_write: 0,
            output,
            reasoning,
        })
    }

    const MODEL: &str = "gpt-5.4-2026-03-05";

    #[test]
    fn decodes_text() {
        assert_eq!(
            decode_all(&fixture("text.sse")),
            [
                start("resp_0a1b2c3d4e5f60718293a4b5c6d7e8f9", MODEL),
                block(0, BlockStart::Text),
                delta(0, text("Hi")),
                delta(0, text(" there")),
                delta(0, text("! é☃ \"quoted\"")),
                stop(0),
                StreamEvent::Stop(StopReason::EndTurn),
                usage(12, 0, 7, 0),
            ]
        );
    }

    #[test]
    fn decodes_a_function_call() {
        assert_eq!(
            decode_all(&fixture("function_call.sse")),
            [
                start("resp_6f1e2d3c4b5a69788796a5b4c3d2e1f0", MODEL),
                block(0, call("call_Xk2vP0qR9sT3uV5w", "exec_command")),
                delta(0, args("{\"cmd\":")),
                delta(0, args(" \"echo hi\"}")),
                stop(0),
                StreamEvent::Stop(StopReason::ToolUse),
                usage(7012, 0, 24, 0),
            ]
        );
    }

    #[test]
    fn decodes_parallel_function_calls_after_text() {
        assert_eq!(
            decode_all(&fixture("parallel_function_calls.sse")),
            [
                start("resp_11223344556677889900aabbccddeeff", MODEL),
                block(0, BlockStart::Text),
                delta(0, text("Checking both.")),
                stop(0),
                block(1, call("call_A1", "get_weather")),
                delta(1, args("{\"city\":\"Paris\"}")),
                stop(1),
                block(2, call("call_B2", "get_weather")),
                delta(2, args("{\"city\":")),
                delta(2, args("\"Tokyo\"}")),
                stop(2),
                StreamEvent::Stop(StopReason::ToolUse),
                usage(88, 0, 41, 0),
            ]
        );
    }

    #[test]
    fn decodes_reasoning_summaries_with_encrypted_content() {
        assert_eq!(
            decode_all(&fixture("reasoning.sse")),
            [
                start("resp_aa00bb11cc22dd33ee44ff5566778899", MODEL),
                block(0, BlockStart::Thinking),
                delta(0, Delta::Thinking("**Planning**".into())),
                delta(0, Delta::Thinking(" the answer".into())),
                delta(0, Delta::Thinking("\n\n".into())),
                delta(0, Delta::Thinking("Done.".into())),
                delta(
                    0,
                    Delta::Signature("gAAAAABqX1a78BDqk_J4uGoxtDucvs8h-opaque==".into())
                ),
                stop(0),
                block(1, BlockStart::Text),
                delta(1, text("42")),
                stop(1),
                StreamEvent::Stop(StopReason::EndTurn),
                usage(2048, 1920, 310, 256),
            ]
        );
    }

    #[test]
    fn reasoning_without_summary_is_redacted_thinking() {
        assert_eq!(
            decode_all(&fixture("reasoning_redacted.sse")),
            [
                start("resp_redacted0000000000000000000001", MODEL),
                block(
                    0,
                    BlockStart::RedactedThinking {
                        data: "gAAAAopaque-only==".into()
                    }
                ),
                stop(0),
                block(1, call("call_R1", "read")),
                delta(1, args("{}")),
                stop(1),
                StreamEvent::Stop(StopReason::ToolUse),
                usage(500, 0, 90, 64),
            ]
        );
    }

    #[test]
    fn decodes_cached_and_cache_write_usage() {
        let events = decode_all(&fixture("usage_cached.sse"));
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Usage(Usage {
                input: 7012,
                cached_input: 6912,
                cache_write: 100,
                output: 5,
                reasoning: 0,
            }))
        );
    }

    #[test]
    fn incomplete_is_max_tokens() {
        let events = decode_all(&fixture("incomplete.sse"));
        assert_eq!(
            &events[events.len() - 3..],
            [
                stop(0),
                StreamEvent::Stop(StopReason::MaxTokens),
                usage(20, 0, 16, 0)
            ]
        );
    }

    #[test]
    fn failed_is_one_error() {
        assert_eq!(
            decode_all(&fixture("failed.sse")),
            [
                start("resp_failed00000000000000000000000001", MODEL),
                StreamEvent::Error {
                    message: "The server had an error while processing your request.".into()
                },
            ]
        );
        // response.failed alone carries the message too.
        let only = fixture("failed.sse")
            .split("\n\n")
            .filter(|e| !e.starts_with("event: error"))
            .collect::<Vec<_>>()
            .join("\n\n");
        assert!(decode_all(&only).contains(&StreamEvent::Error {
            message: "The server had an error while processing your request.".into()
        }));
    }

    #[test]
    fn odd_input_never_panics_and_only_non_json_is_an_error() {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        let ev = |data: &'static str| Event {
            name: None,
            data: Cow::Borrowed(data),
        };
        for data in [
            "[DONE]",
            "[1,2]",
            "{}",
            r#"{"type":7}"#,
            r#"{"type":"response.output_text.delta","delta":{"x":1},"output_index":"a"}"#,
            r#"{"type":"response.output_item.done","item":[]}"#,
            r#"{"type":"response.function_call_arguments.delta","delta":"x"}"#,
            r#"{"type":"response.reasoning_summary_text.delta","output_index":5,"delta":"t"}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":-1}}}"#,
            r#"{"type":"response.audio.delta","delta":"AAAA"}"#,
        ] {
            d.decode(&ev(data), &mut out).unwrap();
        }
        assert!(d.decode(&ev("{not json"), &mut out).is_err());
        assert!(d.decode(&ev("nope"), &mut out).is_err());
        d.finish(&mut out);
        // Every opened block was closed.
        let opened = out
            .iter()
            .filter(|e| matches!(e, StreamEvent::BlockStart { .. }))
            .count();
        let closed = out
            .iter()
            .filter(|e| matches!(e, StreamEvent::BlockStop { .. }))
            .count();
        assert_eq!(opened, closed);
    }

    #[test]
    fn items_streamed_only_as_done_items_are_decoded() {
        let stream = concat!(
            "data: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":",
            "{\"type\":\"message\",\"id\":\"m\",\"role\":\"assistant\",\"content\":",
            "[{\"type\":\"output_text\",\"text\":\"hi\"}]}}\n\n",
            "data: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":",
            "{\"type\":\"function_call\",\"id\":\"f\",\"call_id\":\"c\",\"name\":\"n\",",
            "\"arguments\":\"{}\"}}\n\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"status\":",
            "\"completed\",\"output\":[]}}\n\n",
        );
        assert_eq!(
            decode_all(stream),
            [
                start("", ""),
                block(0, BlockStart::Text),
                delta(0, text("hi")),
                stop(0),
                block(1, call("c", "n")),
                delta(1, args("{}")),
                stop(1),
                StreamEvent::Stop(StopReason::ToolUse),
            ]
        );
    }

    #[test]
    fn passthrough_meters_usage_and_stop_from_the_events_it_decodes() {
        let meta = StreamMeta {
            estimated_input_tokens: 0,
            include_usage: false,
            created: 0,
        };
        for (name, usage, reason) in [
            ("text.sse", (12, 0, 7), StopReason::EndTurn),
            ("function_call.sse", (7012, 0, 24), StopReason::ToolUse),
            ("usage_cached.sse", (7012, 6912, 5), StopReason::EndTurn),
            ("incomplete.sse", (20, 0, 16), StopReason::MaxTokens),
        ] {
            let body = fixture(name);
            let mut t = StreamTranscoder::new(
                Format::OpenAiResponses,
                Format::OpenAiResponses,
                meta.clone(),
            );
            let mut out = BytesMut::new();
            for chunk in body.as_bytes().chunks(7) {
                t.push(chunk, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
            t.close(None, &mut out);
            assert_eq!(&out[..], body.as_bytes(), "{name}");
            let u = t.usage();
            assert_eq!((u.input, u.cached_input, u.output), usage, "{name}");
            assert_eq!(t.stop_reason(), Some(reason), "{name}");
        }
    }

    // -- encoding ------------------------------------------------------------------------

    fn meta() -> StreamMeta {
        StreamMeta {
            estimated_input_tokens: 0,
            include_usage: false,
            created: 1_700_000_000,
        }
    }

    fn encode_all(events: &[StreamEvent]) -> String {
        let mut enc = StreamEncoder::new(&meta());
        let mut out = BytesMut::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        enc.finish(None, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// Compare with a golden file; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, got: &str) {
        let path = format!(
            "{}/tests/fixtures/wire/openai_responses/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(got, want, "{name} differs (UPDATE_GOLDEN=1 rewrites it)");
    }

    fn script() -> Vec<StreamEvent> {
        vec![
            start("chatcmpl-abc123", "gpt-x"),
            block(0, BlockStart::Thinking),
            delta(0, Delta::Thinking("Let me think.".into())),
            delta(0, Delta::Signature("sig==".into())),
            stop(0),
            block(1, BlockStart::Text),
            delta(1, text("Hello")),
            delta(1, text(" \"world\"")),
            stop(1),
            block(2, call("toolu_01", "get_weather")),
            delta(2, args("{\"city\":")),
            delta(2, args("\"Paris\"}")),
            stop(2),
            StreamEvent::Stop(StopReason::ToolUse),
            StreamEvent::Usage(Usage {
                input: 100,
                cached_input: 80,
                cache_write: 0,
                output: 20,
                reasoning: 5,
            }),
        ]
    }

    #[test]
    fn encodes_the_full_event_grammar() {
        golden("encoded_script.sse", &encode_all(&script()));
    }

    #[test]
    fn encodes_incomplete_and_lazy_start_and_open_blocks() {
        // No Start, a block left open, stopped for length.
        let text = encode_all(&[
            block(0, BlockStart::Text),
            delta(0, text("Once upon a")),
            StreamEvent::Stop(StopReason::MaxTokens),
            usage(20, 0, 16, 0),
        ]);
        // The lazily started response has a random id: mask it.
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let base = v["response"]["id"]
            .as_str()
            .unwrap()
            .strip_prefix("resp_")
            .unwrap();
        assert_eq!(base.len(), 24);
        golden("encoded_incomplete.sse", &text.replace(base, "RANDOM"));
    }

    #[test]
    fn sequence_numbers_count_from_zero_and_every_event_is_named_by_its_type() {
        let text = encode_all(&script());
        let mut parser = SseParser::default();
        parser.push(text.as_bytes());
        let mut n = 0;
        while let Some(frame) = parser.next_frame().unwrap() {
            let e = frame.event();
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["sequence_number"], n);
            assert_eq!(Some(v["type"].as_str().unwrap()), e.name);
            n += 1;
        }
        assert!(n > 20);
    }

    #[test]
    fn encoded_stream_decodes_back_to_the_same_events() {
        let encoded = encode_all(&script());
        let mut back = decode_all(&encoded);
        assert_eq!(back[0], start("resp_abc123", "gpt-x"));
        back[0] = start("chatcmpl-abc123", "gpt-x");
        assert_eq!(back, script());
    }

    #[test]
    fn provider_streams_survive_decode_then_encode_then_decode() {
        for name in [
            "text.sse",
            "function_call.sse",
            "parallel_function_calls.sse",
            "reasoning.sse",
            "reasoning_redacted.sse",
            "usage_cached.sse",
            "incomplete.sse",
        ] {
            let first = decode_all(&fixture(name));
            let again = decode_all(&encode_all(&first));
            assert_eq!(again, first, "{name}");
        }
    }

    #[test]
    fn fail_writes_one_response_failed_and_nothing_after() {
        let mut enc = StreamEncoder::new(&meta());
        let mut out = BytesMut::new();
        enc.encode(&start("resp_x1", "m"), &mut out);
        enc.encode(&block(0, BlockStart::Text), &mut out);
        enc.encode(&delta(0, text("par")), &mut out);
        let before = out.len();
        enc.fail("upstream went away", &mut out);
        let tail = String::from_utf8(out[before..].to_vec()).unwrap();
        assert!(tail.starts_with("event: response.failed\ndata: "), "{tail}");
        let data = tail
            .strip_prefix("event: response.failed\ndata: ")
            .unwrap()
            .trim_end();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["response"]["status"], "failed");
        assert_eq!(v["response"]["id"], "resp_x1");
        assert_eq!(
            v["response"]["error"],
            serde_json::json!({"code": "server_error", "message": "upstream went away"})
        );
        let len = out.len();
        enc.encode(&delta(0, text("more")), &mut out);
        enc.finish(None, &mut out);
        enc.fail("again", &mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn a_provider_error_event_fails_the_client_stream() {
        let text = encode_all(&[
            start("resp_e", "m"),
            StreamEvent::Error {
                message: "overloaded".into(),
            },
        ]);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.failed"
            ]
        );
    }

    #[test]
    fn fail_before_anything_is_still_parseable() {
        let mut enc = StreamEncoder::new(&meta());
        let mut out = BytesMut::new();
        enc.fail("no provider", &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "response.failed");
        assert_eq!(v["sequence_number"], 0);
        assert!(v["response"]["id"].as_str().unwrap().starts_with("resp_"));
    }

    #[test]
    fn interleaved_parallel_calls_keep_their_own_items() {
        let text = encode_all(&[
            start("resp_p", "m"),
            block(0, call("a", "f")),
            block(1, call("b", "g")),
            delta(1, args("{\"y\":2}")),
            delta(0, args("{\"x\":1}")),
            stop(0),
            stop(1),
            StreamEvent::Stop(StopReason::ToolUse),
        ]);
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        let data = last.split_once("data: ").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "response.completed");
        let output = v["response"]["output"].as_array().unwrap();
        assert_eq!(output[0]["arguments"], "{\"x\":1}");
        assert_eq!(output[0]["call_id"], "a");
        assert_eq!(output[1]["arguments"], "{\"y\":2}");
        assert_eq!(output[1]["id"], "fc_p_1");
    }
}
