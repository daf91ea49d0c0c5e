//! The (client format, provider format) table: passthrough when they match, translation
//! through the IR otherwise; and the push-style stream transcoder (bytes in, bytes out) that
//! also reports the usage it saw and what it cost, so metering hooks in at one place for
//! every pair.
//!
//! A streamed response's cost is not known when its headers leave. It is written at its end,
//! in both modes: as `cost` in the final usage object the client receives (OpenRouter's
//! convention: Chat's usage chunk, Anthropic's `message_delta.usage`, Responses'
//! `response.completed.response.usage`), and as one SSE comment after the last event
//! (`: x-flux-cost-usd=… input_tokens=…`), which every SSE parser ignores and a person can
//! read. Nothing here prices anything: the amount is what the settlement billed
//! ([`Billed`]), given to [`StreamTranscoder::close`] once the provider's stream has ended,
//! so what a client is told is what was billed. Until then, a passthrough stream holds back
//! the event that carries the final usage object (and the few bytes after it).

use std::borrow::Cow;
use std::ops::Range;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ir::{Billed, Delta, Request, Response, StopReason, StreamEvent, StreamMeta};
use super::sse::{self, EventTooLarge, Frame, SseParser};
use super::{anthropic, json, openai_chat, openai_responses, Format};
use crate::errors::FluxError;
use crate::units::{Usage, Usd};

/// How a (client, provider) pair is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Same format: the client's bytes with `model` spliced in; responses relayed as they are.
    Passthrough,
    /// Different formats: through the IR both ways.
    Translate,
}

pub fn plan(client: Format, provider: Format) -> Plan {
    if client == provider {
        Plan::Passthrough
    } else {
        Plan::Translate
    }
}

/// Parse a client body of `format`.
pub fn parse_request(format: Format, raw: &[u8]) -> Result<Request<'_>, FluxError> {
    match format {
        Format::OpenAiChat => openai_chat::parse_request(raw),
        Format::OpenAiResponses => openai_responses::parse_request(raw),
        Format::Anthropic => anthropic::parse_request(raw),
    }
}

/// The body to send to a provider of format `provider`, for its model id `model`.
///
/// Passthrough is the client's bytes with `model` spliced in; a Chat stream whose client did
/// not ask for usage also gets `stream_options.include_usage: true` (see
/// [`passthrough_body`]), and its [`StreamTranscoder`] (`meta.include_usage` false) strips
/// the usage chunk this adds after metering it.
pub fn encode_request(provider: Format, req: &Request<'_>, model: &str) -> Vec<u8> {
    match plan(req.format, provider) {
        Plan::Passthrough => passthrough_body(req, model),
        Plan::Translate => match provider {
            Format::OpenAiChat => openai_chat::encode_request(req, model, req.stream),
            Format::OpenAiResponses => openai_responses::encode_request(req, model, req.stream),
            Format::Anthropic => anthropic::encode_request(req, model, req.stream),
        },
    }
}

/// The client's body for a same-format provider: `model` replaced, and for a Chat stream
/// without `stream_options.include_usage: true`, that option set so the provider reports
/// usage. Both are splices into the client's bytes; nothing else is re-serialized.
pub fn passthrough_body(req: &Request<'_>, model: &str) -> Vec<u8> {
    let needs_usage = req.format == Format::OpenAiChat && req.stream && !req.include_usage;
    if !needs_usage {
        return json::splice_model(req.raw, &req.model_span, model);
    }
    let quoted = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".to_owned());
    let mut edits = [
        (req.model_span.clone(), Cow::Owned(quoted.into_bytes())),
        include_usage_edit(req.raw, req.stream_options_span.clone()),
    ];
    edits.sort_by_key(|(at, _)| at.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(req.raw.len() + extra);
    let mut from = 0;
    for (at, bytes) in &edits {
        // Spans come from the parser and never overlap; a bad one leaves the body as it is.
        if at.start < from || at.end > req.raw.len() || at.start > at.end {
            return json::splice_model(req.raw, &req.model_span, model);
        }
        out.extend_from_slice(&req.raw[from..at.start]);
        out.extend_from_slice(bytes);
        from = at.end;
    }
    out.extend_from_slice(&req.raw[from..]);
    out
}

/// The splice that makes a Chat body ask for usage, given where its `stream_options` value
/// is: absent -> the member inserted right after the body's opening `{`; an object with
/// `include_usage` -> that value replaced by `true`; an object without it -> the member
/// inserted first, its other members kept; null or anything else -> the value replaced.
fn include_usage_edit(
    raw: &[u8],
    stream_options: Option<Range<usize>>,
) -> (Range<usize>, Cow<'static, [u8]>) {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    const VALUE: &[u8] = br#"{"include_usage":true}"#;
    let Some(span) = stream_options.filter(|s| s.end <= raw.len() && s.start < s.end) else {
        // The body parsed as an object with a `model`, so it has a `{` and a member after it.
        let at = raw.iter().position(|b| *b == b'{').map_or(0, |i| i + 1);
        return (at..at, Cow::Borrowed(MEMBER));
    };
    let value = &raw[span.clone()];
    if value.starts_with(b"{") {
        if let Ok(members) = json::top_level(value) {
            if let Some((_, v)) = members.iter().find(|(k, _)| k == "include_usage") {
                let at = json::span_of(value, v);
                return (
                    span.start + at.start..span.start + at.end,
                    Cow::Borrowed(b"true"),
                );
            }
            if !members.is_empty() {
                let at = span.start + 1;
                return (at..at, Cow::Borrowed(br#""include_usage":true,"#));
            }
        }
    }
    (span, Cow::Borrowed(VALUE))
}

pub fn decode_response(format: Format, body: &[u8]) -> Result<Response<'_>, String> {
    match format {
        Format::OpenAiChat => openai_chat::decode_response(body),
        Format::OpenAiResponses => openai_responses::decode_response(body),
        Format::Anthropic => anthropic::decode_response(body),
    }
}

pub fn encode_response(format: Format, resp: &Response<'_>) -> Vec<u8> {
    match format {
        Format::OpenAiChat => openai_chat::encode_response(resp),
        Format::OpenAiResponses => openai_responses::encode_response(resp),
        Format::Anthropic => anthropic::encode_response(resp),
    }
}

/// A provider's non-streamed success body, for a client of `client` format: passed through
/// when the formats match, translated otherwise. Returns the body and the usage it reports.
pub fn translate_response(
    client: Format,
    provider: Format,
    body: bytes::Bytes,
) -> Result<(bytes::Bytes, Usage), String> {
    let resp = decode_response(provider, &body)?;
    let usage = resp.usage;
    if plan(client, provider) == Plan::Passthrough {
        drop(resp);
        return Ok((body, usage));
    }
    Ok((encode_response(client, &resp).into(), usage))
}

enum Decoder {
    Chat(openai_chat::StreamDecoder),
    Responses(openai_responses::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
}

impl Decoder {
    fn new(format: Format) -> Self {
        match format {
            Format::OpenAiChat => Decoder::Chat(openai_chat::StreamDecoder::new()),
            Format::OpenAiResponses => Decoder::Responses(openai_responses::StreamDecoder::new()),
            Format::Anthropic => Decoder::Anthropic(anthropic::StreamDecoder::new()),
        }
    }

    fn decode(&mut self, frame: &Frame, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let event = frame.event();
        if event.data.is_empty() {
            return Ok(()); // a comment or keep-alive
        }
        match self {
            Decoder::Chat(d) => d.decode(&event, out),
            Decoder::Responses(d) => d.decode(&event, out),
            Decoder::Anthropic(d) => d.decode(&event, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        match self {
            Decoder::Chat(d) => d.finish(out),
            Decoder::Responses(d) => d.finish(out),
            Decoder::Anthropic(d) => d.finish(out),
        }
    }
}

enum Encoder {
    Chat(openai_chat::StreamEncoder),
    Responses(openai_responses::StreamEncoder),
    Anthropic(anthropic::StreamEncoder),
}

impl Encoder {
    fn new(format: Format, meta: &StreamMeta) -> Self {
        match format {
            Format::OpenAiChat => Encoder::Chat(openai_chat::StreamEncoder::new(meta)),
            Format::OpenAiResponses => {
                Encoder::Responses(openai_responses::StreamEncoder::new(meta))
            }
            Format::Anthropic => Encoder::Anthropic(anthropic::StreamEncoder::new(meta)),
        }
    }

    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        match self {
            Encoder::Chat(e) => e.encode(event, out),
            Encoder::Responses(e) => e.encode(event, out),
            Encoder::Anthropic(e) => e.encode(event, out),
        }
    }

    fn finish(&mut self, cost: Option<Usd>, out: &mut BytesMut) {
        match self {
            Encoder::Chat(e) => e.finish(cost, out),
            Encoder::Responses(e) => e.finish(cost, out),
            Encoder::Anthropic(e) => e.finish(cost, out),
        }
    }

    fn fail(&mut self, message: &str, out: &mut BytesMut) {
        match self {
            Encoder::Chat(e) => e.fail(message, out),
            Encoder::Responses(e) => e.fail(message, out),
            Encoder::Anthropic(e) => e.fail(message, out),
        }
    }
}

/// Why a stream could not be relayed to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFault {
    /// The provider sent an event over the size limit.
    TooLarge(EventTooLarge),
    /// The provider sent data its format's decoder cannot read.
    Undecodable(String),
}

impl std::fmt::Display for StreamFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamFault::TooLarge(e) => e.fmt(f),
            StreamFault::Undecodable(e) => write!(f, "undecodable stream event: {e}"),
        }
    }
}

