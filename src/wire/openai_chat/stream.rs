//! Streams: decode a provider's SSE events into IR stream events, and encode IR stream
//! events as the SSE grammar a client of this format expects.

use bytes::BytesMut;

use crate::wire::ir::{StreamEvent, StreamMeta};
use crate::wire::sse::Event;

/// Push-style decoder of a provider stream, one per request.
#[derive(Debug, Default)]
pub struct StreamDecoder {}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder {}
    }

    /// Decode one SSE event into zero or more IR events. Unknown events are skipped; the
    /// error is for data that cannot be parsed at all.
    pub fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let _ = (event, out);
        unimplemented!("filled in by the format's implementation")
    }

    /// The provider's stream ended: emit whatever closes open blocks.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        let _ = out;
    }
}

/// Stateful encoder of a client stream, one per request.
#[derive(Debug)]
pub struct StreamEncoder {}

impl StreamEncoder {
    pub fn new(meta: &StreamMeta) -> Self {
        let _ = meta;
        StreamEncoder {}
    }

    /// Encode one IR event as zero or more SSE events of this format.
    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        let _ = (event, out);
        unimplemented!("filled in by the format's implementation")
    }

    /// The provider's stream ended normally: write the closing events.
    pub fn finish(&mut self, out: &mut BytesMut) {
        let _ = out;
        unimplemented!("filled in by the format's implementation")
    }

    /// The provider's stream broke: write one complete, parseable error event in this
    /// format's grammar. Nothing is written after it.
    pub fn fail(&mut self, message: &str, out: &mut BytesMut) {
        let _ = (message, out);
        unimplemented!("filled in by the format's implementation")
    }
}
