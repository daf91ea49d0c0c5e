//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use super::{Counter, Histogram, Metrics, LATENCY_BUCKETS};

/// What is read at scrape time rather than recorded per request.
#[derive(Debug, Default)]
pub struct Live<'a> {
    pub requests_in_flight: usize,
    pub upstream_in_flight: usize,
    pub body_bytes_in_flight: usize,
    /// Each provider's circuit breaker: its name and its state (`closed`, `open`,
    /// `half_open`).
    pub breakers: Vec<(&'a str, &'static str)>,
    /// The targets of lanes that spread their traffic (strategy other than failover).
    pub targets: Vec<TargetView<'a>>,
    pub access_log_dropped: u64,
    pub series_dropped: u64,
    /// The ledger writer's statistics (this node's file).
    pub ledger: crate::metering::ledger::LedgerStats,
    /// Fleet mode's view of Redis.
    pub fleet: Option<super::FleetView<'a>>,
}

/// One target of a lane that spreads its traffic, as a scrape sees it.
#[derive(Debug, Clone, Copy)]
pub struct TargetView<'a> {
    pub lane: &'a str,
    /// `model-id@provider`: one deployment of a model.
    pub target: &'a str,
    pub weight: u32,
    /// The latency strategy's estimate of its time to first byte (0: nothing seen yet).
    pub latency_seconds: f64,
    pub in_flight: u32,
    /// Skipped now (its provider's breaker is open, or it asked for room with a 429).
    pub ejected: bool,
}

const BREAKER_STATES: [&str; 3] = ["closed", "half_open", "open"];

/// A label value in the exposition format's escaping.
fn escaped(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
        .into()
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.0.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{k}=\"{}\"", escaped(v));
        }
        self.0.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn counter(&mut self, name: &str, labels: &[(&str, &str)], c: &Counter) {
        self.sample(name, labels, c.get());
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (buckets, sum) = h.snapshot();
        let bucket = format!("{name}_bucket");
        for (i, count) in buckets.iter().enumerate() {
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, buckets[20]);
    }
}

