use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::units::hour_of;

/// 2024-04-01T00:00:00Z.
const APRIL_2024: u64 = 1_711_929_600;
const HOUR: u64 = 3600;

fn clock_april_2024() -> u64 {
    APRIL_2024 + 30 * 60
}

fn clock_may_2024() -> u64 {
    Month::new(2024, 5).map_or(0, Month::start_unix) + 10
}

fn options(clock: fn() -> u64) -> LedgerOptions {
    LedgerOptions {
        clock,
        ..LedgerOptions::default()
    }
}

fn entry<'a>(at: u64, key: &'a str, lane: &'a str, model: &'a str, cost: u64) -> Entry<'a> {
    Entry {
        at_unix: at,
        key_id: key,
        account_id: "",
        lane,
        model,
        request_id: "req",
        cost: Usd(cost),
        input_tokens: 100,
        cached_input_tokens: 40,
        output_tokens: 10,
    }
}

fn month(s: &str) -> Month {
    s.parse().unwrap()
}

#[test]
fn spend_is_split_at_utc_month_and_hour_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let ledger =
        EmbeddedLedger::open(&dir.path().join("l.sqlite"), options(clock_april_2024)).unwrap();
    ledger.record(&entry(APRIL_2024 - 1, "key_a", "fast", "m1", 1));
    ledger.record(&entry(APRIL_2024, "key_a", "fast", "m1", 10));
    ledger.record(&entry(APRIL_2024 + HOUR - 1, "key_a", "fast", "m2", 100));
    ledger.record(&entry(APRIL_2024 + HOUR, "key_a", "slow", "m1", 1000));
    ledger.record(&entry(APRIL_2024, "key_b", "fast", "m1", 7));
    let spend = |key, at| {
        let s = ledger.spend(key, at);
        (s.month.0, s.hour.0)
    };
    assert_eq!(spend("key_a", APRIL_2024 - 1800), (1, 1));
    assert_eq!(spend("key_a", APRIL_2024), (1110, 110));
    assert_eq!(spend("key_a", APRIL_2024 + HOUR - 1), (1110, 110));
    assert_eq!(spend("key_a", APRIL_2024 + HOUR), (1110, 1000));
    assert_eq!(spend("key_a", APRIL_2024 + 2 * HOUR), (1110, 0));
    assert_eq!(spend("key_a", month("2024-05").start_unix()), (0, 0));
    assert_eq!(spend("key_b", APRIL_2024 + 1), (7, 7));
    assert_eq!(spend("key_c", APRIL_2024), (0, 0));

    // The same totals once committed, read by another connection.
    ledger.flush().unwrap();
    let reader = LedgerReader::open(ledger.path()).unwrap();
    let committed = reader
        .spend("key_a", month("2024-04"), hour_of(APRIL_2024))
        .unwrap();
    assert_eq!((committed.month.0, committed.hour.0), (1110, 110));
    let march = reader
        .spend("key_a", month("2024-03"), hour_of(APRIL_2024 - 1))
        .unwrap();
    assert_eq!((march.month.0, march.hour.0), (1, 1));

    // By UTC day: the month's days only, oldest first, one key's or everyone's.
    ledger.record(&entry(
        APRIL_2024 + 86_400 + 5,
        "key_a",
        "fast",
        "m1",
        20_000,
    ));
    ledger.flush().unwrap();
    let day = |d: &str, requests, cost| DayRow {
        day: d.into(),
        requests,
        cost: Usd(cost),
    };
    assert_eq!(
        reader.days(month("2024-04"), Some("key_a")).unwrap(),
        vec![day("2024-04-01", 3, 1110), day("2024-04-02", 1, 20_000)]
    );
    assert_eq!(
        reader.days(month("2024-04"), None).unwrap(),
        vec![day("2024-04-01", 4, 1117), day("2024-04-02", 1, 20_000)]
    );
    assert_eq!(
        reader.days(month("2024-03"), None).unwrap(),
        vec![day("2024-03-31", 1, 1)]
    );
}

