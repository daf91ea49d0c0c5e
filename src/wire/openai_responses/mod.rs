//! OpenAI Responses: request, response and stream, to and from the [IR](super::ir).

mod request;
mod response;
mod stream;

pub use request::{encode_request, parse_request};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};
