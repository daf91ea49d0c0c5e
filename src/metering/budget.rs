//! Spend limits that hold under concurrency: reserve the worst case before forwarding,
//! settle to the real cost afterwards.
//!
//! A reservation is checked against every limit of the account and added to the account's
//! outstanding holds under one lock, so two concurrent requests cannot both take the last
//! cent. Settling records the real cost in the ledger and releases the hold in the same
//! critical section. A [`Hold`] releases itself when dropped unsettled (a failed or
//! abandoned request), and every hold also has an expiry after which [`Budget::sweep`]
//! frees it, so a hold whose owner never returns (a leaked task) cannot block a key.
//!
//! Admission reaches spend through [`SpendStore`]: [`Budget`] keeps it in this process over
//! its ledger; in fleet mode `fleet/` keeps it in Redis (one atomic script per reservation
//! or settlement) and settles its holds through [`Holds`]. The refusals and the caps are
//! worked out here, whatever the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::ledger::{Entry, Ledger, ReportRow};
use crate::auth::Account;
use crate::errors::{Context, Error, Fault};
use crate::errors::{ErrorKind, FluxError};
use crate::units::{Month, Usd};

/// How long a hold may live without being settled or dropped (`ledger.hold_ttl_seconds`).
pub const DEFAULT_HOLD_TTL_SECS: u64 = 15 * 60;

/// Where holds and spend are kept: this process ([`Budget`]) or a fleet's shared store.
#[async_trait]
pub trait SpendStore: Send + Sync {
    /// Reserve `amount` (the request's worst-case cost) for `account`, or say which limit it
    /// would break (402). `now` is Unix seconds.
    async fn reserve(&self, account: &Account, amount: Usd, now: u64) -> Result<Hold, FluxError>;

    /// Where an account stands: settled spend this month and hour, and outstanding holds.
    async fn standing(&self, account: &Account, now: u64) -> Result<Standing, FluxError>;

    /// A month's usage by key, lane and model, as far as this store sees it.
    async fn report(&self, month: Month, key_id: Option<String>) -> Result<Vec<ReportRow>, Error>;

    /// Release this process's holds past their expiry. Returns how many.
    fn sweep(&self, now: u64) -> usize;

    /// This gateway's own ledger (in fleet mode, its share of the fleet's spend).
    fn ledger(&self) -> &Arc<dyn Ledger>;
}

/// The store side of a [`Hold`]: what settles it or releases it.
#[async_trait]
pub trait Holds: Send + Sync {
    /// Record the real cost of `hold`'s request and release the hold; returns what was billed.
    async fn settle(&self, hold: &Hold, entry: Entry<'_>) -> Usd;
    /// Release `hold` unsettled (its request failed or was abandoned).
    fn release(&self, hold: &Hold);
}

#[derive(Default)]
struct KeyHolds {
    /// Sum of outstanding holds.
    reserved: Usd,
    /// Hold id -> (amount, expires at), to release expired holds exactly once.
    holds: HashMap<u64, (Usd, u64)>,
}

struct Inner {
    /// This gateway's ledger: every spend it settled (in fleet mode, its own share, kept so
    /// the shared ledger can be reconciled).
    ledger: Arc<dyn Ledger>,
    by_key: Mutex<HashMap<String, KeyHolds>>,
    next_id: std::sync::atomic::AtomicU64,
    ttl_secs: u64,
}

/// The reservations of this process, over its ledger.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

/// Where a hold is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ticket {
    /// In this process ([`Budget`]), by its id there.
    Here(u64),
    /// In a shared store, by its id there; `held` is false for an account with no limit to
    /// hold against (the id then only names the settlement).
    Shared { id: Box<str>, held: bool },
}

/// An outstanding reservation. Settle it with [`Hold::settle`]; dropping it releases it.
pub struct Hold {
    holds: Arc<dyn Holds>,
    key_id: String,
    /// The account whose caps the hold counts against.
    account_id: String,
    /// The key's own monthly limit, a hard cap on its spend.
    key_limit: Option<Usd>,
    ticket: Ticket,
    amount: Usd,
    /// The hard cap a settlement may not push the month's spend over (free and
    /// credit-only plans), if any.
    hard_cap: Option<Usd>,
    done: bool,
}

