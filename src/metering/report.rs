//! The usage report: a month's ledger rows by key, lane and model, with key names and a
//! total. One report for both readers: `GET /admin/v1/usage` and `fluxrouter usage` (its
//! table and `--json`). The two JSON envelopes differ (each is a published shape), the rows
//! and the arithmetic do not.

use serde_json::{json, Value};

use super::ledger::ReportRow;
use crate::units::Month;

/// A month's usage rows, each with its key's name when the keys file still has the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub month: Month,
    pub rows: Vec<ReportRow>,
    /// `names[i]` is the name of `rows[i]`'s key.
    pub names: Vec<Option<String>>,
    /// The sum of every row (its `key_id`, `lane` and `model` are empty).
    pub total: ReportRow,
}

impl UsageReport {
    pub fn new(
        month: Month,
        rows: Vec<ReportRow>,
        name_of: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let names = rows.iter().map(|r| name_of(&r.key_id)).collect();
        let mut total = ReportRow::default();
        for r in &rows {
            total.requests += r.requests;
            total.input_tokens += r.input_tokens;
            total.cached_input_tokens += r.cached_input_tokens;
            total.output_tokens += r.output_tokens;
            total.cost = total.cost.saturating_add(r.cost);
        }
        UsageReport {
            month,
            rows,
            names,
            total,
        }
    }

    /// Each row as both JSON shapes carry it.
    fn rows_json(&self) -> Vec<Value> {
        self.rows
            .iter()
            .zip(&self.names)
            .map(|(r, name)| {
                json!({
                    "key_id": r.key_id,
                    "key_name": name,
                    "lane": r.lane,
                    "model": r.model,
                    "requests": r.requests,
                    "input_tokens": r.input_tokens,
                    "cached_input_tokens": r.cached_input_tokens,
                    "output_tokens": r.output_tokens,
                    "cost_usd": r.cost,
                })
            })
            .collect()
    }

    /// The `GET /admin/v1/usage` answer.
    pub fn admin_json(&self) -> Value {
        json!({
            "object": "usage_report",
            "month": self.month.to_string(),
            "total_usd": self.total.cost,
            "data": self.rows_json(),
        })
    }

    /// What `fluxrouter usage --json` prints.
    pub fn cli_json(&self) -> Value {
        let total = &self.total;
        json!({
            "month": self.month.to_string(),
            "rows": self.rows_json(),
            "total": {
                "requests": total.requests,
                "input_tokens": total.input_tokens,
                "cached_input_tokens": total.cached_input_tokens,
                "output_tokens": total.output_tokens,
                "cost_usd": total.cost,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Usd;

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

    fn report() -> UsageReport {
        let rows = vec![
            row("key_1", "fast", 3, 1_234_567_890_123),
            row("key_2", "slow", 1, 499_999),
        ];
        let name_of = |id: &str| (id == "key_1").then(|| "alice".to_string());
        UsageReport::new("2026-03".parse().unwrap(), rows, &name_of)
    }

    /// Both shapes, byte for byte (the field order is part of them).
    #[test]
    fn both_shapes_keep_their_text() {
        let report = report();
        let row_1 = r#"{"key_id":"key_1","key_name":"alice","lane":"fast","model":"gpt-x","requests":3,"input_tokens":3000,"cached_input_tokens":300,"output_tokens":30,"cost_usd":"1.234567890123"}"#;
        let row_2 = r#"{"key_id":"key_2","key_name":null,"lane":"slow","model":"gpt-x","requests":1,"input_tokens":1000,"cached_input_tokens":100,"output_tokens":10,"cost_usd":"0.000000499999"}"#;
        assert_eq!(
            report.admin_json().to_string(),
            format!(
                r#"{{"object":"usage_report","month":"2026-03","total_usd":"1.234568390122","data":[{row_1},{row_2}]}}"#
            )
        );
        assert_eq!(
            report.cli_json().to_string(),
            format!(
                r#"{{"month":"2026-03","rows":[{row_1},{row_2}],"total":{{"requests":4,"input_tokens":4000,"cached_input_tokens":400,"output_tokens":40,"cost_usd":"1.234568390122"}}}}"#
            )
        );
    }
}
