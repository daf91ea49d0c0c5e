//! The account owner's page on the client listener: the page, sign-in with a management key,
//! and its JSON API, which is the management API (`super::manage`) behind a session instead
//! of a Bearer key.
//!
//! | | |
//! |---|---|
//! | `GET /account` | the page (static; it holds no data) |
//! | `POST /account/api/session` | sign in with `{"key"}` (a management key): a session cookie and the CSRF token |
//! | `GET /account/api/session` | the CSRF token of the current session |
//! | `DELETE /account/api/session` | sign out |
//! | `/account/api/keys…`, `/account/api/account…` | `/v1/keys…` and `/v1/account…` of the management API, same methods, bodies and answers |
//!
//! Security is the operator console's (`crate::console`): the session id only in an
//! `HttpOnly`, `SameSite=Strict` cookie of its own (`Secure` over TLS), every change needing
//! the session's token in `X-CSRF-Token`, sessions that expire, a CSP that runs only the
//! page's own script. A wrong key at sign-in counts toward a limit per source address (429
//! past it), as a wrong admin token does on the admin listener; an inference key is a wrong
//! key here. The session remembers the management key's digest, and every request checks
//! the key again: a key disabled, rotated past its grace or deleted signs its sessions out.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::Method;
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ctx::Stop;
use super::{manage, respond};
use crate::console::{self, Signed};
use crate::errors::{ErrorKind, FluxError};
use crate::state::AppState;
use crate::units::clock::unix_now;

/// How long a sign-in lasts.
pub const SESSION_SECS: u64 = 8 * 3600;
const COOKIE_PATH: &str = "/account";

fn forbidden(message: &'static str) -> FluxError {
    FluxError::new(ErrorKind::AdminForbidden, message)
}

/// What a request to the page answers.
enum Reply {
    Page,
    Json(u16, Value, Option<String>),
}

/// The page's sessions and its count of wrong keys, kept by the client listener.
pub struct OwnerPage {
    state: Arc<AppState>,
    sessions: console::Sessions,
}

impl OwnerPage {
    pub fn new(state: Arc<AppState>) -> Self {
        OwnerPage {
            state,
            sessions: console::Sessions::new(SESSION_SECS),
        }
    }

    /// Serve an `/account` path; the status sent.
    pub async fn serve(&self, session: &mut Session, id: &str, path: &str) -> Result<u16, Stop> {
        let secure = session.digest().is_some_and(|d| d.ssl_digest.is_some())
            || session
                .req_header()
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let reply = self.account_answer(session, path, secure).await?;
        let status = match &reply {
            Reply::Page => 200,
            Reply::Json(status, ..) => *status,
        };
        let mut h = respond::page_header(status, id)?;
        match reply {
            Reply::Page => {
                h.insert_header(
                    HeaderName::from_static("content-security-policy"),
                    console::ACCOUNT_CSP.as_str(),
                )?;
                let page = Bytes::from_static(console::ACCOUNT_PAGE.as_bytes());
                respond::send_body(session, h, "text/html; charset=utf-8", page).await?;
            }
            Reply::Json(_, value, cookie) => {
                if let Some(cookie) = cookie {
                    h.insert_header(http::header::SET_COOKIE, cookie)?;
                }
                let body = serde_json::to_vec(&value).expect("JSON value");
                respond::send_body(session, h, "application/json", Bytes::from(body)).await?;
            }
        }
        Ok(status)
    }

