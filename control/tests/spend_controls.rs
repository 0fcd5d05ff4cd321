//! Budgets, webhooks and low-balance amounts: validation naming the field,
//! round trips through the control log (a second instance replaying it sees
//! the same objects), webhook secrets encrypted at rest and shown once, and
//! the admin API's answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_control::admin::{router, AdminState};
use tollgate_control::{BudgetPatch, ControlPlane, MasterKey, NewBudget, NewWebhook, ProviderIds};
use tollgate_core::budget::{AlertKind, BudgetPeriod};
use tollgate_core::{AccessKeyId, AccountId, Usd};
use tollgate_eventlog::{topics, EventLog};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const ADMIN: &str = "admin-secret-token";

async fn plane_on(path: &std::path::Path) -> (Arc<ControlPlane>, Arc<SqliteEventLog>) {
    let db = Database::open(path, Durability::Normal).unwrap();
    let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    let plane = ControlPlane::open(
        log.clone() as Arc<dyn EventLog>,
        Arc::new(MasterKey::parse(MASTER).unwrap()),
        ProviderIds::default(),
    )
    .await
    .unwrap();
    (plane, log)
}

fn usd(text: &str) -> Usd {
    text.parse().unwrap()
}

fn new_budget(account: &AccountId, key: Option<&AccessKeyId>) -> NewBudget {
    NewBudget {
        account_id: account.clone(),
        access_key_id: key.cloned(),
        name: "monthly".into(),
        amount: usd("10.00"),
        period: BudgetPeriod::Month,
        soft_threshold_percent: None,
        refuse: None,
    }
}

/// The message of a refused change (panics if it was accepted).
fn refusal<T: std::fmt::Debug>(result: Result<T, tollgate_control::ControlError>) -> String {
    result.unwrap_err().to_string()
}

#[tokio::test]
async fn budgets_are_validated_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (plane, _log) = plane_on(&dir.path().join("t.db")).await;
    let account = plane.create_account("team").await.unwrap();
    let other = plane.create_account("other").await.unwrap();
    let (key, _) = plane
        .create_access_key(&account.id, "app", None)
        .await
        .unwrap();
    let (other_key, _) = plane
        .create_access_key(&other.id, "app", None)
        .await
        .unwrap();
    let (revoked, _) = plane
        .create_access_key(&account.id, "old", None)
        .await
        .unwrap();
    plane.revoke_access_key(&revoked.id).await.unwrap();

    let missing = AccountId("acct_missing".into());
    let cases: Vec<(NewBudget, &str)> = vec![
        (new_budget(&missing, None), "account_id: no account"),
        (
            new_budget(&account.id, Some(&AccessKeyId("ak_missing".into()))),
            "access_key_id: no access key",
        ),
        (
            new_budget(&account.id, Some(&other_key.id)),
            "belongs to another account",
        ),
        (new_budget(&account.id, Some(&revoked.id)), "is revoked"),
        (
            NewBudget {
                amount: usd("0"),
                ..new_budget(&account.id, None)
            },
            "amount: `0` must be more than 0",
        ),
        (
            NewBudget {
                amount: usd("-1"),
                ..new_budget(&account.id, None)
            },
            "amount: `-1` must be more than 0",
        ),
        (
            NewBudget {
                amount: usd("0.0000001"),
                ..new_budget(&account.id, None)
            },
            "more than 6 decimal places",
        ),
        (
            NewBudget {
                amount: usd("1000000000000"),
                ..new_budget(&account.id, None)
            },
            "amount: `1000000000000` must be below",
        ),
        (
            NewBudget {
                name: "  ".into(),
                ..new_budget(&account.id, None)
            },
            "name: must not be empty",
        ),
        (
            NewBudget {
                name: "n".repeat(201),
                ..new_budget(&account.id, None)
            },
            "name: longer than 200",
        ),
        (
            NewBudget {
                soft_threshold_percent: Some(0),
                ..new_budget(&account.id, None)
            },
            "soft_threshold_percent: `0`",
        ),
        (
            NewBudget {
                soft_threshold_percent: Some(101),
                ..new_budget(&account.id, None)
            },
            "soft_threshold_percent: `101`",
        ),
    ];
    for (spec, expected) in cases {
        let message = refusal(plane.create_budget(&spec).await);
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    assert!(plane.snapshot().budgets.is_empty(), "nothing was recorded");

    // The limits themselves are accepted, normalized; defaults filled in.
    let budget = plane
        .create_budget(&NewBudget {
            amount: usd("999999999999.999999"),
            name: "n".repeat(200),
            ..new_budget(&account.id, Some(&key.id))
        })
        .await
        .unwrap();
    assert_eq!(budget.amount, usd("999999999999.999999"));
    assert_eq!(budget.soft_threshold_percent, 80);
    assert!(budget.refuse);
    assert!(budget.id.as_str().starts_with("bud_"));
}

