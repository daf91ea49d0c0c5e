//! Routing: which lane and which backing models serve a request.
//!
//! [`RouteTable`] is compiled once from `lanes.yaml` (and swapped whole on reload). A request
//! is routed in three plain steps, none of which allocate beyond the candidate list:
//! 1. [`RouteTable::resolve`] maps the client's `model` to flux-auto, a lane or a pinned model;
//! 2. for flux-auto, the ordered rules pick a lane from the request's [`Features`];
//! 3. the lane's chain (default, then fallbacks) is filtered to the eligible targets;
//! 4. [`RouteTable::order_targets`]: the lane's strategy (and prompt-cache affinity) orders
//!    them, given each target's health.

pub mod classifier;
pub mod conversations;
pub mod features;
mod ids;
pub mod preferences;
pub mod session;
pub mod strategy;
mod table;

pub use features::{features, last_user_text};
pub use strategy::{Chosen, Health};
pub use table::{Lane, LaneId, Learned, Model, ModelId, RouteTable, Rule, RuleTarget};

use crate::config::Capability;
use crate::errors::{ErrorKind, FluxError};

pub const AUTO_MODEL: &str = "flux-auto";
pub const PINNED_PREFIX: &str = "flux-pinned-";

/// What the request needs and looks like, extracted once from its body.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Features {
    /// Estimated input tokens (text bytes / 4, plus a fixed amount per image).
    pub input_tokens: u64,
    pub tools: bool,
    pub images: bool,
    pub stream: bool,
    /// `max_tokens` / `max_completion_tokens` if the client set one.
    pub max_tokens: Option<u64>,
    /// Number of messages in the conversation.
    pub messages: usize,
    /// Turns so far, this one included: the assistant's answers in the history, plus one
    /// (the same in every wire format, whatever holds the system prompt).
    pub turns: usize,
    /// The history carries signed reasoning (thinking with a signature, redacted thinking,
    /// encrypted reasoning): only the provider family that signed it can read it back.
    pub signed: bool,
    /// Set by [`RouteTable::detect_cues`] (only needed for flux-auto).
    pub code: bool,
    pub reasoning: bool,
    /// Set by [`RouteTable::classify`]: the classifier's probability for each of its lanes.
    pub lane_scores: Option<classifier::Scores>,
}

/// The model id a client asked for, resolved against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Lane(LaneId),
    Pinned(ModelId),
}

/// The routing decision for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub lane: LaneId,
    /// The flux-auto rule that chose the lane (None for aliases and pinned ids).
    pub rule: Option<usize>,
    /// When the classifier chose the lane: its probability for its own lane.
    pub probability: Option<f32>,
    /// The classifier's own lane, when the key's plan does not include it and the request
    /// stepped to the nearest lane the plan allows (`lane`).
    pub classifier_lane: Option<LaneId>,
    /// Eligible targets in the order to try them; never empty.
    pub candidates: Vec<ModelId>,
    /// The model the caller pinned, if any: serving it is not "routed".
    pub pinned: Option<ModelId>,
    /// Who put the first candidate first (set by [`RouteTable::order_targets`]).
    pub chosen: Chosen,
    /// flux-auto kept the conversation on its previous lane ([`RouteTable::keep_warm`]):
    /// why, and the lane it would have moved to.
    pub kept: Option<(Kept, LaneId)>,
}

/// Why flux-auto kept a conversation where it was instead of moving it to another lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Its prompt is cached there, and the cached turn costs less than an uncached one on
    /// the cheaper lane.
    Cache,
    /// Its history carries signed reasoning the other lane's provider could not read.
    Signatures,
}

impl Kept {
    pub fn label(self) -> &'static str {
        match self {
            Kept::Cache => "cache",
            Kept::Signatures => "signatures",
        }
    }
}

/// The classifier's own lane and its probability for it.
type ClassifierLane = (LaneId, f32);

/// Why a key may not use a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The plan does not include the lane (402 plan_model_not_included).
    NotInPlan,
    /// A premium lane and no payment method on file (402 payment_method_required).
    NeedsPaymentMethod,
}

