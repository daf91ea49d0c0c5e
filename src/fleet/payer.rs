//! Whose spend a fleet script is about: a leaf the settlement queue and the scripts share.

use super::layout::Layout;
use crate::config::keys::own_account_id;
use crate::units::{hour_of, Month, Usd};

/// Whose spend a script is about: the account (its caps, hourly limit and holds, its month
/// and hour) and the key the request came with (its share of the month, its usage rows, and
/// its own monthly limit, if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payer<'a> {
    pub account_id: &'a str,
    pub key_id: &'a str,
    /// The key's own monthly limit: its holds are then kept under the key too.
    pub key_limit: Option<Usd>,
}

impl<'a> Payer<'a> {
    /// The payer of a request made with `account`'s key.
    pub fn of(account: &'a crate::auth::Account) -> Payer<'a> {
        Payer {
            account_id: &account.account_id,
            key_id: &account.key_id,
            key_limit: account.key_limit,
        }
    }

    /// Whether the account is a key that was its own account before accounts (`acct_` + the
    /// key id's random part): the fleet then kept its totals under the key id, and the
    /// scripts carry them over to the account (see `carry` in `lua/lib.lua`).
    pub fn carries_over(&self) -> bool {
        self.account_id == own_account_id(self.key_id)
    }

    pub(super) fn carry_flag(&self) -> String {
        if self.carries_over() { "1" } else { "" }.to_string()
    }

    /// The account's month and hour spend, holds and reserved total, then the key's: the
    /// first keys of the reserve, settle and standing scripts.
    pub(super) fn keys(&self, l: &Layout, now: u64) -> Vec<String> {
        let (month, hour) = (Month::of(now), hour_of(now));
        let (a, k) = (self.account_id, self.key_id);
        vec![
            l.month(a, month),
            l.hour(a, hour),
            l.holds(a),
            l.reserved(a),
            l.month(k, month),
            l.hour(k, hour),
            l.holds(k),
            l.reserved(k),
        ]
    }
}
