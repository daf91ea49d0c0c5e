//! The account owner's page on the client listener (`/account`): sign-in with a management
//! key, its cookie, CSRF and API over HTTP, and the page in a real headless Chromium.

mod common;

use std::time::{Duration, Instant};

use common::browser;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// `POST /account/api/session` with `key`, behind a TLS proxy when `https`.
async fn session_with(flux: &Flux, key: &str, https: bool) -> reqwest::Response {
    let mut r = flux
        .client
        .post(format!("{}/account/api/session", flux.base));
    if https {
        r = r.header("x-forwarded-proto", "https");
    }
    r.json(&json!({ "key": key })).send().await.unwrap()
}

/// The page's API as a client without a browser: the session cookie and CSRF token kept.
struct Page<'a> {
    flux: &'a Flux,
    cookie: String,
    csrf: String,
}

async fn sign_in<'a>(flux: &'a Flux, key: &str) -> Page<'a> {
    let r = session_with(flux, key, false).await;
    assert_eq!(r.status(), 200);
    let set = header(&r, "set-cookie").to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    Page {
        flux,
        cookie,
        csrf: v["csrf"].as_str().unwrap().to_string(),
    }
}

impl Page<'_> {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        csrf: Option<&str>,
    ) -> (u16, Value) {
        let mut r = self
            .flux
            .client
            .request(method, format!("{}{path}", self.flux.base))
            .header("cookie", &self.cookie);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// With the session's CSRF token.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let csrf = self.csrf.clone();
        self.send(method, path, body, Some(&csrf)).await
    }
}

#[tokio::test]
async fn the_page_needs_a_management_key_a_session_and_its_csrf_token() {
    let flux = Flux::start().await;
    let (_, alice) = account_with_manager(&flux, "alice-corp", "payg").await;
    let (_, bob) = account_with_manager(&flux, "bob-corp", "payg").await;
    let url = |path: &str| format!("{}{path}", flux.base);

    // The page is static, served without a session, its script allowed by hash only.
    let r = flux.client.get(url("/account")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/html"));
    let csp = header(&r, "content-security-policy").to_string();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&r, "cache-control"), "no-store");
    drop(r);

    // No session: the API answers 403.
    for (method, path) in [
        (Method::GET, "/account/api/session"),
        (Method::GET, "/account/api/keys"),
        (Method::POST, "/account/api/keys"),
        (Method::PATCH, "/account/api/account"),
        (Method::DELETE, "/account/api/session"),
    ] {
        let r = flux
            .client
            .request(method.clone(), url(path))
            .header("cookie", format!("flux_account={}", "a".repeat(64)))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        let m = expect_openai_error(r, 403, "admin_forbidden").await;
        assert!(m.contains("Sign in"), "{method} {path}: {m}");
    }

    // Signed in: an HttpOnly, SameSite=Strict cookie of its own path; Secure behind TLS.
    let r = session_with(&flux, &alice, false).await;
    let set = header(&r, "set-cookie").to_string();
    for flag in [
        "flux_account=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/account",
    ] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    drop(r);
    let r = session_with(&flux, &alice, true).await;
    assert!(header(&r, "set-cookie").contains("; Secure"));
    drop(r);
    let page = sign_in(&flux, &alice).await;

    // An inference key of the account cannot sign in, nor can a wrong key.
    let (status, created) = page
        .call(
            Method::POST,
            "/account/api/keys",
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let inference = created["key"].as_str().unwrap().to_string();
    for key in [inference.as_str(), "sk-flux-wrong"] {
        let r = session_with(&flux, key, false).await;
        assert!(r.headers().get("set-cookie").is_none());
        assert!([401, 403].contains(&r.status().as_u16()), "{}", r.status());
    }

    // Changes need the CSRF token: missing or wrong, 403 and nothing changes.
    for csrf in [None, Some("0".repeat(64))] {
        let (status, v) = page
            .send(
                Method::POST,
                "/account/api/keys",
                Some(json!({"name": "sneaky"})),
                csrf.as_deref(),
            )
            .await;
        assert_eq!(status, 403, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("CSRF"));
    }
    let (status, keys) = page
        .send(Method::GET, "/account/api/keys", None, None)
        .await;
    assert_eq!(status, 200);
    let names = names(&keys["data"]);
    assert!(
        names.contains(&"ci") && !names.contains(&"sneaky"),
        "{names:?}"
    );

    // Another account's key: 404 through the page, as an id that does not exist, and unchanged.
    let bobs = sign_in(&flux, &bob).await;
    let (_, bob_keys) = bobs
        .send(Method::GET, "/account/api/keys", None, None)
        .await;
    let bob_key = bob_keys["data"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/account/api/keys/{bob_key}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "taken"}))),
        (Method::DELETE, None),
        (Method::POST, Some(json!({"grace_seconds": 0}))),
    ] {
        let p = if method == Method::POST {
            format!("{path}/rotate")
        } else {
            path.clone()
        };
        let (status, v) = page.call(method.clone(), &p, body).await;
        assert_eq!(status, 404, "{method} {p}: {v}");
    }
    let (_, still) = bobs.send(Method::GET, &path, None, None).await;
    assert_eq!(still["name"], "manager");

    // The ceiling, within the plan.
    let (status, account) = page
        .call(
            Method::PATCH,
            "/account/api/account",
            Some(json!({"ceiling_usd": "25"})),
        )
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["ceiling_usd"], "25.0");

    // Signed out: the cookie is cleared and the session refused.
    let (status, _) = page
        .call(Method::DELETE, "/account/api/session", None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = page
        .send(Method::GET, "/account/api/keys", None, None)
        .await;
    assert_eq!(status, 403);

    // A session ends when its management key stops working.
    let page = sign_in(&flux, &alice).await;
    let (_, mine) = page
        .send(Method::GET, "/account/api/session", None, None)
        .await;
    assert!(mine["key_id"].is_string());
    accounts_cli(&flux, &["suspend", mine["key_id"].as_str().unwrap()]);
    let started = Instant::now();
    while page
        .send(Method::GET, "/account/api/keys", None, None)
        .await
        .0
        != 403
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still signed in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Wrong keys are limited per address, as wrong admin tokens are: past the limit even
    // the right key is not compared.
    let mut limited = false;
    // Past limits.per_address.failed_auth_per_minute (20 by default).
    for _ in 0..22 {
        let r = session_with(&flux, "sk-flux-guess", false).await;
        if r.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "never limited");
    assert_eq!(session_with(&flux, &bob, false).await.status(), 429);
}

