//! The stream transcoder: provider SSE bytes in, client SSE bytes out, with the usage, stop
//! reason and errors it saw on the side.

use bytes::BytesMut;

use super::{cost, plan, Plan};
use crate::errors::{Context, Error, Fault};
use crate::units::Usage;
use crate::wire::codec::{StreamDecode, StreamEncode};
use crate::wire::format::Format;
use crate::wire::ir::{Billed, Delta, StopReason, StreamEvent, StreamMeta};
use crate::wire::sse::{Frame, SseParser};

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
    decoder: Box<dyn StreamDecode>,
    /// None on passthrough.
    encoder: Option<Box<dyn StreamEncode>>,
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
            Plan::Translate => Some(client.codec().stream_encoder(&meta)),
        };
        StreamTranscoder {
            parser: SseParser::default(),
            decoder: provider.codec().stream_decoder(),
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
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        self.parser.push(chunk);
        while let Some(frame) = self
            .parser
            .next_frame()
            .context(Fault::TooLarge, "a stream event")?
        {
            self.frame(frame, out)?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), Error> {
        if self.encoder.is_some() {
            decode(&mut *self.decoder, &frame, &mut self.events)
                .context(Fault::Malformed, "undecodable stream event")?;
            self.drain_events(out);
            return Ok(());
        }
        // Passthrough. Data that is not JSON is refused only where the gateway needs to read
        // it (usage, a stop, an error); anything else the client may judge.
        if let Err(e) = decode(&mut *self.decoder, &frame, &mut self.events) {
            if carries_state(&frame.0) {
                return Err(Error::new(Fault::Malformed, "undecodable stream event").because(e));
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
            && cost::is_usage_chunk(&event.data)
        {
            return;
        }
        let carries_cost = cost::final_usage(self.client, event.name, &event.data).is_some();
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
        cost::write_priced(self.client, &held.carrier, billed, out);
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
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), Error> {
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
            cost::write_comment(out, b);
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
                self.client
                    .codec()
                    .stream_encoder(&self.meta)
                    .fail(message, out)
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

/// One frame through a decoder: comments and keep-alives (no data) are skipped.
fn decode(
    decoder: &mut dyn StreamDecode,
    frame: &Frame,
    out: &mut Vec<StreamEvent>,
) -> Result<(), Error> {
    let event = frame.event();
    if event.data.is_empty() {
        return Ok(()); // a comment or keep-alive
    }
    decoder.decode(&event, out)
}