/// What an account stands at, for `/v1/usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub month: Usd,
    pub hour: Usd,
    pub reserved: Usd,
    /// The calling key's share of `month`.
    pub key_month: Usd,
}

impl Budget {
    pub fn new(ledger: Arc<dyn Ledger>, ttl_secs: u64) -> Self {
        Budget {
            inner: Arc::new(Inner {
                ledger,
                by_key: Mutex::new(HashMap::new()),
                next_id: std::sync::atomic::AtomicU64::new(1),
                ttl_secs,
            }),
        }
    }

    /// This gateway's own ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.inner.ledger
    }

    /// How long a hold lives unsettled, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.inner.ttl_secs
    }

    /// Reserve against this process's own holds and ledger (never waits).
    pub fn reserve(&self, account: &Account, amount: Usd, now: u64) -> Result<Hold, FluxError> {
        check_on_hold(account)?;
        let terms = &account.terms;
        let mut by_key = lock(&self.inner.by_key);
        // The key's own limit: its spend and holds, whatever its sibling keys spend.
        if let Some(limit) = account.key_limit {
            let spent = self.inner.ledger.spend(&account.key_id, now).month;
            let held = by_key
                .get(account.key_id.as_str())
                .map_or(Usd::ZERO, |k| k.reserved);
            let committed = spent.saturating_add(held);
            if committed.saturating_add(amount) > limit {
                return Err(key_limit_error(limit, amount, committed));
            }
        }
        // The account's caps: every key's spend and holds.
        let spend = self.inner.ledger.spend(&account.account_id, now);
        let entry = by_key.entry(account.account_id.clone()).or_default();
        let committed = spend.month.saturating_add(entry.reserved);
        let after = committed.saturating_add(amount);
        let caps = monthly_caps(account);
        for &(cap, kind) in &caps {
            if after > cap {
                return Err(cap_error(kind, cap, amount, committed));
            }
        }
        let hard_cap = caps.iter().map(|(c, _)| *c).min();
        if let Some(limit) = terms.hourly_limit_usd {
            if spend
                .hour
                .saturating_add(entry.reserved)
                .saturating_add(amount)
                > limit
            {
                return Err(hourly_error(limit, now));
            }
        }
        let id = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let expires = now.saturating_add(self.inner.ttl_secs);
        entry.reserved = entry.reserved.saturating_add(amount);
        entry.holds.insert(id, (amount, expires));
        if account.key_limit.is_some() {
            let key = by_key.entry(account.key_id.clone()).or_default();
            key.reserved = key.reserved.saturating_add(amount);
            key.holds.insert(id, (amount, expires));
        }
        Ok(Hold::new(
            self.inner.clone(),
            &account.key_id,
            Ticket::Here(id),
            amount,
            hard_cap,
        )
        .of_account(&account.account_id, account.key_limit))
    }

    /// Where an account stands in this process (every key's spend and holds).
    pub fn standing(&self, account: &Account, now: u64) -> Standing {
        let by_key = lock(&self.inner.by_key);
        let spend = self.inner.ledger.spend(&account.account_id, now);
        Standing {
            month: spend.month,
            hour: spend.hour,
            reserved: by_key
                .get(account.account_id.as_str())
                .map_or(Usd::ZERO, |k| k.reserved),
            key_month: self.inner.ledger.spend(&account.key_id, now).month,
        }
    }

    /// A month's usage by key, lane and model in this gateway's ledger (flushed first, so it
    /// includes every request settled before the call).
    pub async fn report(
        &self,
        month: Month,
        key_id: Option<String>,
    ) -> Result<Vec<ReportRow>, Error> {
        let ledger = self.inner.ledger.clone();
        tokio::task::spawn_blocking(move || {
            ledger.flush()?;
            ledger.report(month, key_id.as_deref())
        })
        .await
        .context(Fault::Unavailable, "ledger task")?
    }

    /// Release holds whose owner never settled nor dropped them. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut by_key = lock(&self.inner.by_key);
        let mut released = 0;
        for holds in by_key.values_mut() {
            let expired: Vec<u64> = holds
                .holds
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some((amount, _)) = holds.holds.remove(&id) {
                    holds.reserved = holds.reserved.saturating_sub(amount);
                    released += 1;
                }
            }
        }
        by_key.retain(|_, k| !k.holds.is_empty());
        released
    }

    /// Outstanding holds of a key in this process (tests).
    pub fn reserved(&self, key_id: &str) -> Usd {
        lock(&self.inner.by_key)
            .get(key_id)
            .map_or(Usd::ZERO, |k| k.reserved)
    }

    /// Settle a hold this process keeps ([`Ticket::Here`]); returns what was billed.
    pub fn settle_here(&self, hold: &Hold, entry: Entry<'_>) -> Usd {
        self.inner.settle_here(hold, entry)
    }

    /// Release a hold this process keeps.
    pub fn release_here(&self, hold: &Hold) {
        self.inner.release_here(hold)
    }
}

