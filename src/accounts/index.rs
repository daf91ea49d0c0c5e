//! [`KeyIndex`]: the hot-path table, key digest to key and account.
//!
//! A lookup takes no lock: the digest map is a `papaya` map, whose reads are lock-free (no
//! shared lock word is written, so readers on many cores do not contend), and a key points
//! at its account's [`AccountSlot`], read through `arc-swap`. Applying one change is O(1):
//! a key row replaces one map entry, an account row swaps its slot's content (however many
//! keys it has); nothing is rebuilt or cloned.
//!
//! Nothing else is kept per key: a key deleted is named by id and digest in its change, and
//! admin pages (a key by id, an account's keys, last use) read the store, which has indexes
//! for them. Memory is kept small for a million keys: strings are `Box<str>` (no spare
//! capacity), limits are packed into plain integers, and a model list is allocated only
//! when set.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::model::{AccountRow, Change, KeyKind, KeyRow, KeyStatus};
use crate::units::Usd;

/// A key as the request path needs it: 80 bytes (96 with its `Arc`) plus its id and name.
/// Its digest is the map's key; its creation time is read from the store. Its last use is
/// noted here (in what was padding) and written to the store in batches, which pages read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedKey {
    pub id: Box<str>,
    /// The account's slot, shared with the account's map entry and its other keys.
    account: Arc<AccountSlot>,
    pub name: Box<str>,
    pub kind: KeyKind,
    pub status: KeyStatus,
    /// Unix seconds; 0: never (no key expires at the epoch). See [`IndexedKey::expires_at`].
    expires_at: u64,
    /// At `expires_at` the key is revoked, not expired (a rotation's grace ended).
    revoke_at_expiry: bool,
    /// When the key last authenticated a request, to the minute: [`IndexedKey::touch`].
    last_used: LastUse,
    /// Pico-dollars; `u64::MAX`: none. See [`IndexedKey::monthly_limit_usd`].
    monthly_limit: u64,
    /// Boxed twice so that a key without a restriction (most) spends 8 bytes on it, not 16.
    #[allow(clippy::box_collection)]
    models: Option<Box<Box<[Box<str>]>>>,
}

impl IndexedKey {
    fn from_row(row: &KeyRow, account: Arc<AccountSlot>) -> IndexedKey {
        IndexedKey {
            id: row.id.as_str().into(),
            account,
            name: row.name.as_str().into(),
            kind: row.kind,
            status: row.status,
            expires_at: row.expires_at.unwrap_or(0),
            revoke_at_expiry: row.revoke_at_expiry,
            last_used: LastUse::at(row.last_used_at.unwrap_or(0)),
            monthly_limit: row.monthly_limit_usd.map_or(u64::MAX, Usd::picos),
            models: boxed_models(row.models.as_deref()).map(Box::new),
        }
    }

    pub fn account_id(&self) -> &str {
        &self.account.id
    }

    pub fn expires_at(&self) -> Option<u64> {
        (self.expires_at != 0).then_some(self.expires_at)
    }

    /// The key's own monthly spend limit, within its account's ceiling.
    pub fn monthly_limit_usd(&self) -> Option<Usd> {
        (self.monthly_limit != u64::MAX).then_some(Usd(self.monthly_limit))
    }

    /// The key's own model restriction, within its account's.
    pub fn models(&self) -> Option<&[Box<str>]> {
        self.models.as_deref().map(|m| &**m)
    }

    /// Whether the key may be used at `now` (Unix seconds): active and not expired.
    pub fn usable_at(&self, now: u64) -> Result<(), Refusal> {
        match self.status {
            KeyStatus::Active => {}
            KeyStatus::Suspended => return Err(Refusal::Suspended),
            KeyStatus::Revoked => return Err(Refusal::Revoked),
        }
        if self.expires_at().is_some_and(|t| now >= t) {
            return Err(match self.revoke_at_expiry {
                true => Refusal::Revoked,
                false => Refusal::Expired,
            });
        }
        Ok(())
    }

    /// Note a use at `now` (Unix seconds). True only for the first use in a minute since the
    /// last one noted, when the caller should queue the key for the next batch of last-use
    /// writes ([`super::Directory::record_use`]): one atomic read per request otherwise.
    pub fn touch(&self, now: u64) -> bool {
        self.last_used.touch(now)
    }

