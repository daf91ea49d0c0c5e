//! Which of a lane's targets serves a request. [`super::RouteTable::route`] filters the lane's
//! chain to the eligible targets in failover order; the lane's strategy then orders them (the
//! first is tried first, the rest are its fallbacks), and prompt-cache affinity keeps a
//! conversation on the target that holds its cached prefix.
//!
//! Everything here is plain data and atomics: no lock, no allocation beyond the candidate
//! list the route already owns. Target health (a breaker open after failures, or a 429 with
//! `Retry-After`) is passed in by the caller, which owns the providers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::Rng;

pub use crate::config::lanes::StrategyKind;

use super::ids::ModelId;

/// A lane's strategy, compiled at load.
#[derive(Debug)]
pub struct Strategy {
    pub kind: StrategyKind,
    /// The weight of each target, by its position in the lane's chain.
    pub weights: Vec<u32>,
    /// One cycle of smooth weighted round robin, as chain positions (built at load: the
    /// request path only advances a cursor through it).
    cycle: Box<[u8]>,
    cursor: AtomicU64,
    /// `cost`: the spread, in percent of the cheapest target's cost.
    pub spread_percent: u32,
    pub affinity: bool,
}

/// The longest WRR cycle built at load (the sum of a lane's weights); larger weights are
/// scaled down to fit, keeping their proportions within a fraction of a percent.
const MAX_CYCLE: u64 = 4_096;

impl Strategy {
    pub fn new(kind: StrategyKind, weights: Vec<u32>, spread_percent: u32, affinity: bool) -> Self {
        let cycle = wrr_cycle(&weights);
        Strategy {
            kind,
            weights,
            cycle,
            cursor: AtomicU64::new(0),
            spread_percent,
            affinity,
        }
    }

    /// Whether requests of one lane go to different targets (so a conversation's identity
    /// matters to keep it on one).
    pub fn spreads(&self) -> bool {
        self.kind != StrategyKind::Failover
    }

    /// The next chain position of the weighted cycle.
    fn next_in_cycle(&self) -> u64 {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }
}

/// Smooth weighted round robin (each step: every target gains its weight, the largest is
/// chosen and loses the total), unrolled into one cycle. Targets of weight 0 never appear.
fn wrr_cycle(weights: &[u32]) -> Box<[u8]> {
    let gcd = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<u32> = weights.iter().map(|w| w / gcd).collect();
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scale = total.div_ceil(MAX_CYCLE).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| match u64::from(w) / scale {
            0 if w > 0 => 1,
            w => w as i64,
        })
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("a lane has targets");
        current[best] -= total;
        cycle.push(best as u8);
    }
    cycle.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What a target's recent answers say about its speed, kept across requests (and carried
/// over when lanes.yaml is reloaded).
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Peak-EWMA of time to first byte per unit of input, in nanoseconds (f64 bits; 0: none
    /// seen yet). A slower answer raises it at once; faster ones bring it down over `TAU`.
    ewma: AtomicU64,
    /// When it was last observed (milliseconds on [`clock_ms`]).
    seen_ms: AtomicU64,
    inflight: AtomicU32,
}

/// How fast the estimate forgets a slow answer once fast ones arrive.
const TAU_MS: f64 = 10_000.0;
/// An estimate no answer has refreshed for this long starts to decay (halving every
/// `STALE_HALF_LIFE_MS`), so a target that was slow is tried again now and then and its
/// traffic comes back when it has recovered: an estimate that is only updated by traffic
/// it no longer gets would keep it out for good.
const STALE_AFTER_MS: f64 = 5_000.0;
const STALE_HALF_LIFE_MS: f64 = 2_000.0;
/// Input tokens that count as one more unit of work: time to first byte grows with the
/// prompt a provider must read, so a 20k-token prompt does not make a target look slow.
const TOKENS_PER_UNIT: f64 = 1_000.0;

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn units(input_tokens: u64) -> f64 {
    1.0 + input_tokens as f64 / TOKENS_PER_UNIT
}

