//! `limits.per_address`: what one client address may do before it has authenticated
//! (README "Client addresses and abuse limits"). The address is the one
//! [`crate::client_addr`] finds: behind `trusted_proxies`, the client's, not the proxy's.

use serde::{Deserialize, Serialize};

/// Each limit is per client address (an IPv6 address counts as its /64); 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerAddressLimits {
    /// Keys and tokens that fail to authenticate, per minute; past it the address gets 429
    /// `rate_limited` with `Retry-After` for every key that does not authenticate (and, on
    /// the admin listener and the sign-in pages, for every token, the right one included)
    /// until the minute's window passes.
    pub failed_auth_per_minute: u32,
    /// Requests per second, counted as they arrive, before any key is looked at; past it
    /// 429 `rate_limited` with `Retry-After: 1`.
    pub requests_per_second: u32,
    /// Open connections; a connection past it is closed as soon as it is accepted. Trusted
    /// proxies are exempt (their connections carry many clients).
    pub connections: u32,
}

impl Default for PerAddressLimits {
    fn default() -> Self {
        PerAddressLimits {
            failed_auth_per_minute: 20,
            // Off: one address may be a whole office behind NAT, or a load generator; an
            // operator at the edge sets what their clients need (README).
            requests_per_second: 0,
            // Far above a browser's or an SDK's pool, and a benchmark's 1,000 connections,
            // yet a bound on what one address can hold open.
            connections: 4_096,
        }
    }
}

impl PerAddressLimits {
    /// The first field out of range, with the reason.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        // The counters are signed machine words; these bounds are far above any real use.
        const MAX: u32 = 100_000_000;
        for (field, value) in [
            ("failed_auth_per_minute", self.failed_auth_per_minute),
            ("requests_per_second", self.requests_per_second),
            ("connections", self.connections),
        ] {
            if value > MAX {
                return Some((field, format!("must be at most {MAX} (0 turns it off)")));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::client_addr::ForwardedHeader;
    use crate::config::ServerConfig;

    const MINIMAL: &str = r#"
keys_file: keys.yaml
lanes_file: lanes.yaml
providers:
  sim: { format: openai, base_url: "http://127.0.0.1:9/v1" }
plans:
  free: { lanes: [express] }
"#;

    fn load(extra: &str) -> Result<ServerConfig, String> {
        ServerConfig::from_yaml(Path::new("/f.yaml"), &format!("{MINIMAL}{extra}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_on_and_no_proxy_is_trusted() {
        let c = load("").unwrap();
        assert_eq!(c.limits.per_address, super::PerAddressLimits::default());
        assert_eq!(c.limits.per_address.failed_auth_per_minute, 20);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.forwarded_header, ForwardedHeader::XForwardedFor);
    }

    #[test]
    fn proxies_header_and_limits_are_read_and_checked() {
        let c = load(
            "trusted_proxies: [10.0.0.0/8, \"2001:db8::/32\", 127.0.0.1]\nforwarded_header: \
             forwarded\nlimits: { per_address: { failed_auth_per_minute: 5, connections: 0 } }\n",
        )
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(c.trusted_proxies[2].contains("127.0.0.1".parse().unwrap()));
        assert_eq!(c.forwarded_header, ForwardedHeader::Forwarded);
        let l = c.limits.per_address;
        assert_eq!(
            (
                l.failed_auth_per_minute,
                l.requests_per_second,
                l.connections
            ),
            (5, 0, 0)
        );

        let e = load("trusted_proxies: [10.0.0.1/8]\n").unwrap_err();
        assert!(
            e.contains("trusted_proxies") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        let e = load("trusted_proxies: [proxy.internal]\n").unwrap_err();
        assert!(e.contains("not an address block"), "{e}");
        let e = load("forwarded_header: x-real-ip\n").unwrap_err();
        assert!(e.contains("forwarded_header"), "{e}");
        let e = load("limits: { per_address: { requests_per_second: 4000000000 } }\n").unwrap_err();
        assert!(e.contains("limits.per_address.requests_per_second"), "{e}");
        let e = load("limits: { per_address: { failed_logins: 3 } }\n").unwrap_err();
        assert!(e.contains("failed_logins"), "{e}");
    }
}
