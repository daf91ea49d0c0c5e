//! The simulator's named targets: one process stands for several provider endpoints
//! (`/_sim/target=<name>/` in a base URL; `default` without one), each with its own
//! first-byte latency, changeable at run time, its own prompt cache (`prefix.rs`) and
//! its own counters.
//!
//! Bounded so that a fuzzer cannot grow memory: at most [`MAX_TARGETS`] targets besides
//! `default`, each with a bounded cache. The locks are held for a map or cache operation,
//! never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::prefix::{PrefixCache, PromptChain};

/// The target of a request whose path names none.
pub const DEFAULT_TARGET: &str = "default";
/// Named targets a simulator keeps at most, `default` not counted.
pub const MAX_TARGETS: usize = 1024;
/// The largest first-byte delay a target can be given, in ms.
pub const MAX_FIRST_BYTE_MS: u64 = 60_000;

/// Every target seen so far, by name.
pub struct Targets {
    by_name: Mutex<HashMap<String, Arc<Target>>>,
}

/// The target limit is reached and `name` is a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyTargets;

impl Default for Targets {
    fn default() -> Targets {
        let mut by_name = HashMap::new();
        by_name.insert(DEFAULT_TARGET.to_owned(), Arc::default());
        Targets {
            by_name: Mutex::new(by_name),
        }
    }
}

impl Targets {
    /// The target called `name` (a valid name: see `mode::is_target_name`), created
    /// on first use while there is room.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Target>, TooManyTargets> {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(target) = by_name.get(name) {
            return Ok(target.clone());
        }
        // `default` is always present, so it is the one not counted.
        if by_name.len() > MAX_TARGETS {
            return Err(TooManyTargets);
        }
        let target = Arc::new(Target::default());
        by_name.insert(name.to_owned(), target.clone());
        Ok(target)
    }

    /// The target called `name`, when it has been used or configured.
    pub fn get(&self, name: &str) -> Option<Arc<Target>> {
        let by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        by_name.get(name).cloned()
    }

    /// Every target's state, by name in order.
    pub fn to_json(&self) -> Value {
        let mut targets: Vec<(String, Arc<Target>)> = {
            let by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
            by_name
                .iter()
                .map(|(name, target)| (name.clone(), target.clone()))
                .collect()
        };
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        let targets: Map<String, Value> = targets
            .into_iter()
            .map(|(name, target)| (name, target.to_json()))
            .collect();
        serde_json::json!({ "targets": targets })
    }

    /// Forgets every target (their latency, caches and counters); `default` starts anew.
    /// Returns how many there were.
    pub fn clear(&self) -> usize {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let forgotten = by_name.len();
        by_name.clear();
        by_name.insert(DEFAULT_TARGET.to_owned(), Arc::default());
        forgotten
    }
}

/// What `PUT /_sim/targets/<name>` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// The delay before the response head, for every later request (0 to [`MAX_FIRST_BYTE_MS`]).
    pub first_byte_ms: u64,
}

impl TargetSettings {
    /// Reads a settings body; the error is a message for a 400.
    pub fn parse(body: &[u8]) -> Result<TargetSettings, String> {
        let settings: TargetSettings = serde_json::from_slice(body)
            .map_err(|err| format!("target settings must be {{\"first_byte_ms\": n}}: {err}"))?;
        if settings.first_byte_ms > MAX_FIRST_BYTE_MS {
            return Err(format!(
                "first_byte_ms must be at most {MAX_FIRST_BYTE_MS}, got {}",
                settings.first_byte_ms
            ));
        }
        Ok(settings)
    }
}

/// One simulated target: its latency, prompt cache and counters.
#[derive(Default)]
pub struct Target {
    first_byte_ms: AtomicU64,
    /// Generation requests that reached the target, simulated failures included.
    requests: AtomicU64,
    /// Answers that reported cached input tokens (from any cache behaviour).
    cached_requests: AtomicU64,
    /// Input tokens of the answers, and the cached part of them.
    input_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    /// What a warm prefix cache could have reported for the same answers.
    cacheable_tokens: AtomicU64,
    /// Requests waiting out the first-byte delay right now.
    pub waiting: AtomicUsize,
    cache: Mutex<PrefixCache>,
}

/// A target's state as `GET /_sim/targets/<name>` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TargetStats {
    pub first_byte_ms: u64,
    pub requests: u64,
    pub cached_requests: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub cacheable_tokens: u64,
    pub waiting: usize,
}

impl Target {
    pub fn apply(&self, settings: TargetSettings) {
        self.first_byte_ms
            .store(settings.first_byte_ms, Ordering::SeqCst);
    }

    /// The delay before the response head of the next request.
    pub fn first_byte_delay(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms.load(Ordering::SeqCst))
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// Serves a prompt from this target's prefix cache: the cached tokens of its
    /// longest remembered prefix (0 on a miss); the prompt is remembered for later.
    pub fn serve_prompt(&self, chain: &PromptChain, now: Instant) -> u64 {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.serve(chain, now)
    }

    /// Counts an answer's input tokens, `cached` of them from a cache, `cacheable` of them
    /// in a prefix a warm cache would have had.
    pub fn count_answer(&self, input_tokens: u64, cached: u64, cacheable: u64) {
        self.input_tokens.fetch_add(input_tokens, Ordering::SeqCst);
        self.cached_tokens.fetch_add(cached, Ordering::SeqCst);
        self.cacheable_tokens.fetch_add(cacheable, Ordering::SeqCst);
        if cached > 0 {
            self.cached_requests.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn stats(&self) -> TargetStats {
        TargetStats {
            first_byte_ms: self.first_byte_ms.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            cached_requests: self.cached_requests.load(Ordering::SeqCst),
            input_tokens: self.input_tokens.load(Ordering::SeqCst),
            cached_tokens: self.cached_tokens.load(Ordering::SeqCst),
            cacheable_tokens: self.cacheable_tokens.load(Ordering::SeqCst),
            waiting: self.waiting.load(Ordering::SeqCst),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.stats()).expect("plain numbers serialize")
    }
}
