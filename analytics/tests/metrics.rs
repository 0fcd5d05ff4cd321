//! Sink metrics: rows inserted, batch size and insert latency histograms,
//! failures and skipped records, consumer lag — on the caller's registry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use prometheus::Encoder;
use std::time::Duration;
use tollgate_analytics::{AnalyticsMetrics, Sink};
use tollgate_eventlog::{EventLog, LogRecord};

#[tokio::test(flavor = "multi_thread")]
async fn sink_reports_its_work_in_prometheus() {
    let (_dir, db, store) = sqlite_store();
    let log = event_log(&db);
    let events = dataset();
    append_all(&*log, &events[..100]).await;
    // An undecodable record and an event of another kind in between.
    let topic = tollgate_eventlog::topics::ACCOUNT_EVENTS.to_owned();
    log.append(LogRecord {
        topic: topic.clone(),
        key: "x".into(),
        payload: b"{not json".to_vec(),
    })
    .await
    .unwrap();
    log.append(LogRecord {
        topic,
        key: "x".into(),
        payload: br#"{"v":1,"type":"from_the_future","data":{}}"#.to_vec(),
    })
    .await
    .unwrap();
    append_all(&*log, &events[100..]).await;

    let registry = prometheus::Registry::new();
    let metrics = AnalyticsMetrics::register(&registry, "sqlite").unwrap();
    let sink = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .spawn();
    let n = events.len() as u64;
    assert!(
        eventually(Duration::from_secs(20), || async {
            metrics.rows_inserted.get() == n
        })
        .await
    );
    sink.shutdown().await.unwrap();

    assert_eq!(store.row_count().await.unwrap(), n);
    assert_eq!(
        metrics
            .events_skipped
            .with_label_values(&["undecodable"])
            .get(),
        1
    );
    assert_eq!(metrics.batch_rows.get_sample_sum() as u64, n);
    assert!(
        metrics.batch_rows.get_sample_count() >= 3,
        "batches of at most 100 rows"
    );
    assert_eq!(
        metrics.insert_duration.get_sample_count(),
        metrics.batch_rows.get_sample_count()
    );
    assert_eq!(
        metrics
            .insert_failures
            .with_label_values(&["transient"])
            .get(),
        0
    );
    assert_eq!(metrics.consumer_lag.get(), 0.0, "caught up");
    // The position covers the skipped records too.
    assert_eq!(
        tollgate_analytics::UsageStore::positions(&*store)
            .await
            .unwrap()
            .get(&0)
            .copied(),
        Some(n + 3)
    );

    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    for name in [
        "tollgate_analytics_rows_inserted_total{backend=\"sqlite\"}",
        "tollgate_analytics_batch_rows_bucket",
        "tollgate_analytics_insert_duration_seconds_bucket",
        "tollgate_analytics_insert_failures_total",
        "tollgate_analytics_events_skipped_total",
        "tollgate_analytics_consumer_lag_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

/// A record from a newer build is never skipped: the sink stores what came
/// before it, keeps its position at the record and stops, flagged.
#[tokio::test(flavor = "multi_thread")]
async fn sink_stops_at_a_record_from_a_newer_build() {
    let (_dir, db, store) = sqlite_store();
    let log = event_log(&db);
    let events = dataset();
    append_all(&*log, &events[..50]).await;
    let topic = tollgate_eventlog::topics::ACCOUNT_EVENTS.to_owned();
    let newer = br#"{"v":3,"type":"usage","data":{"tokens":"a shape this build does not know"}}"#;
    log.append(LogRecord {
        topic: topic.clone(),
        key: "x".into(),
        payload: newer.to_vec(),
    })
    .await
    .unwrap();
    append_all(&*log, &events[50..100]).await;
    log.flush().await.unwrap();
    let newer_offset = log
        .read(&topic, 0, 0, 1_000)
        .await
        .unwrap()
        .iter()
        .find(|r| r.payload[..] == newer[..])
        .unwrap()
        .offset;

    let registry = prometheus::Registry::new();
    let metrics = AnalyticsMetrics::register(&registry, "sqlite").unwrap();
    let sink = Sink::new(
        log.clone(),
        store.clone(),
        fast_sink_config(),
        metrics.clone(),
    )
    .spawn();
    assert!(
        eventually(Duration::from_secs(20), || async {
            metrics.halted.get() == 1
        })
        .await,
        "the sink flags that it stopped"
    );
    sink.shutdown().await.unwrap();
    assert_eq!(
        metrics.rows_inserted.get(),
        50,
        "what precedes it is stored"
    );
    assert_eq!(store.row_count().await.unwrap(), 50, "nothing after it");
    assert_eq!(
        tollgate_analytics::UsageStore::positions(&*store)
            .await
            .unwrap()
            .get(&0)
            .copied(),
        Some(newer_offset),
        "the position stays at the record"
    );
    assert_eq!(
        metrics
            .events_skipped
            .with_label_values(&["undecodable"])
            .get(),
        0
    );
}