/// One per streamed request: provider SSE bytes in, client SSE bytes out.
///
/// Passthrough forwards each complete event verbatim (never a partial one, so a broken stream
/// can still end with a parseable error event), decoding it on the side for usage, stop
/// reason, errors and the size of the output. Only the event that carries the final usage
/// is rewritten (to add `cost`, so it waits for [`StreamTranscoder::close`]), and a Chat usage
/// chunk the client did not ask for is dropped. Translation decodes every event into the IR
/// and encodes it for the client.
///
/// The calls: [`push`](Self::push) as bytes arrive; at the provider's end of stream
/// [`finish`](Self::finish), after which [`usage`](Self::usage) is final; then, once the
/// request is billed, [`close`](Self::close) (or [`fail`](Self::fail) if the stream broke).
pub struct StreamTranscoder {
    parser: SseParser,
    decoder: Decoder,
    /// None on passthrough.
    encoder: Option<Encoder>,
    /// Fallback error writer on passthrough (the client's own format).
    client: Format,
    meta: StreamMeta,
    events: Vec<StreamEvent>,
    usage: Usage,
    stop: Option<StopReason>,
    /// The provider reported an error inside its stream.
    provider_error: Option<String>,
    /// Bytes of text, tool arguments and thinking relayed so far.
    text_bytes: u64,
    /// Passthrough: the event carrying the final usage object and what came after it, held
    /// until the bill is known.
    held: Option<HeldTail>,
    done: bool,
}

/// The end of a passthrough stream, held back for its cost.
struct HeldTail {
    /// The event whose usage object gets `cost`.
    carrier: Frame,
    /// Every byte relayed after it.
    rest: BytesMut,
}

/// Bytes a passthrough stream may hold after the event that carries usage. What follows the
/// final usage object is a line or two (`data: [DONE]`, `message_stop`); a provider that
/// keeps streaming after a usage object has not sent its final one yet: the held event is
/// then relayed as it came, and the cost goes in the comment and any later usage object.
const MAX_HELD_BYTES: usize = 16 * 1024;

impl StreamTranscoder {
    pub fn new(client: Format, provider: Format, meta: StreamMeta) -> Self {
        let encoder = match plan(client, provider) {
            Plan::Passthrough => None,
            Plan::Translate => Some(Encoder::new(client, &meta)),
        };
        StreamTranscoder {
            parser: SseParser::default(),
            decoder: Decoder::new(provider),
            encoder,
            client,
            meta,
            events: Vec::new(),
            usage: Usage::default(),
            stop: None,
            provider_error: None,
            text_bytes: 0,
            held: None,
            done: false,
        }
    }

