//! Reading the client's request body: bounded, and gzip-decoded when sent that way.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use pingora::proxy::Session;

use crate::config::server::RequestLimits;
use crate::errors::{ErrorKind, FluxError};

use super::ctx::Stop;

/// The smallest buffer a body starts with, and the most a declared length can pre-reserve.
const FIRST_BUFFER: usize = 16 * 1024;
const MAX_FIRST_BUFFER: usize = 64 * 1024;

/// What one byte of body buffer costs the budget: the buffer, and the body the provider is
/// sent, which is a second copy (the passthrough splice or the translation) for as long as
/// the request is forwarded.
const COPIES: usize = 2;

/// Budget used by request-body buffers in this process: their capacity (what the allocator
/// really handed out) times [`COPIES`].
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The budget and deadline for bodies, set once at start from `limits`.
struct Policy {
    budget: usize,
    deadline: Duration,
    /// The longest wait for the next piece of a body. HTTP/1 applies it in Pingora's reads
    /// (`set_read_timeout`); Pingora's HTTP/2 reads ignore that, so it is applied here.
    read_timeout: Duration,
}

static POLICY: OnceLock<Policy> = OnceLock::new();

fn policy() -> &'static Policy {
    POLICY.get_or_init(|| Policy::from(&RequestLimits::default()))
}

impl From<&RequestLimits> for Policy {
    fn from(l: &RequestLimits) -> Self {
        Policy {
            budget: l.max_body_bytes_in_flight,
            deadline: Duration::from_millis(l.body_deadline_ms),
            read_timeout: Duration::from_millis(l.body_read_timeout_ms),
        }
    }
}

/// Set the in-flight budget and the body deadline (the first call wins: one gateway per
/// process, and the server configuration only changes by a binary upgrade).
pub fn configure(limits: &RequestLimits) {
    let _ = POLICY.set(Policy::from(limits));
}

/// Bytes currently held by request bodies.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// A share of the in-flight budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    bytes: usize,
}

impl Charge {
    fn new() -> Charge {
        Charge { bytes: 0 }
    }

