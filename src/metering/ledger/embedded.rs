//! [`EmbeddedLedger`]: in-memory totals for the request path, a SQLite file for durability.
//!
//! `record` takes one shard lock (keys are spread over [`SHARDS`] mutexes), adds the cost to
//! the key's month and hour totals, and adds the request to the key's pending groups (one
//! per lane, model and hour) and to a bounded queue of entries. Nothing there waits for I/O
//! and no lock is held across I/O.
//!
//! The writer thread wakes every flush interval (sooner when many requests are queued or a
//! flush is asked for), takes the pending groups out of every shard, and upserts them in one
//! transaction; the per-request rows follow in a second one, so the totals' durability does
//! not wait on the detail. If the first transaction fails the groups go back to pending, so
//! spend is never dropped: only per-request detail is, when its queue is full.
//!
//! The totals are loaded from the file on open. When another process commits to the same
//! file (the old process during a zero-downtime upgrade, say), the writer sees SQLite's
//! `data_version` change and reloads the recent totals, adding what it has not committed yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::store::{Batch, Group, QueuedEntry, Store, Tally};
use super::{Entry, Ledger, LedgerReader, ReportRow, Spend};
use crate::config::server::LedgerConfig;
use crate::errors::{Context, Error, Fault};
use crate::units::clock::unix_now;
use crate::units::{hour_of, Month, Usd};

/// Mutexes the keys are spread over, so request threads rarely wait for each other.
const SHARDS: usize = 16;
/// Months and hours of totals kept in memory per key (older ones are only in the file).
const MONTHS_IN_MEMORY: usize = 3;
const HOURS_IN_MEMORY: usize = 4;
/// Requests queued since the last commit at which the writer is woken before its interval.
const WAKE_WRITER_AT: usize = 2048;

/// How an [`EmbeddedLedger`] runs.
#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// Longest time between a record and its commit (when the writer keeps up).
    pub flush_interval: Duration,
    /// Rows kept in the recent-entries table (0: the table is not written).
    pub keep_entries: u64,
    /// Entries waiting for the writer at most; past it their detail is dropped (never their
    /// spend, which goes to the aggregates regardless) and counted in [`LedgerStats`].
    pub max_queued_entries: usize,
    /// How long a commit waits for another process's write transaction before it fails
    /// (and is retried with the next batch).
    pub busy_timeout: Duration,
    /// Unix seconds now: decides which months and hours are loaded from the file.
    pub clock: fn() -> u64,
}

impl LedgerOptions {
    /// The options a server configuration asks for (the rest keep their defaults).
    pub fn from_config(config: &LedgerConfig) -> LedgerOptions {
        LedgerOptions {
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            ..LedgerOptions::default()
        }
    }
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            flush_interval: Duration::from_millis(50),
            keep_entries: 100_000,
            max_queued_entries: 8_192,
            busy_timeout: Duration::from_secs(5),
            clock: unix_now,
        }
    }
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Transactions committed.
    pub batches: u64,
    /// Requests committed.
    pub committed_requests: u64,
    /// Transactions that failed (their spend was kept and retried).
    pub commit_errors: u64,
    /// Requests whose entry row was not written because the queue was full.
    pub dropped_entries: u64,
    pub last_commit: Duration,
    pub max_commit: Duration,
    /// Time spent in committed transactions, all told.
    pub commit_busy: Duration,
    /// Times the file was found deleted from its path and put back.
    pub recreated: u64,
}

/// A key's (or an account's) in-memory totals and its requests not yet handed to the writer.
/// An account's pending groups have no lane or model: it has totals, not usage rows.
#[derive(Debug, Default)]
struct KeyState {
    months: Vec<(Month, u64)>,
    hours: Vec<(u64, u64)>,
    pending: Vec<Group>,
    account: bool,
}

/// Add to a bucket, keeping at most `keep` of the newest buckets.
fn bump<K: Copy + Ord>(buckets: &mut Vec<(K, u64)>, at: K, add: u64, keep: usize) {
    if let Some(b) = buckets.iter_mut().find(|b| b.0 == at) {
        b.1 = b.1.saturating_add(add);
        return;
    }
    if buckets.len() >= keep {
        let Some((i, oldest)) = buckets.iter().enumerate().min_by_key(|(_, b)| b.0) else {
            return;
        };
        if at < oldest.0 {
            return;
        }
        buckets.swap_remove(i);
    }
    buckets.push((at, add));
}

