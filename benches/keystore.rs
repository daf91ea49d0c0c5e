//! The account key store at scale (the accounts issue's targets), timed here and not in tests:
//! with N keys (default 1,000,000) over N/10 accounts,
//! - start-up: open the SQLite file, read every row and build the index;
//! - the RSS that start-up adds (the index, SQLite's page cache, allocator slack);
//! - lookup by digest (hit and miss) and authentication (SHA-256 + lookup + status), per
//!   request, over all keys in random order;
//! - create-key and revoke-key latency (row + feed entry committed, applied to the index);
//! - creations per second sustained for 5 s;
//! - how long another process takes to read 2,000 changes from the feed.
//!
//! `cargo bench --bench keystore` (`KEYSTORE_KEYS=100000` for a quick pass). The rows are
//! written first by a bulk import; the measurements run in a fresh child process, so the
//! memory of the setup does not hide in the start-up figure.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fluxrouter::accounts::{
    digest_of, AccountRow, Directory, KeyKind, KeyLimits, KeyRow, KeyStatus, Store,
};
use fluxrouter::units::{Usd, PICOS_PER_USD};
use rand::seq::SliceRandom;
use rand::SeedableRng;

// The allocator the gateway binary runs with (src/main.rs).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CHILD: &str = "KEYSTORE_CHILD_DIR";
const OPS: usize = 2_000;
const SUSTAIN: Duration = Duration::from_secs(5);