#[tokio::test]
async fn budgets_and_low_balance_replay_on_a_second_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (a, _log) = plane_on(&path).await;
    let account = a.create_account("team").await.unwrap();
    let (key, _) = a.create_access_key(&account.id, "app", None).await.unwrap();
    let on_account = a
        .create_budget(&NewBudget {
            soft_threshold_percent: Some(50),
            refuse: Some(false),
            ..new_budget(&account.id, None)
        })
        .await
        .unwrap();
    let on_key = a
        .create_budget(&NewBudget {
            period: BudgetPeriod::Day,
            amount: usd("1.50"),
            ..new_budget(&account.id, Some(&key.id))
        })
        .await
        .unwrap();
    let updated = a
        .update_budget(
            on_key.id.as_str(),
            &BudgetPatch {
                amount: Some(usd("2.000000")),
                refuse: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.amount, usd("2"));
    assert_eq!(updated.name, on_key.name, "fields not named are kept");
    assert_eq!(updated.period, BudgetPeriod::Day);
    assert!(updated.updated_at >= on_key.updated_at);
    a.set_low_balance(&account.id, Some(usd("2.50")))
        .await
        .unwrap();

    let (b, _log_b) = plane_on(&path).await;
    let seen = b.snapshot();
    assert_eq!(seen.budgets.get(&on_account.id), Some(&on_account));
    assert_eq!(seen.budgets.get(&on_key.id), Some(&updated));
    assert_eq!(
        seen.budgets_of(&account.id).len(),
        2,
        "the account's budgets include its keys'"
    );
    assert_eq!(
        seen.accounts.get(&account.id).unwrap().low_balance_usd,
        Some(usd("2.5"))
    );
    assert_eq!(
        b.budgets(Some(&account.id), Some(&key.id)),
        vec![updated.clone()]
    );
    assert_eq!(
        b.budgets(Some(&AccountId("acct_other".into())), None),
        vec![]
    );

    a.delete_budget(on_key.id.as_str()).await.unwrap();
    a.set_low_balance(&account.id, None).await.unwrap();
    assert!(refusal(a.delete_budget(on_key.id.as_str()).await).contains("not found"));
    assert!(
        refusal(a.set_low_balance(&account.id, Some(usd("-0.01"))).await)
            .contains("amount: `-0.01` must be at least 0")
    );
    b.catch_up().await.unwrap();
    let seen = b.snapshot();
    assert!(!seen.budgets.contains_key(&on_key.id));
    assert_eq!(seen.budgets_of(&account.id), [on_account]);
    assert_eq!(
        seen.accounts.get(&account.id).unwrap().low_balance_usd,
        None
    );
}

