//! The operator console: a page on the admin listener where a person sees spend and traffic
//! and manages keys. This module owns its sign-in sessions, their cookie and CSRF token, and
//! the JSON views the page reads; `gateway::console` serves them.
//!
//! A session is opened with the admin token and lives in this process (a restart signs
//! everyone out). Its id travels only in an `HttpOnly`, `SameSite=Strict` cookie and is
//! kept here as a SHA-256 digest; every change must also carry the session's CSRF token in
//! `X-CSRF-Token`, which the page reads from the sign-in answer.

pub mod views;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "flux_console";
/// The style both pages share (`common.css`), put in place of the `/* common.css */` line
/// of each page's one `<style>` element (so it stays one element, hashed whole by the CSP).
const COMMON_STYLE: &str = include_str!("common.css");
const COMMON_STYLE_MARK: &str = "  /* common.css */\n";

fn with_common_style(page: &str) -> String {
    assert!(
        page.contains(COMMON_STYLE_MARK),
        "a page without its common style"
    );
    page.replacen(COMMON_STYLE_MARK, COMMON_STYLE, 1)
}

/// The page (embedded: no build step, nothing fetched from the internet).
pub static PAGE: LazyLock<String> = LazyLock::new(|| with_common_style(include_str!("page.html")));
/// The page's `Content-Security-Policy`: its own script and style are allowed by their
/// SHA-256, nothing else inline, so markup injected into the page (a handler attribute, a
/// script or style element) does not run.
pub static CSP: LazyLock<String> = LazyLock::new(|| csp_of(&PAGE));

/// The account owner's page on the client listener (`gateway::account`), built the same way.
pub static ACCOUNT_PAGE: LazyLock<String> =
    LazyLock::new(|| with_common_style(include_str!("account.html")));
/// Its `Content-Security-Policy`.
pub static ACCOUNT_CSP: LazyLock<String> = LazyLock::new(|| csp_of(&ACCOUNT_PAGE));
/// The owner's page's session cookie: its own name and path, so the two pages' sessions
/// never meet (they may share a host).
pub const ACCOUNT_COOKIE: &str = "flux_account";

/// A page's policy: its own script and style by hash, nothing else.
fn csp_of(page: &str) -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(inline(page, "script")),
        source_hash(inline(page, "style")),
    )
}

/// The text of the page's one `<tag>` element (attributes none).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = page.find(&open).map(|i| i + open.len());
    let end = page.find(&format!("</{tag}>"));
    match (start, end) {
        (Some(s), Some(e)) if s <= e => &page[s..e],
        _ => panic!("the console page has no <{tag}> element"),
    }
}

/// A CSP hash source (`sha256-<base64>`) of an inline element's text.
fn source_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Sessions kept at most; past it the one closest to expiry goes.
const MAX_SESSIONS: usize = 1024;

/// A signed-in session as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub csrf: String,
    /// Who signed in, when a session is someone's (the owner's page: the SHA-256 of the
    /// management key, checked again on every request); `None` for the console.
    pub subject: Option<[u8; 32]>,
    /// Unix seconds.
    pub expires_at: u64,
}

