//! Accounts and keys over HTTP: the owners' management API on the client listener (a
//! management key, Bearer) and the operators' accounts API on the admin listener (the admin
//! token). Both read and write the key store ([`crate::accounts::Directory`]); every change
//! serves in this process at once and in the others within a quarter of a second.
//!
//! An owner sees only their account: any id of another account's key answers 404 exactly as
//! an id that does not exist, and nothing is changed. A secret appears only in the answer
//! that creates it (create, rotate). Bodies are JSON objects of at most [`MAX_BODY`] bytes
//! (413 past it) with known fields only, each once (400 otherwise: [`json_object`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use pingora::proxy::Session;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::accounts::ops::{account_json, ceiling_problem, key_json, MAX_KEYS_PER_ACCOUNT};
use crate::accounts::{
    AccountEdit, AccountRow, Directory, KeyKind, KeyLimits, KeyRow, KeyStatus, NewAccount,
    StoreError,
};
use crate::auth::Manager;
use crate::background::NotRun;
use crate::errors::{ErrorKind, FluxError};
use crate::metering::ledger::LedgerReader;
use crate::state::AppState;
use crate::units::clock::unix_now;
use crate::units::{Month, Usd};

use super::body;
use super::ctx::Stop;

/// The largest body the accounts APIs read: their requests are a few fields.
pub const MAX_BODY: usize = 64 * 1024;

/// An answer: its status and JSON body.
pub type Answer = Result<(u16, Value), Stop>;

fn bad(message: impl Into<String>) -> FluxError {
    FluxError::new(ErrorKind::InvalidRequest, message.into())
}

fn not_found(what: &str, id: &str) -> FluxError {
    let shown: String = id.chars().take(64).collect();
    FluxError::new(ErrorKind::NotFound, format!("No {what} with id '{shown}'."))
}

/// A store failure as the client's answer (internals stay in the log).
fn store_error(e: StoreError) -> FluxError {
    match e {
        StoreError::NotFound(m) => FluxError::new(ErrorKind::NotFound, m),
        StoreError::Conflict(m) => FluxError::new(ErrorKind::Conflict, m),
        StoreError::Invalid(m) => bad(m),
        StoreError::Unavailable(m) => {
            log::warn!("accounts API: {m}");
            FluxError::ledger_unavailable(1, "accounts and keys")
        }
        other => {
            log::error!("accounts API: {other}");
            FluxError::new(
                ErrorKind::Internal,
                "The key store failed; retry, and quote the request id if it persists.",
            )
        }
    }
}

/// Run a store operation (SQLite, blocking) on the management thread, which yields to the
/// serving threads (see [`crate::background`]).
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    op: impl FnOnce(&Directory) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, FluxError> {
    let dir = state.directory.clone();
    match state.management.run(move || op(&dir)).await {
        Ok(done) => done.map_err(store_error),
        Err(NotRun::Busy) => Err(FluxError::new(
            ErrorKind::Overloaded,
            "The key store has a queue of changes to write; nothing was changed. Retry in a second.",
        )
        .retry_after(1)),
        Err(NotRun::Failed) => Err(FluxError::new(
            ErrorKind::Internal,
            "The key store operation failed; retry, and quote the request id if it persists.",
        )),
    }
}

/// The request's JSON body (at most [`MAX_BODY`] bytes: 413 past it) as `T`: see
/// [`json_object`].
pub(super) async fn json_body<T: DeserializeOwned>(session: &mut Session) -> Result<T, Stop> {
    let raw = body::read(session, MAX_BODY).await?;
    Ok(json_object(&raw)?)
}

/// A body as `T`: a JSON object (an empty body reads as `{}`) whose keys each appear once
/// (the generation endpoints' detector, [`crate::wire::json::top_level`]: with a key twice,
/// which value counts would depend on the parser), of known fields with the right types;
/// 400 otherwise.
pub(super) fn json_object<T: DeserializeOwned>(raw: &[u8]) -> Result<T, FluxError> {
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    // An object only (serde would read a struct from an array too), each key once.
    crate::wire::json::top_level(raw)?;
    serde_json::from_slice(raw).map_err(|e| {
        let e = e.to_string();
        let e = e.split(" at line").next().unwrap_or(&e);
        bad(format!(
            "The body must be a JSON object of the documented fields: {e}."
        ))
    })
}

