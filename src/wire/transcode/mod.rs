//! The (client format, provider format) table: passthrough when they match, translation
//! through the IR otherwise. Each job has its file: the dispatch here (one [`Codec`] lookup
//! per call, see [`super::codec`]), the passthrough splice (`passthrough.rs`), the push-style
//! stream transcoder that also reports the usage it saw (`stream.rs`), and writing the billed
//! cost into what the client receives (`cost.rs`).
//!
//! A streamed response's cost is not known when its headers leave. It is written at its end,
//! in both modes: as `cost` in the final usage object the client receives (OpenRouter's
//! convention: Chat's usage chunk, Anthropic's `message_delta.usage`, Responses'
//! `response.completed.response.usage`), and as one SSE comment after the last event
//! (`: x-flux-cost-usd=… input_tokens=…`), which every SSE parser ignores and a person can
//! read. Nothing here prices anything: the amount is what the settlement billed
//! ([`Billed`](super::ir::Billed)), given to [`StreamTranscoder::close`] once the provider's
//! stream has ended, so what a client is told is what was billed. Until then, a passthrough
//! stream holds back the event that carries the final usage object (and the few bytes after
//! it).
//!
//! [`Codec`]: super::codec::Codec

mod cost;
mod passthrough;
mod stream;

pub use cost::with_cost;
pub use passthrough::passthrough_body;
pub use stream::StreamTranscoder;

use super::format::Format;
use super::ir::{Request, Response};
use crate::errors::Error;
use crate::errors::FluxError;
use crate::units::Usage;

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
    format.codec().parse_request(raw)
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
        Plan::Translate => provider.codec().encode_request(req, model, req.stream),
    }
}

pub fn decode_response(format: Format, body: &[u8]) -> Result<Response<'_>, Error> {
    format.codec().decode_response(body)
}

pub fn encode_response(format: Format, resp: &Response<'_>) -> Vec<u8> {
    format.codec().encode_response(resp)
}

/// A provider's non-streamed success body, for a client of `client` format: passed through
/// when the formats match, translated otherwise. Returns the body and the usage it reports.
pub fn translate_response(
    client: Format,
    provider: Format,
    body: bytes::Bytes,
) -> Result<(bytes::Bytes, Usage), Error> {
    if plan(client, provider) == Plan::Passthrough {
        // Relayed as it is: only its usage is read.
        let usage = provider.codec().decode_usage(&body)?;
        return Ok((body, usage));
    }
    let resp = decode_response(provider, &body)?;
    let usage = resp.usage;
    Ok((encode_response(client, &resp).into(), usage))
}

#[cfg(test)]
mod tests;