#[async_trait]
impl SpendStore for Budget {
    async fn reserve(&self, account: &Account, amount: Usd, now: u64) -> Result<Hold, FluxError> {
        Budget::reserve(self, account, amount, now)
    }

    async fn standing(&self, account: &Account, now: u64) -> Result<Standing, FluxError> {
        Ok(Budget::standing(self, account, now))
    }

    async fn report(&self, month: Month, key_id: Option<String>) -> Result<Vec<ReportRow>, Error> {
        Budget::report(self, month, key_id).await
    }

    fn sweep(&self, now: u64) -> usize {
        Budget::sweep(self, now)
    }

    fn ledger(&self) -> &Arc<dyn Ledger> {
        Budget::ledger(self)
    }
}

impl Inner {
    /// Record the real cost, capped under a hard cap so the month never passes it, and
    /// release the hold, in one critical section.
    fn settle_here(&self, hold: &Hold, mut entry: Entry<'_>) -> Usd {
        let mut by_key = lock(&self.by_key);
        // The hard caps: the account's (free and credit-only plans) and the key's own.
        let caps = [
            (hold.hard_cap, hold.account_id.as_str()),
            (hold.key_limit, hold.key_id.as_str()),
        ];
        for (cap, subject) in caps {
            let Some(cap) = cap else { continue };
            let spent = self.ledger.spend(subject, entry.at_unix).month;
            let others = by_key
                .get(subject)
                .map_or(Usd::ZERO, |k| k.reserved.saturating_sub(hold.amount));
            let room = cap.saturating_sub(spent.saturating_add(others));
            if entry.cost > room {
                log::warn!(
                    "{}: cost ${} capped at ${} to keep the plan's hard cap",
                    entry.request_id,
                    entry.cost,
                    room
                );
                entry.cost = room;
            }
        }
        let billed = entry.cost;
        self.ledger.record(&entry);
        if let Ticket::Here(id) = hold.ticket {
            release(&mut by_key, hold, id);
        }
        billed
    }

    fn release_here(&self, hold: &Hold) {
        if let Ticket::Here(id) = hold.ticket {
            release(&mut lock(&self.by_key), hold, id);
        }
    }
}

#[async_trait]
impl Holds for Inner {
    async fn settle(&self, hold: &Hold, entry: Entry<'_>) -> Usd {
        self.settle_here(hold, entry)
    }

    fn release(&self, hold: &Hold) {
        self.release_here(hold)
    }
}

/// 402 `account_on_hold` for an account paused for payment review.
pub fn check_on_hold(account: &Account) -> Result<(), FluxError> {
    if account.on_hold {
        return Err(FluxError::new(
            ErrorKind::AccountOnHold,
            "Account on hold for payment review: requests are paused until billing clears \
             it. Email billing@ferroxlabs.com.",
        ));
    }
    Ok(())
}

