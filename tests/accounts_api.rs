//! The accounts APIs: owners manage their keys and ceiling with a management key on the
//! client listener (and see nothing of other accounts), operators manage accounts on the
//! admin listener (the billing system's integration point).

mod common;

use std::time::{Duration, Instant};

use common::*;
use fluxrouter::units::Usd;
use reqwest::Method;
use serde_json::{json, Value};

/// A request on the client listener: status and JSON body.
async fn call(
    flux: &Flux,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    json_call(flux, &flux.base, method, path, Some(key), body).await
}

/// `POST /v1/keys` with `body`, which must answer 201: the new key (its secret in `key`).
async fn new_key(flux: &Flux, manager: &str, body: Value) -> Value {
    let (status, made) = call(flux, Method::POST, "/v1/keys", manager, Some(body)).await;
    assert_eq!(status, 201, "{made}");
    made
}

fn usd(v: &Value) -> Option<Usd> {
    v.as_str().map(|s| s.parse().unwrap())
}

fn dollars(s: &str) -> Option<Usd> {
    Some(s.parse().unwrap())
}

fn assert_error(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    assert!(answer.1["error"]["message"].is_string(), "{}", answer.1);
}

#[tokio::test]
async fn an_owner_manages_the_account_s_keys_and_a_made_or_disabled_key_counts_at_once() {
    let flux = Flux::start().await;
    let (account, manager) = account_with_manager(&flux, "acme", "payg").await;

    // Created: shown once, serves at once.
    let (status, made) = call(
        &flux,
        Method::POST,
        "/v1/keys",
        &manager,
        Some(json!({"name": "ci"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let secret = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-"), "{made}");
    assert_eq!(made["account_id"], account.as_str());
    assert_eq!(made["kind"], "inference");
    assert_eq!(chat_status(&flux, &secret).await, 200);

    // Listed and read: never a secret.
    let (status, listed) = call(&flux, Method::GET, "/v1/keys", &manager, None).await;
    assert_eq!(status, 200);
    // In pages by id (random): the names in any order.
    let mut names = names(&listed["data"]);
    names.sort_unstable();
    assert_eq!(names, ["ci", "manager"], "{listed}");
    assert!(!listed.to_string().contains(&secret[3..]), "{listed}");
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("key").is_none()));
    let (status, one) = call(
        &flux,
        Method::GET,
        &format!("/v1/keys/{id}"),
        &manager,
        None,
    )
    .await;
    assert_eq!((status, one["name"].as_str()), (200, Some("ci")), "{one}");
    assert!(one.get("key").is_none(), "{one}");

    // Renamed, limited, disabled (refused at once), enabled (served at once).
    let path = format!("/v1/keys/{id}");
    let (status, v) = call(
        &flux,
        Method::PATCH,
        &path,
        &manager,
        Some(json!({"name": "ci-2", "monthly_limit_usd": "1.50"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), usd(&v["monthly_limit_usd"])),
        (Some("ci-2"), dollars("1.5")),
        "{v}"
    );
    let (status, v) = call(
        &flux,
        Method::PATCH,
        &path,
        &manager,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("disabled")),
        "{v}"
    );
    assert_eq!(chat_status(&flux, &secret).await, 401);
    let (status, v) = call(
        &flux,
        Method::PATCH,
        &path,
        &manager,
        Some(json!({"disabled": false, "monthly_limit_usd": null})),
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (200, Some("active")), "{v}");
    assert!(v["monthly_limit_usd"].is_null(), "{v}");
    assert_eq!(chat_status(&flux, &secret).await, 200);

    // Bodies: unknown fields, wrong types, not JSON, too big: 400/413 in the error shape.
    for body in [
        json!({"nmae": "x"}),
        json!({"disabled": "yes"}),
        json!(["disabled"]),
    ] {
        assert_error(
            &call(&flux, Method::PATCH, &path, &manager, Some(body)).await,
            400,
            "invalid_request",
        );
    }
    let big = json!({"name": "x".repeat(100_000)});
    assert_error(
        &call(&flux, Method::POST, "/v1/keys", &manager, Some(big)).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &call(
            &flux,
            Method::POST,
            "/v1/keys",
            &manager,
            Some(json!({"name": "ci-2"})),
        )
        .await,
        409,
        "conflict",
    );
    assert_error(
        &call(
            &flux,
            Method::POST,
            "/v1/keys",
            &manager,
            Some(json!({"name": "m", "kind": "management"})),
        )
        .await,
        400,
        "invalid_request",
    );
    let past = json!({"name": "old", "expires_at": 1});
    let answer = call(&flux, Method::POST, "/v1/keys", &manager, Some(past)).await;
    assert_error(&answer, 400, "invalid_request");

    // The key that manages cannot lock its account out through itself.
    let (_, mine) = call(&flux, Method::GET, "/v1/keys", &manager, None).await;
    let manager_id = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "manager")
        .and_then(|k| k["id"].as_str())
        .unwrap()
        .to_string();
    let own = format!("/v1/keys/{manager_id}");
    assert_error(
        &call(&flux, Method::DELETE, &own, &manager, None).await,
        409,
        "conflict",
    );
    assert_error(
        &call(
            &flux,
            Method::PATCH,
            &own,
            &manager,
            Some(json!({"disabled": true})),
        )
        .await,
        409,
        "conflict",
    );

    // An inference key may not manage; a management key may not generate.
    assert_error(
        &call(&flux, Method::GET, "/v1/keys", &secret, None).await,
        403,
        "management_key_required",
    );
    assert_error(
        &call(&flux, Method::GET, "/v1/keys", &flux.key, None).await,
        403,
        "management_key_required",
    );
    assert_error(
        &call(&flux, Method::GET, "/v1/keys", "sk-nothing", None).await,
        401,
        "invalid_api_key",
    );
    assert_eq!(chat_status(&flux, &manager).await, 401);

    // Deleted: refused at once, gone from the API.
    let (status, v) = call(&flux, Method::DELETE, &path, &manager, None).await;
    assert_eq!((status, v["deleted"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(chat_status(&flux, &secret).await, 401);
    assert_error(
        &call(&flux, Method::GET, &path, &manager, None).await,
        404,
        "not_found",
    );
    assert_error(
        &call(&flux, Method::PUT, &path, &manager, None).await,
        405,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn another_account_s_keys_are_404_on_every_endpoint_and_nothing_changes() {
    let flux = Flux::start().await;
    let (_, alice) = account_with_manager(&flux, "alice-corp", "payg").await;
    let (bob_account, bob) = account_with_manager(&flux, "bob-corp", "payg").await;
    let (_, made) = call(
        &flux,
        Method::POST,
        "/v1/keys",
        &alice,
        Some(json!({"name": "alice-secret-project"})),
    )
    .await;
    let (alice_key, alice_id) = (
        made["key"].as_str().unwrap().to_string(),
        made["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(chat_status(&flux, &alice_key).await, 200);
    let (_, before) = call(
        &flux,
        Method::GET,
        &format!("/v1/keys/{alice_id}"),
        &alice,
        None,
    )
    .await;

    let tries = [
        (Method::GET, format!("/v1/keys/{alice_id}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{alice_id}"),
            Some(json!({"name": "stolen"})),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{alice_id}"),
            Some(json!({"disabled": true})),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{alice_id}"),
            Some(json!({"monthly_limit_usd": "0.01"})),
        ),
        (Method::DELETE, format!("/v1/keys/{alice_id}"), None),
        (
            Method::POST,
            format!("/v1/keys/{alice_id}/rotate"),
            Some(json!({"grace_seconds": 0})),
        ),
    ];
    for (method, path, body) in tries {
        let answer = call(&flux, method.clone(), &path, &bob, body.clone()).await;
        assert_error(&answer, 404, "not_found");
        let text = answer.1.to_string();
        for leak in ["alice", "acct_"] {
            assert!(!text.contains(leak), "{method} {path}: {text}");
        }
        // The same answer as for an id that does not exist.
        let missing = call(
            &flux,
            method,
            &path.replace(&alice_id, "key_doesnotexist"),
            &bob,
            body,
        )
        .await;
        assert_eq!(missing.0, 404);
        assert_eq!(
            missing.1["error"]["message"]
                .as_str()
                .unwrap()
                .replace("key_doesnotexist", &alice_id),
            answer.1["error"]["message"].as_str().unwrap()
        );
    }
    // Nothing changed: the key is as it was and still serves.
    let (_, after) = call(
        &flux,
        Method::GET,
        &format!("/v1/keys/{alice_id}"),
        &alice,
        None,
    )
    .await;
    assert_eq!(before, after);
    assert_eq!(chat_status(&flux, &alice_key).await, 200);

    // Bob's lists, account and usage hold nothing of Alice's.
    for path in [
        "/v1/keys",
        "/v1/account",
        "/v1/account/usage?by=key",
        "/v1/account/usage?by=model",
        "/v1/account/usage?by=day",
    ] {
        let (status, v) = call(&flux, Method::GET, path, &bob, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        let text = v.to_string();
        assert!(
            !text.contains(&alice_id) && !text.contains("alice"),
            "{path}: {text}"
        );
    }
    let (_, account) = call(&flux, Method::GET, "/v1/account", &bob, None).await;
    assert_eq!(account["id"], bob_account.as_str());
    let (_, usage) = call(&flux, Method::GET, "/v1/account/usage?by=model", &bob, None).await;
    assert_eq!(usage["data"], json!([]), "{usage}");
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_then_is_revoked() {
    let flux = Flux::start().await;
    let (_, manager) = account_with_manager(&flux, "rotator", "payg").await;
    let (_, made) = call(
        &flux,
        Method::POST,
        "/v1/keys",
        &manager,
        Some(json!({"name": "server", "monthly_limit_usd": "3"})),
    )
    .await;
    let (old, id) = (
        made["key"].as_str().unwrap().to_string(),
        made["id"].as_str().unwrap().to_string(),
    );
    let path = format!("/v1/keys/{id}/rotate");
    let too_long = json!({"grace_seconds": 31 * 86_400});
    assert_error(
        &call(&flux, Method::POST, &path, &manager, Some(too_long)).await,
        400,
        "invalid_request",
    );
    assert_error(
        &call(&flux, Method::POST, &path, &manager, Some(json!({}))).await,
        400,
        "invalid_request",
    );

    let (status, rotated) = call(
        &flux,
        Method::POST,
        &path,
        &manager,
        Some(json!({"grace_seconds": 2})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(rotated["name"], "server");
    assert_eq!(usd(&rotated["monthly_limit_usd"]), dollars("3"));
    assert!(rotated["rotated"]["expires_at"].is_u64(), "{rotated}");
    assert_eq!(rotated["rotated"]["revoke_at_expiry"], true, "{rotated}");
    assert_eq!(rotated["rotated"]["status"], "active", "{rotated}");
    assert!(rotated["rotated"].get("key").is_none(), "{rotated}");
    assert_eq!(chat_status(&flux, &new).await, 200);
    assert_eq!(chat_status(&flux, &old).await, 200, "the grace period");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = flux.chat_with_key(&ping("flux-fast"), &old).await;
    let message = expect_openai_error(r, 401, "invalid_api_key").await;
    assert!(message.contains("revoked"), "{message}");
    assert_eq!(chat_status(&flux, &new).await, 200);
    let (_, listed) = call(&flux, Method::GET, "/v1/keys", &manager, None).await;
    let states: Vec<(&str, &str)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&("server", "active")), "{states:?}");
    assert!(
        states
            .iter()
            .any(|(n, s)| n.starts_with("server (rotated") && *s == "revoked"),
        "{states:?}"
    );
    // Revoked for good: it cannot be enabled again.
    let old_id = rotated["rotated"]["id"].as_str().unwrap();
    let revive = json!({"disabled": false});
    let path = format!("/v1/keys/{old_id}");
    assert_error(
        &call(&flux, Method::PATCH, &path, &manager, Some(revive)).await,
        409,
        "conflict",
    );
}

#[tokio::test]
async fn an_owner_sets_a_ceiling_within_the_plan_s_and_reads_usage_by_key_model_and_day() {
    let flux = Flux::start().await;
    // "capped": a plan ceiling of $0.000001.
    let (_, capped) = account_with_manager(&flux, "small", "capped").await;
    let (status, v) = call(&flux, Method::GET, "/v1/account", &capped, None).await;
    assert_eq!(
        (status, usd(&v["plan_ceiling_usd"])),
        (200, dollars("0.000001")),
        "{v}"
    );
    let above = call(
        &flux,
        Method::PATCH,
        "/v1/account",
        &capped,
        Some(json!({"ceiling_usd": "1"})),
    )
    .await;
    assert_error(&above, 400, "invalid_request");
    let (status, v) = call(
        &flux,
        Method::PATCH,
        "/v1/account",
        &capped,
        Some(json!({"ceiling_usd": "0.0000005"})),
    )
    .await;
    assert_eq!(
        (status, usd(&v["ceiling_usd"])),
        (200, dollars("0.0000005")),
        "{v}"
    );
    assert_eq!(usd(&v["effective_ceiling_usd"]), dollars("0.0000005"));
    let (status, v) = call(
        &flux,
        Method::PATCH,
        "/v1/account",
        &capped,
        Some(json!({"ceiling_usd": null})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["ceiling_usd"].is_null());
    assert_eq!(usd(&v["effective_ceiling_usd"]), dollars("0.000001"));
    for body in [
        json!({"plan": "payg"}),
        json!({"on_hold": false}),
        json!({"ceiling_usd": true}),
    ] {
        assert_error(
            &call(&flux, Method::PATCH, "/v1/account", &capped, Some(body)).await,
            400,
            "invalid_request",
        );
    }

    // A plan without a ceiling bounds nothing; a key's limit stays within the account's.
    let (_, owner) = account_with_manager(&flux, "big", "payg").await;
    let (status, v) = call(
        &flux,
        Method::PATCH,
        "/v1/account",
        &owner,
        Some(json!({"ceiling_usd": "50"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let over = json!({"name": "greedy", "monthly_limit_usd": "60"});
    assert_error(
        &call(&flux, Method::POST, "/v1/keys", &owner, Some(over)).await,
        400,
        "invalid_request",
    );

    let (_, a) = call(
        &flux,
        Method::POST,
        "/v1/keys",
        &owner,
        Some(json!({"name": "a"})),
    )
    .await;
    let (_, b) = call(
        &flux,
        Method::POST,
        "/v1/keys",
        &owner,
        Some(json!({"name": "b"})),
    )
    .await;
    for key in [&a, &a, &b] {
        assert_eq!(chat_status(&flux, key["key"].as_str().unwrap()).await, 200);
    }
    let (status, by_key) = call(&flux, Method::GET, "/v1/account/usage?by=key", &owner, None).await;
    assert_eq!(status, 200, "{by_key}");
    let rows = by_key["data"].as_array().unwrap();
    let requests = |id: &Value| {
        rows.iter()
            .find(|r| r["key_id"] == *id)
            .map(|r| r["requests"].as_u64().unwrap())
    };
    assert_eq!(
        (requests(&a["id"]), requests(&b["id"])),
        (Some(2), Some(1)),
        "{by_key}"
    );
    assert!(usd(&by_key["total_usd"]) > Some(Usd::ZERO), "{by_key}");
    let (_, by_model) = call(
        &flux,
        Method::GET,
        "/v1/account/usage?by=model",
        &owner,
        None,
    )
    .await;
    let models = by_model["data"].as_array().unwrap();
    assert_eq!(
        models
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum::<u64>(),
        3,
        "{by_model}"
    );
    assert!(models.iter().all(|r| r["model"].is_string()), "{by_model}");
    assert_eq!(by_model["total_usd"], by_key["total_usd"]);
    let (_, by_day) = call(&flux, Method::GET, "/v1/account/usage?by=day", &owner, None).await;
    let days = by_day["data"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{by_day}");
    assert_eq!(days[0]["requests"], 3, "{by_day}");
    assert_eq!(by_day["total_usd"], by_key["total_usd"]);
    let (_, earlier) = call(
        &flux,
        Method::GET,
        "/v1/account/usage?month=2020-01",
        &owner,
        None,
    )
    .await;
    assert_eq!(earlier["data"], json!([]), "{earlier}");
    for q in ["by=lane", "month=soon", "key=x"] {
        let answer = call(
            &flux,
            Method::GET,
            &format!("/v1/account/usage?{q}"),
            &owner,
            None,
        )
        .await;
        assert_error(&answer, 400, "invalid_request");
    }
}

#[tokio::test]
async fn operators_and_a_billing_system_manage_accounts_on_the_admin_api() {
    let flux = Flux::start().await;
    let forbidden = json_call(
        &flux,
        &flux.admin_base,
        Method::POST,
        "/admin/v1/accounts",
        Some("wrong"),
        Some(json!({"name": "x", "plan": "payg"})),
    )
    .await;
    assert_error(&forbidden, 403, "admin_forbidden");
    let unknown_plan = admin_call(
        &flux,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "x", "plan": "gold"})),
    )
    .await;
    assert_error(&unknown_plan, 400, "invalid_request");
    assert_error(
        &admin_call(
            &flux,
            Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "x", "plan": "payg", "vip": true})),
        )
        .await,
        400,
        "invalid_request",
    );

    let (status, account) = admin_call(
        &flux,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "shop", "plan": "payg", "ceiling_usd": "20"})),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            account["payment_method"].as_bool(),
            account["on_hold"].as_bool()
        ),
        (Some(false), Some(false))
    );
    assert_eq!(usd(&account["ceiling_usd"]), dollars("20"));
    assert_error(
        &admin_call(
            &flux,
            Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "shop", "plan": "payg"})),
        )
        .await,
        409,
        "conflict",
    );

    // Keys: an inference key serves at once; a management key manages.
    let keys = format!("/admin/v1/accounts/{id}/keys");
    let (status, key) = admin_call(&flux, Method::POST, &keys, Some(json!({"name": "web"}))).await;
    assert_eq!(status, 201, "{key}");
    let secret = key["key"].as_str().unwrap().to_string();
    assert_eq!(chat_status(&flux, &secret).await, 200);
    let (status, manager) = admin_call(
        &flux,
        Method::POST,
        &keys,
        Some(json!({"name": "owner", "kind": "management"})),
    )
    .await;
    assert_eq!(status, 201, "{manager}");
    let (status, listed) = call(
        &flux,
        Method::GET,
        "/v1/keys",
        manager["key"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(
        (status, listed["data"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{listed}"
    );
    assert_error(
        &admin_call(
            &flux,
            Method::POST,
            &keys,
            Some(json!({"name": "z", "kind": "root"})),
        )
        .await,
        400,
        "invalid_request",
    );

    // Read back, one and all, with keys and never a secret.
    let (status, one) = admin_call(
        &flux,
        Method::GET,
        &format!("/admin/v1/accounts/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["keys"].as_array().unwrap().len(), 2, "{one}");
    let (_, all) = admin_call(&flux, Method::GET, "/admin/v1/accounts", None).await;
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()),
        "{all}"
    );
    for text in [one.to_string(), all.to_string()] {
        assert!(
            !text.contains(&secret[3..]) && !text.contains(&manager["key"].as_str().unwrap()[3..])
        );
    }
    assert_error(
        &admin_call(&flux, Method::GET, "/admin/v1/accounts/acct_missing", None).await,
        404,
        "not_found",
    );

    // The billing system: a card added; a failed payment holds the account at once; paid.
    let account_path = format!("/admin/v1/accounts/{id}");
    let (status, v) = admin_call(
        &flux,
        Method::PATCH,
        &account_path,
        Some(json!({"payment_method": true})),
    )
    .await;
    assert_eq!(
        (status, v["payment_method"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let (status, v) = admin_call(
        &flux,
        Method::PATCH,
        &account_path,
        Some(json!({"on_hold": true})),
    )
    .await;
    assert_eq!((status, v["on_hold"].as_bool()), (200, Some(true)), "{v}");
    let r = flux.chat_with_key(&ping("flux-fast"), &secret).await;
    expect_openai_error(r, 402, "account_on_hold").await;
    let (status, v) = admin_call(
        &flux,
        Method::PATCH,
        &account_path,
        Some(json!({"on_hold": false, "plan": "free", "ceiling_usd": null})),
    )
    .await;
    assert_eq!((status, v["plan"].as_str()), (200, Some("free")), "{v}");
    assert!(v["ceiling_usd"].is_null(), "{v}");
    assert_eq!(chat_status(&flux, &secret).await, 200);
    assert_error(
        &admin_call(
            &flux,
            Method::PATCH,
            &account_path,
            Some(json!({"plan": "gold"})),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &admin_call(
            &flux,
            Method::PATCH,
            &account_path,
            Some(json!({"on_hold": "yes"})),
        )
        .await,
        400,
        "invalid_request",
    );

    // Revoked: refused at once, for good.
    let revoke = format!("/admin/v1/keys/{}/revoke", key["id"].as_str().unwrap());
    let (status, v) = admin_call(&flux, Method::POST, &revoke, None).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("revoked")),
        "{v}"
    );
    assert_eq!(chat_status(&flux, &secret).await, 401);
    assert_error(
        &admin_call(
            &flux,
            Method::POST,
            "/admin/v1/keys/key_missing/revoke",
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &admin_call(&flux, Method::DELETE, &account_path, None).await,
        405,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn the_console_lists_accounts_and_their_keys_with_spend_and_no_secret() {
    let flux = Flux::start().await;
    let (status, account) = admin_call(
        &flux,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "listed", "plan": "payg", "payment_method": true})),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let keys = format!(
        "/admin/v1/accounts/{}/keys",
        account["id"].as_str().unwrap()
    );
    let (_, key) = admin_call(
        &flux,
        Method::POST,
        &keys,
        Some(json!({"name": "app", "monthly_limit_usd": "5"})),
    )
    .await;
    let secret = key["key"].as_str().unwrap();
    assert_eq!(chat_status(&flux, secret).await, 200);

    let url = format!("{}/console/api/accounts", flux.admin_base);
    let r = flux.client.get(&url).send().await.unwrap();
    expect_openai_error(r, 403, "admin_forbidden").await;
    let r = flux
        .client
        .post(format!("{}/console/api/session", flux.admin_base))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    let cookie = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = flux
        .client
        .get(&url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&secret[3..]), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let listed = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "listed")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(listed["payment_method"], true, "{listed}");
    assert_eq!(listed["keys"][0]["name"], "app", "{listed}");
    assert_eq!(listed["keys"][0]["requests"], 1, "{listed}");
    assert!(usd(&listed["spend_usd"]) > Some(Usd::ZERO), "{listed}");
    assert_eq!(
        v["total"].as_u64(),
        Some(v["accounts"].as_array().unwrap().len() as u64)
    );
}

#[tokio::test]
async fn the_cli_rotates_a_key_as_the_api_does() {
    let flux = Flux::start().await;
    let (_, manager) = account_with_manager(&flux, "clirot", "payg").await;
    let (_, made) = call(
        &flux,
        Method::POST,
        "/v1/keys",
        &manager,
        Some(json!({"name": "batch"})),
    )
    .await;
    let (old, id) = (made["key"].as_str().unwrap(), made["id"].as_str().unwrap());
    let new = accounts_cli(&flux, &["rotate", id, "--grace-seconds", "600"]);
    assert!(new.starts_with("sk-") && new != old, "{new}");
    // Written by another process: served once the gateway follows the feed.
    let started = Instant::now();
    while chat_status(&flux, &new).await != 200 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat_status(&flux, old).await, 200, "within its grace");
    let (_, listed) = call(&flux, Method::GET, "/v1/keys", &manager, None).await;
    assert!(listed.to_string().contains("batch (rotated"), "{listed}");
}

#[tokio::test]
async fn in_a_real_browser_the_accounts_view_shows_accounts_and_keys() {
    let flux = Flux::start().await;
    let (_, account) = admin_call(
        &flux,
        Method::POST,
        "/admin/v1/accounts",
        Some(json!({"name": "<b>shop</b>", "plan": "payg"})),
    )
    .await;
    let keys = format!(
        "/admin/v1/accounts/{}/keys",
        account["id"].as_str().unwrap()
    );
    let (_, key) = admin_call(
        &flux,
        Method::POST,
        &keys,
        Some(json!({"name": "storefront"})),
    )
    .await;
    assert_eq!(chat_status(&flux, key["key"].as_str().unwrap()).await, 200);

    let b = common::browser::Browser::start().await;
    b.goto(&format!("{}/console", flux.admin_base)).await;
    b.wait_for("return document.body.dataset.ready === 'true'", "the page")
        .await;
    b.type_into("#token", ADMIN_TOKEN).await;
    b.click("#signin-button").await;
    b.wait_for(
        "return !document.getElementById('app').hidden && document.body.dataset.ready === 'true'",
        "the console",
    )
    .await;
    b.click("#nav-accounts").await;
    assert_eq!(b.text("#app-error").await, "");
    let table = b.text("#accounts-table").await;
    for shown in ["<b>shop</b>", "storefront", "inference", "active", "payg"] {
        assert!(table.contains(shown), "{shown}: {table}");
    }
    assert_eq!(
        b.run("return document.querySelectorAll('#accounts-table b b').length")
            .await,
        0,
        "names are text"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    b.screenshot(&dir.join("accounts.png")).await;
}

#[tokio::test]
async fn a_key_s_last_use_shows_in_the_owner_s_and_the_operator_s_listings() {
    let flux = Flux::start().await;
    let (account, manager) = account_with_manager(&flux, "user", "payg").await;
    let made = new_key(&flux, &manager, json!({"name": "app"})).await;
    assert!(made["last_used_at"].is_null(), "{made}");
    let (key, id) = (
        made["key"].as_str().unwrap().to_string(),
        made["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(chat_status(&flux, &key).await, 200);
    let used = fluxrouter::units::clock::unix_now();
    // Written in the background every few seconds, not by the request.
    let deadline = Instant::now() + Duration::from_secs(20);
    let last_used = loop {
        let (_, listed) = call(&flux, Method::GET, "/v1/keys", &manager, None).await;
        let mine = with_id(&listed["data"], &id);
        if let Some(t) = mine["last_used_at"].as_u64() {
            break t;
        }
        assert!(Instant::now() < deadline, "never shown: {mine}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(last_used.abs_diff(used) <= 60, "{last_used} vs {used}");
    let shown = admin_account(&flux, &account).await;
    let mine = with_id(&shown["keys"], &id);
    assert_eq!(mine["last_used_at"], last_used, "{shown}");
    let listed = accounts_cli(&flux, &["list"]);
    assert!(
        listed.contains(&format!("app\tinference\tactive\tlast used {last_used}")),
        "{listed}"
    );
}

/// `body` as it is (a key may appear twice), with `headers`: status and JSON body.
async fn raw(
    flux: &Flux,
    url: String,
    method: Method,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, Value) {
    let mut req = flux
        .client
        .request(method, url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// At `url`, `twice` (a body with `key` twice) is a 400 that names the key, and a body over
/// 64 KiB a 413.
async fn refuses_twice_and_too_large(
    flux: &Flux,
    url: String,
    method: Method,
    headers: &[(&str, &str)],
    twice: &str,
    key: &str,
) {
    let answer = raw(flux, url.clone(), method.clone(), headers, twice.into()).await;
    assert_error(&answer, 400, "invalid_request");
    let message = answer.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("'{key}' appears more than once")),
        "{url}: {message}"
    );
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(65 * 1024));
    let answer = raw(flux, url, method, headers, big).await;
    assert_error(&answer, 413, "payload_too_large");
}

#[tokio::test]
async fn a_field_twice_or_a_body_over_64_kib_is_refused_by_every_accounts_api() {
    let flux = Flux::start().await;
    let (account, manager) = account_with_manager(&flux, "dup", "payg").await;
    let made = new_key(&flux, &manager, json!({"name": "app"})).await;
    let key_id = made["id"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {manager}");
    let admin_bearer = format!("Bearer {ADMIN_TOKEN}");

    // The management API, with the account's management key.
    let owner: [(Method, String, &str, &str); 4] = [
        (
            Method::POST,
            "/v1/keys".into(),
            r#"{"name":"a","name":"b"}"#,
            "name",
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{key_id}"),
            r#"{"disabled":true,"name":"n","disabled":false}"#,
            "disabled",
        ),
        (
            Method::POST,
            format!("/v1/keys/{key_id}/rotate"),
            r#"{"grace_seconds":0,"grace_seconds":60}"#,
            "grace_seconds",
        ),
        (
            Method::PATCH,
            "/v1/account".into(),
            r#"{"ceiling_usd":"1","ceiling_usd":null}"#,
            "ceiling_usd",
        ),
    ];
    let auth = [("authorization", bearer.as_str())];
    for (method, path, twice, key) in owner {
        let url = format!("{}{path}", flux.base);
        refuses_twice_and_too_large(&flux, url, method, &auth, twice, key).await;
    }

    // The operators' accounts API.
    let operator: [(Method, String, &str, &str); 3] = [
        (
            Method::POST,
            "/admin/v1/accounts".into(),
            r#"{"name":"twice","plan":"payg","plan":"pro"}"#,
            "plan",
        ),
        (
            Method::PATCH,
            format!("/admin/v1/accounts/{account}"),
            r#"{"on_hold":true,"on_hold":false}"#,
            "on_hold",
        ),
        (
            Method::POST,
            format!("/admin/v1/accounts/{account}/keys"),
            r#"{"name":"k","kind":"inference","kind":"management"}"#,
            "kind",
        ),
    ];
    let auth = [("authorization", admin_bearer.as_str())];
    for (method, path, twice, key) in operator {
        let url = format!("{}{path}", flux.admin_base);
        refuses_twice_and_too_large(&flux, url, method, &auth, twice, key).await;
    }

    // The owner's page: sign-in, then its JSON API behind the session.
    let session = format!("{}/account/api/session", flux.base);
    let twice = format!(r#"{{"key":"{manager}","key":"sk-other"}}"#);
    refuses_twice_and_too_large(&flux, session.clone(), Method::POST, &[], &twice, "key").await;
    let r = flux
        .client
        .post(&session)
        .json(&json!({ "key": manager }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = r.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let signed = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let keys = format!("{}/account/api/keys", flux.base);
    let twice = r#"{"name":"a","name":"b"}"#;
    refuses_twice_and_too_large(&flux, keys, Method::POST, &signed, twice, "name").await;

    // Nothing was changed by any of them.
    let shown = admin_account(&flux, &account).await;
    assert_eq!(shown["on_hold"], false, "{shown}");
    assert!(shown["ceiling_usd"].is_null(), "{shown}");
    let names = names(&shown["keys"]);
    assert_eq!(names, ["app", "manager"], "{shown}");
    let (status, _) = admin_call(&flux, Method::GET, "/admin/v1/accounts/twice", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_admin_accounts_list_and_an_owner_s_key_list_come_in_pages() {
    let flux = Flux::start().await;
    let (_, manager) = account_with_manager(&flux, "pager", "payg").await;
    for i in 0..4 {
        new_key(&flux, &manager, json!({"name": format!("k{i}")})).await;
    }
    for i in 0..4 {
        let body = json!({"name": format!("acct{i}"), "plan": "payg"});
        let (status, v) = admin_call(&flux, Method::POST, "/admin/v1/accounts", Some(body)).await;
        assert_eq!(status, 201, "{v}");
    }

    // Walk both listings two at a time: every item once, in id order, then has_more false.
    let walk = |base: String, count: usize, owner: bool| {
        let flux = &flux;
        let manager = manager.clone();
        async move {
            let mut ids: Vec<String> = Vec::new();
            let mut after = String::new();
            loop {
                let path = format!("{base}?limit=2&after={after}");
                let (status, page) = if owner {
                    call(flux, Method::GET, &path, &manager, None).await
                } else {
                    admin_call(flux, Method::GET, &path, None).await
                };
                assert_eq!(status, 200, "{page}");
                let data = page["data"].as_array().unwrap();
                assert!(data.len() <= 2, "{page}");
                ids.extend(data.iter().map(|v| v["id"].as_str().unwrap().to_string()));
                if page["has_more"] == false {
                    assert!(page["next"].is_null(), "{page}");
                    break;
                }
                after = page["next"].as_str().unwrap().to_string();
                assert_eq!(ids.last().unwrap(), &after);
            }
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(ids, sorted, "in id order, each once");
            assert_eq!(ids.len(), count, "{ids:?}");
        }
    };
    walk("/v1/keys".into(), 5, true).await; // four keys and the management key
    walk("/admin/v1/accounts".into(), 5, false).await; // four accounts and "pager"

    // The default page is 100; the most is 1,000.
    let (_, all) = call(&flux, Method::GET, "/v1/keys", &manager, None).await;
    assert_eq!(
        (all["data"].as_array().unwrap().len(), &all["has_more"]),
        (5, &json!(false))
    );
    for bad in ["limit=0", "limit=1001", "limit=x", "page=2"] {
        let owner_path = format!("/v1/keys?{bad}");
        let owner = call(&flux, Method::GET, &owner_path, &manager, None).await;
        assert_error(&owner, 400, "invalid_request");
        let admin_path = format!("/admin/v1/accounts?{bad}");
        let operator = admin_call(&flux, Method::GET, &admin_path, None).await;
        assert_error(&operator, 400, "invalid_request");
    }
}
