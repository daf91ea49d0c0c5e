use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

const IDS: [&str; 4] = [
    "flux-pinned-a",
    "flux-pinned-b",
    "flux-pinned-c",
    "flux-pinned-d",
];

/// `n` targets in chain order, all healthy, priced 1 pico-dollar per token.
fn targets(stats: &[TargetStats]) -> Vec<Target<'_>> {
    stats
        .iter()
        .enumerate()
        .map(|(i, s)| Target {
            model: i,
            position: i,
            stats: s,
            price: (1, 1),
            id: IDS[i],
            health: Health::default(),
        })
        .collect()
}

fn stats(n: usize) -> Vec<TargetStats> {
    (0..n).map(|_| TargetStats::default()).collect()
}

fn first(strategy: &Strategy, stats: &[TargetStats], ask: &Ask, rng: &mut StdRng) -> ModelId {
    first_with(strategy, &mut targets(stats), ask, rng)
}

fn first_with(
    strategy: &Strategy,
    targets: &mut [Target<'_>],
    ask: &Ask,
    rng: &mut StdRng,
) -> ModelId {
    order(strategy, targets, ask, rng);
    targets[0].model
}

fn shares(picks: impl Iterator<Item = ModelId>, n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    picks.for_each(|m| counts[m] += 1);
    counts
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn the_weighted_cycle_is_smooth_and_exact() {
    let cycle = wrr_cycle(&[5, 1, 1]);
    assert_eq!(&*cycle, &[0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(&*wrr_cycle(&[1, 0, 2]), &[2, 0, 2]);
    // Huge weights are scaled into a bounded cycle, proportions kept.
    assert_eq!(&*wrr_cycle(&[3_000_000, 1_000_000]), &[0, 0, 1, 0]);
    let cycle = wrr_cycle(&[3_000_001, 1_000_000]);
    assert!(cycle.len() <= 4_096);
    let share = cycle.iter().filter(|&&p| p == 0).count() as f64 / cycle.len() as f64;
    assert!((share - 0.75).abs() < 0.001, "{share}");
}

#[test]
fn weighted_splits_by_the_weights_and_skips_ejected_targets() {
    let s = Strategy::new(StrategyKind::Weighted, vec![5, 3, 2], 0, false);
    let st = stats(3);
    let mut r = rng();
    let counts = shares(
        (0..10_000).map(|_| first(&s, &st, &Ask::default(), &mut r)),
        3,
    );
    assert_eq!(counts, [5_000, 3_000, 2_000]);
    // The first ejected: the others keep their proportions between them, and it goes last.
    let mut counts = vec![0; 3];
    for _ in 0..10_000 {
        let mut t = targets(&st);
        t[0].health.ejected = true;
        order(&s, &mut t, &Ask::default(), &mut r);
        assert_eq!(t[2].model, 0, "the ejected target is the last resort");
        counts[t[0].model] += 1;
    }
    assert_eq!(counts[0], 0);
    assert_eq!(counts, [0, 6_000, 4_000]);
}

#[test]
fn failover_keeps_the_lane_order() {
    let s = Strategy::new(StrategyKind::Failover, vec![1, 1, 1], 0, true);
    let st = stats(3);
    let mut t = targets(&st);
    t[0].health.ejected = true;
    let ask = Ask {
        session: Some(Session {
            hash: 9,
            source: SessionSource::Key,
        }),
        ..Ask::default()
    };
    assert_eq!(order(&s, &mut t, &ask, &mut rng()), Chosen::Order);
    assert_eq!(t.iter().map(|t| t.model).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn latency_prefers_fast_targets_and_penalises_requests_in_flight() {
    let s = Strategy::new(StrategyKind::Latency, vec![1, 1, 1], 0, false);
    let st = stats(3);
    st[0].observe(Duration::from_millis(50), 0);
    st[1].observe(Duration::from_millis(2_000), 0);
    st[2].observe(Duration::from_millis(60), 0);
    let mut r = rng();
    let counts = shares(
        (0..3_000).map(|_| first(&s, &st, &Ask::default(), &mut r)),
        3,
    );
    assert_eq!(counts[1], 0, "the slow target is never first: {counts:?}");
    assert!(counts[0] > 900 && counts[2] > 900, "{counts:?}");
    // Requests in flight make a fast target look busy.
    let _held: Vec<_> = (0..100).map(|_| st[0].start()).collect();
    let counts = shares(
        (0..1_000).map(|_| first(&s, &st, &Ask::default(), &mut r)),
        3,
    );
    assert_eq!(counts[0], 0, "{counts:?}");
    drop(_held);
    assert_eq!(st[0].inflight(), 0);
}

#[test]
fn latency_is_per_unit_of_input_and_health_weighs_in() {
    let st = stats(2);
    // A long prompt's slow first byte is not slowness.
    st[0].observe(Duration::from_millis(1_100), 10_000);
    st[1].observe(Duration::from_millis(200), 0);
    let s = Strategy::new(StrategyKind::Latency, vec![1, 1], 0, false);
    let mut r = rng();
    for _ in 0..100 {
        assert_eq!(first(&s, &st, &Ask::default(), &mut r), 0);
    }
    // Failures not yet enough to eject still count against it.
    for _ in 0..100 {
        let mut t = targets(&st);
        t[0].health.failures = 2;
        assert_eq!(first_with(&s, &mut t, &Ask::default(), &mut r), 1);
    }
}

#[test]
fn a_slow_estimate_decays_when_unrefreshed_and_recovers_at_once() {
    let slow = TargetStats::default();
    slow.observe_at(Duration::from_millis(2_000), 0, 1_000);
    let fast = TargetStats::default();
    // Fresh: the slow one is 40 times slower.
    assert!(slow.estimate_at(0, 2_000) > 30.0 * 50e6);
    // Unrefreshed for 20 s: below a fast target's 50 ms, so it is tried again.
    assert!(
        slow.estimate_at(0, 21_000) < 50e6,
        "{}",
        slow.estimate_at(0, 21_000)
    );
    // One fast answer after a long silence brings it back near its new speed; a slower
    // answer raises it at once.
    slow.observe_at(Duration::from_millis(50), 0, 31_000);
    assert!(slow.estimate_at(0, 31_000) < 100e6);
    slow.observe_at(Duration::from_millis(500), 0, 31_010);
    assert!(slow.estimate_at(0, 31_010) >= 500e6);
    // A reload keeps what was learned.
    fast.inherit(&slow);
    assert_eq!(fast.estimate_at(0, 31_010), slow.estimate_at(0, 31_010));
}

#[test]
fn cost_takes_the_cheapest_and_spreads_within_the_tolerance() {
    let st = stats(4);
    let mut t = targets(&st);
    // Per token: 100, 105 (within 10%), 200, 104.
    for (t, p) in t.iter_mut().zip([100, 105, 200, 104]) {
        t.price = (p, p);
    }
    let s = Strategy::new(StrategyKind::Cost, vec![1; 4], 10, false);
    let mut r = rng();
    let mut counts = vec![0; 4];
    for _ in 0..3_000 {
        let mut t: Vec<Target<'_>> = t.iter().map(|x| Target { id: x.id, ..*x }).collect();
        order(&s, &mut t, &Ask::default(), &mut r);
        counts[t[0].model] += 1;
        assert_eq!(t[3].model, 2, "the expensive one is the last fallback");
    }
    assert_eq!(counts, [1_000, 1_000, 0, 1_000]);
    // No spread: always the cheapest.
    let s = Strategy::new(StrategyKind::Cost, vec![1; 4], 0, false);
    let mut tt: Vec<Target<'_>> = t.iter().map(|x| Target { ..*x }).collect();
    assert_eq!(first_with(&s, &mut tt, &Ask::default(), &mut r), 0);
}

fn session(hash: u64) -> Ask {
    Ask {
        session: Some(Session {
            hash,
            source: SessionSource::Prefix,
        }),
        ..Ask::default()
    }
}

#[test]
fn affinity_keeps_a_conversation_on_one_target_on_every_gateway() {
    let st = stats(3);
    let mut r = rng();
    for hash in 0..200u64 {
        // Two gateways: separate strategy state, the same answer every time.
        let a = Strategy::new(StrategyKind::Weighted, vec![1, 1, 1], 0, true);
        let b = Strategy::new(StrategyKind::Weighted, vec![1, 1, 1], 0, true);
        let there = first(&a, &st, &session(hash), &mut r);
        for _ in 0..5 {
            assert_eq!(first(&a, &st, &session(hash), &mut r), there);
            assert_eq!(first(&b, &st, &session(hash), &mut r), there);
        }
        let mut t = targets(&st);
        assert_eq!(
            order(&a, &mut t, &session(hash), &mut r),
            Chosen::Affinity(SessionSource::Prefix)
        );
        // Its target ejected: the conversation moves, and only it.
        let mut t = targets(&st);
        t[there].health.ejected = true;
        let moved = first_with(&a, &mut t, &session(hash), &mut r);
        assert_ne!(moved, there);
        let mut t = targets(&st);
        t[(there + 1) % 3].health.ejected = true;
        t[(there + 2) % 3].health.ejected = true;
        assert_eq!(first_with(&a, &mut t, &session(hash), &mut r), there);
    }
}

#[test]
fn affinity_spreads_conversations_by_weight_and_never_to_weight_zero() {
    let st = stats(3);
    let s = Strategy::new(StrategyKind::Weighted, vec![6, 3, 0], 0, true);
    let mut r = rng();
    let n = 20_000u64;
    let counts = shares(
        (0..n).map(|i| {
            first(
                &s,
                &st,
                &session(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())),
                &mut r,
            )
        }),
        3,
    );
    assert_eq!(counts[2], 0);
    let share = counts[0] as f64 / n as f64;
    assert!((share - 2.0 / 3.0).abs() < 0.02, "{counts:?}");
}

#[test]
fn affinity_yields_to_a_target_much_slower_than_the_best() {
    let st = stats(2);
    let s = Strategy::new(StrategyKind::Latency, vec![1, 1], 0, true);
    let mut r = rng();
    let there = first(&s, &st, &session(42), &mut r);
    st[there].observe(Duration::from_millis(2_000), 0);
    st[1 - there].observe(Duration::from_millis(50), 0);
    let mut t = targets(&st);
    assert_eq!(
        order(&s, &mut t, &session(42), &mut r),
        Chosen::Strategy(StrategyKind::Latency)
    );
    assert_eq!(t[0].model, 1 - there);
    // Merely slower (under 4 times): the cache wins.
    st[there].observe_at(Duration::from_millis(100), 0, clock_ms() + 60_000);
    let mut t = targets(&st);
    st[1 - there].observe_at(Duration::from_millis(50), 0, clock_ms() + 60_000);
    order(&s, &mut t, &session(42), &mut r);
    assert_eq!(t[0].model, there);
}

#[test]
fn with_one_healthy_target_every_strategy_puts_it_first() {
    let st = stats(3);
    let mut r = rng();
    for kind in [
        StrategyKind::Weighted,
        StrategyKind::Latency,
        StrategyKind::Cost,
    ] {
        for affinity in [false, true] {
            let s = Strategy::new(kind, vec![1, 1, 1], 10, affinity);
            let mut t = targets(&st);
            t[0].health.ejected = true;
            t[2].health.ejected = true;
            assert_eq!(order(&s, &mut t, &session(3), &mut r), Chosen::Order);
            assert_eq!(t[0].model, 1, "{kind:?}");
            let mut t = targets(&st);
            t.iter_mut().for_each(|t| t.health.ejected = true);
            order(&s, &mut t, &session(3), &mut r);
            assert_eq!(t.iter().map(|t| t.model).collect::<Vec<_>>(), [0, 1, 2]);
        }
    }
}