/// 402 `key_spend_limit_reached`: the key's own monthly limit would be passed.
pub fn key_limit_error(limit: Usd, amount: Usd, committed: Usd) -> FluxError {
    let left = limit.saturating_sub(committed);
    FluxError::new(
        ErrorKind::KeySpendLimitReached,
        format!(
            "This key's monthly spend limit of ${limit} is reached (${left} left, this request \
             may cost up to ${amount}). The account's other keys are not affected: raise this \
             key's limit or use another key."
        ),
    )
}

/// The refusal of a request that would pass a monthly cap.
pub fn cap_error(kind: ErrorKind, cap: Usd, amount: Usd, committed: Usd) -> FluxError {
    let left = cap.saturating_sub(committed);
    let message = match kind {
        ErrorKind::FreeAllowanceExhausted => format!(
            "Free allowance used up: this request could cost up to ${amount} and ${left} of \
             this month's ${cap} is left. Upgrade, or connect your own provider key; the \
             allowance renews on the 1st (UTC)."
        ),
        ErrorKind::CreditExhausted => format!(
            "Monthly credit used up: this request could cost up to ${amount} and ${left} of \
             this month's ${cap} credit is left. Top up or upgrade on the billing page."
        ),
        _ => format!(
            "Account spend ceiling reached: ${left} of this month's ${cap} ceiling is left and \
             this request could cost up to ${amount}. Raise your account ceiling or add funds; \
             lowering max_tokens or switching models will not clear it."
        ),
    };
    FluxError::new(kind, message)
}

/// The refusal of a request that would pass the hourly limit.
pub fn hourly_error(limit: Usd, now: u64) -> FluxError {
    let retry = 3600 - now % 3600;
    FluxError::new(
        ErrorKind::HourlyLimitReached,
        format!(
            "Hourly safety limit hit: spend this hour would pass ${limit}. Wait {retry} s \
             (retry_after) or slow your request rate."
        ),
    )
    .retry_after(retry)
}

/// The lowest monthly amount an account may not pass, if any.
pub fn monthly_cap(account: &Account) -> Option<Usd> {
    monthly_caps(account).iter().map(|(c, _)| *c).min()
}

/// The monthly amounts an account may not pass, and the error each one raises: a free
/// allowance, a credit without overage, a spend ceiling (the account's own or its plan's).
pub fn monthly_caps(account: &Account) -> Vec<(Usd, ErrorKind)> {
    let terms = &account.terms;
    let mut caps = Vec::with_capacity(2);
    caps.extend(terms.credit_cap);
    if !terms.free {
        if let Some(ceiling) = account.ceiling.or(terms.ceiling_usd) {
            caps.push((ceiling, ErrorKind::SpendCeilingReached));
        }
    }
    caps
}

impl Hold {
    /// A hold kept by `holds` (the store that reserved it).
    pub fn new(
        holds: Arc<dyn Holds>,
        key_id: &str,
        ticket: Ticket,
        amount: Usd,
        hard_cap: Option<Usd>,
    ) -> Hold {
        Hold {
            holds,
            key_id: key_id.to_string(),
            account_id: key_id.to_string(),
            key_limit: None,
            ticket,
            amount,
            hard_cap,
            done: false,
        }
    }

    /// The hold of a key of `account_id`, with the key's own limit if it has one: this
    /// process keeps it under both.
    pub fn of_account(mut self, account_id: &str, key_limit: Option<Usd>) -> Hold {
        self.account_id = account_id.to_string();
        self.key_limit = key_limit;
        self
    }

    /// The same hold, settled and released through `holds` instead (a store that keeps
    /// some of its holds in another, as a fleet keeps this gateway's while Redis is down).
    pub fn kept_by(mut self, holds: Arc<dyn Holds>) -> Hold {
        self.holds = holds;
        self
    }