    /// Feed bytes from the provider; whatever the client should receive now is appended to
    /// `out`. After an error the stream must be ended with [`StreamTranscoder::fail`].
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), StreamFault> {
        self.parser.push(chunk);
        while let Some(frame) = self.parser.next_frame().map_err(StreamFault::TooLarge)? {
            self.frame(frame, out)?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), StreamFault> {
        if self.encoder.is_some() {
            self.decoder
                .decode(&frame, &mut self.events)
                .map_err(StreamFault::Undecodable)?;
            self.drain_events(out);
            return Ok(());
        }
        // Passthrough. Data that is not JSON is refused only where the gateway needs to read
        // it (usage, a stop, an error); anything else the client may judge.
        if let Err(e) = self.decoder.decode(&frame, &mut self.events) {
            if carries_state(&frame.0) {
                return Err(StreamFault::Undecodable(e));
            }
            self.events.clear();
        }
        let reports_usage = self
            .events
            .iter()
            .any(|e| matches!(e, StreamEvent::Usage(_)));
        self.drain_events(out);
        if reports_usage {
            self.relay_usage_frame(frame, out);
        } else {
            self.relay(&frame.0, out);
        }
        Ok(())
    }

    /// Passthrough of an event that reported usage: dropped when it is a Chat usage chunk the
    /// client did not ask for (the gateway asked); held for its cost when it has the usage
    /// object the client reads (a later one supersedes it); relayed as it is otherwise.
    fn relay_usage_frame(&mut self, frame: Frame, out: &mut BytesMut) {
        let event = frame.event();
        if self.client == Format::OpenAiChat
            && !self.meta.include_usage
            && is_usage_chunk(&event.data)
        {
            return;
        }
        let carries_cost = final_usage(self.client, event.name, &event.data).is_some();
        drop(event);
        if !carries_cost {
            self.relay(&frame.0, out);
            return;
        }
        self.release_held(out);
        self.held = Some(HeldTail {
            carrier: frame,
            rest: BytesMut::new(),
        });
    }

    /// Passthrough bytes for the client: behind the held tail when there is one.
    fn relay(&mut self, bytes: &[u8], out: &mut BytesMut) {
        let Some(held) = &mut self.held else {
            out.extend_from_slice(bytes);
            return;
        };
        held.rest.extend_from_slice(bytes);
        if held.rest.len() > MAX_HELD_BYTES {
            self.release_held(out);
        }
    }

    /// Relay the held tail as it came (its usage object was not the final one).
    fn release_held(&mut self, out: &mut BytesMut) {
        if let Some(held) = self.held.take() {
            out.extend_from_slice(&held.carrier.0);
            out.extend_from_slice(&held.rest);
        }
    }

    /// Write the held tail, its usage object given `cost` when the stream was billed.
    fn write_held(&mut self, billed: Option<&Billed>, out: &mut BytesMut) {
        let Some(held) = self.held.take() else {
            return;
        };
        let event = held.carrier.event();
        let priced = billed
            .and_then(|b| with_cost(self.client, event.name, &event.data, &b.cost.to_decimal()));
        match priced {
            Some(data) => write_data(out, event.name, &data),
            None => out.extend_from_slice(&held.carrier.0),
        }
        out.extend_from_slice(&held.rest);
    }

    fn drain_events(&mut self, out: &mut BytesMut) {
        for event in self.events.drain(..) {
            match &event {
                StreamEvent::Usage(u) => self.usage.merge(u),
                StreamEvent::Stop(r) => self.stop = Some(*r),
                StreamEvent::Error { message } => self.provider_error = Some(message.clone()),
                StreamEvent::Delta {
                    delta: Delta::Text(t) | Delta::ToolArguments(t) | Delta::Thinking(t),
                    ..
                } => self.text_bytes = self.text_bytes.saturating_add(t.len() as u64),
                _ => {}
            }
            if let Some(encoder) = &mut self.encoder {
                encoder.encode(&event, out);
            }
        }
    }

    /// The provider ended its stream normally: take in a last unterminated event and what
    /// the decoder still holds. [`StreamTranscoder::usage`] is then final; what carries the
    /// cost is written by [`StreamTranscoder::close`].
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), StreamFault> {
        if self.done {
            return Ok(());
        }
        if let Some(frame) = self.parser.finish() {
            // The last event lacked its blank line: ended here, so the client reads it as
            // relayed (and the cost comment stays a line of its own).
            let mut bytes = BytesMut::from(&frame.0[..]);
            terminate_event(&mut bytes);
            self.frame(Frame(bytes.freeze()), out)?;
        }
        self.decoder.finish(&mut self.events);
        self.drain_events(out);
        Ok(())
    }

    /// End the client's stream after [`StreamTranscoder::finish`]: the closing events, with
    /// `billed.cost` in the final usage object, then the cost comment. `billed` is what the
    /// settlement billed; None writes no cost (a stream nobody bills).
    pub fn close(&mut self, billed: Option<&Billed>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
        self.write_held(billed, out);
        if let Some(encoder) = &mut self.encoder {
            encoder.finish(billed.map(|b| b.cost), out);
        }
        if let (Some(b), None) = (billed, &self.provider_error) {
            let u = &b.usage;
            sse::write_comment(
                out,
                &format!(
                    "x-flux-cost-usd={} input_tokens={} output_tokens={} cached_input_tokens={}",
                    b.cost.to_decimal(),
                    u.input,
                    u.output,
                    u.cached_input
                ),
            );
        }
    }

    /// The stream broke (provider gone, idle timeout, undecodable data): write what was held
    /// for its cost (`billed`, what was billed for the usage seen), then one complete error
    /// event in the client's grammar. A partial event is never forwarded.
    pub fn fail(&mut self, message: &str, billed: Option<&Billed>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
        self.write_held(billed, out);
        match &mut self.encoder {
            Some(encoder) => encoder.fail(message, out),
            None => {
                // Passthrough: the client's format is the provider's; its encoder knows the
                // error grammar even though it encoded nothing else.
                Encoder::new(self.client, &self.meta).fail(message, out)
            }
        }
    }

    /// Usage reported so far (complete once the stream finished).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Bytes of text, tool-call arguments and thinking relayed to the client so far (as the
    /// provider sent them, unescaped): for estimating the output of a stream that broke
    /// before the provider reported usage.
    pub fn output_text_bytes(&self) -> u64 {
        self.text_bytes
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// An error the provider reported inside the stream, if any.
    pub fn provider_error(&self) -> Option<&str> {
        self.provider_error.as_deref()
    }
}

