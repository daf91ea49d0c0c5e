//! One error type for every failure a client can see.
//!
//! A [`FluxError`] knows its HTTP status, its stable `code`, whether a retry can help, and its
//! `type` name in both wire shapes; [`crate::wire::Format::error_body`] renders it for the
//! client's format. Nothing here knows Pingora.
//!
//! Failures that are not answers to a client (configuration, stores, a provider's bytes, the
//! command line) are an [`Error`] with a cause chain, in [`internal`].

mod internal;

pub use internal::{Context, Error, Fault, Result};

use std::borrow::Cow;
use std::fmt;

/// Every failure the gateway answers with. The variant fixes status and code; the message
/// (carried by [`FluxError`]) says which case it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401: key missing, malformed, unknown, revoked, suspended, expired or another vendor's.
    InvalidApiKey,
    /// 400: malformed JSON, wrong shape, `stream` not a boolean.
    InvalidRequest,
    /// 400: no message content at all.
    EmptyPrompt,
    /// 400: a model id that is neither flux-auto, a lane alias nor a pinned id.
    ModelNotFound,
    /// 403: the operator restricted the key to other models.
    ModelNotAllowed,
    /// 402: the key's plan does not include the requested lane or model (yet).
    PlanModelNotIncluded,
    /// 402: a paid plan without overage used its monthly credit.
    CreditExhausted,
    /// 402: the Free plan's monthly allowance is used up.
    FreeAllowanceExhausted,
    /// 402: the account's monthly spend ceiling is reached.
    SpendCeilingReached,
    /// 402: the hourly safety limit is reached (with `retry_after`).
    HourlyLimitReached,
    /// 402: this key's own monthly spend limit is reached (the account's other keys go on).
    KeySpendLimitReached,
    /// 402: premium routing needs a payment method on file.
    PaymentMethodRequired,
    /// 402: the account is on hold for payment review.
    AccountOnHold,
    /// 403: an admin endpoint without the admin token.
    AdminForbidden,
    /// 403: `GET /metrics` without the metrics token.
    MetricsForbidden,
    /// 403: the management API (`/v1/keys`, `/v1/account`) with an inference key.
    ManagementKeyRequired,
    /// 404: no such key or account (or one of another account: nothing says which).
    NotFound,
    /// 409: the change clashes with what is stored (a name taken, a revoked key).
    Conflict,
    /// 403: a path the gateway does not serve (with a diagnosis of the likely mistake).
    EndpointNotServed,
    /// 405: a served path with the wrong method.
    MethodNotAllowed,
    /// 426: a WebSocket upgrade (Codex tries one on `/v1/responses` first): not served, so
    /// the client falls back to HTTP, which it does on a 426 only.
    WebSocketNotServed,
    /// 408: the client stopped sending its request.
    RequestTimeout,
    /// 413: body over the configured limit (32 MB by default).
    PayloadTooLarge,
    /// 413: the input (estimated tokens) is longer than any model the plan may use takes, or
    /// than the plan's `max_input_tokens`: trim the history or upgrade.
    InputTooLong,
    /// 429: the key's requests or tokens per minute are used up (with `retry_after`).
    RateLimited,
    /// 429: the conversation has more messages than the plan allows in one request: start a
    /// new conversation.
    ConversationLimit,
    /// 415: a request body encoding other than identity or gzip.
    UnsupportedEncoding,
    /// 502: no target in the chosen lane supports the request's shape.
    NoEligibleTarget,
    /// 502: every eligible target failed before a byte reached the client.
    UpstreamError,
    /// 502: the providers refused the gateway's own credentials (401/403): the operator's
    /// problem, never the client's key.
    UpstreamAuthError,
    /// 504: no provider answered within the deadlines.
    UpstreamTimeout,
    /// 429: every provider that could serve asked for room with a 429 and is left alone for
    /// as long as it asked (with `retry_after`: when the first comes back).
    UpstreamRateLimited,
    /// 503: the gateway or every provider that could serve is at its concurrency cap, or
    /// request bodies in flight fill the configured memory budget (with `retry_after`).
    Overloaded,
    /// 503: the operator switched maintenance on.
    Maintenance,
    /// 402: premium routing is at capacity for a few seconds (seed 002).
    PremiumUnavailable,
    /// 503: the gateway is busy or shutting down.
    ServiceUnavailable,
    /// 503: fleet mode, and the shared ledger (Redis) is unreachable: a request that needs a
    /// spend reservation (or, by policy, a rate check) cannot be admitted (with `retry_after`).
    LedgerUnavailable,
    /// 403 by default: the operator's policy hook refused the request; the hook may name
    /// another 4xx status and its own code ([`FluxError::policy`]).
    PolicyDenied,
    /// 503: the policy hook did not answer in time (or answered nonsense) and the operator
    /// chose `on_error: deny`.
    PolicyUnavailable,
    /// 500: a bug; the message never carries internals.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidApiKey => 401,
            ErrorKind::InvalidRequest | ErrorKind::EmptyPrompt | ErrorKind::ModelNotFound => 400,
            ErrorKind::ModelNotAllowed
            | ErrorKind::PolicyDenied
            | ErrorKind::EndpointNotServed
            | ErrorKind::AdminForbidden
            | ErrorKind::MetricsForbidden
            | ErrorKind::ManagementKeyRequired => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PlanModelNotIncluded
            | ErrorKind::CreditExhausted
            | ErrorKind::FreeAllowanceExhausted
            | ErrorKind::SpendCeilingReached
            | ErrorKind::HourlyLimitReached
            | ErrorKind::KeySpendLimitReached
            | ErrorKind::PaymentMethodRequired
            | ErrorKind::PremiumUnavailable
            | ErrorKind::AccountOnHold => 402,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::WebSocketNotServed => 426,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge | ErrorKind::InputTooLong => 413,
            ErrorKind::RateLimited
            | ErrorKind::ConversationLimit
            | ErrorKind::UpstreamRateLimited => 429,
            ErrorKind::UnsupportedEncoding => 415,
            ErrorKind::NoEligibleTarget
            | ErrorKind::UpstreamError
            | ErrorKind::UpstreamAuthError => 502,
            ErrorKind::ServiceUnavailable
            | ErrorKind::PolicyUnavailable
            | ErrorKind::Overloaded
            | ErrorKind::Maintenance
            | ErrorKind::LedgerUnavailable => 503,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Internal => 500,
        }
    }

    /// The stable machine-readable code (OpenAI `error.code`).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidApiKey => "invalid_api_key",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::EmptyPrompt => "empty_prompt",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::ModelNotAllowed => "model_not_allowed",
            ErrorKind::PlanModelNotIncluded => "plan_model_not_included",
            ErrorKind::CreditExhausted => "monthly_credit_exhausted",
            ErrorKind::FreeAllowanceExhausted => "free_allowance_exhausted",
            ErrorKind::SpendCeilingReached => "spend_ceiling_reached",
            ErrorKind::HourlyLimitReached => "hourly_limit_reached",
            ErrorKind::KeySpendLimitReached => "key_spend_limit_reached",
            ErrorKind::PaymentMethodRequired => "payment_method_required",
            ErrorKind::AccountOnHold => "account_on_hold",
            ErrorKind::EndpointNotServed => "endpoint_not_served",
            ErrorKind::AdminForbidden => "admin_forbidden",
            ErrorKind::MetricsForbidden => "metrics_forbidden",
            ErrorKind::ManagementKeyRequired => "management_key_required",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::WebSocketNotServed => "websocket_not_served",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::InputTooLong => "input_too_long",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ConversationLimit => "conversation_limit",
            ErrorKind::UnsupportedEncoding => "unsupported_content_encoding",
            ErrorKind::NoEligibleTarget => "no_eligible_target",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::UpstreamAuthError => "upstream_auth_error",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamRateLimited => "upstream_rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Maintenance => "maintenance",
            ErrorKind::PremiumUnavailable => "premium_unavailable",
            ErrorKind::ServiceUnavailable => "service_unavailable",
            ErrorKind::LedgerUnavailable => "ledger_unavailable",
            ErrorKind::PolicyDenied => "policy_denied",
            ErrorKind::PolicyUnavailable => "policy_unavailable",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// OpenAI `error.type`. The error reference (seed 002) shows 401 as
    /// `invalid_request_error`, as OpenAI itself does.
    pub fn openai_type(self) -> &'static str {
        openai_type(self.status())
    }

    /// Anthropic `error.type`, from Anthropic's documented set.
    pub fn anthropic_type(self) -> &'static str {
        anthropic_type(self.status())
    }

    /// Whether the same request can succeed if simply sent again. Sent to SDKs as
    /// `x-should-retry`: Claude Code otherwise retries a 401 for three minutes.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RequestTimeout
                | ErrorKind::HourlyLimitReached
                | ErrorKind::RateLimited
                | ErrorKind::UpstreamError
                | ErrorKind::UpstreamTimeout
                | ErrorKind::UpstreamRateLimited
                | ErrorKind::Overloaded
                | ErrorKind::Maintenance
                | ErrorKind::PremiumUnavailable
                | ErrorKind::ServiceUnavailable
                | ErrorKind::LedgerUnavailable
                | ErrorKind::PolicyUnavailable
                | ErrorKind::Internal
        )
    }
}

