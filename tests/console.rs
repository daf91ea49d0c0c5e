//! The operator console on the admin listener: its sign-in, cookie, CSRF and API over HTTP,
//! and (tests/console_browser.rs) the page in a real headless Chromium.

mod common;

use common::*;
use serde_json::{json, Value};

/// The console's API as a client without a browser: the session cookie and CSRF token kept.
struct Console<'a> {
    flux: &'a Flux,
    cookie: String,
    csrf: String,
}

async fn sign_in(flux: &Flux) -> Console<'_> {
    let r = flux
        .client
        .post(format!("{}/console/api/session", flux.admin_base))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = header(&r, "set-cookie").to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    Console {
        flux,
        cookie,
        csrf: v["csrf"].as_str().unwrap().to_string(),
    }
}

impl Console<'_> {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        csrf: Option<&str>,
    ) -> reqwest::Response {
        let url = format!("{}{path}", self.flux.admin_base);
        let mut r = self
            .flux
            .client
            .request(method.parse().unwrap(), url)
            .header("cookie", &self.cookie);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.send("GET", path, None, None).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.send("POST", path, Some(body), Some(&self.csrf.clone()))
            .await
    }
}

#[tokio::test]
async fn the_console_needs_a_session_and_its_csrf_token_for_everything_but_the_page() {
    let flux = Flux::start().await;
    let admin = |path: &str| format!("{}{path}", flux.admin_base);

    // The page is static and served without a session; it carries no data.
    let r = flux.client.get(admin("/console")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/html"));
    assert!(header(&r, "content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(header(&r, "cache-control"), "no-store");
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"signin\"") && !page.contains("sk-"));
    // Not on the client listener.
    let r = flux
        .client
        .get(format!("{}/console", flux.base))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);

    // No session: every API answers 403 in the documented shape.
    for (method, path) in [
        ("GET", "/console/api/session"),
        ("GET", "/console/api/overview"),
        ("GET", "/console/api/keys"),
        ("POST", "/console/api/keys"),
        ("POST", "/console/api/keys/action"),
        ("DELETE", "/console/api/session"),
    ] {
        let r = flux
            .client
            .request(method.parse().unwrap(), admin(path))
            .header("cookie", format!("flux_console={}", "a".repeat(64)))
            .json(&json!({"name": "x", "plan": "payg"}))
            .send()
            .await
            .unwrap();
        let m = expect_openai_error(r, 403, "admin_forbidden").await;
        assert!(m.contains("Sign in"), "{method} {path}: {m}");
    }
    // A wrong token does not sign in; the metrics token and a client key neither.
    for token in ["wrong", METRICS_TOKEN, flux.key.as_str()] {
        let r = flux
            .client
            .post(admin("/console/api/session"))
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("set-cookie").is_none());
        expect_openai_error(r, 403, "admin_forbidden").await;
    }

    // Signed in: an HttpOnly, SameSite=Strict cookie with an expiry, and a CSRF token.
    let r = flux
        .client
        .post(admin("/console/api/session"))
        .json(&json!({ "token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    let set = header(&r, "set-cookie").to_string();
    assert!(set.starts_with("flux_console="), "{set}");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=28800",
        "Path=/console",
    ] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    drop(r);
    let console = sign_in(&flux).await;
    assert_eq!(
        console.get("/console/api/session").await["csrf"],
        console.csrf
    );

    // Changes need the CSRF token: missing or wrong, 403 and nothing changes.
    for csrf in [None, Some("0".repeat(64))] {
        let r = console
            .send(
                "POST",
                "/console/api/keys",
                Some(json!({"name": "sneaky", "plan": "payg"})),
                csrf.as_deref(),
            )
            .await;
        let m = expect_openai_error(r, 403, "admin_forbidden").await;
        assert!(m.contains("CSRF"), "{m}");
    }
    let keys = console.get("/console/api/keys").await;
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["name"] != "sneaky"));

    // Behind a TLS proxy the cookie is Secure.
    let r = flux
        .client
        .post(admin("/console/api/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "set-cookie").contains("; Secure"));

    // Sign out: the cookie is cleared and the session no longer opens anything.
    let r = console
        .send(
            "DELETE",
            "/console/api/session",
            None,
            Some(&console.csrf.clone()),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));
    let r = console.send("GET", "/console/api/keys", None, None).await;
    expect_openai_error(r, 403, "admin_forbidden").await;
}

