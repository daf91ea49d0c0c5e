//! The fleet's side of admission: per-minute limits and spend kept in Redis, with the
//! guarantees of a single gateway, and what a gateway does while Redis is down.
//!
//! [`FleetState`] implements admission's [`SharedState`] (and the two stores it is made of):
//! a request's rate check and reservation are one script, one round trip ([`Fleet::reserve`]
//! with the charges); an account without any spend limit, with a key without a limit of its
//! own, makes only the rate's. Spend, holds and caps count per account (the account's
//! totals in Redis), a key's own limit against the key's month and holds. Redis down,
//! the configured policy ([`crate::config::server::WhenRedisDown`]) applies: refuse, or fall
//! back to this gateway's own store (its share of each rate limit, its own holds), whose
//! settlements the fleet bills too once Redis answers.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Fleet, Payer, Refused, Settlement, Unavailable};
use crate::admission::SharedState;
use crate::auth::Account;
use crate::config::server::{MoneyWhenDown, RatesWhenDown};
use crate::errors::Error;
use crate::errors::{ErrorKind, FluxError};
use crate::limits::{Charges, Limits, RateStore};
use crate::metering::budget::{
    cap_error, check_on_hold, hourly_error, key_limit_error, monthly_caps, Budget, Hold, Holds,
    SpendStore, Standing, Ticket,
};
use crate::metering::ledger::{Entry, Ledger, ReportRow};
use crate::units::Month;
use crate::units::Usd;

/// Rates and spend shared by a fleet through Redis.
pub struct FleetState {
    fleet: Arc<Fleet>,
    /// This gateway's own rate store: its share of each limit while Redis is down.
    rates: Limits,
    holds: Arc<FleetHolds>,
}

/// Settles and releases the holds a [`FleetState`] reserved.
struct FleetHolds {
    fleet: Arc<Fleet>,
    /// This gateway's own ledger (its record of what it settled) and the holds it keeps
    /// while Redis is down under the `serve` policy.
    local: Budget,
}

impl FleetState {
    /// `local`: this gateway's own budget, over its ledger.
    pub fn new(fleet: Arc<Fleet>, local: Budget) -> Self {
        FleetState {
            holds: Arc::new(FleetHolds {
                fleet: fleet.clone(),
                local,
            }),
            rates: Limits::default(),
            fleet,
        }
    }

    /// Redis down: this gateway's share of each limit (the limit divided by the gateways
    /// alive), or 503 `ledger_unavailable`, as `redis.when_down` says.
    fn check_while_down(&self, key: &str, charges: &Charges) -> Result<(), FluxError> {
        if charges.is_empty() {
            return Ok(());
        }
        match self.fleet.when_down.rate_limits {
            RatesWhenDown::Refuse => Err(FluxError::ledger_unavailable(
                self.fleet.when_down.retry_after_seconds,
                "rate limits",
            )),
            RatesWhenDown::NodeShare => self.rates.check_share(key, charges, self.fleet.nodes()),
        }
    }

    /// Reserve `amount` for `account`, admitting `rate` first in the same script when given.
    async fn reserve_with(
        &self,
        account: &Account,
        amount: Usd,
        now: u64,
        rate: Option<&Charges>,
    ) -> Result<Hold, FluxError> {
        check_on_hold(account)?;
        let caps = monthly_caps(account);
        let hourly = account.terms.hourly_limit_usd;
        let hard_cap = caps.iter().map(|(c, _)| *c).min();
        let holds: Arc<dyn Holds> = self.holds.clone();
        let hold = |ticket| {
            Hold::new(holds, &account.key_id, ticket, amount, hard_cap)
                .of_account(&account.account_id, account.key_limit)
        };
        if caps.is_empty() && hourly.is_none() && account.key_limit.is_none() {
            if let Some(charges) = rate {
                self.check(&account.key_id, charges).await?;
            }
            let id = self.fleet.hold_id();
            return Ok(hold(Ticket::Shared { id, held: false }));
        }
        let charges = rate.map_or(&[][..], Charges::as_slice);
        if let Some(c) = rate {
            c.check_size()?;
        }
        let cap_amounts: Vec<Usd> = caps.iter().map(|(c, _)| *c).collect();
        let answer = self
            .fleet
            .reserve(
                Payer::of(account),
                amount,
                &cap_amounts,
                hourly,
                self.holds.local.ttl_secs(),
                now,
                charges,
            )
            .await;
        match answer {
            Ok(Ok(id)) => Ok(hold(Ticket::Shared { id, held: true })),
            Ok(Err(Refused::Cap { index, committed })) => {
                // The script names the cap by its position in what it was given.
                let (cap, kind) = caps
                    .get(index)
                    .or(caps.last())
                    .copied()
                    .unwrap_or((Usd::ZERO, ErrorKind::SpendCeilingReached));
                Err(cap_error(kind, cap, amount, committed))
            }
            Ok(Err(Refused::Key { committed })) => Err(key_limit_error(
                account.key_limit.unwrap_or_default(),
                amount,
                committed,
            )),
            Ok(Err(Refused::Hour { .. })) => Err(hourly_error(hourly.unwrap_or_default(), now)),
            Ok(Err(Refused::Rate { index, wait })) => Err(match rate {
                Some(c) => c.refused(index, wait),
                None => FluxError::new(ErrorKind::RateLimited, "Rate limited.").retry_after(1),
            }),
            Err(Unavailable) => {
                if let Some(charges) = rate {
                    self.check_while_down(&account.key_id, charges)?;
                }
                match self.fleet.when_down.money {
                    MoneyWhenDown::Refuse => Err(FluxError::ledger_unavailable(
                        self.fleet.when_down.retry_after_seconds,
                        "spend limits",
                    )),
                    // Held here; settled through the fleet's holds, so the fleet bills it too.
                    MoneyWhenDown::Serve => Ok(self
                        .holds
                        .local
                        .reserve(account, amount, now)?
                        .kept_by(self.holds.clone())),
                }
            }
        }
    }
}

