//! The SQLite file behind the account directory: the source of truth for accounts and keys.
//!
//! One row per account and per key; creating, changing or revoking is one transaction that
//! writes the row and appends a row to `changes`, the feed from which other processes learn
//! of it (they read only the rows named after their cursor, never the whole table). The feed
//! is pruned to a bound; a reader whose cursor fell behind the pruned range is told to reload
//! ([`Feed::Reload`]).
//!
//! WAL mode (readers never block the writer, nor it them) and `synchronous=NORMAL` (a
//! commit is a write to the WAL: safe from a process crash; the last commits can be lost to a
//! power cut), as the ledger. Amounts are integer pico-dollars (at most $9.2 million in a
//! signed 64-bit column), times Unix seconds, model lists JSON arrays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::model::{AccountRow, Change, Cursor, KeyKind, KeyRow, KeyStatus};
use crate::units::{clock, Usd};

/// The schema this code writes (`PRAGMA user_version`).
/// 2: `keys.revoke_at_expiry` (a rotated key ends revoked).
const SCHEMA_VERSION: i64 = 2;
/// How long a writer waits for another process's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// `changes.entity` values.
const ENTITY_ACCOUNT: i64 = 0;
const ENTITY_KEY: i64 = 1;
/// A bulk import: readers before it must reload.
const ENTITY_IMPORT: i64 = 2;
/// WAL pages after which a commit checkpoints by itself (SQLite's default is 1,000). A
/// checkpoint in a commit copies the WAL into the file and fsyncs it: milliseconds added to
/// that write. [`Store::checkpoint`], called in the background, keeps the WAL well below
/// this; the bound only stops it growing when nothing calls it.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;
/// The page cache a bulk replacement may use (KiB): a million keys' table and indexes.
const BULK_CACHE_KIB: i64 = 512 * 1024;

// `UNIQUE (account_id, name)` is also the index on `account_id` (its leading column).
// `changes.sha256` is set when a key is deleted: readers' indexes are keyed by it.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    payment_method INTEGER NOT NULL DEFAULT 0,
    on_hold INTEGER NOT NULL DEFAULT 0,
    ceiling INTEGER,
    models TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    monthly_limit INTEGER,
    models TEXT,
    last_used_at INTEGER,
    revoke_at_expiry INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account_id, name)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entity INTEGER NOT NULL,
    id TEXT NOT NULL,
    sha256 BLOB,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_state (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    pruned_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO feed_state (one, pruned_through) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS replica (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    epoch TEXT NOT NULL,
    position TEXT NOT NULL,
    local_seq INTEGER NOT NULL
);
";

const ACCOUNT_COLUMNS: &str =
    "id, name, plan, payment_method, on_hold, ceiling, models, created_at";
const KEY_COLUMNS: &str = "id, account_id, name, sha256, kind, status, expires_at, created_at, \
     monthly_limit, models, last_used_at, revoke_at_expiry";

/// How far a fleet gateway's local copy is known to follow the fleet's shared store: every
/// change of the fleet's stream up to `position` is in it, and every local change up to
/// `local_seq` is in the fleet's store. Set after a full load and after each batch read
/// from the stream; forgotten when a write could not be shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMark {
    /// Which fleet store (a value made when the fleet's store was first seeded): a store
    /// emptied and seeded again has another, and its stream positions mean nothing here.
    pub epoch: String,
    /// The fleet stream's entry id.
    pub position: String,
    /// The local feed's sequence number at the time.
    pub local_seq: Cursor,
}

/// A row named by the local feed: an account's or a key's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Account(String),
    Key(String),
}

/// Why a directory operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// No account or key with that id.
    NotFound(String),
    /// The change clashes with what is stored: a name already taken, a revoked key made
    /// active again, an account that still has keys.
    Conflict(String),
    /// The request itself is wrong: a bad name, limits outside the account's.
    Invalid(String),
    /// The fleet's shared key store (Redis) cannot take the write now: nothing was changed
    /// for the fleet; retry.
    Unavailable(String),
    /// The database failed (or holds something this code cannot read).
    Sqlite {
        context: String,
        source: rusqlite::Error,
    },
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(m)
            | StoreError::Conflict(m)
            | StoreError::Invalid(m)
            | StoreError::Unavailable(m) => f.write_str(m),
            StoreError::Sqlite { context, source } => write!(f, "{context}: {source}"),
            StoreError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite { source, .. } => Some(source),
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            context: "accounts store".into(),
            source,
        }
    }
}