/// A field that may be absent (unchanged), `null` (cleared) or a value.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A new key's expiry must be ahead (Unix seconds).
fn check_expiry(expires_at: Option<u64>) -> Result<(), FluxError> {
    match expires_at {
        Some(t) if t <= unix_now() => Err(bad("expires_at must be in the future (Unix seconds)")),
        _ => Ok(()),
    }
}

fn method_not_allowed(path: &str, allowed: &str) -> FluxError {
    FluxError::new(
        ErrorKind::MethodNotAllowed,
        format!("{path} accepts {allowed} only."),
    )
}

/// The ceiling of a plan, if the configuration has the plan and the plan has one.
fn plan_ceiling(state: &AppState, plan: &str) -> Option<Usd> {
    state.plan_terms.get(plan).and_then(|t| t.ceiling_usd)
}

/// Items a listing answers when `limit` is not given, and at most.
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 1000;

/// A listing's `?limit=N&after=ID`: at most `limit` items (1 to [`PAGE_MAX`], default
/// [`PAGE_DEFAULT`]) with ids after `after` (the `next` of the previous page; none: from the
/// first).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Paging {
    limit: usize,
    after: String,
}

impl Paging {
    fn parse(query: Option<&str>) -> Result<Paging, FluxError> {
        let mut paging = Paging {
            limit: PAGE_DEFAULT,
            after: String::new(),
        };
        for (k, v) in crate::endpoints::query_pairs(query) {
            match k {
                "limit" => {
                    paging.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=PAGE_MAX).contains(n))
                        .ok_or_else(|| bad(format!("limit must be 1 to {PAGE_MAX}")))?
                }
                // Ids are `acct_`/`key_` and alphanumerics: nothing to percent-decode.
                "after" => paging.after = v.chars().take(64).collect(),
                _ => {
                    return Err(bad(format!(
                        "unknown parameter '{}' (limit, after)",
                        k.chars().take(32).collect::<String>()
                    )))
                }
            }
        }
        Ok(paging)
    }

    /// A page of `items` (asked for one more than `limit`, to know whether more follow),
    /// each item's id by `id_of`, as `{"object": "list", "data", "has_more", "next"}`.
    fn answer<T>(
        &self,
        mut items: Vec<T>,
        id_of: impl Fn(&T) -> String,
        show: impl FnMut(&T) -> Value,
    ) -> Value {
        let has_more = items.len() > self.limit;
        items.truncate(self.limit);
        let next = if has_more {
            items.last().map(&id_of)
        } else {
            None
        };
        json!({
            "object": "list",
            "data": items.iter().map(show).collect::<Vec<_>>(),
            "has_more": has_more,
            "next": next,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The owners' management API (client listener).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    monthly_limit_usd: Option<Usd>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    monthly_limit_usd: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "nullable")]
    models: Option<Option<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    grace_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerAccountPatch {
    #[serde(default, deserialize_with = "nullable")]
    ceiling_usd: Option<Option<Usd>>,
}

/// The management API: `path` is one of `/v1/keys…` or `/v1/account…`.
pub async fn owner(state: &Arc<AppState>, session: &mut Session, path: &str) -> Answer {
    let h = &session.req_header().headers;
    let presented = crate::auth::presented_key(
        h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
        None,
        false,
    );
    let manager = state.authenticate_manager(presented, unix_now())?;
    owner_as(state, session, &manager, path).await
}

/// The management API for `manager`, however it was authenticated (a Bearer key here, the
/// owner's page's session in `super::account`): `path` is one of `/v1/keys…` or
/// `/v1/account…`.
pub async fn owner_as(
    state: &Arc<AppState>,
    session: &mut Session,
    manager: &Manager,
    path: &str,
) -> Answer {
    let method = session.req_header().method.clone();
    let path = path.strip_suffix('/').unwrap_or(path).to_string();
    let parts: Vec<&str> = path.split('/').skip(2).collect();
    use http::Method as M;
    match (&method, parts.as_slice()) {
        (&M::GET, ["keys"]) => {
            let paging = Paging::parse(session.req_header().uri.query())?;
            let account = manager.account_id.clone();
            let (after, limit) = (paging.after.clone(), paging.limit + 1);
            let keys = blocking(state, move |d| d.keys_page(&account, &after, limit)).await?;
            let now = unix_now();
            let page = paging.answer(keys, |k| k.id.clone(), |k| key_json(k, now));
            Ok((200, page))
        }
        (&M::POST, ["keys"]) => {
            let new: NewKey = json_body(session).await?;
            check_expiry(new.expires_at)?;
            let account = manager.account_id.clone();
            let limits = KeyLimits {
                expires_at: new.expires_at,
                monthly_limit_usd: new.monthly_limit_usd,
                models: new.models,
            };
            let (secret, row) = blocking(state, move |d| {
                d.create_key_within(
                    &account,
                    &new.name,
                    KeyKind::Inference,
                    limits,
                    MAX_KEYS_PER_ACCOUNT,
                )
            })
            .await?;
            let mut v = key_json(&row, unix_now());
            v["key"] = json!(secret);
            Ok((201, v))
        }
        (_, ["keys"]) => Err(method_not_allowed(&path, "GET and POST").into()),
        (&M::GET, ["keys", id]) => {
            let row = owned_key(state, manager, id).await?;
            Ok((200, key_json(&row, unix_now())))
        }
        (&M::PATCH, ["keys", id]) => {
            let patch: KeyPatch = json_body(session).await?;
            let row = owned_key(state, manager, id).await?;
            if patch.disabled == Some(true) && row.id == manager.key_id {
                return Err(itself("disable").into());
            }
            let id = row.id.clone();
            let row = blocking(state, move |d| {
                d.update_key(&id, |row| {
                    if let Some(name) = patch.name {
                        row.name = name;
                    }
                    match patch.disabled {
                        Some(true) if row.status == KeyStatus::Active => {
                            row.status = KeyStatus::Suspended
                        }
                        Some(false) if row.status == KeyStatus::Suspended => {
                            row.status = KeyStatus::Active
                        }
                        // A revoked key stays revoked (update_key refuses to revive it).
                        Some(false) if row.status == KeyStatus::Revoked => {
                            row.status = KeyStatus::Active
                        }
                        _ => {}
                    }
                    if let Some(limit) = patch.monthly_limit_usd {
                        row.monthly_limit_usd = limit;
                    }
                    if let Some(models) = patch.models {
                        row.models = models;
                    }
                })
            })
            .await?;
            Ok((200, key_json(&row, unix_now())))
        }
        (&M::DELETE, ["keys", id]) => {
            let row = owned_key(state, manager, id).await?;
            if row.id == manager.key_id {
                return Err(itself("delete").into());
            }
            let id = row.id.clone();
            blocking(state, move |d| d.delete_key(&id)).await?;
            Ok((200, json!({"id": row.id, "object": "key", "deleted": true})))
        }
        (_, ["keys", _]) => Err(method_not_allowed(&path, "GET, PATCH and DELETE").into()),
        (&M::POST, ["keys", id, "rotate"]) => {
            let rotate: Rotate = json_body(session).await?;
            let row = owned_key(state, manager, id).await?;
            let id = row.id.clone();
            let now = unix_now();
            let r = blocking(state, move |d| d.rotate_key(&id, rotate.grace_seconds, now)).await?;
            let mut v = key_json(&r.key, now);
            v["key"] = json!(r.secret);
            v["rotated"] = key_json(&r.old, now);
            Ok((201, v))
        }
        (_, ["keys", _, "rotate"]) => Err(method_not_allowed(&path, "POST").into()),
        (&M::GET, ["account"]) => {
            let row = own_account(state, manager)?;
            Ok((200, account_json(&row, plan_ceiling(state, &row.plan))))
        }
        (&M::PATCH, ["account"]) => {
            let patch: OwnerAccountPatch = json_body(session).await?;
            let row = own_account(state, manager)?;
            let plan_ceiling = plan_ceiling(state, &row.plan);
            let Some(ceiling) = patch.ceiling_usd else {
                return Ok((200, account_json(&row, plan_ceiling)));
            };
            if let Some(p) = ceiling_problem(ceiling, plan_ceiling) {
                return Err(bad(format!("{p}: choose at most the plan's, or null for it")).into());
            }
            let id = row.id.clone();
            let edit = AccountEdit {
                ceiling_usd: Some(ceiling),
                ..AccountEdit::default()
            };
            let row = blocking(state, move |d| d.edit_account(&id, edit)).await?;
            Ok((200, account_json(&row, plan_ceiling)))
        }
        (_, ["account"]) => Err(method_not_allowed(&path, "GET and PATCH").into()),
        (&M::GET, ["account", "usage"]) => {
            let query = session.req_header().uri.query().map(str::to_string);
            Ok((200, usage(state, manager, query.as_deref()).await?))
        }
        (_, ["account", "usage"]) => Err(method_not_allowed(&path, "GET").into()),
        _ => Err(FluxError::new(
            ErrorKind::NotFound,
            "The management API serves /v1/keys, /v1/keys/{id}, /v1/keys/{id}/rotate, \
             /v1/account and /v1/account/usage.",
        )
        .into()),
    }
}

/// 409: a management key may not lock its account out through itself.
fn itself(what: &str) -> FluxError {
    FluxError::new(
        ErrorKind::Conflict,
        format!(
            "A management key cannot {what} itself: use another management key, or rotate it \
             (POST /v1/keys/{{id}}/rotate)."
        ),
    )
}

/// The key with this id if it is the manager's account's; 404 otherwise, the same answer
/// whether it does not exist or belongs to another account.
async fn owned_key(
    state: &Arc<AppState>,
    manager: &Manager,
    id: &str,
) -> Result<KeyRow, FluxError> {
    let wanted = id.to_string();
    let row = blocking(state, move |d| d.key(&wanted)).await?;
    match row {
        Some(row) if row.account_id == manager.account_id => Ok(row),
        _ => Err(not_found("key", id)),
    }
}

fn own_account(state: &AppState, manager: &Manager) -> Result<AccountRow, FluxError> {
    state
        .directory
        .account(&manager.account_id)
        .map(|a| a.to_row())
        .ok_or_else(|| not_found("account", &manager.account_id))
}

/// `GET /v1/account/usage?month=YYYY-MM&by=key|model|day`: the account's keys' usage from
/// the ledger (keys deleted since are no longer itemized).
async fn usage(
    state: &Arc<AppState>,
    manager: &Manager,
    query: Option<&str>,
) -> Result<Value, FluxError> {
    let mut month = Month::of(unix_now());
    let mut by = "key".to_string();
    for (k, v) in crate::endpoints::query_pairs(query) {
        match k {
            "month" => month = v.parse().map_err(|_| bad("month must look like 2026-11"))?,
            "by" if matches!(v, "key" | "model" | "day") => by = v.to_string(),
            "by" => return Err(bad("by must be key, model or day")),
            _ => {
                return Err(bad(format!(
                    "unknown parameter '{}'",
                    k.chars().take(32).collect::<String>()
                )))
            }
        }
    }
    let account = manager.account_id.clone();
    let keys = blocking(state, move |d| d.keys_of(&account)).await?;
    let names: BTreeMap<String, String> = keys
        .iter()
        .map(|k| (k.id.clone(), k.name.clone()))
        .collect();
    let data: Vec<Value> = if by == "day" {
        let ledger = state.admission.spend().ledger().clone();
        let path = state.config.ledger.path.clone();
        let ids: Vec<String> = names.keys().cloned().collect();
        let days = tokio::task::spawn_blocking(move || {
            ledger.flush()?;
            let reader = LedgerReader::open(&path)?;
            let mut days: BTreeMap<String, (u64, Usd)> = BTreeMap::new();
            for id in &ids {
                for d in reader.days(month, Some(id))? {
                    let e = days.entry(d.day).or_insert((0, Usd::ZERO));
                    e.0 += d.requests;
                    e.1 = e.1.saturating_add(d.cost);
                }
            }
            Ok::<_, crate::errors::Error>(days)
        })
        .await
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("ledger task: {e}")))?
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("ledger: {e}")))?;
        days.into_iter()
            .map(|(day, (requests, cost))| json!({"day": day, "requests": requests, "cost_usd": cost}))
            .collect()
    } else {
        let rows = state
            .admission
            .spend()
            .report(month, None)
            .await
            .map_err(|e| FluxError::new(ErrorKind::Internal, format!("ledger: {e}")))?;
        #[derive(Default)]
        struct Sum {
            requests: u64,
            input: u64,
            cached: u64,
            output: u64,
            cost: Usd,
        }
        let mut sums: BTreeMap<String, Sum> = BTreeMap::new();
        for r in rows.iter().filter(|r| names.contains_key(&r.key_id)) {
            let group = if by == "key" { &r.key_id } else { &r.model };
            let s = sums.entry(group.clone()).or_default();
            s.requests += r.requests;
            s.input += r.input_tokens;
            s.cached += r.cached_input_tokens;
            s.output += r.output_tokens;
            s.cost = s.cost.saturating_add(r.cost);
        }
        sums.into_iter()
            .map(|(group, s)| {
                let mut v = json!({
                    "requests": s.requests,
                    "input_tokens": s.input,
                    "cached_input_tokens": s.cached,
                    "output_tokens": s.output,
                    "cost_usd": s.cost,
                });
                if by == "key" {
                    v["name"] = json!(names.get(&group));
                    v["key_id"] = json!(group);
                } else {
                    v["model"] = json!(group);
                }
                v
            })
            .collect()
    };
    let total = data
        .iter()
        .filter_map(|v| v["cost_usd"].as_str()?.parse::<Usd>().ok())
        .fold(Usd::ZERO, Usd::saturating_add);
    Ok(json!({
        "object": "account_usage",
        "account_id": manager.account_id,
        "month": month.to_string(),
        "by": by,
        "total_usd": total,
        "data": data,
    }))
}

