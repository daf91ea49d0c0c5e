//! Accounts and their keys, kept in an embedded database and served from memory.
//!
//! - [`model`]: the stored rows ([`AccountRow`], [`KeyRow`]) and the [`Change`] one write
//!   makes;
//! - [`index`]: [`KeyIndex`], the table the request path reads (digest to key and account,
//!   no lock).

pub mod index;
pub mod model;

pub use index::{Found, IndexedAccount, IndexedKey, KeyIndex, Refusal};
pub use model::{
    digest_of, new_account_id, new_key_id, new_secret, AccountRow, Change, Cursor, KeyKind,
    KeyRow, KeyStatus,
};
