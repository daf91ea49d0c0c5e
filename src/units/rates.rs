//! Prices per token and what a [`Usage`] costs at them: the one pricing formula.

use super::money::Usd;
use super::usage::Usage;

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