// ---------------------------------------------------------------------------------------
// The operators' accounts API (admin listener).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminNewAccount {
    name: String,
    plan: String,
    #[serde(default)]
    payment_method: bool,
    #[serde(default)]
    on_hold: bool,
    #[serde(default)]
    ceiling_usd: Option<Usd>,
    #[serde(default)]
    models: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminAccountPatch {
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    payment_method: Option<bool>,
    #[serde(default)]
    on_hold: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    ceiling_usd: Option<Option<Usd>>,
    #[serde(default, deserialize_with = "nullable")]
    models: Option<Option<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminNewKey {
    name: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    monthly_limit_usd: Option<Usd>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// Whether the admin listener routes `path` here.
pub fn is_operator_path(path: &str) -> bool {
    path == "/admin/v1/accounts"
        || path.starts_with("/admin/v1/accounts/")
        || (path.starts_with("/admin/v1/keys/") && path.ends_with("/revoke"))
}

fn known_plan(state: &AppState, plan: &str) -> Result<(), FluxError> {
    if state.plan_terms.contains_key(plan) {
        return Ok(());
    }
    let mut plans: Vec<&str> = state.plan_terms.keys().map(String::as_str).collect();
    plans.sort_unstable();
    Err(bad(format!(
        "unknown plan '{}' (plans: {})",
        plan.chars().take(64).collect::<String>(),
        plans.join(", ")
    )))
}

/// An account with its keys (never a secret).
async fn account_with_keys(state: &Arc<AppState>, row: &AccountRow) -> Result<Value, FluxError> {
    let id = row.id.clone();
    let keys = blocking(state, move |d| d.keys_of(&id)).await?;
    Ok(account_view(state, row, &keys, unix_now()))
}

fn account_view(state: &AppState, row: &AccountRow, keys: &[KeyRow], now: u64) -> Value {
    let mut v = account_json(row, plan_ceiling(state, &row.plan));
    v["keys"] = json!(keys.iter().map(|k| key_json(k, now)).collect::<Vec<_>>());
    v
}

/// The account with this id (or name).
async fn account_of(state: &Arc<AppState>, id: &str) -> Result<AccountRow, FluxError> {
    if let Some(a) = state.directory.account(id) {
        return Ok(a.to_row());
    }
    let name = id.to_string();
    blocking(state, move |d| d.account_by_name(&name))
        .await?
        .ok_or_else(|| not_found("account", id))
}

/// The accounts API behind the admin token: `path` passed [`is_operator_path`].
pub async fn operator(state: &Arc<AppState>, session: &mut Session, path: &str) -> Answer {
    let method = session.req_header().method.clone();
    let path = path.strip_suffix('/').unwrap_or(path).to_string();
    let parts: Vec<&str> = path.split('/').skip(3).collect();
    use http::Method as M;
    match (&method, parts.as_slice()) {
        (&M::GET, ["accounts"]) => {
            let paging = Paging::parse(session.req_header().uri.query())?;
            let mut accounts: Vec<AccountRow> = state
                .directory
                .index()
                .accounts()
                .into_iter()
                .filter(|a| *a.id > *paging.after)
                .map(|a| a.to_row())
                .collect();
            accounts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            accounts.truncate(paging.limit + 1);
            // One blocking task for the page's reads of keys, not one per account.
            let listed = accounts.clone();
            let keys = blocking(state, move |d| {
                listed
                    .iter()
                    .map(|a| d.keys_of(&a.id))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
            let now = unix_now();
            let with_keys: Vec<(AccountRow, Vec<KeyRow>)> =
                accounts.into_iter().zip(keys).collect();
            let page = paging.answer(
                with_keys,
                |(a, _)| a.id.clone(),
                |(a, keys)| account_view(state, a, keys, now),
            );
            Ok((200, page))
        }
        (&M::POST, ["accounts"]) => {
            let new: AdminNewAccount = json_body(session).await?;
            known_plan(state, &new.plan)?;
            let row = blocking(state, move |d| {
                d.create_account(NewAccount {
                    name: new.name,
                    plan: new.plan,
                    payment_method: new.payment_method,
                    on_hold: new.on_hold,
                    ceiling_usd: new.ceiling_usd,
                    models: new.models,
                })
            })
            .await?;
            Ok((201, account_with_keys(state, &row).await?))
        }
        (_, ["accounts"]) => Err(method_not_allowed(&path, "GET and POST").into()),
        (&M::GET, ["accounts", id]) => {
            let row = account_of(state, id).await?;
            Ok((200, account_with_keys(state, &row).await?))
        }
        (&M::PATCH, ["accounts", id]) => {
            let patch: AdminAccountPatch = json_body(session).await?;
            if let Some(plan) = &patch.plan {
                known_plan(state, plan)?;
            }
            let id = account_of(state, id).await?.id;
            let edit = AccountEdit {
                plan: patch.plan,
                payment_method: patch.payment_method,
                on_hold: patch.on_hold,
                ceiling_usd: patch.ceiling_usd,
                models: patch.models,
            };
            let row = blocking(state, move |d| d.edit_account(&id, edit)).await?;
            Ok((200, account_with_keys(state, &row).await?))
        }
        (_, ["accounts", _]) => Err(method_not_allowed(&path, "GET and PATCH").into()),
        (&M::POST, ["accounts", id, "keys"]) => {
            let new: AdminNewKey = json_body(session).await?;
            check_expiry(new.expires_at)?;
            let kind = match new.kind.as_deref() {
                None => KeyKind::Inference,
                Some(k) => {
                    KeyKind::parse(k).ok_or_else(|| bad("kind must be inference or management"))?
                }
            };
            let account = account_of(state, id).await?.id;
            let limits = KeyLimits {
                expires_at: new.expires_at,
                monthly_limit_usd: new.monthly_limit_usd,
                models: new.models,
            };
            let (secret, row) = blocking(state, move |d| {
                d.create_key(&account, &new.name, kind, limits)
            })
            .await?;
            let mut v = key_json(&row, unix_now());
            v["key"] = json!(secret);
            Ok((201, v))
        }
        (_, ["accounts", _, "keys"]) => Err(method_not_allowed(&path, "POST").into()),
        (&M::POST, ["keys", id, "revoke"]) => {
            let id = id.to_string();
            let row = blocking(state, move |d| d.revoke_key(&id)).await?;
            Ok((200, key_json(&row, unix_now())))
        }
        (_, ["keys", _, "revoke"]) => Err(method_not_allowed(&path, "POST").into()),
        _ => Err(FluxError::new(
            ErrorKind::NotFound,
            "The accounts API serves /admin/v1/accounts, /admin/v1/accounts/{id}, \
             /admin/v1/accounts/{id}/keys and /admin/v1/keys/{id}/revoke.",
        )
        .into()),
    }
}
