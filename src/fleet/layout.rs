//! Where things live in Redis.
//!
//! An account's totals and holds live under its account id (`flux:{acct_abc}:…`); what is a
//! key's own (its share of the month, its usage rows, its per-minute limits, the holds of a
//! key with a monthly limit of its own, settlement markers) under its key id
//! (`flux:{key_abc}:…`). The id is the hash tag, so each one's keys share a slot; a script
//! for one request touches its account's and its key's, so on Redis Cluster the two would
//! have to share a slot (they do not: FluxRouter speaks to one endpoint, not a Cluster).
//! Fleet-wide keys (the gateways' heartbeats, the index of keys with usage in a month) are
//! single keys used by single commands.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{id}:m:YYYY-MM` | integer | settled spend in the month, pico-dollars (account; key: its share) |
//! | `P{id}:h:N` | integer | settled spend in clock hour N (unix hours), 2 h TTL (account) |
//! | `P{id}:holds` | sorted set | `holdid\|amount` by the unix millisecond it expires (server clock) |
//! | `P{id}:reserved` | integer | sum of the holds |
//! | `P{id}:settled:HOLD` | string | what a settlement billed, kept 10 min (replays bill once) (key) |
//! | `P{id}:usage:YYYY-MM` | hash | `lane⇥model⇥{n,i,c,o,$}` → requests, tokens, pico-dollars (key) |
//! | `P{id}:rate` | hash | per-minute limit → GCRA arrival time (µs, server clock) (key) |
//! | `Pnodes` | sorted set | gateway id by last heartbeat (ms) |
//! | `Pusage-keys:YYYY-MM` | set | key ids with usage in the month |
//! | `P{accounts}:rows:a` | hash | account id → the account's row (JSON): the fleet's key store |
//! | `P{accounts}:rows:k` | hash | key id → the key's row (JSON) |
//! | `P{accounts}:feed` | stream | one entry per write (`c`: the change, `n`: the gateway), ~100,000 kept |
//! | `P{accounts}:seeded` | string | set by the gateway that copied its SQLite key store in, once |
//!
//! Before accounts every key was its own account and its month and hour were under its key
//! id (`P{key_abc}:m:…`, `P{key_abc}:h:N`). Such a key is now the account `acct_abc`; the
//! scripts carry its totals over to the account the first time they meet it (see `carry` in
//! `lua/lib.lua`), so an upgrade keeps the month's spend.

use crate::units::Month;

#[derive(Debug, Clone)]
pub struct Layout {
    prefix: Box<str>,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.into(),
        }
    }

    fn account(&self, id: &str, what: std::fmt::Arguments<'_>) -> String {
        format!("{}{{{id}}}:{what}", self.prefix)
    }

    pub fn month(&self, id: &str, month: Month) -> String {
        self.account(id, format_args!("m:{month}"))
    }

    pub fn hour(&self, id: &str, hour: u64) -> String {
        self.account(id, format_args!("h:{hour}"))
    }

    pub fn holds(&self, id: &str) -> String {
        self.account(id, format_args!("holds"))
    }

    pub fn reserved(&self, id: &str) -> String {
        self.account(id, format_args!("reserved"))
    }

    pub fn settled(&self, id: &str, hold: &str) -> String {
        self.account(id, format_args!("settled:{hold}"))
    }

    pub fn usage(&self, id: &str, month: Month) -> String {
        self.account(id, format_args!("usage:{month}"))
    }

    pub fn rate(&self, id: &str) -> String {
        self.account(id, format_args!("rate"))
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The fleet's key store: `what` is `rows:a`, `rows:k`, `feed` or `seeded` (one hash
    /// tag, so a write's row and its feed entry share a slot).
    pub fn key_store(&self, what: &str) -> String {
        format!("{}{{accounts}}:{what}", self.prefix)
    }

    pub fn usage_index(&self, month: Month) -> String {
        format!("{}usage-keys:{month}", self.prefix)
    }
}

/// The hash tag Redis Cluster slots a key by: the text between the first `{` and the next
/// `}`, when not empty; else the whole key.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_s_keys_share_one_slot_and_accounts_do_not() {
        let l = Layout::new("flux:");
        let m = Month::new(2026, 11).unwrap();
        let keys = [
            l.month("key_a1", m),
            l.hour("key_a1", 493_000),
            l.holds("key_a1"),
            l.reserved("key_a1"),
            l.settled("key_a1", "0123abcd-1f"),
            l.usage("key_a1", m),
            l.rate("key_a1"),
        ];
        for k in &keys {
            assert_eq!(hash_tag(k), "key_a1", "{k}");
            assert!(k.starts_with("flux:{key_a1}:"), "{k}");
        }
        assert_eq!(keys[0], "flux:{key_a1}:m:2026-11");
        assert_ne!(hash_tag(&l.month("key_b2", m)), hash_tag(&keys[0]));
        // Every key is distinct.
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        assert_eq!(l.nodes(), "flux:nodes");
        assert_eq!(l.usage_index(m), "flux:usage-keys:2026-11");
    }
}
