//! The compiled, validated form of `lanes.yaml`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use crate::config::lanes::{LanePrice, RuleWhen, StrategyKind};
use crate::config::{Capability, ConfigError, LanesFile};
use crate::units::Rates;

use super::classifier::Classifier;
use super::strategy::{Strategy, TargetStats};
use super::{Features, AUTO_MODEL, PINNED_PREFIX};

pub use super::ids::{LaneId, ModelId};

#[derive(Debug)]
pub struct Lane {
    pub name: String,
    pub alias: String,
    pub title: String,
    pub premium: bool,
    pub price: LanePrice,
    /// The same per token, as costs are computed.
    pub rates: Rates,
    /// Default first, then fallbacks.
    pub chain: Vec<ModelId>,
    /// How a request picks among the chain's targets.
    pub strategy: Strategy,
}

#[derive(Debug)]
pub struct Model {
    /// The catalogue id (`flux-pinned-…`), what `X-Flux-Model` reports.
    pub id: String,
    pub upstream: String,
    pub provider: String,
    pub lane: LaneId,
    pub context_window: u64,
    pub max_output_tokens: u64,
    capabilities: u8,
    /// What the operator pays per token (input, output; `provider_price`, else the lane's
    /// price), for lanes that choose by cost.
    pub cost_per_token: (u64, u64),
    /// What its recent answers say about its speed (lanes that choose by latency).
    pub stats: TargetStats,
    /// This deployment as a target: `id@provider`, stable across gateways (affinity hashes
    /// it) and distinct among a model's deployments.
    pub key: String,
    /// Every deployment of the same model (this one included), adjacent in the table: the
    /// first is the catalogue entry (what `by_model_id` finds), the others its
    /// `deployments`.
    pub group: std::ops::Range<ModelId>,
}

impl Model {
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities & cap_bit(cap) != 0
    }
}

fn cap_bit(cap: Capability) -> u8 {
    match cap {
        Capability::Tools => 1,
        Capability::Vision => 2,
        Capability::Streaming => 4,
        Capability::Reasoning => 8,
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub when: RuleWhen,
    pub target: RuleTarget,
}

/// Where a matching rule sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleTarget {
    Lane(LaneId),
    /// The classifier chooses among its lanes (those of the table it names).
    Classifier,
}

#[derive(Debug)]
pub struct RouteTable {
    lanes: Vec<Lane>,
    models: Vec<Model>,
    rules: Vec<Rule>,
    by_alias: HashMap<String, LaneId>,
    by_model_id: HashMap<String, ModelId>,
    /// Reasoning cues and code markers in one automaton built at load, so the last user turn
    /// is scanned once; pattern ids below `reasoning_patterns` are reasoning cues.
    cues: Option<AhoCorasick>,
    reasoning_patterns: usize,
    /// The learned classifier, with its lanes resolved to this table's, and where its
    /// weights file is (the reloader watches it).
    classifier: Option<Learned>,
    /// Tells tables apart: lane and model ids remembered with one mean nothing in another.
    generation: u64,
    cache_aware: bool,
}

#[derive(Debug)]
pub struct Learned {
    pub model: Classifier,
    pub lanes: Vec<LaneId>,
    pub path: PathBuf,
}

/// How much of the last user turn is scanned for cues: its head and its tail. Cues sit in
/// what the user typed around a paste, and the bound keeps the decision in microseconds
/// (the scan runs at ~2 us per KB) whatever is pasted in the middle.
const CUE_SCAN_HEAD: usize = 16 * 1024;
const CUE_SCAN_TAIL: usize = 16 * 1024;

/// `cost`: targets this many percent above the cheapest still share its traffic.
const DEFAULT_COST_SPREAD_PERCENT: u32 = 10;

impl RouteTable {
    pub fn load(path: &Path, providers: &dyn Fn(&str) -> bool) -> Result<Self, ConfigError> {
        let file: LanesFile = crate::config::read_yaml(path)?;
        Self::compile(path, file, providers)
    }

