//! The operator's routing policy hook (`policy:` in the server config). After FluxRouter has
//! routed a generation request, and before it holds any spend, it posts a JSON description
//! of the request ([`Question`]: who asks, for what, how big, where flux-auto would send it;
//! never the prompt unless `include_prompt`) to the operator's service, which answers
//! ([`Answer`]) with nothing to change, a lane, an ordered list of targets, or a refusal in
//! its own status and code. An answer may name a cache key (which of the request's
//! attributes it depends on, and for how long); until it expires, requests with the same
//! values are decided without asking. A timeout, a refused connection or an unreadable answer
//! follows `on_error`: `allow` serves the request as routed, `deny` refuses it with 503.
//!
//! This module is plain types and functions; `client.rs` carries the question over a pooled
//! connection.

mod client;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::server::{PolicyConfig, PolicyOnError};
use crate::errors::{ErrorKind, FluxError};

pub use client::Client;

/// What the hook is told about one request.
#[derive(Debug, Serialize)]
pub struct Question<'a> {
    pub request_id: &'a str,
    pub account_id: &'a str,
    pub key_id: &'a str,
    pub plan: &'a str,
    /// The model the client asked for (`flux-auto`, a lane alias, a pinned id).
    pub model: &'a str,
    /// The client's wire format: `openai`, `openai_responses`, `anthropic`.
    pub format: &'a str,
    pub stream: bool,
    /// The lane routing chose, and the flux-auto rule that chose it.
    pub lane: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// The classifier's probability for each of its lanes, when it scored the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<BTreeMap<&'a str, f32>>,
    /// The eligible targets in the order they would be tried.
    pub targets: Vec<QuestionTarget<'a>>,
    pub input_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    pub messages: usize,
    pub tools: bool,
    pub images: bool,
    /// The last user turn's text, at most 4 KB, only with `include_prompt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct QuestionTarget<'a> {
    pub model: &'a str,
    pub provider: &'a str,
}

/// What the hook answers. An empty object (or `{"allow": true}`) changes nothing.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    #[serde(default)]
    pub allow: Option<bool>,
    /// Serve the request in this lane (by name), if the key's plan allows it.
    #[serde(default)]
    pub lane: Option<String>,
    /// Try exactly these targets (pinned model ids), in this order, among those eligible.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Refuse the request.
    #[serde(default)]
    pub deny: Option<Deny>,
    /// Keep this decision for other requests with the same values of `by`.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Deny {
    #[serde(default = "forbidden")]
    pub status: u16,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

fn forbidden() -> u16 {
    403
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// The request attributes the decision depends on: `account`, `key`, `plan`, `model`,
    /// `lane` (none: every request).
    #[serde(default)]
    pub by: Vec<Attribute>,
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Account,
    Key,
    Plan,
    Model,
    Lane,
}

impl Attribute {
    const ALL: [Attribute; 5] = [
        Attribute::Account,
        Attribute::Key,
        Attribute::Plan,
        Attribute::Model,
        Attribute::Lane,
    ];

    fn bit(self) -> u32 {
        1 << self as u32
    }

    fn value<'a>(self, q: &Question<'a>) -> &'a str {
        match self {
            Attribute::Account => q.account_id,
            Attribute::Key => q.key_id,
            Attribute::Plan => q.plan,
            Attribute::Model => q.model,
            Attribute::Lane => q.lane,
        }
    }
}

/// What to do with the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    Lane(String),
    Targets(Vec<String>),
    Deny(FluxError),
}

impl Decision {
    /// The metrics' word for it.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Lane(_) => "lane",
            Decision::Targets(_) => "targets",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Longest answer read; longest prompt sent; decisions kept at most.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
pub const MAX_PROMPT_BYTES: usize = 4 * 1024;
const MAX_CACHED: usize = 10_000;

impl Answer {
    /// Read an answer body; a body that is not one is the hook's error.
    pub fn parse(body: &[u8]) -> Result<Answer, String> {
        if body.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer over {MAX_ANSWER_BYTES} bytes"));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::default());
        }
        // An object only (serde would also read a struct from an array).
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("the answer is not a JSON object".to_string());
        }
        serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}"))
    }

    fn decision(self) -> Decision {
        if let Some(d) = self.deny {
            let message = d
                .message
                .map(|m| m.chars().take(1_000).collect::<String>())
                .unwrap_or_else(|| "Refused by the operator's routing policy.".to_string());
            return Decision::Deny(FluxError::policy(d.status, d.code.as_deref(), message));
        }
        if self.allow == Some(false) {
            return Decision::Deny(FluxError::policy(
                403,
                None,
                "Refused by the operator's routing policy.".to_string(),
            ));
        }
        if let Some(targets) = self.targets.filter(|t| !t.is_empty()) {
            return Decision::Targets(targets.into_iter().take(64).collect());
        }
        match self.lane {
            Some(lane) => Decision::Lane(lane),
            None => Decision::Allow,
        }
    }
}

