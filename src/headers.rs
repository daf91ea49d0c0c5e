//! Response header names and request ids.
//!
//! The names are `HeaderName`s built at compile time: inserting one costs no parsing and no
//! allocation, where a `&str` name is parsed and copied on every response.

use http::HeaderName;

/// Unique id of each request, on every response, errors included.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-flux-request-id");
/// The same id under the names clients print: Codex shows `x-request-id` in its error line;
/// `request-id` is the Anthropic SDKs' convention.
pub const REQUEST_ID_MIRRORS: [HeaderName; 2] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("request-id"),
];
/// The catalogue id of the model that answered.
pub const MODEL: HeaderName = HeaderName::from_static("x-flux-model");
/// The model id the client asked for.
pub const ORIGINAL_MODEL: HeaderName = HeaderName::from_static("x-flux-original-model");
/// `true` when Flux chose the model (flux-auto, a lane alias, or a fallback after a failure).
pub const ROUTED: HeaderName = HeaderName::from_static("x-flux-routed");
/// The lane that served (and prices) the request.
pub const LANE: HeaderName = HeaderName::from_static("x-flux-lane");
/// For flux-auto: the rule that chose the lane (`classifier; p=0.87` when the classifier did);
/// for a lane that spreads its traffic, what chose the target (`…; target=latency`,
/// `target=affinity:key`).
pub const ROUTE_RULE: HeaderName = HeaderName::from_static("x-flux-route-rule");
/// Request header: the client's name for its conversation, for prompt-cache affinity.
pub const SESSION: HeaderName = HeaderName::from_static("x-flux-session");
/// Request headers: provider preferences, as the body's `provider` object has them
/// (`order`, `only`, `ignore`: comma-separated providers or model ids).
pub const PROVIDER_ORDER: HeaderName = HeaderName::from_static("x-flux-provider-order");
pub const PROVIDER_ONLY: HeaderName = HeaderName::from_static("x-flux-provider-only");
pub const PROVIDER_IGNORE: HeaderName = HeaderName::from_static("x-flux-provider-ignore");
pub const PROVIDER_SORT: HeaderName = HeaderName::from_static("x-flux-provider-sort");
pub const PROVIDER_ALLOW_FALLBACKS: HeaderName =
    HeaderName::from_static("x-flux-provider-allow-fallbacks");
/// The request's cost in USD (set once metering lands).
pub const COST_USD: HeaderName = HeaderName::from_static("x-flux-cost-usd");
/// Tells the OpenAI and Anthropic SDKs (and Claude Code) whether a retry can help.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Length of a request id: `req_`, then 12 hex digits of time and 20 of randomness.
const ID_LEN: usize = 4 + 12 + 20;

/// A request id, kept inline (no heap): it is made for every request, so it is a fixed
/// array rather than a `String`. Reads as a `&str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; ID_LEN]);

impl RequestId {
    /// A new id: 48 bits of Unix milliseconds then 80 random bits, in hex, so ids sort by
    /// time in logs. Built from the thread-local RNG: no lock and no syscall per request
    /// (uuid's v7 generator serializes on a global mutex).
    pub fn new() -> Self {
        use rand::Rng;
        let ms = crate::units::clock::unix_millis();
        let random: u128 = rand::thread_rng().gen();
        let mut id = [0u8; ID_LEN];
        id[..4].copy_from_slice(b"req_");
        hex_into(&mut id[4..16], u128::from(ms & 0xffff_ffff_ffff));
        hex_into(&mut id[16..], random & ((1u128 << 80) - 1));
        RequestId(id)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).expect("a request id is ASCII")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// `value` as lowercase hex filling `out` (the low `out.len()` digits, zero-padded).
fn hex_into(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A new request id as a `String` (see [`RequestId::new`]).
pub fn new_request_id() -> String {
    RequestId::new().as_str().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique_fixed_width_and_time_ordered() {
        let a = super::new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_request_id();
        assert_eq!(a.len(), 4 + 32);
        assert!(a.starts_with("req_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a[..16] < b[..16], "{a} then {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn inline_ids_match_the_former_format() {
        let id = super::RequestId::new();
        let ms = u64::from_str_radix(&id[4..16], 16).unwrap();
        let now = crate::units::clock::unix_millis();
        assert!(now.wrapping_sub(ms) < 10_000, "{id}");
        let mut buf = [0u8; 8];
        super::hex_into(&mut buf, 0xab_cdef);
        assert_eq!(&buf, b"00abcdef");
        assert_eq!(format!("{id}"), id.as_str());
        assert_eq!(format!("req_{:012x}{:020x}", 0x1234u64, 0xfu128), {
            let mut id = [0u8; super::ID_LEN];
            id[..4].copy_from_slice(b"req_");
            super::hex_into(&mut id[4..16], 0x1234);
            super::hex_into(&mut id[16..], 0xf);
            String::from_utf8(id.to_vec()).unwrap()
        });
    }
}