impl TargetStats {
    /// An attempt at this target starts; it counts as in flight until the guard drops.
    pub fn start(&self) -> Inflight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Inflight(&self.inflight)
    }

    /// Record a time to first byte (or the time a failed attempt took).
    pub fn observe(&self, elapsed: Duration, input_tokens: u64) {
        self.observe_at(elapsed, input_tokens, clock_ms());
    }

    fn observe_at(&self, elapsed: Duration, input_tokens: u64, now: u64) {
        let sample = elapsed.as_nanos() as f64 / units(input_tokens);
        // What the estimate had decayed to: after a long silence, the new answer decides.
        let prev = self.estimate_at(0, now);
        let last = self.seen_ms.swap(now, Ordering::Relaxed);
        let next = if prev == 0.0 || sample >= prev {
            sample
        } else {
            let w = (-(now.saturating_sub(last) as f64) / TAU_MS).exp();
            prev * w + sample * (1.0 - w)
        };
        // Racing observers may overwrite each other: one sample lost, never a torn value.
        self.ewma.store(next.max(1.0).to_bits(), Ordering::Relaxed);
    }

    /// The expected time to first byte of the next request of `input_tokens` here, in
    /// nanoseconds (0 when nothing is known yet), before the in-flight penalty.
    pub fn estimate(&self, input_tokens: u64) -> f64 {
        self.estimate_at(input_tokens, clock_ms())
    }

    fn estimate_at(&self, input_tokens: u64, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let age = now.saturating_sub(self.seen_ms.load(Ordering::Relaxed)) as f64;
        let stale = ((age - STALE_AFTER_MS) / STALE_HALF_LIFE_MS).max(0.0);
        ewma * 0.5f64.powf(stale) * units(input_tokens)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Copy what another table's stats learned (a reload keeps the estimates).
    pub fn inherit(&self, from: &TargetStats) {
        self.ewma
            .store(from.ewma.load(Ordering::Relaxed), Ordering::Relaxed);
        self.seen_ms
            .store(from.seen_ms.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// An attempt in flight at a target.
pub struct Inflight<'a>(&'a AtomicU32);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the caller knows about a target's health right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// Ejected (its breaker open after failures, or a 429's `Retry-After`): skipped.
    pub ejected: bool,
    /// Consecutive failures not yet enough to eject it.
    pub failures: u32,
}

/// Who chose the first target, for `X-Flux-Route-Rule` and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The lane's order (failover), or a pinned model.
    Order,
    Strategy(StrategyKind),
    /// Prompt-cache affinity, from the conversation's identity.
    Affinity(SessionSource),
    /// The request's own provider preferences (`provider` in the body, or the
    /// `X-Flux-Provider-*` headers).
    Preference,
    /// The operator's policy hook chose the lane or the targets.
    Policy,
}

impl Chosen {
    /// The words in headers and logs: `weighted`, `affinity:key`, … (None: plain order).
    pub fn label(self) -> Option<&'static str> {
        match self {
            Chosen::Order => None,
            Chosen::Preference => Some("preference"),
            Chosen::Policy => Some("policy"),
            Chosen::Strategy(kind) => Some(kind.label()),
            Chosen::Affinity(SessionSource::Header) => Some("affinity:header"),
            Chosen::Affinity(SessionSource::Key) => Some("affinity:key"),
            Chosen::Affinity(SessionSource::Prefix) => Some("affinity:prefix"),
        }
    }
}

/// Where a conversation's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSource {
    /// `X-Flux-Session`.
    Header,
    /// The client's own: `prompt_cache_key`, `user`, `metadata.user_id`.
    Key,
    /// The hash of the conversation's stable prefix.
    Prefix,
}

/// A conversation's identity, for affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub hash: u64,
    pub source: SessionSource,
}

/// What ordering needs to know about the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    pub input_tokens: u64,
    /// The output the request may produce (for `cost`).
    pub max_tokens: Option<u64>,
    pub session: Option<Session>,
}

/// An affinity target whose expected latency is this many times the best one's is left:
/// a cached prefix is not worth waiting seconds for.
const AFFINITY_SLOWDOWN_LIMIT: f64 = 4.0;
/// Output tokens assumed for a request that sets no `max_tokens` (for `cost`).
const DEFAULT_OUTPUT_TOKENS: u64 = 500;

/// A target as ordering sees it.
pub struct Target<'a> {
    pub model: ModelId,
    /// Position in the lane's chain (indexes the strategy's weights).
    pub position: usize,
    pub stats: &'a TargetStats,
    /// The target's cost in pico-dollars per token, input and output (for `cost`).
    pub price: (u64, u64),
    /// Stable across gateways: the affinity hash is taken over it.
    pub id: &'a str,
    pub health: Health,
}

