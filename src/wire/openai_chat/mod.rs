//! OpenAI Chat Completions: request, response and stream, to and from the [IR](super::ir), over
//! the wire types in `schema.rs`; [`ChatCompletions`] is the format's codec.

mod request;
mod response;
mod schema;
mod stream;

pub use request::{encode_request, parse_request};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};

use bytes::BytesMut;
use serde_json::value::RawValue;

use super::codec::{Codec, StreamDecode, StreamEncode, UsageProbe};
use super::format::{AuthHeader, ErrorShape};
use super::ir::{Request, Response, StreamEvent, StreamMeta};
use super::sse::Event;
use crate::errors::Error;
use crate::errors::FluxError;
use crate::units::Usd;

/// The Chat Completions codec (`format: openai`).
pub struct ChatCompletions;

impl Codec for ChatCompletions {
    fn label(&self) -> &'static str {
        "openai"
    }
    fn client_path(&self) -> &'static str {
        "/v1/chat/completions"
    }
    fn provider_path(&self) -> &'static str {
        "/chat/completions"
    }
    fn auth_header(&self) -> AuthHeader {
        AuthHeader::Bearer
    }
    fn error_shape(&self) -> ErrorShape {
        ErrorShape::OpenAi
    }
    fn parse_request<'r>(&self, raw: &'r [u8]) -> Result<Request<'r>, FluxError> {
        parse_request(raw)
    }
    fn encode_request(&self, req: &Request<'_>, model: &str, stream: bool) -> Vec<u8> {
        encode_request(req, model, stream)
    }
    fn decode_response<'b>(&self, body: &'b [u8]) -> Result<Response<'b>, Error> {
        decode_response(body)
    }
    fn decode_usage(&self, body: &[u8]) -> Result<crate::units::Usage, Error> {
        response::decode_usage(body)
    }
    fn encode_response(&self, resp: &Response<'_>) -> Vec<u8> {
        encode_response(resp)
    }
    fn stream_decoder(&self) -> Box<dyn StreamDecode> {
        Box::new(StreamDecoder::new())
    }
    fn stream_encoder(&self, meta: &StreamMeta) -> Box<dyn StreamEncode> {
        Box::new(StreamEncoder::new(meta))
    }
    /// Any chunk's `usage`.
    fn final_usage<'d>(&self, _: Option<&str>, event: &UsageProbe<'d>) -> Option<&'d RawValue> {
        event.usage
    }
}

impl StreamDecode for StreamDecoder {
    fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        StreamDecoder::decode(self, event, out)
    }
    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        StreamDecoder::finish(self, out)
    }
}

impl StreamEncode for StreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        StreamEncoder::encode(self, event, out)
    }
    fn finish(&mut self, cost: Option<Usd>, out: &mut BytesMut) {
        StreamEncoder::finish(self, cost, out)
    }
    fn fail(&mut self, message: &str, out: &mut BytesMut) {
        StreamEncoder::fail(self, message, out)
    }
}
