//! The PROXY protocol (HAProxy's, v1 text and v2 binary): the header a load balancer sends
//! first on each connection, naming the client it accepted. Parsed with strict bounds and
//! read without taking a byte past the header (what follows is TLS or HTTP).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 header's first twelve bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// The longest v2 address block accepted (addresses and TLVs): load balancers send a few
/// dozen bytes; the format allows 64 KiB, which no client should make us buffer.
const V2_MAX_BLOCK: usize = 1024;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes.
    pub len: usize,
    /// The client's address; `None` for v1 `UNKNOWN`, v2 `LOCAL` (a balancer's health check)
    /// and address families other than TCP over IPv4/IPv6: the socket's peer stands.
    pub source: Option<SocketAddr>,
}

/// How far `buf` (the connection's first bytes) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Read exactly this many more bytes (never past the header).
    Need(usize),
    Done(Header),
    /// Not a PROXY header, or one out of bounds.
    Invalid(&'static str),
}

/// Where `buf` stands; call with the bytes read so far (start with none).
pub fn progress(buf: &[u8]) -> Progress {
    // Eight bytes tell the versions apart ("PROXY " against v2's signature).
    if buf.len() < 8 {
        return Progress::Need(8 - buf.len());
    }
    if buf.starts_with(b"PROXY ") {
        return progress_v1(buf);
    }
    if buf[..8] == V2_SIGNATURE[..8] {
        return progress_v2(buf);
    }
    Progress::Invalid("the connection does not start with a PROXY protocol header")
}

fn progress_v1(buf: &[u8]) -> Progress {
    if !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Progress::Invalid("PROXY v1 line longer than 107 bytes");
        }
        // The line's end is unknown: one byte at a time (the stream is buffered).
        return Progress::Need(1);
    }
    let Ok(line) = std::str::from_utf8(&buf[..buf.len() - 2]) else {
        return Progress::Invalid("PROXY v1 line is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (Ok(src), Ok(_dst)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
                return Progress::Invalid("PROXY v1 address does not parse");
            };
            if (*family == "TCP4") != src.is_ipv4() {
                return Progress::Invalid("PROXY v1 address is not of its family");
            }
            let (Some(sport), Some(_)) = (port(sport), port(dport)) else {
                return Progress::Invalid("PROXY v1 port does not parse");
            };
            Some(SocketAddr::new(src, sport))
        }
        _ => return Progress::Invalid("PROXY v1 line is malformed"),
    };
    Progress::Done(Header {
        len: buf.len(),
        source,
    })
}

