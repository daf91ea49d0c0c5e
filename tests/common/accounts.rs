//! Accounts and keys for the accounts tests: made with the CLI (as an operator would), and
//! the JSON APIs called as a client does.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::{cli_at, Flux, ADMIN_TOKEN};

/// Run `fluxrouter accounts ...` (with the admin token: the gateway has loaded the change
/// when it returns); its stdout, trimmed.
pub fn accounts_cli(flux: &Flux, args: &[&str]) -> String {
    accounts_cli_as(flux, args, Some(ADMIN_TOKEN))
}

/// [`accounts_cli`] without the admin token: the command cannot ask the gateway to load
/// its change, so the gateway has it only from following the store's feed.
pub fn accounts_cli_unconfirmed(flux: &Flux, args: &[&str]) -> String {
    accounts_cli_as(flux, args, None)
}

fn accounts_cli_as(flux: &Flux, args: &[&str], admin_token: Option<&str>) -> String {
    let mut all = vec!["accounts"];
    all.extend_from_slice(args);
    let out = cli_at(&flux.config, &all, admin_token);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The `name` of each item of a JSON list.
pub fn names(items: &Value) -> Vec<&str> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

/// The item of a JSON list (`data`, an account's `keys`) with this id.
pub fn with_id<'a>(items: &'a Value, id: &str) -> &'a Value {
    items
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == id))
        .unwrap_or_else(|| panic!("no {id} in {items}"))
}

/// An account made with the CLI and a management key of it, served by the gateway: the
/// account's id and the key.
pub async fn account_with_manager(flux: &Flux, name: &str, plan: &str) -> (String, String) {
    let id = accounts_cli(flux, &["new", "--name", name, "--plan", plan]);
    let manager = accounts_cli(
        flux,
        &[
            "key",
            "--account",
            name,
            "--name",
            "manager",
            "--management",
        ],
    );
    let started = Instant::now();
    while json_call(
        flux,
        &flux.base,
        Method::GET,
        "/v1/keys",
        Some(&manager),
        None,
    )
    .await
    .0 != 200
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (id, manager)
}

/// Create an account in the keys file with the CLI; returns its id.
pub fn new_file_account(flux: &Flux, name: &str, plan: &str) -> String {
    let out = flux.cli(&["keys", "account", "--name", name, "--plan", plan]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.starts_with("acct_"), "{id}");
    id
}

/// A request to `base` (the client or the admin listener) with `token` as Bearer: status
/// and JSON body (or the text as a JSON string).
pub async fn json_call(
    flux: &Flux,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = flux.client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A request on the admin listener with the admin token.
pub async fn admin_call(
    flux: &Flux,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    json_call(
        flux,
        &flux.admin_base,
        method,
        path,
        Some(ADMIN_TOKEN),
        body,
    )
    .await
}

/// `GET /admin/v1/accounts/{id or name}`, which must answer 200: the account with its keys.
pub async fn admin_account(flux: &Flux, account: &str) -> Value {
    let path = format!("/admin/v1/accounts/{account}");
    let (status, shown) = admin_call(flux, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{shown}");
    shown
}

/// The status of a chat request with `key`.
pub async fn chat_status(flux: &Flux, key: &str) -> u16 {
    flux.chat_with_key(&super::ping("flux-fast"), key)
        .await
        .status()
        .as_u16()
}

/// Poll `GET /v1/models` with `key` (nothing spent) until it answers `status` (at most
/// 5 s): the key is served, or refused; how long that took.
pub async fn until_status(flux: &Flux, key: &str, status: u16) -> Duration {
    let models = async || flux.get("/v1/models", key).await.status().as_u16();
    until(flux, status, Duration::from_secs(5), "a key", models).await
}

/// Poll chat requests with `key` (which spend, and see holds and caps) until one answers
/// `status` (at most 5 s); how long that took.
pub async fn until_chat_status(flux: &Flux, key: &str, status: u16) -> Duration {
    until_status_within(flux, key, status, Duration::from_secs(5), "a key").await
}

/// Poll chat requests with `key` until one answers `status`, within `limit`; `what` is said (with the gateway's log) past it.
pub async fn until_status_within(
    flux: &Flux,
    key: &str,
    status: u16,
    limit: Duration,
    what: &str,
) -> Duration {
    until(flux, status, limit, what, async || {
        chat_status(flux, key).await
    })
    .await
}

async fn until(
    flux: &Flux,
    status: u16,
    limit: Duration,
    what: &str,
    probe: impl AsyncFn() -> u16,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = probe().await;
        if now == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: still {now}, not {status}, after {limit:?}: {}",
            flux.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
