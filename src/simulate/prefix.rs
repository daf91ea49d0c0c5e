//! The simulated provider's prompt cache: each target remembers the prompt prefixes it
//! served recently and reports a request's longest remembered prefix as cached input
//! tokens, the way providers' prompt caches do.
//!
//! A prompt is a chain of blocks (the model and offered tools seed it; then the system
//! prompt or instructions and every message or input item, in order). Each block boundary
//! has a hash of everything before it, so two prompts that agree up to a boundary share
//! that boundary's hash. A request's cacheable prefix is every block before its last input
//! message (the last user message, or a tool result), so the history of a conversation is
//! cacheable and its newest turn is not. After an answer, the cacheable prefix and the
//! whole prompt are remembered, so the conversation's next turn hits on this one.
//!
//! Like the providers, only prefixes of at least [`MIN_CACHED_PREFIX_TOKENS`] tokens count
//! (tokens as the simulator counts prompt tokens). Entries live [`CACHE_TTL`] after their
//! last use; a cache holds at most [`CACHE_CAPACITY`] of them, the least recently used
//! going first. The clock is a parameter, so tests can move time.
//!
//! Hashes ignore object key order and `cache_control` markers: a client moving its
//! Anthropic cache breakpoint to the newest message each turn still hits.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The shortest prefix a provider caches, in prompt tokens.
pub const MIN_CACHED_PREFIX_TOKENS: u64 = 1024;
/// How long an entry lives after its last use.
pub const CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Entries one target's cache holds at most.
pub const CACHE_CAPACITY: usize = 4096;

/// The hash of every block up to a boundary: a chain of std's SipHash (fixed keys, so
/// stable within the process, which is all a cache in memory needs; and optimised even in
/// debug builds, where a hash compiled with the crate's dependencies would add a third of a
/// second to a 10 MB prompt). Collisions among a few thousand entries are out of reach.
pub type PrefixHash = u64;

/// One block boundary of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary {
    pub hash: PrefixHash,
    /// Prompt tokens of every block up to here.
    pub tokens: u64,
}

/// A prompt as the prefix cache sees it: its block boundaries, and how many of the
/// leading blocks are cacheable. Built by each format's parser as it counts tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PromptChain {
    /// The running hash after the seed and every pushed block.
    hash: PrefixHash,
    tokens: u64,
    boundaries: Vec<Boundary>,
    /// The index of the last input block (user message or tool result), if any.
    last_input: Option<usize>,
}

impl PromptChain {
    /// Starts a chain seeded with what a provider keys its cache on besides the
    /// messages: the model, and the tools offered (which count no tokens here).
    pub fn new(model: &str, tools: &Value) -> PromptChain {
        let mut hasher = DefaultHasher::new();
        hash_text(&mut hasher, model);
        hash_canonical(&mut hasher, tools);
        PromptChain {
            hash: hasher.finish(),
            ..PromptChain::default()
        }
    }

    /// Adds one block (a system prompt, message or input item) of `tokens` prompt
    /// tokens; `input` marks the client's new input (a user message, a tool result).
    pub fn push(&mut self, block: &Value, tokens: u64, input: bool) {
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.hash);
        hash_canonical(&mut hasher, block);
        self.hash = hasher.finish();
        self.tokens += tokens;
        if input {
            self.last_input = Some(self.boundaries.len());
        }
        self.boundaries.push(Boundary {
            hash: self.hash,
            tokens: self.tokens,
        });
    }

    /// The boundaries of the cacheable prefix: every block before the last input
    /// block (every block but the last when there is no input block).
    pub fn cacheable(&self) -> &[Boundary] {
        let end = match self.last_input {
            Some(index) => index,
            None => self.boundaries.len().saturating_sub(1),
        };
        &self.boundaries[..end]
    }

    /// The most a warm cache could report for this prompt: the tokens of its cacheable
    /// prefix when they reach the minimum, else 0.
    pub fn cacheable_tokens(&self) -> u64 {
        match self.cacheable().last() {
            Some(end) if end.tokens >= MIN_CACHED_PREFIX_TOKENS => end.tokens,
            _ => 0,
        }
    }

    /// The boundary after the last block: the whole prompt.
    pub fn whole(&self) -> Option<Boundary> {
        self.boundaries.last().copied()
    }
}

