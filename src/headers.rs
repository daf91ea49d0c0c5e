//! Response header names and request ids.

/// Unique id of each request, on every response, errors included.
pub const REQUEST_ID: &str = "x-flux-request-id";
/// The same id under the names clients print: Codex shows `x-request-id` in its error line;
/// `request-id` is the Anthropic SDKs' convention.
pub const REQUEST_ID_MIRRORS: [&str; 2] = ["x-request-id", "request-id"];
/// The catalogue id of the model that answered.
pub const MODEL: &str = "x-flux-model";
/// The model id the client asked for.
pub const ORIGINAL_MODEL: &str = "x-flux-original-model";
/// `true` when Flux chose the model (flux-auto, a lane alias, or a fallback after a failure).
pub const ROUTED: &str = "x-flux-routed";
/// The lane that served (and prices) the request.
pub const LANE: &str = "x-flux-lane";
/// For flux-auto: the rule that chose the lane (`classifier; p=0.87` when the classifier did).
pub const ROUTE_RULE: &str = "x-flux-route-rule";
/// The request's cost in USD (set once metering lands).
pub const COST_USD: &str = "x-flux-cost-usd";
/// Tells the OpenAI and Anthropic SDKs (and Claude Code) whether a retry can help.
pub const SHOULD_RETRY: &str = "x-should-retry";

/// A new request id: 48 bits of Unix milliseconds then 80 random bits, in hex, so ids sort
/// by time in logs. Built from the thread-local RNG: no lock and no syscall per request
/// (uuid's v7 generator serializes on a global mutex).
pub fn new_request_id() -> String {
    use rand::Rng;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: u128 = rand::thread_rng().gen();
    format!(
        "req_{:012x}{:020x}",
        ms & 0xffff_ffff_ffff,
        random & ((1u128 << 80) - 1)
    )
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
}
