//! Metering: what a key has spent, and the holds that keep concurrent requests from
//! overshooting a limit. Amounts and prices are [`crate::units`].
//!
//! - [`budget`]: holds and limits against the ledger, and the settlement.
//! - [`ledger`]: durable spend per key per month and hour (trait + embedded store).
//! - [`report`]: the usage report, for the admin listener and `fluxrouter usage`.

pub mod budget;
pub mod ledger;
pub mod report;

use crate::units::Month;

/// The `GET /v1/usage` answer: the caller's plan, this month's and this hour's spend, the
/// ceiling that applies, what is left, and the limits. Amounts are exact decimal strings.
pub fn usage_view(
    account: &crate::auth::Account,
    standing: &budget::Standing,
    now: u64,
) -> serde_json::Value {
    let terms = &account.terms;
    // The monthly cap that applies: the lowest of a hard-stop credit and the ceiling.
    let cap = budget::monthly_cap(account);
    let committed = standing.month.saturating_add(standing.reserved);
    let month = Month::of(now);
    let hour_start = now - now % 3600;
    serde_json::json!({
        "object": "usage",
        "key": {
            "id": account.key_id,
            "name": account.key_name,
            "month_usd": standing.key_month,
            "monthly_limit_usd": account.key_limit,
            "remaining_usd": account
                .key_limit
                .map(|l| l.saturating_sub(standing.key_month)),
        },
        "plan": account.plan,
        "month": month.to_string(),
        "spend": {
            "month_usd": standing.month,
            "hour_usd": standing.hour,
            "reserved_usd": standing.reserved,
        },
        "limits": {
            "monthly_credit_usd": terms.monthly_credit_usd,
            "free": terms.free,
            "overage": terms.overage,
            "ceiling_usd": cap,
            "hourly_limit_usd": terms.hourly_limit_usd,
            "premium_needs_payment_method": terms.premium_needs_payment_method,
            "requests_per_minute": terms.requests_per_minute,
            "tokens_per_minute": terms.tokens_per_minute,
            "max_messages": terms.max_messages,
            "max_input_tokens": terms.max_input_tokens,
            "lanes": account.lanes,
        },
        "remaining_usd": cap.map(|c| c.saturating_sub(committed)),
        "remaining_this_hour_usd": terms
            .hourly_limit_usd
            .map(|h| h.saturating_sub(standing.hour.saturating_add(standing.reserved))),
        "credit_remaining_usd": terms.monthly_credit_usd.map(|c| c.saturating_sub(committed)),
        "hour_resets_at": hour_start + 3600,
        "month_resets_at": month.next().start_unix(),
        "account": {
            "id": account.account_id,
            "name": account.account_name,
            "payment_method": account.payment_method,
            "on_hold": account.on_hold,
        },
    })
}