    /// The last use noted (Unix seconds), if any.
    pub fn last_used_at(&self) -> Option<u64> {
        self.last_used.get()
    }
}

/// A key's last use in memory: Unix seconds in 32 bits (until 2106), written at most once
/// a minute per key, whatever its traffic. Not part of the key's identity: equal whatever
/// it holds.
#[derive(Default)]
struct LastUse(AtomicU32);

/// Uses closer together than this are one for last-use purposes.
const LAST_USE_PRECISION_SECS: u64 = 60;

impl LastUse {
    fn at(secs: u64) -> LastUse {
        LastUse(AtomicU32::new(u32::try_from(secs).unwrap_or(u32::MAX)))
    }

    fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            t => Some(u64::from(t)),
        }
    }

    fn touch(&self, now: u64) -> bool {
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        let seen = self.0.load(Ordering::Relaxed);
        // Read-only while recent: a hot key's cache line is not written per request.
        if u64::from(now.saturating_sub(seen)) < LAST_USE_PRECISION_SECS {
            return false;
        }
        self.0
            .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Clone for LastUse {
    fn clone(&self) -> Self {
        LastUse(AtomicU32::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for LastUse {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LastUse {}

impl std::fmt::Debug for LastUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// An account's place in the index, shared by the account's map entry and all its keys: a
/// lookup goes from the key to its account without a second map lookup, and a change to the
/// account swaps the slot's content (O(1), whatever its number of keys).
pub struct AccountSlot {
    id: Arc<str>,
    /// `None` until the account's row arrives (a key may come first), and once it is deleted.
    current: ArcSwapOption<IndexedAccount>,
}

impl std::fmt::Debug for AccountSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSlot").field("id", &self.id).finish()
    }
}

impl PartialEq for AccountSlot {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for AccountSlot {}

/// An account as the request path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedAccount {
    pub id: Arc<str>,
    pub name: Box<str>,
    pub plan: Box<str>,
    pub payment_method: bool,
    pub on_hold: bool,
    pub ceiling_usd: Option<Usd>,
    pub models: Option<Box<[Box<str>]>>,
    pub created_at: u64,
}

impl IndexedAccount {
    fn from_row(row: &AccountRow, id: Arc<str>) -> IndexedAccount {
        IndexedAccount {
            id,
            name: row.name.as_str().into(),
            plan: row.plan.as_str().into(),
            payment_method: row.payment_method,
            on_hold: row.on_hold,
            ceiling_usd: row.ceiling_usd,
            models: boxed_models(row.models.as_deref()),
            created_at: row.created_at,
        }
    }

    pub fn to_row(&self) -> AccountRow {
        AccountRow {
            id: self.id.to_string(),
            name: self.name.to_string(),
            plan: self.plan.to_string(),
            payment_method: self.payment_method,
            on_hold: self.on_hold,
            ceiling_usd: self.ceiling_usd,
            models: unboxed_models(self.models.as_deref()),
            created_at: self.created_at,
        }
    }
}

fn boxed_models(models: Option<&[String]>) -> Option<Box<[Box<str>]>> {
    models.map(|m| m.iter().map(|s| s.as_str().into()).collect())
}

fn unboxed_models(models: Option<&[Box<str>]>) -> Option<Vec<String>> {
    models.map(|m| m.iter().map(|s| s.to_string()).collect())
}

/// Why a presented key does not authenticate. The messages never contain the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key has this digest (or its account is gone).
    Unknown,
    Suspended,
    Revoked,
    Expired,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unknown => "Incorrect API key provided.",
            Refusal::Suspended => "This API key is suspended. Ask your operator to re-enable it.",
            Refusal::Revoked => "This API key has been revoked. Create a new key.",
            Refusal::Expired => "This API key has expired. Create a new key.",
        }
    }
}

/// A key and its account, as [`KeyIndex::lookup`] finds them.
pub type Found = (Arc<IndexedKey>, Arc<IndexedAccount>);

/// Hashes a digest by its first 8 bytes: a SHA-256 is already uniform, and a client cannot
/// flood the table (only the gateway inserts; a client's digests are only looked up).
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHash;