    /// Hold `total` bytes in all (growing or shrinking the share); refused when growing
    /// would pass `budget`.
    fn resize(&mut self, total: usize, budget: usize) -> Result<(), FluxError> {
        if total <= self.bytes {
            IN_FLIGHT.fetch_sub(self.bytes - total, Ordering::Relaxed);
            self.bytes = total;
            return Ok(());
        }
        let more = total - self.bytes;
        let before = IN_FLIGHT.fetch_add(more, Ordering::Relaxed);
        if before.saturating_add(more) > budget {
            IN_FLIGHT.fetch_sub(more, Ordering::Relaxed);
            return Err(overloaded());
        }
        self.bytes = total;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A body buffer and its share of the budget: the share is given back when the last
/// `Bytes` pointing into the buffer is dropped, wherever the request's code keeps it.
struct Charged {
    buf: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

fn overloaded() -> FluxError {
    FluxError::new(
        ErrorKind::Overloaded,
        "The gateway is receiving as many request bodies as its memory budget allows; retry \
         in a moment.",
    )
    .retry_after(1)
}

fn too_large(limit: usize) -> FluxError {
    const MIB: usize = 1024 * 1024;
    let shown = if limit >= MIB {
        format!("{} MB", limit / MIB)
    } else {
        // The accounts APIs' small bodies.
        format!("{} KiB", limit / 1024)
    };
    FluxError::new(
        ErrorKind::PayloadTooLarge,
        format!("Request payload too large: the limit is {shown}. Compress or remove attachments."),
    )
}

/// Make room for `needed` bytes in `buf`, charging the growth first: capacity doubles (so a
/// body is copied O(log n) times) but never past `ceiling` (the declared length or the limit),
/// so a buffer holds at most twice the bytes that arrived, and exactly the body when its
/// length was declared.
fn grow(
    buf: &mut Vec<u8>,
    charge: &mut Charge,
    needed: usize,
    ceiling: usize,
    budget: usize,
) -> Result<(), FluxError> {
    if needed <= buf.capacity() {
        return Ok(());
    }
    let target = needed
        .max(buf.capacity().saturating_mul(2).min(ceiling))
        .max(FIRST_BUFFER.min(ceiling));
    charge.resize(target.saturating_mul(COPIES), budget)?;
    buf.reserve_exact(target - buf.len());
    // Vec may round up; count what it holds.
    charge.resize(buf.capacity().saturating_mul(COPIES), usize::MAX)
}

/// The body's next piece; over HTTP/2 with the per-read timeout HTTP/1 has from Pingora
/// (the same error, so the same 408).
async fn next_piece(
    session: &mut Session,
    h2: bool,
    read_timeout: Duration,
) -> pingora::Result<Option<Bytes>> {
    if !h2 {
        return session.read_request_body().await;
    }
    match tokio::time::timeout(read_timeout, session.read_request_body()).await {
        Ok(piece) => piece,
        Err(_) => Err(pingora::Error::explain(
            pingora::ErrorType::ReadTimedout,
            "the next piece of an HTTP/2 request body did not arrive in time",
        )),
    }
}

/// Read the whole body, refusing anything over `limit` bytes (before or after decoding).
/// On refusal the rest stays unread; Pingora drains it before reusing the connection.
///
/// The buffer is charged to the process's in-flight budget as it grows (503 `overloaded`
/// past it) and released when the returned `Bytes` (and every clone of it) is dropped. The
/// whole body must arrive within `limits.body_deadline_ms` (408).
pub async fn read(session: &mut Session, limit: usize) -> Result<Bytes, Stop> {
    let policy = policy();
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit).into());
    }
    let encoding = content_encoding(session)?;
    // A new body is not started while the budget is full.
    if in_flight() >= policy.budget {
        return Err(overloaded().into());
    }
    if session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        // curl waits for this before sending bodies over 1 MB.
        session.write_continue_response().await?;
    }
    let mut charge = Charge::new();
    let mut buf = Vec::new();
    // Memory follows the bytes that arrive, never the declared length: a client that
    // declares 32 MiB and sends nothing reserves 64 KiB at most.
    let ceiling = declared.unwrap_or(limit);
    let first = declared.unwrap_or(FIRST_BUFFER).clamp(1, MAX_FIRST_BUFFER);
    grow(&mut buf, &mut charge, first, ceiling, policy.budget)?;
    let h2 = session.is_http2();
    let receive = async {
        // Marked downstream, so a framing error answers 400 rather than 500.
        while let Some(chunk) = next_piece(session, h2, policy.read_timeout)
            .await
            .map_err(|e| e.into_down())?
        {
            let needed = buf.len() + chunk.len();
            if needed > limit {
                return Err(Stop::from(too_large(limit)));
            }
            grow(&mut buf, &mut charge, needed, limit, policy.budget)?;
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(policy.deadline, receive).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(FluxError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "The request body took longer than {} s to arrive; send it again.",
                    policy.deadline.as_secs()
                ),
            )
            .into())
        }
    }
    // A chunked body may leave up to half its buffer unused: give that back.
    if buf.capacity() > buf.len() + buf.len() / 8 + FIRST_BUFFER {
        buf.shrink_to_fit();
        charge.resize(buf.capacity().saturating_mul(COPIES), usize::MAX)?;
    }
    match encoding {
        Encoding::Identity => Ok(Bytes::from_owner(Charged {
            buf,
            _charge: charge,
        })),
        Encoding::Gzip => {
            let mut out_charge = Charge::new();
            let out = gunzip_charged(&buf, limit, &mut out_charge, policy.budget)?;
            drop((buf, charge));
            Ok(Bytes::from_owner(Charged {
                buf: out,
                _charge: out_charge,
            }))
        }
    }
}

enum Encoding {
    Identity,
    Gzip,
}

