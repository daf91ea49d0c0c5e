//! Admission: whether a parsed request may go upstream, and what it holds while it does.
//!
//! One call, [`Admission::admit`], in the order a refusal is decided: the `model` id bound
//! (400, before anything uses the id), the plan's conversation limit (429), the route (given
//! by the gateway: a request refused for its own shape spends no quota), then the per-minute
//! limits (429/413) and the spend reservation (402), with a recount of the input before a
//! 402 is final.
//!
//! The rates and the spend live behind [`SharedState`]: [`InProcess`] in one gateway, or a
//! fleet's Redis (`fleet/`), picked by `state.rs` at load. It is one trait over the two small
//! stores ([`RateStore`], [`SpendStore`]) because a fleet decides both in one atomic script,
//! one round trip: [`SharedState::admit`] is that step, and in process it is simply the rate
//! check followed by the reservation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::auth::{Account, Terms};
use crate::errors::{Error, ErrorKind, FluxError};
use crate::limits::{Charges, Limits, RateStore};
use crate::metering::budget::{Budget, Hold, SpendStore, Standing};
use crate::metering::ledger::{Ledger, ReportRow};
use crate::routing::{Route, RouteTable};
use crate::units::Month;
use crate::units::{worst_case, Usd};
use crate::wire::ir::Request;

/// How long a request waits for the tokenizer's vocabulary to load (about 0.1 s in a release
/// build) before its count loads it on the request's own thread.
const TOKENIZER_WAIT: Duration = Duration::from_secs(5);

/// The per-minute limits and the spend of every account, wherever they are kept.
#[async_trait]
pub trait SharedState: RateStore + SpendStore {
    /// Admit the request against its per-minute `charges`, then reserve `amount` for it: a
    /// request the rates refuse holds nothing; one the spend refuses has spent its rate (as
    /// the fleet's script does). A store that can do both in one step overrides this.
    async fn admit(
        &self,
        account: &Account,
        charges: &Charges,
        amount: Usd,
        now: u64,
    ) -> Result<Hold, FluxError> {
        self.check(&account.key_id, charges).await?;
        self.reserve(account, amount, now).await
    }
}

/// Rates and spend in this process: a single gateway.
pub struct InProcess {
    rates: Limits,
    spend: Budget,
}

impl InProcess {
    pub fn new(rates: Limits, spend: Budget) -> Self {
        InProcess { rates, spend }
    }
}

#[async_trait]
impl RateStore for InProcess {
    async fn check(&self, key: &str, charges: &Charges) -> Result<(), FluxError> {
        self.rates.check_share(key, charges, 1)
    }
}

#[async_trait]
impl SpendStore for InProcess {
    async fn reserve(&self, account: &Account, amount: Usd, now: u64) -> Result<Hold, FluxError> {
        self.spend.reserve(account, amount, now)
    }

    async fn standing(&self, account: &Account, now: u64) -> Result<Standing, FluxError> {
        Ok(self.spend.standing(account, now))
    }

    async fn report(&self, month: Month, key_id: Option<String>) -> Result<Vec<ReportRow>, Error> {
        self.spend.report(month, key_id).await
    }

    fn sweep(&self, now: u64) -> usize {
        self.spend.sweep(now)
    }

    fn ledger(&self) -> &Arc<dyn Ledger> {
        self.spend.ledger()
    }
}

impl SharedState for InProcess {}

/// The route a request took, as the gateway hands it to admission: the routing snapshot,
/// the route, and the input estimate (tokens) routing made.
pub struct Routed {
    pub routes: Arc<RouteTable>,
    pub route: Route,
    pub input_tokens: u64,
    /// What routing read from the request (the policy hook is told some of it).
    pub features: crate::routing::Features,
}

/// An admitted request: its route and its spend hold.
pub struct Admitted {
    pub routed: Routed,
    pub hold: Hold,
}

/// A parsed request, as admission sees it.
pub struct Ask<'a, 'r> {
    pub account: &'a Account,
    pub request: &'a Request<'r>,
    /// The body's length: a bound on its tokens (a token is at least a byte).
    pub body_bytes: usize,
}

/// The admission of every request: its bounds and the shared state it reserves in.
pub struct Admission {
    shared: Arc<dyn SharedState>,
    max_model_id_bytes: usize,
}

impl Admission {
    pub fn new(shared: Arc<dyn SharedState>, max_model_id_bytes: usize) -> Self {
        Admission {
            shared,
            max_model_id_bytes,
        }
    }

    /// Where spend stands, usage reports, the sweep of expired holds, this gateway's ledger.
    pub fn spend(&self) -> &dyn SpendStore {
        &*self.shared
    }

