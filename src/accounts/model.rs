//! The stored rows of the account directory and the change that one write makes.
//!
//! An account holds the money terms (plan, payment method, hold, ceiling, allowed models);
//! any number of keys belong to it, each with its own name, status, expiry and optional
//! limits within the account's. Only the SHA-256 of a key is stored; the key itself is shown
//! once, when it is created ([`new_secret`]).

use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

pub use crate::config::KeyStatus;
use crate::units::Usd;

/// A position in the change feed: the `seq` of the last change a reader has seen.
pub type Cursor = u64;

/// Random characters after the `acct_` / `key_` prefix of an id.
const ID_RANDOM_LEN: usize = 12;
/// Every Flux key starts so.
pub const KEY_PREFIX: &str = "sk-";
/// Random part of a secret: 40 alphanumerics, about 238 bits. No `-`, so a key never looks
/// like a vendor's prefixed key (`sk-ant-`, `sk-proj-`, …).
const SECRET_RANDOM_LEN: usize = 40;
/// Longest name of an account or a key, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// What a key may be used for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Model requests.
    #[default]
    Inference,
    /// The management API (accounts, keys, reports); never model requests.
    Management,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Inference => "inference",
            KeyKind::Management => "management",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "inference" => Some(KeyKind::Inference),
            "management" => Some(KeyKind::Management),
            _ => None,
        }
    }
}

/// One row of `accounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// `acct_` and 12 alphanumerics; safe to log.
    pub id: String,
    /// Unique among accounts.
    pub name: String,
    pub plan: String,
    /// A payment method is on file (premium lanes may need one).
    pub payment_method: bool,
    /// On hold for payment review: every request is refused.
    pub on_hold: bool,
    /// The account's own monthly ceiling, instead of its plan's.
    pub ceiling_usd: Option<Usd>,
    /// Restriction to these model ids; `None`: whatever the plan allows.
    pub models: Option<Vec<String>>,
    /// Unix seconds.
    pub created_at: u64,
}

/// One row of `keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// `key_` and 12 alphanumerics; safe to log.
    pub id: String,
    pub account_id: String,
    /// Unique within its account.
    pub name: String,
    /// SHA-256 of the full `sk-…` secret.
    pub sha256: [u8; 32],
    pub kind: KeyKind,
    pub status: KeyStatus,
    /// Unix seconds from which the key no longer works.
    pub expires_at: Option<u64>,
    /// At `expires_at` the key is revoked rather than expired: the end of a rotation's grace
    /// period ([`super::Directory::rotate_key`]). It is then refused and listed as revoked,
    /// and stays so whatever is changed later.
    pub revoke_at_expiry: bool,
    pub created_at: u64,
    /// This key's own monthly spend limit, within the account's ceiling.
    pub monthly_limit_usd: Option<Usd>,
    /// This key's own model restriction, within the account's.
    pub models: Option<Vec<String>>,
    /// Last authenticated use (Unix seconds), written in batches
    /// ([`super::Store::touch_last_used`]); not part of the change feed, and ignored when
    /// the row is written.
    pub last_used_at: Option<u64>,
}

/// One row written: what a reader of the change feed applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Account(AccountRow),
    Key(KeyRow),
    /// The account with this id was deleted.
    AccountDeleted(String),
    /// The key with this id and digest was deleted (the digest, because the index is keyed
    /// by it and the row is gone).
    KeyDeleted {
        id: String,
        sha256: [u8; 32],
    },
}

/// A new account id: `acct_` and 12 alphanumerics.
pub fn new_account_id() -> String {
    format!("acct_{}", random_alnum(ID_RANDOM_LEN))
}

/// A new key id: `key_` and 12 alphanumerics.
pub fn new_key_id() -> String {
    format!("key_{}", random_alnum(ID_RANDOM_LEN))
}

/// A new secret (`sk-` and 40 alphanumerics) and its SHA-256, the only part stored. The
/// same format as `auth::new_key` makes, so either authenticates the same way.
pub fn new_secret() -> (String, [u8; 32]) {
    let secret = format!("{KEY_PREFIX}{}", random_alnum(SECRET_RANDOM_LEN));
    let digest = digest_of(&secret);
    (secret, digest)
}

/// The SHA-256 of a presented secret, the index's lookup key.
pub fn digest_of(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_alnum(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, len)
}

/// Why a name was refused, or `None`: 1 to [`MAX_NAME_LEN`] bytes, no control or format
/// characters, no surrounding spaces (the keys file's rule: names are shown to people).
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.trim() != name
        || name
            .chars()
            .any(|c| c.is_control() || crate::config::keys::is_format_char(c));
    bad.then(|| {
        format!(
            "{what} name must be 1 to {MAX_NAME_LEN} bytes, without control or format \
             characters (such as bidirectional overrides or zero-width spaces) or surrounding \
             spaces"
        )
    })
}

/// Why a model list was refused, or `None`: a restriction names at least one model, and no
/// model is empty.
pub fn models_problem(models: Option<&[String]>) -> Option<String> {
    match models {
        Some([]) => Some("a model restriction must name at least one model".into()),
        Some(m) if m.iter().any(|m| m.trim().is_empty()) => {
            Some("a model restriction must not contain an empty model id".into())
        }
        _ => None,
    }
}

impl KeyRow {
    /// Whether the key is revoked at `now` (Unix seconds): revoked, or rotated and past its
    /// grace period.
    pub fn revoked_at(&self, now: u64) -> bool {
        self.status == KeyStatus::Revoked
            || (self.revoke_at_expiry && self.expires_at.is_some_and(|t| now >= t))
    }

    /// Why this key's own limits do not fit within its account's, or `None`: its models must
    /// be among the account's, and its monthly limit at most the account's ceiling.
    pub fn limits_problem(&self, account: &AccountRow) -> Option<String> {
        if let (Some(mine), Some(theirs)) = (&self.models, &account.models) {
            if let Some(m) = mine.iter().find(|m| !theirs.contains(m)) {
                return Some(format!(
                    "model '{m}' is not among the models of account '{}'",
                    account.name
                ));
            }
        }
        if let (Some(limit), Some(ceiling)) = (self.monthly_limit_usd, account.ceiling_usd) {
            if limit > ceiling {
                return Some(format!(
                    "the key's monthly limit ${limit} is above the account's ceiling ${ceiling}"
                ));
            }
        }
        None
    }
}