#[tokio::test]
async fn the_console_shows_spend_and_traffic_and_manages_keys_like_the_cli() {
    let flux = Flux::start().await;
    let console = sign_in(&flux).await;
    // The gateway's own start-up probes count as traffic too: compare with before.
    let before = console.get("/console/api/overview").await["traffic"].clone();
    for _ in 0..3 {
        assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
    }
    let r = flux.chat(&ping("no-such-model")).await;
    assert_eq!(r.status(), 400);

    let o = console.get("/console/api/overview").await;
    let spend = &o["spend"];
    assert_eq!(spend["requests"], 3, "{o}");
    assert_eq!(spend["by_key"][0]["key_name"], "main");
    assert_eq!(spend["by_lane"][0]["lane"], "express");
    assert_eq!(spend["days"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(spend["days"][0]["requests"], 3);
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap();
    assert_eq!(
        count(&o["traffic"], "requests"),
        count(&before, "requests") + 4,
        "{o}"
    );
    assert_eq!(
        count(&o["traffic"], "errors"),
        count(&before, "errors") + 1,
        "{o}"
    );
    assert_eq!(o["traffic"]["minutes"].as_array().unwrap().len(), 60);
    assert!(o["lanes"]["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "express"));
    assert!(o["lanes"]["lanes_loaded_at"].as_u64().unwrap() > 1_700_000_000);
    // No key, provider key or prompt text anywhere.
    let text = o.to_string();
    assert!(
        !text.contains(&flux.key) && !text.contains(PROVIDER_KEY) && !text.contains("ping"),
        "{text}"
    );

    // Create a key: shown once, then only its hash is kept; it works at once.
    let r = console
        .post(
            "/console/api/keys",
            json!({"name": "from-console", "plan": "express_only"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-"));
    let file = std::fs::read_to_string(flux.dir.path().join("keys.yaml")).unwrap();
    assert!(file.contains(&id) && !file.contains(&key));
    flux.wait_for_key(&key).await;
    assert_eq!(
        flux.chat_with_key(&ping("flux-fast"), &key).await.status(),
        200
    );
    let keys = console.get("/console/api/keys").await;
    let listed = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (listed["plan"].as_str(), listed["status"].as_str()),
        (Some("express_only"), Some("active"))
    );
    assert!(
        !keys.to_string().contains(&key),
        "a key is never shown again"
    );
    // The CLI sees what the console wrote.
    let list = String::from_utf8_lossy(&flux.cli(&["keys", "list"]).stdout).into_owned();
    assert!(
        list.contains(&format!("{id}\tfrom-console\texpress_only\tActive")),
        "{list}"
    );

    // Duplicate names and unknown plans are refused with a reason.
    let r = console
        .post(
            "/console/api/keys",
            json!({"name": "from-console", "plan": "payg"}),
        )
        .await;
    let m = expect_openai_error(r, 400, "invalid_request").await;
    assert!(m.contains("already exists"), "{m}");
    let r = console
        .post(
            "/console/api/keys/action",
            json!({"id": id, "action": "plan", "plan": "gold"}),
        )
        .await;
    let m = expect_openai_error(r, 400, "invalid_request").await;
    assert!(m.contains("unknown plan"), "{m}");

    // Suspend, then revoke: the key is refused.
    let r = console
        .post(
            "/console/api/keys/action",
            json!({"id": id, "action": "suspend"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while flux.chat_with_key(&ping("flux-fast"), &key).await.status() != 401 {
        assert!(std::time::Instant::now() < deadline, "still accepted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = console
        .post(
            "/console/api/keys/action",
            json!({"id": id, "action": "revoke"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = console
        .post(
            "/console/api/keys/action",
            json!({"id": id, "action": "resume"}),
        )
        .await;
    let m = expect_openai_error(r, 400, "invalid_request").await;
    assert!(m.contains("revoked for good"), "{m}");
    let keys = console.get("/console/api/keys").await;
    let listed = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["status"], "revoked");
}
