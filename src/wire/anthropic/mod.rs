//! Anthropic Messages: request, response and stream, to and from the [IR](super::ir), over
//! the wire types in `schema.rs`; [`Messages`] is the format's codec.

mod request;
mod response;
mod schema;
mod stream;

pub use request::{encode_request, parse_request};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};

use serde_json::value::RawValue;

use super::codec::{Codec, StreamDecode, StreamEncode, UsageProbe};
use super::format::{AuthHeader, ErrorShape};
use super::sse::Event;
use crate::errors::Error;
use crate::units::Usd;

/// The Anthropic Messages codec (`format: anthropic`).
pub struct Messages;

impl Codec for Messages {
    fn label(&self) -> &'static str {
        "anthropic"
    }
    fn client_path(&self) -> &'static str {
        "/anthropic/v1/messages"
    }
    fn provider_path(&self) -> &'static str {
        "/messages"
    }
    fn auth_header(&self) -> AuthHeader {
        AuthHeader::XApiKey
    }
    fn error_shape(&self) -> ErrorShape {
        ErrorShape::Anthropic
    }
    fn parse_request<'r>(
        &self,
        raw: &'r [u8],
    ) -> Result<crate::wire::ir::Request<'r>, crate::errors::FluxError> {
        parse_request(raw)
    }
    fn encode_request(
        &self,
        req: &crate::wire::ir::Request<'_>,
        model: &str,
        stream: bool,
    ) -> Vec<u8> {
        encode_request(req, model, stream)
    }
    fn decode_response<'b>(&self, body: &'b [u8]) -> Result<crate::wire::ir::Response<'b>, Error> {
        decode_response(body)
    }
    fn decode_usage(&self, body: &[u8]) -> Result<crate::units::Usage, Error> {
        response::decode_usage(body)
    }
    fn encode_response(&self, resp: &crate::wire::ir::Response<'_>) -> Vec<u8> {
        encode_response(resp)
    }
    fn stream_decoder(&self) -> Box<dyn StreamDecode> {
        Box::new(StreamDecoder::new())
    }
    fn stream_encoder(&self, meta: &crate::wire::ir::StreamMeta) -> Box<dyn StreamEncode> {
        Box::new(StreamEncoder::new(meta))
    }
    /// `message_delta`'s `usage`.
    fn final_usage<'d>(&self, kind: Option<&str>, event: &UsageProbe<'d>) -> Option<&'d RawValue> {
        match kind {
            Some("message_delta") => event.usage,
            _ => None,
        }
    }
}

impl StreamDecode for StreamDecoder {
    fn decode(
        &mut self,
        event: &Event<'_>,
        out: &mut Vec<crate::wire::ir::StreamEvent>,
    ) -> Result<(), Error> {
        StreamDecoder::decode(self, event, out)
    }
    fn finish(&mut self, out: &mut Vec<crate::wire::ir::StreamEvent>) {
        StreamDecoder::finish(self, out)
    }
}

impl StreamEncode for StreamEncoder {
    fn encode(&mut self, event: &crate::wire::ir::StreamEvent, out: &mut bytes::BytesMut) {
        StreamEncoder::encode(self, event, out)
    }
    fn finish(&mut self, cost: Option<Usd>, out: &mut bytes::BytesMut) {
        StreamEncoder::finish(self, cost, out)
    }
    fn fail(&mut self, message: &str, out: &mut bytes::BytesMut) {
        StreamEncoder::fail(self, message, out)
    }
}
