//! Where one request's time goes, stage by stage: the breakdown `benches/stages.sh` prints
//! (issue 20: measure before cutting).
//!
//! Compiled in only with the `stage-timing` feature: without it [`StageClock`] is empty and
//! [`StageClock::mark`] does nothing, so the shipped binary pays nothing. With it, each mark
//! adds the time since the previous mark to its stage (one `Instant::now`, ~25 ns), and a
//! finished request adds its stages to process-wide totals, which `/metrics` shows as
//! `flux_stage_seconds_total{stage}` and `flux_stage_requests_total`. The times are wall
//! time: the stages that wait on sockets (reading the body, the provider's answer, writing
//! the response) include the waiting, the others are the gateway's own work (and any time
//! its thread was taken away).

/// The stages of a generation request, in order. A mark names the stage that just ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From the request header parsed to the pipeline's first phase: connection set-up,
    /// client address, endpoint.
    Head,
    /// The key checked and its account found.
    Auth,
    /// The body read (from the socket) and held.
    ReadBody,
    /// The body parsed into the request (client format).
    Parse,
    /// flux-auto or the pinned model resolved to a lane and its candidates.
    Route,
    /// Rate limits checked and the spend reserved.
    Admit,
    /// The provider's request built (passthrough splice or translation).
    BuildUpstream,
    /// Sent to the provider and its response header received (the provider's time in it).
    UpstreamHead,
    /// The provider's body read.
    UpstreamBody,
    /// The answer read for its usage, and translated when the formats differ.
    Meter,
    /// The cost written to the ledger and the hold released.
    Settle,
    /// The response header and body written to the client.
    WriteResponse,
    /// The provider's connection returned to the pool.
    Release,
    /// A stream relayed event by event (streamed requests: instead of the four above).
    Stream,
    /// Metrics recorded and the access line written (`logging()`).
    Log,
}

impl Stage {
    pub const ALL: [Stage; 15] = [
        Stage::Head,
        Stage::Auth,
        Stage::ReadBody,
        Stage::Parse,
        Stage::Route,
        Stage::Admit,
        Stage::BuildUpstream,
        Stage::UpstreamHead,
        Stage::UpstreamBody,
        Stage::Meter,
        Stage::Settle,
        Stage::WriteResponse,
        Stage::Release,
        Stage::Stream,
        Stage::Log,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Head => "head",
            Stage::Auth => "auth",
            Stage::ReadBody => "read_body",
            Stage::Parse => "parse",
            Stage::Route => "route",
            Stage::Admit => "admit",
            Stage::BuildUpstream => "build_upstream",
            Stage::UpstreamHead => "upstream_head",
            Stage::UpstreamBody => "upstream_body",
            Stage::Meter => "meter",
            Stage::Settle => "settle",
            Stage::WriteResponse => "write_response",
            Stage::Release => "release",
            Stage::Stream => "stream",
            Stage::Log => "log",
        }
    }
}

/// One request's stage times (empty without the `stage-timing` feature).
#[derive(Debug)]
pub struct StageClock {
    #[cfg(feature = "stage-timing")]
    last: std::time::Instant,
    #[cfg(feature = "stage-timing")]
    spent: [u64; Stage::ALL.len()],
}

impl StageClock {
    /// Starts counting from now.
    #[inline]
    pub fn start() -> StageClock {
        StageClock {
            #[cfg(feature = "stage-timing")]
            last: std::time::Instant::now(),
            #[cfg(feature = "stage-timing")]
            spent: [0; Stage::ALL.len()],
        }
    }

    /// `stage` ended now: the time since the previous mark is its.
    #[inline]
    pub fn mark(&mut self, stage: Stage) {
        #[cfg(feature = "stage-timing")]
        {
            let now = std::time::Instant::now();
            let ns = u64::try_from((now - self.last).as_nanos()).unwrap_or(u64::MAX);
            self.spent[stage as usize] = self.spent[stage as usize].saturating_add(ns);
            self.last = now;
        }
        #[cfg(not(feature = "stage-timing"))]
        let _ = stage;
    }

    /// The request is over: its stages join the process's totals (a request that never
    /// reached the provider, such as a refused one, is not counted).
    #[inline]
    pub fn finish(&self) {
        #[cfg(feature = "stage-timing")]
        if self.spent[Stage::UpstreamHead as usize] > 0 {
            use std::sync::atomic::Ordering::Relaxed;
            for (total, spent) in totals::SPENT.iter().zip(self.spent) {
                total.fetch_add(spent, Relaxed);
            }
            totals::REQUESTS.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(feature = "stage-timing")]
mod totals {
    use std::sync::atomic::AtomicU64;

    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicU64 = AtomicU64::new(0);
    pub(super) static SPENT: [AtomicU64; super::Stage::ALL.len()] = [ZERO; super::Stage::ALL.len()];
    pub(super) static REQUESTS: AtomicU64 = AtomicU64::new(0);
}

/// The totals in Prometheus text (nothing without the feature).
pub fn render(out: &mut String) {
    #[cfg(feature = "stage-timing")]
    {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        out.push_str(
            "# HELP flux_stage_seconds_total Wall time of generation requests, by stage \
             (stage-timing builds only).\n# TYPE flux_stage_seconds_total counter\n",
        );
        for (stage, total) in Stage::ALL.iter().zip(totals::SPENT.iter()) {
            let _ = writeln!(
                out,
                "flux_stage_seconds_total{{stage=\"{}\"}} {:.9}",
                stage.label(),
                total.load(Relaxed) as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "# HELP flux_stage_requests_total Requests counted in flux_stage_seconds_total.\n\
             # TYPE flux_stage_requests_total counter\nflux_stage_requests_total {}",
            totals::REQUESTS.load(Relaxed)
        );
    }
    #[cfg(not(feature = "stage-timing"))]
    let _ = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_in_order() {
        let labels: Vec<_> = Stage::ALL.iter().map(|s| s.label()).collect();
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), labels.len());
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[cfg(not(feature = "stage-timing"))]
    #[test]
    fn without_the_feature_the_clock_is_empty_and_renders_nothing() {
        assert_eq!(std::mem::size_of::<StageClock>(), 0);
        let mut out = String::new();
        render(&mut out);
        assert!(out.is_empty());
    }

    #[cfg(feature = "stage-timing")]
    #[test]
    fn marks_split_the_time_and_finished_requests_are_totalled() {
        let mut clock = StageClock::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        clock.mark(Stage::Auth);
        clock.mark(Stage::UpstreamHead);
        assert!(clock.spent[Stage::Auth as usize] >= 2_000_000);
        assert!(clock.spent[Stage::UpstreamHead as usize] < clock.spent[Stage::Auth as usize]);
        clock.finish();
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("flux_stage_seconds_total{stage=\"auth\"} 0.00"),
            "{out}"
        );
        assert!(out.contains("flux_stage_requests_total "), "{out}");
    }
}
