//! Token counts, as every wire format reports them once converted.

/// Token counts, in one convention for every format: `input` counts every input token,
/// cached or not; `cached_input` and `cache_write` are parts of it. `reasoning` is part of
/// `output`. (Anthropic reports uncached input apart; its codec converts.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Usage {
    /// Merge a later report into this one. Streams report usage in pieces (Anthropic's
    /// `message_start` then cumulative `message_delta`s); every count is cumulative, so the
    /// larger value is the current one.
    pub fn merge(&mut self, later: &Usage) {
        self.input = self.input.max(later.input);
        self.cached_input = self.cached_input.max(later.cached_input);
        self.cache_write = self.cache_write.max(later.cache_write);
        self.output = self.output.max(later.output);
        self.reasoning = self.reasoning.max(later.reasoning);
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}
