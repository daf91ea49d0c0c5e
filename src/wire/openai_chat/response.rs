//! Non-streamed responses: decode a provider's body into the IR, encode the IR for a client.

use crate::wire::ir::Response;

/// Decode a provider's successful (2xx) body. The error is a reason for the log.
pub fn decode_response(body: &[u8]) -> Result<Response<'_>, String> {
    let _ = body;
    unimplemented!("filled in by the format's implementation")
}

/// Encode a response for a client of this format.
pub fn encode_response(resp: &Response<'_>) -> Vec<u8> {
    let _ = resp;
    unimplemented!("filled in by the format's implementation")
}
