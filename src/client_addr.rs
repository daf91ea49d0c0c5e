//! The client's address: the socket's peer, or, when that peer is a trusted proxy, the
//! address the proxies' forwarding header names.
//!
//! A proxy appends the address it received the request from to `X-Forwarded-For` (or adds a
//! `for=` element to `Forwarded`, RFC 7239). Everything left of the last trusted proxy's
//! entry was written by someone the gateway does not trust, so the header is read from the
//! right: skip every hop that is itself a trusted proxy, and the first one that is not is
//! the client. From a peer that is not trusted the headers are ignored: anyone can send
//! them.
//!
//! Only one header is believed, the one the operator's proxies write
//! ([`ForwardedHeader`]): a proxy that appends to `X-Forwarded-For` passes a client's own
//! `Forwarded` header through untouched, and reading that one would let the client choose
//! its address.
//!
//! Plain types only (no Pingora): the gateway hands in the peer and the header values.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Hops examined at most, from the right: past this many trusted proxies the leftmost one
/// examined counts as the client. Bounds the work a hostile header can cause.
pub const MAX_HOPS: usize = 16;
/// Longest hop worth parsing, in bytes: `for="[` + the longest IPv6 text + `]:65535"` fits.
const MAX_HOP_BYTES: usize = 64;

/// A block of addresses (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one address),
/// as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "'{s}' is not an address block (e.g. 10.0.0.0/8, 2001:db8::/32, \
                         127.0.0.1)"
                    ))
                }
            },
        };
        if net.trunc() != net {
            // 10.0.0.1/8 is almost always a typo for either 10.0.0.0/8 or 10.0.0.1/32.
            return Err(format!(
                "'{s}' has bits set past its prefix; write {} (the block) or {} (the address)",
                net.trunc(),
                IpNet::from(net.addr())
            ));
        }
        Ok(Cidr(net))
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.0.to_string()
    }
}

/// Which header the trusted proxies write the client's address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS, Google and most
    /// others).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
}

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub nets: Vec<Cidr>,
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    pub fn new(nets: Vec<Cidr>, header: ForwardedHeader) -> Self {
        TrustedProxies { nets, header }
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6 address as its IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(ip))
    }
}

/// The client's address for a request from `peer` carrying these `X-Forwarded-For` and
/// `Forwarded` header values (each header's lines in the order received).
///
/// Reads only the header `trusted` names, only when `peer` is trusted, and from the right:
/// each hop that is a trusted proxy leads to the next one left of it; the first hop that is
/// not trusted is the client. A hop that cannot be read (`unknown`, an obfuscated name,
/// garbage) stops the walk at the proxy that wrote it, and so do [`MAX_HOPS`] trusted hops.
pub fn client_addr<'a, X, F>(
    peer: IpAddr,
    x_forwarded_for: X,
    forwarded: F,
    trusted: &TrustedProxies,
) -> IpAddr
where
    X: IntoIterator<Item = &'a [u8]>,
    X::IntoIter: DoubleEndedIterator,
    F: IntoIterator<Item = &'a [u8]>,
    F::IntoIter: DoubleEndedIterator,
{
    let peer = peer.to_canonical();
    if !trusted.trusts(peer) {
        return peer;
    }
    match trusted.header {
        ForwardedHeader::XForwardedFor => walk(peer, x_forwarded_for, xff_hop, trusted),
        ForwardedHeader::Forwarded => walk(peer, forwarded, forwarded_hop, trusted),
    }
}

/// Walk the header's hops right to left from the trusted `peer`.
fn walk<'a, I>(
    peer: IpAddr,
    lines: I,
    hop: fn(&[u8]) -> Option<IpAddr>,
    trusted: &TrustedProxies,
) -> IpAddr
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    let mut current = peer;
    let hops = lines
        .into_iter()
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','));
    for (examined, text) in hops.enumerate() {
        if examined == MAX_HOPS || !trusted.trusts(current) {
            break;
        }
        match hop(text.trim_ascii()) {
            Some(ip) => current = ip.to_canonical(),
            None => break,
        }
    }
    current
}

