//! Retention drops whole old months on both stores, and never moves the
//! consumer's position back (so dropped events are not consumed again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::Arc;
use tollgate_analytics::{UsageQuery, UsageStore};

async fn retention(store: Arc<dyn UsageStore>) {
    let events = dataset();
    let all = rows(&events);
    let n = all.len() as u64;
    load(&*store, &all, 80).await;
    let everything = UsageQuery::new(t(FULL_START), t(FULL_END));
    let total = |groups: Vec<tollgate_analytics::UsageGroup>| {
        groups.iter().map(|g| g.requests).sum::<u64>()
    };
    assert_eq!(total(store.query(&everything).await.unwrap()), n);

    // Keeping 1 month in March 2025 keeps February and March.
    let kept = store
        .apply_retention(1, t("2025-03-15T00:00:00Z"))
        .await
        .unwrap();
    assert!(kept.months_dropped.is_empty());
    // Keeping 0 months in March drops February.
    let outcome = store
        .apply_retention(0, t("2025-03-15T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(outcome.months_dropped, vec![202502]);
    let march = events
        .iter()
        .filter(|e| e.started_at >= t("2025-03-01T00:00:00Z"))
        .count() as u64;
    assert_eq!(total(store.query(&everything).await.unwrap()), march);
    // Day-aligned queries (rollups on ClickHouse) agree.
    let mut daily = everything.clone();
    daily.bucket = Some(tollgate_analytics::Bucket::Day);
    assert_eq!(total(store.query(&daily).await.unwrap()), march);

    // Dropping everything keeps the position: nothing is consumed again.
    store
        .apply_retention(0, t("2025-05-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(total(store.query(&everything).await.unwrap()), 0);
    assert_eq!(
        store.positions().await.unwrap().get(&0).copied(),
        Some(n + 1)
    );
    let replay = tollgate_analytics::WriteBatch {
        partition: 0,
        rows: all.clone().into(),
        next_offset: n + 1,
    };
    assert_eq!(store.write(&replay).await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_retention_deletes_old_months_and_keeps_positions() {
    let (_dir, _db, store) = sqlite_store();
    retention(store).await;
}

#[tokio::test]
async fn clickhouse_retention_drops_old_partitions_and_keeps_positions() {
    let store = shared_clickhouse("retention").await;
    retention(store.clone()).await;
    drop_database(&store).await;
}
