//! [`KeyIndex`]: the hot-path table, key digest to key and account.
//!
//! Lookups by digest take no lock: both maps are `papaya` maps, whose reads are lock-free
//! (no shared lock word is written, so readers on many cores do not contend). Applying one
//! change is O(1): the row replaces one entry in each map; nothing is rebuilt or cloned.
//!
//! Writers (one [`Change`] at a time) also keep, under a mutex readers never take, a key-id
//! table (a change names a deleted key by id) and each account's keys (admin pages). Both
//! hold the same `Arc<IndexedKey>` as the digest map, so they cost a pointer and a control
//! byte per key.
//!
//! Memory is kept small for a million keys: strings are `Box<str>` (no spare capacity), an
//! account id is one `Arc<str>` shared by the account and all its keys, and a model list is
//! allocated only when set.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::model::{AccountRow, Change, KeyKind, KeyRow, KeyStatus};
use crate::units::Usd;

/// A key as the request path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedKey {
    pub id: Box<str>,
    /// Shared with the account's entry.
    pub account_id: Arc<str>,
    pub name: Box<str>,
    pub sha256: [u8; 32],
    pub kind: KeyKind,
    pub status: KeyStatus,
    /// Unix seconds; 0: never (no key expires at the epoch). See [`IndexedKey::expires_at`].
    expires_at: u64,
    pub created_at: u64,
    pub monthly_limit_usd: Option<Usd>,
    pub models: Option<Box<[Box<str>]>>,
}

impl IndexedKey {
    fn from_row(row: &KeyRow, account_id: Arc<str>) -> IndexedKey {
        IndexedKey {
            id: row.id.as_str().into(),
            account_id,
            name: row.name.as_str().into(),
            sha256: row.sha256,
            kind: row.kind,
            status: row.status,
            expires_at: row.expires_at.unwrap_or(0),
            created_at: row.created_at,
            monthly_limit_usd: row.monthly_limit_usd,
            models: boxed_models(row.models.as_deref()),
        }
    }

    pub fn expires_at(&self) -> Option<u64> {
        (self.expires_at != 0).then_some(self.expires_at)
    }

    /// Whether the key may be used at `now` (Unix seconds): active and not expired.
    pub fn usable_at(&self, now: u64) -> Result<(), Refusal> {
        match self.status {
            KeyStatus::Active => {}
            KeyStatus::Suspended => return Err(Refusal::Suspended),
            KeyStatus::Revoked => return Err(Refusal::Revoked),
        }
        if self.expires_at().is_some_and(|t| now >= t) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// The row this entry came from (`last_used_at` is not kept in the index).
    pub fn to_row(&self) -> KeyRow {
        KeyRow {
            id: self.id.to_string(),
            account_id: self.account_id.to_string(),
            name: self.name.to_string(),
            sha256: self.sha256,
            kind: self.kind,
            status: self.status,
            expires_at: self.expires_at(),
            created_at: self.created_at,
            monthly_limit_usd: self.monthly_limit_usd,
            models: unboxed_models(self.models.as_deref()),
            last_used_at: None,
        }
    }
}

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

/// What writers keep beside the lock-free maps.
#[derive(Default)]
struct Side {
    hasher: DefaultHashBuilder,
    /// Every key, by id.
    by_id: HashTable<Arc<IndexedKey>>,
    /// Each account's keys, by key id.
    by_account: HashMap<Arc<str>, HashTable<Arc<IndexedKey>>>,
}

impl Side {
    fn hash_id(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn find(&self, id: &str) -> Option<&Arc<IndexedKey>> {
        self.by_id.find(self.hash_id(id), |k| &*k.id == id)
    }

    /// Put `key` in place of the key with its id (if any); returns the one it replaced.
    fn put(&mut self, key: Arc<IndexedKey>) -> Option<Arc<IndexedKey>> {
        let hash = self.hash_id(&key.id);
        let hasher = self.hasher;
        let rehash = move |k: &Arc<IndexedKey>| hasher.hash_one(&*k.id);
        let old = match self.by_id.find_mut(hash, |k| k.id == key.id) {
            Some(slot) => Some(std::mem::replace(slot, key.clone())),
            None => {
                self.by_id.insert_unique(hash, key.clone(), rehash);
                None
            }
        };
        if let Some(old) = &old {
            if old.account_id != key.account_id {
                self.remove_from_account(old);
            }
        }
        let keys = self.by_account.entry(key.account_id.clone()).or_default();
        match keys.find_mut(hash, |k| k.id == key.id) {
            Some(slot) => *slot = key,
            None => {
                keys.insert_unique(hash, key, rehash);
            }
        }
        old
    }

    fn remove(&mut self, id: &str) -> Option<Arc<IndexedKey>> {
        let hash = self.hash_id(id);
        let old = self
            .by_id
            .find_entry(hash, |k| &*k.id == id)
            .ok()?
            .remove()
            .0;
        self.remove_from_account(&old);
        Some(old)
    }

    fn remove_from_account(&mut self, key: &IndexedKey) {
        let hash = self.hash_id(&key.id);
        if let Some(keys) = self.by_account.get_mut(&key.account_id) {
            if let Ok(entry) = keys.find_entry(hash, |k| k.id == key.id) {
                entry.remove();
            }
            if keys.is_empty() {
                self.by_account.remove(&key.account_id);
            }
        }
    }
}

/// The hot-path table: key digest to key, account id to account.
pub struct KeyIndex {
    by_digest: papaya::HashMap<[u8; 32], Arc<IndexedKey>, DigestHash>,
    accounts: papaya::HashMap<Arc<str>, Arc<IndexedAccount>>,
    side: Mutex<Side>,
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
            side: Mutex::new(Side {
                by_id: HashTable::with_capacity(keys),
                by_account: HashMap::with_capacity(accounts),
                ..Side::default()
            }),
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