/// Feeds `value` to `hasher` in a canonical form: object keys sorted, `cache_control`
/// left out, and every item tagged so that no two different values feed the same bytes.
fn hash_canonical(hasher: &mut DefaultHasher, value: &Value) {
    match value {
        Value::Null => hasher.write_u8(b'n'),
        Value::Bool(flag) => hasher.write_u8(if *flag { b't' } else { b'f' }),
        Value::Number(number) => {
            hasher.write_u8(b'#');
            hash_text(hasher, &number.to_string());
        }
        Value::String(text) => {
            hasher.write_u8(b's');
            hash_text(hasher, text);
        }
        Value::Array(items) => {
            hasher.write_u8(b'[');
            hasher.write_u64(items.len() as u64);
            for item in items {
                hash_canonical(hasher, item);
            }
        }
        Value::Object(object) => {
            let mut keys: Vec<&String> = object
                .keys()
                .filter(|key| key.as_str() != "cache_control")
                .collect();
            keys.sort();
            hasher.write_u8(b'{');
            hasher.write_u64(keys.len() as u64);
            for key in keys {
                hash_text(hasher, key);
                hash_canonical(hasher, &object[key.as_str()]);
            }
        }
    }
}

/// Feeds a length-prefixed string, so that concatenations cannot collide.
fn hash_text(hasher: &mut DefaultHasher, text: &str) {
    hasher.write_u64(text.len() as u64);
    hasher.write(text.as_bytes());
}

/// One target's remembered prefixes: hash to the time of last use.
#[derive(Debug)]
pub struct PrefixCache {
    entries: HashMap<PrefixHash, Instant>,
    capacity: usize,
    ttl: Duration,
}

impl Default for PrefixCache {
    fn default() -> PrefixCache {
        PrefixCache::new(CACHE_CAPACITY, CACHE_TTL)
    }
}

impl PrefixCache {
    pub fn new(capacity: usize, ttl: Duration) -> PrefixCache {
        PrefixCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Serves one prompt at `now`: returns the tokens of its longest remembered
    /// cacheable prefix of at least [`MIN_CACHED_PREFIX_TOKENS`] (0 on a miss),
    /// refreshing that entry, then remembers the cacheable prefix and the whole prompt.
    pub fn serve(&mut self, chain: &PromptChain, now: Instant) -> u64 {
        let mut cached = 0;
        for boundary in chain.cacheable().iter().rev() {
            if boundary.tokens < MIN_CACHED_PREFIX_TOKENS {
                break; // tokens only shrink from here on
            }
            if self.is_live(boundary.hash, now) {
                self.entries.insert(boundary.hash, now);
                cached = boundary.tokens;
                break;
            }
        }
        if let Some(end) = chain.cacheable().last() {
            self.remember(*end, now);
        }
        if let Some(whole) = chain.whole() {
            self.remember(whole, now);
        }
        cached
    }

    /// How many prefixes are remembered (expired ones included until they are swept).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.entries.len()
    }

    fn is_live(&mut self, hash: PrefixHash, now: Instant) -> bool {
        match self.entries.get(&hash) {
            Some(last_used) if now.saturating_duration_since(*last_used) <= self.ttl => true,
            Some(_) => {
                self.entries.remove(&hash);
                false
            }
            None => false,
        }
    }

    /// Remembers (or refreshes) one prefix, when it is long enough to be cached.
    fn remember(&mut self, boundary: Boundary, now: Instant) {
        if boundary.tokens < MIN_CACHED_PREFIX_TOKENS {
            return;
        }
        if !self.entries.contains_key(&boundary.hash) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        self.entries.insert(boundary.hash, now);
    }

