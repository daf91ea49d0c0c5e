//! Accounts and their keys, kept in an embedded database and served from memory.
//!
//! - [`model`]: the stored rows ([`AccountRow`], [`KeyRow`]) and the [`Change`] one write
//!   makes;
//! - [`store`]: the SQLite file, the source of truth, with its change feed;
//! - [`index`]: [`KeyIndex`], the table the request path reads (digest to key and account,
//!   no lock);
//! - [`Directory`] here ties them: every change is written to the file and applied to this
//!   process's index at once (a key authenticates the moment it is returned), and
//!   [`Directory::refresh`] applies what other processes wrote, from the feed;
//! - in fleet mode a [`Replication`] (the fleet's Redis store, `crate::fleet`'s
//!   `share_key_store`) gets every write after this process's store and index, and the
//!   other gateways' writes come back through [`Directory::apply_remote`];
//! - [`ops`]: what the operator CLI, the admin API and the owners' management API share
//!   (account edits, key rotation, the JSON of a row).
//!
//! Plain types, no Pingora: the gateway and the admin surfaces call into it.

pub mod index;
pub mod model;
pub mod ops;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use index::{Found, IndexedAccount, IndexedKey, KeyIndex, Refusal};
pub use model::{
    digest_of, new_account_id, new_key_id, new_secret, AccountRow, Change, Cursor, KeyKind, KeyRow,
    KeyStatus,
};
pub use ops::{AccountEdit, Rotated, MAX_ROTATION_GRACE_SECS};
pub use store::{Feed, Named, ReplicaMark, Store, StoreError};

use crate::units::{clock, Usd};

/// Feed entries kept by [`Directory::prune_feed`] by default: at 1,000 writes a second, 100 s
/// of changes, far more than a reader refreshing every 250 ms falls behind.
pub const FEED_KEEP: u64 = 100_000;

/// Where a fleet's directory sends its writes (the fleet's shared key store, Redis), so
/// that every gateway applies them: [`Directory::replicate_to`]. A single gateway has none.
pub trait Replication: Send + Sync {
    /// Whether a write can be shared now; when not, writes are refused before anything is
    /// changed ([`StoreError::Unavailable`]).
    fn ready(&self) -> bool;
    /// Share one change this process made (already in its own store and index).
    fn publish(&self, change: &Change) -> Result<(), StoreError>;
}

/// What a new account starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAccount {
    pub name: String,
    pub plan: String,
    pub payment_method: bool,
    pub on_hold: bool,
    pub ceiling_usd: Option<Usd>,
    pub models: Option<Vec<String>>,
}

/// A key's own limits, within its account's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub expires_at: Option<u64>,
    pub monthly_limit_usd: Option<Usd>,
    pub models: Option<Vec<String>>,
}

/// What [`Directory::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Nothing was written since the last refresh.
    Unchanged,
    /// This many rows were applied from the feed.
    Applied(usize),
    /// The feed no longer reached back to this process's cursor: everything was reloaded.
    Reloaded,
}

struct Inner {
    store: Store,
    /// The last change this process's index reflects.
    cursor: Cursor,
}

/// The account directory of one process: the store and the index loaded from it.
///
/// Writes and refreshes are serialized (one store connection); lookups never wait for them.
pub struct Directory {
    inner: Mutex<Inner>,
    /// A second connection, for checkpoints outside the writers' lock.
    checkpointer: Mutex<Store>,
    /// Replaced whole only by a reload; single changes are applied in place.
    index: ArcSwap<KeyIndex>,
    /// The database file: its and its WAL's size and mtime tell a refresh whether anyone
    /// wrote, without a read (an idle gateway must not keep reading its files).
    path: std::path::PathBuf,
    seen: Mutex<Option<(FilesSeen, std::time::Instant)>>,
    /// Whether there are writes the checkpointer has not copied into the file yet.
    unchecked: std::sync::atomic::AtomicBool,
    /// Fleet mode: where every write is shared.
    replication: std::sync::OnceLock<Arc<dyn Replication>>,
    /// Keys whose last use changed since the last [`Directory::flush_last_used`]: each key
    /// at most once a minute ([`IndexedKey::touch`]), so the lock is not taken per request.
    used: Mutex<Vec<Arc<IndexedKey>>>,
}