/// The open sessions, by the digest of their id.
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Signed>>,
    ttl_secs: u64,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new(ttl_secs: u64) -> Self {
        Sessions {
            open: Mutex::new(HashMap::new()),
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Open a session: its id (for the cookie only) and what the page needs.
    pub fn open(&self, now: u64) -> (String, Signed) {
        self.open_for(now, None)
    }

    /// Open a session for `subject` (see [`Signed::subject`]).
    pub fn open_for(&self, now: u64, subject: Option<[u8; 32]>) -> (String, Signed) {
        let id = random_hex();
        let signed = Signed {
            subject,
            csrf: random_hex(),
            expires_at: now + self.ttl_secs,
        };
        let mut open = self.lock();
        open.retain(|_, s| s.expires_at > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
            {
                open.remove(&oldest);
            }
        }
        open.insert(digest(&id), signed.clone());
        (id, signed)
    }

    /// The session of a cookie's id, if it is open and not expired.
    pub fn find(&self, id: &str, now: u64) -> Option<Signed> {
        let key = digest(id);
        let mut open = self.lock();
        match open.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Sign out.
    pub fn close(&self, id: &str) {
        self.lock().remove(&digest(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Signed>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session id in a `Cookie` header, if any.
pub fn session_id(cookie_header: Option<&[u8]>) -> Option<&str> {
    session_id_named(cookie_header, COOKIE)
}

/// The id in the cookie `name` of a `Cookie` header, if any.
pub fn session_id_named<'a>(cookie_header: Option<&'a [u8]>, name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(cookie_header?).ok()?;
    text.split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value of a new session. `Secure` when the page is served over TLS (a
/// terminating proxy says so with `X-Forwarded-Proto: https`).
pub fn set_cookie(id: &str, max_age: u64, secure: bool) -> String {
    set_cookie_named(COOKIE, "/console", id, max_age, secure)
}

/// The same for the cookie `name` sent only under `path`.
pub fn set_cookie_named(name: &str, path: &str, id: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={id}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that signs out.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

/// Equal strings, compared in time that depends only on their length.
/// The header in which a page sends its session's CSRF token with every change.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Whether a request may go on in `signed`'s session: a read (`GET`) may; a change only with
/// the session's CSRF token in [`CSRF_HEADER`] (a cross-site form cannot set a header).
/// Both pages' requests pass here: 403 `admin_forbidden` otherwise.
pub fn check_csrf(
    method: &http::Method,
    headers: &http::HeaderMap,
    signed: &Signed,
) -> Result<(), crate::errors::FluxError> {
    if method == http::Method::GET {
        return Ok(());
    }
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if same(presented, &signed.csrf) {
        return Ok(());
    }
    Err(crate::errors::FluxError::new(
        crate::errors::ErrorKind::AdminForbidden,
        "The X-CSRF-Token header is missing or wrong.",
    ))
}

pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_expire_and_close() {
        let s = Sessions::new(60);
        let (id, signed) = s.open(1_000);
        assert_eq!(id.len(), 64);
        assert_eq!(signed.csrf.len(), 64);
        assert_ne!(id, signed.csrf);
        assert_eq!(s.find(&id, 1_059), Some(signed.clone()));
        assert_eq!(s.find(&id, 1_060), None, "expired");
        let (id, _) = s.open(2_000);
        assert!(s.find(&id, 2_001).is_some());
        s.close(&id);
        assert_eq!(s.find(&id, 2_001), None);
        assert_eq!(s.find("0".repeat(64).as_str(), 2_001), None);
    }

    #[test]
    fn the_open_sessions_are_bounded() {
        let s = Sessions::new(60);
        let (first, _) = s.open(0);
        for i in 0..MAX_SESSIONS {
            s.open(1 + i as u64 % 10);
        }
        assert!(s.lock().len() <= MAX_SESSIONS);
        assert_eq!(s.find(&first, 1), None, "the oldest went first");
    }

    #[test]
    fn the_csp_allows_the_pages_own_script_and_style_and_nothing_inline() {
        // One script and one style element, both hashed; no handler attributes in the markup
        // (a handler would need 'unsafe-inline'), no style attributes: both pages.
        for (page, csp) in [(&PAGE, CSP.as_str()), (&ACCOUNT_PAGE, ACCOUNT_CSP.as_str())] {
            assert!(page.contains(COMMON_STYLE) && !page.contains("common.css"));
            assert!(!csp.contains("unsafe"), "{csp}");
            page_is_hashed_and_has_no_inline_handlers(page, csp);
        }
        // The hash of a known text, as browsers compute it.
        assert_eq!(
            source_hash("alert(1)"),
            "sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI="
        );
    }

    fn page_is_hashed_and_has_no_inline_handlers(page: &str, csp: &str) {
        for tag in ["script", "style"] {
            assert_eq!(page.matches(&format!("<{tag}")).count(), 1, "{tag}");
            assert!(csp.contains(&source_hash(inline(page, tag))), "{csp}");
        }
        let markup = page.replace(inline(page, "script"), "");
        let markup = markup.replace(inline(page, "style"), "");
        let lower = markup.to_ascii_lowercase();
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !lower[i + 3 + name.len()..].starts_with('='),
                "an inline handler: on{name}"
            );
        }
        assert!(!page.contains("style="), "a style attribute");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_parsed_back() {
        let c = set_cookie(&"a".repeat(64), 28_800, false);
        assert_eq!(
            c,
            format!(
                "flux_console={}; Path=/console; Max-Age=28800; HttpOnly; SameSite=Strict",
                "a".repeat(64)
            )
        );
        assert!(set_cookie("x", 1, true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        let header = format!("theme=dark; flux_console={}; other=1", "b".repeat(64));
        assert_eq!(
            session_id(Some(header.as_bytes())),
            Some("b".repeat(64).as_str())
        );
        assert_eq!(session_id(Some(b"flux_console=short")), None);
        assert_eq!(session_id(Some(b"flux_console=zz")), None);
        assert_eq!(session_id(None), None);
        let signed = Signed {
            csrf: "t".repeat(64),
            subject: None,
            expires_at: 1,
        };
        let mut headers = http::HeaderMap::new();
        assert!(check_csrf(&http::Method::GET, &headers, &signed).is_ok());
        let e = check_csrf(&http::Method::POST, &headers, &signed).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "admin_forbidden"));
        headers.insert(CSRF_HEADER, "t".repeat(63).parse().unwrap());
        assert!(check_csrf(&http::Method::DELETE, &headers, &signed).is_err());
        headers.insert(CSRF_HEADER, "t".repeat(64).parse().unwrap());
        assert!(check_csrf(&http::Method::PATCH, &headers, &signed).is_ok());
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
