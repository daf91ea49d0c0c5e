//! Metering and money: what a request costs, what a key has spent, and the holds that keep
//! concurrent requests from overshooting a limit.
//!
//! - [`money`]: integer dollars (pico-dollars), parsed exactly from the catalogue.
//! - [`Rates`] and [`cost`]: the price of a [`Usage`] at a lane's rates.
//! - [`ledger`]: durable spend per key per month and hour (trait + embedded store).

pub mod budget;
pub mod ledger;
pub mod money;

pub use money::Usd;

use crate::wire::ir::Usage;

/// A lane's prices per token, in pico-dollars (its per-million price in dollars, exactly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: Usd,
    /// Input tokens read from the provider's cache.
    pub cached_input: Usd,
    pub output: Usd,
}

impl Rates {
    /// From prices per million tokens. Each must be a whole number of pico-dollars per token
    /// (at most 6 decimals of a dollar per million), which the catalogue validates.
    pub fn per_million(input: Usd, cached_input: Usd, output: Usd) -> Rates {
        Rates {
            input: Usd(input.0 / 1_000_000),
            cached_input: Usd(cached_input.0 / 1_000_000),
            output: Usd(output.0 / 1_000_000),
        }
    }
}

/// The most a request can cost: every input token at the input rate, and `max_output`
/// tokens at the output rate.
pub fn worst_case(input_tokens: u64, max_output: u64, rates: &Rates) -> Usd {
    rates
        .input
        .times(input_tokens)
        .saturating_add(rates.output.times(max_output))
}

/// What `usage` costs at `rates`: uncached input at the input rate, cached input at the
/// cached rate (cache writes are billed as input), output (reasoning included) at the output
/// rate.
pub fn cost(usage: &Usage, rates: &Rates) -> Usd {
    let cached = usage.cached_input.min(usage.input);
    rates
        .input
        .times(usage.input - cached)
        .saturating_add(rates.cached_input.times(cached))
        .saturating_add(rates.output.times(usage.output))
}

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
    let month = ledger::Month::of(now);
    let hour_start = now - now % 3600;
    serde_json::json!({
        "object": "usage",
        "key": {"id": account.key_id, "name": account.key_name},
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
        "account": {"payment_method": account.payment_method, "on_hold": account.on_hold},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    #[test]
    fn cost_is_exact_and_prices_cached_tokens_apart() {
        let rates = Rates::per_million(usd("2.00"), usd("0.50"), usd("8.00"));
        let usage = Usage {
            input: 1_000,
            cached_input: 400,
            output: 250,
            ..Usage::default()
        };
        // 600 x $2/M + 400 x $0.50/M + 250 x $8/M = $0.0012 + $0.0002 + $0.002
        assert_eq!(cost(&usage, &rates), usd("0.0034"));
        assert_eq!(cost(&usage, &rates).to_decimal(), "0.0034");
        assert_eq!(cost(&Usage::default(), &rates), Usd::ZERO);
    }
}
