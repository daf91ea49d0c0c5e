//! The SQLite file behind [`super::EmbeddedLedger`], and [`LedgerReader`] for other processes.
//!
//! Rows are aggregates, so the file stays small however many requests are served:
//! - `key_month (month, key_id)`: requests and cost, what the monthly limits are read from;
//! - `key_hour (hour, key_id)`: the same per clock hour (hour = its first unix second), kept
//!   for [`HOURS_KEPT`] hours;
//! - `usage_month (month, key_id, lane, model)`: requests, tokens and cost, for reports;
//! - `entries`: the most recent requests one by one (request id, tokens, cost), bounded by a
//!   row count.
//!
//! Months are `YYYY-MM` text and amounts are integer pico-dollars. SQLite integers are
//! signed 64-bit, so one row holds at most $9.2 million.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{Month, ReportRow};
use crate::errors::{Context, Error, Fault};
use crate::units::{day_string, Usd};

/// The schema this code writes (`PRAGMA user_version`).
/// 2 added the `account_*` tables (accounts that own keys).
const SCHEMA_VERSION: i64 = 2;
/// Hourly rows older than this are deleted (8 days: a week of hourly history).
pub(super) const HOURS_KEPT: u64 = 8 * 24;
/// How long a reader waits for a lock (only a WAL checkpoint or recovery takes one).
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_month (
    month TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (month, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_hour (
    hour INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (hour, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_day (
    day INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (day, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_month (
    month TEXT NOT NULL,
    key_id TEXT NOT NULL,
    lane TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (month, key_id, lane, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_month (
    month TEXT NOT NULL,
    account_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (month, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_hour (
    hour INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (hour, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_day (
    day INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    PRIMARY KEY (day, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    lane TEXT NOT NULL,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL
);
";

/// A batch's month, hour and day totals per subject (a key or an account).
#[derive(Default)]
struct Totals<'a> {
    months: HashMap<(Month, &'a str), Tally>,
    hours: HashMap<(u64, &'a str), Tally>,
    days: HashMap<(u64, &'a str), Tally>,
}

impl<'a> Totals<'a> {
    fn of(groups: &'a [(Box<str>, Vec<Group>)]) -> Totals<'a> {
        let mut t = Totals::default();
        for (subject, groups) in groups {
            for g in groups {
                let subject: &str = subject;
                t.months
                    .entry((month_of_hour(g.hour), subject))
                    .or_default()
                    .add(&g.tally);
                t.hours.entry((g.hour, subject)).or_default().add(&g.tally);
                t.days
                    .entry((g.hour / 24, subject))
                    .or_default()
                    .add(&g.tally);
            }
        }
        t
    }

    /// Upsert into `{kind}_month`, `{kind}_hour` and `{kind}_day` (keyed by `{kind}_id`).
    fn write(&self, tx: &rusqlite::Transaction<'_>, kind: &str) -> Result<(), Error> {
        let upsert = |table: &str, column: &str| {
            format!(
                "INSERT INTO {kind}_{table} ({column}, {kind}_id, requests, cost)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT ({column}, {kind}_id) DO UPDATE SET
                   requests = requests + excluded.requests, cost = cost + excluded.cost"
            )
        };
        let mut st = tx.prepare_cached(&upsert("month", "month"))?;
        for ((month, subject), t) in &self.months {
            st.execute(params![
                month.to_string(),
                subject,
                sql_int(t.requests),
                sql_int(t.cost)
            ])?;
        }
        // Hourly and daily totals: the same upsert, on time buckets in unix seconds.
        for (table, rows, secs) in [("hour", &self.hours, 3600), ("day", &self.days, 86_400)] {
            let mut st = tx.prepare_cached(&upsert(table, table))?;
            for ((bucket, subject), t) in rows {
                st.execute(params![
                    sql_int(bucket * secs),
                    subject,
                    sql_int(t.requests),
                    sql_int(t.cost)
                ])?;
            }
        }
        Ok(())
    }
}

/// Counts summed over requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub requests: u64,
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    pub cost: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input = self.input.saturating_add(other.input);
        self.cached = self.cached.saturating_add(other.cached);
        self.output = self.output.saturating_add(other.output);
        self.cost = self.cost.saturating_add(other.cost);
    }
}

/// A key's requests on one lane and model in one hour, not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Group {
    pub lane: Box<str>,
    pub model: Box<str>,
    pub hour: u64,
    pub tally: Tally,
}

/// One request, for the bounded `entries` table.
#[derive(Debug, Clone)]
pub(super) struct QueuedEntry {
    pub at_unix: u64,
    pub key_id: Box<str>,
    pub lane: Box<str>,
    pub model: Box<str>,
    pub request_id: Box<str>,
    pub tally: Tally,
}

/// What the writer takes from the shards in one cycle.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub groups: Vec<(Box<str>, Vec<Group>)>,
    /// Accounts' totals (their groups have no lane or model).
    pub accounts: Vec<(Box<str>, Vec<Group>)>,
    pub entries: Vec<QueuedEntry>,
}

impl Batch {
    pub fn requests(&self) -> u64 {
        self.groups
            .iter()
            .flat_map(|(_, groups)| groups)
            .map(|g| g.tally.requests)
            .sum()
    }
}

/// Committed totals read back: (key, month, cost) and (key, hour index, cost).
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub months: Vec<(Box<str>, Month, u64)>,
    pub hours: Vec<(Box<str>, u64, u64)>,
}

fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql_int(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn month_of_hour(hour: u64) -> Month {
    Month::of(hour * 3600)
}

/// The writer's connection.
pub(super) struct Store {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
    /// Rows kept in `entries` (0: none are written).
    keep_entries: u64,
    /// `PRAGMA data_version` when last read: it changes when another connection commits.
    data_version: i64,
    /// The hour of the last pruning of `key_hour`.
    pruned_hour: u64,
}

impl Store {
    /// Open or create the file: WAL (readers in other processes never block the writer, nor
    /// it them) and `synchronous=NORMAL` (a commit is a write to the WAL, not an fsync: safe
    /// from a process crash; the last commits can be lost to a power cut).
    pub fn open(path: &Path, keep_entries: u64, busy_timeout: Duration) -> Result<Store, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(Fault::Io, || format!("cannot create {}", dir.display()))?;
        }
        let mut conn = Connection::open(path).with_context(Fault::Database, || {
            format!("cannot open ledger {}", path.display())
        })?;
        conn.busy_timeout(busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::new(
                Fault::Database,
                format!(
                    "ledger {}: cannot use WAL mode (got {mode})",
                    path.display()
                ),
            ));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::new(
                Fault::Database,
                format!(
                    "ledger {} has schema {version}, newer than this fluxrouter ({SCHEMA_VERSION})",
                    path.display()
                ),
            ));
        }
        tx.execute_batch(SCHEMA)?;
        if version == 1 {
            // Before accounts each key was its own account: it becomes the account
            // `acct_<the key id's random part>` (as a keys file without accounts reads), and
            // that account's totals start from the key's, so the month's spend carries over.
            for (table, column) in [("month", "month"), ("hour", "hour"), ("day", "day")] {
                tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO account_{table} ({column}, account_id, requests, cost)
                         SELECT {column}, 'acct_' || substr(key_id, 5), requests, cost
                         FROM key_{table} WHERE key_id LIKE 'key\\_%' ESCAPE '\\'"
                    ),
                    [],
                )?;
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            busy_timeout,
            keep_entries,
            data_version,
            pruned_hour: 0,
        })
    }

    /// Whether the file this store writes was deleted from its path while open. The open
    /// connection still reads and writes the unlinked file, so nothing is lost yet, but a
    /// restart (or `fluxrouter usage`) would find no ledger and every month's spend at zero.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn vanished(&self) -> bool {
        std::fs::metadata(&self.path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// Put a deleted ledger back at its path, whole: the still-open database (the unlinked
    /// file) is copied to a new file beside the path, renamed into place and reopened. Every
    /// committed row survives, not just the totals held in memory. On failure the store goes
    /// on writing the unlinked file (spend is also kept in memory), to be tried again on the
    /// next cycle.
    ///
    /// No other connection of this process may hold the old file open (the cached report
    /// reader): leaving WAL mode needs the file to itself.
    pub fn recreate(&mut self) -> Result<(), Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(
                Fault::Database,
                format!("cannot recreate {} ({what}): {e}", self.path.display()),
            )
        };
        // First leave WAL for an in-memory journal: that folds the WAL into the unlinked file
        // and removes the `-wal` and `-shm` names, and from then on this connection touches no
        // file by name, so nothing of the old file can be replayed onto the new one.
        let mode = self
            .conn
            .query_row("PRAGMA journal_mode=MEMORY", [], |r| r.get::<_, String>(0))
            .map_err(|e| fail("leaving WAL", &e))?;
        if !mode.eq_ignore_ascii_case("memory") {
            return Err(fail("leaving WAL", &format!("journal mode is {mode}")));
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("creating its folder", &e))?;
        }
        let mut staging = self.path.clone().into_os_string();
        staging.push(format!(".recreate-{}", std::process::id()));
        let staging = PathBuf::from(staging);
        let _ = std::fs::remove_file(&staging);
        let staging_str = staging.to_str().ok_or_else(|| fail("path", &"not UTF-8"))?;
        if let Err(e) = self.conn.execute("VACUUM INTO ?1", [staging_str]) {
            let _ = std::fs::remove_file(&staging);
            return Err(fail("copy", &e));
        }
        if self.path.exists() {
            // Another process (the old one during an upgrade) put it back first: use theirs.
            let _ = std::fs::remove_file(&staging);
        } else if let Err(e) = std::fs::rename(&staging, &self.path) {
            let _ = std::fs::remove_file(&staging);
            return Err(fail("rename", &e));
        }
        // The old connection is closed once the new one is open (it names no file now).
        *self = Store::open(&self.path, self.keep_entries, self.busy_timeout)
            .map_err(|e| fail("reopen", &e))?;
        Ok(())
    }

    /// Add a batch's groups to the aggregates, in one transaction.
    pub fn commit_totals(
        &mut self,
        groups: &[(Box<str>, Vec<Group>)],
        accounts: &[(Box<str>, Vec<Group>)],
    ) -> Result<(), Error> {
        let key_totals = Totals::of(groups);
        let account_totals = Totals::of(accounts);
        let mut usage: HashMap<(Month, &str, &str, &str), Tally> = HashMap::new();
        for (key, groups) in groups {
            for g in groups {
                usage
                    .entry((month_of_hour(g.hour), key, &g.lane, &g.model))
                    .or_default()
                    .add(&g.tally);
            }
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            key_totals.write(&tx, "key")?;
            account_totals.write(&tx, "account")?;
            let mut st = tx.prepare_cached(
                "INSERT INTO usage_month (month, key_id, lane, model, requests, input_tokens,
                   cached_input_tokens, output_tokens, cost)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (month, key_id, lane, model) DO UPDATE SET
                   requests = requests + excluded.requests,
                   input_tokens = input_tokens + excluded.input_tokens,
                   cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
                   output_tokens = output_tokens + excluded.output_tokens,
                   cost = cost + excluded.cost",
            )?;
            for ((month, key, lane, model), t) in &usage {
                st.execute(params![
                    month.to_string(),
                    key,
                    lane,
                    model,
                    sql_int(t.requests),
                    sql_int(t.input),
                    sql_int(t.cached),
                    sql_int(t.output),
                    sql_int(t.cost)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Append requests to `entries` and drop the oldest rows past the bound, in one
    /// transaction of its own: the totals are durable first, whatever the detail costs.
    pub fn commit_entries(&mut self, entries: &[QueuedEntry]) -> Result<(), Error> {
        if self.keep_entries == 0 || entries.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO entries (at, key_id, lane, model, request_id, input_tokens,
                   cached_input_tokens, output_tokens, cost)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for e in entries {
                st.execute(params![
                    sql_int(e.at_unix),
                    e.key_id,
                    e.lane,
                    e.model,
                    e.request_id,
                    sql_int(e.tally.input),
                    sql_int(e.tally.cached),
                    sql_int(e.tally.output),
                    sql_int(e.tally.cost)
                ])?;
            }
            let last = tx.last_insert_rowid();
            tx.prepare_cached("DELETE FROM entries WHERE id <= ?1")?
                .execute([last.saturating_sub(sql_int(self.keep_entries))])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether another connection (another process) committed since the last call.
    pub fn others_wrote(&mut self) -> Result<bool, Error> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let changed = v != self.data_version;
        self.data_version = v;
        Ok(changed)
    }

    /// Committed totals of the months from `from_month` and the hours from `from_hour`.
    pub fn load(&self, from_month: Month, from_hour: u64) -> Result<Loaded, Error> {
        let mut loaded = Loaded::default();
        // Keys' totals and accounts' totals (under their own `acct_…` ids, never a key's).
        for kind in ["key", "account"] {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {kind}_id, month, cost FROM {kind}_month WHERE month >= ?1"
            ))?;
            let rows = st.query_map([from_month.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (subject, month, cost) = row?;
                if let Ok(month) = month.parse::<Month>() {
                    loaded
                        .months
                        .push((subject.into(), month, from_sql_int(cost)));
                }
            }
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {kind}_id, hour, cost FROM {kind}_hour WHERE hour >= ?1"
            ))?;
            let rows = st.query_map([sql_int(from_hour * 3600)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (subject, hour, cost) = row?;
                loaded.hours.push((
                    subject.into(),
                    from_sql_int(hour) / 3600,
                    from_sql_int(cost),
                ));
            }
        }
        Ok(loaded)
    }

    /// Once per hour, drop the hourly rows older than [`HOURS_KEPT`].
    pub fn prune(&mut self, now_hour: u64) -> Result<(), Error> {
        if now_hour == self.pruned_hour {
            return Ok(());
        }
        let oldest = now_hour.saturating_sub(HOURS_KEPT);
        for table in ["key_hour", "account_hour"] {
            self.conn.execute(
                &format!("DELETE FROM {table} WHERE hour < ?1"),
                [sql_int(oldest * 3600)],
            )?;
        }
        self.pruned_hour = now_hour;
        Ok(())
    }
}

/// A day's requests and spend (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayRow {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub requests: u64,
    /// Serialized as exact decimal dollars.
    pub cost: Usd,
}

/// One request as kept in the recent-entries table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryRow {
    pub at_unix: u64,
    pub key_id: String,
    pub lane: String,
    pub model: String,
    pub request_id: String,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Usd,
}

/// A read-only view of a ledger file, safe to use while a gateway writes it (WAL: a reader
/// sees the last commit and never blocks the writer).
pub struct LedgerReader {
    conn: Connection,
}

impl LedgerReader {
    pub fn open(path: &Path) -> Result<LedgerReader, Error> {
        if !path.exists() {
            return Err(Error::new(
                Fault::Database,
                format!(
                    "no ledger at {} (the gateway creates it when it starts)",
                    path.display()
                ),
            ));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(Fault::Database, || {
            format!("cannot open ledger {}", path.display())
        })?;
        conn.busy_timeout(READ_BUSY_TIMEOUT)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(Error::new(
                Fault::Database,
                format!(
                    "{} is not a ledger this fluxrouter reads (schema {version})",
                    path.display()
                ),
            ));
        }
        Ok(LedgerReader { conn })
    }

    /// A month's rows by key, lane and model (one key's when given), sorted.
    pub fn report(&self, month: Month, key_id: Option<&str>) -> Result<Vec<ReportRow>, Error> {
        let mut st = self.conn.prepare_cached(
            "SELECT key_id, lane, model, requests, input_tokens, cached_input_tokens,
               output_tokens, cost
             FROM usage_month WHERE month = ?1 AND (?2 IS NULL OR key_id = ?2)
             ORDER BY key_id, lane, model",
        )?;
        let rows = st.query_map(params![month.to_string(), key_id], |r| {
            Ok(ReportRow {
                key_id: r.get(0)?,
                lane: r.get(1)?,
                model: r.get(2)?,
                requests: from_sql_int(r.get(3)?),
                input_tokens: from_sql_int(r.get(4)?),
                cached_input_tokens: from_sql_int(r.get(5)?),
                output_tokens: from_sql_int(r.get(6)?),
                cost: Usd(from_sql_int(r.get(7)?)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A month's requests and spend by UTC day (one key's when given), oldest first; days
    /// without requests are left out. Kept for as long as the file is.
    pub fn days(&self, month: Month, key_id: Option<&str>) -> Result<Vec<DayRow>, Error> {
        let mut st = self.conn.prepare_cached(
            "SELECT day, SUM(requests), SUM(cost) FROM key_day
             WHERE day >= ?1 AND day < ?2 AND (?3 IS NULL OR key_id = ?3)
             GROUP BY day ORDER BY day",
        )?;
        let rows = st.query_map(
            params![
                sql_int(month.start_unix()),
                sql_int(month.next().start_unix()),
                key_id
            ],
            |r| {
                Ok(DayRow {
                    day: day_string(from_sql_int(r.get(0)?) / 86_400),
                    requests: from_sql_int(r.get(1)?),
                    cost: Usd(from_sql_int(r.get(2)?)),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A key's committed spend in a month and in an hour (as the gateway would load it).
    pub fn spend(&self, key_id: &str, month: Month, hour: u64) -> Result<super::Spend, Error> {
        let month_cost: Option<i64> = self
            .conn
            .query_row(
                "SELECT cost FROM key_month WHERE month = ?1 AND key_id = ?2",
                params![month.to_string(), key_id],
                |r| r.get(0),
            )
            .optional()?;
        let hour_cost: Option<i64> = self
            .conn
            .query_row(
                "SELECT cost FROM key_hour WHERE hour = ?1 AND key_id = ?2",
                params![sql_int(hour * 3600), key_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(super::Spend {
            month: Usd(from_sql_int(month_cost.unwrap_or(0))),
            hour: Usd(from_sql_int(hour_cost.unwrap_or(0))),
        })
    }

    /// The months that have usage, newest first.
    pub fn months(&self) -> Result<Vec<Month>, Error> {
        let mut st = self
            .conn
            .prepare_cached("SELECT DISTINCT month FROM key_month ORDER BY month DESC")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut months = Vec::new();
        for m in rows {
            if let Ok(m) = m?.parse() {
                months.push(m);
            }
        }
        Ok(months)
    }

    /// The most recent requests (one key's when given), newest first.
    pub fn recent(&self, key_id: Option<&str>, limit: usize) -> Result<Vec<EntryRow>, Error> {
        let mut st = self.conn.prepare_cached(
            "SELECT at, key_id, lane, model, request_id, input_tokens, cached_input_tokens,
               output_tokens, cost
             FROM entries WHERE (?1 IS NULL OR key_id = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![key_id, sql_int(limit as u64)], |r| {
            Ok(EntryRow {
                at_unix: from_sql_int(r.get(0)?),
                key_id: r.get(1)?,
                lane: r.get(2)?,
                model: r.get(3)?,
                request_id: r.get(4)?,
                input_tokens: from_sql_int(r.get(5)?),
                cached_input_tokens: from_sql_int(r.get(6)?),
                output_tokens: from_sql_int(r.get(7)?),
                cost: Usd(from_sql_int(r.get(8)?)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