#[test]
fn a_restart_reloads_the_committed_totals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("l.sqlite");
    {
        let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
        ledger.record(&entry(APRIL_2024 - 10, "key_a", "fast", "m1", 5)); // March
        ledger.record(&entry(APRIL_2024 + 10, "key_a", "fast", "m1", 20));
        ledger.record(&entry(APRIL_2024 + 20, "key_a", "fast", "m1", 30));
        ledger.record(&entry(APRIL_2024 + 20, "key_b", "fast", "m1", 1));
        // Dropped without an explicit close: Drop closes, which commits.
    }
    let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
    assert_eq!(ledger.spend("key_a", APRIL_2024 + 60).month.0, 50);
    assert_eq!(ledger.spend("key_a", APRIL_2024 + 60).hour.0, 50);
    assert_eq!(ledger.spend("key_a", APRIL_2024 - 60).month.0, 5);
    assert_eq!(ledger.spend("key_b", APRIL_2024 + 60).month.0, 1);
    ledger.record(&entry(APRIL_2024 + 30, "key_a", "fast", "m1", 100));
    assert_eq!(ledger.spend("key_a", APRIL_2024 + 60).month.0, 150);
    ledger.close().unwrap();
    assert!(ledger.flush().is_err(), "closed");

    // A month later, April is history: in reports, not in the totals.
    let ledger = EmbeddedLedger::open(&path, options(clock_may_2024)).unwrap();
    assert_eq!(ledger.spend("key_a", clock_may_2024()), Spend::default());
    let april = ledger.report(month("2024-04"), Some("key_a")).unwrap();
    assert_eq!(april.len(), 1);
    assert_eq!((april[0].requests, april[0].cost.0), (3, 150));
}

#[test]
fn an_account_counts_every_key_s_spend_and_keeps_it_over_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let of = |key, cost, at| Entry {
        account_id: "acct_team",
        ..entry(at, key, "fast", "m1", cost)
    };
    {
        let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
        ledger.record(&of("key_a", 20, APRIL_2024 + 10));
        ledger.record(&of("key_b", 30, APRIL_2024 + 20));
        ledger.record(&of("key_c", 5, APRIL_2024 - 10)); // March
        assert_eq!(ledger.spend("acct_team", APRIL_2024 + 60).month.0, 50);
        assert_eq!(ledger.spend("key_a", APRIL_2024 + 60).month.0, 20);
    }
    let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
    assert_eq!(ledger.spend("acct_team", APRIL_2024 + 60).month.0, 50);
    assert_eq!(ledger.spend("acct_team", APRIL_2024 + 60).hour.0, 50);
    assert_eq!(ledger.spend("acct_team", APRIL_2024 - 60).month.0, 5);
    assert_eq!(ledger.spend("key_b", APRIL_2024 + 60).month.0, 30);
    // Reports stay per key: the account's totals are not a key of their own.
    let april = ledger.report(month("2024-04"), None).unwrap();
    let mut keys: Vec<_> = april.iter().map(|r| r.key_id.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["key_a", "key_b"]);
}

