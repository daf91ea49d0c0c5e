//! OpenAI Responses: request, response and stream, to and from the [IR](super::ir), over
//! the wire types in `schema.rs`; [`Responses`] is the format's codec.

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

/// The OpenAI Responses codec (`format: openai_responses`).
pub struct Responses;

impl Codec for Responses {
    fn label(&self) -> &'static str {
        "openai_responses"
    }
    fn client_path(&self) -> &'static str {
        "/v1/responses"
    }
    fn provider_path(&self) -> &'static str {
        "/responses"
    }
    fn auth_header(&self) -> AuthHeader {
        AuthHeader::Bearer
    }
    fn error_shape(&self) -> ErrorShape {
        ErrorShape::OpenAi
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
    fn encode_response(&self, resp: &crate::wire::ir::Response<'_>) -> Vec<u8> {
        encode_response(resp)
    }
    fn stream_decoder(&self) -> Box<dyn StreamDecode> {
        Box::new(StreamDecoder::new())
    }
    fn stream_encoder(&self, meta: &crate::wire::ir::StreamMeta) -> Box<dyn StreamEncode> {
        Box::new(StreamEncoder::new(meta))
    }
    /// `response.completed` / `response.incomplete`'s `response.usage`.
    fn final_usage<'d>(&self, kind: Option<&str>, event: &UsageProbe<'d>) -> Option<&'d RawValue> {
        match kind {
            Some("response.completed" | "response.incomplete") => {
                serde_json::from_str::<UsageProbe>(event.response?.get())
                    .ok()?
                    .usage
            }
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