/// Order `targets` for one request (first: the one to try). Returns who chose the first.
pub fn order(
    strategy: &Strategy,
    targets: &mut [Target<'_>],
    ask: &Ask,
    rng: &mut impl Rng,
) -> Chosen {
    if targets.len() < 2 || !strategy.spreads() {
        // Failover: ejected targets are skipped at once by the caller, in order.
        return Chosen::Order;
    }
    // Ejected targets go last (kept: they are still the last resort's error), in order.
    targets.sort_by_key(|t| t.health.ejected);
    let healthy = targets.iter().take_while(|t| !t.health.ejected).count();
    if healthy < 2 {
        // Nothing to choose between: the healthy one (if any) is first.
        return Chosen::Order;
    }
    let live = &mut targets[..healthy];
    let chosen = match strategy.kind {
        StrategyKind::Failover => unreachable!("returned above"),
        StrategyKind::Weighted => {
            weighted(strategy, live);
            Chosen::Strategy(StrategyKind::Weighted)
        }
        StrategyKind::Latency => {
            latency(live, ask, rng);
            Chosen::Strategy(StrategyKind::Latency)
        }
        StrategyKind::Cost => {
            cost(strategy, live, ask);
            Chosen::Strategy(StrategyKind::Cost)
        }
    };
    match ask.session {
        Some(session) if strategy.affinity => {
            affinity(strategy, live, ask, session).unwrap_or(chosen)
        }
        _ => chosen,
    }
}

/// The next target of the weighted cycle that is among `live` first, the rest in order.
fn weighted(strategy: &Strategy, live: &mut [Target<'_>]) {
    let cycle = &strategy.cycle;
    if cycle.is_empty() {
        return;
    }
    // A slot of an ejected (or ineligible) target is passed over and the next one taken
    // from the shared cursor: each live target still gets its own slots, once per cycle, so
    // the others keep their proportions between them.
    for _ in 0..cycle.len() {
        let slot = strategy.next_in_cycle() % cycle.len() as u64;
        let position = usize::from(cycle[slot as usize]);
        if let Some(i) = live.iter().position(|t| t.position == position) {
            live[..=i].rotate_right(1);
            return;
        }
    }
}

fn latency_score(t: &Target<'_>, ask: &Ask) -> f64 {
    let estimate = t.stats.estimate(ask.input_tokens);
    estimate * f64::from(t.stats.inflight() + 1) * f64::from(t.health.failures + 1)
}

/// Power of two choices: the better of two random targets first, then the rest by score.
fn latency(live: &mut [Target<'_>], ask: &Ask, rng: &mut impl Rng) {
    let a = rng.gen_range(0..live.len());
    let mut b = rng.gen_range(0..live.len() - 1);
    if b >= a {
        b += 1;
    }
    let first = if latency_score(&live[b], ask) < latency_score(&live[a], ask) {
        b
    } else {
        a
    };
    live.swap(0, first);
    live[1..].sort_by(|x, y| latency_score(x, ask).total_cmp(&latency_score(y, ask)));
}

fn request_cost(t: &Target<'_>, ask: &Ask) -> u128 {
    let output = ask.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS);
    u128::from(t.price.0) * u128::from(ask.input_tokens.max(1))
        + u128::from(t.price.1) * u128::from(output)
}

/// Cheapest first; those within the spread of the cheapest take turns at the front.
fn cost(strategy: &Strategy, live: &mut [Target<'_>], ask: &Ask) {
    live.sort_by_key(|t| request_cost(t, ask));
    let cheapest = request_cost(&live[0], ask);
    let bound = cheapest + cheapest * u128::from(strategy.spread_percent) / 100;
    let close = live
        .iter()
        .take_while(|t| request_cost(t, ask) <= bound)
        .count();
    if close > 1 {
        let turn = (strategy.next_in_cycle() % close as u64) as usize;
        live[..close].rotate_left(turn);
    }
}

/// Weighted rendezvous hashing: each target scores `weight / -ln(u)` with `u` uniform from
/// the hash of (conversation, target id); the highest score wins. Every gateway of a fleet
/// computes the same order with no shared state, conversations spread in proportion to the
/// weights, and when a target is ejected its conversations move to their second choice only.
/// None when affinity does not decide (no target takes affinity traffic, or the one that
/// would is much slower than the best).
fn affinity(
    strategy: &Strategy,
    live: &mut [Target<'_>],
    ask: &Ask,
    session: Session,
) -> Option<Chosen> {
    let score = |t: &Target<'_>| {
        let weight = strategy.weights.get(t.position).copied().unwrap_or(1);
        if weight == 0 {
            return f64::NEG_INFINITY;
        }
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(t.id.as_bytes(), session.hash);
        // 53 bits into (0, 1): never 0, so the logarithm is finite.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        f64::from(weight) / -u.ln()
    };
    let (best, _) = live
        .iter()
        .enumerate()
        .map(|(i, t)| (i, score(t)))
        .filter(|(_, s)| s.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    if strategy.kind == StrategyKind::Latency {
        let fastest = live
            .iter()
            .map(|t| latency_score(t, ask))
            .fold(f64::INFINITY, f64::min);
        if fastest > 0.0 && latency_score(&live[best], ask) > fastest * AFFINITY_SLOWDOWN_LIMIT {
            return None;
        }
    }
    live[..=best].rotate_right(1);
    Some(Chosen::Affinity(session.source))
}

#[cfg(test)]
mod tests;