fn content_encoding(session: &Session) -> Result<Encoding, FluxError> {
    match session
        .req_header()
        .headers
        .get(http::header::CONTENT_ENCODING)
    {
        None => Ok(Encoding::Identity),
        Some(v) => {
            let v = v.to_str().unwrap_or("").trim();
            if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
                Ok(Encoding::Gzip)
            } else if v.is_empty() || v.eq_ignore_ascii_case("identity") {
                Ok(Encoding::Identity)
            } else {
                Err(FluxError::new(
                    ErrorKind::UnsupportedEncoding,
                    "Unsupported Content-Encoding: send the body uncompressed or gzip-encoded.",
                ))
            }
        }
    }
}

/// Decode gzip, stopping at `limit` decoded bytes so a small bomb cannot fill memory.
#[cfg(test)]
fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, FluxError> {
    let mut charge = Charge::new();
    let out = gunzip_charged(raw, limit, &mut charge, usize::MAX)?;
    Ok(Bytes::from(out))
}

/// Decode gzip into a buffer charged to the budget as it grows.
fn gunzip_charged(
    raw: &[u8],
    limit: usize,
    charge: &mut Charge,
    budget: usize,
) -> Result<Vec<u8>, FluxError> {
    let bad = |e: std::io::Error| {
        FluxError::new(
            ErrorKind::InvalidRequest,
            format!("The gzip-encoded body could not be decoded: {e}."),
        )
    };
    let mut decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    let ceiling = limit + 1;
    grow(
        &mut out,
        charge,
        raw.len().saturating_mul(4).clamp(1, ceiling),
        ceiling,
        budget,
    )?;
    loop {
        if out.len() > limit {
            return Err(too_large(limit));
        }
        let needed = out.len() + 1;
        grow(&mut out, charge, needed, ceiling, budget)?;
        let room = (out.capacity() - out.len()) as u64;
        let n = (&mut decoder)
            .take(room)
            .read_to_end(&mut out)
            .map_err(bad)?;
        if n == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_round_trips_and_is_bounded() {
        assert_eq!(&gunzip(&gzip(b"{\"a\":1}"), 100).unwrap()[..], b"{\"a\":1}");
        let bomb = gzip(&vec![b'a'; 10_000]);
        assert_eq!(gunzip(&bomb, 1_000).unwrap_err().status(), 413);
        assert_eq!(gunzip(b"not gzip", 1_000).unwrap_err().status(), 400);
        let exact = gzip(&vec![b'a'; 1_000]);
        assert_eq!(gunzip(&exact, 1_000).unwrap().len(), 1_000);
    }

    #[test]
    fn growth_is_charged_and_released() {
        let mut charge = Charge::new();
        let mut buf = Vec::new();
        let budget = 1 << 20;
        grow(&mut buf, &mut charge, 10, 100_000, budget).unwrap();
        assert_eq!(buf.capacity(), FIRST_BUFFER);
        grow(&mut buf, &mut charge, FIRST_BUFFER + 1, 100_000, budget).unwrap();
        assert_eq!(buf.capacity(), 2 * FIRST_BUFFER, "doubles");
        grow(&mut buf, &mut charge, 70_000, 100_000, budget).unwrap();
        assert_eq!(buf.capacity(), 70_000, "at least what is needed");
        grow(&mut buf, &mut charge, 70_001, 100_000, budget).unwrap();
        assert_eq!(buf.capacity(), 100_000, "never past the declared length");
        assert_eq!(charge.bytes, 100_000 * COPIES);
        // Past the budget: refused, and nothing more is held.
        let mut big = Vec::new();
        let mut other = Charge::new();
        let err = grow(&mut big, &mut other, 600_000, 4 << 20, budget).unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.retry_after, Some(1));
        assert_eq!(other.bytes, 0);
        assert!(in_flight() >= charge.bytes);
    }

    #[test]
    fn charged_bytes_release_when_the_last_clone_drops() {
        let mut charge = Charge::new();
        charge.resize(12_345, usize::MAX).unwrap();
        let bytes = Bytes::from_owner(Charged {
            buf: vec![1, 2, 3],
            _charge: charge,
        });
        let clone = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&clone[..], &[2, 3]);
        drop(clone);
    }
}