/// A port as v1 writes it: decimal, no sign, no leading zero.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn progress_v2(buf: &[u8]) -> Progress {
    if buf.len() < 16 {
        return Progress::Need(16 - buf.len());
    }
    if buf[..12] != V2_SIGNATURE {
        return Progress::Invalid("PROXY v2 signature is wrong");
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Progress::Invalid("PROXY v2 version is not 2");
    }
    let block = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if block > V2_MAX_BLOCK {
        return Progress::Invalid("PROXY v2 address block is over 1 KiB");
    }
    let len = 16 + block;
    if buf.len() < len {
        return Progress::Need(len - buf.len());
    }
    let addresses = &buf[16..len];
    let source = match (version_command & 0x0f, buf[13]) {
        // LOCAL: the balancer speaking for itself.
        (0, _) => None,
        // PROXY over TCP/IPv4 and TCP/IPv6.
        (1, 0x11) => {
            if addresses.len() < 12 {
                return Progress::Invalid("PROXY v2 IPv4 block is short");
            }
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(ip.into(), port))
        }
        (1, 0x21) => {
            if addresses.len() < 36 {
                return Progress::Invalid("PROXY v2 IPv6 block is short");
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        // UDP, unix sockets, unspecified: nothing to put in a TCP peer's place.
        (1, _) => None,
        _ => return Progress::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    Progress::Done(Header { len, source })
}

/// Read a connection's PROXY header, and not a byte more. An error for anything that is not
/// a valid header (the caller closes the connection).
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Header> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match progress(&buf) {
            Progress::Done(header) => return Ok(header),
            Progress::Invalid(why) => return Err(io::Error::new(io::ErrorKind::InvalidData, why)),
            Progress::Need(n) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                stream.read_exact(&mut buf[start..]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Progress {
        // Feed as read_header does, checking it never asks past the header.
        let mut got = 0;
        loop {
            match progress(&bytes[..got]) {
                Progress::Need(n) => {
                    if got + n > bytes.len() {
                        return Progress::Need(got + n - bytes.len());
                    }
                    got += n;
                }
                other => return other,
            }
        }
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v1_names_the_client_and_stops_at_its_line() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
        let mut stream = line.to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let Progress::Done(h) = whole(&stream) else {
            panic!("{:?}", whole(&stream))
        };
        assert_eq!(h.len, line.len());
        assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
        let h = whole(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n");
        assert!(
            matches!(h, Progress::Done(Header { source: Some(a), .. }) if a == "[2001:db8::1]:1".parse().unwrap())
        );
        assert!(matches!(
            whole(b"PROXY UNKNOWN\r\n"),
            Progress::Done(Header {
                len: 15,
                source: None
            })
        ));
    }

    #[test]
    fn v1_out_of_bounds_or_malformed_is_invalid() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(whole(bad), Progress::Invalid(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(
            whole(&long),
            Progress::Invalid("PROXY v1 line longer than 107 bytes")
        );
    }

    #[test]
    fn v2_names_the_client_over_ipv4_and_ipv6() {
        let mut block = vec![198, 51, 100, 9, 10, 0, 0, 1];
        block.extend_from_slice(&4242u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV, skipped
        let header = v2(1, 0x11, &block);
        let mut stream = header.clone();
        stream.extend_from_slice(&[0x16, 3, 1]);
        assert_eq!(
            whole(&stream),
            Progress::Done(Header {
                len: header.len(),
                source: Some("198.51.100.9:4242".parse().unwrap())
            })
        );
        let mut block = Ipv6Addr::LOCALHOST.octets().to_vec();
        block.extend_from_slice(&[0; 16]);
        block.extend_from_slice(&[0, 80, 1, 187]);
        assert!(matches!(
            whole(&v2(1, 0x21, &block)),
            Progress::Done(Header { source: Some(a), .. }) if a == "[::1]:80".parse().unwrap()
        ));
        // LOCAL (health checks) and other families keep the socket's peer.
        assert!(matches!(
            whole(&v2(0, 0, &[])),
            Progress::Done(Header { source: None, .. })
        ));
        assert!(matches!(
            whole(&v2(1, 0x31, &[0; 216])),
            Progress::Done(Header { source: None, .. })
        ));
    }

    #[test]
    fn v2_out_of_bounds_is_invalid() {
        assert!(matches!(whole(&v2(1, 0x11, &[1; 4])), Progress::Invalid(_)));
        assert!(matches!(
            whole(&v2(2, 0x11, &[1; 12])),
            Progress::Invalid(_)
        ));
        assert!(matches!(
            whole(&v2(1, 0x11, &[0; 2000])),
            Progress::Invalid("PROXY v2 address block is over 1 KiB")
        ));
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(matches!(whole(&wrong_version), Progress::Invalid(_)));
    }

    #[tokio::test]
    async fn read_header_leaves_what_follows() {
        let mut input: &[u8] = b"PROXY TCP4 1.2.3.4 5.6.7.8 10 20\r\nGET";
        let h = read_header(&mut input).await.unwrap();
        assert_eq!(h.source, Some("1.2.3.4:10".parse().unwrap()));
        assert_eq!(input, b"GET");
        let mut short: &[u8] = b"PROXY TCP4";
        assert!(read_header(&mut short).await.is_err());
    }
}
