//! Redelivery never duplicates: re-consuming from an old position (a
//! consumer that crashed before its offsets were committed, a replay), a
//! crash mid-stream, or the same batch written twice leaves every event
//! stored exactly once — in ClickHouse's raw table and every rollup, and in
//! SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tollgate_analytics::{
    AnalyticsMetrics, ClickHouseStore, Sink, SqliteUsageStore, StorePositions, UsageStore,
    WriteBatch,
};

/// Counts that must all equal the number of events once each is stored once.
async fn counts(ch: Option<&ClickHouseStore>, sqlite: Option<&SqliteUsageStore>) -> Vec<u64> {
    if let Some(ch) = ch {
        return ch.consistency().await.unwrap().counts().to_vec();
    }
    vec![sqlite.unwrap().row_count().await.unwrap()]
}

async fn scenario(
    store: Arc<dyn UsageStore>,
    db: &tollgate_sqlite::Database,
    ch: Option<&ClickHouseStore>,
    sqlite: Option<&SqliteUsageStore>,
) {
    let log = event_log(db);
    let events = dataset();
    let n = events.len() as u64;
    let (first, rest) = events.split_at(150);

    // 1. Consume part of the stream, then crash (no clean shutdown).
    append_all(&*log, first).await;
    let metrics = AnalyticsMetrics::unregistered(store.backend()).unwrap();
    let sink = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .spawn();
    assert!(
        eventually(Duration::from_secs(20), || async {
            counts(ch, sqlite).await.iter().all(|c| *c == 150)
        })
        .await,
        "first part not stored: {:?}",
        counts(ch, sqlite).await
    );
    sink.abort();

    // 2. A replay from the very beginning of the log, with more events.
    append_all(&*log, rest).await;
    let metrics = AnalyticsMetrics::unregistered(store.backend()).unwrap();
    let replay = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .start_from(Arc::new(StorePositions(BTreeMap::from([(0, 0)]))))
    .spawn();
    assert!(
        eventually(Duration::from_secs(20), || async {
            metrics.batch_rows.get_sample_sum() as u64 >= n
        })
        .await,
        "replay did not go through the log"
    );
    replay.shutdown().await.unwrap();
    assert_eq!(
        metrics.rows_inserted.get(),
        n - 150,
        "only the new events are stored"
    );
    assert_eq!(counts(ch, sqlite).await.iter().copied().max(), Some(n));
    assert!(
        counts(ch, sqlite).await.iter().all(|c| *c == n),
        "{:?}",
        counts(ch, sqlite).await
    );

    // 3. A normal restart resumes from the store's position: nothing new.
    let metrics = AnalyticsMetrics::unregistered(store.backend()).unwrap();
    let restart = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .spawn();
    tokio::time::sleep(Duration::from_millis(700)).await;
    restart.shutdown().await.unwrap();
    assert_eq!(metrics.rows_inserted.get(), 0);
    assert_eq!(
        metrics.batch_rows.get_sample_count(),
        0,
        "nothing was re-read"
    );

    // 4. The same batch written twice, and an overlapping one.
    let extra = rows(&dataset());
    let extra: Vec<_> = extra
        .into_iter()
        .map(|mut r| {
            r.log_offset += 10_000;
            r
        })
        .collect();
    let batch = |from: usize, to: usize| WriteBatch {
        partition: 0,
        rows: extra[from..to].into(),
        next_offset: extra[to - 1].log_offset + 1,
    };
    assert_eq!(store.write(&batch(0, 100)).await.unwrap(), 100);
    assert_eq!(store.write(&batch(0, 100)).await.unwrap(), 0);
    assert_eq!(store.write(&batch(50, 150)).await.unwrap(), 50);
    assert!(
        counts(ch, sqlite).await.iter().all(|c| *c == n + 150),
        "{:?}",
        counts(ch, sqlite).await
    );
    assert_eq!(
        store.positions().await.unwrap().get(&0).copied(),
        Some(extra[149].log_offset + 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_redelivery_stores_each_event_once() {
    let (_dir, db, store) = sqlite_store();
    scenario(store.clone(), &db, None, Some(&store)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_redelivery_stores_each_event_once_in_raw_and_rollups() {
    let (_dir, db, _) = sqlite_store();
    let store = shared_clickhouse("redelivery").await;
    scenario(store.clone(), &db, Some(&store), None).await;
    drop_database(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_rollup_left_behind_by_a_crash_is_repaired_not_duplicated() {
    // Simulate a crash between the raw part and its views: rows in the raw
    // table that no rollup has (inserted with the views detached).
    let store = shared_clickhouse("repair").await;
    let all = rows(&dataset());
    load(&*store, &all[..100], 50).await;
    for r in tollgate_analytics::clickhouse::sql::ROLLUPS {
        store
            .execute(&format!("DETACH TABLE {}_mv", r.table()))
            .await
            .unwrap();
    }
    load(&*store, &all[100..160], 60).await;
    for r in tollgate_analytics::clickhouse::sql::ROLLUPS {
        store
            .execute(&format!("ATTACH TABLE {}_mv", r.table()))
            .await
            .unwrap();
    }
    let c = store.consistency().await.unwrap();
    assert_eq!(c.counts(), [160, 160, 100, 100, 100, 100]);
    // Startup (positions) repairs; the resumed stream then carries on.
    let fresh = ClickHouseStore::new(store.config().clone());
    assert_eq!(fresh.positions().await.unwrap().get(&0).copied(), Some(161));
    load(&fresh, &all[100..], 50).await;
    let c = fresh.consistency().await.unwrap();
    assert!(c.exactly(all.len() as u64), "{c:?}");
    drop_database(&store).await;
}