/// Everything, as the text a Prometheus scrape reads.
pub fn render(m: &Metrics, live: &Live<'_>) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));

    o.head(
        "flux_build_info",
        "gauge",
        "The running build (always 1), with its version.",
    );
    o.sample(
        "flux_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    o.head(
        "flux_requests_total",
        "counter",
        "Requests answered, by endpoint, lane, served model, provider and status (lane, \
         model and provider are empty when the request was refused before routing or before \
         a provider answered).",
    );
    for (k, c) in m.requests.sorted() {
        let status = k.status.to_string();
        o.counter(
            "flux_requests_total",
            &[
                ("endpoint", k.endpoint),
                ("lane", &k.lane),
                ("model", &k.model),
                ("provider", &k.provider),
                ("status", &status),
            ],
            &c,
        );
    }

    let endpoints = m.endpoints.sorted();
    o.head(
        "flux_request_duration_seconds",
        "histogram",
        "Time from the request's arrival to its last byte sent, by endpoint.",
    );
    for (e, s) in &endpoints {
        o.histogram(
            "flux_request_duration_seconds",
            &[("endpoint", e)],
            &s.duration,
        );
    }
    o.head(
        "flux_overhead_seconds",
        "histogram",
        "The gateway's own time per request: the duration minus the time spent waiting on \
         providers, by endpoint.",
    );
    for (e, s) in &endpoints {
        o.histogram("flux_overhead_seconds", &[("endpoint", e)], &s.overhead);
    }
    o.head(
        "flux_request_bytes_total",
        "counter",
        "Request body bytes received, by endpoint.",
    );
    for (e, s) in &endpoints {
        o.counter(
            "flux_request_bytes_total",
            &[("endpoint", e)],
            &s.request_bytes,
        );
    }
    o.head(
        "flux_response_bytes_total",
        "counter",
        "Response body bytes sent, by endpoint.",
    );
    for (e, s) in &endpoints {
        o.counter(
            "flux_response_bytes_total",
            &[("endpoint", e)],
            &s.response_bytes,
        );
    }

    let usage = m.usage.sorted();
    o.head(
        "flux_tokens_total",
        "counter",
        "Tokens the providers reported, by lane, served model and kind (input includes \
         cached_input).",
    );
    for (k, s) in &usage {
        for (kind, c) in [
            ("input", &s.input_tokens),
            ("cached_input", &s.cached_input_tokens),
            ("output", &s.output_tokens),
        ] {
            o.counter(
                "flux_tokens_total",
                &[("lane", &k.0), ("model", &k.1), ("kind", kind)],
                c,
            );
        }
    }
    o.head(
        "flux_cost_usd_total",
        "counter",
        "What requests were billed, in US dollars, by lane and served model.",
    );
    for (k, s) in &usage {
        o.sample(
            "flux_cost_usd_total",
            &[("lane", &k.0), ("model", &k.1)],
            format_args!("{:.9}", s.cost_nanos.get() as f64 / 1e9),
        );
    }

    o.head(
        "flux_request_errors_total",
        "counter",
        "Requests answered with an error, by endpoint and error code.",
    );
    for ((endpoint, code), c) in m.errors.sorted() {
        o.counter(
            "flux_request_errors_total",
            &[("endpoint", endpoint), ("code", code)],
            &c,
        );
    }
    o.head(
        "flux_limit_rejections_total",
        "counter",
        "Requests refused by a limit, by kind (rate, conversation, payload_size, \
         input_tokens, credit, spend_ceiling, hourly_spend, account_on_hold, concurrency, \
         premium_capacity).",
    );
    for (kind, c) in m.limit_rejections.sorted() {
        o.counter("flux_limit_rejections_total", &[("kind", kind)], &c);
    }

    let providers = m.providers.sorted();
    o.head(
        "flux_upstream_attempts_total",
        "counter",
        "Requests sent to providers (first attempts and fallbacks), by provider.",
    );
    for (p, s) in &providers {
        o.counter(
            "flux_upstream_attempts_total",
            &[("provider", p)],
            &s.attempts,
        );
    }
    o.head(
        "flux_upstream_retries_total",
        "counter",
        "Attempts that were not a request's first (fallbacks after a failure), by the \
         provider tried.",
    );
    for (p, s) in &providers {
        o.counter(
            "flux_upstream_retries_total",
            &[("provider", p)],
            &s.retries,
        );
    }
    o.head(
        "flux_upstream_ttfb_seconds",
        "histogram",
        "Time from sending a request to a provider to its response header, by provider.",
    );
    for (p, s) in &providers {
        o.histogram("flux_upstream_ttfb_seconds", &[("provider", p)], &s.ttfb);
    }
    o.head(
        "flux_upstream_errors_total",
        "counter",
        "Failed attempts, by provider and reason (connect, timeout, bad_answer, auth, \
         throttled, stream_broken).",
    );
    for (k, c) in m.upstream_errors.sorted() {
        o.counter(
            "flux_upstream_errors_total",
            &[("provider", &k.0), ("reason", &k.1)],
            &c,
        );
    }
    o.head(
        "flux_upstream_skipped_total",
        "counter",
        "Providers passed over without an attempt, by provider and reason (breaker_open, \
         throttled, busy).",
    );
    for (k, c) in m.upstream_skips.sorted() {
        o.counter(
            "flux_upstream_skipped_total",
            &[("provider", &k.0), ("reason", &k.1)],
            &c,
        );
    }
    o.head(
        "flux_upstream_ejections_total",
        "counter",
        "Providers ejected for a while, by provider and reason (throttled: a 429, for its \
         Retry-After or a doubling backoff).",
    );
    for (k, c) in m.upstream_ejections.sorted() {
        o.counter(
            "flux_upstream_ejections_total",
            &[("provider", &k.0), ("reason", &k.1)],
            &c,
        );
    }
    o.head(
        "flux_circuit_breaker_state",
        "gauge",
        "Each provider's circuit breaker: 1 for its current state, 0 for the others.",
    );
    for (provider, state) in &live.breakers {
        for s in BREAKER_STATES {
            o.sample(
                "flux_circuit_breaker_state",
                &[("provider", provider), ("state", s)],
                u8::from(s == *state),
            );
        }
    }

    for (name, help) in [
        (
            "flux_target_weight",
            "Each target's weight in a lane that spreads its traffic.",
        ),
        (
            "flux_target_latency_seconds",
            "The latency strategy's estimate of each target's time to first byte (peak-EWMA \
             per unit of input; 0 until it answers).",
        ),
        (
            "flux_target_in_flight",
            "Attempts in flight at each target.",
        ),
        (
            "flux_target_ejected",
            "1 while a target is skipped (its provider's breaker open, or ejected for a 429).",
        ),
    ] {
        o.head(name, "gauge", help);
        for t in &live.targets {
            let labels = [("lane", t.lane), ("target", t.target)];
            match name {
                "flux_target_weight" => o.sample(name, &labels, t.weight),
                "flux_target_latency_seconds" => o.sample(name, &labels, t.latency_seconds),
                "flux_target_in_flight" => o.sample(name, &labels, t.in_flight),
                _ => o.sample(name, &labels, u8::from(t.ejected)),
            }
        }
    }

    o.head(
        "flux_policy_decisions_total",
        "counter",
        "The policy hook's decisions by outcome (allow, lane, targets, deny, cached, timeout, \
         error).",
    );
    for (outcome, c) in m.policy_decisions.sorted() {
        o.counter("flux_policy_decisions_total", &[("outcome", outcome)], &c);
    }
    o.head(
        "flux_policy_seconds",
        "histogram",
        "How long each call to the policy hook took (cached decisions make none).",
    );
    o.histogram("flux_policy_seconds", &[], &m.policy_latency);

    o.head(
        "flux_reloads_total",
        "counter",
        "Reloads of lanes.yaml and the keys file, by file and outcome (success, failure).",
    );
    for ((file, outcome), c) in m.reloads.sorted() {
        o.counter(
            "flux_reloads_total",
            &[("file", file), ("outcome", outcome)],
            &c,
        );
    }

    o.head(
        "flux_address_refusals_total",
        "counter",
        "Requests and connections refused by a per-address limit before authentication, by \
         reason (failed_auth, requests_per_second, connections).",
    );
    for (reason, c) in m.address_refusals.sorted() {
        o.counter("flux_address_refusals_total", &[("reason", reason)], &c);
    }

    let certificates = m.certificates.load();
    if !certificates.is_empty() {
        o.head(
            "flux_tls_certificate_expiry_seconds",
            "gauge",
            "When each TLS certificate served expires (unix seconds; alert on it minus time()).",
        );
        for (name, not_after) in certificates.iter() {
            o.sample(
                "flux_tls_certificate_expiry_seconds",
                &[("certificate", name)],
                not_after,
            );
        }
    }

    for (name, help, value) in [
        (
            "flux_requests_in_flight",
            "Requests being served.",
            live.requests_in_flight,
        ),
        (
            "flux_upstream_requests_in_flight",
            "Requests at providers, awaiting or streaming their answer.",
            live.upstream_in_flight,
        ),
        (
            "flux_request_body_bytes_in_flight",
            "Request body bytes being received or held (bounded by \
             limits.max_body_bytes_in_flight).",
            live.body_bytes_in_flight,
        ),
    ] {
        o.head(name, "gauge", help);
        o.sample(name, &[], value);
    }
    o.head(
        "flux_access_log_dropped_total",
        "counter",
        "Access-log lines dropped because the writer could not keep up.",
    );
    o.sample(
        "flux_access_log_dropped_total",
        &[],
        live.access_log_dropped,
    );
    o.head(
        "flux_ledger_recreated_total",
        "counter",
        "Times the ledger file was found deleted while the gateway ran and was put back.",
    );
    o.sample("flux_ledger_recreated_total", &[], live.ledger.recreated);
    o.head(
        "flux_ledger_commit_errors_total",
        "counter",
        "Ledger commits that failed (their spend was kept in memory and retried).",
    );
    o.sample(
        "flux_ledger_commit_errors_total",
        &[],
        live.ledger.commit_errors,
    );
    o.head(
        "flux_metrics_series_dropped_total",
        "counter",
        "Recordings lost because a metric family reached its series limit.",
    );
    o.sample(
        "flux_metrics_series_dropped_total",
        &[],
        live.series_dropped,
    );

    if let Some(fleet) = &live.fleet {
        fleet_section(&mut o, fleet);
    }

    if let Some(p) = process() {
        o.head(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        o.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
        o.head(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, in bytes.",
        );
        o.sample("process_resident_memory_bytes", &[], p.rss_bytes);
    }
    crate::stages::render(&mut o.0);
    o.0
}

/// Fleet mode: whether Redis answers, its round trips by operation, and the fleet.
fn fleet_section(o: &mut Out, fleet: &super::FleetView<'_>) {
    o.head(
        "flux_redis_up",
        "gauge",
        "1 while Redis answers this gateway, 0 while the down policy applies.",
    );
    o.sample("flux_redis_up", &[], u8::from(fleet.up));
    o.head(
        "flux_redis_transitions_total",
        "counter",
        "Times this gateway saw Redis go down, or come back up.",
    );
    let s = fleet.series;
    o.counter(
        "flux_redis_transitions_total",
        &[("to", "down")],
        &s.went_down,
    );
    o.counter("flux_redis_transitions_total", &[("to", "up")], &s.came_up);
    o.head(
        "flux_redis_op_duration_seconds",
        "histogram",
        "Round trips to Redis by operation (reserve, settle, release, standing, rate, \
         heartbeat, report), failures included.",
    );
    for (i, op) in fleet.ops.iter().enumerate() {
        o.histogram(
            "flux_redis_op_duration_seconds",
            &[("op", op)],
            &s.seconds[i],
        );
    }
    o.head(
        "flux_redis_errors_total",
        "counter",
        "Redis operations that failed or timed out, by operation.",
    );
    for (i, op) in fleet.ops.iter().enumerate() {
        o.counter("flux_redis_errors_total", &[("op", op)], &s.errors[i]);
    }
    o.head(
        "flux_fleet_gateways",
        "gauge",
        "Gateways that sent a heartbeat recently, this one included.",
    );
    o.sample("flux_fleet_gateways", &[], fleet.gateways);
    o.head(
        "flux_fleet_settlements_pending",
        "gauge",
        "Settlements Redis has not taken yet (replayed when it answers).",
    );
    o.sample(
        "flux_fleet_settlements_pending",
        &[],
        fleet.settlements_pending,
    );
    o.head(
        "flux_fleet_settlements_dropped_total",
        "counter",
        "Settlements dropped from a full replay queue (still in this gateway's ledger).",
    );
    o.counter(
        "flux_fleet_settlements_dropped_total",
        &[],
        &s.settles_dropped,
    );
}

impl Metrics {
    /// Recordings lost to a full family, across families.
    pub fn series_dropped(&self) -> u64 {
        self.requests.overflow()
            + self.endpoints.overflow()
            + self.usage.overflow()
            + self.errors.overflow()
            + self.limit_rejections.overflow()
            + self.providers.overflow()
            + self.upstream_errors.overflow()
            + self.upstream_skips.overflow()
            + self.upstream_ejections.overflow()
            + self.policy_decisions.overflow()
            + self.reloads.overflow()
            + self.address_refusals.overflow()
    }
}

struct Process {
    cpu_seconds: f64,
    rss_bytes: u64,
}

/// This process's CPU time and RSS, from /proc (Linux); None elsewhere.
fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    // utime and stime: fields 14 and 15 of the line, the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    // The kernel reports CPU time in USER_HZ ticks, 100 per second on every Linux ABI.
    Some(Process {
        cpu_seconds: (utime + stime) as f64 / 100.0,
        rss_bytes: rss_kb * 1024,
    })
}