/// Distinct error codes a policy hook may introduce over a process's life.
pub const MAX_POLICY_CODES: usize = 256;

/// A policy's error code as a `&'static str` (codes are counted in metrics and the log by
/// reference): snake_case ASCII of at most 64 bytes, each distinct one kept once, at most
/// [`MAX_POLICY_CODES`] of them (then None: the caller uses `policy_denied`).
fn intern_code(code: &str) -> Option<&'static str> {
    use std::sync::Mutex;
    static CODES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    if code.is_empty()
        || code.len() > 64
        || !code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    // Only a refusal takes this lock, never a request that passes.
    let mut codes = CODES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = codes.iter().find(|c| **c == code) {
        return Some(c);
    }
    if codes.len() >= MAX_POLICY_CODES {
        return None;
    }
    let c: &'static str = Box::leak(code.to_string().into_boxed_str());
    codes.push(c);
    Some(c)
}

/// OpenAI `error.type` for a status.
pub fn openai_type(status: u16) -> &'static str {
    match status {
        400 | 401 | 404 | 405 | 408 | 409 | 413 | 415 | 422 | 426 => "invalid_request_error",
        402 => "billing_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

/// Anthropic `error.type` for a status, from Anthropic's documented set.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// A client-visible failure: a kind plus a message that names the specific case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// Seconds after which the same request can succeed (`retry_after` in the body and the
    /// `Retry-After` header).
    pub retry_after: Option<u64>,
    /// A policy hook's own status and code for its refusal (see [`FluxError::policy`]).
    pub custom: Option<(u16, &'static str)>,
}

impl FluxError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        FluxError {
            kind,
            message: message.into(),
            retry_after: None,
            custom: None,
        }
    }

    /// The policy hook's refusal: a 4xx status of its choosing (403 otherwise) and its own
    /// code (interned, so at most [`MAX_POLICY_CODES`] distinct codes are ever kept).
    pub fn policy(status: u16, code: Option<&str>, message: String) -> Self {
        let status = if (400..500).contains(&status) && status != 401 && status != 407 {
            status
        } else {
            403
        };
        let code = code.and_then(intern_code).unwrap_or("policy_denied");
        let mut e = FluxError::new(ErrorKind::PolicyDenied, message);
        e.custom = Some((status, code));
        e
    }

    /// 503 `ledger_unavailable`: fleet mode, and the shared ledger that keeps `what` (spend
    /// limits, rate limits) is unreachable.
    pub fn ledger_unavailable(retry_after: u64, what: &str) -> Self {
        FluxError::new(
            ErrorKind::LedgerUnavailable,
            format!(
                "The shared ledger that keeps {what} is unreachable for a moment; nothing was \
                 charged. Retry after {retry_after} s."
            ),
        )
        .retry_after(retry_after)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn status(&self) -> u16 {
        self.custom.map_or_else(|| self.kind.status(), |(s, _)| s)
    }

    pub fn code(&self) -> &'static str {
        self.custom.map_or_else(|| self.kind.code(), |(_, c)| c)
    }
}