    /// Admit a parsed request, routing it with `route` once its own bounds pass. The first
    /// refusal is the answer.
    pub async fn admit(
        &self,
        ask: Ask<'_, '_>,
        route: impl FnOnce(&Request<'_>) -> Result<Routed, FluxError> + Send,
    ) -> Result<Admitted, FluxError> {
        self.check(&ask)?;
        let routed = route(ask.request)?;
        self.hold(ask, routed).await
    }

    /// The request's own bounds, before it is routed: its model id and its conversation's
    /// length.
    pub fn check(&self, ask: &Ask<'_, '_>) -> Result<(), FluxError> {
        check_model_id(&ask.request.model, self.max_model_id_bytes)?;
        check_conversation(&ask.account.terms, ask.request.messages.len())
    }

    /// Hold the routed request's worst-case cost and take its rate-limit share. After
    /// routing (and the policy hook), so a request refused for its own shape or by the
    /// operator's policy spends no quota.
    pub async fn hold(&self, ask: Ask<'_, '_>, routed: Routed) -> Result<Admitted, FluxError> {
        let Ask {
            account,
            request,
            body_bytes,
        } = ask;
        let charges = Charges::of(&account.terms, routed.input_tokens);
        let hold = self
            .reserve(account, request, &routed, body_bytes, &charges)
            .await?;
        Ok(Admitted { routed, hold })
    }

    /// Admit the request against its per-minute limits (429), then hold its worst-case cost
    /// against the account's limits (402 when it does not fit). The body's length bounds its
    /// tokens (a token is at least a byte), which costs nothing to know; only when that bound
    /// does not fit are the tokens counted, with a margin for providers whose tokenizers
    /// count more. A 402 is never decided on a guess: the first count after a start waits for
    /// the vocabulary to load.
    async fn reserve(
        &self,
        account: &Account,
        request: &Request<'_>,
        routed: &Routed,
        body_bytes: usize,
        charges: &Charges,
    ) -> Result<Hold, FluxError> {
        let Routed { routes, route, .. } = routed;
        let rates = &routes.lane(route.lane).rates;
        let max_output = request.max_tokens.unwrap_or_else(|| {
            route
                .candidates
                .iter()
                .map(|&m| routes.model(m).max_output_tokens)
                .max()
                .unwrap_or(0)
        });
        let overhead = 8 * request.messages.len() as u64;
        let bound = body_bytes as u64 + overhead;
        let now = crate::units::clock::unix_now();
        let shared = &self.shared;
        match shared
            .admit(account, charges, worst_case(bound, max_output, rates), now)
            .await
        {
            Ok(hold) => Ok(hold),
            Err(e) if e.status() == 402 && e.kind != ErrorKind::AccountOnHold => {
                // The vocabulary is loaded on first need (about 0.1 s), off this thread: the
                // first request that needs it waits for it.
                if !crate::tokens::loaded(TOKENIZER_WAIT).await {
                    log::warn!(
                        "tokenizer still loading after {TOKENIZER_WAIT:?}: counting on this \
                         thread"
                    );
                }
                let counted = crate::tokens::count_request(request);
                let margin = counted / 4 + overhead;
                let input = (counted + margin).min(bound);
                // The first attempt spent the rate: this one only reserves.
                shared
                    .reserve(account, worst_case(input, max_output, rates), now)
                    .await
            }
            Err(e) => Err(e),
        }
    }
}

/// 400 when the `model` id is longer than `max` bytes (checked before anything uses it).
pub fn check_model_id(model: &str, max: usize) -> Result<(), FluxError> {
    if model.len() <= max {
        return Ok(());
    }
    Err(FluxError::new(
        ErrorKind::InvalidRequest,
        format!(
            "'model' is {} bytes; model ids are at most {max} bytes. Use flux-auto, a lane \
             alias or a pinned id (GET /v1/models lists them).",
            model.len()
        ),
    ))
}

/// 429 `conversation_limit` when the request carries more messages than the plan allows.
pub fn check_conversation(plan: &Terms, messages: usize) -> Result<(), FluxError> {
    match plan.max_messages {
        Some(max) if messages > max => Err(FluxError::new(
            ErrorKind::ConversationLimit,
            format!(
                "This conversation hit its limit: {messages} messages, and your plan allows \
                 {max} in one request. Start a new conversation (or compact this one)."
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::server::PlanConfig;

    #[test]
    fn plan_limits_become_errors_that_name_them() {
        let plan = Terms::compile(&PlanConfig {
            requests_per_minute: Some(2),
            tokens_per_minute: Some(1_000),
            max_messages: Some(3),
            ..PlanConfig::default()
        });
        let limits = Limits::default();
        let admit = |key: &str, plan: &Terms, tokens: u64| {
            use futures_util::FutureExt;
            limits
                .check(key, &Charges::of(plan, tokens))
                .now_or_never()
                .expect("the local store does not wait")
        };
        assert!(admit("k", &plan, 10).is_ok());
        assert!(admit("k", &plan, 10).is_ok());
        let e = admit("k", &plan, 10).unwrap_err();
        assert_eq!((e.status(), e.code()), (429, "rate_limited"));
        assert!(
            e.message.contains("2 requests per minute for your plan"),
            "{e}"
        );
        assert_eq!(e.retry_after, Some(30));

        let e = admit("t", &plan, 1_001).unwrap_err();
        assert_eq!((e.status(), e.code()), (413, "input_too_long"));
        assert!(e.message.contains("1000-token limit"), "{e}");
        let e = admit("t", &plan, 999)
            .and(admit("t", &plan, 2))
            .unwrap_err();
        assert!(e.message.contains("1000 input tokens per minute"), "{e}");

        assert!(admit("fresh", &Terms::default(), u64::MAX).is_ok());
        assert!(check_conversation(&plan, 3).is_ok());
        let e = check_conversation(&plan, 4).unwrap_err();
        assert_eq!((e.status(), e.code()), (429, "conversation_limit"));
        assert!(e.message.contains("Start a new conversation"), "{e}");
        assert!(!e.kind.retryable());

        assert!(check_model_id(&"m".repeat(256), 256).is_ok());
        let e = check_model_id(&"m".repeat(257), 256).unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "invalid_request"));
        assert!(e.message.contains("at most 256 bytes"), "{e}");
    }
}
