//! Where things live in Redis.
//!
//! Every key of one account carries the account's key id as its hash tag
//! (`flux:{key_abc}:…`): Redis Cluster puts them in one slot, so a script touching several of
//! them runs there unchanged. Fleet-wide keys (the gateways' heartbeats, the index of
//! accounts with usage in a month) are single keys used by single commands.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{id}:m:YYYY-MM` | integer | settled spend in the month, pico-dollars |
//! | `P{id}:h:N` | integer | settled spend in clock hour N (unix hours), 2 h TTL |
//! | `P{id}:holds` | sorted set | `holdid\|amount` by the unix millisecond it expires (server clock) |
//! | `P{id}:reserved` | integer | sum of the holds |
//! | `P{id}:settled:HOLD` | string | what a settlement billed, kept 10 min (replays bill once) |
//! | `P{id}:usage:YYYY-MM` | hash | `lane⇥model⇥{n,i,c,o,$}` → requests, tokens, pico-dollars |
//! | `P{id}:rate` | hash | per-minute limit → GCRA arrival time (µs, server clock) |
//! | `Pnodes` | sorted set | gateway id by last heartbeat (ms) |
//! | `Pusage-keys:YYYY-MM` | set | key ids with usage in the month |

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

    fn account(&self, key_id: &str, what: std::fmt::Arguments<'_>) -> String {
        format!("{}{{{key_id}}}:{what}", self.prefix)
    }

    pub fn month(&self, key_id: &str, month: Month) -> String {
        self.account(key_id, format_args!("m:{month}"))
    }

    pub fn hour(&self, key_id: &str, hour: u64) -> String {
        self.account(key_id, format_args!("h:{hour}"))
    }

    pub fn holds(&self, key_id: &str) -> String {
        self.account(key_id, format_args!("holds"))
    }

    pub fn reserved(&self, key_id: &str) -> String {
        self.account(key_id, format_args!("reserved"))
    }

    pub fn settled(&self, key_id: &str, hold: &str) -> String {
        self.account(key_id, format_args!("settled:{hold}"))
    }

    pub fn usage(&self, key_id: &str, month: Month) -> String {
        self.account(key_id, format_args!("usage:{month}"))
    }

    pub fn rate(&self, key_id: &str) -> String {
        self.account(key_id, format_args!("rate"))
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
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