    /// Drops the expired entries, or when none has expired the least recently used one.
    /// A scan of the whole cache, but only when it is full.
    fn make_room(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, last_used| now.saturating_duration_since(*last_used) <= ttl);
        if self.entries.len() < self.capacity {
            return;
        }
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, last_used)| **last_used)
            .map(|(hash, _)| *hash);
        if let Some(oldest) = oldest {
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A chain of messages, `(role, text, tokens)`; user and tool messages are input.
    fn chain(model: &str, messages: &[(&str, &str, u64)]) -> PromptChain {
        let mut chain = PromptChain::new(model, &json!([{"type": "function", "name": "ls"}]));
        for (role, text, tokens) in messages {
            let message = json!({"role": role, "content": text});
            chain.push(&message, *tokens, matches!(*role, "user" | "tool"));
        }
        chain
    }

    const SYSTEM: (&str, &str, u64) = ("system", "you are a careful agent", 1500);

    #[test]
    fn next_turn_hits_on_the_previous_whole_prompt() {
        let mut cache = PrefixCache::default();
        let now = Instant::now();
        let turn1 = chain("m", &[SYSTEM, ("user", "first", 10)]);
        assert_eq!(cache.serve(&turn1, now), 0, "a cold cache misses");

        let turn2 = chain(
            "m",
            &[
                SYSTEM,
                ("user", "first", 10),
                ("assistant", "answer", 20),
                ("user", "second", 30),
            ],
        );
        // The longest known prefix is turn 1's whole prompt; the reply and the new
        // question are not cached yet.
        assert_eq!(cache.serve(&turn2, now), 1510);
        assert_eq!(turn2.cacheable_tokens(), 1530);

        let turn3 = chain(
            "m",
            &[
                SYSTEM,
                ("user", "first", 10),
                ("assistant", "answer", 20),
                ("user", "second", 30),
                ("assistant", "calls a tool", 5),
                ("tool", "the tool's output", 40),
            ],
        );
        assert_eq!(cache.serve(&turn3, now), 1560);
    }

    #[test]
    fn shared_system_prompt_hits_across_conversations_but_not_models_or_tools() {
        let mut cache = PrefixCache::default();
        let now = Instant::now();
        cache.serve(&chain("m", &[SYSTEM, ("user", "one", 10)]), now);
        assert_eq!(
            cache.serve(&chain("m", &[SYSTEM, ("user", "two", 10)]), now),
            1500
        );
        assert_eq!(
            cache.serve(&chain("other", &[SYSTEM, ("user", "two", 10)]), now),
            0
        );
        let mut other_tools = PromptChain::new("m", &json!([]));
        other_tools.push(&json!({"role": "system", "content": SYSTEM.1}), 1500, false);
        other_tools.push(&json!({"role": "user", "content": "two"}), 10, true);
        assert_eq!(cache.serve(&other_tools, now), 0);
    }

    #[test]
    fn the_last_input_message_is_never_cached_even_on_a_retry() {
        let mut cache = PrefixCache::default();
        let now = Instant::now();
        let request = chain("m", &[SYSTEM, ("user", "a long question", 2000)]);
        assert_eq!(cache.serve(&request, now), 0);
        assert_eq!(cache.serve(&request, now), 1500);
        assert_eq!(request.cacheable().len(), 1);
        // Without input messages, everything but the last block is cacheable.
        let prefill = chain("m", &[SYSTEM, ("assistant", "partial", 10)]);
        assert_eq!(prefill.cacheable().len(), 1);
    }

    #[test]
    fn prefixes_under_the_minimum_are_neither_reported_nor_remembered() {
        let mut cache = PrefixCache::default();
        let now = Instant::now();
        let short = [("system", "short", 1000), ("user", "q", 23)];
        assert_eq!(cache.serve(&chain("m", &short), now), 0);
        assert_eq!(chain("m", &short).cacheable_tokens(), 0);
        // The whole prompt (1,023 tokens) was too short to remember as well.
        assert_eq!(cache.remembered(), 0);
        let next = [
            ("system", "short", 1000),
            ("user", "q", 23),
            ("assistant", "a", 1),
            ("user", "r", 1),
        ];
        assert_eq!(cache.serve(&chain("m", &next), now), 0);
        // 1,024 tokens is enough: this turn's whole prompt is remembered, and the next
        // one hits on it.
        let longer = [
            ("system", "short", 1000),
            ("user", "q", 23),
            ("assistant", "a", 1),
            ("user", "r", 1),
            ("assistant", "b", 1),
            ("user", "s", 1),
        ];
        assert_eq!(cache.serve(&chain("m", &longer), now), 1025);
    }

    #[test]
    fn hashes_ignore_key_order_and_cache_control() {
        let mut cache = PrefixCache::default();
        let now = Instant::now();
        let mut first = PromptChain::new("m", &Value::Null);
        first.push(
            &json!({"role": "user", "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}]}),
            2000,
            true,
        );
        cache.serve(&first, now);
        let mut second = PromptChain::new("m", &Value::Null);
        second.push(
            &json!({"content": [{"text": "long", "type": "text"}], "role": "user"}),
            2000,
            true,
        );
        second.push(&json!({"role": "assistant", "content": "ok"}), 2, false);
        second.push(&json!({"role": "user", "content": "more"}), 2, true);
        assert_eq!(cache.serve(&second, now), 2000);

        // A different text is a different prefix.
        let mut changed = PromptChain::new("m", &Value::Null);
        changed.push(&json!({"role": "user", "content": "lone"}), 2000, true);
        changed.push(&json!({"role": "assistant", "content": "ok"}), 2, false);
        changed.push(&json!({"role": "user", "content": "more"}), 2, true);
        assert_eq!(cache.serve(&changed, now), 0);
    }

    #[test]
    fn entries_expire_five_minutes_after_their_last_use() {
        let mut cache = PrefixCache::default();
        let start = Instant::now();
        let conversation = |n: &str| chain("m", &[SYSTEM, ("user", n, 10)]);
        cache.serve(&conversation("a"), start);

        // Used just before it expires: a hit, which refreshes it.
        let later = start + CACHE_TTL - Duration::from_secs(1);
        assert_eq!(cache.serve(&conversation("b"), later), 1500);
        let refreshed = later + CACHE_TTL - Duration::from_secs(1);
        assert_eq!(cache.serve(&conversation("c"), refreshed), 1500);

        // Unused for longer than the TTL: a miss.
        let expired = refreshed + CACHE_TTL + Duration::from_secs(1);
        assert_eq!(cache.serve(&conversation("d"), expired), 0);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_prefix() {
        let mut cache = PrefixCache::new(4, CACHE_TTL);
        let start = Instant::now();
        let system = |n: u32| ("system", format!("system prompt {n}"), 1500);
        let conversation = |n: u32, question: &str| {
            let (role, text, tokens) = system(n);
            chain("m", &[(role, &text, tokens), ("user", question, 10)])
        };
        // Each request remembers two prefixes: its system prompt and its whole prompt.
        cache.serve(&conversation(1, "q"), start);
        cache.serve(&conversation(2, "q"), start + Duration::from_secs(1));
        assert_eq!(cache.remembered(), 4);
        // Using the first system prompt again evicts the oldest entry, the first
        // conversation's whole prompt, and keeps its system prompt.
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(cache.serve(&conversation(1, "again"), at(2)), 1500);
        assert_eq!(cache.remembered(), 4);
        // A third conversation pushes out both of the second's entries, now the oldest.
        assert_eq!(cache.serve(&conversation(3, "q"), at(3)), 0);
        assert_eq!(cache.remembered(), 4);
        assert_eq!(cache.serve(&conversation(1, "still"), at(4)), 1500);
        assert_eq!(cache.serve(&conversation(2, "again"), at(4)), 0);
        assert_eq!(cache.remembered(), 4);

        // The default bound holds whatever the traffic.
        let mut cache = PrefixCache::default();
        for n in 0..(CACHE_CAPACITY as u32 + 100) {
            let mut distinct = PromptChain::new("m", &Value::Null);
            distinct.push(&json!(n), 2000, true);
            cache.serve(&distinct, start);
        }
        assert_eq!(cache.remembered(), CACHE_CAPACITY);
    }
}
