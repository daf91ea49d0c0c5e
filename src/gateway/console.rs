//! The operator console on the admin listener: the page, sign-in and sign-out, and the JSON
//! API it reads and writes (`crate::console` owns sessions and views; this file is the HTTP).
//!
//! | | |
//! |---|---|
//! | `GET /console` | the page (static; it holds no data) |
//! | `POST /console/api/session` | sign in with `{"token"}` (the admin token): a session cookie and the CSRF token |
//! | `GET /console/api/session` | the CSRF token of the current session |
//! | `DELETE /console/api/session` | sign out |
//! | `GET /console/api/overview[?month=YYYY-MM]` | spend by key, lane, model and day; the last hour of traffic; lanes and reloads |
//! | `GET /console/api/keys` | keys with plan, status and spend this month |
//! | `POST /console/api/keys` | create a key `{"name","plan"}`: the key is in this answer only |
//! | `POST /console/api/keys/action` | `{"id","action": revoke \| suspend \| resume \| plan, "plan"}` |
//! | `GET /console/api/accounts` | the key store's accounts (the first [`ACCOUNTS_SHOWN`] by name) with their keys and this month's spend; read-only |
//!
//! Everything but the page and sign-in needs the session cookie; every change also needs the
//! session's token in `X-CSRF-Token`. Otherwise: 403 `admin_forbidden`, in the error shape of
//! the admin API. A wrong token at sign-in counts toward the admin listener's limit of wrong
//! tokens per address (429 past it, `super::admin::Failures`). Keys are written through
//! [`KeysFile::edit`], as `fluxrouter keys` writes them, and the gateway's table is brought up
//! to date before the answer: a key is usable (or refused) the moment the console shows it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::HeaderName;
use http::Method;
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::Admin;
use super::ctx::Stop;
use super::{body, respond};
use crate::config::{KeyStatus, KeysFile};
use crate::console::{self, views, Signed};
use crate::errors::{Context, Error, ErrorKind, Fault, FluxError};
use crate::metering::ledger::LedgerReader;
use crate::units::clock::unix_now;
use crate::units::{Month, Usd};
use crate::wire::Format;

/// A sign-in or change body is small; anything bigger is refused unread.
const MAX_BODY: usize = 64 * 1024;
/// Accounts the console lists at most (each costs a read of its keys).
pub const ACCOUNTS_SHOWN: usize = 200;

/// What a console request answers.
enum Reply {
    Page,
    Json(Value, Option<String>),
}

