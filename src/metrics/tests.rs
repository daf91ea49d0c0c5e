use std::time::Duration;

use super::*;
use crate::units::{Usage, Usd};

fn finished<'a>(model: &'a str, status: u16, code: Option<&'static str>) -> Finished<'a> {
    Finished {
        endpoint: "chat_completions",
        lane: "express",
        model,
        provider: "sim",
        status,
        error_code: code,
        duration: Duration::from_millis(12),
        upstream: Duration::from_millis(10),
        request_bytes: 1000,
        response_bytes: 300,
        usage: (status == 200).then_some(Usage {
            input: 100,
            cached_input: 40,
            output: 7,
            ..Default::default()
        }),
        cost: (status == 200).then_some(Usd(123_456_789)),
    }
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn requests_tokens_cost_and_latency_render_as_prometheus_text() {
    let m = Metrics::default();
    for _ in 0..3 {
        m.request(&finished("m1", 200, None));
    }
    m.request(&finished("m1", 429, Some("rate_limited")));
    m.request(&Finished {
        lane: "",
        model: "",
        provider: "",
        ..finished("", 401, Some("invalid_api_key"))
    });
    let text = render(&m, &Live::default());
    let ok = r#"flux_requests_total{endpoint="chat_completions",lane="express",model="m1",provider="sim",status="200"}"#;
    assert_eq!(value(&text, ok), 3.0);
    let unauth = r#"flux_requests_total{endpoint="chat_completions",lane="",model="",provider="",status="401"}"#;
    assert_eq!(value(&text, unauth), 1.0);
    let input = r#"flux_tokens_total{lane="express",model="m1",kind="input"}"#;
    assert_eq!(value(&text, input), 300.0);
    let cached = r#"flux_tokens_total{lane="express",model="m1",kind="cached_input"}"#;
    assert_eq!(value(&text, cached), 120.0);
    // 3 × 0.000123456789 USD (pico-dollars rounded up to nano-dollars).
    let cost = r#"flux_cost_usd_total{lane="express",model="m1"}"#;
    assert!((value(&text, cost) - 0.000370371).abs() < 1e-12);
    assert_eq!(
        value(&text, r#"flux_limit_rejections_total{kind="rate"}"#),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"flux_request_errors_total{endpoint="chat_completions",code="invalid_api_key"}"#
        ),
        1.0
    );
    // 5 requests of 12 ms: all in the 25 ms bucket, none in the 10 ms one; overhead 2 ms.
    let d = r#"flux_request_duration_seconds_bucket{endpoint="chat_completions",le="0.025"}"#;
    assert_eq!(value(&text, d), 5.0);
    let d = r#"flux_request_duration_seconds_bucket{endpoint="chat_completions",le="0.01"}"#;
    assert_eq!(value(&text, d), 0.0);
    let o = r#"flux_overhead_seconds_bucket{endpoint="chat_completions",le="0.0025"}"#;
    assert_eq!(value(&text, o), 5.0);
    let inf = r#"flux_overhead_seconds_bucket{endpoint="chat_completions",le="+Inf"}"#;
    assert_eq!(value(&text, inf), 5.0);
    assert_eq!(
        value(
            &text,
            r#"flux_request_duration_seconds_count{endpoint="chat_completions"}"#
        ),
        5.0
    );
    assert!(text.contains("# TYPE flux_requests_total counter\n"));
    assert!(text.contains("# TYPE flux_overhead_seconds histogram\n"));
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let v = line.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn upstream_breaker_reload_and_live_gauges() {
    let m = Metrics::default();
    m.attempt("sim", false);
    m.upstream_error("sim", "timeout");
    m.attempt("backup", true);
    m.first_byte("backup", Duration::from_millis(3));
    m.upstream_skipped("sim", "breaker_open");
    m.reload("lanes", "success");
    m.reload("keys", "failure");
    m.address_refused("connections");
    m.address_refused("failed_auth");
    m.address_refused("failed_auth");
    let live = Live {
        requests_in_flight: 2,
        upstream_in_flight: 1,
        body_bytes_in_flight: 4096,
        breakers: vec![("sim", "open"), ("backup", "closed")],
        targets: vec![crate::metrics::TargetView {
            lane: "daily",
            target: "flux-pinned-a@sim",
            weight: 3,
            latency_seconds: 0.25,
            in_flight: 2,
            ejected: true,
        }],
        access_log_dropped: 0,
        series_dropped: 0,
        ledger: crate::metering::ledger::LedgerStats {
            recreated: 1,
            ..Default::default()
        },
        fleet: None,
    };
    let text = render(&m, &live);
    for (series, want) in [
        (r#"flux_upstream_attempts_total{provider="sim"}"#, 1.0),
        (
            r#"flux_target_weight{lane="daily",target="flux-pinned-a@sim"}"#,
            3.0,
        ),
        (
            r#"flux_target_latency_seconds{lane="daily",target="flux-pinned-a@sim"}"#,
            0.25,
        ),
        (
            r#"flux_target_in_flight{lane="daily",target="flux-pinned-a@sim"}"#,
            2.0,
        ),
        (
            r#"flux_target_ejected{lane="daily",target="flux-pinned-a@sim"}"#,
            1.0,
        ),
        ("flux_ledger_recreated_total", 1.0),
        (r#"flux_upstream_retries_total{provider="sim"}"#, 0.0),
        (r#"flux_upstream_retries_total{provider="backup"}"#, 1.0),
        (
            r#"flux_upstream_errors_total{provider="sim",reason="timeout"}"#,
            1.0,
        ),
        (
            r#"flux_upstream_skipped_total{provider="sim",reason="breaker_open"}"#,
            1.0,
        ),
        (
            r#"flux_upstream_ttfb_seconds_count{provider="backup"}"#,
            1.0,
        ),
        (
            r#"flux_circuit_breaker_state{provider="sim",state="open"}"#,
            1.0,
        ),
        (
            r#"flux_circuit_breaker_state{provider="sim",state="closed"}"#,
            0.0,
        ),
        (
            r#"flux_circuit_breaker_state{provider="backup",state="closed"}"#,
            1.0,
        ),
        (r#"flux_reloads_total{file="lanes",outcome="success"}"#, 1.0),
        (r#"flux_reloads_total{file="keys",outcome="failure"}"#, 1.0),
        (r#"flux_address_refusals_total{reason="failed_auth"}"#, 2.0),
        (r#"flux_address_refusals_total{reason="connections"}"#, 1.0),
        ("flux_requests_in_flight", 2.0),
        ("flux_request_body_bytes_in_flight", 4096.0),
    ] {
        assert_eq!(value(&text, series), want, "{series}");
    }
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    m.attempt("we\"ird\\name\n", false);
    let text = render(&m, &Live::default());
    assert!(
        text.contains(r#"flux_upstream_attempts_total{provider="we\"ird\\name\n"} 1"#),
        "{text}"
    );
}