    pub fn amount(&self) -> Usd {
        self.amount
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The account whose caps the hold counts against.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The key's own monthly limit, if it has one (the hold counts against it too).
    pub fn key_limit(&self) -> Option<Usd> {
        self.key_limit
    }

    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The hard cap a settlement may not push the month's spend over, if any.
    pub fn hard_cap(&self) -> Option<Usd> {
        self.hard_cap
    }

    /// Record the real cost and release the hold. On plans whose credit is a hard stop,
    /// the recorded cost is capped so the month never passes the cap (a provider that
    /// counted more tokens than the worst case is the gateway's loss, not the user's).
    /// Returns what was billed: the one price the client is told.
    pub async fn settle(mut self, entry: Entry<'_>) -> Usd {
        self.done = true;
        self.holds.settle(&self, entry).await
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("key_id", &self.key_id)
            .field("amount", &self.amount)
            .finish()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done {
            self.holds.release(self);
        }
    }
}

/// Release hold `id` of `hold`'s account, and of its key when the key has a limit.
fn release(by_key: &mut HashMap<String, KeyHolds>, hold: &Hold, id: u64) {
    let key = hold.key_limit.is_some().then_some(hold.key_id.as_str());
    for subject in std::iter::once(hold.account_id.as_str()).chain(key) {
        if let Some(k) = by_key.get_mut(subject) {
            // Already gone if the sweep released it.
            if let Some((amount, _)) = k.holds.remove(&id) {
                k.reserved = k.reserved.saturating_sub(amount);
            }
            if k.holds.is_empty() {
                by_key.remove(subject);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain numbers behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::server::PlanConfig;
    use crate::errors::Error;
    use crate::metering::ledger::{ReportRow, Spend};

    /// Spend kept in memory, as the embedded ledger keeps it for reads.
    #[derive(Default)]
    struct MemoryLedger {
        month: Mutex<HashMap<String, Usd>>,
    }

    impl Ledger for MemoryLedger {
        fn record(&self, entry: &Entry<'_>) {
            let mut m = self.month.lock().unwrap();
            for subject in [entry.key_id, entry.account_id] {
                let v = m.entry(subject.to_string()).or_default();
                *v = v.saturating_add(entry.cost);
            }
        }
        fn spend(&self, key_id: &str, _now: u64) -> Spend {
            let month = self
                .month
                .lock()
                .unwrap()
                .get(key_id)
                .copied()
                .unwrap_or_default();
            Spend { month, hour: month }
        }
        fn report(&self, _: Month, _: Option<&str>) -> Result<Vec<ReportRow>, Error> {
            Ok(Vec::new())
        }
        fn flush(&self) -> Result<(), Error> {
            Ok(())
        }
        fn close(&self) -> Result<(), Error> {
            Ok(())
        }
    }

    fn settle(hold: Hold, e: Entry<'_>) -> Usd {
        use futures_util::FutureExt;
        hold.settle(e)
            .now_or_never()
            .expect("a local settlement does not wait")
    }

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    fn account(terms: PlanConfig) -> Account {
        let mut file = crate::config::KeysFile::default();
        let (_, record) = crate::auth::new_key("k", "p", 0);
        file.keys.push(record);
        let terms = Arc::new(crate::auth::Terms::compile(&terms));
        let table =
            crate::auth::KeyTable::compile(std::path::Path::new("keys.yaml"), &file, &|_| {
                Some(terms.clone())
            })
            .unwrap();
        let id = table.id_of("k").unwrap();
        table.account_by_id(&id).unwrap().as_ref().clone()
    }

    fn entry(account: &Account, cost: Usd) -> Entry<'_> {
        Entry {
            at_unix: 0,
            key_id: &account.key_id,
            account_id: &account.account_id,
            cost,
            ..Entry::default()
        }
    }

    fn free(credit: &str) -> PlanConfig {
        PlanConfig {
            lanes: vec!["express".into()],
            free: true,
            monthly_credit_usd: Some(usd(credit)),
            ..PlanConfig::default()
        }
    }

    #[test]
    fn concurrent_holds_never_exceed_the_allowance() {
        let budget = Budget::new(Arc::new(MemoryLedger::default()), 60);
        let a = Arc::new(account(free("0.05")));
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let (budget, a) = (budget.clone(), a.clone());
                std::thread::spawn(move || {
                    // Worst case 1 cent, real cost 0.7 cents.
                    match budget.reserve(&a, usd("0.01"), 0) {
                        Ok(hold) => {
                            settle(hold, entry(&a, usd("0.007")));
                            1
                        }
                        Err(e) => {
                            assert_eq!(e.code(), "free_allowance_exhausted");
                            0
                        }
                    }
                })
            })
            .collect();
        let served: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let spent = budget.standing(&a, 0);
        assert!(served >= 5, "{served}");
        assert!(spent.month <= usd("0.05"), "{spent:?}");
        assert_eq!(spent.month, usd("0.007").times(served as u64));
        assert_eq!(spent.reserved, Usd::ZERO);
    }

    /// Three keys of one account, the third with its own limit.
    fn three_keys(terms: PlanConfig, third_limit: Option<Usd>) -> Vec<Account> {
        let mut file = crate::config::KeysFile::default();
        file.accounts.push(crate::config::AccountRecord {
            id: "acct_team".into(),
            name: "team".into(),
            plan: "p".into(),
            payment_method: false,
            on_hold: false,
            ceiling_usd: None,
            models: None,
            created_at: 0,
        });
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let (_, mut record) = crate::auth::new_key(name, "", 0);
            record.account = Some("acct_team".into());
            record.monthly_limit_usd = if i == 2 { third_limit } else { None };
            file.keys.push(record);
        }
        let terms = Arc::new(crate::auth::Terms::compile(&terms));
        let table =
            crate::auth::KeyTable::compile(std::path::Path::new("keys.yaml"), &file, &|_| {
                Some(terms.clone())
            })
            .unwrap();
        ["a", "b", "c"]
            .iter()
            .map(|n| {
                let id = table.id_of(n).unwrap();
                table.account_by_id(&id).unwrap().as_ref().clone()
            })
            .collect()
    }

