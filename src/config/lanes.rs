//! `lanes.yaml`: lanes, the pinned-model catalogue and the ordered `flux-auto` rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::Usd;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LanesFile {
    pub lanes: BTreeMap<String, LaneConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub auto: AutoConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// The client-facing id, e.g. `flux-fast`.
    pub alias: String,
    /// Human name, e.g. "Express Lane".
    pub title: String,
    pub price: LanePrice,
    /// The pinned id that serves the lane first.
    pub default: String,
    /// Tried in order when the default (or the previous fallback) is ineligible or fails.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// A premium lane: plans with `premium_needs_payment_method` reach it only with a payment
    /// method on file, and flux-auto does not route such accounts to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub premium: bool,
    /// How a request picks among the lane's targets (default: `failover`, in order).
    #[serde(default)]
    pub strategy: StrategyKind,
    /// Relative shares for `weighted` (and the weights of prompt-cache affinity), by model
    /// id; a target not named weighs 1, a weight of 0 takes traffic only as a fallback.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
    /// `cost`: targets within this many percent of the cheapest share the traffic, so it
    /// never herds onto one (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_spread_percent: Option<u32>,
    /// Keep a conversation on the target that holds its prompt cache (default true; only
    /// strategies that spread traffic move conversations).
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub affinity: bool,
}

fn yes() -> bool {
    true
}

/// How a lane chooses the target of each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// The first healthy target in order takes every request; the others are fallbacks.
    #[default]
    Failover,
    /// Smooth weighted round robin over `weights`.
    Weighted,
    /// The lower of two random targets' expected time to first byte (a peak-EWMA per
    /// target, per unit of input, times its requests in flight).
    Latency,
    /// The cheapest target by `provider_price`, spread over those within
    /// `cost_spread_percent`.
    Cost,
}

impl StrategyKind {
    pub fn label(self) -> &'static str {
        match self {
            StrategyKind::Failover => "failover",
            StrategyKind::Weighted => "weighted",
            StrategyKind::Latency => "latency",
            StrategyKind::Cost => "cost",
        }
    }
}

/// USD per one million tokens, read exactly (never through a float).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LanePrice {
    pub input_per_mtok: Usd,
    pub output_per_mtok: Usd,
    /// Input tokens the provider served from its prompt cache; the input price when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<Usd>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id the provider knows the model by.
    pub upstream: String,
    /// A provider name from `conf/fluxrouter.yaml`.
    pub provider: String,
    /// The lane whose price meters it and whose plan access governs it.
    pub lane: String,
    pub context_window: u64,
    pub max_output_tokens: u64,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// What the operator pays the provider for this model (USD per 1M tokens), for lanes
    /// with `strategy: cost`; customers are always billed at the lane's price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_price: Option<ProviderPrice>,
    /// More deployments of the same model (another provider, another key at one provider):
    /// each is a target of its own, chosen among by the lane's strategy, for a pinned
    /// request as for a lane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<DeploymentConfig>,
}

/// Another place a model is served.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A provider name from `conf/fluxrouter.yaml`.
    pub provider: String,
    /// The id that provider knows the model by (the model's `upstream` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_price: Option<ProviderPrice>,
}

/// The operator's own cost of a target, per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPrice {
    pub input_per_mtok: Usd,
    pub output_per_mtok: Usd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Tools,
    Vision,
    Streaming,
    /// Takes a reasoning effort or thinking budget. When a client asks for one (Claude Code
    /// always does) and the request is translated for a model without this capability, the
    /// setting is left out: such models refuse the parameter.
    Reasoning,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoConfig {
    /// Phrases (case-insensitive) in the last user turn that signal a reasoning task.
    #[serde(default)]
    pub reasoning_cues: Vec<String>,
    /// Substrings that signal code in the last user turn.
    #[serde(default)]
    pub code_markers: Vec<String>,
    /// The learned lane classifier, for rules with `classifier: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierConfig>,
    /// First match wins; the last rule must have no conditions.
    pub rules: Vec<RuleConfig>,
    /// Weigh a conversation's warm prompt cache before moving it to a cheaper lane
    /// (default true).
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub cache_aware: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The weights file, relative to lanes.yaml (written by `fluxrouter route --train`);
    /// hot-reloaded like lanes.yaml.
    pub weights: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// All the given conditions must hold; an empty `when` always matches.
    #[serde(default)]
    pub when: RuleWhen,
    /// The lane this rule sends to; or, with `classifier: true`, none: the classifier
    /// chooses among its lanes that the key's plan allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub classifier: bool,
}

/// Conditions over request features. Absent means "don't care".
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleWhen {
    pub images: Option<bool>,
    pub tools: Option<bool>,
    pub code: Option<bool>,
    pub reasoning: Option<bool>,
    pub min_input_tokens: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub min_max_tokens: Option<u64>,
    pub min_messages: Option<usize>,
}

impl RuleWhen {
    pub fn is_empty(&self) -> bool {
        *self == RuleWhen::default()
    }
}