#[tokio::test]
async fn webhook_secrets_are_encrypted_at_rest_and_replay_decrypted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (a, log) = plane_on(&path).await;
    let created = a
        .create_webhook(&NewWebhook {
            url: "https://hooks.example.com/tollgate".into(),
            kinds: vec!["low_balance".into(), "budget_exceeded".into()],
        })
        .await
        .unwrap();
    let first = created.secret.clone();
    assert!(first.starts_with("whsec_") && first.len() > 40);
    assert_eq!(
        created.webhook.kinds,
        vec![AlertKind::BudgetExceeded, AlertKind::LowBalance]
    );
    let id = created.webhook.id.clone();
    assert!(id.starts_with("whk_"));
    let rotated = a.rotate_webhook_secret(&id).await.unwrap();
    assert_ne!(rotated.secret, first);
    assert_eq!(rotated.webhook.created_at, created.webhook.created_at);

    // A second instance replaying the log decrypts the current secret.
    let (b, _log_b) = plane_on(&path).await;
    let seen = b.snapshot();
    assert_eq!(seen.webhooks.get(&id).unwrap().url, created.webhook.url);
    assert_eq!(
        seen.webhook_secret(&id).map(|s| s.0.to_string()),
        Some(rotated.secret.clone())
    );

    // No control record, nor the database files, hold either secret.
    let records = log.read(topics::CONTROL, 0, 0, 10_000).await.unwrap();
    assert!(records.len() >= 2);
    log.flush().await.unwrap();
    let mut stored: Vec<Vec<u8>> = records.into_iter().map(|r| r.payload.to_vec()).collect();
    for file in [path.clone(), path.with_extension("db-wal")] {
        stored.push(std::fs::read(&file).unwrap_or_default());
    }
    for secret in [&first, &rotated.secret] {
        let random_part = secret.trim_start_matches("whsec_").as_bytes();
        for bytes in &stored {
            assert!(
                !bytes.windows(random_part.len()).any(|w| w == random_part),
                "a webhook secret is stored in plaintext"
            );
        }
    }

    a.delete_webhook(&id).await.unwrap();
    b.catch_up().await.unwrap();
    assert!(b.snapshot().webhook_secret(&id).is_none());
    assert!(b.snapshot().webhooks.is_empty());
}

async fn admin_server() -> (String, Arc<ControlPlane>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (plane, _log) = plane_on(&dir.path().join("t.db")).await;
    let app = router(AdminState::new(plane.clone(), ADMIN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/admin/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, plane, dir)
}

/// One admin call; (status, body as text).
async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// A 400 whose message names `expected`.
async fn assert_400(method: &str, url: &str, body: Value, expected: &str) {
    let (status, text) = call(method, url, Some(body)).await;
    assert_eq!(status, 400, "{text}");
    let message = json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains(expected),
        "{expected:?} not in {message:?}"
    );
}

