//! The codec trait: one [`Codec`] per wire format, found by [`Format::codec`] (the table, in
//! `wire/mod.rs`, above the format folders; this file names none of them).
//!
//! A codec is everything the gateway needs to know about one format: its paths and auth
//! header, its error shape, request / response / stream to and from the [IR](super::ir), and
//! where a client of it reads the final usage (for the billed cost). Callers dispatch with one
//! lookup (`format.codec().parse_request(raw)`), never with a `match Format`; adding a format
//! is its folder (implementing [`Codec`]) plus a variant of [`Format`] (listed in
//! [`Format::ALL`]) and its line in [`Format::codec`].
//!
//! [`Format`]: super::Format
//! [`Format::ALL`]: super::Format::ALL
//! [`Format::codec`]: super::Format::codec
//!
//! The trait is object-safe and the table holds `&'static dyn Codec`: a request picks its
//! two codecs at run time from the client's path and the provider's config, so static
//! generics would only move the `match` into every caller. A stream's decoder and encoder are
//! boxed once per streamed request; the per-event virtual call is noise next to the JSON
//! parse each event costs anyway.

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::format::{AuthHeader, ErrorShape};
use super::ir::{Request, Response, StreamEvent, StreamMeta};
use super::sse::Event;
use crate::errors::Error;
use crate::errors::FluxError;
use crate::units::Usd;

/// One wire format, implemented once in its folder.
pub trait Codec: Sync {
    /// A short name for logs and metrics labels (the config's name for the format).
    fn label(&self) -> &'static str;
    /// The client path that speaks this format.
    fn client_path(&self) -> &'static str;
    /// Appended to a provider's base URL (which ends in its version, e.g. `/v1`).
    fn provider_path(&self) -> &'static str;
    fn auth_header(&self) -> AuthHeader;
    fn error_shape(&self) -> ErrorShape;

    /// Parse a client body of this format.
    fn parse_request<'r>(&self, raw: &'r [u8]) -> Result<Request<'r>, FluxError>;
    /// The body for a provider of this format, for its model id `model`.
    fn encode_request(&self, req: &Request<'_>, model: &str, stream: bool) -> Vec<u8>;
    /// A provider's non-streamed success body.
    fn decode_response<'b>(&self, body: &'b [u8]) -> Result<Response<'b>, Error>;
    /// The usage of a provider's non-streamed success body, refused as
    /// [`Codec::decode_response`] would refuse the body, with nothing else decoded: what a
    /// passthrough, which relays the body as it is, needs of it.
    fn decode_usage(&self, body: &[u8]) -> Result<crate::units::Usage, Error> {
        self.decode_response(body).map(|r| r.usage)
    }
    /// A non-streamed body for a client of this format.
    fn encode_response(&self, resp: &Response<'_>) -> Vec<u8>;
    /// Reads a provider's stream of this format, one SSE event at a time.
    fn stream_decoder(&self) -> Box<dyn StreamDecode>;
    /// Writes a stream for a client of this format.
    fn stream_encoder(&self, meta: &StreamMeta) -> Box<dyn StreamEncode>;

    /// The usage object in one event (`kind`: its `type`, else its SSE name; `event`: its
    /// members) that a client of this format reads as the stream's final usage: the place
    /// where the billed cost is written. None when the event has none.
    fn final_usage<'d>(&self, kind: Option<&str>, event: &UsageProbe<'d>) -> Option<&'d RawValue>;
}

/// A provider's stream, decoded into IR stream events.
pub trait StreamDecode: Send {
    /// One event with data (comments and keep-alives never reach a decoder).
    fn decode(&mut self, event: &Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), Error>;
    /// The provider ended its stream: whatever the decoder still holds.
    fn finish(&mut self, out: &mut Vec<StreamEvent>);
}

/// IR stream events, encoded in a client's SSE grammar.
pub trait StreamEncode: Send {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut);
    /// The closing events, with `cost` (what was billed) in the final usage object.
    fn finish(&mut self, cost: Option<Usd>, out: &mut BytesMut);
    /// One complete error event, ending the stream.
    fn fail(&mut self, message: &str, out: &mut BytesMut);
}

/// The members of an event the cost logic looks at, each raw (`null` reads as absent): what
/// a [`Codec::final_usage`](crate::wire::codec::Codec::final_usage) reads.
#[derive(Deserialize)]
pub struct UsageProbe<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub choices: Option<&'a RawValue>,
}
