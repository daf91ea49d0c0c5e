//! The (client format, provider format) table: passthrough when they match, translation
//! through the IR otherwise; and the push-style stream transcoder (bytes in, bytes out) that
//! also reports the usage it saw, so metering hooks in at one place for every pair.

use bytes::BytesMut;

use super::ir::{Request, Response, StopReason, StreamEvent, StreamMeta, Usage};
use super::sse::{EventTooLarge, Frame, SseParser};
use super::{anthropic, openai_chat, openai_responses, Format};
use crate::errors::FluxError;

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
pub fn encode_request(provider: Format, req: &Request<'_>, model: &str) -> Vec<u8> {
    match plan(req.format, provider) {
        Plan::Passthrough => super::json::splice_model(req.raw, &req.model_span, model),
        Plan::Translate => match provider {
            Format::OpenAiChat => openai_chat::encode_request(req, model, req.stream),
            Format::OpenAiResponses => openai_responses::encode_request(req, model, req.stream),
            Format::Anthropic => anthropic::encode_request(req, model, req.stream),
        },
    }
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

    fn finish(&mut self, out: &mut BytesMut) {
        match self {
            Encoder::Chat(e) => e.finish(out),
            Encoder::Responses(e) => e.finish(out),
            Encoder::Anthropic(e) => e.finish(out),
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
/// can still end with a parseable error event) and decodes only the events that carry usage.
/// Translation decodes every event into the IR and encodes it for the client.
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
    done: bool,
}

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
        let passthrough = self.encoder.is_none();
        // On passthrough only events that can carry usage, a stop or an error are decoded.
        if !passthrough || carries_state(&frame.0) {
            self.decoder
                .decode(&frame, &mut self.events)
                .map_err(StreamFault::Undecodable)?;
        }
        if passthrough {
            out.extend_from_slice(&frame.0);
        }
        self.drain_events(out);
        Ok(())
    }

    fn drain_events(&mut self, out: &mut BytesMut) {
        for event in self.events.drain(..) {
            match &event {
                StreamEvent::Usage(u) => self.usage.merge(u),
                StreamEvent::Stop(r) => self.stop = Some(*r),
                StreamEvent::Error { message } => self.provider_error = Some(message.clone()),
                _ => {}
            }
            if let Some(encoder) = &mut self.encoder {
                encoder.encode(&event, out);
            }
        }
    }

    /// The provider ended its stream normally: flush a last unterminated event, close.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), StreamFault> {
        if self.done {
            return Ok(());
        }
        if let Some(frame) = self.parser.finish() {
            self.frame(frame, out)?;
        }
        self.decoder.finish(&mut self.events);
        self.drain_events(out);
        if let Some(encoder) = &mut self.encoder {
            encoder.finish(out);
        }
        self.done = true;
        Ok(())
    }

    /// The stream broke (provider gone, idle timeout, undecodable data): write one complete
    /// error event in the client's grammar. A partial event is never forwarded.
    pub fn fail(&mut self, message: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
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

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// An error the provider reported inside the stream, if any.
    pub fn provider_error(&self) -> Option<&str> {
        self.provider_error.as_deref()
    }
}

/// Whether a passthrough frame needs decoding: usage, stop reasons and errors are all the
/// gateway reads from a stream it does not translate.
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