#[tokio::test]
async fn admin_api_manages_budgets_and_low_balance() {
    let (url, plane, _dir) = admin_server().await;
    let account = plane.create_account("team").await.unwrap();
    let (key, _) = plane
        .create_access_key(&account.id, "app", None)
        .await
        .unwrap();
    let budgets = format!("{url}/budgets");
    let body = json!({"account_id": account.id, "access_key_id": key.id, "name": "daily",
        "amount": "5.00", "period": "day"});
    let (status, text) = call("POST", &budgets, Some(body.clone())).await;
    assert_eq!(status, 201, "{text}");
    let created = json_of(&text);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["amount"], "5");
    assert_eq!(created["soft_threshold_percent"], 80);
    assert_eq!(created["refuse"], true);
    assert_eq!(created["period"], "day");

    let mut unknown = body.clone();
    unknown["colour"] = json!("red");
    assert_400("POST", &budgets, unknown, "unknown field `colour`").await;
    let mut bad_period = body.clone();
    bad_period["period"] = json!("year");
    assert_400("POST", &budgets, bad_period, "period").await;
    let mut float_amount = body.clone();
    float_amount["amount"] = json!(5.0);
    assert_400("POST", &budgets, float_amount, "amount").await;
    let mut tiny = body.clone();
    tiny["amount"] = json!("0.0000001");
    assert_400(
        "POST",
        &budgets,
        tiny,
        "amount: `0.0000001` has more than 6",
    )
    .await;

    let one = format!("{budgets}/{id}");
    let (status, text) = call(
        "PATCH",
        &one,
        Some(json!({"amount": "7.5", "refuse": false})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["amount"], "7.5");
    assert_eq!(json_of(&text)["name"], "daily");
    for fixed in ["period", "account_id", "access_key_id"] {
        assert_400("PATCH", &one, json!({ fixed: null }), "create a new budget").await;
    }
    let (status, text) = call("GET", &one, None).await;
    assert_eq!(
        (status, json_of(&text)["refuse"].clone()),
        (200, json!(false))
    );
    let filtered = format!(
        "{budgets}?account_id={}&access_key_id={}",
        account.id, key.id
    );
    let (status, text) = call("GET", &filtered, None).await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&text)["data"][0]["id"], id.as_str());
    let (_, text) = call("GET", &format!("{budgets}?account_id=acct_none"), None).await;
    assert_eq!(json_of(&text)["data"], json!([]));
    let (status, text) = call("GET", &format!("{budgets}?account_id=a&account_id=b"), None).await;
    assert_eq!(status, 400, "a malformed query is a JSON 400: {text}");
    json_of(&text);

    assert_eq!(call("DELETE", &one, None).await.0, 204);
    let (status, text) = call("GET", &one, None).await;
    assert_eq!(status, 404);
    assert_eq!(json_of(&text)["error"]["type"], "not_found");
    assert_eq!(call("DELETE", &one, None).await.0, 404);
    assert_eq!(call("PATCH", &one, Some(json!({}))).await.0, 404);

    let low = format!("{url}/accounts/{}/low-balance", account.id);
    let (status, text) = call("PUT", &low, Some(json!({"amount": "2.50"}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["low_balance_usd"], "2.5");
    assert_400(
        "PUT",
        &low,
        json!({"amount": "-1"}),
        "amount: `-1` must be at least 0",
    )
    .await;
    let (status, text) = call("PUT", &low, Some(json!({"amount": null}))).await;
    assert_eq!(status, 200);
    assert!(json_of(&text).get("low_balance_usd").is_none(), "{text}");
    let missing = format!("{url}/accounts/acct_missing/low-balance");
    assert_eq!(
        call("PUT", &missing, Some(json!({"amount": "1"}))).await.0,
        404
    );
}

#[tokio::test]
async fn admin_api_shows_a_webhook_secret_once_and_never_its_ciphertext() {
    let (url, plane, _dir) = admin_server().await;
    let webhooks = format!("{url}/webhooks");
    let (status, text) = call(
        "POST",
        &webhooks,
        Some(json!({"url": "https://hooks.example.com/t"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let created = json_of(&text);
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["kinds"], json!([]), "absent kinds: every kind");
    assert!(created.get("secret_ciphertext").is_none());
    let ciphertext = plane.webhook(&id).unwrap().secret_ciphertext;

    let one = format!("{webhooks}/{id}");
    let (status, text) = call("PATCH", &one, Some(json!({"kinds": ["credits_expiring"]}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["kinds"], json!(["credits_expiring"]));
    assert_eq!(json_of(&text)["url"], "https://hooks.example.com/t");
    let mut shown = vec![text];
    shown.push(call("GET", &one, None).await.1);
    shown.push(call("GET", &webhooks, None).await.1);
    for text in &shown {
        assert!(
            !text.contains(&secret) && !text.contains(&ciphertext) && !text.contains("secret"),
            "{text}"
        );
    }
    assert_eq!(json_of(&shown[2])["data"][0]["id"], id.as_str());

    let (status, text) = call("POST", &format!("{one}/rotate-secret"), None).await;
    assert_eq!(status, 200, "{text}");
    let rotated = json_of(&text)["secret"].as_str().unwrap().to_owned();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    assert_eq!(
        plane.snapshot().webhook_secret(&id).unwrap().0.as_ref(),
        rotated
    );

    for (body, expected) in [
        (json!({"url": "ftp://x.example/"}), "url: scheme `ftp`"),
        (json!({"url": "nope"}), "url: not a URL"),
        (
            json!({"url": format!("https://x.example/{}", "a".repeat(2048))}),
            "url: longer than 2048",
        ),
        (
            json!({"url": "https://x.example/", "kinds": ["low_balance", "weather"]}),
            "kinds[1]: unknown alert kind `weather`",
        ),
        (
            json!({"url": "https://x.example/", "secret": "mine"}),
            "unknown field `secret`",
        ),
    ] {
        assert_400("POST", &webhooks, body, expected).await;
    }
    assert_400(
        "PATCH",
        &one,
        json!({"url": "mailto:a@b.c"}),
        "url: scheme `mailto`",
    )
    .await;

    assert_eq!(call("DELETE", &one, None).await.0, 204);
    assert_eq!(call("GET", &one, None).await.0, 404);
    assert_eq!(
        call("POST", &format!("{one}/rotate-secret"), None).await.0,
        404
    );
}