/// What a key may use: lanes by its plan and account, model ids by its operator's
/// restriction.
pub trait LaneAccess {
    fn lane(&self, lane: &Lane) -> Result<(), Denied>;

    /// The operator restricted the key to certain model ids; `None` when it may ask for any.
    fn allows_model_id(&self, _id: &str) -> bool {
        true
    }

    /// The plan's own bound on estimated input tokens, whatever its models take.
    fn max_input_tokens(&self) -> Option<u64> {
        None
    }
}

/// A plain list of lane names (tests, benchmarks).
impl LaneAccess for [String] {
    fn lane(&self, lane: &Lane) -> Result<(), Denied> {
        if self.contains(&lane.name) {
            Ok(())
        } else {
            Err(Denied::NotInPlan)
        }
    }
}

impl LaneAccess for crate::auth::Account {
    fn lane(&self, lane: &Lane) -> Result<(), Denied> {
        if !self.lanes.contains(&lane.name) {
            Err(Denied::NotInPlan)
        } else if lane.premium && self.terms.premium_needs_payment_method && !self.payment_method {
            Err(Denied::NeedsPaymentMethod)
        } else {
            Ok(())
        }
    }

    fn allows_model_id(&self, id: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == id))
    }

    fn max_input_tokens(&self) -> Option<u64> {
        self.terms.max_input_tokens
    }
}

impl RouteTable {
    /// Map the client's `model` string to what it names.
    pub fn resolve(&self, model: &str) -> Result<Requested, FluxError> {
        if model == AUTO_MODEL {
            return Ok(Requested::Auto);
        }
        if let Some(lane) = self.lane_by_alias(model) {
            return Ok(Requested::Lane(lane));
        }
        if let Some(id) = self.model_by_id(model) {
            return Ok(Requested::Pinned(id));
        }
        Err(FluxError::new(
            ErrorKind::ModelNotFound,
            format!(
                "The model '{}' does not exist. Use flux-auto, a lane alias ({}), or a pinned id \
                 of the form {}<name> (GET /v1/models lists them).",
                truncate_for_message(model),
                self.alias_list(),
                PINNED_PREFIX
            ),
        ))
    }

    /// Decide the lane and the eligible targets.
    pub fn route(
        &self,
        requested: Requested,
        features: &Features,
        access: &(impl LaneAccess + ?Sized),
    ) -> Result<Route, FluxError> {
        let asked = match requested {
            Requested::Auto => AUTO_MODEL,
            Requested::Lane(lane) => self.lane(lane).alias.as_str(),
            Requested::Pinned(model) => self.model(model).id.as_str(),
        };
        if !access.allows_model_id(asked) {
            return Err(FluxError::new(
                ErrorKind::ModelNotAllowed,
                format!(
                    "This key is restricted by its operator and may not use '{asked}'. Ask your \
                     operator, or use a model the key allows."
                ),
            ));
        }
        if let Some(max) = access.max_input_tokens() {
            if features.input_tokens > max {
                return Err(input_too_long(features.input_tokens, max));
            }
        }
        let (lane, rule, learned, pinned) = match requested {
            Requested::Auto => {
                let (lane, rule, learned) = self.pick_auto_lane(features, access)?;
                (lane, Some(rule), learned, None)
            }
            Requested::Lane(lane) => {
                self.check_access(lane, access, &self.lane(lane).alias)?;
                (lane, None, None, None)
            }
            Requested::Pinned(model) => {
                let lane = self.model(model).lane;
                self.check_access(lane, access, &self.model(model).id)?;
                (lane, None, None, Some(model))
            }
        };
        // A pinned model (each of its deployments) is tried first; its lane's chain is the
        // fallback if it fails.
        let group = pinned.map_or(0..0, |m| self.model(m).group.clone());
        let chain = group.clone().chain(
            self.lane(lane)
                .chain
                .iter()
                .copied()
                .filter(|m| !group.contains(m)),
        );
        let mut rejected: Vec<&'static str> = Vec::new();
        let candidates: Vec<ModelId> = chain
            .filter(|&m| match self.model(m).ineligibility(features) {
                None => true,
                Some(why) => {
                    if !rejected.contains(&why) {
                        rejected.push(why);
                    }
                    false
                }
            })
            .collect();
        if candidates.is_empty() {
            let chain = group.chain(self.lane(lane).chain.iter().copied());
            if chain
                .clone()
                .all(|m| features.input_tokens > self.model(m).context_window)
            {
                return Err(self.too_long_for_lane(lane, chain, features.input_tokens, access));
            }
            return Err(FluxError::new(
                ErrorKind::NoEligibleTarget,
                format!(
                    "No target in lane '{}' supports this request ({}). Try another model or lane, \
                     or reduce the request.",
                    self.lane(lane).name,
                    rejected.join("; ")
                ),
            ));
        }
        Ok(Route {
            lane,
            rule,
            probability: learned.map(|(_, p)| p),
            classifier_lane: learned.map(|(wanted, _)| wanted).filter(|&w| w != lane),
            candidates,
            pinned,
            chosen: Chosen::Order,
            kept: None,
        })
    }

