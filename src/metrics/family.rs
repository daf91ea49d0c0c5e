//! The lock-free building blocks: counters, histograms, and label families.
//!
//! A [`Family`] maps a label set to its series through a copy-on-write map behind an
//! `ArcSwap`: recording an existing series is an atomic load, a hash lookup with borrowed
//! labels (no allocation) and an atomic add. Only the first request of a new label set takes
//! the family's mutex, to copy the map with the new series in; label sets come from the
//! configuration (lanes, models, providers) and from fixed lists (endpoints, codes), so that
//! happens a bounded number of times. [`MAX_SERIES`] bounds a family even so.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap};

/// Series a family may hold; past it new label sets are not recorded (and counted).
pub const MAX_SERIES: usize = 4096;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds: from 50 µs (the gateway's own overhead)
/// to 5 minutes (a long stream).
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

const BUCKETS_NS: [u64; 20] = {
    let mut ns = [0u64; 20];
    let mut i = 0;
    while i < 20 {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A latency histogram: one atomic per bucket (not cumulative; summed on render), the last
/// one for +Inf, and the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 21],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is +Inf, the total), and the sum in seconds.
    pub fn snapshot(&self) -> ([u64; 21], f64) {
        let mut out = [0u64; 21];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// Series keyed by label set `K`, looked up with a borrowed form `Q` of it.
pub struct Family<K, V> {
    series: ArcSwap<HashMap<K, Arc<V>>>,
    grow: Mutex<()>,
    overflow: AtomicU64,
}

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Family {
            series: ArcSwap::from_pointee(HashMap::new()),
            grow: Mutex::new(()),
            overflow: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Default> Family<K, V> {
    /// Run `f` on the series of `key`, creating it (with `own(key)`) the first time.
    pub fn with<Q>(&self, key: &Q, own: impl FnOnce(&Q) -> K, f: impl FnOnce(&V))
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        if let Some(series) = self.series.load().get(key) {
            return f(series);
        }
        let Ok(_grow) = self.grow.lock() else { return };
        let current = self.series.load_full();
        if let Some(series) = current.get(key) {
            return f(series);
        }
        if current.len() >= MAX_SERIES {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut next = (*current).clone();
        let series = Arc::new(V::default());
        next.insert(own(key), series.clone());
        self.series.store(Arc::new(next));
        f(&series)
    }

    /// Every series, sorted by label set for a stable rendering.
    pub fn sorted(&self) -> Vec<(K, Arc<V>)>
    where
        K: Ord,
    {
        let mut all: Vec<_> = self
            .series
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Recordings lost because the family was full.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40)); // first bucket (<= 50 µs)
        h.observe(Duration::from_micros(50)); // still the first: bounds are inclusive
        h.observe(Duration::from_millis(3)); // <= 5 ms
        h.observe(Duration::from_secs(3600)); // +Inf only
        let (b, sum) = h.snapshot();
        assert_eq!(b[0], 2);
        assert_eq!(b[5], 2, "2.5 ms bucket");
        assert_eq!(b[6], 3, "5 ms bucket");
        assert_eq!(b[19], 3, "300 s bucket");
        assert_eq!(b[20], 4, "+Inf is the count");
        assert!((sum - 3600.00309).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn a_family_creates_each_series_once_and_is_bounded() {
        let f: Family<String, Counter> = Family::default();
        for _ in 0..3 {
            f.with("a", |k: &str| k.to_string(), |c| c.add(1));
        }
        f.with("b", |k: &str| k.to_string(), |c| c.add(5));
        let all = f.sorted();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0.as_str(), all[0].1.get()), ("a", 3));
        assert_eq!((all[1].0.as_str(), all[1].1.get()), ("b", 5));
        for i in 0..MAX_SERIES + 10 {
            f.with(
                i.to_string().as_str(),
                |k: &str| k.to_string(),
                |c| c.add(1),
            );
        }
        assert_eq!(f.sorted().len(), MAX_SERIES);
        assert_eq!(f.overflow(), 12);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let f: Arc<Family<String, Counter>> = Arc::default();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let k = ["x", "y", "z"][(i + t) % 3];
                        f.with(k, |k: &str| k.to_string(), |c| c.add(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = f.sorted().iter().map(|(_, c)| c.get()).sum();
        assert_eq!(total, 40_000);
    }
}
