//! The response body type: either a whole buffer (sent with Content-Length) or
//! a channel of stream events (sent chunked, each event flushed as it arrives).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// An error that makes hyper drop the response without finishing it: over HTTP/1.1 the
/// connection is closed, over HTTP/2 the request's stream is reset (the connection stays).
///
/// Returned by the service it ends the exchange before any response byte (`refuse`,
/// non-streamed `cut`); sent down a stream channel it aborts the stream without its end
/// (no terminating chunk, or no END_STREAM: streamed `cut`).
#[derive(Debug, Clone, Copy)]
pub struct Disconnect(pub &'static str);

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "simulated disconnect: {}", self.0)
    }
}

impl std::error::Error for Disconnect {}

/// What a stream producer sends: an event to write, or an abort.
pub type StreamItem = Result<Bytes, Disconnect>;

pub enum SimBody {
    /// The whole body; `None` once it has been handed to hyper.
    Full(Option<Bytes>),
    /// Events produced by a task; the stream ends when the sender is dropped.
    Channel(mpsc::Receiver<StreamItem>),
}

impl SimBody {
    pub fn full(bytes: impl Into<Bytes>) -> SimBody {
        SimBody::Full(Some(bytes.into()))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Disconnect;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Disconnect>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            // Returning Pending while the channel is empty is what makes hyper
            // flush each event to the socket before the next one is produced.
            SimBody::Channel(events) => events
                .poll_recv(cx)
                .map(|event| event.map(|event| event.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            // An exact size lets hyper send Content-Length instead of chunking.
            SimBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Channel(_) => SizeHint::default(),
        }
    }
}