    /// flux-auto chose `route.lane`; the conversation's previous turn went to `last`. Stay
    /// there (the returned route) when moving would break its signed reasoning, or when
    /// moving down to a cheaper lane costs more than staying. Moving pays the whole context
    /// uncached at the new lane once, then saves on every later turn (cached there at the new
    /// lane's cached price, against cached here at this lane's): it pays off only if the
    /// conversation goes on long enough. Its future length is unknown; it is taken to be as
    /// many turns as it has had (a conversation that has lasted n turns is, on the whole,
    /// likely to last about n more), at least one. Moving up (a lane that costs more per
    /// token) is never held back: it is for quality.
    pub fn keep_warm(
        &self,
        route: Route,
        last: &conversations::Turn,
        features: &Features,
        access: &(impl LaneAccess + ?Sized),
        format: impl Fn(&Model) -> Option<crate::wire::Format>,
    ) -> Route {
        if !self.cache_aware()
            || last.generation != self.generation()
            || last.lane == route.lane
            || last.lane >= self.lanes().len()
            || route.pinned.is_some()
        {
            return route;
        }
        let (old, new) = (self.lane(last.lane), self.lane(route.lane));
        let format_changes = || match (route.candidates.first(), last.model < self.models().len()) {
            (Some(&first), true) => format(self.model(last.model)) != format(self.model(first)),
            _ => false,
        };
        let why = if features.signed && format_changes() {
            Kept::Signatures
        } else {
            let cheaper = new.price.input_per_mtok.0 < old.price.input_per_mtok.0;
            if !cheaper {
                return route;
            }
            let input = u128::from(features.input_tokens);
            let cached = u128::from(last.input_tokens).min(input);
            // This turn's output is unknown: the last one's, within this one's max_tokens.
            let output = u128::from(
                features
                    .max_tokens
                    .map_or(last.output_tokens, |max| max.min(last.output_tokens)),
            );
            let rate = |usd: crate::units::Usd| u128::from(usd.0);
            let stay = cached * rate(old.rates.cached_input)
                + (input - cached) * rate(old.rates.input)
                + output * rate(old.rates.output);
            let go = input * rate(new.rates.input) + output * rate(new.rates.output);
            // A later turn once moved: cached there as it would be here.
            let there = cached * rate(new.rates.cached_input)
                + (input - cached) * rate(new.rates.input)
                + output * rate(new.rates.output);
            let turns = features.turns.max(1) as u128;
            let penalty = go.saturating_sub(stay);
            let saving = stay.saturating_sub(there);
            if go <= stay || (turns - 1) * saving > penalty {
                return route;
            }
            Kept::Cache
        };
        match self.route(Requested::Lane(last.lane), features, access) {
            Ok(mut kept) => {
                kept.rule = route.rule;
                kept.probability = route.probability;
                kept.kept = Some((why, route.lane));
                // Its own target first: that is where the cache (and the signer) is.
                if let Some(i) = kept.candidates.iter().position(|&m| m == last.model) {
                    kept.candidates[..=i].rotate_right(1);
                }
                kept
            }
            // The plan no longer allows it, or nothing there serves this request: move.
            Err(_) => route,
        }
    }