/// One `X-Forwarded-For` entry: an address, some proxies add a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:5678`).
fn xff_hop(text: &[u8]) -> Option<IpAddr> {
    address(text)
}

/// One `Forwarded` element: `for=` among its `;`-separated pairs, a token or a quoted string
/// (`for=192.0.2.60`, `for="[2001:db8:cafe::17]:4711"`). An element without `for=`, or one
/// naming `unknown` or an obfuscated `_name`, cannot be read.
fn forwarded_hop(element: &[u8]) -> Option<IpAddr> {
    if element.len() > 4 * MAX_HOP_BYTES {
        return None;
    }
    let value = element.split(|&b| b == b';').find_map(|pair| {
        let (name, value) = split_once(pair.trim_ascii(), b'=')?;
        name.trim_ascii()
            .eq_ignore_ascii_case(b"for")
            .then(|| value.trim_ascii())
    })?;
    let value = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    address(value)
}

/// An address with or without a port: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`.
fn address(text: &[u8]) -> Option<IpAddr> {
    if text.is_empty() || text.len() > MAX_HOP_BYTES {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusting(nets: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect(), header)
    }

    fn xff(peer: &str, lines: &[&str], trusted: &TrustedProxies) -> IpAddr {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        client_addr(ip(peer), lines, Vec::<&[u8]>::new(), trusted)
    }

    fn fwd(peer: &str, lines: &[&str], trusted: &TrustedProxies) -> IpAddr {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        client_addr(ip(peer), Vec::<&[u8]>::new(), lines, trusted)
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        let none = TrustedProxies::default();
        assert_eq!(xff("203.0.113.9", &["1.1.1.1"], &none), ip("203.0.113.9"));
        let t = trusting(&["10.0.0.0/8"], XFF);
        assert_eq!(xff("203.0.113.9", &["1.1.1.1"], &t), ip("203.0.113.9"));
        let t = trusting(&["10.0.0.0/8"], FWD);
        assert_eq!(fwd("203.0.113.9", &["for=1.1.1.1"], &t), ip("203.0.113.9"));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let t = trusting(&["10.0.0.0/8", "192.168.1.1"], XFF);
        // Client, then two proxies of ours; the peer is a third.
        assert_eq!(
            xff("10.0.0.1", &["198.51.100.7, 192.168.1.1, 10.1.2.3"], &t),
            ip("198.51.100.7")
        );
        // Whatever the client wrote left of its own entry is not believed.
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6, 198.51.100.7, 10.1.2.3"], &t),
            ip("198.51.100.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6, 198.51.100.7", "10.9.9.9"], &t),
            ip("198.51.100.7")
        );
        // No header: the trusted peer itself.
        assert_eq!(xff("10.0.0.1", &[], &t), ip("10.0.0.1"));
        // Only trusted hops: the leftmost.
        assert_eq!(xff("10.0.0.1", &["10.0.0.2, 10.0.0.3"], &t), ip("10.0.0.2"));
    }

    #[test]
    fn x_forwarded_for_entries_with_ports_spaces_and_ipv6() {
        let t = trusting(&["10.0.0.0/8"], XFF);
        assert_eq!(
            xff("10.0.0.1", &["198.51.100.7:4711"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(xff("10.0.0.1", &["  2001:db8::7  "], &t), ip("2001:db8::7"));
        assert_eq!(
            xff("10.0.0.1", &["[2001:db8::7]:443"], &t),
            ip("2001:db8::7")
        );
        assert_eq!(xff("10.0.0.1", &["[2001:db8::7]"], &t), ip("2001:db8::7"));
        // An IPv4-mapped address is its IPv4 (a dual-stack socket's peer, too).
        assert_eq!(
            xff("::ffff:10.0.0.1", &["::ffff:198.51.100.7"], &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_proxy_that_wrote_it() {
        let t = trusting(&["10.0.0.0/8"], XFF);
        for bad in [
            "unknown",
            "",
            "not-an-ip",
            "1.2.3.4.5",
            "[::1",
            "1.2.3.4:99999",
        ] {
            assert_eq!(
                xff("10.0.0.1", &[&format!("198.51.100.7, {bad}, 10.0.0.5")], &t),
                ip("10.0.0.5"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn forwarded_for_elements_tokens_quoted_ipv6_and_ports() {
        let t = trusting(&["10.0.0.0/8"], FWD);
        assert_eq!(
            fwd(
                "10.0.0.1",
                &["for=192.0.2.60;proto=http;by=203.0.113.43"],
                &t
            ),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd("10.0.0.1", &[r#"for="[2001:db8:cafe::17]:4711""#], &t),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("10.0.0.1", &[r#"For="[2001:db8:cafe::17]""#], &t),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("10.0.0.1", &[r#"for="192.0.2.60:80""#], &t),
            ip("192.0.2.60")
        );
        // From the right, past trusted hops, over several lines.
        assert_eq!(
            fwd(
                "10.0.0.1",
                &[
                    "for=6.6.6.6, for=198.51.100.7;proto=https",
                    "for=10.2.2.2;by=10.0.0.1"
                ],
                &t
            ),
            ip("198.51.100.7")
        );
        // `unknown`, an obfuscated name, or no `for=`: the walk stops at the proxy.
        for bad in ["for=unknown", "for=_hidden", "proto=https", "for=\"\""] {
            assert_eq!(
                fwd("10.0.0.1", &[&format!("for=198.51.100.7, {bad}")], &t),
                ip("10.0.0.1"),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_the_configured_header_is_believed() {
        // The proxies append X-Forwarded-For; a client's own Forwarded goes through
        // untouched and must not choose the address.
        let t = trusting(&["10.0.0.0/8"], XFF);
        let x: Vec<&[u8]> = vec![b"198.51.100.7"];
        let f: Vec<&[u8]> = vec![b"for=6.6.6.6"];
        assert_eq!(
            client_addr(ip("10.0.0.1"), x.clone(), f.clone(), &t),
            ip("198.51.100.7")
        );
        let t = trusting(&["10.0.0.0/8"], FWD);
        assert_eq!(client_addr(ip("10.0.0.1"), x, f, &t), ip("6.6.6.6"));
    }

    #[test]
    fn hostile_headers_cost_bounded_work() {
        let t = trusting(&["10.0.0.0/8"], XFF);
        // A hundred thousand trusted hops: only MAX_HOPS are looked at.
        let many = vec!["10.0.0.9"; 100_000].join(",");
        assert_eq!(xff("10.0.0.1", &[&many], &t), ip("10.0.0.9"));
        let mut examined = "198.51.100.7,".to_string();
        examined.push_str(&vec!["10.0.0.9"; MAX_HOPS - 1].join(","));
        assert_eq!(xff("10.0.0.1", &[&examined], &t), ip("198.51.100.7"));
        let mut past = "198.51.100.7,".to_string();
        past.push_str(&vec!["10.0.0.9"; MAX_HOPS].join(","));
        assert_eq!(xff("10.0.0.1", &[&past], &t), ip("10.0.0.9"));
        // A megabyte in one hop is not parsed.
        let huge = "1".repeat(1 << 20);
        assert_eq!(xff("10.0.0.1", &[&huge], &t), ip("10.0.0.1"));
        let t = trusting(&["10.0.0.0/8"], FWD);
        let huge = format!("for=\"{}\"", "[".repeat(1 << 20));
        assert_eq!(fwd("10.0.0.1", &[&huge], &t), ip("10.0.0.1"));
    }

    #[test]
    fn blocks_parse_and_a_typo_is_refused() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        let c: Cidr = "127.0.0.1".parse().unwrap();
        assert!(c.contains(ip("127.0.0.1")) && !c.contains(ip("127.0.0.2")));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert_eq!(String::from(c), "2001:db8::/32");
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("10.0.0.0/8") && e.contains("10.0.0.1/32"), "{e}");
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }
}