/// Whether a passthrough frame may carry what the gateway must read from a stream it does
/// not translate (usage, a stop reason, an error): such a frame must decode.
fn carries_state(frame: &[u8]) -> bool {
    const NEEDLES: [&[u8]; 4] = [
        b"\"usage\"",
        b"finish_reason\":\"",
        b"error",
        b"stop_reason",
    ];
    NEEDLES
        .iter()
        .any(|n| frame.windows(n.len()).any(|w| w == *n))
}

/// End the event at the end of `out` with a blank line.
fn terminate_event(out: &mut BytesMut) {
    if out.ends_with(b"\n\n") || out.ends_with(b"\r\r") || out.ends_with(b"\r\n\r\n") {
        return;
    }
    match out.last() {
        Some(b'\r') => out.extend_from_slice(b"\r"),
        Some(b'\n') => out.extend_from_slice(b"\n"),
        _ => out.extend_from_slice(b"\n\n"),
    }
}

/// Write an event whose data may hold line breaks (a provider's multi-line `data:`).
fn write_data(out: &mut BytesMut, name: Option<&str>, data: &str) {
    if !data.contains(['\n', '\r']) {
        sse::write_event(out, name, data.as_bytes());
        return;
    }
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// The members of an event the cost logic looks at, each raw (`null` reads as absent).
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
}

/// A Chat chunk that is only there for its usage: `usage` set and `choices` empty or absent.
fn is_usage_chunk(data: &str) -> bool {
    let Ok(p) = serde_json::from_str::<Probe>(data) else {
        return false;
    };
    let no_choices = p.choices.is_none_or(|c| {
        let c = c.get().as_bytes();
        c.first() == Some(&b'[') && c[1..].iter().all(|b| b.is_ascii_whitespace() || *b == b']')
    });
    p.usage.is_some() && no_choices
}

/// One event's data with `"cost": <cost>` set in the final usage object a client of
/// `format` reads ([`final_usage`]). `cost` is a decimal (`Usd::to_decimal`) written as the
/// JSON number's digits. An existing `cost` member gets the new value; every other byte
/// stays. None when the event has no such usage object.
pub fn with_cost(format: Format, name: Option<&str>, data: &str, cost: &str) -> Option<String> {
    set_cost(data, final_usage(format, name, data)?, cost)
}

/// The usage object of an event that a client of `format` reads as the final usage, the
/// place for `cost`: Chat `usage` (any chunk that has one), Anthropic `message_delta`'s
/// `usage`, Responses `response.completed` / `response.incomplete`'s `response.usage`.
fn final_usage<'d>(format: Format, name: Option<&str>, data: &'d str) -> Option<&'d RawValue> {
    let probe: Probe = serde_json::from_str(data).ok()?;
    let kind: Option<Cow<'_, str>> = match probe.kind {
        Some(k) => serde_json::from_str(k.get()).ok(),
        None => name.map(Cow::Borrowed),
    };
    let usage = match format {
        Format::OpenAiChat => probe.usage?,
        Format::Anthropic => match kind.as_deref() {
            Some("message_delta") => probe.usage?,
            _ => return None,
        },
        Format::OpenAiResponses => match kind.as_deref() {
            Some("response.completed" | "response.incomplete") => {
                serde_json::from_str::<Probe>(probe.response?.get())
                    .ok()?
                    .usage?
            }
            _ => return None,
        },
    };
    usage.get().starts_with('{').then_some(usage)
}