/// A ledger written before accounts (schema 1): on open each key's totals become its own
/// account's (`acct_` + the key id's random part), so the month's spend carries over.
#[test]
fn a_ledger_from_before_accounts_carries_each_key_s_spend_to_its_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    {
        let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
        ledger.record(&entry(APRIL_2024 + 10, "key_old1", "fast", "m1", 70));
        ledger.record(&entry(APRIL_2024 + 20, "key_old2", "fast", "m1", 3));
        ledger.close().unwrap();
    }
    {
        // Back to what a schema-1 gateway left: no account tables, version 1.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE account_month; DROP TABLE account_hour; DROP TABLE account_day;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
    assert_eq!(ledger.spend("acct_old1", APRIL_2024 + 60).month.0, 70);
    assert_eq!(ledger.spend("acct_old1", APRIL_2024 + 60).hour.0, 70);
    assert_eq!(ledger.spend("acct_old2", APRIL_2024 + 60).month.0, 3);
    assert_eq!(ledger.spend("key_old1", APRIL_2024 + 60).month.0, 70);
    // New spend of the key adds to its account's carried-over total.
    ledger.record(&Entry {
        account_id: "acct_old1",
        ..entry(APRIL_2024 + 30, "key_old1", "fast", "m1", 5)
    });
    ledger.close().unwrap();
    let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
    assert_eq!(ledger.spend("acct_old1", APRIL_2024 + 60).month.0, 75);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

/// The file deleted while the ledger runs (with its WAL and shared-memory files, as `rm
/// ledger.sqlite*` does, or alone): the writer puts it back whole, a report taken before the
/// deletion is not served from the deleted file, and a restart finds every month's spend.
#[test]
fn a_ledger_file_deleted_while_running_is_put_back_whole() {
    for with_sidecars in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
        ledger.record(&entry(APRIL_2024 - 10, "key_a", "fast", "m1", 5)); // March
        ledger.record(&entry(APRIL_2024 + 10, "key_a", "fast", "m1", 20));
        ledger.flush().unwrap();
        // A report opens (and keeps) a reader on the file.
        assert_eq!(ledger.report(month("2024-04"), None).unwrap().len(), 1);

        std::fs::remove_file(&path).unwrap();
        if with_sidecars {
            for suffix in ["-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
        ledger.record(&entry(APRIL_2024 + 20, "key_a", "daily", "m2", 300));
        ledger.flush().unwrap();
        assert!(
            path.exists(),
            "recreated (sidecars deleted: {with_sidecars})"
        );
        assert_eq!(ledger.stats().recreated, 1);
        assert_eq!(ledger.spend("key_a", APRIL_2024 + 60).month.0, 320);
        // Commits go on in the new file, and reports read it.
        ledger.record(&entry(APRIL_2024 + 30, "key_b", "fast", "m1", 7));
        ledger.flush().unwrap();
        let april = ledger.report(month("2024-04"), None).unwrap();
        let total: u64 = april.iter().map(|r| r.cost.0).sum();
        assert_eq!((april.len(), total), (3, 327));
        ledger.close().unwrap();

        // Another process (`fluxrouter usage`) and a restart see everything, March included.
        let reader = LedgerReader::open(&path).unwrap();
        let march = reader.report(month("2024-03"), None).unwrap();
        assert_eq!(march.iter().map(|r| r.cost.0).sum::<u64>(), 5);
        let ledger = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
        assert_eq!(ledger.spend("key_a", APRIL_2024 + 60).month.0, 320);
        assert_eq!(ledger.spend("key_b", APRIL_2024 + 60).month.0, 7);
        assert_eq!(ledger.stats().recreated, 0);
    }
}

#[test]
fn reports_group_by_key_lane_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = EmbeddedLedger::open(
        &dir.path().join("l.sqlite"),
        LedgerOptions {
            keep_entries: 5,
            ..options(clock_april_2024)
        },
    )
    .unwrap();
    let at = APRIL_2024 + 100;
    for (key, lane, model, cost) in [
        ("key_b", "fast", "gpt-x", 3),
        ("key_a", "slow", "claude-y", 5),
        ("key_a", "fast", "gpt-x", 7),
        ("key_a", "fast", "gpt-x", 11),
        ("key_a", "fast", "gpt-x", 13),
    ] {
        ledger.record(&entry(at, key, lane, model, cost));
    }
    // The same group across two hours and two batches is still one row.
    ledger.flush().unwrap();
    ledger.record(&Entry {
        request_id: "req-last",
        output_tokens: 1,
        ..entry(at + 2 * HOUR, "key_a", "fast", "gpt-x", 17)
    });
    ledger.record(&entry(APRIL_2024 - 1, "key_a", "fast", "gpt-x", 1000)); // March
    ledger.flush().unwrap();

    let rows = ledger.report(month("2024-04"), None).unwrap();
    let shown: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.key_id.as_str(),
                r.lane.as_str(),
                r.model.as_str(),
                r.requests,
                r.cost.0,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("key_a", "fast", "gpt-x", 4, 48),
            ("key_a", "slow", "claude-y", 1, 5),
            ("key_b", "fast", "gpt-x", 1, 3),
        ]
    );
    assert_eq!(
        (
            rows[0].input_tokens,
            rows[0].cached_input_tokens,
            rows[0].output_tokens
        ),
        (400, 160, 31)
    );
    let only_b = ledger.report(month("2024-04"), Some("key_b")).unwrap();
    assert_eq!(only_b, vec![rows[2].clone()]);
    assert_eq!(
        ledger.report(month("2024-03"), None).unwrap()[0].cost.0,
        1000
    );
    assert!(ledger.report(month("2024-06"), None).unwrap().is_empty());

    let reader = LedgerReader::open(ledger.path()).unwrap();
    assert_eq!(
        reader.months().unwrap(),
        vec![month("2024-04"), month("2024-03")]
    );
    // The entries table keeps the newest 5 requests.
    let recent = reader.recent(None, 100).unwrap();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[1].request_id, "req-last");
    assert_eq!(recent[1].cost.0, 17);
    assert_eq!(reader.recent(Some("key_b"), 10).unwrap().len(), 0);

    let json = serde_json::to_value(&rows[2]).unwrap();
    assert_eq!(json["cost"], "0.000000000003");
}