/// How often [`Directory::spawn_refresher`] writes the keys' last uses.
pub const LAST_USE_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Longest time a refresh trusts the files' sizes and times alone.
const FULL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Size and modification time of the database file and its WAL.
type FilesSeen = [(u64, Option<std::time::SystemTime>); 2];

fn files_seen(path: &Path) -> FilesSeen {
    let of = |p: &Path| std::fs::metadata(p).map_or((0, None), |m| (m.len(), m.modified().ok()));
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [of(path), of(Path::new(&wal))]
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("index", &*self.index.load())
            .finish()
    }
}

/// Every row of the store in a new index; and the cursor of that snapshot.
fn load_index(store: &mut Store) -> Result<(KeyIndex, Cursor), StoreError> {
    let mut index = KeyIndex::default();
    let cursor = store.scan(
        &mut index,
        |index, accounts, keys| *index = KeyIndex::with_capacity(keys, accounts),
        |index, change| index.apply(&change),
    )?;
    Ok((index, cursor))
}

impl Directory {
    /// Open (or create) the accounts file at `path` and load every row.
    pub fn open(path: &Path) -> Result<Directory, StoreError> {
        let mut store = Store::open(path)?;
        let (index, cursor) = load_index(&mut store)?;
        Ok(Directory {
            inner: Mutex::new(Inner { store, cursor }),
            checkpointer: Mutex::new(Store::open(path)?),
            index: ArcSwap::from_pointee(index),
            path: path.to_path_buf(),
            seen: Mutex::new(None),
            // The writers (CLI, other gateways) checkpoint their own writes when they close;
            // this process checkpoints what it writes itself.
            unchecked: std::sync::atomic::AtomicBool::new(false),
            replication: std::sync::OnceLock::new(),
            used: Mutex::new(Vec::new()),
        })
    }

    /// Share every write from now on through `to` (fleet mode; set once).
    pub fn replicate_to(&self, to: Arc<dyn Replication>) {
        let _ = self.replication.set(to);
    }

    /// Whether writes are shared with a fleet.
    pub fn replicated(&self) -> bool {
        self.replication.get().is_some()
    }