/// A constraint violation as a [`StoreError::Conflict`] (`explain` gets SQLite's message,
/// such as `UNIQUE constraint failed: accounts.name`), any other error as it is.
fn conflict(e: rusqlite::Error, explain: impl FnOnce(&str) -> String) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(explain(msg.as_deref().unwrap_or("")))
        }
        _ => e.into(),
    }
}

/// What the change feed holds after a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// The rows changed since the cursor, each as it is now (a deleted row as its
    /// `…Deleted` change), oldest change first; and the cursor to read from next.
    Changes {
        changes: Vec<Change>,
        cursor: Cursor,
    },
    /// The feed no longer reaches back to the cursor (pruned, or a bulk import): read
    /// everything again ([`Store::load_all`]).
    Reload,
}

fn sql_amount(v: Option<Usd>) -> Result<Option<i64>, StoreError> {
    v.map(|u| {
        i64::try_from(u.picos())
            .map_err(|_| StoreError::Invalid(format!("${u} is more than a row can hold")))
    })
    .transpose()
}

fn sql_time(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql_u64(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

fn sql_models(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()))
}

fn bad_column(col: usize, what: impl Into<String>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into().into())
}

fn models_column(r: &Row, col: usize) -> rusqlite::Result<Option<Vec<String>>> {
    match r.get_ref(col)?.as_str_or_null()? {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| bad_column(col, format!("models: {e}"))),
    }
}

fn status_str(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Suspended => "suspended",
        KeyStatus::Revoked => "revoked",
    }
}

fn account_from(r: &Row) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        id: r.get(0)?,
        name: r.get(1)?,
        plan: r.get(2)?,
        payment_method: r.get(3)?,
        on_hold: r.get(4)?,
        ceiling_usd: from_sql_u64(r.get(5)?).map(Usd),
        models: models_column(r, 6)?,
        created_at: from_sql_u64(r.get(7)?).unwrap_or(0),
    })
}

fn key_from(r: &Row) -> rusqlite::Result<KeyRow> {
    let sha = r.get_ref(3)?.as_blob()?;
    let sha256: [u8; 32] = sha
        .try_into()
        .map_err(|_| bad_column(3, "sha256 is not 32 bytes"))?;
    let kind = r.get_ref(4)?.as_str()?;
    let kind = KeyKind::parse(kind).ok_or_else(|| bad_column(4, format!("kind '{kind}'")))?;
    let status = match r.get_ref(5)?.as_str()? {
        "active" => KeyStatus::Active,
        "suspended" => KeyStatus::Suspended,
        "revoked" => KeyStatus::Revoked,
        other => return Err(bad_column(5, format!("status '{other}'"))),
    };
    Ok(KeyRow {
        id: r.get(0)?,
        account_id: r.get(1)?,
        name: r.get(2)?,
        sha256,
        kind,
        status,
        expires_at: from_sql_u64(r.get(6)?),
        created_at: from_sql_u64(r.get(7)?).unwrap_or(0),
        monthly_limit_usd: from_sql_u64(r.get(8)?).map(Usd),
        models: models_column(r, 9)?,
        last_used_at: from_sql_u64(r.get(10)?),
        revoke_at_expiry: r.get(11)?,
    })
}

