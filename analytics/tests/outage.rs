//! ClickHouse outage: the test runs its own clickhouse-server (own data dir
//! and ports), kills it (SIGKILL) mid-stream while events keep coming, and
//! starts it again. The sink waits with backoff and resumes: every event is
//! stored exactly once, in the raw table and every rollup. Also: a server
//! that is down when the sink starts is waited for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tollgate_analytics::{AnalyticsMetrics, ClickHouseStore, Sink, UsageStore};
use tollgate_eventlog::EventLog;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_survives_clickhouse_outages_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnClickHouse::start(dir.path()).await;
    let mut config = clickhouse_config(&server.url(), "outage");
    config.request_timeout_ms = 3_000;
    let store = Arc::new(ClickHouseStore::new(config));
    store.migrate().await.unwrap();

    let (_log_dir, db, _) = sqlite_store();
    let log = event_log(&db);
    let registry = prometheus::Registry::new();
    let metrics = AnalyticsMetrics::register(&registry, "clickhouse").unwrap();
    let sink = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .spawn();

    // Events arrive steadily throughout (dataset repeated with new ids).
    let mut events = Vec::new();
    for _ in 0..3 {
        for mut e in dataset() {
            e.event_id = tollgate_core::EventId::generate();
            events.push(e);
        }
    }
    let total = events.len() as u64;
    let producer_log = log.clone();
    let producer = tokio::spawn(async move {
        for chunk in events.chunks(9) {
            for e in chunk {
                producer_log.append(log_record(e)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        producer_log.flush().await.unwrap();
    });

    // Let some land, then crash the server while the stream goes on.
    assert!(
        eventually(Duration::from_secs(30), || async {
            store.consistency().await.is_ok_and(|c| c.raw_rows >= 100)
        })
        .await
    );
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume().await;
    // A second, shorter outage.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.resume().await;
    producer.await.unwrap();

    // Views commit just after their raw part: wait for all counts.
    let done = eventually(Duration::from_secs(60), || async {
        store
            .consistency()
            .await
            .is_ok_and(|c| c.counts().iter().all(|n| *n >= total))
    })
    .await;
    let c = store.consistency().await.unwrap();
    assert!(done, "not everything arrived: {c:?} of {total}");
    assert!(
        c.exactly(total),
        "each event exactly once everywhere: {c:?}"
    );
    assert!(
        metrics
            .insert_failures
            .with_label_values(&["transient"])
            .get()
            > 0,
        "the outage should have been seen as transient failures"
    );
    assert_eq!(
        metrics
            .insert_failures
            .with_label_values(&["bad_data"])
            .get(),
        0
    );
    assert_eq!(metrics.rows_inserted.get(), total);
    sink.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_started_while_clickhouse_is_down_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnClickHouse::start(dir.path()).await;
    let store = Arc::new(ClickHouseStore::new(clickhouse_config(
        &server.url(),
        "down",
    )));
    store.migrate().await.unwrap();
    server.kill();

    let (_log_dir, db, _) = sqlite_store();
    let log = event_log(&db);
    let events = dataset();
    append_all(&*log, &events).await;
    let metrics = AnalyticsMetrics::unregistered("clickhouse").unwrap();
    let sink = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume().await;
    let n = events.len() as u64;
    assert!(
        eventually(Duration::from_secs(30), || async {
            store.consistency().await.is_ok_and(|c| c.exactly(n))
        })
        .await,
        "{:?}",
        store.consistency().await
    );
    sink.shutdown().await.unwrap();
    assert_eq!(store.consistency().await.unwrap().raw_events, n);
    let _ = store.backend();
}
