//! UTC calendar buckets, computed without a date library: the month and the hour an instant
//! falls in (spend is limited and reported per month and per hour), and days for reports.

use std::fmt;
use std::str::FromStr;

/// A calendar month (UTC), as months since year 0: January 2026 is `2026 * 12 + 0`.
/// Written and parsed as `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(u32);

impl Month {
    /// From a year and a month number (1..=12).
    pub fn new(year: u32, month: u32) -> Option<Month> {
        (1..=12)
            .contains(&month)
            .then(|| Month(year * 12 + month - 1))
    }

    /// The month containing a unix instant (UTC).
    pub fn of(unix: u64) -> Month {
        let (year, month, _) = civil_from_days(unix / 86_400);
        Month(year * 12 + month - 1)
    }

    pub fn year(self) -> u32 {
        self.0 / 12
    }

    /// 1..=12.
    pub fn number(self) -> u32 {
        self.0 % 12 + 1
    }

    pub fn prev(self) -> Month {
        Month(self.0.saturating_sub(1))
    }

    pub fn next(self) -> Month {
        Month(self.0 + 1)
    }

    /// The unix second at which the month starts (00:00:00 UTC on the 1st).
    pub fn start_unix(self) -> u64 {
        days_from_civil(self.year(), self.number(), 1) * 86_400
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.number())
    }
}

/// Why a written month was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMonth(pub String);

impl fmt::Display for BadMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadMonth {}

impl FromStr for Month {
    type Err = BadMonth;

    /// `YYYY-MM`, e.g. `2026-03`.
    fn from_str(s: &str) -> Result<Month, BadMonth> {
        let bad = || BadMonth(format!("'{s}' is not a month like 2026-03"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let (y, m) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if y < 1970 {
            return Err(bad());
        }
        Month::new(y, m).ok_or_else(bad)
    }
}

/// A day counted from 1970-01-01 as `YYYY-MM-DD` (UTC).
pub fn day_string(day: u64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The clock hour (UTC) containing a unix instant, as hours since the epoch.
pub fn hour_of(unix: u64) -> u64 {
    unix / 3600
}

/// (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01, proleptic Gregorian.
/// Counts from 0000-03-01 so that the leap day ends a year, then splits the count into
/// 400-year cycles (146,097 days), years of the cycle, and five-month runs of 153 days.
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    const DAYS_0000_03_01_TO_EPOCH: u64 = 719_468;
    let z = days + DAYS_0000_03_01_TO_EPOCH;
    let cycle = z / 146_097;
    let day_of_cycle = z % 146_097;
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let march_based_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * march_based_month + 2) / 5 + 1;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    };
    let year = cycle * 400 + year_of_cycle + u64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

/// The inverse of [`civil_from_days`] for dates from 1970 on.
fn days_from_civil(year: u32, month: u32, day: u32) -> u64 {
    let (year, month, day) = (u64::from(year), u64::from(month), u64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let cycle = y / 400;
    let year_of_cycle = y % 400;
    let march_based_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * march_based_month + 2) / 5 + day - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    (cycle * 146_097 + day_of_cycle).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-04-01T00:00:00Z.
    const APRIL_2024: u64 = 1_711_929_600;
    const HOUR: u64 = 3600;

    fn month(s: &str) -> Month {
        s.parse().unwrap()
    }

    #[test]
    fn months_follow_the_utc_calendar() {
        // Day by day from 1970 to 2200 against a plain counting calendar.
        let (mut y, mut m, mut d) = (1970u32, 1u32, 1u32);
        for day in 0..(230 * 366) {
            assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
            assert_eq!(days_from_civil(y, m, d), day);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        assert_eq!(Month::of(0).to_string(), "1970-01");
        assert_eq!(Month::of(1_704_067_200).to_string(), "2024-01"); // 2024-01-01T00:00:00Z
        assert_eq!(Month::of(1_704_067_199).to_string(), "2023-12");
        assert_eq!(Month::of(APRIL_2024 - 1).to_string(), "2024-03");
        assert_eq!(Month::of(APRIL_2024).to_string(), "2024-04");
        assert_eq!(Month::of(951_868_799).to_string(), "2000-02"); // 2000-02-29T23:59:59Z
        assert_eq!(Month::of(2_147_483_647).to_string(), "2038-01");
        assert_eq!(month("2024-04").start_unix(), APRIL_2024);
        assert_eq!(month("2024-12").next(), month("2025-01"));
        assert_eq!(month("2025-01").prev(), month("2024-12"));
        assert_eq!(hour_of(APRIL_2024 + HOUR - 1), APRIL_2024 / HOUR);
        for bad in [
            "2024-4", "2024-13", "2024-00", "24-04", "2024/04", "", "abcd-ef", "1969-12",
        ] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }
}
