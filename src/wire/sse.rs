//! One bounded server-sent-events codec over `Bytes`.
//!
//! Bytes are pushed in as they arrive from the provider; complete events come out as
//! [`Frame`]s that own their bytes (split off the buffer without copying), so a passthrough
//! relay can forward a frame verbatim and a transcoder can parse it. Only complete events are
//! ever released: when a stream breaks, the partial event stays behind and the client gets a
//! well-formed error event instead of half a line. A single event larger than the limit is an
//! error, so a provider cannot make the gateway buffer without bound.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// The largest single event accepted (a tool call's arguments can arrive in one event).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct SseParser {
    buf: BytesMut,
    /// How far `buf` was already searched for an event boundary.
    scanned: usize,
    max_event: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge(pub usize);

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an SSE event exceeded {} bytes", self.0)
    }
}

impl std::error::Error for EventTooLarge {}

/// One complete event as it was received, boundary included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(pub Bytes);

/// The fields of one event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, if any.
    pub name: Option<&'a str>,
    /// The `data:` lines joined with `\n`; empty when the frame had none (a comment).
    pub data: Cow<'a, str>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        SseParser {
            buf: BytesMut::new(),
            scanned: 0,
            max_event,
        }
    }

    /// Add received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, EventTooLarge> {
        match find_boundary(&self.buf, self.scanned) {
            Some(end) => {
                self.scanned = 0;
                Ok(Some(Frame(self.buf.split_to(end).freeze())))
            }
            None => {
                if self.buf.len() > self.max_event {
                    return Err(EventTooLarge(self.max_event));
                }
                // A boundary can straddle chunks: rescan the last 3 bytes next time.
                self.scanned = self.buf.len().saturating_sub(3);
                Ok(None)
            }
        }
    }

    /// Bytes received that do not form a complete event yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// At the end of the stream: a final event that lacked its blank line, if any. Providers
    /// sometimes close right after the last `data:` line.
    pub fn finish(&mut self) -> Option<Frame> {
        let rest = self.buf.split().freeze();
        self.scanned = 0;
        let blank = rest.iter().all(|b| b.is_ascii_whitespace());
        (!blank).then_some(Frame(rest))
    }
}

/// The end (exclusive) of the first event in `buf`: the position after a blank line, with
/// `\n`, `\r\n` or `\r` line endings.
fn find_boundary(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                // "\n\n" or "\n\r\n"
                match buf.get(i + 1) {
                    Some(b'\n') => return Some(i + 2),
                    Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                    Some(b'\r') if i + 2 < buf.len() => return Some(i + 2),
                    _ => {}
                }
            }
            b'\r' => match (buf.get(i + 1), buf.get(i + 2), buf.get(i + 3)) {
                (Some(b'\n'), Some(b'\r'), Some(b'\n')) => return Some(i + 4),
                (Some(b'\r'), _, _) => return Some(i + 2),
                (Some(b'\n'), Some(b'\n'), _) => return Some(i + 3),
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    None
}

impl Frame {
    /// Parse the fields. Invalid UTF-8 is replaced rather than refused: the data is JSON that
    /// the format decoder will judge.
    pub fn event(&self) -> Event<'_> {
        let text = match std::str::from_utf8(&self.0) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&self.0[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut event = Event::default();
        let mut lines = 0;
        for line in text.split(['\n', '\r']) {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (line, ""),
            };
            match field {
                "event" => event.name = Some(value),
                "data" => {
                    event.data = match (lines, std::mem::take(&mut event.data)) {
                        (0, _) => Cow::Borrowed(value),
                        (_, prev) => Cow::Owned(format!("{prev}\n{value}")),
                    };
                    lines += 1;
                }
                _ => {} // id, retry: nothing the gateway uses
            }
        }
        event
    }
}

/// Write one event: `event: NAME` (when given) and the data on one `data:` line. `data` must
/// not contain a newline (compact JSON never does).
pub fn write_event(out: &mut BytesMut, name: Option<&str>, data: &[u8]) {
    debug_assert!(!data.contains(&b'\n'));
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// Write an SSE comment line, which every SSE parser ignores.
pub fn write_comment(out: &mut BytesMut, text: &str) {
    out.extend_from_slice(b": ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parser: &mut SseParser) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(f) = parser.next_frame().unwrap() {
            out.push(f.0);
        }
        out
    }

    #[test]
    fn events_split_at_blank_lines_whatever_the_chunking() {
        let stream = b"event: a\ndata: {\"x\":1}\n\ndata: two\r\n\r\n: ping\n\ndata: three\r\rdata: four\n\n";
        for split in 1..stream.len() {
            let mut p = SseParser::default();
            p.push(&stream[..split]);
            let mut got = frames(&mut p);
            p.push(&stream[split..]);
            got.extend(frames(&mut p));
            let names: Vec<_> = got
                .iter()
                .map(|b| Frame(b.clone()).event().data.into_owned())
                .collect();
            assert_eq!(
                names,
                ["{\"x\":1}", "two", "", "three", "four"],
                "split {split}"
            );
            assert_eq!(got.concat(), stream.to_vec(), "split {split}");
        }
    }

    #[test]
    fn fields_are_parsed() {
        let f = Frame(Bytes::from_static(
            b"event: message_start\ndata: {\"a\":\ndata: 1}\nid: 7\n\n",
        ));
        let e = f.event();
        assert_eq!(e.name, Some("message_start"));
        assert_eq!(e.data, "{\"a\":\n1}");
        let f = Frame(Bytes::from_static(b"data:[DONE]\n\n"));
        assert_eq!(f.event().data, "[DONE]");
        assert_eq!(f.event().name, None);
    }

    #[test]
    fn partial_events_are_held_and_bounded() {
        let mut p = SseParser::new(16);
        p.push(b"data: 0123456789");
        assert_eq!(p.next_frame().unwrap(), None);
        assert_eq!(p.pending(), 16);
        p.push(b"x");
        assert_eq!(p.next_frame(), Err(EventTooLarge(16)));

        let mut p = SseParser::default();
        p.push(b"data: last\n");
        assert_eq!(p.next_frame().unwrap(), None);
        assert_eq!(p.finish().unwrap().event().data, "last");
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn writing_round_trips() {
        let mut out = BytesMut::new();
        write_event(&mut out, Some("ping"), b"{\"type\":\"ping\"}");
        write_comment(&mut out, "x-flux-cost-usd=0.1");
        let mut p = SseParser::default();
        p.push(&out);
        let f = p.next_frame().unwrap().unwrap();
        assert_eq!(f.event().name, Some("ping"));
        assert_eq!(f.event().data, "{\"type\":\"ping\"}");
        assert_eq!(p.next_frame().unwrap().unwrap().event().data, "");
    }
}