/// `data` with `"cost": <cost>` set in the object `usage` (a slice of `data`).
fn set_cost(data: &str, usage: &RawValue, cost: &str) -> Option<String> {
    let span = json::span_of(data.as_bytes(), usage);
    let members = json::top_level(usage.get().as_bytes()).ok()?;
    let (at, insert) = match members.iter().find(|(k, _)| k == "cost") {
        Some((_, v)) => (json::span_of(data.as_bytes(), v), cost.to_owned()),
        None if members.is_empty() => (span, format!("{{\"cost\":{cost}}}")),
        // Before the closing brace.
        None => (span.end - 1..span.end - 1, format!(",\"cost\":{cost}")),
    };
    let mut out = String::with_capacity(data.len() + insert.len());
    out.push_str(data.get(..at.start)?);
    out.push_str(&insert);
    out.push_str(data.get(at.end..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Rates;

    fn fixture(format: Format, name: &str) -> String {
        let folder = match format {
            Format::OpenAiChat => "openai_chat",
            Format::OpenAiResponses => "openai_responses",
            Format::Anthropic => "anthropic",
        };
        let path = format!(
            "{}/tests/fixtures/wire/{folder}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// gpt-4o-mini's prices: cached input is half the input rate.
    fn rates() -> Rates {
        let usd = |s: &str| s.parse::<Usd>().unwrap();
        Rates::per_million(usd("0.15"), usd("0.075"), usd("0.60"))
    }

    /// A stream's settings, and the rates the gateway bills it at (None: not billed).
    struct Setup {
        meta: StreamMeta,
        rates: Option<Rates>,
    }

    fn meta(include_usage: bool, rates: Option<Rates>) -> Setup {
        Setup {
            meta: StreamMeta {
                estimated_input_tokens: 42,
                include_usage,
                created: 1_700_000_000,
            },
            rates,
        }
    }

    /// What the gateway bills for the usage a stream reported, as the exchange does when no
    /// cap applies (none when nothing was reported).
    fn billed(t: &StreamTranscoder, rates: Option<Rates>) -> Option<Billed> {
        let usage = t.usage();
        let rates = rates.filter(|_| !usage.is_empty())?;
        Some(Billed {
            cost: crate::units::cost(&usage, &rates),
            usage,
        })
    }

    /// The cost billed at rates() for what a stream reported.
    fn cost_of(t: &StreamTranscoder) -> Option<String> {
        billed(t, Some(rates())).map(|b| b.cost.to_decimal())
    }

    /// The whole stream through a transcoder, in small pieces, closed with its bill.
    fn run(
        client: Format,
        provider: Format,
        setup: Setup,
        input: &str,
    ) -> (String, StreamTranscoder) {
        let mut t = StreamTranscoder::new(client, provider, setup.meta);
        let mut out = BytesMut::new();
        for piece in input.as_bytes().chunks(13) {
            t.push(piece, &mut out).unwrap();
        }
        t.finish(&mut out).unwrap();
        let billed = billed(&t, setup.rates);
        t.close(billed.as_ref(), &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), t)
    }

    fn comment(cost: &str, input: u64, output: u64, cached: u64) -> String {
        format!(
            ": x-flux-cost-usd={cost} input_tokens={input} output_tokens={output} \
             cached_input_tokens={cached}\n\n"
        )
    }

    /// The provider's stream with `from` (once) replaced by `to`: what a passthrough client
    /// receives when only the usage frame changes.
    fn replaced_once(input: &str, from: &str, to: &str) -> String {
        assert_eq!(input.matches(from).count(), 1, "{from}");
        input.replace(from, to)
    }

    // Expected costs at rates(), by hand:
    // Chat stream_usage_cached: 2048 in (1920 cached), 300 out:
    //   128 x 0.15 + 1920 x 0.075 + 300 x 0.60 = 19.2 + 144 + 180 = 343.2 micro-dollars.
    const CHAT_CACHED_COST: &str = "0.0003432";
    // Anthropic cache_usage: 12 uncached + 9000 read + 300 written, 40 out:
    //   312 x 0.15 + 9000 x 0.075 + 40 x 0.60 = 46.8 + 675 + 24 = 745.8 micro-dollars.
    const ANTHROPIC_CACHED_COST: &str = "0.0007458";
    // Responses usage_cached: 7012 in (6912 cached), 5 out:
    //   100 x 0.15 + 6912 x 0.075 + 5 x 0.60 = 15 + 518.4 + 3 = 536.4 micro-dollars.
    const RESPONSES_CACHED_COST: &str = "0.0005364";

    #[test]
    fn cached_tokens_are_priced_at_the_cached_rate() {
        let usage = Usage {
            input: 2048,
            cached_input: 1920,
            output: 300,
            ..Usage::default()
        };
        assert_eq!(
            crate::units::cost(&usage, &rates()).to_decimal(),
            CHAT_CACHED_COST
        );
    }

    #[test]
    fn chat_passthrough_prices_the_usage_chunk_and_ends_with_the_comment() {
        let input = fixture(Format::OpenAiChat, "stream_usage_cached.sse");
        let (out, t) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, Some(rates())),
            &input,
        );
        // Usage on a chunk whose choices are not empty: read, and priced in place.
        let want = replaced_once(
            &input,
            "\"reasoning_tokens\":256}}}",
            &format!("\"reasoning_tokens\":256}},\"cost\":{CHAT_CACHED_COST}}}}}"),
        ) + &comment(CHAT_CACHED_COST, 2048, 300, 1920);
        assert_eq!(out, want);
        assert_eq!(cost_of(&t).unwrap(), CHAT_CACHED_COST);
        assert_eq!(t.usage().cached_input, 1920);
        // The chunk with the usage was the client's: not stripped even when it did not ask.
        let (out, _) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(false, Some(rates())),
            &input,
        );
        assert_eq!(out, want);
    }

    #[test]
    fn chat_passthrough_strips_the_usage_chunk_the_client_did_not_ask_for() {
        let input = fixture(Format::OpenAiChat, "stream_tools_parallel.sse");
        let at = input.find("data: {\"id\":\"chatcmpl-CbX8toolsPar\",\"object\":\"chat.completion.chunk\",\"created\":1764400100,\"model\":\"gpt-4.1-2025-04-14\",\"system_fingerprint\":\"fp_b3f1157249\",\"choices\":[],").unwrap();
        let end = at + input[at..].find("\n\n").unwrap() + 2;
        let usage_chunk = &input[at..end];
        // 84 x 0.15 + 41 x 0.60 = 12.6 + 24.6 = 37.2 micro-dollars.
        let cost = "0.0000372";

        // Not asked: dropped, still metered and priced.
        let (out, t) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(false, Some(rates())),
            &input,
        );
        let stripped = input.replace(usage_chunk, "");
        assert_eq!(out, stripped.clone() + &comment(cost, 84, 41, 0));
        assert_eq!((t.usage().input, t.usage().output), (84, 41));
        assert_eq!(cost_of(&t).unwrap(), cost);
        // Not priced: dropped all the same, and no comment.
        let (out, t) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(false, None),
            &input,
        );
        assert_eq!(out, stripped);
        assert_eq!(t.usage().input, 84);

        // Asked: kept, with its cost; every other byte as the provider sent it.
        let (out, _) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, Some(rates())),
            &input,
        );
        let priced = usage_chunk.replace(
            "\"rejected_prediction_tokens\":0}}}",
            &format!("\"rejected_prediction_tokens\":0}},\"cost\":{cost}}}}}"),
        );
        assert_eq!(
            out,
            replaced_once(&input, usage_chunk, &priced) + &comment(cost, 84, 41, 0)
        );
        let v: serde_json::Value = serde_json::from_str(&priced[6..]).unwrap();
        assert_eq!(v["usage"]["cost"].as_f64(), Some(3.72e-5), "a JSON number");
        // Not priced: byte for byte.
        let (out, _) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, None),
            &input,
        );
        assert_eq!(out, input);
    }

    #[test]
    fn anthropic_passthrough_prices_message_delta_with_message_start_input() {
        let input = fixture(Format::Anthropic, "cache_usage.sse");
        let (out, t) = run(
            Format::Anthropic,
            Format::Anthropic,
            meta(false, Some(rates())),
            &input,
        );
        let want = replaced_once(
            &input,
            "\"output_tokens\":40,\"server_tool_use\":null}}",
            &format!("\"output_tokens\":40,\"server_tool_use\":null,\"cost\":{ANTHROPIC_CACHED_COST}}}}}"),
        ) + &comment(ANTHROPIC_CACHED_COST, 9312, 40, 9000);
        assert_eq!(out, want);
        assert!(out.contains("message_stop\"}\n\n: x-flux-cost-usd="));
        assert_eq!(
            t.usage(),
            Usage {
                input: 9312,
                cached_input: 9000,
                cache_write: 300,
                output: 40,
                reasoning: 0
            }
        );
    }

    #[test]
    fn anthropic_message_delta_with_output_only_is_merged_with_message_start() {
        // Older API versions: message_delta reports output_tokens alone.
        let input = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":9000,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":40}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        for client in Format::ALL {
            let (out, t) = run(client, Format::Anthropic, meta(true, Some(rates())), input);
            assert_eq!(
                (
                    t.usage().input,
                    t.usage().cached_input,
                    t.usage().cache_write,
                    t.usage().output
                ),
                (9312, 9000, 300, 40),
                "{client:?}"
            );
            assert_eq!(cost_of(&t).unwrap(), ANTHROPIC_CACHED_COST);
            assert!(
                out.contains(&format!("\"cost\":{ANTHROPIC_CACHED_COST}")),
                "{client:?}: {out}"
            );
            assert!(out.ends_with(&comment(ANTHROPIC_CACHED_COST, 9312, 40, 9000)));
        }
    }

    #[test]
    fn responses_passthrough_prices_response_completed() {
        let input = fixture(Format::OpenAiResponses, "usage_cached.sse");
        let (out, t) = run(
            Format::OpenAiResponses,
            Format::OpenAiResponses,
            meta(false, Some(rates())),
            &input,
        );
        let want = replaced_once(
            &input,
            "\"total_tokens\":7017}",
            &format!("\"total_tokens\":7017,\"cost\":{RESPONSES_CACHED_COST}}}"),
        ) + &comment(RESPONSES_CACHED_COST, 7012, 5, 6912);
        assert_eq!(out, want);
        assert_eq!(cost_of(&t).unwrap(), RESPONSES_CACHED_COST);

        // response.incomplete carries the final usage too.
        let input = fixture(Format::OpenAiResponses, "incomplete.sse");
        let (out, t) = run(
            Format::OpenAiResponses,
            Format::OpenAiResponses,
            meta(false, Some(rates())),
            &input,
        );
        // 20 x 0.15 + 16 x 0.60 = 3 + 9.6 micro-dollars.
        assert_eq!(cost_of(&t).unwrap(), "0.0000126");
        let last = out.trim_end().rsplit("\n\n").nth(1).unwrap();
        assert!(last.contains("\"cost\":0.0000126}"), "{last}");
        assert!(out.ends_with(&comment("0.0000126", 20, 16, 0)));
    }

    /// The data of the last event named `name` (or the last `data:` line for Chat).
    fn last_data<'s>(out: &'s str, needle: &str) -> &'s str {
        out.split("\n\n")
            .filter(|e| e.contains(needle))
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .last()
            .unwrap_or_else(|| panic!("no {needle} in {out}"))
    }

    fn raw_cost(usage: &RawValue) -> String {
        #[derive(Deserialize)]
        struct U<'a> {
            #[serde(borrow)]
            cost: &'a RawValue,
        }
        serde_json::from_str::<U>(usage.get())
            .unwrap()
            .cost
            .get()
            .to_owned()
    }

    /// The `cost` written in the final usage object a client of `client` reads, verbatim.
    fn final_cost(client: Format, out: &str) -> String {
        let probe = |data: &str| -> String {
            let p: Probe = serde_json::from_str(data).unwrap();
            match client {
                Format::OpenAiResponses => {
                    let r: Probe = serde_json::from_str(p.response.unwrap().get()).unwrap();
                    raw_cost(r.usage.unwrap())
                }
                _ => raw_cost(p.usage.unwrap()),
            }
        };
        match client {
            Format::OpenAiChat => probe(last_data(out, "\"choices\":[]")),
            Format::Anthropic => probe(last_data(out, "event: message_delta")),
            Format::OpenAiResponses => probe(last_data(out, "event: response.completed")),
        }
    }

    #[test]
    fn translated_streams_carry_the_cost_in_usage_and_the_comment() {
        let cases = [
            (
                Format::OpenAiChat,
                "stream_usage_cached.sse",
                CHAT_CACHED_COST,
                (2048, 300, 1920),
            ),
            (
                Format::Anthropic,
                "cache_usage.sse",
                ANTHROPIC_CACHED_COST,
                (9312, 40, 9000),
            ),
            (
                Format::OpenAiResponses,
                "usage_cached.sse",
                RESPONSES_CACHED_COST,
                (7012, 5, 6912),
            ),
        ];
        for (provider, file, cost, (input_tokens, output, cached)) in cases {
            let input = fixture(provider, file);
            for client in Format::ALL.into_iter().filter(|c| *c != provider) {
                let (out, t) = run(client, provider, meta(true, Some(rates())), &input);
                assert_eq!(final_cost(client, &out), cost, "{provider:?} -> {client:?}");
                assert_eq!(cost_of(&t).unwrap(), cost);
                // The comment follows the last event.
                let last_event = match client {
                    Format::OpenAiChat => "data: [DONE]\n\n".to_owned(),
                    Format::Anthropic => {
                        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned()
                    }
                    Format::OpenAiResponses => "}\n\n".to_owned(),
                };
                let tail = last_event + &comment(cost, input_tokens, output, cached);
                assert!(out.ends_with(&tail), "{provider:?} -> {client:?}: {out}");
                if client == Format::OpenAiResponses {
                    let completed = out.rfind("event: response.completed\n").unwrap();
                    assert!(out[completed..].ends_with(&tail));
                }

                // Not billed: no cost anywhere.
                let (out, _) = run(client, provider, meta(true, None), &input);
                assert!(!out.contains("cost"), "{provider:?} -> {client:?}: {out}");
            }
        }
    }

    /// Every `cost` member of a client's stream, verbatim, and the comment's amount.
    fn costs_told(out: &str) -> (Vec<String>, Option<String>) {
        let mut costs = Vec::new();
        for data in out.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            for usage in [&v["usage"], &v["response"]["usage"]] {
                if let Some(c) = usage.get("cost") {
                    costs.push(c.to_string());
                }
            }
        }
        let comment = out
            .lines()
            .find_map(|l| l.strip_prefix(": x-flux-cost-usd="))
            .map(|c| c.split(' ').next().unwrap().to_owned());
        (costs, comment)
    }

    #[test]
    fn every_stream_tells_the_amount_it_is_given_and_prices_nothing_itself() {
        // A bill below the usage's price, as a hard cap makes it.
        let cases = [
            (Format::OpenAiChat, "stream_usage_cached.sse"),
            (Format::Anthropic, "cache_usage.sse"),
            (Format::OpenAiResponses, "usage_cached.sse"),
        ];
        for (provider, file) in cases {
            let input = fixture(provider, file);
            for client in Format::ALL {
                let mut t = StreamTranscoder::new(client, provider, meta(true, None).meta);
                let mut out = BytesMut::new();
                for piece in input.as_bytes().chunks(11) {
                    t.push(piece, &mut out).unwrap();
                }
                t.finish(&mut out).unwrap();
                let before_close = String::from_utf8(out.to_vec()).unwrap();
                assert_eq!(
                    costs_told(&before_close),
                    (vec![], None),
                    "{provider:?} -> {client:?}: nothing priced before the bill"
                );
                let usage = t.usage();
                let billed = Billed {
                    cost: "0.001".parse().unwrap(),
                    usage,
                };
                assert_ne!(cost_of(&t).unwrap(), "0.001");
                t.close(Some(&billed), &mut out);
                let out = String::from_utf8(out.to_vec()).unwrap();
                assert_eq!(
                    costs_told(&out),
                    (vec!["0.001".to_owned()], Some("0.001".to_owned())),
                    "{provider:?} -> {client:?}: {out}"
                );
                assert!(out.ends_with(&comment(
                    "0.001",
                    usage.input,
                    usage.output,
                    usage.cached_input
                )));
            }
        }
    }

    #[test]
    fn a_passthrough_stream_holds_back_only_its_final_usage_event() {
        let input = fixture(Format::Anthropic, "cache_usage.sse");
        let mut t =
            StreamTranscoder::new(Format::Anthropic, Format::Anthropic, meta(true, None).meta);
        let mut out = BytesMut::new();
        t.push(input.as_bytes(), &mut out).unwrap();
        let at = input.find("event: message_delta").unwrap();
        assert_eq!(
            &out[..],
            &input.as_bytes()[..at],
            "all but message_delta and after"
        );
        t.finish(&mut out).unwrap();
        t.close(None, &mut out);
        assert_eq!(&out[..], input.as_bytes(), "unbilled: as it came");

        // A usage object followed by more than a tail: not the final one, relayed as it came.
        let early =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        let text = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(1000)
        );
        let mut t = StreamTranscoder::new(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, None).meta,
        );
        let mut out = BytesMut::new();
        t.push(early.as_bytes(), &mut out).unwrap();
        assert!(out.is_empty());
        for _ in 0..20 {
            t.push(text.as_bytes(), &mut out).unwrap();
        }
        assert!(out.starts_with(early.as_bytes()), "released unpriced");
        t.finish(&mut out).unwrap();
        let billed = Billed {
            cost: "0.5".parse().unwrap(),
            usage: t.usage(),
        };
        t.close(Some(&billed), &mut out);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(costs_told(&out), (vec![], Some("0.5".to_owned())));
    }

    #[test]
    fn a_chat_client_that_did_not_ask_gets_no_usage_chunk_but_the_comment() {
        let input = fixture(Format::Anthropic, "cache_usage.sse");
        let (out, t) = run(
            Format::OpenAiChat,
            Format::Anthropic,
            meta(false, Some(rates())),
            &input,
        );
        assert!(!out.contains("\"usage\""), "{out}");
        assert!(out.ends_with(
            &("data: [DONE]\n\n".to_owned() + &comment(ANTHROPIC_CACHED_COST, 9312, 40, 9000))
        ));
        assert_eq!(cost_of(&t).unwrap(), ANTHROPIC_CACHED_COST);
    }

    #[test]
    fn a_broken_stream_has_no_comment_but_reports_its_cost_so_far() {
        for (client, provider) in [
            (Format::Anthropic, Format::Anthropic),
            (Format::OpenAiChat, Format::Anthropic),
        ] {
            let input = fixture(Format::Anthropic, "cache_usage.sse");
            let cut = input.find("event: content_block_stop").unwrap();
            let mut t = StreamTranscoder::new(client, provider, meta(true, None).meta);
            let mut out = BytesMut::new();
            t.push(&input.as_bytes()[..cut], &mut out).unwrap();
            let billed = billed(&t, Some(rates()));
            t.fail("upstream went away", billed.as_ref(), &mut out);
            t.finish(&mut out).unwrap();
            t.close(billed.as_ref(), &mut out);
            let out = String::from_utf8(out.to_vec()).unwrap();
            assert!(!out.contains("x-flux-cost-usd"), "{out}");
            // message_start's usage: 312 uncached x 0.15 + 9000 x 0.075 + 1 x 0.60.
            assert_eq!(cost_of(&t).unwrap(), "0.0007224");
            assert_eq!(t.output_text_bytes(), 2, "the text 'hi'");
        }
        // No usage before the break: no cost.
        let input = fixture(Format::OpenAiChat, "stream_text.sse");
        let mut t = StreamTranscoder::new(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, None).meta,
        );
        let mut out = BytesMut::new();
        t.push(input.as_bytes(), &mut out).unwrap();
        t.fail("idle timeout", None, &mut out);
        assert_eq!(cost_of(&t), None);
        assert_eq!(t.output_text_bytes(), "Hello there! \"hi\"".len() as u64);
    }

    #[test]
    fn a_provider_error_in_the_stream_gets_no_comment() {
        for (provider, file) in [
            (Format::Anthropic, "error.sse"),
            (Format::OpenAiChat, "stream_error.sse"),
            (Format::OpenAiResponses, "failed.sse"),
        ] {
            let input = fixture(provider, file);
            for client in Format::ALL {
                let (out, _) = run(client, provider, meta(true, Some(rates())), &input);
                assert!(
                    !out.contains("x-flux-cost-usd"),
                    "{provider:?} -> {client:?}"
                );
            }
        }
    }

    #[test]
    fn output_text_bytes_count_text_arguments_and_thinking_in_both_modes() {
        for (provider, file, bytes) in [
            (
                Format::OpenAiChat,
                "stream_text.sse",
                "Hello there! \"hi\"".len(),
            ),
            (
                Format::OpenAiChat,
                "stream_tools_parallel.sse",
                "{\"city\": \"Paris\"}{\"tz\": \"CET\"}".len(),
            ),
            (
                Format::OpenAiChat,
                "stream_reasoning.sse",
                "The user wants 2+2.4".len(),
            ),
            (Format::Anthropic, "cache_usage.sse", 2),
        ] {
            let input = fixture(provider, file);
            for client in Format::ALL {
                let (_, t) = run(client, provider, meta(true, None), &input);
                assert_eq!(t.output_text_bytes(), bytes as u64, "{file} -> {client:?}");
            }
        }
    }

    #[test]
    fn an_unterminated_last_event_is_ended_before_the_comment() {
        let input = fixture(Format::OpenAiChat, "stream_usage_cached.sse");
        let cut = input.trim_end();
        assert!(cut.ends_with("data: [DONE]"));
        let (out, _) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, Some(rates())),
            cut,
        );
        assert!(out.ends_with(
            &("data: [DONE]\n\n".to_owned() + &comment(CHAT_CACHED_COST, 2048, 300, 1920))
        ));
    }

    #[test]
    fn with_cost_sets_or_replaces_the_member_and_keeps_every_other_byte() {
        let chat = Format::OpenAiChat;
        assert_eq!(
            with_cost(
                chat,
                None,
                r#"{"choices":[], "usage" : { "a" : 1 } }"#,
                "0.5"
            )
            .unwrap(),
            r#"{"choices":[], "usage" : { "a" : 1 ,"cost":0.5} }"#
        );
        // An upstream that already prices (OpenRouter): the gateway's price replaces it.
        assert_eq!(
            with_cost(
                chat,
                None,
                r#"{"usage":{"cost":0.00012,"is_byok":false}}"#,
                "1.0"
            )
            .unwrap(),
            r#"{"usage":{"cost":1.0,"is_byok":false}}"#
        );
        assert_eq!(
            with_cost(chat, None, r#"{"usage":{}}"#, "0.1").unwrap(),
            r#"{"usage":{"cost":0.1}}"#
        );
        assert_eq!(with_cost(chat, None, r#"{"usage":null}"#, "0.1"), None);
        assert_eq!(with_cost(chat, None, r#"{"usage":[1]}"#, "0.1"), None);
        assert_eq!(with_cost(chat, None, "not json", "0.1"), None);
        // Anthropic: message_delta only (message_start's usage is not the final one).
        let a = Format::Anthropic;
        let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":1}}}"#;
        assert_eq!(with_cost(a, None, start, "0.1"), None);
        let delta = r#"{"usage":{"output_tokens":2}}"#;
        assert_eq!(with_cost(a, None, delta, "0.1"), None);
        assert_eq!(
            with_cost(a, Some("message_delta"), delta, "0.1").unwrap(),
            r#"{"usage":{"output_tokens":2,"cost":0.1}}"#
        );
        // Responses: the response's usage in completed / incomplete events.
        let r = Format::OpenAiResponses;
        let done = r#"{"type":"response.completed","response":{"usage":{"x":1},"y":{"usage":{}}}}"#;
        assert_eq!(
            with_cost(r, None, done, "0.2").unwrap(),
            r#"{"type":"response.completed","response":{"usage":{"x":1,"cost":0.2},"y":{"usage":{}}}}"#
        );
        let failed = r#"{"type":"response.failed","response":{"usage":{"x":1}}}"#;
        assert_eq!(with_cost(r, None, failed, "0.2"), None);
    }

    #[test]
    fn a_multi_line_usage_event_is_rewritten_on_data_lines() {
        let input = "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let (out, _) = run(
            Format::OpenAiChat,
            Format::OpenAiChat,
            meta(true, Some(rates())),
            input,
        );
        // 10 x 0.15 + 1 x 0.60 = 2.1 micro-dollars.
        assert_eq!(
            out,
            "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1,\"cost\":0.0000021}}\n\ndata: [DONE]\n\n"
                .to_owned()
                + &comment("0.0000021", 10, 1, 0)
        );
    }

    fn chat_request(body: &str) -> Request<'_> {
        parse_request(Format::OpenAiChat, body.as_bytes()).unwrap()
    }

    fn provider_body(body: &str) -> String {
        let req = chat_request(body);
        String::from_utf8(encode_request(Format::OpenAiChat, &req, "gpt-4o-mini")).unwrap()
    }

    #[test]
    fn a_passthrough_chat_stream_asks_for_usage_by_splicing() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        let cases = [
            // Absent: the member first, everything else as written.
            (
                format!(r#" {{"model": "flux-auto", "stream":true, {msgs}}}"#),
                format!(
                    r#" {{"stream_options":{{"include_usage":true}},"model": "gpt-4o-mini", "stream":true, {msgs}}}"#
                ),
            ),
            // Present, false: only the value changes.
            (
                format!(
                    r#"{{"stream":true,"stream_options": {{"include_usage" : false}},"model":"flux-auto",{msgs}}}"#
                ),
                format!(
                    r#"{{"stream":true,"stream_options": {{"include_usage" : true}},"model":"gpt-4o-mini",{msgs}}}"#
                ),
            ),
            // Present with other keys: kept.
            (
                format!(
                    r#"{{"model":"flux-auto","stream":true,"stream_options":{{"include_obfuscation":false}},{msgs}}}"#
                ),
                format!(
                    r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_usage":true,"include_obfuscation":false}},{msgs}}}"#
                ),
            ),
            (
                format!(
                    r#"{{"model":"flux-auto","stream":true,"stream_options":{{"include_obfuscation":false,"include_usage":null}},{msgs}}}"#
                ),
                format!(
                    r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_obfuscation":false,"include_usage":true}},{msgs}}}"#
                ),
            ),
            // Null or empty: replaced.
            (
                format!(r#"{{"model":"flux-auto","stream":true,"stream_options":null,{msgs}}}"#),
                format!(
                    r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
                ),
            ),
            (
                format!(r#"{{"model":"flux-auto","stream":true,"stream_options":{{ }},{msgs}}}"#),
                format!(
                    r#"{{"model":"gpt-4o-mini","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
                ),
            ),
        ];
        for (client, want) in cases {
            let got = provider_body(&client);
            assert_eq!(got, want);
            let v: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true);
        }
        // Asked already, or not streaming: only the model changes.
        for client in [
            format!(
                r#"{{"model":"flux-auto","stream":true,"stream_options":{{"include_usage":true}},{msgs}}}"#
            ),
            format!(r#"{{"model":"flux-auto","stream":false,{msgs}}}"#),
            format!(r#"{{"model":"flux-auto",{msgs}}}"#),
        ] {
            assert_eq!(
                provider_body(&client),
                client.replace("flux-auto", "gpt-4o-mini")
            );
        }
        // Other formats are not touched.
        let body = format!(r#"{{"model":"flux-auto","stream":true,"max_tokens":5,{msgs}}}"#);
        let req = parse_request(Format::Anthropic, body.as_bytes()).unwrap();
        assert_eq!(
            encode_request(Format::Anthropic, &req, "claude-x"),
            body.replace("flux-auto", "claude-x").into_bytes()
        );
    }
}