pub struct DigestHasher(u64);

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (`write_usize`, ignored below) then its bytes.
        match bytes.first_chunk::<8>() {
            Some(head) => self.0 ^= u64::from_le_bytes(*head),
            None => {
                for &b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

/// The hot-path table: key digest to key, account id to account.
pub struct KeyIndex {
    by_digest: papaya::HashMap<[u8; 32], Arc<IndexedKey>, DigestHash>,
    accounts: papaya::HashMap<Arc<str>, Arc<AccountSlot>>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::with_capacity(0, 0)
    }
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex")
            .field("keys", &self.len())
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

impl KeyIndex {
    /// An empty index sized for `keys` keys and `accounts` accounts (a load knows both, and
    /// the maps then never grow while it fills them).
    pub fn with_capacity(keys: usize, accounts: usize) -> KeyIndex {
        KeyIndex {
            by_digest: papaya::HashMap::with_capacity_and_hasher(keys, DigestHash),
            accounts: papaya::HashMap::with_capacity(accounts),
        }
    }

    /// An index holding these rows.
    pub fn build(accounts: &[AccountRow], keys: &[KeyRow]) -> KeyIndex {
        let index = KeyIndex::with_capacity(keys.len(), accounts.len());
        for a in accounts {
            index.put_account(a);
        }
        for k in keys {
            index.put_key(k);
        }
        index
    }

    /// The key with this digest and its account. No lock is taken.
    pub fn lookup(&self, sha256: &[u8; 32]) -> Option<Found> {
        let key = self.by_digest.pin().get(sha256)?.clone();
        let account = key.account.current.load_full()?;
        Some((key, account))
    }

    /// Authenticate a presented secret at `now` (Unix seconds): its SHA-256, the lookup and
    /// the key's status and expiry. (Prefix checks and vendor hints stay with the caller.)
    pub fn authenticate(&self, secret: &str, now: u64) -> Result<Found, Refusal> {
        let found = self
            .lookup(&super::model::digest_of(secret))
            .ok_or(Refusal::Unknown)?;
        found.0.usable_at(now)?;
        Ok(found)
    }

    pub fn account(&self, id: &str) -> Option<Arc<IndexedAccount>> {
        self.accounts.pin().get(id)?.current.load_full()
    }

    /// Every account (an unordered snapshot).
    pub fn accounts(&self) -> Vec<Arc<IndexedAccount>> {
        let map = self.accounts.pin();
        map.values().filter_map(|s| s.current.load_full()).collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn account_count(&self) -> usize {
        let map = self.accounts.pin();
        map.values().filter(|s| s.current.load().is_some()).count()
    }

    /// Apply one written row. O(1): one entry of one map changes. (A key's digest never
    /// changes: the store refuses it, so a key row replaces the entry under its digest.)
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Account(row) => self.put_account(row),
            Change::Key(row) => self.put_key(row),
            Change::AccountDeleted(id) => {
                if let Some(slot) = self.accounts.pin().remove(id.as_str()) {
                    slot.current.store(None);
                }
            }
            Change::KeyDeleted { id, sha256 } => {
                let map = self.by_digest.pin();
                if map.get(sha256).is_some_and(|k| *k.id == **id) {
                    map.remove(sha256);
                }
            }
        }
    }

    /// The account's slot, made (empty) when the account is not known yet.
    fn slot(&self, id: &str) -> Arc<AccountSlot> {
        let map = self.accounts.pin();
        if let Some(slot) = map.get(id) {
            return slot.clone();
        }
        let id: Arc<str> = Arc::from(id);
        let slot = Arc::new(AccountSlot {
            id: id.clone(),
            current: ArcSwapOption::empty(),
        });
        map.get_or_insert(id, slot).clone()
    }

    fn put_account(&self, row: &AccountRow) {
        let slot = self.slot(&row.id);
        let account = IndexedAccount::from_row(row, slot.id.clone());
        slot.current.store(Some(Arc::new(account)));
    }

    fn put_key(&self, row: &KeyRow) {
        let key = IndexedKey::from_row(row, self.slot(&row.account_id));
        let map = self.by_digest.pin();
        // A changed key keeps the use noted in memory (rows from the feed do not carry it).
        if let Some(old) = map.get(&row.sha256) {
            if let Some(t) = old.last_used_at() {
                let t = u32::try_from(t).unwrap_or(u32::MAX);
                key.last_used.0.fetch_max(t, Ordering::Relaxed);
            }
        }
        map.insert(row.sha256, Arc::new(key));
    }
}