    #[test]
    fn the_keys_of_one_account_share_its_allowance_under_concurrency() {
        let budget = Budget::new(Arc::new(MemoryLedger::default()), 60);
        let keys = Arc::new(three_keys(free("0.05"), None));
        assert!(keys.iter().all(|k| k.account_id == "acct_team"));
        let handles: Vec<_> = (0..96)
            .map(|i| {
                let (budget, keys) = (budget.clone(), keys.clone());
                std::thread::spawn(move || {
                    let a = &keys[i % 3];
                    match budget.reserve(a, usd("0.01"), 0) {
                        Ok(hold) => {
                            settle(hold, entry(a, usd("0.007")));
                            1
                        }
                        Err(e) => {
                            assert_eq!(e.code(), "free_allowance_exhausted");
                            0
                        }
                    }
                })
            })
            .collect();
        let served: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // The account's allowance, not three of them.
        let spent = budget.standing(&keys[0], 0);
        assert!(spent.month <= usd("0.05"), "{spent:?}");
        assert_eq!(spent.month, usd("0.007").times(served));
        // One account standing for every key (`key_month` is each key's own share, which
        // depends on how the threads interleaved).
        let other = budget.standing(&keys[1], 0);
        assert_eq!(
            (other.month, other.hour, other.reserved),
            (spent.month, spent.hour, spent.reserved),
            "one standing for every key"
        );
        let shares = keys.iter().map(|k| budget.standing(k, 0).key_month);
        assert_eq!(shares.fold(Usd::ZERO, Usd::saturating_add), spent.month);
    }

