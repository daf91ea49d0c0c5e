//! The JSON the console page reads, built from plain data (the ledger's rows, the keys file,
//! the routing table, the traffic counters). Never a key, a provider key or prompt text: only
//! ids, names, counts and money.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::accounts::ops::{account_json, key_json};
use crate::accounts::{AccountRow, KeyRow};
use crate::config::KeysFile;
use crate::metering::ledger::{DayRow, ReportRow};
use crate::metrics::Minute;
use crate::routing::RouteTable;
use crate::units::Usd;

/// Requests and spend summed under one label.
#[derive(Default, Clone, Copy)]
struct Sum {
    requests: u64,
    cost: Usd,
}

fn sorted(map: HashMap<&str, Sum>, label: &str) -> Vec<Value> {
    let mut list: Vec<(&str, Sum)> = map.into_iter().collect();
    list.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then(a.0.cmp(b.0)));
    list.into_iter()
        .map(|(name, s)| json!({label: name, "requests": s.requests, "cost_usd": s.cost}))
        .collect()
}

/// This month's spend: the total, by key (with names), lane, model and day.
pub fn spend(
    month: &str,
    rows: &[ReportRow],
    names: &HashMap<&str, &str>,
    days: &[DayRow],
) -> Value {
    let (mut by_key, mut by_lane, mut by_model) = (HashMap::new(), HashMap::new(), HashMap::new());
    let mut total = Sum::default();
    for r in rows {
        for (map, label) in [
            (&mut by_key, r.key_id.as_str()),
            (&mut by_lane, r.lane.as_str()),
            (&mut by_model, r.model.as_str()),
        ] {
            let s: &mut Sum = map.entry(label).or_default();
            s.requests += r.requests;
            s.cost = s.cost.saturating_add(r.cost);
        }
        total.requests += r.requests;
        total.cost = total.cost.saturating_add(r.cost);
    }
    let mut keys = sorted(by_key, "key_id");
    for k in &mut keys {
        let name = k["key_id"].as_str().and_then(|id| names.get(id)).copied();
        k["key_name"] = json!(name);
    }
    json!({
        "month": month,
        "total_usd": total.cost,
        "requests": total.requests,
        "by_key": keys,
        "by_lane": sorted(by_lane, "lane"),
        "by_model": sorted(by_model, "model"),
        "days": days,
    })
}

/// The keys with their plan, status and spend this month.
pub fn keys(file: &KeysFile, spend: &HashMap<&str, (u64, Usd)>, plans: &[&str]) -> Value {
    let keys: Vec<Value> = file
        .keys
        .iter()
        .map(|k| {
            let (requests, cost) = spend.get(k.id.as_str()).copied().unwrap_or_default();
            json!({
                "id": k.id,
                "name": k.name,
                "plan": k.plan,
                "status": k.status,
                "created_at": k.created_at,
                "requests": requests,
                "spend_usd": cost,
            })
        })
        .collect();
    json!({"plans": plans, "keys": keys})
}

/// One account of the key store as the console shows it: its terms (with its plan's
/// ceiling) and its keys with this month's requests and spend. Never a secret.
pub struct AccountView {
    pub row: AccountRow,
    pub plan_ceiling: Option<Usd>,
    pub keys: Vec<KeyRow>,
}

/// The key store's accounts (the first `shown` of `total` by name) with their keys' spend.
pub fn accounts(
    accounts: &[AccountView],
    total: usize,
    spend: &HashMap<&str, (u64, Usd)>,
    now: u64,
) -> Value {
    let data: Vec<Value> = accounts
        .iter()
        .map(|a| {
            let mut account = account_json(&a.row, a.plan_ceiling);
            let mut sum = Sum::default();
            let keys: Vec<Value> = a
                .keys
                .iter()
                .map(|k| {
                    let (requests, cost) = spend.get(k.id.as_str()).copied().unwrap_or_default();
                    sum.requests += requests;
                    sum.cost = sum.cost.saturating_add(cost);
                    let mut v = key_json(k, now);
                    v["requests"] = json!(requests);
                    v["spend_usd"] = json!(cost);
                    v
                })
                .collect();
            account["keys"] = json!(keys);
            account["requests"] = json!(sum.requests);
            account["spend_usd"] = json!(sum.cost);
            account
        })
        .collect();
    json!({"total": total, "accounts": data})
}

/// The lanes and models loaded, and when the files were.
/// `ejected`: whether a model's provider is skipped right now.
pub fn lanes(
    routes: &RouteTable,
    ejected: impl Fn(&crate::routing::Model) -> bool,
    lanes_loaded_at: u64,
    keys_loaded_at: u64,
) -> Value {
    let lanes: Vec<Value> = routes
        .lanes()
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "alias": l.alias,
                "title": l.title,
                "premium": l.premium,
                "input_per_mtok": l.price.input_per_mtok,
                "output_per_mtok": l.price.output_per_mtok,
                "strategy": l.strategy.kind.label(),
                "affinity": l.strategy.affinity,
                "models": l.chain.iter().enumerate().map(|(i, &m)| {
                    let m = routes.model(m);
                    json!({
                        "id": m.id,
                        "provider": m.provider,
                        "upstream": m.upstream,
                        "weight": l.strategy.weights[i],
                        // The latency strategy's estimate (null until it answers).
                        "latency_ms": Some(m.stats.estimate(0) / 1e6)
                            .filter(|ms| *ms > 0.0)
                            .map(|ms| (ms * 10.0).round() / 10.0),
                        "in_flight": m.stats.inflight(),
                        "ejected": ejected(m),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "lanes": lanes,
        "models": routes.catalogue().count(),
        "lanes_loaded_at": lanes_loaded_at,
        "keys_loaded_at": keys_loaded_at,
    })
}

/// Requests and errors per minute over the last hour.
pub fn traffic(minutes: &[Minute]) -> Value {
    let requests: u64 = minutes.iter().map(|m| m.requests).sum();
    let errors: u64 = minutes.iter().map(|m| m.errors).sum();
    json!({"minutes": minutes, "requests": requests, "errors": errors})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, lane: &str, model: &str, requests: u64, cost: u64) -> ReportRow {
        ReportRow {
            key_id: key.into(),
            lane: lane.into(),
            model: model.into(),
            requests,
            cost: Usd(cost),
            ..ReportRow::default()
        }
    }

    #[test]
    fn spend_is_summed_by_key_lane_and_model_biggest_first() {
        let rows = [
            row("key_a", "fast", "m1", 2, 10),
            row("key_a", "deep", "m2", 1, 500),
            row("key_b", "fast", "m1", 5, 40),
        ];
        let names = HashMap::from([("key_a", "alice")]);
        let v = spend("2026-11", &rows, &names, &[]);
        assert_eq!(v["total_usd"], "0.00000000055");
        assert_eq!(v["requests"], 8);
        assert_eq!(v["by_key"][0]["key_id"], "key_a");
        assert_eq!(v["by_key"][0]["key_name"], "alice");
        assert_eq!(v["by_key"][0]["cost_usd"], "0.00000000051");
        assert_eq!(v["by_key"][1]["key_name"], Value::Null);
        assert_eq!(v["by_lane"][0]["lane"], "deep");
        assert_eq!(v["by_model"][1]["model"], "m1");
        assert_eq!(v["by_model"][1]["requests"], 7);
    }
}
