//! Requests: parse the client's body into the IR (validating it), and encode an IR request
//! as this format's body when translating for a provider of this format.

use crate::errors::FluxError;
use crate::wire::ir::Request;

/// Parse and validate a client request of this format. Malformed input is a 400
/// (`invalid_request`; `empty_prompt` when there is no content at all).
pub fn parse_request(raw: &[u8]) -> Result<Request<'_>, FluxError> {
    let _ = raw;
    unimplemented!("filled in by the format's implementation")
}

/// Write the request as this format's body for a provider, with `model` as the provider's
/// id and `stream` as asked. Only used when the client spoke another format.
pub fn encode_request(req: &Request<'_>, model: &str, stream: bool) -> Vec<u8> {
    let _ = (req, model, stream);
    unimplemented!("filled in by the format's implementation")
}