    #[test]
    fn a_key_limit_stops_that_key_and_its_siblings_go_on() {
        let budget = Budget::new(Arc::new(MemoryLedger::default()), 60);
        let payg = PlanConfig {
            lanes: vec!["express".into()],
            ceiling_usd: Some(usd("10")),
            overage: true,
            ..PlanConfig::default()
        };
        let keys = three_keys(payg, Some(usd("0.02")));
        let limited = &keys[2];
        let hold = budget.reserve(limited, usd("0.015"), 0).unwrap();
        // Its hold counts against the key's limit at once.
        let e = budget.reserve(limited, usd("0.01"), 0).unwrap_err();
        assert_eq!((e.status(), e.code()), (402, "key_spend_limit_reached"));
        // The provider counted more than the worst case: the key pays at most its limit.
        assert_eq!(settle(hold, entry(limited, usd("0.05"))), usd("0.02"));
        let e = budget.reserve(limited, usd("0.001"), 0).unwrap_err();
        assert_eq!(e.code(), "key_spend_limit_reached");
        assert!(e.message.contains("other keys"), "{}", e.message);
        // A sibling without a limit of its own spends on.
        let hold = budget.reserve(&keys[0], usd("1"), 0).unwrap();
        settle(hold, entry(&keys[0], usd("0.5")));
        assert_eq!(budget.standing(&keys[1], 0).month, usd("0.52"));
        assert_eq!(budget.reserved("acct_team"), Usd::ZERO);
        assert_eq!(budget.reserved(&limited.key_id), Usd::ZERO);
    }

    #[test]
    fn a_dropped_hold_is_released_and_a_forgotten_one_expires() {
        let budget = Budget::new(Arc::new(MemoryLedger::default()), 60);
        let a = account(free("0.05"));
        let hold = budget.reserve(&a, usd("0.04"), 1_000).unwrap();
        assert_eq!(budget.reserved(&a.account_id), usd("0.04"));
        assert!(budget.reserve(&a, usd("0.02"), 1_000).is_err(), "held");
        drop(hold);
        assert_eq!(budget.reserved(&a.account_id), Usd::ZERO);

        // An owner that never comes back (a leaked task): the sweep frees it at expiry.
        let hold = budget.reserve(&a, usd("0.04"), 1_000).unwrap();
        std::mem::forget(hold);
        assert_eq!(budget.sweep(1_059), 0, "not expired yet");
        assert!(budget.reserve(&a, usd("0.02"), 1_059).is_err());
        assert_eq!(budget.sweep(1_060), 1);
        assert_eq!(budget.reserved(&a.account_id), Usd::ZERO);
        assert!(budget.reserve(&a, usd("0.02"), 1_060).is_ok());
    }

    #[test]
    fn settlement_never_passes_a_hard_cap() {
        let budget = Budget::new(Arc::new(MemoryLedger::default()), 60);
        let a = account(free("0.05"));
        let hold = budget.reserve(&a, usd("0.04"), 0).unwrap();
        // The provider counted more than the worst case: the key pays at most its cap.
        assert_eq!(settle(hold, entry(&a, usd("0.09"))), usd("0.05"));
        assert_eq!(budget.standing(&a, 0).month, usd("0.05"));
    }

    #[test]
    fn each_limit_answers_with_its_own_code() {
        let budget = Budget::new(Arc::new(MemoryLedger::default()), 60);
        let cases = [
            (free("0.01"), "free_allowance_exhausted"),
            (
                PlanConfig {
                    monthly_credit_usd: Some(usd("0.01")),
                    ..PlanConfig::default()
                },
                "monthly_credit_exhausted",
            ),
            (
                PlanConfig {
                    monthly_credit_usd: Some(Usd::ZERO),
                    overage: true,
                    ceiling_usd: Some(usd("0.01")),
                    ..PlanConfig::default()
                },
                "spend_ceiling_reached",
            ),
            (
                PlanConfig {
                    hourly_limit_usd: Some(usd("0.01")),
                    ..PlanConfig::default()
                },
                "hourly_limit_reached",
            ),
        ];
        for (terms, code) in cases {
            let a = account(terms);
            let e = budget.reserve(&a, usd("0.02"), 7_200 + 600).unwrap_err();
            assert_eq!((e.status(), e.code()), (402, code));
            if code == "hourly_limit_reached" {
                assert_eq!(e.retry_after, Some(3_000));
            } else {
                assert_eq!(e.retry_after, None);
            }
            assert!(budget.reserve(&a, usd("0.005"), 0).is_ok(), "{code}");
        }
        let mut on_hold = account(PlanConfig::default());
        on_hold.on_hold = true;
        let e = budget.reserve(&on_hold, Usd::ZERO, 0).unwrap_err();
        assert_eq!((e.status(), e.code()), (402, "account_on_hold"));
    }
}