fn bucket<K: Copy + Eq>(buckets: &[(K, u64)], at: K) -> u64 {
    buckets.iter().find(|b| b.0 == at).map_or(0, |b| b.1)
}

#[derive(Debug, Default)]
struct Shard {
    keys: HashMap<Box<str>, KeyState>,
    /// Keys whose `pending` is not empty.
    dirty: Vec<Box<str>>,
    entries: Vec<QueuedEntry>,
}

/// FNV-1a: a cheap, stable spread of key ids over the shards.
fn shard_of(key_id: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Between the callers of `flush`/`close` and the writer.
#[derive(Debug, Default)]
struct Control {
    /// Flush generations asked for and served.
    requested: u64,
    served: u64,
    /// The last cycle's commit error.
    last_error: Option<Arc<Error>>,
    wake: bool,
    stop: bool,
    stopped: bool,
}

struct Shared {
    shards: Vec<Mutex<Shard>>,
    options: LedgerOptions,
    /// Requests recorded since the writer last took a batch.
    queued: AtomicUsize,
    wake_sent: AtomicBool,
    control: Mutex<Control>,
    signal: Condvar,
    closed: AtomicBool,
    warned_closed: AtomicBool,
    batches: AtomicU64,
    committed_requests: AtomicU64,
    commit_errors: AtomicU64,
    dropped_entries: AtomicU64,
    last_commit_us: AtomicU64,
    max_commit_us: AtomicU64,
    busy_us: AtomicU64,
    recreated: AtomicU64,
    /// Failed attempts to put a deleted file back (logged at the first and every 100th).
    recreate_errors: AtomicU64,
    /// The report reader, kept open between reports; closed before the file is recreated.
    reader: Mutex<Option<LedgerReader>>,
}

impl Shared {
    fn new(options: LedgerOptions) -> Shared {
        Shared {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            options,
            queued: AtomicUsize::new(0),
            wake_sent: AtomicBool::new(false),
            control: Mutex::default(),
            signal: Condvar::new(),
            closed: AtomicBool::new(false),
            warned_closed: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            committed_requests: AtomicU64::new(0),
            commit_errors: AtomicU64::new(0),
            dropped_entries: AtomicU64::new(0),
            last_commit_us: AtomicU64::new(0),
            max_commit_us: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            recreated: AtomicU64::new(0),
            recreate_errors: AtomicU64::new(0),
            reader: Mutex::new(None),
        }
    }

    /// The file was deleted from its path while open: put it back, whole, before the next
    /// commit, so that a restart or `fluxrouter usage` still finds every month's spend.
    fn recreate(&self, store: &mut Store) {
        let path = store.path().display().to_string();
        // The cached reader holds the old file open; leaving WAL needs it to ourselves.
        lock(&self.reader).take();
        match store.recreate() {
            Ok(()) => {
                self.recreated.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "ledger: {path} was deleted while the gateway was running; recreated it \
                     from the open database (every committed row kept)"
                );
            }
            Err(e) => {
                if self
                    .recreate_errors
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(100)
                {
                    log::error!(
                        "ledger: {path} was deleted while the gateway was running; {e}; \
                         spend is still written to the deleted file and kept in memory, \
                         retrying"
                    );
                }
            }
        }
    }

    fn record(&self, e: &Entry<'_>) {
        let tally = Tally {
            requests: 1,
            input: e.input_tokens,
            cached: e.cached_input_tokens.min(e.input_tokens),
            output: e.output_tokens,
            cost: e.cost.0,
        };
        let hour = hour_of(e.at_unix);
        let month = Month::of(e.at_unix);
        let per_shard_entries = self.options.max_queued_entries / SHARDS;
        // Copied before taking the lock, so that other threads do not wait on the allocator.
        let queued_entry = (self.options.keep_entries > 0).then(|| QueuedEntry {
            at_unix: e.at_unix,
            key_id: e.key_id.into(),
            lane: e.lane.into(),
            model: e.model.into(),
            request_id: e.request_id.into(),
            tally,
        });
        {
            let mut guard = lock(&self.shards[shard_of(e.key_id)]);
            let Shard {
                keys,
                dirty,
                entries,
            } = &mut *guard;
            if !keys.contains_key(e.key_id) {
                keys.insert(e.key_id.into(), KeyState::default());
            }
            if let Some(ks) = keys.get_mut(e.key_id) {
                bump(&mut ks.months, month, tally.cost, MONTHS_IN_MEMORY);
                bump(&mut ks.hours, hour, tally.cost, HOURS_IN_MEMORY);
                if ks.pending.is_empty() {
                    dirty.push(e.key_id.into());
                }
                match ks
                    .pending
                    .iter_mut()
                    .find(|g| g.hour == hour && *g.lane == *e.lane && *g.model == *e.model)
                {
                    Some(g) => g.tally.add(&tally),
                    None => ks.pending.push(Group {
                        lane: e.lane.into(),
                        model: e.model.into(),
                        hour,
                        tally,
                    }),
                }
            }
            if let Some(queued_entry) = queued_entry {
                if entries.len() < per_shard_entries {
                    entries.push(queued_entry);
                } else {
                    self.dropped_entries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The account's totals: the same bump under its own id, in its own shard.
        if !e.account_id.is_empty() && e.account_id != e.key_id {
            let mut guard = lock(&self.shards[shard_of(e.account_id)]);
            let Shard { keys, dirty, .. } = &mut *guard;
            if !keys.contains_key(e.account_id) {
                keys.insert(e.account_id.into(), KeyState::default());
            }
            if let Some(ks) = keys.get_mut(e.account_id) {
                ks.account = true;
                bump(&mut ks.months, month, tally.cost, MONTHS_IN_MEMORY);
                bump(&mut ks.hours, hour, tally.cost, HOURS_IN_MEMORY);
                if ks.pending.is_empty() {
                    dirty.push(e.account_id.into());
                }
                let totals = Tally {
                    requests: 1,
                    cost: tally.cost,
                    ..Tally::default()
                };
                match ks.pending.iter_mut().find(|g| g.hour == hour) {
                    Some(g) => g.tally.add(&totals),
                    None => ks.pending.push(Group {
                        lane: "".into(),
                        model: "".into(),
                        hour,
                        tally: totals,
                    }),
                }
            }
        }
        let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        if queued >= WAKE_WRITER_AT && !self.wake_sent.swap(true, Ordering::Relaxed) {
            lock(&self.control).wake = true;
            self.signal.notify_all();
        }
        if self.closed.load(Ordering::Relaxed) && !self.warned_closed.swap(true, Ordering::Relaxed)
        {
            log::warn!("ledger: a request was recorded after close; it is counted in memory only");
        }
    }

    fn spend(&self, key_id: &str, now_unix: u64) -> Spend {
        let guard = lock(&self.shards[shard_of(key_id)]);
        match guard.keys.get(key_id) {
            Some(ks) => Spend {
                month: Usd(bucket(&ks.months, Month::of(now_unix))),
                hour: Usd(bucket(&ks.hours, hour_of(now_unix))),
            },
            None => Spend::default(),
        }
    }

    /// Take every shard's pending groups and queued entries.
    fn take_batch(&self) -> Batch {
        self.queued.store(0, Ordering::Relaxed);
        self.wake_sent.store(false, Ordering::Relaxed);
        let mut batch = Batch::default();
        for shard in &self.shards {
            let mut guard = lock(shard);
            let Shard {
                keys,
                dirty,
                entries,
            } = &mut *guard;
            for key in dirty.drain(..) {
                if let Some(ks) = keys.get_mut(&key) {
                    let groups = std::mem::take(&mut ks.pending);
                    match (groups.is_empty(), ks.account) {
                        (true, _) => {}
                        (false, true) => batch.accounts.push((key, groups)),
                        (false, false) => batch.groups.push((key, groups)),
                    }
                }
            }
            if batch.entries.is_empty() {
                batch.entries = std::mem::take(entries);
            } else {
                batch.entries.append(entries);
            }
        }
        batch
    }

    /// Put back a batch that could not be committed: its spend is retried with the next one.
    fn restore(&self, batch: Batch) {
        let accounts = batch.accounts.into_iter().map(|a| (a, true));
        for ((key, groups), account) in batch.groups.into_iter().map(|k| (k, false)).chain(accounts)
        {
            let mut guard = lock(&self.shards[shard_of(&key)]);
            let Shard { keys, dirty, .. } = &mut *guard;
            let ks = keys.entry(key.clone()).or_default();
            ks.account |= account;
            if ks.pending.is_empty() {
                dirty.push(key);
            }
            for g in groups {
                match ks
                    .pending
                    .iter_mut()
                    .find(|p| p.hour == g.hour && p.lane == g.lane && p.model == g.model)
                {
                    Some(p) => p.tally.add(&g.tally),
                    None => ks.pending.push(g),
                }
            }
        }
        let per_shard_entries = self.options.max_queued_entries / SHARDS;
        for e in batch.entries {
            let mut guard = lock(&self.shards[shard_of(&e.key_id)]);
            if guard.entries.len() < per_shard_entries {
                guard.entries.push(e);
            } else {
                self.dropped_entries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Set the recent months and hours of every key to the file's totals plus what this
    /// process has recorded and not yet committed.
    fn reload(&self, store: &Store, now_unix: u64) -> Result<(), Error> {
        let from_month = Month::of(now_unix).prev();
        let from_hour = hour_of(now_unix).saturating_sub(HOURS_IN_MEMORY as u64 - 1);
        let loaded = store.load(from_month, from_hour)?;
        type FileTotals = (Vec<(Month, u64)>, Vec<(u64, u64)>);
        let mut per_shard: Vec<HashMap<Box<str>, FileTotals>> =
            (0..SHARDS).map(|_| HashMap::new()).collect();
        for (key, month, cost) in loaded.months {
            let totals = per_shard[shard_of(&key)].entry(key).or_default();
            totals.0.push((month, cost));
        }
        for (key, hour, cost) in loaded.hours {
            let totals = per_shard[shard_of(&key)].entry(key).or_default();
            totals.1.push((hour, cost));
        }
        for (shard, mut file) in self.shards.iter().zip(per_shard) {
            let mut guard = lock(shard);
            for (key, ks) in guard.keys.iter_mut() {
                ks.months.retain(|b| b.0 < from_month);
                ks.hours.retain(|b| b.0 < from_hour);
                if let Some((months, hours)) = file.remove(key) {
                    for (m, cost) in months {
                        bump(&mut ks.months, m, cost, MONTHS_IN_MEMORY);
                    }
                    for (h, cost) in hours {
                        bump(&mut ks.hours, h, cost, HOURS_IN_MEMORY);
                    }
                }
                for g in &ks.pending {
                    let month = Month::of(g.hour * 3600);
                    if month >= from_month {
                        bump(&mut ks.months, month, g.tally.cost, MONTHS_IN_MEMORY);
                    }
                    if g.hour >= from_hour {
                        bump(&mut ks.hours, g.hour, g.tally.cost, HOURS_IN_MEMORY);
                    }
                }
            }
            for (key, (months, hours)) in file {
                let ks = guard.keys.entry(key).or_default();
                for (m, cost) in months {
                    bump(&mut ks.months, m, cost, MONTHS_IN_MEMORY);
                }
                for (h, cost) in hours {
                    bump(&mut ks.hours, h, cost, HOURS_IN_MEMORY);
                }
            }
        }
        Ok(())
    }

    /// One writer cycle: commit what is pending, follow other processes' commits.
    fn cycle(&self, store: &mut Store) -> Result<(), Error> {
        let batch = self.take_batch();
        let mut result = Ok(());
        if !batch.groups.is_empty() || !batch.accounts.is_empty() {
            let started = Instant::now();
            match store.commit_totals(&batch.groups, &batch.accounts) {
                Ok(()) => {
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    self.committed_requests
                        .fetch_add(batch.requests(), Ordering::Relaxed);
                    match store.commit_entries(&batch.entries) {
                        Ok(()) => {}
                        Err(e) => {
                            log::warn!("ledger: cannot write entry rows: {e}");
                            self.dropped_entries
                                .fetch_add(batch.entries.len() as u64, Ordering::Relaxed);
                        }
                    }
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.last_commit_us.store(us, Ordering::Relaxed);
                    self.max_commit_us.fetch_max(us, Ordering::Relaxed);
                    self.busy_us.fetch_add(us, Ordering::Relaxed);
                }
                Err(e) => {
                    if self
                        .commit_errors
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(100)
                    {
                        log::error!("ledger: commit failed, spend kept for a retry: {e}");
                    }
                    self.restore(batch);
                    result = Err(e);
                }
            }
        }
        let now = (self.options.clock)();
        match store.others_wrote() {
            Ok(true) => {
                if let Err(e) = self.reload(store, now) {
                    log::warn!("ledger: cannot reload totals written by another process: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("ledger: {e}"),
        }
        if let Err(e) = store.prune(hour_of(now)) {
            log::warn!("ledger: cannot prune old hourly rows: {e}");
        }
        result
    }
}

/// Marks the writer stopped however it ends, so `flush` and `close` never wait forever.
struct StoppedOnDrop<'a>(&'a Shared);

impl Drop for StoppedOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.0.control).stopped = true;
        self.0.signal.notify_all();
    }
}

fn writer(shared: Arc<Shared>, mut store: Store) {
    let _stopped = StoppedOnDrop(&shared);
    let interval = shared.options.flush_interval;
    let mut due = Instant::now() + interval;
    loop {
        let (generation, stop) = {
            let mut c = lock(&shared.control);
            loop {
                if c.stop || c.wake || c.requested > c.served {
                    break;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                c = shared
                    .signal
                    .wait_timeout(c, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            c.wake = false;
            (c.requested, c.stop)
        };
        due = Instant::now() + interval;
        if store.vanished() {
            shared.recreate(&mut store);
        }
        let result = shared.cycle(&mut store);
        {
            let mut c = lock(&shared.control);
            c.served = generation;
            c.last_error = result.err().map(Arc::new);
        }
        shared.signal.notify_all();
        if stop {
            return;
        }
    }
}

/// The ledger in one SQLite file, for a single gateway host (see the module docs).
pub struct EmbeddedLedger {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl EmbeddedLedger {
    /// Open (or create) the file, load the current totals, start the writer thread.
    pub fn open(path: &Path, options: LedgerOptions) -> Result<EmbeddedLedger, Error> {
        let store = Store::open(path, options.keep_entries, options.busy_timeout)?;
        let shared = Arc::new(Shared::new(options));
        shared.reload(&store, (options.clock)())?;
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ledger-writer".into())
                .spawn(move || writer(shared, store))
                .context(Fault::Io, "cannot start the ledger writer")?
        };
        Ok(EmbeddedLedger {
            shared,
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> LedgerStats {
        let s = &self.shared;
        LedgerStats {
            batches: s.batches.load(Ordering::Relaxed),
            committed_requests: s.committed_requests.load(Ordering::Relaxed),
            commit_errors: s.commit_errors.load(Ordering::Relaxed),
            dropped_entries: s.dropped_entries.load(Ordering::Relaxed),
            last_commit: Duration::from_micros(s.last_commit_us.load(Ordering::Relaxed)),
            max_commit: Duration::from_micros(s.max_commit_us.load(Ordering::Relaxed)),
            commit_busy: Duration::from_micros(s.busy_us.load(Ordering::Relaxed)),
            recreated: s.recreated.load(Ordering::Relaxed),
        }
    }

    /// Ask the writer for a cycle and wait for it; `stop` makes it the last one.
    fn sync(&self, stop: bool) -> Result<(), Error> {
        let s = &self.shared;
        let mut c = lock(&s.control);
        if c.stopped || c.stop {
            return Err(Error::new(Fault::Unavailable, "the ledger is closed"));
        }
        c.requested += 1;
        c.stop = stop;
        let generation = c.requested;
        s.signal.notify_all();
        while c.served < generation && !c.stopped {
            c = s.signal.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        if c.served < generation {
            return Err(Error::new(Fault::Unavailable, "the ledger writer stopped"));
        }
        match &c.last_error {
            Some(e) => Err(
                Error::new(Fault::Database, "the ledger's last commit failed").because(e.clone()),
            ),
            None => Ok(()),
        }
    }
}

impl Ledger for EmbeddedLedger {
    fn record(&self, entry: &Entry<'_>) {
        self.shared.record(entry);
    }

    fn spend(&self, key_id: &str, now_unix: u64) -> Spend {
        self.shared.spend(key_id, now_unix)
    }

    fn report(&self, month: Month, key_id: Option<&str>) -> Result<Vec<ReportRow>, Error> {
        let mut reader = lock(&self.shared.reader);
        if reader.is_none() {
            *reader = Some(LedgerReader::open(&self.path)?);
        }
        match reader.as_ref() {
            Some(r) => r.report(month, key_id),
            None => Err(Error::new(Fault::Unavailable, "no ledger reader")),
        }
    }

    fn flush(&self) -> Result<(), Error> {
        self.sync(false)
    }

    fn close(&self) -> Result<(), Error> {
        let result = self.sync(true);
        self.shared.closed.store(true, Ordering::Relaxed);
        if let Some(handle) = lock(&self.writer).take() {
            if handle.join().is_err() {
                return Err(Error::new(Fault::Unavailable, "the ledger writer panicked"));
            }
        }
        result
    }
}

impl Drop for EmbeddedLedger {
    fn drop(&mut self) {
        if lock(&self.writer).is_some() {
            if let Err(e) = self.close() {
                log::error!("ledger: closing {}: {e}", self.path.display());
            }
        }
    }
}