struct Cached {
    decision: Decision,
    until: Instant,
}

/// The hook, its connection and its decisions cache.
pub struct Policy {
    client: Client,
    timeout: Duration,
    on_error: PolicyOnError,
    default_ttl: Duration,
    pub include_prompt: bool,
    /// Decisions by (attributes' bitmask, their values' hash).
    cache: papaya::HashMap<(u32, u64), Cached>,
    /// Which attribute sets answers have named so far (bit `m` for mask `m`): a lookup tries
    /// each, at most 32.
    shapes: AtomicU32,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("client", &self.client)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a decision came from, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Asked; the call took this long.
    Asked(Duration),
    Cached,
    /// The hook failed (`timeout` or `error`) and `on_error` decided.
    Failed(&'static str, Duration),
}

impl Policy {
    /// Resolve the hook's address (at start, off the request path).
    pub fn new(config: &PolicyConfig) -> Result<Policy, String> {
        Ok(Policy {
            client: Client::new(&config.url.0)?,
            timeout: Duration::from_millis(config.timeout_ms),
            on_error: config.on_error,
            default_ttl: Duration::from_millis(config.cache_ttl_ms),
            include_prompt: config.include_prompt,
            cache: papaya::HashMap::new(),
            shapes: AtomicU32::new(0),
        })
    }

    pub fn on_error(&self) -> PolicyOnError {
        self.on_error
    }

    /// The decision for `question`: cached, or asked within the timeout, or `on_error`'s.
    pub async fn decide(
        &self,
        connector: &pingora::connectors::http::Connector,
        question: &Question<'_>,
    ) -> (Decision, Source) {
        if let Some(d) = self.cached(question) {
            return (d, Source::Cached);
        }
        let started = Instant::now();
        let body = serde_json::to_vec(question).expect("a question serializes");
        let asked = tokio::time::timeout(self.timeout, self.client.post(connector, body)).await;
        let took = started.elapsed();
        let failed = |what: &'static str, why: String| {
            // Counted in flux_policy_decisions_total{outcome}: a hook that is down would
            // otherwise write a line per request.
            log::debug!("policy hook {what}: {why}; on_error: {:?}", self.on_error);
            let decision = match self.on_error {
                PolicyOnError::Allow => Decision::Allow,
                PolicyOnError::Deny => Decision::Deny(
                    FluxError::new(
                        ErrorKind::PolicyUnavailable,
                        "The operator's routing policy could not be asked in time; nothing was \
                         charged. Retry after the Retry-After delay.",
                    )
                    .retry_after(1),
                ),
            };
            (decision, Source::Failed(what, took))
        };
        let body = match asked {
            Err(_) => return failed("timeout", format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => return failed("error", e),
            Ok(Ok(body)) => body,
        };
        let answer = match Answer::parse(&body) {
            Ok(a) => a,
            Err(e) => return failed("error", e),
        };
        let cache = answer.cache.clone();
        let decision = answer.decision();
        if let Some(spec) = cache {
            self.remember(question, &spec, &decision);
        }
        (decision, Source::Asked(took))
    }

    fn key(mask: u32, q: &Question<'_>) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for a in Attribute::ALL {
            if mask & a.bit() != 0 {
                h.update(a.value(q).as_bytes());
                h.update(&[0]);
            }
        }
        h.digest()
    }

    fn cached(&self, q: &Question<'_>) -> Option<Decision> {
        let shapes = self.shapes.load(Ordering::Acquire);
        if shapes == 0 {
            return None;
        }
        let map = self.cache.pin();
        let now = Instant::now();
        (0..32u32)
            .filter(|m| shapes & (1 << m) != 0)
            .find_map(|mask| {
                let c = map.get(&(mask, Self::key(mask, q)))?;
                (c.until > now).then(|| c.decision.clone())
            })
    }

    fn remember(&self, q: &Question<'_>, spec: &CacheSpec, decision: &Decision) {
        let ttl = spec.ttl_ms.map_or(self.default_ttl, Duration::from_millis);
        if ttl.is_zero() {
            return;
        }
        let mask = spec.by.iter().fold(0, |m, a| m | a.bit());
        let map = self.cache.pin();
        let now = Instant::now();
        if map.len() >= MAX_CACHED {
            map.retain(|_, c| c.until > now);
            if map.len() >= MAX_CACHED {
                return;
            }
        }
        map.insert(
            (mask, Self::key(mask, q)),
            Cached {
                decision: decision.clone(),
                until: now + ttl.min(Duration::from_secs(3_600)),
            },
        );
        self.shapes.fetch_or(1 << mask, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