    /// Refuse a write up front when the fleet's store cannot take it.
    fn writable(&self) -> Result<(), StoreError> {
        match self.replication.get() {
            Some(r) if !r.ready() => Err(StoreError::Unavailable(
                "the fleet's shared key store (Redis) is unreachable; nothing was changed".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Share a change this process has written (under the writers' lock, so the fleet's
    /// stream has this process's writes in its order). When the fleet's store did not take
    /// it, the local copy holds a row the fleet may not: the replica's mark is forgotten,
    /// so that the next start loads the fleet's store whole instead of resuming.
    fn publish(&self, inner: &mut Inner, change: &Change) -> Result<(), StoreError> {
        let Some(r) = self.replication.get() else {
            return Ok(());
        };
        let sent = r.publish(change);
        if sent.is_err() {
            if let Err(e) = inner.store.forget_replica_mark() {
                log::warn!("accounts: cannot forget the fleet replica's mark: {e}");
            }
        }
        sent
    }

    /// The fleet replica's mark kept in the local copy ([`ReplicaMark`]).
    pub fn replica_mark(&self) -> Result<Option<ReplicaMark>, StoreError> {
        self.inner().store.replica_mark()
    }

    /// Record that the local copy holds the fleet's stream up to `position` (and that every
    /// local change so far is in the fleet's store: writes hold the same lock from their
    /// local commit to their publication).
    pub fn mark_replica(&self, epoch: &str, position: &str) -> Result<(), StoreError> {
        self.inner().store.set_replica_mark(epoch, position)
    }

    /// Forget the fleet replica's mark.
    pub fn forget_replica(&self) -> Result<(), StoreError> {
        self.inner().store.forget_replica_mark()
    }

    /// Rows the local feed names after `cursor` ([`Store::named_since`]).
    pub fn named_since(&self, cursor: Cursor) -> Result<Option<Vec<Named>>, StoreError> {
        self.inner().store.named_since(cursor)
    }

    /// Apply a change another gateway made (from the fleet's stream): to this process's
    /// store, the fleet's local copy, and to its index. A row the local copy refuses (it
    /// lags the fleet) still goes to the index, which must follow the fleet; the next full
    /// load puts the copy right.
    ///
    /// Returns whether the local copy took it (a deletion of a row it lacks counts).
    pub fn apply_remote(&self, change: &Change) -> bool {
        let mut inner = self.inner();
        let written = match change {
            Change::KeyDeleted { id, .. } => inner.store.delete_key(id).map(|(_, seq)| seq),
            other => inner.store.write(other),
        };
        match written {
            Ok(seq) => {
                self.applied(&mut inner, seq, change);
                true
            }
            Err(StoreError::NotFound(_))
                if matches!(
                    change,
                    Change::KeyDeleted { .. } | Change::AccountDeleted(_)
                ) =>
            {
                self.index.load().apply(change);
                true
            }
            Err(e) => {
                log::warn!("accounts: a fleet change does not fit the local copy: {e}");
                self.index.load().apply(change);
                false
            }
        }
    }

    /// Make the store and the index hold exactly these rows (the fleet's, at start or after
    /// Redis was unreachable).
    pub fn replace_all(&self, accounts: &[AccountRow], keys: &[KeyRow]) -> Result<(), StoreError> {
        let mut inner = self.inner();
        inner.store.replace_all(accounts, keys)?;
        self.unchecked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (index, cursor) = load_index(&mut inner.store)?;
        self.index.store(Arc::new(index));
        inner.cursor = cursor;
        Ok(())
    }

    /// Every row of the store (to seed a fleet's shared store).
    pub fn rows(&self) -> Result<(Vec<AccountRow>, Vec<KeyRow>), StoreError> {
        let (accounts, keys, _) = self.inner().store.load_all()?;
        Ok((accounts, keys))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index as it is now (a reload may replace it later: hold it for one request only).
    pub fn index(&self) -> arc_swap::Guard<Arc<KeyIndex>> {
        self.index.load()
    }

    /// The key with this digest and its account.
    pub fn lookup(&self, sha256: &[u8; 32]) -> Option<Found> {
        self.index.load().lookup(sha256)
    }

    /// A presented secret's key and account, if it is known, active and not expired.
    pub fn authenticate(&self, secret: &str, now: u64) -> Result<Found, Refusal> {
        self.index.load().authenticate(secret, now)
    }

    pub fn account(&self, id: &str) -> Option<Arc<IndexedAccount>> {
        self.index.load().account(id)
    }

    /// The key with this id, read from the store (admin pages: with its last use).
    pub fn key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        self.inner().store.key(id)
    }

    /// An account's keys by name, read from the store (admin pages: with their last use).
    pub fn keys_of(&self, account_id: &str) -> Result<Vec<KeyRow>, StoreError> {
        self.inner().store.keys_of(account_id)
    }

    /// A page of an account's keys by id, read from the store: [`Store::keys_page`].
    pub fn keys_page(
        &self,
        account_id: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<KeyRow>, StoreError> {
        self.inner().store.keys_page(account_id, after, limit)
    }

    /// The account named `name`, read from the store.
    pub fn account_by_name(&self, name: &str) -> Result<Option<AccountRow>, StoreError> {
        self.inner().store.account_by_name(name)
    }

    /// The last change this process has applied.
    pub fn cursor(&self) -> Cursor {
        self.inner().cursor
    }

    /// Apply a change this process wrote (at `seq`) to its own index, under the lock the
    /// write was made with, so this process's index follows its writes in order.
    fn applied(&self, inner: &mut Inner, seq: Cursor, change: &Change) {
        self.unchecked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.index.load().apply(change);
        // With nothing of other processes in between, the feed has nothing new for us up to
        // `seq`; otherwise the next refresh reads it (and this row again, harmlessly).
        if seq == inner.cursor + 1 {
            inner.cursor = seq;
        }
    }

    /// Create an account. Its name must be new.
    pub fn create_account(&self, new: NewAccount) -> Result<AccountRow, StoreError> {
        check_name("an account's", &new.name)?;
        check_plan(&new.plan)?;
        check_models(new.models.as_deref())?;
        let row = AccountRow {
            id: new_account_id(),
            name: new.name,
            plan: new.plan,
            payment_method: new.payment_method,
            on_hold: new.on_hold,
            ceiling_usd: new.ceiling_usd,
            models: new.models,
            created_at: clock::unix_now(),
        };
        self.writable()?;
        let mut inner = self.inner();
        let seq = inner.store.insert_account(&row)?;
        let change = Change::Account(row.clone());
        self.applied(&mut inner, seq, &change);
        self.publish(&mut inner, &change)?;
        Ok(row)
    }

    /// Change an account's terms (`edit` gets the stored row; its id stays).
    pub fn update_account(
        &self,
        id: &str,
        edit: impl FnOnce(&mut AccountRow),
    ) -> Result<AccountRow, StoreError> {
        self.writable()?;
        let mut inner = self.inner();
        let (row, seq) = inner.store.update_account(id, |row| {
            edit(row);
            check_name("an account's", &row.name)?;
            check_plan(&row.plan)?;
            check_models(row.models.as_deref())
        })?;
        let change = Change::Account(row.clone());
        self.applied(&mut inner, seq, &change);
        self.publish(&mut inner, &change)?;
        Ok(row)
    }

    /// Delete an account that has no keys left.
    pub fn delete_account(&self, id: &str) -> Result<(), StoreError> {
        self.writable()?;
        let change = Change::AccountDeleted(id.to_string());
        let mut inner = self.inner();
        let seq = inner.store.write(&change)?;
        self.applied(&mut inner, seq, &change);
        self.publish(&mut inner, &change)?;
        Ok(())
    }

    /// Create a key for an account: the secret (shown once, never stored) and its row. The
    /// key authenticates as soon as this returns. Its name must be new within the account
    /// and its limits within the account's.
    pub fn create_key(
        &self,
        account_id: &str,
        name: &str,
        kind: KeyKind,
        limits: KeyLimits,
    ) -> Result<(String, KeyRow), StoreError> {
        check_name("a key's", name)?;
        check_models(limits.models.as_deref())?;
        let (secret, sha256) = new_secret();
        let row = KeyRow {
            id: new_key_id(),
            account_id: account_id.to_string(),
            name: name.to_string(),
            sha256,
            kind,
            status: KeyStatus::Active,
            expires_at: limits.expires_at,
            revoke_at_expiry: false,
            created_at: clock::unix_now(),
            monthly_limit_usd: limits.monthly_limit_usd,
            models: limits.models,
            last_used_at: None,
        };
        self.writable()?;
        let mut inner = self.inner();
        let seq = inner.store.insert_key(&row)?;
        let change = Change::Key(row.clone());
        self.applied(&mut inner, seq, &change);
        self.publish(&mut inner, &change)?;
        Ok((secret, row))
    }

    /// Change a key (name, expiry, limits, status: `edit` gets the stored row; its id,
    /// account and digest stay). A revoked key stays revoked (a rotated key past its grace
    /// is written as revoked on its next change).
    pub fn update_key(
        &self,
        id: &str,
        edit: impl FnOnce(&mut KeyRow),
    ) -> Result<KeyRow, StoreError> {
        self.writable()?;
        let mut inner = self.inner();
        let now = clock::unix_now();
        let (row, seq) = inner.store.update_key(id, |row| {
            let was_revoked = row.revoked_at(now);
            if was_revoked {
                row.status = KeyStatus::Revoked;
            }
            edit(row);
            check_name("a key's", &row.name)?;
            check_models(row.models.as_deref())?;
            if was_revoked && row.status != KeyStatus::Revoked {
                return Err(StoreError::Conflict(format!(
                    "key '{}' is revoked for good; create a new key",
                    row.name
                )));
            }
            Ok(())
        })?;
        let change = Change::Key(row.clone());
        self.applied(&mut inner, seq, &change);
        self.publish(&mut inner, &change)?;
        Ok(row)
    }

    /// Activate, suspend or revoke a key. A revoked key stays revoked: it was given out and
    /// may be known to others, so only a new key brings its owner back.
    pub fn set_key_status(&self, id: &str, status: KeyStatus) -> Result<KeyRow, StoreError> {
        self.update_key(id, |row| row.status = status)
    }

    /// Revoke a key, at once in this process.
    pub fn revoke_key(&self, id: &str) -> Result<KeyRow, StoreError> {
        self.set_key_status(id, KeyStatus::Revoked)
    }

    /// Write many rows at once (the keys file's, on migration), then load the index anew;
    /// other processes reload on their next refresh.
    pub fn import(&self, accounts: &[AccountRow], keys: &[KeyRow]) -> Result<(), StoreError> {
        if accounts.is_empty() && keys.is_empty() {
            return Ok(());
        }
        self.writable()?;
        let mut inner = self.inner();
        inner.store.import(accounts, keys)?;
        let (index, cursor) = load_index(&mut inner.store)?;
        self.index.store(Arc::new(index));
        inner.cursor = cursor;
        for a in accounts {
            self.publish(&mut inner, &Change::Account(a.clone()))?;
        }
        for k in keys {
            self.publish(&mut inner, &Change::Key(k.clone()))?;
        }
        Ok(())
    }

    /// Delete a key's row (revoking keeps it, for reports; this forgets it).
    pub fn delete_key(&self, id: &str) -> Result<(), StoreError> {
        self.writable()?;
        let mut inner = self.inner();
        let (change, seq) = inner.store.delete_key(id)?;
        self.applied(&mut inner, seq, &change);
        self.publish(&mut inner, &change)?;
        Ok(())
    }

    /// Apply what other processes wrote since the last refresh: nothing when the feed's head
    /// has not moved (one cheap query), the rows it names otherwise, everything when it no
    /// longer reaches back to this process's cursor.
    pub fn refresh(&self) -> Result<Refreshed, StoreError> {
        // Nobody wrote since the last look (same sizes and mtimes): no query at all. Taken
        // before the query, so a write that lands during it is seen next time.
        // File times are coarse (a few ms): two writes in one tick that leave the WAL's size
        // as it was would look like none, so the feed is also read every few seconds.
        let now_seen = files_seen(&self.path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if let Some((files, at)) = seen.as_ref() {
                if *files == now_seen && now.duration_since(*at) < FULL_CHECK_EVERY {
                    return Ok(Refreshed::Unchanged);
                }
            }
            *seen = Some((now_seen, now));
        }
        let mut inner = self.inner();
        if inner.store.head()? == inner.cursor {
            return Ok(Refreshed::Unchanged);
        }
        // Others wrote: copy their WAL frames into the file on the next checkpoint.
        self.unchecked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let cursor = inner.cursor;
        match inner.store.changes_since(cursor)? {
            Feed::Changes { changes, cursor } => {
                let index = self.index.load();
                for change in &changes {
                    index.apply(change);
                }
                inner.cursor = cursor;
                Ok(Refreshed::Applied(changes.len()))
            }
            Feed::Reload => {
                let (index, cursor) = load_index(&mut inner.store)?;
                self.index.store(Arc::new(index));
                inner.cursor = cursor;
                Ok(Refreshed::Reloaded)
            }
        }
    }

    /// Reload everything from the store, replacing the index.
    pub fn reload(&self) -> Result<(), StoreError> {
        let mut inner = self.inner();
        let (index, cursor) = load_index(&mut inner.store)?;
        self.index.store(Arc::new(index));
        inner.cursor = cursor;
        Ok(())
    }

    /// Drop feed entries but the newest `keep` ([`FEED_KEEP`] is a good bound).
    pub fn prune_feed(&self, keep: u64) -> Result<u64, StoreError> {
        self.inner().store.prune_changes(keep)
    }

    /// Copy the WAL into the database file (in the background: [`Directory::spawn_refresher`]
    /// does it every second), so that writes do not pay for it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        // Only after writes: a checkpoint of an unchanged WAL still reads it.
        if !self
            .unchecked
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let store = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner());
        store.checkpoint()
    }

    /// Record keys' last use, in one transaction (see [`Store::touch_last_used`]).
    pub fn touch_last_used(&self, uses: &[(String, u64)]) -> Result<(), StoreError> {
        self.inner().store.touch_last_used(uses)
    }

    /// Note that `key` authenticated a request at `now`: an atomic read on the key (a write
    /// once a minute), and the key queued for the next [`Directory::flush_last_used`] when
    /// its minute changed. Nothing is written to the store here.
    pub fn record_use(&self, key: &Arc<IndexedKey>, now: u64) {
        if key.touch(now) {
            self.used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(key.clone());
        }
    }

    /// Write the last uses noted since the previous flush, coalesced, in one transaction
    /// (the refresher does it every [`LAST_USE_FLUSH_EVERY`]); returns how many keys. They
    /// go to this process's store only: in fleet mode that is the gateway's local copy, so
    /// a key's last use shown by a gateway is the last one *it* served (not shared through
    /// Redis, which would be a write per key per minute for every gateway).
    pub fn flush_last_used(&self) -> Result<usize, StoreError> {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        if used.is_empty() {
            return Ok(0);
        }
        let mut latest: std::collections::HashMap<&str, u64> =
            std::collections::HashMap::with_capacity(used.len());
        for key in &used {
            if let Some(t) = key.last_used_at() {
                let at = latest.entry(&key.id).or_default();
                *at = (*at).max(t);
            }
        }
        let uses: Vec<(String, u64)> = latest
            .into_iter()
            .map(|(id, t)| (id.to_string(), t))
            .collect();
        self.touch_last_used(&uses)?;
        self.unchecked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(uses.len())
    }

    /// Refresh every `every` (about 250 ms) on the blocking pool, write the keys' last uses
    /// every [`LAST_USE_FLUSH_EVERY`], checkpoint the WAL about once a second and prune the
    /// feed to [`FEED_KEEP`] about once a minute, until the task is aborted. Failures are logged and
    /// retried on the next tick.
    pub fn spawn_refresher(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let prune_every =
                (Duration::from_secs(60).as_millis() / every.as_millis().max(1)).max(1) as u64;
            let checkpoint_every = (1000 / every.as_millis().max(1)).max(1) as u64;
            let flush_every =
                (LAST_USE_FLUSH_EVERY.as_millis() / every.as_millis().max(1)).max(1) as u64;
            let mut ticks = 0u64;
            loop {
                tick.tick().await;
                ticks += 1;
                let dir = self.clone();
                let prune = ticks.is_multiple_of(prune_every);
                let checkpoint = ticks.is_multiple_of(checkpoint_every);
                let flush = ticks.is_multiple_of(flush_every);
                let done = tokio::task::spawn_blocking(move || {
                    dir.refresh()?;
                    if flush {
                        dir.flush_last_used()?;
                    }
                    if checkpoint {
                        dir.checkpoint()?;
                    }
                    if prune {
                        dir.prune_feed(FEED_KEEP)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!("accounts: refresh failed: {e}"),
                    Err(e) => log::warn!("accounts: refresh task failed: {e}"),
                }
            }
        })
    }
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    match model::name_problem(what, name) {
        Some(p) => Err(StoreError::Invalid(p)),
        None => Ok(()),
    }
}

fn check_plan(plan: &str) -> Result<(), StoreError> {
    if plan.trim().is_empty() {
        return Err(StoreError::Invalid("an account needs a plan".into()));
    }
    Ok(())
}

fn check_models(models: Option<&[String]>) -> Result<(), StoreError> {
    match model::models_problem(models) {
        Some(p) => Err(StoreError::Invalid(p)),
        None => Ok(()),
    }
}
