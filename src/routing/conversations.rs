//! What this gateway remembers of recent conversations: where each one's last turn was served
//! and how long its input was, so flux-auto can weigh a warm prompt cache against a cheaper
//! lane ([`super::RouteTable::keep_warm`]). Keyed by the conversation's identity
//! ([`super::session`]); an entry lives for the providers' cache lifetime (5 minutes,
//! refreshed by each turn), and the table is bounded: past its size, expired entries are
//! swept (at most once a second) and, if that is not enough, new conversations are not
//! remembered (their targets still follow the rendezvous hash, which needs no memory).
//!
//! Local to each gateway: a fleet's nodes agree on targets through the hash alone; a node
//! that has not seen a conversation's previous turn routes it as flux-auto would anyway.

use std::sync::atomic::{AtomicU64, Ordering};

/// How long a provider keeps a prompt prefix cached after its last use (OpenAI and
/// Anthropic's default: 5 minutes).
pub const CACHE_TTL_S: u64 = 300;
/// Conversations remembered at most (about 40 bytes each).
pub const MAX_CONVERSATIONS: usize = 100_000;

/// One conversation's last served turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Unix seconds of the turn.
    pub at: u64,
    /// The routing table it was routed with ([`super::RouteTable::generation`]): lane and
    /// model ids mean nothing in another.
    pub generation: u64,
    pub lane: super::ids::LaneId,
    pub model: super::ids::ModelId,
    /// The input tokens the provider reported: what its cache now holds of the conversation.
    pub input_tokens: u64,
    /// The output tokens of that turn: the best guess at this turn's.
    pub output_tokens: u64,
}

pub struct Conversations {
    turns: papaya::HashMap<u64, Turn>,
    ttl_s: u64,
    cap: usize,
    last_sweep: AtomicU64,
}

impl Default for Conversations {
    fn default() -> Self {
        Conversations::new(CACHE_TTL_S, MAX_CONVERSATIONS)
    }
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations")
            .field("len", &self.turns.len())
            .finish()
    }
}

impl Conversations {
    pub fn new(ttl_s: u64, cap: usize) -> Self {
        Conversations {
            turns: papaya::HashMap::new(),
            ttl_s,
            cap,
            last_sweep: AtomicU64::new(0),
        }
    }

    /// The conversation's last turn, if it was within the cache lifetime.
    pub fn last(&self, session: u64, now: u64) -> Option<Turn> {
        let turn = *self.turns.pin().get(&session)?;
        (now.saturating_sub(turn.at) < self.ttl_s).then_some(turn)
    }

    /// Remember a served turn.
    pub fn record(&self, session: u64, turn: Turn) {
        let map = self.turns.pin();
        if map.len() >= self.cap && map.get(&session).is_none() {
            let last = self.last_sweep.load(Ordering::Relaxed);
            if turn.at > last
                && self
                    .last_sweep
                    .compare_exchange(last, turn.at, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let ttl = self.ttl_s;
                map.retain(|_, t| turn.at.saturating_sub(t.at) < ttl);
            }
            if map.len() >= self.cap {
                return;
            }
        }
        map.insert(session, turn);
    }

    pub fn len(&self) -> usize {
        self.turns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(at: u64) -> Turn {
        Turn {
            at,
            generation: 1,
            lane: 0,
            model: 0,
            input_tokens: 5_000,
            output_tokens: 100,
        }
    }

    #[test]
    fn a_turn_is_remembered_for_the_cache_lifetime_refreshed_by_use() {
        let c = Conversations::new(300, 10);
        c.record(7, turn(1_000));
        assert_eq!(c.last(7, 1_299), Some(turn(1_000)));
        assert_eq!(c.last(7, 1_300), None);
        c.record(7, turn(1_200));
        assert_eq!(c.last(7, 1_450), Some(turn(1_200)));
        assert_eq!(c.last(8, 1_000), None);
    }

    #[test]
    fn the_table_is_bounded_and_sweeps_expired_turns() {
        let c = Conversations::new(300, 100);
        for s in 0..100 {
            c.record(s, turn(1_000));
        }
        // Full of live turns: a new conversation is not remembered; known ones still are.
        c.record(500, turn(1_001));
        assert_eq!(c.last(500, 1_001), None);
        c.record(5, turn(1_001));
        assert_eq!(c.last(5, 1_001).unwrap().at, 1_001);
        assert_eq!(c.len(), 100);
        // Later, the expired ones are swept to make room.
        c.record(501, turn(1_200));
        c.record(502, turn(1_400));
        assert_eq!(c.last(502, 1_400).map(|t| t.at), Some(1_400));
        assert!(c.len() <= 3, "{}", c.len());
    }
}
