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
/// For flux-auto: the rule that chose the lane.
pub const ROUTE_RULE: &str = "x-flux-route-rule";
/// The request's cost in USD (set once metering lands).
pub const COST_USD: &str = "x-flux-cost-usd";
/// Tells the OpenAI and Anthropic SDKs (and Claude Code) whether a retry can help.
pub const SHOULD_RETRY: &str = "x-should-retry";

/// A new request id: a UUIDv7, so ids sort by time in logs.
pub fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}
