//! Money as integers, from the catalogue to the ledger: never a float.
//!
//! The unit is the pico-dollar (1e-12 USD). A price per million tokens written in dollars,
//! such as `2.50`, is exactly 2_500_000 pico-dollars per token, so the cost of any number of
//! tokens is an exact integer product. A u64 holds $18.4 million.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of US dollars in pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub u64);

pub const PICOS_PER_USD: u64 = 1_000_000_000_000;
/// Decimal places a written amount may have (a pico-dollar is the 12th).
const MAX_DECIMALS: usize = 12;

impl Usd {
    pub const ZERO: Usd = Usd(0);

    pub fn picos(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }

    /// `self` per token times `tokens` (prices are per token in pico-dollars).
    pub fn times(self, tokens: u64) -> Usd {
        Usd(self.0.saturating_mul(tokens))
    }

    /// For humans and JSON: dollars with up to 12 decimals, trailing zeros dropped but at
    /// least one decimal kept (`0.0000123`, `1.0`).
    pub fn to_decimal(self) -> String {
        let mut out = String::with_capacity(24);
        // Writing to a String cannot fail.
        let _ = self.write_decimal(&mut out);
        out
    }

    /// [`Usd::to_decimal`] into `out`, with no allocation of its own (every request writes
    /// its cost twice: the `X-Flux-Cost-USD` header and the access line).
    pub fn write_decimal(self, out: &mut impl fmt::Write) -> fmt::Result {
        let whole = self.0 / PICOS_PER_USD;
        let mut frac = self.0 % PICOS_PER_USD;
        let mut digits = [b'0'; MAX_DECIMALS];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        let kept = digits.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
        write!(out, "{whole}.")?;
        // ASCII digits: always UTF-8.
        out.write_str(std::str::from_utf8(&digits[..kept]).unwrap_or("0"))
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_decimal(f)
    }
}

/// Why a written amount was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAmount(pub String);

impl fmt::Display for BadAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadAmount {}

impl FromStr for Usd {
    type Err = BadAmount;

    /// A plain decimal number of dollars: `1`, `0.075`, `2.50`. No sign, exponent or
    /// separator, at most 12 decimals: the value is read exactly, never through a float.
    fn from_str(s: &str) -> Result<Self, BadAmount> {
        let bad = || BadAmount(format!("'{s}' is not an amount of dollars like 1.25"));
        let s = s.trim().strip_prefix('$').unwrap_or(s.trim());
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if frac.len() > MAX_DECIMALS {
            return Err(BadAmount(format!(
                "'{s}' has more than {MAX_DECIMALS} decimals"
            )));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_picos: u64 = if frac.is_empty() {
            0
        } else {
            let padded = format!("{frac:0<12}");
            padded.parse().map_err(|_| bad())?
        };
        whole
            .checked_mul(PICOS_PER_USD)
            .and_then(|w| w.checked_add(frac_picos))
            .map(Usd)
            .ok_or_else(|| BadAmount(format!("'{s}' is too large")))
    }
}

/// Read from YAML as the scalar's text (`2.50` stays `2.50`, never becomes a float first).
impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Usd;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount of dollars such as 1.25")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Usd, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Usd, E> {
                v.checked_mul(PICOS_PER_USD)
                    .map(Usd)
                    .ok_or_else(|| E::custom("amount too large"))
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_decimal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_and_print_back() {
        for (text, picos, shown) in [
            ("1", PICOS_PER_USD, "1.0"),
            ("2.50", 2_500_000_000_000, "2.5"),
            ("0.075", 75_000_000_000, "0.075"),
            (".5", 500_000_000_000, "0.5"),
            ("0.000000000001", 1, "0.000000000001"),
            ("$4.00", 4 * PICOS_PER_USD, "4.0"),
            ("0", 0, "0.0"),
        ] {
            let usd: Usd = text.parse().unwrap();
            assert_eq!(usd.0, picos, "{text}");
            assert_eq!(usd.to_decimal(), shown, "{text}");
            assert_eq!(usd.to_string(), shown, "{text}");
        }
        assert_eq!(Usd(u64::MAX).to_decimal(), "18446744.073709551615");
        assert_eq!(Usd(10).to_decimal(), "0.00000000001");
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "1,5",
            "abc",
            "0.0000000000001",
            "99999999",
        ] {
            assert!(bad.parse::<Usd>().is_err(), "{bad}");
        }
    }

    #[test]
    fn yaml_numbers_are_read_as_text_not_floats() {
        // 0.1 + 0.2 style values that a float would round.
        let v: Vec<Usd> = serde_norway::from_str("[0.1, 0.3, 2.675, \"1.10\", 3]").unwrap();
        assert_eq!(
            v.iter().map(|u| u.0).collect::<Vec<_>>(),
            [
                100_000_000_000,
                300_000_000_000,
                2_675_000_000_000,
                1_100_000_000_000,
                3 * PICOS_PER_USD
            ]
        );
    }

    #[test]
    fn a_price_per_million_tokens_is_the_price_per_token_in_picos() {
        let per_mtok: Usd = "2.50".parse().unwrap();
        // $2.50 per 1M tokens: 1M tokens cost exactly $2.50.
        assert_eq!(Usd(per_mtok.0 / 1_000_000).times(1_000_000), per_mtok);
    }
}