fn shots() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/account-screenshots")
}

/// A row of the keys table, found by the key's name, as a script expression.
fn row_of(name: &str) -> String {
    format!(
        "[...document.querySelectorAll('#keys tbody tr')].find(r => r.querySelector('.name').textContent === '{name}')"
    )
}

#[tokio::test]
async fn in_a_real_browser_an_owner_signs_in_and_manages_keys_and_the_ceiling() {
    let flux = Flux::start().await;
    let (_, manager) = account_with_manager(&flux, "acme", "payg").await;
    let b = browser::Browser::start().await;
    let page = format!("{}/account", flux.base);
    b.goto(&page).await;
    b.wait_for("return document.body.dataset.ready === 'true'", "the page")
        .await;
    assert_eq!(
        b.run("return document.getElementById('signin').hidden")
            .await,
        false
    );
    std::fs::create_dir_all(shots()).unwrap();
    b.screenshot(&shots().join("1-sign-in.png")).await;

    // Signed in with the management key: the account and its one key.
    b.type_into("#key", &manager).await;
    b.click("#signin-button").await;
    b.wait_for(
        "return !document.getElementById('app').hidden && document.body.dataset.ready === 'true'",
        "the account",
    )
    .await;
    assert_eq!(b.text("#plan").await, "payg");
    assert!(b.text("#keys").await.contains("manager"));

    // Create a key: its secret shown once; it serves, and its request is counted.
    b.type_into("#new-name", "from-the-browser").await;
    b.click("#create-button").await;
    b.wait_for(
        "return document.getElementById('new-key-value').textContent.startsWith('sk-')",
        "the new key",
    )
    .await;
    let key = b.text("#new-key-value").await;
    b.wait_for(
        &format!("return !!{}", row_of("from-the-browser")),
        "its row",
    )
    .await;
    b.screenshot(&shots().join("2-new-key.png")).await;
    b.click("#new-key-done").await;
    assert_eq!(b.text("#new-key-value").await, "", "shown once");
    until_chat_status(&flux, &key, 200).await;
    // Reload the page: signed in still (the cookie), and the request is in the usage.
    b.goto(&page).await;
    b.wait_for(
        "return !document.getElementById('app').hidden && document.body.dataset.ready === 'true'",
        "the account again",
    )
    .await;
    assert!(b.text("#usage-key").await.contains("from-the-browser"));
    assert!(!b.text("#usage-model tbody").await.is_empty());
    assert_eq!(
        b.run("return document.querySelector('#usage-day tbody tr .requests').textContent")
            .await,
        "1"
    );
    b.screenshot(&shots().join("3-usage.png")).await;

    // Disable it: the key gets 401; enable it again.
    let row = row_of("from-the-browser");
    b.run(&format!("{row}.querySelector('.act-toggle').click()"))
        .await;
    b.wait_for(
        &format!("return {row}.querySelector('.status').textContent === 'disabled'"),
        "disabled",
    )
    .await;
    until_chat_status(&flux, &key, 401).await;
    b.run(&format!("{row}.querySelector('.act-toggle').click()"))
        .await;
    b.wait_for(
        &format!("return {row}.querySelector('.status').textContent === 'active'"),
        "enabled",
    )
    .await;
    until_chat_status(&flux, &key, 200).await;

    // A monthly limit on the key.
    b.run(&format!(
        "{row}.querySelector('.in-limit').value = '3'; {row}.querySelector('.act-limit').click()"
    ))
    .await;
    b.wait_for(
        &format!("return {row}.querySelector('.limit').textContent === '$3.0'"),
        "the limit",
    )
    .await;

    // Rotate without grace: a new secret shown once; the old one refused, the new one serves.
    b.run(&format!(
        "{row}.querySelector('.in-grace').value = '0'; {row}.querySelector('.act-rotate').click()"
    ))
    .await;
    b.wait_for(
        "return document.getElementById('new-key-value').textContent.startsWith('sk-')",
        "the rotated key",
    )
    .await;
    let rotated = b.text("#new-key-value").await;
    assert_ne!(rotated, key);
    until_chat_status(&flux, &key, 401).await;
    until_chat_status(&flux, &rotated, 200).await;
    b.click("#new-key-done").await;

    // Rename the new key, then delete it (the page asks with a second click).
    b.run(&format!(
        "{row}.querySelector('.in-name').value = 'renamed'; {row}.querySelector('.act-rename').click()"
    ))
    .await;
    let renamed = row_of("renamed");
    b.wait_for(&format!("return !!{renamed}"), "the renamed row")
        .await;
    b.run(&format!("{renamed}.querySelector('.act-delete').click()"))
        .await;
    assert_eq!(
        b.run(&format!("return !!{renamed}")).await,
        true,
        "one click only asks"
    );
    b.run(&format!("{renamed}.querySelector('.act-delete').click()"))
        .await;
    b.wait_for(&format!("return !{renamed}"), "the row gone")
        .await;
    until_chat_status(&flux, &rotated, 401).await;

    // The account's ceiling.
    b.type_into("#ceiling-input", "12.5").await;
    b.click("#ceiling-button").await;
    b.wait_for(
        "return document.getElementById('ceiling').textContent === '$12.5'",
        "the ceiling",
    )
    .await;
    b.screenshot(&shots().join("4-ceiling.png")).await;
    let r = flux
        .client
        .get(format!("{}/v1/account", flux.base))
        .bearer_auth(&manager)
        .send()
        .await
        .unwrap();
    let account: Value = r.json().await.unwrap();
    assert_eq!(account["ceiling_usd"], "12.5");

    // A forged change (no CSRF token) from the page's origin is refused.
    b.run(
        "window.forged = null; fetch('/account/api/keys', {method: 'POST', credentials: 'same-origin', \
         headers: {'Content-Type': 'application/json'}, body: JSON.stringify({name: 'forged'})}) \
         .then(r => { window.forged = r.status; })",
    )
    .await;
    b.wait_for("return window.forged !== null", "the forged request")
        .await;
    assert_eq!(b.run("return window.forged").await, 403);

    // Sign out: the sign-in form again, and the API refuses the browser.
    b.click("#signout").await;
    b.wait_for(
        "return !document.getElementById('signin').hidden",
        "the sign-in form",
    )
    .await;
    b.run(
        "window.after = null; fetch('/account/api/keys', {credentials: 'same-origin'}) \
         .then(r => { window.after = r.status; })",
    )
    .await;
    b.wait_for("return window.after !== null", "after signing out")
        .await;
    assert_eq!(b.run("return window.after").await, 403);
}