#[test]
fn concurrent_records_add_up_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let ledger = Arc::new(
        EmbeddedLedger::open(
            &path,
            LedgerOptions {
                flush_interval: Duration::from_millis(5),
                ..options(clock_april_2024)
            },
        )
        .unwrap(),
    );
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 5_000;
    let keys = ["key_0", "key_1", "key_2", "key_3", "key_4"];
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            // As the gateway holds it: behind the trait.
            let ledger: Arc<dyn Ledger> = ledger.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let key = keys[(i % 5) as usize];
                    let lane = if i % 2 == 0 { "fast" } else { "slow" };
                    let at = APRIL_2024 + (i % 3) * HOUR;
                    ledger.record(&entry(at, key, lane, "m", 1 + t));
                    if i % 1000 == 0 {
                        let _ = ledger.spend(key, at);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Each key got PER_THREAD / 5 requests from each thread t at cost 1 + t.
    let per_key: u64 = (0..THREADS).map(|t| (PER_THREAD / 5) * (1 + t)).sum();
    for key in keys {
        assert_eq!(ledger.spend(key, APRIL_2024).month.0, per_key);
    }
    ledger.flush().unwrap();
    let rows = ledger.report(month("2024-04"), None).unwrap();
    assert_eq!(rows.iter().map(|r| r.cost.0).sum::<u64>(), 5 * per_key);
    assert_eq!(
        rows.iter().map(|r| r.requests).sum::<u64>(),
        THREADS * PER_THREAD
    );
    assert_eq!(ledger.stats().committed_requests, THREADS * PER_THREAD);
    let hourly: u64 = (0..3)
        .map(|h| ledger.spend("key_0", APRIL_2024 + h * HOUR).hour.0)
        .sum();
    assert_eq!(hourly, per_key);
    drop(ledger);
    let reopened = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
    assert_eq!(reopened.spend("key_3", APRIL_2024).month.0, per_key);
}

#[test]
fn a_full_queue_drops_entry_detail_never_spend() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = EmbeddedLedger::open(
        &dir.path().join("l.sqlite"),
        LedgerOptions {
            flush_interval: Duration::from_secs(60),
            max_queued_entries: 64,
            ..options(clock_april_2024)
        },
    )
    .unwrap();
    for i in 0..1000 {
        ledger.record(&entry(APRIL_2024 + i, "key_a", "fast", "m", 3));
    }
    assert!(ledger.stats().dropped_entries >= 1000 - 64);
    ledger.flush().unwrap();
    let rows = ledger.report(month("2024-04"), None).unwrap();
    assert_eq!((rows[0].requests, rows[0].cost.0), (1000, 3000));
    assert_eq!(ledger.spend("key_a", APRIL_2024).month.0, 3000);
}