fn keys_wanted() -> usize {
    std::env::var("KEYSTORE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// The bench's i-th secret: deterministic, so the child can present every key again.
fn secret(i: usize) -> String {
    format!("sk-{i:0>40}")
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// This thread's CPU time (user + system, from /proc, 10 ms ticks): unlike the wall clock,
/// not inflated when other work on the machine takes the core away.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // After the command name's ")": state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Run `f` (which does `ops` operations) and give "wall / CPU ns per op".
fn per_op(ops: usize, f: impl FnOnce()) -> String {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    f();
    let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
    format!(
        "{:.0} / {:.0} ns",
        wall.as_nanos() as f64 / ops as f64,
        cpu.as_nanos() as f64 / ops as f64
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn setup(path: &Path, keys: usize) {
    let accounts = (keys / 10).max(1);
    let t = Instant::now();
    let mut store = Store::open(path).unwrap();
    let rows: Vec<AccountRow> = (0..accounts)
        .map(|i| AccountRow {
            id: format!("acct_{i:012}"),
            name: format!("account-{i}"),
            plan: if i % 3 == 0 { "free" } else { "payg" }.into(),
            payment_method: i % 2 == 0,
            on_hold: false,
            ceiling_usd: (i % 4 == 0).then_some(Usd(100 * PICOS_PER_USD)),
            models: (i % 50 == 0).then(|| vec!["gpt-4o-mini".into(), "claude-haiku".into()]),
            created_at: 1_800_000_000,
        })
        .collect();
    store.import(&rows, &[]).unwrap();
    const CHUNK: usize = 100_000;
    for start in (0..keys).step_by(CHUNK) {
        let chunk: Vec<KeyRow> = (start..keys.min(start + CHUNK))
            .map(|i| KeyRow {
                id: format!("key_{i:012}"),
                account_id: format!("acct_{:012}", i % accounts),
                name: format!("key-{i}"),
                sha256: digest_of(&secret(i)),
                kind: KeyKind::Inference,
                status: KeyStatus::Active,
                expires_at: (i % 10 == 0).then_some(4_000_000_000),
                revoke_at_expiry: false,
                created_at: 1_800_000_000,
                monthly_limit_usd: (i % 10 == 0).then_some(Usd(5 * PICOS_PER_USD)),
                models: None,
                last_used_at: None,
            })
            .collect();
        store.import(&[], &chunk).unwrap();
    }
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "setup: {keys} keys over {accounts} accounts imported in {:.1} s ({:.0} MiB file)",
        t.elapsed().as_secs_f64(),
        mib(size)
    );
}

fn measure(path: &Path, keys: usize) {
    let mut table: Vec<(String, String)> = Vec::new();
    let mut row = |what: &str, value: String| table.push((what.to_string(), value));

    // Start-up.
    let rss0 = rss_bytes();
    let t = Instant::now();
    let dir = Directory::open(path).unwrap();
    let startup = t.elapsed();
    let rss1 = rss_bytes();
    assert_eq!(dir.index().len(), keys);
    row(
        "start-up (open + load + index)",
        format!("{:.2} s", startup.as_secs_f64()),
    );
    row(
        "RSS added by start-up",
        format!(
            "{:.0} MiB ({:.0} B/key)",
            mib(rss1 - rss0),
            (rss1 - rss0) as f64 / keys as f64
        ),
    );

    // Lookups and authentication over every key, in random order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut order: Vec<usize> = (0..keys).collect();
    order.shuffle(&mut rng);
    let hits: Vec<[u8; 32]> = order.iter().map(|&i| digest_of(&secret(i))).collect();
    let misses: Vec<[u8; 32]> = order
        .iter()
        .map(|&i| digest_of(&format!("sk-miss{i}")))
        .collect();
    let index = dir.index();
    let mut found = 0;
    let t = per_op(keys, || {
        found = hits
            .iter()
            .filter(|d| black_box(index.lookup(d)).is_some())
            .count()
    });
    row("lookup, hit, every key in random order (wall / CPU)", t);
    assert_eq!(found, keys);
    let t = per_op(keys, || {
        found = misses
            .iter()
            .filter(|d| black_box(index.lookup(d)).is_some())
            .count()
    });
    row("lookup, miss", t);
    assert_eq!(found, 0);
    drop((hits, misses));
    let secrets: Vec<String> = order.iter().map(|&i| secret(i)).collect();
    let now = 1_900_000_000;
    let t = per_op(keys, || {
        found = secrets
            .iter()
            .filter(|s| black_box(index.authenticate(s, now)).is_ok())
            .count()
    });
    row("authenticate (SHA-256 + lookup + status), every key", t);
    assert_eq!(found, keys);
    // Traffic from 10,000 keys at a time (what is in use in a minute), cached as they are.
    let hot = &secrets[..keys.min(10_000)];
    let rounds = keys / hot.len();
    let t = per_op(rounds * hot.len(), || {
        for _ in 0..rounds {
            for s in hot {
                black_box(index.authenticate(s, now)).ok();
            }
        }
    });
    row("authenticate, 10,000 keys in use", t);
    // Both cores at once, every key, in opposite orders.
    let results: Vec<String> = std::thread::scope(|s| {
        let forward = s.spawn(|| {
            per_op(keys, || {
                for secret in &secrets {
                    black_box(index.authenticate(secret, now)).ok();
                }
            })
        });
        let backward = s.spawn(|| {
            per_op(keys, || {
                for secret in secrets.iter().rev() {
                    black_box(index.authenticate(secret, now)).ok();
                }
            })
        });
        vec![forward.join().unwrap(), backward.join().unwrap()]
    });
    row(
        "authenticate, 2 threads, every key (each thread)",
        results.join(", "),
    );
    drop((secrets, index));

    // Create and revoke, one at a time, with the WAL checkpointed in the background as
    // `Directory::spawn_refresher` does.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                dir.checkpoint().unwrap();
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        writes(&dir, &mut rng, path, &mut row);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });

    println!("\n| {keys} keys | measured |\n| --- | --- |");
    for (what, value) in table {
        println!("| {what} | {value} |");
    }
}

fn writes(
    dir: &Directory,
    rng: &mut rand::rngs::StdRng,
    path: &Path,
    row: &mut impl FnMut(&str, String),
) {
    let accounts: Vec<String> = dir
        .index()
        .accounts()
        .iter()
        .map(|a| a.id.to_string())
        .collect();
    let feed_start = dir.cursor();
    let mut created = Vec::with_capacity(OPS);
    let mut lat = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let account = accounts.choose(rng).unwrap();
        let t = Instant::now();
        let (secret, key) = dir
            .create_key(
                account,
                &format!("new-{i}"),
                KeyKind::Inference,
                KeyLimits::default(),
            )
            .unwrap();
        lat.push(t.elapsed());
        assert!(dir.authenticate(&secret, 1_900_000_000).is_ok());
        created.push((secret, key.id));
    }
    lat.sort();
    row(
        "create key p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        ),
    );
    lat.clear();
    for (secret, id) in &created {
        let t = Instant::now();
        dir.revoke_key(id).unwrap();
        lat.push(t.elapsed());
        assert!(dir.authenticate(secret, 1_900_000_000).is_err());
    }
    lat.sort();
    row(
        "revoke key p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        ),
    );

    // Another process catching up with those 4,000 writes (2,000 keys, read as rows).
    let mut other = Store::open(path).unwrap();
    let t = Instant::now();
    match other.changes_since(feed_start).unwrap() {
        fluxrouter::accounts::Feed::Changes { changes, .. } => {
            assert_eq!(changes.len(), OPS);
            row(
                "feed: read 4,000 changes (2,000 rows)",
                format!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3),
            );
        }
        fluxrouter::accounts::Feed::Reload => panic!("the feed should reach back"),
    }

    // Sustained creation.
    let t = Instant::now();
    let mut n = 0usize;
    let mut worst = Duration::ZERO;
    while t.elapsed() < SUSTAIN {
        let account = accounts.choose(rng).unwrap();
        let one = Instant::now();
        dir.create_key(
            account,
            &format!("sustained-{n}"),
            KeyKind::Inference,
            KeyLimits::default(),
        )
        .unwrap();
        worst = worst.max(one.elapsed());
        n += 1;
    }
    row(
        "creations per second, sustained 5 s",
        format!(
            "{:.0} /s (slowest {:.1} ms)",
            n as f64 / t.elapsed().as_secs_f64(),
            worst.as_secs_f64() * 1e3
        ),
    );
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD) {
        measure(&PathBuf::from(dir).join("accounts.sqlite"), keys_wanted());
        return;
    }
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) does nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys = keys_wanted();
    let tmp = tempfile::tempdir().unwrap();
    setup(&tmp.path().join("accounts.sqlite"), keys);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, tmp.path())
        .status()
        .unwrap();
    assert!(status.success(), "measuring failed: {status}");
}