/// One connection to the accounts file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open or create the file (and its folder), in WAL mode, at this code's schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
        }
        let sqlite = |context: &str| {
            let context = format!("accounts store {}: {context}", path.display());
            move |source| StoreError::Sqlite { context, source }
        };
        let mut conn = Connection::open(path).map_err(sqlite("cannot open"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Invalid(format!(
                "accounts store {}: cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "accounts store {} has schema {version}, newer than this fluxrouter \
                 ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        tx.execute_batch(SCHEMA)
            .map_err(sqlite("cannot create tables"))?;
        if version == 1 {
            // Schema 1's keys table (made before the line above, which left it as it was).
            tx.execute_batch(
                "ALTER TABLE keys ADD COLUMN revoke_at_expiry INTEGER NOT NULL DEFAULT 0",
            )
            .map_err(sqlite("cannot upgrade the keys table to schema 2"))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every row, and the cursor from which their changes are to be read.
    pub fn load_all(&mut self) -> Result<(Vec<AccountRow>, Vec<KeyRow>, Cursor), StoreError> {
        let mut rows = (Vec::new(), Vec::new());
        let cursor = self.scan(
            &mut rows,
            |(accounts, keys), a, k| {
                accounts.reserve(a);
                keys.reserve(k);
            },
            |(accounts, keys), change| match change {
                Change::Account(a) => accounts.push(a),
                Change::Key(k) => keys.push(k),
                _ => {}
            },
        )?;
        Ok((rows.0, rows.1, cursor))
    }

    /// Every row, one at a time (accounts first), from one snapshot, into `state`: `sizes`
    /// first gets upper bounds of the account and key counts. Returns the snapshot's cursor.
    pub fn scan<S>(
        &mut self,
        state: &mut S,
        sizes: impl FnOnce(&mut S, usize, usize),
        mut each: impl FnMut(&mut S, Change),
    ) -> Result<Cursor, StoreError> {
        let tx = self.conn.transaction()?;
        let cursor = head(&tx)?;
        let bound = |table: &str| -> Result<usize, StoreError> {
            let n: Option<i64> =
                tx.query_row(&format!("SELECT max(rowid) FROM {table}"), [], |r| r.get(0))?;
            Ok(usize::try_from(n.unwrap_or(0)).unwrap_or(0))
        };
        sizes(state, bound("accounts")?, bound("keys")?);
        {
            let mut st = tx.prepare(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts"))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                each(state, Change::Account(account_from(r)?));
            }
            let mut st = tx.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys"))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                each(state, Change::Key(key_from(r)?));
            }
        }
        tx.commit()?;
        Ok(cursor)
    }

    /// The newest change's cursor: cheap (one row), to see whether anything changed.
    pub fn head(&self) -> Result<Cursor, StoreError> {
        head(&self.conn)
    }

    pub fn account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        account_row(&self.conn, id)
    }

    pub fn account_by_name(&self, name: &str) -> Result<Option<AccountRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1"
            ))?
            .query_row([name], account_from)
            .optional()?)
    }

    pub fn key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        key_row(&self.conn, id)
    }

    /// An account's keys, by name (with their last use, which the index does not keep).
    pub fn keys_of(&self, account_id: &str) -> Result<Vec<KeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE account_id = ?1 ORDER BY name"
        ))?;
        let rows = st
            .query_map([account_id], key_from)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// At most `limit` of an account's keys with ids after `after`, by id (a page of a
    /// listing: the next starts after the last id of this one).
    pub fn keys_page(
        &self,
        account_id: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<KeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE account_id = ?1 AND id > ?2 ORDER BY id \
             LIMIT ?3"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![account_id, after, limit], key_from)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Write one change as it is (an upsert or a delete) and its feed entry, in one
    /// transaction. A key's account must exist and its digest cannot change; an account with
    /// keys cannot be deleted; a deleted key's digest is taken from its row.
    pub fn write(&mut self, change: &Change) -> Result<Cursor, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = match change {
            Change::Account(a) => {
                upsert_account(&tx, a, true)?;
                record(&tx, ENTITY_ACCOUNT, &a.id, None)?
            }
            Change::Key(k) => {
                let account = account_row(&tx, &k.account_id)?.ok_or_else(|| {
                    StoreError::NotFound(format!("no account with id '{}'", k.account_id))
                })?;
                if let Some(p) = k.limits_problem(&account) {
                    return Err(StoreError::Invalid(p));
                }
                if key_row(&tx, &k.id)?.is_some_and(|old| old.sha256 != k.sha256) {
                    return Err(StoreError::Invalid(format!(
                        "key '{}' cannot take another secret; create a new key",
                        k.name
                    )));
                }
                upsert_key(&tx, k, true)?;
                record(&tx, ENTITY_KEY, &k.id, None)?
            }
            Change::AccountDeleted(id) => {
                let keys: i64 = tx.query_row(
                    "SELECT count(*) FROM keys WHERE account_id = ?1",
                    [id],
                    |r| r.get(0),
                )?;
                if keys > 0 {
                    return Err(StoreError::Conflict(format!(
                        "account '{id}' still has {keys} key(s); delete them first"
                    )));
                }
                if tx.execute("DELETE FROM accounts WHERE id = ?1", [id])? == 0 {
                    return Err(StoreError::NotFound(format!("no account with id '{id}'")));
                }
                record(&tx, ENTITY_ACCOUNT, id, None)?
            }
            Change::KeyDeleted { id, .. } => delete_key(&tx, id)?.1,
        };
        tx.commit()?;
        Ok(seq)
    }

    /// Delete a key's row: the change to apply (with the digest it had) and its cursor.
    pub fn delete_key(&mut self, id: &str) -> Result<(Change, Cursor), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (sha256, seq) = delete_key(&tx, id)?;
        tx.commit()?;
        let change = Change::KeyDeleted {
            id: id.to_string(),
            sha256,
        };
        Ok((change, seq))
    }

    /// Add a new account (its id and name must be new).
    pub fn insert_account(&mut self, a: &AccountRow) -> Result<Cursor, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        upsert_account(&tx, a, false)?;
        let seq = record(&tx, ENTITY_ACCOUNT, &a.id, None)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Add a new key to an existing account, within its limits (name new in the account).
    pub fn insert_key(&mut self, k: &KeyRow) -> Result<Cursor, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let account = account_row(&tx, &k.account_id)?.ok_or_else(|| {
            StoreError::NotFound(format!("no account with id '{}'", k.account_id))
        })?;
        if let Some(p) = k.limits_problem(&account) {
            return Err(StoreError::Invalid(p));
        }
        upsert_key(&tx, k, false)?;
        let seq = record(&tx, ENTITY_KEY, &k.id, None)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Read, change and write an account in one transaction (so two processes editing it do
    /// not lose each other's change). `edit` may refuse; its id cannot change.
    pub fn update_account(
        &mut self,
        id: &str,
        edit: impl FnOnce(&mut AccountRow) -> Result<(), StoreError>,
    ) -> Result<(AccountRow, Cursor), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut row = account_row(&tx, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no account with id '{id}'")))?;
        edit(&mut row)?;
        row.id = id.to_string();
        upsert_account(&tx, &row, true)?;
        let seq = record(&tx, ENTITY_ACCOUNT, id, None)?;
        tx.commit()?;
        Ok((row, seq))
    }

    /// Read, change and write a key in one transaction; the result must stay within its
    /// account's limits. Its id, account and digest cannot change.
    pub fn update_key(
        &mut self,
        id: &str,
        edit: impl FnOnce(&mut KeyRow) -> Result<(), StoreError>,
    ) -> Result<(KeyRow, Cursor), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut row = key_row(&tx, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no key with id '{id}'")))?;
        let (account_id, sha256) = (row.account_id.clone(), row.sha256);
        edit(&mut row)?;
        row.id = id.to_string();
        row.account_id = account_id;
        row.sha256 = sha256;
        if let Some(account) = account_row(&tx, &row.account_id)? {
            if let Some(p) = row.limits_problem(&account) {
                return Err(StoreError::Invalid(p));
            }
        }
        upsert_key(&tx, &row, true)?;
        let seq = record(&tx, ENTITY_KEY, id, None)?;
        tx.commit()?;
        Ok((row, seq))
    }

    /// Every change after `cursor`: each row named is read as it is now, in one snapshot.
    pub fn changes_since(&mut self, cursor: Cursor) -> Result<Feed, StoreError> {
        let tx = self.conn.transaction()?;
        let head = head(&tx)?;
        let pruned: i64 =
            tx.query_row("SELECT pruned_through FROM feed_state", [], |r| r.get(0))?;
        let pruned = from_sql_u64(Some(pruned)).unwrap_or(0);
        if cursor < pruned || cursor > head {
            return Ok(Feed::Reload);
        }
        let mut changes = Vec::new();
        if cursor < head {
            // Each row once, at the place of its latest change.
            // (SQLite takes a bare column, `sha256`, from the row holding the max.)
            let mut st = tx.prepare_cached(
                "SELECT entity, id, max(seq) AS last, sha256 FROM changes WHERE seq > ?1
                 GROUP BY entity, id ORDER BY last",
            )?;
            type Named = (i64, String, Option<Vec<u8>>);
            let named: Vec<Named> = st
                .query_map([sql_time(cursor)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            for (entity, id, sha256) in named {
                let change = match entity {
                    ENTITY_ACCOUNT => match account_row(&tx, &id)? {
                        Some(a) => Change::Account(a),
                        None => Change::AccountDeleted(id),
                    },
                    ENTITY_KEY => match key_row(&tx, &id)? {
                        Some(k) => Change::Key(k),
                        None => match sha256.and_then(|d| <[u8; 32]>::try_from(d).ok()) {
                            Some(sha256) => Change::KeyDeleted { id, sha256 },
                            // Deleted without its digest recorded (not by this code):
                            // only a reload can drop it from an index.
                            None => return Ok(Feed::Reload),
                        },
                    },
                    _ => return Ok(Feed::Reload),
                };
                changes.push(change);
            }
        }
        tx.commit()?;
        Ok(Feed::Changes {
            changes,
            cursor: head,
        })
    }

    /// Delete feed entries but the newest `keep`; returns how many were deleted. A reader
    /// whose cursor is older than what is left is told to reload.
    pub fn prune_changes(&mut self, keep: u64) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let through = head(&tx)?.saturating_sub(keep);
        let pruned: i64 =
            tx.query_row("SELECT pruned_through FROM feed_state", [], |r| r.get(0))?;
        if sql_time(through) <= pruned {
            return Ok(0);
        }
        let deleted = tx.execute("DELETE FROM changes WHERE seq <= ?1", [sql_time(through)])?;
        tx.execute(
            "UPDATE feed_state SET pruned_through = ?1",
            [sql_time(through)],
        )?;
        tx.commit()?;
        Ok(deleted as u64)
    }

    /// Write many rows at once (setup, migration from the keys file), in one transaction,
    /// without a feed entry per row: every reader is told to reload instead. Ids, names and
    /// digests must be new; key limits are not checked against their accounts.
    pub fn import(
        &mut self,
        accounts: &[AccountRow],
        keys: &[KeyRow],
    ) -> Result<Cursor, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for a in accounts {
            upsert_account(&tx, a, false)?;
        }
        for k in keys {
            upsert_key(&tx, k, false)?;
        }
        let seq = record(&tx, ENTITY_IMPORT, "", None)?;
        tx.execute("UPDATE feed_state SET pruned_through = ?1", [sql_time(seq)])?;
        tx.commit()?;
        Ok(seq)
    }

    /// Make the store hold exactly these rows (the fleet's, read from Redis), in one
    /// transaction: rows not among them are deleted, the others written as given (a key's
    /// last use kept). Readers of the feed are told to reload.
    pub fn replace_all(
        &mut self,
        accounts: &[AccountRow],
        keys: &[KeyRow],
    ) -> Result<Cursor, StoreError> {
        // A million rows go into three indexes in random order: with SQLite's default 2 MB
        // page cache nearly every insert reads a page back from the file (21 s for a million
        // keys). The cache may grow to hold them while this runs, and is given back after.
        let cache: i64 = self.conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
        self.conn
            .pragma_update(None, "cache_size", -BULK_CACHE_KIB)?;
        let replaced = self.replace_rows(accounts, keys);
        self.conn.pragma_update(None, "cache_size", cache)?;
        replaced
    }

    fn replace_rows(
        &mut self,
        accounts: &[AccountRow],
        keys: &[KeyRow],
    ) -> Result<Cursor, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut used = std::collections::HashMap::new();
        {
            let mut st = tx.prepare("SELECT id, last_used_at FROM keys")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let at: Option<i64> = r.get(1)?;
                if let Some(at) = at {
                    used.insert(r.get::<_, String>(0)?, at);
                }
            }
        }
        tx.execute("DELETE FROM keys", [])?;
        tx.execute("DELETE FROM accounts", [])?;
        for a in accounts {
            upsert_account(&tx, a, true)?;
        }
        // In the order of the largest index (the digests'): its pages are then filled one
        // after another instead of at random.
        let mut in_order: Vec<&KeyRow> = keys.iter().collect();
        in_order.sort_unstable_by_key(|k| k.sha256);
        for k in in_order {
            upsert_key(&tx, k, true)?;
        }
        {
            let mut st = tx.prepare("UPDATE keys SET last_used_at = ?2 WHERE id = ?1")?;
            for (id, at) in &used {
                st.execute(params![id, at])?;
            }
        }
        let seq = record(&tx, ENTITY_IMPORT, "", None)?;
        tx.execute("UPDATE feed_state SET pruned_through = ?1", [sql_time(seq)])?;
        tx.commit()?;
        Ok(seq)
    }

    /// The fleet replica's mark, if one is kept.
    pub fn replica_mark(&self) -> Result<Option<ReplicaMark>, StoreError> {
        let mark = self
            .conn
            .query_row("SELECT epoch, position, local_seq FROM replica", [], |r| {
                Ok(ReplicaMark {
                    epoch: r.get(0)?,
                    position: r.get(1)?,
                    local_seq: from_sql_u64(Some(r.get(2)?)).unwrap_or(0),
                })
            })
            .optional()?;
        Ok(mark)
    }

    /// Keep the fleet replica's mark: the local feed's head is taken as `local_seq`.
    pub fn set_replica_mark(&mut self, epoch: &str, position: &str) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = head(&tx)?;
        tx.execute(
            "INSERT INTO replica (one, epoch, position, local_seq) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (one) DO UPDATE SET epoch = ?1, position = ?2, local_seq = ?3",
            params![epoch, position, sql_time(seq)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forget the fleet replica's mark: the next start loads the fleet's store whole.
    pub fn forget_replica_mark(&mut self) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM replica", [])?;
        Ok(())
    }

    /// Every row the local feed names after `cursor` (each once), or `None` when the feed
    /// no longer reaches back that far or names an import (every row may have changed).
    pub fn named_since(&mut self, cursor: Cursor) -> Result<Option<Vec<Named>>, StoreError> {
        let tx = self.conn.transaction()?;
        let pruned: i64 =
            tx.query_row("SELECT pruned_through FROM feed_state", [], |r| r.get(0))?;
        if cursor < from_sql_u64(Some(pruned)).unwrap_or(0) {
            return Ok(None);
        }
        let mut st = tx.prepare(
            "SELECT DISTINCT entity, id FROM changes WHERE seq > ?1 ORDER BY entity, id",
        )?;
        let rows: Vec<(i64, String)> = st
            .query_map([sql_time(cursor)], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(st);
        tx.commit()?;
        let mut named = Vec::with_capacity(rows.len());
        for (entity, id) in rows {
            named.push(match entity {
                ENTITY_ACCOUNT => Named::Account(id),
                ENTITY_KEY => Named::Key(id),
                _ => return Ok(None),
            });
        }
        Ok(Some(named))
    }

    /// Copy the WAL into the file without waiting for anyone (`PASSIVE`): on a connection of
    /// its own, in the background, so that no write pays for it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Record keys' last use (key id, Unix seconds), in one transaction: written in batches
    /// in the background, never per request, and not a feed event. A time older than the
    /// stored one is ignored; an unknown key is skipped.
    pub fn touch_last_used(&mut self, uses: &[(String, u64)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE keys SET last_used_at = ?2
                 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )?;
            for (id, at) in uses {
                st.execute(params![id, sql_time(*at)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn head(conn: &Connection) -> Result<Cursor, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(from_sql_u64(seq).unwrap_or(0))
}

fn record(
    conn: &Connection,
    entity: i64,
    id: &str,
    sha256: Option<&[u8; 32]>,
) -> Result<Cursor, StoreError> {
    conn.prepare_cached("INSERT INTO changes (entity, id, sha256, at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            entity,
            id,
            sha256.map(|d| &d[..]),
            sql_time(clock::unix_now())
        ])?;
    Ok(from_sql_u64(Some(conn.last_insert_rowid())).unwrap_or(0))
}

/// Delete a key's row and record it: the digest it had, and the change's cursor.
fn delete_key(conn: &Connection, id: &str) -> Result<([u8; 32], Cursor), StoreError> {
    let sha: Option<Vec<u8>> = conn
        .prepare_cached("DELETE FROM keys WHERE id = ?1 RETURNING sha256")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let sha256: [u8; 32] = sha
        .ok_or_else(|| StoreError::NotFound(format!("no key with id '{id}'")))?
        .try_into()
        .map_err(|_| StoreError::Invalid(format!("key '{id}' had a malformed digest")))?;
    let seq = record(conn, ENTITY_KEY, id, Some(&sha256))?;
    Ok((sha256, seq))
}

fn account_row(conn: &Connection, id: &str) -> Result<Option<AccountRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
        ))?
        .query_row([id], account_from)
        .optional()?)
}