    async fn account_answer(
        &self,
        session: &mut Session,
        path: &str,
        secure: bool,
    ) -> Result<Reply, Stop> {
        let method = session.req_header().method.clone();
        let now = unix_now();
        let path = path.strip_suffix('/').unwrap_or(path);
        match (&method, path) {
            (&Method::GET, "/account") => return Ok(Reply::Page),
            (&Method::POST, "/account/api/session") => {
                return self.owner_sign_in(session, now, secure).await;
            }
            _ => {}
        }
        let cookie = console::session_id_named(
            session
                .req_header()
                .headers
                .get(http::header::COOKIE)
                .map(|v| v.as_bytes()),
            console::ACCOUNT_COOKIE,
        )
        .map(str::to_string);
        let signed = cookie
            .as_deref()
            .and_then(|c| self.sessions.find(c, now))
            .ok_or_else(|| forbidden("Sign in first (POST /account/api/session)."))?;
        // The key signed in with must still be a usable management key.
        let manager = signed
            .subject
            .and_then(|digest| self.state.directory.lookup(&digest))
            .and_then(|found| {
                let manager = crate::auth::manager_from_store(&found, now).ok()?;
                self.state.directory.record_use(&found.0, now);
                Some(manager)
            });
        let Some(manager) = manager else {
            if let Some(c) = &cookie {
                self.sessions.close(c);
            }
            return Err(forbidden(
                "The management key of this session is no longer usable: sign in again.",
            )
            .into());
        };
        console::check_csrf(&method, &session.req_header().headers, &signed)?;
        match (&method, path) {
            (&Method::GET, "/account/api/session") => {
                Ok(Reply::Json(200, session_json(&signed, &manager), None))
            }
            (&Method::DELETE, "/account/api/session") => {
                if let Some(c) = &cookie {
                    self.sessions.close(c);
                }
                Ok(Reply::Json(
                    200,
                    json!({"signed_out": true}),
                    Some(cookie_for("", 0, secure)),
                ))
            }
            _ => {
                let Some(v1) = path
                    .strip_prefix("/account/api/")
                    .filter(|p| *p == "keys" || p.starts_with("keys/") || p.starts_with("account"))
                else {
                    return Err(FluxError::new(
                        ErrorKind::NotFound,
                        "The owner's page serves GET /account and /account/api/{session,keys,account}.",
                    )
                    .into());
                };
                let v1 = format!("/v1/{v1}");
                let (status, value) = manage::owner_as(&self.state, session, &manager, &v1).await?;
                Ok(Reply::Json(status, value, None))
            }
        }
    }

    async fn owner_sign_in(
        &self,
        session: &mut Session,
        now: u64,
        secure: bool,
    ) -> Result<Reply, Stop> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SignIn {
            key: String,
        }
        let form: SignIn = manage::json_body(session).await?;
        let key = form.key.trim();
        if key.is_empty() {
            return Err(forbidden("Sign in with a management key.").into());
        }
        let from = super::client::client_ip(&self.state, session);
        // Counted before the key is looked up, taken back when it is a management key; past
        // the address's limit it is not looked up at all.
        let mut found = None;
        super::client::check_secret(&self.state, from, key, "wrong keys", || {
            found = Some(self.state.authenticate_manager(Some(key), now));
            matches!(found, Some(Ok(_)))
        })?;
        let manager = match found {
            Some(Ok(m)) => m,
            other => {
                // Slow down guessing; the key itself is long and random.
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                return Err(other
                    .and_then(Result::err)
                    .unwrap_or_else(|| forbidden("Sign in with a management key."))
                    .into());
            }
        };
        let digest = crate::accounts::digest_of(key);
        let (cookie, signed) = self.sessions.open_for(now, Some(digest));
        let set = cookie_for(&cookie, self.sessions.ttl_secs(), secure);
        Ok(Reply::Json(200, session_json(&signed, &manager), Some(set)))
    }
}

fn cookie_for(id: &str, max_age: u64, secure: bool) -> String {
    console::set_cookie_named(console::ACCOUNT_COOKIE, COOKIE_PATH, id, max_age, secure)
}

fn session_json(signed: &Signed, manager: &crate::auth::Manager) -> Value {
    json!({
        "csrf": signed.csrf,
        "expires_at": signed.expires_at,
        "account_id": manager.account_id,
        "key_id": manager.key_id,
    })
}