#[test]
fn another_process_commits_are_followed() {
    // Two ledgers on one file stand for the old and new process of an upgrade.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let old = EmbeddedLedger::open(&path, options(clock_april_2024)).unwrap();
    old.record(&entry(APRIL_2024 + 1, "key_a", "fast", "m", 5));
    old.flush().unwrap();
    let new = EmbeddedLedger::open(
        &path,
        LedgerOptions {
            flush_interval: Duration::from_secs(60),
            ..options(clock_april_2024)
        },
    )
    .unwrap();
    assert_eq!(new.spend("key_a", APRIL_2024 + 1).month.0, 5);
    // The old process serves its last requests; the new one serves its first.
    old.record(&entry(APRIL_2024 + 2, "key_a", "fast", "m", 100));
    old.record(&entry(APRIL_2024 + 2, "key_z", "fast", "m", 1));
    new.record(&entry(APRIL_2024 + 3, "key_a", "fast", "m", 20));
    old.close().unwrap();
    // The new process's writer sees the other commit and reloads, keeping its own pending.
    assert_eq!(new.spend("key_a", APRIL_2024 + 3).month.0, 25);
    let mut followed = false;
    for _ in 0..2 {
        // The first cycle commits `new`'s own batch; either cycle notices `old`'s commits.
        new.flush().unwrap();
        followed = new.spend("key_a", APRIL_2024 + 3).month.0 == 125;
    }
    assert!(followed, "{:?}", new.spend("key_a", APRIL_2024 + 3));
    assert_eq!(new.spend("key_a", APRIL_2024 + 3).hour.0, 125);
    assert_eq!(new.spend("key_z", APRIL_2024 + 3).month.0, 1);
}

#[test]
fn a_failed_commit_keeps_its_spend_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let ledger = EmbeddedLedger::open(
        &path,
        LedgerOptions {
            flush_interval: Duration::from_millis(5),
            busy_timeout: Duration::from_millis(20),
            ..options(clock_april_2024)
        },
    )
    .unwrap();
    // Another process holds the write lock.
    let mut other = rusqlite::Connection::open(&path).unwrap();
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    for cost in [1, 2, 3] {
        ledger.record(&entry(APRIL_2024, "key_a", "fast", "m", cost));
    }
    assert!(ledger.flush().is_err());
    assert!(ledger.stats().commit_errors >= 1);
    assert_eq!(ledger.spend("key_a", APRIL_2024).month.0, 6);
    ledger.record(&entry(APRIL_2024, "key_a", "fast", "m", 4));
    lock.rollback().unwrap();
    ledger.flush().unwrap();
    let rows = ledger.report(month("2024-04"), None).unwrap();
    assert_eq!((rows[0].requests, rows[0].cost.0), (4, 10));
    assert_eq!(ledger.spend("key_a", APRIL_2024).month.0, 10);
    let reader = LedgerReader::open(&path).unwrap();
    assert_eq!(reader.recent(None, 10).unwrap().len(), 4);
}

/// Unix microseconds, comparable across processes on one machine.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

const CHILD_ENV: &str = "FLUX_LEDGER_KILL_CHILD";
/// The child records bursts of this many requests...
const CHILD_BURST: u64 = 10;
/// ...this many times a second: 20,000 requests a second.
const CHILD_BURSTS_HZ: u64 = 2_000;

/// Not a test by itself: the child process of the SIGKILL test. It records bursts of
/// requests of 1 pico-dollar each and prints `LEDGER_REC <n> <unix µs>` after each burst
/// (n: requests recorded so far), until killed (or 20 s, should its parent die first).
#[test]
fn sigkill_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    use std::io::Write;
    let ledger = EmbeddedLedger::open(Path::new(&path), LedgerOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let period = Duration::from_micros(1_000_000 / CHILD_BURSTS_HZ);
    let mut n = 0u64;
    for burst in 1u32.. {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        for _ in 0..CHILD_BURST {
            n += 1;
            ledger.record(&Entry {
                at_unix: unix_micros() / 1_000_000,
                key_id: "key_kill",
                account_id: "acct_kill",
                lane: "fast",
                model: "m",
                request_id: "req_0123456789abcdef",
                cost: Usd(1),
                input_tokens: 1000,
                cached_input_tokens: 0,
                output_tokens: 100,
            });
        }
        let _ = writeln!(out, "LEDGER_REC {n} {}", unix_micros());
        let _ = out.flush();
        if let Some(wait) = (period * burst).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

#[test]
fn after_sigkill_at_most_the_last_100ms_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "metering::ledger::tests::sigkill_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            if parts.next() != Some("LEDGER_REC") {
                continue;
            }
            let n = parts.next().and_then(|s| s.parse().ok());
            let t = parts.next().and_then(|s| s.parse().ok());
            if let (Some(n), Some(t)) = (n, t) {
                if tx.send((n, t)).is_err() {
                    break;
                }
            }
        }
    });
    // Let it record for ~0.7 s, then kill -9 at an arbitrary moment.
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let mut recorded = vec![(0, first.1), first];
    let kill_after = Duration::from_millis(700 + u64::from(unix_micros() as u32 % 50));
    let started = Instant::now();
    while started.elapsed() < kill_after {
        if let Ok(r) = rx.recv_timeout(Duration::from_millis(10)) {
            recorded.push(r);
        }
    }
    let killed_at = unix_micros();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    recorded.extend(rx.try_iter());

    let reader = LedgerReader::open(&path).unwrap();
    let committed = reader
        .report(Month::of(killed_at / 1_000_000), Some("key_kill"))
        .unwrap()
        .iter()
        .map(|r| r.cost.0)
        .sum::<u64>();
    // One thread records, and a batch takes all that came before it: the committed requests
    // are the first `committed`. The first lost one was recorded after the last burst line
    // that `committed` covers, so the kill lost at most what came after that line.
    let last = recorded.last().map_or(0, |r| r.0);
    assert!(
        committed > 0 && committed <= last + CHILD_BURST,
        "{committed} of {last}"
    );
    let covered = recorded.iter().rev().find(|r| r.0 <= committed);
    let window_ms = match covered {
        Some(&(n, t)) if n < last => killed_at.saturating_sub(t) as f64 / 1000.0,
        _ => 0.0,
    };
    println!(
        "ledger SIGKILL: {last} requests recorded at {}/s, {committed} committed, {} lost: \
         at most the last {window_ms:.1} ms before the kill",
        CHILD_BURST * CHILD_BURSTS_HZ,
        last.saturating_sub(committed)
    );
    assert!(
        window_ms <= 100.0,
        "lost the last {window_ms:.1} ms of records"
    );
}

