//! `fluxrouter usage`: a month's spend, requests and tokens by key, lane and model (or by
//! day), as a table or JSON; the report is the admin listener's ([`UsageReport`]).

use std::path::Path;

use fluxrouter::config::{KeysFile, ServerConfig};
use fluxrouter::metering::ledger::{LedgerReader, ReportRow};
use fluxrouter::metering::report::UsageReport;
use fluxrouter::units::clock::unix_now;
use fluxrouter::units::{Month, Usd};

use super::CliResult;

pub fn usage(
    config_path: &Path,
    key: Option<String>,
    month: Option<String>,
    json: bool,
    node: bool,
    by_day: bool,
) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let month = match month {
        Some(m) => m.parse::<Month>()?,
        None => Month::of(unix_now()),
    };
    // Names are a convenience: a broken keys file still leaves the ids to show.
    let keys = KeysFile::load(&config.keys_file).unwrap_or_else(|e| {
        eprintln!("warning: {e}; showing key ids");
        KeysFile::default()
    });
    let key_id = key.map(|k| {
        keys.keys
            .iter()
            .find(|r| r.name == k)
            .map_or(k, |r| r.id.clone())
    });
    if by_day {
        if config.redis.is_some() && !node {
            return Err(
                "--by-day reads a gateway's own ledger: in fleet mode add --node (the \
                        fleet's days are the sum over its gateways)"
                    .into(),
            );
        }
        let days = LedgerReader::open(&config.ledger.path)?.days(month, key_id.as_deref())?;
        if json {
            let v = serde_json::json!({"month": month.to_string(), "days": days});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{:<10}  {:>10}  {:>14}", "day", "requests", "cost");
            for d in &days {
                println!("{:<10}  {:>10}  {:>14}", d.day, d.requests, dollars(d.cost));
            }
        }
        return Ok(());
    }
    let (rows, source) = match &config.redis {
        Some(redis) if !node => {
            let fleet = fluxrouter::fleet::Fleet::connect(redis, false)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let rows = runtime.block_on(fleet.report(month, key_id.as_deref()))?;
            (rows, "the fleet's shared ledger (Redis)".to_string())
        }
        _ => {
            let reader = LedgerReader::open(&config.ledger.path)?;
            let rows = reader.report(month, key_id.as_deref())?;
            (rows, config.ledger.path.display().to_string())
        }
    };
    let name_of = |id: &str| {
        keys.keys
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.clone())
    };
    let report = UsageReport::new(month, rows, &name_of);
    if json {
        println!("{}", serde_json::to_string_pretty(&report.cli_json())?);
    } else if report.rows.is_empty() {
        println!(
            "no usage in {month}{} ({})",
            key_id.map(|k| format!(" for {k}")).unwrap_or_default(),
            source
        );
    } else {
        print!("{}", usage_table(&report));
    }
    Ok(())
}

/// Dollars to the micro-dollar, rounded half up: `$12.345679`.
fn dollars(usd: Usd) -> String {
    let micros = usd.0 / 1_000_000 + u64::from(usd.0 % 1_000_000 >= 500_000);
    format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn usage_table(report: &UsageReport) -> String {
    let line = |r: &ReportRow, key: String| {
        [
            key,
            r.lane.clone(),
            r.model.clone(),
            r.requests.to_string(),
            r.input_tokens.to_string(),
            r.cached_input_tokens.to_string(),
            r.output_tokens.to_string(),
            dollars(r.cost),
        ]
    };
    let mut lines = vec![[
        "KEY", "LANE", "MODEL", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "SPEND",
    ]
    .map(String::from)];
    for (r, name) in report.rows.iter().zip(&report.names) {
        lines.push(line(r, name.clone().unwrap_or_else(|| r.key_id.clone())));
    }
    lines.push(line(&report.total, "TOTAL".into()));
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut text = String::new();
        for (i, (cell, w)) in l.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i < 3 {
                text.push_str(&format!("{cell:<w$}"));
            } else {
                text.push_str(&format!("{cell:>w$}"));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, lane: &str, requests: u64, cost: u64) -> ReportRow {
        ReportRow {
            key_id: key.into(),
            lane: lane.into(),
            model: "gpt-x".into(),
            requests,
            input_tokens: requests * 1000,
            cached_input_tokens: requests * 100,
            output_tokens: requests * 10,
            cost: Usd(cost),
        }
    }

    #[test]
    fn usage_prints_names_totals_and_dollars() {
        let rows = vec![
            row("key_1", "fast", 3, 1_234_567_890_123),
            row("key_2", "slow", 1, 499_999),
        ];
        let name_of = |id: &str| (id == "key_1").then(|| "alice".to_string());
        let report = UsageReport::new("2026-03".parse().unwrap(), rows, &name_of);
        let table = usage_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("KEY    LANE  MODEL  REQUESTS"),
            "{table}"
        );
        assert!(lines[1].starts_with("alice  fast  gpt-x") && lines[1].ends_with("$1.234568"));
        assert!(lines[2].starts_with("key_2") && lines[2].ends_with("$0.000000"));
        assert!(lines[3].starts_with("TOTAL") && lines[3].ends_with("$1.234568"));
        assert!(lines[3].contains(" 4000 "), "{table}");

        let json = report.cli_json();
        assert_eq!(json["month"], "2026-03");
        assert_eq!(json["rows"][0]["key_name"], "alice");
        assert!(json["rows"][1]["key_name"].is_null());
        assert_eq!(json["rows"][0]["cost_usd"], "1.234567890123");
        assert_eq!(json["total"]["cost_usd"], "1.234568390122");
        assert_eq!(json["total"]["requests"], 4);
    }

    #[test]
    fn dollars_round_to_the_micro_dollar() {
        assert_eq!(dollars(Usd(0)), "$0.000000");
        assert_eq!(dollars(Usd(500_000)), "$0.000001");
        assert_eq!(dollars(Usd(2_999_999_500_000)), "$3.000000");
        assert_eq!(dollars(Usd(12_345_678_000_000)), "$12.345678");
    }
}