fn key_row(conn: &Connection, id: &str) -> Result<Option<KeyRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"))?
        .query_row([id], key_from)
        .optional()?)
}

/// Insert the account, or (with `replace`) update the row with its id.
fn upsert_account(conn: &Connection, a: &AccountRow, replace: bool) -> Result<(), StoreError> {
    let on_conflict = if replace {
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, plan = excluded.plan,
           payment_method = excluded.payment_method, on_hold = excluded.on_hold,
           ceiling = excluded.ceiling, models = excluded.models"
    } else {
        ""
    };
    conn.prepare_cached(&format!(
        "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         {on_conflict}"
    ))?
    .execute(params![
        a.id,
        a.name,
        a.plan,
        a.payment_method,
        a.on_hold,
        sql_amount(a.ceiling_usd)?,
        sql_models(&a.models),
        sql_time(a.created_at),
    ])
    .map_err(|e| {
        conflict(e, |msg| {
            if msg.contains("accounts.name") {
                format!("an account named '{}' already exists", a.name)
            } else {
                format!("an account with id '{}' already exists", a.id)
            }
        })
    })?;
    Ok(())
}

/// Insert the key, or (with `replace`) update the row with its id; `last_used_at` is left
/// as stored.
fn upsert_key(conn: &Connection, k: &KeyRow, replace: bool) -> Result<(), StoreError> {
    let on_conflict = if replace {
        " ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id,
           name = excluded.name, sha256 = excluded.sha256, kind = excluded.kind,
           status = excluded.status, expires_at = excluded.expires_at,
           revoke_at_expiry = excluded.revoke_at_expiry,
           monthly_limit = excluded.monthly_limit, models = excluded.models"
    } else {
        ""
    };
    conn.prepare_cached(&format!(
        "INSERT INTO keys ({KEY_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, ?11) {on_conflict}"
    ))?
    .execute(params![
        k.id,
        k.account_id,
        k.name,
        &k.sha256[..],
        k.kind.as_str(),
        status_str(k.status),
        k.expires_at.map(sql_time),
        sql_time(k.created_at),
        sql_amount(k.monthly_limit_usd)?,
        sql_models(&k.models),
        k.revoke_at_expiry,
    ])
    .map_err(|e| {
        conflict(e, |msg| {
            if msg.contains("keys.name") {
                format!("the account already has a key named '{}'", k.name)
            } else if msg.contains("keys.sha256") {
                "a key with this secret is already stored".to_string()
            } else {
                format!("a key with id '{}' already exists", k.id)
            }
        })
    })?;
    Ok(())
}