    /// Order the route's candidates by its lane's strategy (for a pinned model, only among
    /// its own deployments, which stay first: the caller chose the model). `health` says
    /// whether each target is ejected right now.
    /// `session` is asked only for a lane that spreads its traffic.
    pub fn order_targets(
        &self,
        route: &mut Route,
        features: &Features,
        session: impl FnOnce() -> Option<strategy::Session>,
        health: impl Fn(&Model) -> Health,
        rng: &mut impl rand::Rng,
    ) {
        let lane = self.lane(route.lane);
        // The candidates the strategy orders: all, or a pinned model's deployments.
        let span = match route.pinned {
            Some(p) => route
                .candidates
                .iter()
                .take_while(|&&m| self.same_model(m, p))
                .count(),
            None => route.candidates.len(),
        };
        if span < 2 || !lane.strategy.spreads() {
            return;
        }
        let ask = strategy::Ask {
            input_tokens: features.input_tokens,
            max_tokens: features.max_tokens,
            session: if lane.strategy.affinity {
                session()
            } else {
                None
            },
        };
        let mut targets: Vec<strategy::Target<'_>> = route.candidates[..span]
            .iter()
            .map(|&m| {
                let model = self.model(m);
                strategy::Target {
                    model: m,
                    position: lane.chain.iter().position(|&c| c == m).unwrap_or(0),
                    stats: &model.stats,
                    price: model.cost_per_token,
                    id: &model.key,
                    health: health(model),
                }
            })
            .collect();
        route.chosen = strategy::order(&lane.strategy, &mut targets, &ask, rng);
        for (slot, t) in route.candidates[..span].iter_mut().zip(&targets) {
            *slot = t.model;
        }
    }

    /// 413 for an input no target of the lane can hold: by how much it is over the plan's
    /// limit, or, when another model of the plan holds it, which one.
    fn too_long_for_lane(
        &self,
        lane: LaneId,
        chain: impl Iterator<Item = ModelId>,
        input: u64,
        access: &(impl LaneAccess + ?Sized),
    ) -> FluxError {
        let largest = self
            .models()
            .iter()
            .rev() // the first of equals
            .filter(|m| access.lane(self.lane(m.lane)).is_ok())
            .max_by_key(|m| m.context_window);
        let plan_limit = largest.map_or(0, |m| m.context_window);
        let plan_limit = access
            .max_input_tokens()
            .map_or(plan_limit, |max| max.min(plan_limit));
        match largest {
            Some(m) if input <= plan_limit => {
                let lane_limit = chain
                    .map(|m| self.model(m).context_window)
                    .max()
                    .unwrap_or(0);
                FluxError::new(
                    ErrorKind::InputTooLong,
                    format!(
                        "This input is about {input} tokens, about {} tokens over the \
                         {lane_limit}-token context window of the {} models; your plan's \
                         maximum input is {plan_limit} tokens ({}). Use that model, or trim the \
                         history.",
                        input - lane_limit,
                        self.lane(lane).title,
                        m.id
                    ),
                )
            }
            _ => input_too_long(input, plan_limit),
        }
    }