fn forbidden(message: &'static str) -> FluxError {
    FluxError::new(ErrorKind::AdminForbidden, message)
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> FluxError {
    FluxError::new(ErrorKind::InvalidRequest, message)
}

impl Admin {
    /// Serve a `/console` path.
    pub(super) async fn console(
        &self,
        session: &mut Session,
        id: &str,
        path: &str,
        query: Option<&str>,
    ) -> pingora::Result<()> {
        let secure = session
            .req_header()
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let answer = self.console_answer(session, path, query, secure).await;
        let reply = match answer {
            Ok(reply) => reply,
            Err(Stop::Reply(err)) => {
                return respond::send_error(session, id, Format::OpenAiChat, &err, None).await
            }
            Err(Stop::Broken(e)) => return Err(e),
        };
        let mut h = respond::page_header(200, id)?;
        match reply {
            Reply::Page => {
                h.insert_header(
                    HeaderName::from_static("content-security-policy"),
                    console::CSP.as_str(),
                )?;
                let page = Bytes::from_static(console::PAGE.as_bytes());
                respond::send_body(session, h, "text/html; charset=utf-8", page).await
            }
            Reply::Json(value, cookie) => {
                if let Some(cookie) = cookie {
                    h.insert_header(http::header::SET_COOKIE, cookie)?;
                }
                let body = serde_json::to_vec(&value).expect("JSON value");
                respond::send_body(session, h, "application/json", Bytes::from(body)).await
            }
        }
    }

    async fn console_answer(
        &self,
        session: &mut Session,
        path: &str,
        query: Option<&str>,
        secure: bool,
    ) -> Result<Reply, Stop> {
        let method = session.req_header().method.clone();
        let now = unix_now();
        match (&method, path) {
            (&Method::GET, "/console" | "/console/") => return Ok(Reply::Page),
            (&Method::POST, "/console/api/session") => {
                return self.sign_in(session, now, secure).await;
            }
            _ => {}
        }
        let cookie = console::session_id(
            session
                .req_header()
                .headers
                .get(http::header::COOKIE)
                .map(|v| v.as_bytes()),
        )
        .map(str::to_string);
        let signed = cookie
            .as_deref()
            .and_then(|c| self.sessions.find(c, now))
            .ok_or_else(|| {
                forbidden("Sign in to the console first (POST /console/api/session).")
            })?;
        console::check_csrf(&method, &session.req_header().headers, &signed)?;
        match (&method, path) {
            (&Method::GET, "/console/api/session") => Ok(Reply::Json(session_json(&signed), None)),
            (&Method::DELETE, "/console/api/session") => {
                if let Some(c) = &cookie {
                    self.sessions.close(c);
                }
                Ok(Reply::Json(
                    json!({"signed_out": true}),
                    Some(console::clear_cookie(secure)),
                ))
            }
            (&Method::GET, "/console/api/overview") => self.overview(query, now).await,
            (&Method::GET, "/console/api/keys") => self.keys(now).await,
            (&Method::GET, "/console/api/accounts") => self.accounts(now).await,
            (&Method::POST, "/console/api/keys") => self.create_key(session, now).await,
            (&Method::POST, "/console/api/keys/action") => self.key_action(session).await,
            _ => Err(FluxError::new(
                ErrorKind::EndpointNotServed,
                "The console serves GET /console and /console/api/{session,overview,keys,accounts}.",
            )
            .into()),
        }
    }

    async fn sign_in(&self, session: &mut Session, now: u64, secure: bool) -> Result<Reply, Stop> {
        #[derive(Deserialize)]
        struct SignIn {
            token: String,
        }
        let raw = body::read(session, MAX_BODY).await?;
        let form: SignIn =
            serde_json::from_slice(&raw).map_err(|_| bad("Send {\"token\": \"…\"}."))?;
        if !self.is_admin_token(session, &form.token)? {
            // Slow down guessing; the token itself is long and random.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            return Err(forbidden("Wrong admin token.").into());
        }
        let (cookie, signed) = self.sessions.open(now);
        let set = console::set_cookie(&cookie, self.sessions.ttl_secs(), secure);
        Ok(Reply::Json(session_json(&signed), Some(set)))
    }

    /// This month's spend (or `?month=`), the last hour, the lanes.
    async fn overview(&self, query: Option<&str>, now: u64) -> Result<Reply, Stop> {
        let month = match crate::endpoints::query_pairs(query)
            .find_map(|(k, v)| (k == "month").then_some(v))
        {
            Some(m) => m
                .parse::<Month>()
                .map_err(|_| bad("month must look like 2026-11"))?,
            None => Month::of(now),
        };
        let state = &self.state;
        let rows = self.month_rows(month).await?;
        // Days come from this gateway's ledger file (in fleet mode: its own share).
        let ledger = state.admission.spend().ledger().clone();
        let path = state.config.ledger.path.clone();
        let days = tokio::task::spawn_blocking(move || {
            ledger.flush()?;
            LedgerReader::open(&path)?.days(month, None)
        })
        .await
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("ledger task: {e}")))?
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("ledger: {e}")))?;
        let keys = state.keys.load();
        let names = keys.names_by_id();
        let routes = state.routes.load();
        Ok(Reply::Json(
            json!({
                "spend": views::spend(&month.to_string(), &rows, &names, &days),
                "days_from": if state.fleet.is_some() { "this gateway" } else { "the ledger" },
                "traffic": views::traffic(&state.metrics.recent.last_hour(now / 60)),
                "lanes": views::lanes(
                    &routes,
                    |m| state.providers.get(&m.provider).is_none_or(|p| p.breaker.ejected()),
                    state.lanes_loaded_at.load(Ordering::Relaxed),
                    state.keys_loaded_at.load(Ordering::Relaxed),
                ),
                "fleet": state.fleet.as_ref().map(|f| json!({"redis_up": f.is_up(), "gateways": f.nodes()})),
            }),
            None,
        ))
    }

    /// The keys file (as written, suspended and revoked keys included) with this month's spend.
    async fn keys(&self, now: u64) -> Result<Reply, Stop> {
        let rows = self.month_rows(Month::of(now)).await?;
        let path = self.state.config.keys_file.clone();
        let file = tokio::task::spawn_blocking(move || KeysFile::load(&path))
            .await
            .map_err(|e| FluxError::new(ErrorKind::Internal, format!("keys task: {e}")))?
            .map_err(|e| FluxError::new(ErrorKind::Internal, e.to_string()))?;
        let mut spend: HashMap<&str, (u64, Usd)> = HashMap::new();
        for r in &rows {
            let s = spend.entry(r.key_id.as_str()).or_default();
            s.0 += r.requests;
            s.1 = s.1.saturating_add(r.cost);
        }
        let plans: Vec<&str> = self.state.config.plans.keys().map(String::as_str).collect();
        Ok(Reply::Json(views::keys(&file, &spend, &plans), None))
    }

    async fn accounts(&self, now: u64) -> Result<Reply, Stop> {
        let rows = self.month_rows(Month::of(now)).await?;
        let mut spend: HashMap<&str, (u64, Usd)> = HashMap::new();
        for r in &rows {
            let s = spend.entry(r.key_id.as_str()).or_default();
            s.0 += r.requests;
            s.1 = s.1.saturating_add(r.cost);
        }
        let mut accounts = self.state.directory.index().accounts();
        let total = accounts.len();
        accounts.sort_by(|a, b| a.name.cmp(&b.name));
        accounts.truncate(ACCOUNTS_SHOWN);
        let state = self.state.clone();
        let views = tokio::task::spawn_blocking(move || {
            accounts
                .iter()
                .map(|a| {
                    let row = a.to_row();
                    Ok(views::AccountView {
                        plan_ceiling: state.plan_terms.get(&row.plan).and_then(|t| t.ceiling_usd),
                        keys: state.directory.keys_of(&row.id)?,
                        row,
                    })
                })
                .collect::<Result<Vec<_>, crate::accounts::StoreError>>()
        })
        .await
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("key store task: {e}")))?
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("key store: {e}")))?;
        Ok(Reply::Json(
            views::accounts(&views, total, &spend, now),
            None,
        ))
    }

    async fn month_rows(
        &self,
        month: Month,
    ) -> Result<Vec<crate::metering::ledger::ReportRow>, Stop> {
        let retry = self
            .state
            .fleet
            .as_ref()
            .map_or(2, |f| f.when_down.retry_after_seconds);
        let rows = self
            .state
            .admission
            .spend()
            .report(month, None)
            .await
            .map_err(|e| match &self.state.fleet {
                Some(_) => FluxError::ledger_unavailable(retry, "the fleet's usage"),
                None => FluxError::new(ErrorKind::Internal, format!("ledger: {e}")),
            })?;
        Ok(rows)
    }

    async fn create_key(&self, session: &mut Session, now: u64) -> Result<Reply, Stop> {
        #[derive(Deserialize)]
        struct NewKey {
            name: String,
            plan: String,
        }
        let raw = body::read(session, MAX_BODY).await?;
        let form: NewKey = serde_json::from_slice(&raw)
            .map_err(|_| bad("Send {\"name\": \"…\", \"plan\": \"…\"}."))?;
        let (key, record) = crate::auth::new_key(form.name.trim(), &form.plan, now);
        let answer = json!({"id": record.id, "name": record.name, "plan": record.plan, "key": key});
        self.edit_keys(move |f, plans| f.add(record, plans)).await?;
        Ok(Reply::Json(answer, None))
    }

    async fn key_action(&self, session: &mut Session) -> Result<Reply, Stop> {
        #[derive(Deserialize)]
        struct Action {
            id: String,
            action: String,
            plan: Option<String>,
        }
        let raw = body::read(session, MAX_BODY).await?;
        let a: Action = serde_json::from_slice(&raw).map_err(|_| {
            bad("Send {\"id\": \"key_…\", \"action\": \"revoke|suspend|resume|plan\", \"plan\"}.")
        })?;
        let status = match a.action.as_str() {
            "revoke" => Some(KeyStatus::Revoked),
            "suspend" => Some(KeyStatus::Suspended),
            "resume" => Some(KeyStatus::Active),
            "plan" => None,
            _ => return Err(bad("action is revoke, suspend, resume or plan").into()),
        };
        let (id, plan) = (a.id.clone(), a.plan.clone());
        self.edit_keys(move |f, plans| match status {
            Some(s) => f.set_status(&id, s),
            None => f.set_plan(&id, plan.as_deref().unwrap_or_default(), plans),
        })
        .await?;
        Ok(Reply::Json(json!({"id": a.id, "action": a.action}), None))
    }

    /// Change the keys file as `fluxrouter keys` does (under its lock), then load it into
    /// the table in use, off the request thread. A change the gateway could not load is not
    /// written; nor is one to a keys file that has gone missing or empty while the gateway
    /// serves keys (a new file with one key would log everyone else out).
    async fn edit_keys(
        &self,
        change: impl FnOnce(&mut KeysFile, &[&str]) -> Result<(), Error> + Send + 'static,
    ) -> Result<(), Stop> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let config = &state.config;
            let path = &config.keys_file;
            let plans: Vec<&str> = config.plans.keys().map(String::as_str).collect();
            let serving = state.keys.load().len();
            KeysFile::edit(path, |f| {
                if f.keys.is_empty() && serving > 0 {
                    return Err(Error::new(
                        Fault::Conflict,
                        format!(
                            "{} lists no keys while the gateway serves {serving}: it is \
                             missing or empty; restore it before changing keys",
                            path.display()
                        ),
                    ));
                }
                change(f, &plans)?;
                crate::state::keys_table(config, f)
                    .map(drop)
                    .context(Fault::Invalid, "the gateway would refuse it")
            })
            .map_err(|e| match e.fault() {
                // The operator's input: said back as a 400.
                Fault::Invalid | Fault::NotFound | Fault::Conflict | Fault::TooLarge => {
                    bad(e.to_string())
                }
                _ => FluxError::new(ErrorKind::Internal, format!("the keys file: {e}")),
            })?;
            state.reload_keys_now().map(drop).map_err(|e| {
                FluxError::new(
                    ErrorKind::Internal,
                    format!("the keys file was changed, but the gateway could not load it: {e}"),
                )
            })
        })
        .await
        .map_err(|e| FluxError::new(ErrorKind::Internal, format!("keys task: {e}")))?
        .map_err(Stop::from)
    }
}

fn session_json(signed: &Signed) -> Value {
    json!({"csrf": signed.csrf, "expires_at": signed.expires_at})
}
