//! Accounts that own keys: spend, holds and caps count per account, whichever key a request
//! came with, and a key may carry a monthly limit of its own.

mod common;

use common::*;
use fluxrouter::units::Usd;
use serde_json::{json, Value};

/// Create a key of `account` with the CLI (usable at once); returns the key.
fn key_of(flux: &Flux, account: &str, name: &str, limit: Option<&str>) -> String {
    let mut args = vec!["keys", "new", "--account", account, "--name", name];
    if let Some(limit) = limit {
        args.extend(["--monthly-limit", limit]);
    }
    let out = flux.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn usage(flux: &Flux, key: &str) -> Value {
    let r = flux.get("/v1/usage", key).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn usd(v: &Value) -> Usd {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn three_keys_of_one_free_account_share_its_allowance_under_200_concurrent_requests() {
    let flux = Flux::start().await;
    // "tiny": a free allowance of $0.05 a month.
    let account = new_file_account(&flux, "team", "tiny");
    let keys: Vec<String> = ["ci", "laptop", "server"]
        .iter()
        .map(|name| key_of(&flux, "team", name, None))
        .collect();
    for key in &keys {
        flux.wait_for_key(key).await;
    }
    // About 3,100 input tokens, $0.003 at the express lane's $1 per million: 200 of them
    // would cost twelve times the allowance.
    let text = "internationalization ".repeat(600);
    let body = json!({"model": "flux-fast", "messages": [{"role": "user", "content": text}]});
    let sends = (0..200).map(|i| {
        let (flux, key, body) = (&flux, &keys[i % 3], &body);
        async move {
            let r = flux.chat_with_key(body, key).await;
            let status = r.status().as_u16();
            let cost = r
                .headers()
                .get("x-flux-cost-usd")
                .map(|v| v.to_str().unwrap().parse::<Usd>().unwrap());
            let body: Value = r.json().await.unwrap();
            (status, cost, body)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut told = Usd::ZERO;
    let (mut served, mut refused) = (0, 0);
    for (status, cost, body) in &answers {
        match status {
            200 => {
                served += 1;
                told = told.saturating_add(cost.expect("a served request's cost"));
            }
            402 => {
                refused += 1;
                assert_eq!(body["error"]["code"], "free_allowance_exhausted", "{body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        served >= 5 && refused > 100,
        "{served} served, {refused} refused"
    );
    let cap: Usd = "0.05".parse().unwrap();
    assert!(told <= cap, "told ${told}");
    // Every key sees the account's one standing; the keys' shares add up to it.
    let mut shares = Usd::ZERO;
    for key in &keys {
        let v = usage(&flux, key).await;
        assert_eq!(v["account"]["id"], account.as_str(), "{v}");
        assert_eq!(v["account"]["name"], "team", "{v}");
        assert_eq!(usd(&v["spend"]["month_usd"]), told, "{v}");
        assert_eq!(usd(&v["spend"]["reserved_usd"]), Usd::ZERO, "{v}");
        shares = shares.saturating_add(usd(&v["key"]["month_usd"]));
    }
    assert_eq!(shares, told);
    // And the next request of any key is refused: the cap is per account.
    let r = flux.chat_with_key(&ping("flux-fast"), &keys[1]).await;
    if told.saturating_add("0.0001".parse().unwrap()) > cap {
        expect_openai_error(r, 402, "free_allowance_exhausted").await;
    }
}

#[tokio::test]
async fn a_key_over_its_own_limit_gets_402_while_its_siblings_go_on() {
    let flux = Flux::start().await;
    new_file_account(&flux, "shop", "payg");
    let limited = key_of(&flux, "shop", "intern", Some("0.001"));
    let free_hand = key_of(&flux, "shop", "lead", None);
    flux.wait_for_key(&limited).await;
    flux.wait_for_key(&free_hand).await;
    let v = usage(&flux, &limited).await;
    assert_eq!(v["key"]["monthly_limit_usd"], "0.001", "{v}");

    // Each costs a few hundred-thousandths of a dollar, and holds at most $0.0003 while it
    // runs: the key's limit stops it after a few dozen.
    let body = json!({"model": "flux-fast", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "ping"}]});
    let mut statuses = vec![];
    for _ in 0..100 {
        let r = flux.chat_with_key(&body, &limited).await;
        let status = r.status().as_u16();
        statuses.push(status);
        if status == 402 {
            let message = expect_openai_error(r, 402, "key_spend_limit_reached").await;
            assert!(message.contains("other keys"), "{message}");
            break;
        }
        assert_eq!(status, 200);
    }
    assert!(statuses.len() > 3, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&402), "{statuses:?}");
    let v = usage(&flux, &limited).await;
    assert!(
        usd(&v["key"]["month_usd"]) <= "0.001".parse().unwrap(),
        "{v}"
    );

    // The sibling key of the same account is not held back.
    for _ in 0..4 {
        let r = flux.chat_with_key(&body, &free_hand).await;
        assert_eq!(r.status(), 200);
    }
    let sibling = usage(&flux, &free_hand).await;
    assert!(sibling["key"]["monthly_limit_usd"].is_null(), "{sibling}");
    // The account's spend is both keys'.
    let v = usage(&flux, &limited).await;
    assert_eq!(
        usd(&v["spend"]["month_usd"]),
        usd(&v["key"]["month_usd"]).saturating_add(usd(&sibling["key"]["month_usd"])),
        "{v} {sibling}"
    );
}

#[tokio::test]
async fn a_key_file_from_before_accounts_still_serves_and_each_key_is_its_own_account() {
    let flux = Flux::start().await;
    // The harness's key is written as before accounts: a plan on the key, no account.
    let v = usage(&flux, &flux.key).await;
    let key_id = v["key"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        v["account"]["id"],
        format!("acct_{}", key_id.trim_start_matches("key_")),
        "{v}"
    );
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
    let v = usage(&flux, &flux.key).await;
    assert_eq!(v["spend"]["month_usd"], v["key"]["month_usd"], "{v}");
    assert!(usd(&v["spend"]["month_usd"]) > Usd::ZERO, "{v}");
}

/// Run `fluxrouter accounts ...`; its stdout, trimmed.
#[tokio::test]
async fn a_key_made_in_the_key_store_serves_at_once_and_a_revoked_one_stops_at_once() {
    let flux = Flux::start().await;
    let account = accounts_cli(&flux, &["new", "--name", "acme", "--plan", "payg"]);
    assert!(account.starts_with("acct_"), "{account}");
    let key = accounts_cli_unconfirmed(&flux, &["key", "--account", "acme", "--name", "ci"]);
    assert!(key.starts_with("sk-") && key.len() == 43, "{key}");
    // The gateway follows the store's feed every 250 ms: no reload, no file rewrite.
    let took = until_status(&flux, &key, 200).await;
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    let r = flux.chat_with_key(&ping("flux-fast"), &key).await;
    assert_eq!(r.status(), 200);
    let v = usage(&flux, &key).await;
    assert_eq!(v["account"]["id"], account.as_str(), "{v}");
    assert_eq!(v["account"]["name"], "acme", "{v}");
    assert!(usd(&v["spend"]["month_usd"]) > Usd::ZERO, "{v}");

    let listed = accounts_cli(&flux, &["list"]);
    assert!(listed.contains("acme") && listed.contains("ci"), "{listed}");
    assert!(!listed.contains(&key[3..]), "a key is never listed");
    let key_id = v["key"]["id"].as_str().unwrap().to_string();
    accounts_cli_unconfirmed(&flux, &["revoke", &key_id]);
    let took = until_status(&flux, &key, 401).await;
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    let r = flux.chat_with_key(&ping("flux-fast"), &key).await;
    let message = expect_openai_error(r, 401, "invalid_api_key").await;
    assert!(message.contains("revoked"), "{message}");

    // An account put on hold by a billing system: its keys get 402 at once.
    let other = accounts_cli(&flux, &["key", "--account", "acme", "--name", "server"]);
    until_status(&flux, &other, 200).await;
    // Told to the gateway before the command returns (with the admin token).
    accounts_cli(&flux, &["set", "acme", "--on-hold", "true"]);
    let r = flux.chat_with_key(&ping("flux-fast"), &other).await;
    expect_openai_error(r, 402, "account_on_hold").await;
    accounts_cli(&flux, &["set", "acme", "--on-hold", "false"]);
    let r = flux.chat_with_key(&ping("flux-fast"), &other).await;
    assert_eq!(r.status(), 200);
    accounts_cli_unconfirmed(&flux, &["set", "acme", "--on-hold", "true"]);
    let started = std::time::Instant::now();
    loop {
        let r = flux.chat_with_key(&ping("flux-fast"), &other).await;
        if r.status() == 402 {
            expect_openai_error(r, 402, "account_on_hold").await;
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_management_key_cannot_make_a_generation_request() {
    let flux = Flux::start().await;
    accounts_cli(&flux, &["new", "--name", "owner", "--plan", "payg"]);
    let manager = accounts_cli(
        &flux,
        &[
            "key",
            "--account",
            "owner",
            "--name",
            "admin",
            "--management",
        ],
    );
    let started = std::time::Instant::now();
    loop {
        let r = flux.chat_with_key(&ping("flux-fast"), &manager).await;
        let status = r.status().as_u16();
        let message = expect_openai_error(r, 401, "invalid_api_key").await;
        if message.contains("management key") {
            break;
        }
        // Not yet served: still unknown to the gateway.
        assert_eq!(status, 401);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{message}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn importing_the_keys_file_keeps_every_key_working_and_its_month_s_spend() {
    let flux = Flux::start().await;
    assert_eq!(flux.chat(&ping("flux-fast")).await.status(), 200);
    let before = usage(&flux, &flux.key).await;
    let spent = usd(&before["spend"]["month_usd"]);
    assert!(spent > Usd::ZERO, "{before}");

    let out = accounts_cli(&flux, &["import"]);
    assert!(out.contains("imported"), "{out}");
    // Importing twice adds nothing.
    let again = accounts_cli(&flux, &["import"]);
    assert!(again.contains("imported 0 accounts and 0 keys"), "{again}");

    // The keys file stops listing the key (the operator moved to the store): it is served
    // from the store, as the same account, with the month's spend it had.
    let keys_file = flux.config.parent().unwrap().join("keys.yaml");
    let text = std::fs::read_to_string(&keys_file).unwrap();
    let key_id = before["key"]["id"].as_str().unwrap();
    assert!(text.contains(key_id), "{text}");
    let out = flux.cli(&["keys", "new", "--plan", "payg", "--name", "another"]);
    assert!(out.status.success());
    let mut file: Value =
        serde_norway::from_str(&std::fs::read_to_string(&keys_file).unwrap()).unwrap();
    file["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["id"] != key_id);
    std::fs::write(&keys_file, serde_norway::to_string(&file).unwrap()).unwrap();
    let r = flux
        .admin_post("/admin/v1/keys/reload", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The import was written by another process: the gateway serves it once it follows the
    // store's feed (every 250 ms), which the steps above may outrun.
    let took = until_status(&flux, &flux.key, 200).await;
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    let v = usage(&flux, &flux.key).await;
    assert_eq!(v["account"]["id"], before["account"]["id"], "{v}");
    assert_eq!(usd(&v["spend"]["month_usd"]), spent, "{v}");
    let r = flux.chat(&ping("flux-fast")).await;
    assert_eq!(r.status(), 200);
    let v = usage(&flux, &flux.key).await;
    assert!(usd(&v["spend"]["month_usd"]) > spent, "{v}");
}