    fn check_access(
        &self,
        lane: LaneId,
        access: &(impl LaneAccess + ?Sized),
        asked: &str,
    ) -> Result<(), FluxError> {
        let lane = self.lane(lane);
        match access.lane(lane) {
            Ok(()) => Ok(()),
            Err(Denied::NotInPlan) => Err(FluxError::new(
                ErrorKind::PlanModelNotIncluded,
                format!(
                    "Plan does not include this model yet: '{asked}' is in the {} lane, which \
                     your plan does not include. Upgrade your plan, or use flux-auto or a lane \
                     your plan includes (GET /v1/models lists them).",
                    lane.title
                ),
            )),
            Err(Denied::NeedsPaymentMethod) => Err(FluxError::new(
                ErrorKind::PaymentMethodRequired,
                format!(
                    "Premium routing needs a payment method: '{asked}' is in the {} lane. Add a \
                     card in billing, or use flux-fast or flux-standard.",
                    lane.title
                ),
            )),
        }
    }

    /// First rule that matches and whose lane the plan allows; a classifier rule matches
    /// when the plan allows one of its lanes. Returns the lane, the rule, and when the
    /// classifier chose: its own lane (before the plan) and its probability for it.
    fn pick_auto_lane(
        &self,
        features: &Features,
        access: &(impl LaneAccess + ?Sized),
    ) -> Result<(LaneId, usize, Option<ClassifierLane>), FluxError> {
        let allowed = |lane: LaneId| access.lane(self.lane(lane)).is_ok();
        for (i, rule) in self.rules().iter().enumerate() {
            if !rule.matches(features) {
                continue;
            }
            match rule.target {
                RuleTarget::Lane(lane) if allowed(lane) => return Ok((lane, i, None)),
                RuleTarget::Lane(_) => {}
                RuleTarget::Classifier => {
                    let (Some(learned), Some(scores)) = (self.classifier(), &features.lane_scores)
                    else {
                        continue;
                    };
                    let lanes = &learned.lanes;
                    let price = |l: usize| self.lane(lanes[l]).price.input_per_mtok.0 as f64;
                    if let Some(choice) = classifier::choose(
                        scores.as_slice(),
                        price,
                        |l| allowed(lanes[l]),
                        learned.model.policy(),
                    ) {
                        let wanted = (lanes[choice.wanted], choice.p);
                        return Ok((lanes[choice.lane], i, Some(wanted)));
                    }
                }
            }
        }
        Err(FluxError::new(
            ErrorKind::PlanModelNotIncluded,
            "Plan does not include this model yet: your plan includes no lane flux-auto could \
             route this request to. Upgrade your plan.",
        ))
    }
}

impl Model {
    /// Why this model cannot serve the request, if it cannot.
    pub fn ineligibility(&self, f: &Features) -> Option<&'static str> {
        if f.tools && !self.has(Capability::Tools) {
            Some("tools not supported")
        } else if f.images && !self.has(Capability::Vision) {
            Some("images not supported")
        } else if f.stream && !self.has(Capability::Streaming) {
            Some("streaming not supported")
        } else if f.input_tokens > self.context_window {
            Some("input exceeds the context window")
        } else {
            None
        }
    }
}

impl Rule {
    pub fn matches(&self, f: &Features) -> bool {
        let w = &self.when;
        w.images.is_none_or(|v| v == f.images)
            && w.tools.is_none_or(|v| v == f.tools)
            && w.code.is_none_or(|v| v == f.code)
            && w.reasoning.is_none_or(|v| v == f.reasoning)
            && w.min_input_tokens.is_none_or(|v| f.input_tokens >= v)
            && w.max_input_tokens.is_none_or(|v| f.input_tokens <= v)
            && w.min_max_tokens
                .is_none_or(|v| f.max_tokens.unwrap_or(0) >= v)
            && w.min_messages.is_none_or(|v| f.messages >= v)
    }
}

/// 413: over the largest input any model of the plan takes (or the plan's own bound).
fn input_too_long(input: u64, plan_limit: u64) -> FluxError {
    FluxError::new(
        ErrorKind::InputTooLong,
        format!(
            "Input too long: about {input} tokens, about {} tokens over the {plan_limit}-token \
             limit of your plan's models (your plan's maximum input is {plan_limit} tokens); \
             trim the history or upgrade.",
            input.saturating_sub(plan_limit)
        ),
    )
}

/// Echo at most 64 characters of client input in a message.
fn truncate_for_message(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