#[async_trait]
impl RateStore for FleetState {
    async fn check(&self, key: &str, charges: &Charges) -> Result<(), FluxError> {
        if charges.is_empty() {
            return Ok(());
        }
        charges.check_size()?;
        match self.fleet.admit(key, charges.as_slice()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((i, wait))) => Err(charges.refused(i, wait)),
            Err(Unavailable) => self.check_while_down(key, charges),
        }
    }
}

#[async_trait]
impl SpendStore for FleetState {
    async fn reserve(&self, account: &Account, amount: Usd, now: u64) -> Result<Hold, FluxError> {
        self.reserve_with(account, amount, now, None).await
    }

    /// The account's standing, and the calling key's share of its month.
    async fn standing(&self, account: &Account, now: u64) -> Result<Standing, FluxError> {
        match self.fleet.standing(Payer::of(account), now).await {
            Ok([month, hour, reserved, key_month]) => Ok(Standing {
                month,
                hour,
                reserved,
                key_month,
            }),
            Err(Unavailable) => Err(FluxError::ledger_unavailable(
                self.fleet.when_down.retry_after_seconds,
                "your spend",
            )),
        }
    }

    /// The fleet's usage, from Redis.
    async fn report(&self, month: Month, key_id: Option<String>) -> Result<Vec<ReportRow>, Error> {
        self.fleet.report(month, key_id.as_deref()).await
    }

    /// The holds this gateway keeps itself (Redis releases expired holds in every script
    /// that reads them).
    fn sweep(&self, now: u64) -> usize {
        self.holds.local.sweep(now)
    }

    fn ledger(&self) -> &Arc<dyn Ledger> {
        self.holds.local.ledger()
    }
}

#[async_trait]
impl SharedState for FleetState {
    /// The rate check and the reservation in one script: one round trip.
    async fn admit(
        &self,
        account: &Account,
        charges: &Charges,
        amount: Usd,
        now: u64,
    ) -> Result<Hold, FluxError> {
        self.reserve_with(account, amount, now, Some(charges)).await
    }
}

impl FleetHolds {
    fn settlement(
        &self,
        hold: &Hold,
        id: Box<str>,
        held: Option<Usd>,
        entry: &Entry<'_>,
    ) -> Settlement {
        Settlement {
            account_id: hold.account_id().into(),
            key_id: hold.key_id().into(),
            hold: id,
            held,
            at_unix: entry.at_unix,
            lane: entry.lane.into(),
            model: entry.model.into(),
            input_tokens: entry.input_tokens,
            cached_input_tokens: entry.cached_input_tokens,
            output_tokens: entry.output_tokens,
            cost: entry.cost,
            hard_cap: hold.hard_cap(),
            key_limit: hold.key_limit(),
        }
    }
}

#[async_trait]
impl Holds for FleetHolds {
    /// In Redis the settlement goes in the background, unless a hard cap may bill less than
    /// the cost (a cost over the hold): then it waits for what is billed, the one amount the
    /// client is told.
    async fn settle(&self, hold: &Hold, mut entry: Entry<'_>) -> Usd {
        let (id, held) = match hold.ticket() {
            Ticket::Here(_) => {
                let billed = self.local.settle_here(hold, entry);
                // Served while Redis was down under the `serve` policy: the fleet bills it
                // too, when Redis is back.
                entry.cost = billed;
                let settlement = self.settlement(hold, self.fleet.hold_id(), None, &entry);
                self.fleet.settle_in_background(settlement);
                return billed;
            }
            Ticket::Shared { id, held } => (id.clone(), held.then_some(hold.amount())),
        };
        let settlement = self.settlement(hold, id, held, &entry);
        // Under a hard cap (the account's, or the key's own limit) the script may bill less
        // than the cost, but only past the hold:
        // other settlements never eat into a hold (each is capped to the room left outside
        // the others' holds), so a cost within it is billed in full. Only a provider that
        // counted more than the worst case makes the request wait for what is billed.
        let capped = hold.hard_cap().is_some() || hold.key_limit().is_some();
        let billed = if capped && entry.cost > hold.amount() {
            self.fleet.settle(settlement).await
        } else {
            self.fleet.settle_in_background(settlement);
            entry.cost
        };
        entry.cost = billed;
        self.local.ledger().record(&entry);
        billed
    }

    fn release(&self, hold: &Hold) {
        match hold.ticket() {
            Ticket::Here(_) => self.local.release_here(hold),
            Ticket::Shared { id, held: true } => self.fleet.release_in_background(
                Payer {
                    account_id: hold.account_id(),
                    key_id: hold.key_id(),
                    key_limit: hold.key_limit(),
                },
                id,
                hold.amount(),
            ),
            Ticket::Shared { held: false, .. } => {}
        }
    }
}