    fn side(&self) -> MutexGuard<'_, Side> {
        // A panic while the mutex was held leaves at worst one entry stale; keep serving.
        self.side.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key with this digest and its account. No lock is taken.
    pub fn lookup(&self, sha256: &[u8; 32]) -> Option<Found> {
        let key = self.by_digest.pin().get(sha256)?.clone();
        let account = self.accounts.pin().get(&*key.account_id)?.clone();
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
        self.accounts.pin().get(id).cloned()
    }

    /// The key with this id (writers' side table: takes the writers' mutex briefly).
    pub fn key(&self, id: &str) -> Option<Arc<IndexedKey>> {
        self.side().find(id).cloned()
    }

    /// The keys of an account, by name.
    pub fn keys_of(&self, account_id: &str) -> Vec<Arc<IndexedKey>> {
        let mut keys: Vec<_> = self
            .side()
            .by_account
            .get(account_id)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        keys
    }

    /// How many keys the account has.
    pub fn key_count(&self, account_id: &str) -> usize {
        self.side()
            .by_account
            .get(account_id)
            .map_or(0, |t| t.len())
    }

    /// Every account (an unordered snapshot).
    pub fn accounts(&self) -> Vec<Arc<IndexedAccount>> {
        self.accounts.pin().values().cloned().collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Apply one written row. O(1): one entry of each map changes.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Account(row) => self.put_account(row),
            Change::Key(row) => self.put_key(row),
            Change::AccountDeleted(id) => {
                self.accounts.pin().remove(id.as_str());
            }
            Change::KeyDeleted(id) => {
                let removed = self.side().remove(id);
                if let Some(old) = removed {
                    self.remove_digest_of(&old);
                }
            }
        }
    }

    /// Remove `old`'s digest entry, unless another key now holds that digest.
    fn remove_digest_of(&self, old: &IndexedKey) {
        let map = self.by_digest.pin();
        if map.get(&old.sha256).is_some_and(|k| k.id == old.id) {
            map.remove(&old.sha256);
        }
    }

    fn put_account(&self, row: &AccountRow) {
        // Keep the id's allocation that the account's keys already share.
        let id = self.shared_account_id(&row.id);
        self.accounts
            .pin()
            .insert(id.clone(), Arc::new(IndexedAccount::from_row(row, id)));
    }

    fn put_key(&self, row: &KeyRow) {
        let account_id = self.shared_account_id(&row.account_id);
        let key = Arc::new(IndexedKey::from_row(row, account_id));
        let mut side = self.side();
        // The digest entry goes in first: the key authenticates once `apply` returns.
        self.by_digest.pin().insert(key.sha256, key.clone());
        if let Some(old) = side.put(key.clone()) {
            if old.sha256 != key.sha256 {
                self.remove_digest_of(&old);
            }
        }
    }

    /// The account's shared id, or a new one when the account is not (yet) known.
    fn shared_account_id(&self, id: &str) -> Arc<str> {
        if let Some((id, _)) = self.accounts.pin().get_key_value(id) {
            return id.clone();
        }
        if let Some((id, _)) = self.side().by_account.get_key_value(id) {
            return id.clone();
        }
        Arc::from(id)
    }
}