/// Records flat out from two threads for a while; prints what `record` sustains and what the
/// writer commits per second of its own time.
fn measure_write_rate(keep_entries: u64) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        EmbeddedLedger::open(
            &dir.path().join("l.sqlite"),
            LedgerOptions {
                keep_entries,
                ..LedgerOptions::default()
            },
        )
        .unwrap(),
    );
    let run_for = Duration::from_millis(600);
    let started = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let keys: Vec<String> = (0..200).map(|k| format!("key_{k}")).collect();
                let models = ["gpt-x", "claude-y", "gemini-z"];
                let now = unix_micros() / 1_000_000;
                let mut n = 0u64;
                while started.elapsed() < run_for {
                    for _ in 0..256 {
                        n += 1;
                        ledger.record(&Entry {
                            at_unix: now,
                            key_id: &keys[(n % 200) as usize],
                            account_id: "",
                            lane: "fast",
                            model: models[(n % 3) as usize],
                            request_id: "req_0123456789abcdef",
                            cost: Usd(1 + t),
                            input_tokens: 1000,
                            cached_input_tokens: 100,
                            output_tokens: 200,
                        });
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let recorded_in = started.elapsed();
    ledger.flush().unwrap();
    let flushed_in = started.elapsed();
    let stats = ledger.stats();
    assert_eq!(stats.committed_requests, total);
    // With entry rows, they are most of the writer's work: count those it wrote.
    let rows = if keep_entries > 0 {
        stats.committed_requests - stats.dropped_entries
    } else {
        stats.committed_requests
    };
    let writer_rate = rows as f64 / stats.commit_busy.as_secs_f64().max(1e-9);
    println!(
        "ledger write rate (entry rows {}): {total} records in {:.0} ms from 2 threads = {:.0}/s; \
         all committed {:.0} ms later; writer: {} batches, {:.0} {}/s of commit time, \
         max commit {:.1} ms, {} entry rows dropped (queue full)",
        if keep_entries > 0 { "on" } else { "off" },
        recorded_in.as_secs_f64() * 1e3,
        total as f64 / recorded_in.as_secs_f64(),
        (flushed_in - recorded_in).as_secs_f64() * 1e3,
        stats.batches,
        writer_rate,
        if keep_entries > 0 {
            "entry rows"
        } else {
            "requests"
        },
        stats.max_commit.as_secs_f64() * 1e3,
        stats.dropped_entries,
    );
}

#[test]
fn sustained_write_rate() {
    measure_write_rate(LedgerOptions::default().keep_entries);
    measure_write_rate(0);
}