    /// Validate and compile. `providers` says whether a provider name exists.
    pub fn compile(
        path: &Path,
        file: LanesFile,
        provider_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let err = |field: String, reason: String| ConfigError::new(path, field, reason);

        // Models first (lanes refer to them), with their lane resolved by name afterwards.
        let lane_names: Vec<&String> = file.lanes.keys().collect();
        let mut models = Vec::with_capacity(file.models.len());
        let mut by_model_id = HashMap::with_capacity(file.models.len());
        for (id, m) in &file.models {
            let field = |f: &str| format!("models.{id}.{f}");
            if !id.starts_with(PINNED_PREFIX) || id.len() == PINNED_PREFIX.len() {
                return Err(err(
                    format!("models.{id}"),
                    format!("model ids must look like {PINNED_PREFIX}<name>"),
                ));
            }
            if m.upstream.is_empty() {
                return Err(err(field("upstream"), "must not be empty".into()));
            }
            if !provider_exists(&m.provider) {
                return Err(err(
                    field("provider"),
                    format!(
                        "unknown provider '{}' (not in the server config)",
                        m.provider
                    ),
                ));
            }
            let Some(lane) = lane_names.iter().position(|l| **l == m.lane) else {
                return Err(err(field("lane"), format!("unknown lane '{}'", m.lane)));
            };
            if m.context_window == 0 {
                return Err(err(field("context_window"), "must be positive".into()));
            }
            if m.max_output_tokens == 0 || m.max_output_tokens > m.context_window {
                return Err(err(
                    field("max_output_tokens"),
                    "must be positive and at most the context window".into(),
                ));
            }
            let capabilities = m.capabilities.iter().fold(0, |acc, c| acc | cap_bit(*c));
            let lane_price = &file.lanes[&m.lane].price;
            let cost = |price: Option<&crate::config::lanes::ProviderPrice>| {
                let (input, output) = match price {
                    Some(p) => (p.input_per_mtok, p.output_per_mtok),
                    None => (lane_price.input_per_mtok, lane_price.output_per_mtok),
                };
                (input.0 / 1_000_000, output.0 / 1_000_000)
            };
            let first = models.len();
            let group = first..first + 1 + m.deployments.len();
            by_model_id.insert(id.clone(), first);
            let deployments =
                std::iter::once((&m.provider, &m.upstream, m.provider_price.as_ref())).chain(
                    m.deployments.iter().map(|d| {
                        (
                            &d.provider,
                            d.upstream.as_ref().unwrap_or(&m.upstream),
                            d.provider_price.as_ref(),
                        )
                    }),
                );
            for (i, (provider, upstream, price)) in deployments.enumerate() {
                if i > 0 {
                    let f = format!("models.{id}.deployments[{}]", i - 1);
                    if !provider_exists(provider) {
                        return Err(err(
                            format!("{f}.provider"),
                            format!("unknown provider '{provider}' (not in the server config)"),
                        ));
                    }
                    if upstream.is_empty() {
                        return Err(err(format!("{f}.upstream"), "must not be empty".into()));
                    }
                    if models[first..]
                        .iter()
                        .any(|d: &Model| d.provider == *provider && d.upstream == *upstream)
                    {
                        return Err(err(
                            f,
                            format!("'{upstream}' at '{provider}' is already a deployment"),
                        ));
                    }
                }
                models.push(Model {
                    id: id.clone(),
                    upstream: upstream.clone(),
                    provider: provider.clone(),
                    lane,
                    context_window: m.context_window,
                    max_output_tokens: m.max_output_tokens,
                    capabilities,
                    cost_per_token: cost(price),
                    stats: TargetStats::default(),
                    // `id@provider`; `id@provider/upstream` for a second model at one provider.
                    key: if models[first..]
                        .iter()
                        .any(|d: &Model| d.provider == *provider)
                    {
                        format!("{id}@{provider}/{upstream}")
                    } else {
                        format!("{id}@{provider}")
                    },
                    group: group.clone(),
                });
            }
        }

        let mut lanes = Vec::with_capacity(file.lanes.len());
        let mut by_alias = HashMap::new();
        for (name, l) in &file.lanes {
            let field = |f: &str| format!("lanes.{name}.{f}");
            if !l.alias.starts_with("flux-")
                || l.alias == AUTO_MODEL
                || l.alias.starts_with(PINNED_PREFIX)
            {
                return Err(err(
                    field("alias"),
                    format!(
                        "'{}' must start with flux- and not be flux-auto or a pinned id",
                        l.alias
                    ),
                ));
            }
            if by_alias.insert(l.alias.clone(), lanes.len()).is_some() {
                return Err(err(
                    field("alias"),
                    format!("'{}' is used by two lanes", l.alias),
                ));
            }
            for (f, v) in [
                ("input_per_mtok", Some(l.price.input_per_mtok)),
                ("output_per_mtok", Some(l.price.output_per_mtok)),
                ("cached_input_per_mtok", l.price.cached_input_per_mtok),
            ] {
                // Costs are exact integers only if a token's price is whole pico-dollars.
                if v.is_some_and(|v| v.picos() % 1_000_000 != 0) {
                    return Err(err(
                        field(&format!("price.{f}")),
                        "at most 6 decimals of a dollar per million tokens".into(),
                    ));
                }
            }
            let mut chain = Vec::with_capacity(1 + l.fallbacks.len());
            for (i, id) in std::iter::once(&l.default).chain(&l.fallbacks).enumerate() {
                let f = if i == 0 {
                    field("default")
                } else {
                    format!("lanes.{name}.fallbacks[{}]", i - 1)
                };
                let Some(&m) = by_model_id.get(id) else {
                    return Err(err(f, format!("unknown model '{id}'")));
                };
                if chain.contains(&m) {
                    return Err(err(f, format!("'{id}' appears twice in the lane")));
                }
                // Each deployment is a target of its own, in the order they are listed.
                chain.extend(models[m].group.clone());
            }
            if chain.len() > usize::from(u8::MAX) {
                return Err(err(
                    field("fallbacks"),
                    "at most 255 targets (deployments included)".into(),
                ));
            }
            let mut weights = vec![1u32; chain.len()];
            for (id, &w) in &l.weights {
                // A model id weighs each of its deployments; `id@provider` one of them.
                let mut named = chain
                    .iter()
                    .enumerate()
                    .filter(|(_, &m)| models[m].id == *id || models[m].key == *id)
                    .peekable();
                match named.peek() {
                    Some(_) => named.for_each(|(i, _)| weights[i] = w),
                    None => {
                        return Err(err(
                            format!("lanes.{name}.weights.{id}"),
                            "not a target of this lane (its default or a fallback)".into(),
                        ))
                    }
                }
            }
            if weights.iter().all(|&w| w == 0) {
                return Err(err(
                    field("weights"),
                    "at least one weight must be positive".into(),
                ));
            }
            if !l.weights.is_empty() && l.strategy == StrategyKind::Failover {
                return Err(err(
                    field("weights"),
                    "weights need strategy: weighted (failover takes targets in order)".into(),
                ));
            }
            let spread = l.cost_spread_percent.unwrap_or(DEFAULT_COST_SPREAD_PERCENT);
            if spread > 1_000 {
                return Err(err(field("cost_spread_percent"), "at most 1000".into()));
            }
            let strategy = Strategy::new(l.strategy, weights, spread, l.affinity);
            lanes.push(Lane {
                name: name.clone(),
                alias: l.alias.clone(),
                title: l.title.clone(),
                premium: l.premium,
                price: l.price,
                rates: Rates::per_million(
                    l.price.input_per_mtok,
                    l.price
                        .cached_input_per_mtok
                        .unwrap_or(l.price.input_per_mtok),
                    l.price.output_per_mtok,
                ),
                chain,
                strategy,
            });
        }
        if lanes.is_empty() {
            return Err(err("lanes".into(), "at least one lane is needed".into()));
        }

        let classifier = match &file.auto.classifier {
            None => None,
            Some(c) => {
                let weights = path.parent().unwrap_or(Path::new("")).join(&c.weights);
                Some(load_classifier(path, &weights, &lanes)?)
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(file.auto.rules.len());
        for (i, r) in file.auto.rules.iter().enumerate() {
            let field = format!("auto.rules[{i}]");
            let target = match (&r.lane, r.classifier) {
                (Some(lane), false) => match lanes.iter().position(|l| l.name == *lane) {
                    Some(id) => RuleTarget::Lane(id),
                    None => {
                        return Err(err(
                            format!("{field}.lane"),
                            format!("unknown lane '{lane}'"),
                        ))
                    }
                },
                (None, true) if classifier.is_some() => RuleTarget::Classifier,
                (None, true) => {
                    return Err(err(
                        format!("{field}.classifier"),
                        "needs auto.classifier.weights (the file `fluxrouter route --train` \
                         writes)"
                            .into(),
                    ))
                }
                _ => {
                    return Err(err(
                        field,
                        "a rule needs either a lane or classifier: true".into(),
                    ))
                }
            };
            if rules.iter().any(|x| x.name == r.name) {
                return Err(err(
                    format!("{field}.name"),
                    format!("rule name '{}' is used twice", r.name),
                ));
            }
            rules.push(Rule {
                name: r.name.clone(),
                when: r.when.clone(),
                target,
            });
        }
        match rules.last() {
            Some(last) if last.when.is_empty() => {}
            _ => {
                return Err(err(
                    "auto.rules".into(),
                    "the last rule must have no conditions, so every request gets a lane".into(),
                ))
            }
        }

        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(RouteTable {
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache_aware: file.auto.cache_aware,
            cues: automaton(path, &file.auto.reasoning_cues, &file.auto.code_markers)?,
            reasoning_patterns: file.auto.reasoning_cues.len(),
            classifier,
            lanes,
            models,
            rules,
            by_alias,
            by_model_id,
        })
    }

    /// Keep what `previous` (the table this one replaces) learned about each target that
    /// both have: a reload does not forget which provider is slow.
    pub fn inherit(&self, previous: &RouteTable) {
        for m in &self.models {
            let Some(first) = previous.model_by_id(&m.id) else {
                continue;
            };
            let group = previous.model(first).group.clone();
            if let Some(old) = previous.models[group].iter().find(|o| o.key == m.key) {
                m.stats.inherit(&old.stats);
            }
        }
    }

    /// Whether flux-auto weighs a conversation's warm cache (`auto.cache_aware`).
    pub fn cache_aware(&self) -> bool {
        self.cache_aware
    }

    /// This table's identity (a reload compiles another).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn lane(&self, id: LaneId) -> &Lane {
        &self.lanes[id]
    }

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    pub fn model(&self, id: ModelId) -> &Model {
        &self.models[id]
    }

    /// Every target: each model's deployments.
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// The catalogue: one entry per model id (its first deployment).
    pub fn catalogue(&self) -> impl Iterator<Item = &Model> {
        self.models
            .iter()
            .enumerate()
            .filter(|(i, m)| m.group.start == *i)
            .map(|(_, m)| m)
    }

    /// Whether `a` and `b` are deployments of the same model.
    pub fn same_model(&self, a: ModelId, b: ModelId) -> bool {
        self.models[a].group == self.models[b].group
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The learned classifier, when lanes.yaml names one.
    pub fn classifier(&self) -> Option<&Learned> {
        self.classifier.as_ref()
    }

    pub fn lane_by_alias(&self, alias: &str) -> Option<LaneId> {
        self.by_alias.get(alias).copied()
    }

    pub fn model_by_id(&self, id: &str) -> Option<ModelId> {
        self.by_model_id.get(id).copied()
    }

    pub(super) fn alias_list(&self) -> String {
        let aliases: Vec<&str> = self.lanes.iter().map(|l| l.alias.as_str()).collect();
        aliases.join(", ")
    }

    /// Score the request with the classifier (when lanes.yaml names one and a rule uses it).
    pub fn classify(&self, request: &crate::wire::ir::Request<'_>, features: &mut Features) {
        features.lane_scores = self
            .classifier
            .as_ref()
            .map(|c| c.model.score_request(request));
    }

    /// Whether lanes.yaml names any cue (`auto.code_markers`, `auto.reasoning_cues`): without
    /// one, [`RouteTable::detect_cues`] has nothing to look for, and the text need not be
    /// gathered for it.
    pub fn has_cues(&self) -> bool {
        self.cues.is_some()
    }

    /// Set `code` and `reasoning` from the text of the last user turn.
    pub fn detect_cues(&self, text: &str, features: &mut Features) {
        features.code = false;
        features.reasoning = false;
        let Some(cues) = &self.cues else { return };
        let text = text.as_bytes();
        let parts: [&[u8]; 2] = if text.len() <= CUE_SCAN_HEAD + CUE_SCAN_TAIL {
            [text, &[]]
        } else {
            [&text[..CUE_SCAN_HEAD], &text[text.len() - CUE_SCAN_TAIL..]]
        };
        for part in parts {
            for m in cues.find_overlapping_iter(part) {
                if m.pattern().as_usize() < self.reasoning_patterns {
                    features.reasoning = true;
                } else {
                    features.code = true;
                }
                if features.reasoning && features.code {
                    return;
                }
            }
        }
    }
}

/// Read and validate the weights file against the table's lanes.
fn load_classifier(
    lanes_yaml: &Path,
    weights: &Path,
    lanes: &[Lane],
) -> Result<Learned, ConfigError> {
    let field = "auto.classifier.weights";
    let text = std::fs::read(weights)
        .map_err(|e| ConfigError::new(lanes_yaml, field, format!("{}: {e}", weights.display())))?;
    let model = Classifier::parse(&text)
        .map_err(|e| ConfigError::new(lanes_yaml, field, format!("{}: {e}", weights.display())))?;
    let mut ids = Vec::with_capacity(model.lanes.len());
    for name in &model.lanes {
        match lanes.iter().position(|l| l.name == *name) {
            Some(id) => ids.push(id),
            None => {
                return Err(ConfigError::new(
                    lanes_yaml,
                    field,
                    format!(
                        "{}: the classifier chooses lane '{name}', which lanes.yaml lacks",
                        weights.display()
                    ),
                ))
            }
        }
    }
    Ok(Learned {
        model,
        lanes: ids,
        path: weights.to_path_buf(),
    })
}

fn automaton(
    path: &Path,
    reasoning: &[String],
    code: &[String],
) -> Result<Option<AhoCorasick>, ConfigError> {
    for (field, patterns) in [
        ("auto.reasoning_cues", reasoning),
        ("auto.code_markers", code),
    ] {
        if patterns.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::new(path, field, "patterns must not be empty"));
        }
    }
    if reasoning.is_empty() && code.is_empty() {
        return Ok(None);
    }
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        // A DFA: a few KB for these short lists, and the fastest scan.
        .kind(Some(AhoCorasickKind::DFA))
        .match_kind(MatchKind::Standard) // overlapping search needs it
        .build(reasoning.iter().chain(code))
        .map(Some)
        .map_err(|e| ConfigError::new(path, "auto", e.to_string()))
}
