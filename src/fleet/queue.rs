//! What waits on this gateway for Redis: the settlements it did not take yet, and the accounts
//! already listed in the month's usage index. A leaf of `fleet/`: the client (`mod.rs`) holds
//! it, `spend.rs` fills and drains it.

use std::collections::{HashSet, VecDeque};

use crate::units::{Month, Usd};

/// One served request to bill in the shared ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The account billed: its month and hour, and its hard cap.
    pub account_id: Box<str>,
    /// The key the request came with: its share of the month and its usage rows.
    pub key_id: Box<str>,
    /// The request's hold id ([`Fleet::hold_id`](super::Fleet::hold_id), also for a request that needed no hold):
    /// it names the settlement marker, so a replay bills once.
    pub hold: Box<str>,
    /// What the hold reserved in Redis; none when nothing was held there.
    pub held: Option<Usd>,
    pub at_unix: u64,
    pub lane: Box<str>,
    pub model: Box<str>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Usd,
    /// Never bill the account's month past this (free and credit-only plans).
    pub hard_cap: Option<Usd>,
    /// The key's own monthly limit: never bill the key's month past it. The hold is under
    /// the key too when there is one.
    pub key_limit: Option<Usd>,
}

impl Settlement {
    /// Whose spend it is.
    pub fn payer(&self) -> super::payer::Payer<'_> {
        super::payer::Payer {
            account_id: &self.account_id,
            key_id: &self.key_id,
            key_limit: self.key_limit,
        }
    }
}

/// Settlements waiting for Redis, and the accounts this gateway has listed in the month's
/// usage index (listed once per gateway and month, not per request).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) queue: VecDeque<Settlement>,
    pub(super) indexed: HashSet<Box<str>>,
    pub(super) indexed_month: Option<Month>,
}
