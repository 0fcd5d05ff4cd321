//! Freshness: a usage event appended to the log is visible in the usage API
//! within 5 s, on both stores, with the default sink configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_analytics::{AnalyticsMetrics, Sink, SinkConfig, UsageStore};
use tollgate_core::{CredentialSource, TokenCounts};
use tollgate_eventlog::EventLog;

const LIMIT: Duration = Duration::from_secs(5);

async fn visible_within_limit(store: Arc<dyn UsageStore>, db: &tollgate_sqlite::Database) {
    assert!(
        SinkConfig::default().batch_max_wait_ms <= 1_000,
        "the default batch time must be at most 1 s"
    );
    let log = event_log(db);
    let sink = Sink::new(
        log.clone(),
        store.clone(),
        SinkConfig::default(),
        AnalyticsMetrics::unregistered(store.backend()).unwrap(),
    )
    .spawn();
    let base = serve(store.clone()).await;
    let now = chrono::Utc::now();
    let e = event(
        ACCT_A,
        "ak_a1",
        now,
        Some("openai"),
        "gpt-4o-mini",
        Some(CredentialSource::Operator),
        200,
        TokenCounts {
            input: 10,
            output: 5,
            ..TokenCounts::default()
        },
        123_000,
        Some(45_000),
    );
    // Unaligned (raw rows) and day-aligned (rollups, on ClickHouse) ranges.
    let unaligned = (
        (now - chrono::Duration::seconds(30)).to_rfc3339(),
        (now + chrono::Duration::seconds(30)).to_rfc3339(),
    );
    let day = chrono::Duration::days(1);
    let start_day = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let aligned = (start_day.to_rfc3339(), (start_day + day).to_rfc3339());
    let appended = Instant::now();
    log.append(log_record(&e)).await.unwrap();
    for (start, end) in [&unaligned, &aligned] {
        let seen = eventually(LIMIT.saturating_sub(appended.elapsed()), || async {
            let (status, body) =
                get_usage(&base, Some(TOKEN_A), &[("start", start), ("end", end)]).await;
            status == 200 && body["data"][0]["requests"] == 1
        })
        .await;
        assert!(
            seen,
            "{}: event not visible within {LIMIT:?} ({start}..{end})",
            store.backend()
        );
    }
    println!(
        "{}: visible after {:?}",
        store.backend(),
        appended.elapsed()
    );
    assert!(appended.elapsed() < LIMIT);
    sink.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_event_visible_within_5s() {
    let (_dir, db, store) = sqlite_store();
    visible_within_limit(store, &db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_event_visible_within_5s() {
    let (_dir, db, _) = sqlite_store();
    let store = shared_clickhouse("freshness").await;
    visible_within_limit(store.clone(), &db).await;
    drop_database(&store).await;
}
