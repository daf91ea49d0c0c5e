//! Reading the client's request body: bounded, and gzip-decoded when sent that way.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::errors::{ErrorKind, FluxError};

use super::Stop;

fn too_large(limit: usize) -> FluxError {
    FluxError::new(
        ErrorKind::PayloadTooLarge,
        format!(
            "Request payload too large: the limit is {} MB. Compress or remove attachments.",
            limit / (1024 * 1024)
        ),
    )
}

/// Read the whole body, refusing anything over `limit` bytes (before or after decoding).
/// On refusal the rest stays unread; Pingora drains it before reusing the connection.
pub async fn read(session: &mut Session, limit: usize) -> Result<Bytes, Stop> {
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
    if session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        // curl waits for this before sending bodies over 1 MB.
        session.write_continue_response().await?;
    }
    // Memory follows the bytes that arrive, never the declared length: a client that
    // declares 32 MiB and sends nothing reserves 64 KiB at most.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(16 * 1024).min(64 * 1024));
    // Marked downstream, so a framing error answers 400 rather than 500.
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit).into());
        }
        buf.extend_from_slice(&chunk);
    }
    let raw = buf.freeze();
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => gunzip(&raw, limit).map_err(Stop::from),
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
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, FluxError> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            FluxError::new(
                ErrorKind::InvalidRequest,
                format!("The gzip-encoded body could not be decoded: {e}."),
            )
        })?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
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
    }
}
