//! Accounts that own keys: spend, holds and caps count per account, whichever key a request
//! came with, and a key may carry a monthly limit of its own.

mod common;

use common::*;
use fluxrouter::units::Usd;
use serde_json::{json, Value};

/// Create an account with the CLI; returns its id.
fn new_account(flux: &Flux, name: &str, plan: &str) -> String {
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
    let account = new_account(&flux, "team", "tiny");
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
    new_account(&flux, "shop", "payg");
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
