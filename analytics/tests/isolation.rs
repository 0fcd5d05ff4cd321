//! Account isolation through the API on both stores: an account's key
//! never sees another account's rows, whatever it asks for; the admin token
//! sees all and may narrow to one account.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::Arc;
use tollgate_analytics::UsageStore;

async fn isolated(store: Arc<dyn UsageStore>) {
    load(&*store, &rows(&dataset()), 60).await;
    let base = serve(store).await;
    let full = [("start", FULL_START), ("end", FULL_END)];
    let requests = |body: &serde_json::Value| -> u64 {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["requests"].as_u64().unwrap())
            .sum()
    };

    let (status, body) = get_usage(&base, Some(TOKEN_B), &full).await;
    assert_eq!((status, requests(&body)), (200, 3));
    assert_eq!(body["account_id"], ACCT_B);
    let (_, body) = get_usage(&base, Some(TOKEN_A), &full).await;
    assert_eq!(requests(&body), 240);

    // Grouping by key shows only the caller's keys.
    let (_, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[full[0], full[1], ("group_by", "access_key")],
    )
    .await;
    let keys: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["access_key_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["ak_b1"]);
    // Filtering on another account's key finds nothing.
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[full[0], full[1], ("access_key_id", "ak_a1")],
    )
    .await;
    assert_eq!((status, requests(&body)), (200, 0));
    // Asking for another account is refused; one's own is fine.
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[full[0], full[1], ("account_id", ACCT_A)],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["param"], "account_id");
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[full[0], full[1], ("account_id", ACCT_B)],
    )
    .await;
    assert_eq!((status, requests(&body)), (200, 3));

    // Admin: everything, or one account.
    let (_, body) = get_usage(&base, Some(ADMIN), &full).await;
    assert_eq!(requests(&body), 243);
    assert!(body["account_id"].is_null());
    let (_, body) = get_usage(
        &base,
        Some(ADMIN),
        &[full[0], full[1], ("account_id", ACCT_B)],
    )
    .await;
    assert_eq!(requests(&body), 3);
    let (_, body) = get_usage(
        &base,
        Some(ADMIN),
        &[full[0], full[1], ("account_id", "acct_nobody")],
    )
    .await;
    assert_eq!(requests(&body), 0);
}

#[tokio::test]
async fn sqlite_keys_see_only_their_account() {
    let (_dir, _db, store) = sqlite_store();
    isolated(store).await;
}

#[tokio::test]
async fn clickhouse_keys_see_only_their_account() {
    let store = shared_clickhouse("isolation").await;
    isolated(store.clone()).await;
    drop_database(&store).await;
}