impl fmt::Display for FluxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status(), self.code(), self.message)
    }
}

impl std::error::Error for FluxError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retryability_follow_the_reference() {
        let cases = [
            (ErrorKind::InvalidRequest, 400, false),
            (ErrorKind::EmptyPrompt, 400, false),
            (ErrorKind::ModelNotFound, 400, false),
            (ErrorKind::ModelNotAllowed, 403, false),
            (ErrorKind::EndpointNotServed, 403, false),
            (ErrorKind::ManagementKeyRequired, 403, false),
            (ErrorKind::NotFound, 404, false),
            (ErrorKind::Conflict, 409, false),
            (ErrorKind::WebSocketNotServed, 426, false),
            (ErrorKind::PayloadTooLarge, 413, false),
            (ErrorKind::InputTooLong, 413, false),
            (ErrorKind::RateLimited, 429, true),
            (ErrorKind::ConversationLimit, 429, false),
            (ErrorKind::NoEligibleTarget, 502, false),
            (ErrorKind::UpstreamError, 502, true),
            (ErrorKind::ServiceUnavailable, 503, true),
            (ErrorKind::LedgerUnavailable, 503, true),
            (ErrorKind::UpstreamAuthError, 502, false),
            (ErrorKind::UpstreamTimeout, 504, true),
            (ErrorKind::UpstreamRateLimited, 429, true),
            (ErrorKind::Overloaded, 503, true),
            (ErrorKind::Maintenance, 503, true),
            (ErrorKind::PremiumUnavailable, 402, true),
            (ErrorKind::PolicyDenied, 403, false),
            (ErrorKind::PolicyUnavailable, 503, true),
        ];
        for (kind, status, retry) in cases {
            assert_eq!(kind.status(), status, "{kind:?}");
            assert_eq!(kind.retryable(), retry, "{kind:?}");
        }
    }

    #[test]
    fn limit_kinds_use_the_rate_limit_and_too_large_types() {
        for kind in [
            ErrorKind::RateLimited,
            ErrorKind::ConversationLimit,
            ErrorKind::UpstreamRateLimited,
        ] {
            assert_eq!(kind.openai_type(), "rate_limit_error");
            assert_eq!(kind.anthropic_type(), "rate_limit_error");
        }
        assert_eq!(
            ErrorKind::InputTooLong.anthropic_type(),
            "request_too_large"
        );
        assert_eq!(
            ErrorKind::InputTooLong.openai_type(),
            "invalid_request_error"
        );
    }

    #[test]
    fn a_policy_refusal_carries_its_own_status_and_code_within_bounds() {
        let e = FluxError::policy(429, Some("team_quota"), "over the team's quota".into());
        assert_eq!((e.status(), e.code()), (429, "team_quota"));
        // Not a 4xx, or a status a client would take for its own key's problem: 403.
        for s in [200, 401, 500, 99] {
            assert_eq!(FluxError::policy(s, None, String::new()).status(), 403);
        }
        for bad in ["Has Spaces", "", &"x".repeat(65), "naïve"] {
            assert_eq!(
                FluxError::policy(403, Some(bad), String::new()).code(),
                "policy_denied"
            );
        }
        // The same code is one allocation, however often it is refused with.
        let a = FluxError::policy(403, Some("same_code"), String::new()).code();
        let b = FluxError::policy(403, Some("same_code"), String::new()).code();
        assert!(std::ptr::eq(a, b));
    }
}
