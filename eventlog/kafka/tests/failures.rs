//! Failure injection with the mock cluster: produce requests failing and
//! brokers going down while thousands of records are appended. After
//! recovery every id is readable exactly once after dedup, in per-key order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::Arc;
use std::time::Duration;
use tollgate_eventlog::EventLog;
use tollgate_kafka::KafkaEventLog;

const TOPIC: &str = "tollgate.account-events";
const KEYS: usize = 17;

async fn append_range(log: &KafkaEventLog, ids: std::ops::Range<usize>) {
    for id in ids {
        let key = format!("acct_{}", id % KEYS);
        log.append(common::record(TOPIC, &key, id)).await.unwrap();
    }
}

async fn check(log: &KafkaEventLog, expected: usize) -> usize {
    let log: Arc<dyn EventLog> = Arc::new(log.clone());
    let all = common::read_all(&log, TOPIC).await;
    common::check_dedup_and_order(&all, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_lose_nothing() {
    let mock = common::cluster(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("s.db")))
        .await
        .unwrap();
    append_range(&log, 0..1000).await;
    log.flush().await.unwrap();
    // The next produce requests fail with errors librdkafka retries.
    let errors: Vec<RDKafkaRespErr> = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
    ]
    .into_iter()
    .cycle()
    .take(40)
    .collect();
    mock.request_errors(RDKafkaApiKey::Produce, &errors);
    append_range(&log, 1000..4000).await;
    log.flush().await.unwrap();
    let duplicates = check(&log, 4000).await;
    println!("retriable errors: {duplicates} duplicate copies");
    assert_eq!(log.undelivered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_loses_nothing() {
    let mock = common::cluster(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("s.db")))
        .await
        .unwrap();
    append_range(&log, 0..1000).await;
    mock.broker_down(-1).unwrap();
    // Appends keep succeeding while no broker answers: they go to the spool.
    append_range(&log, 1000..3000).await;
    log.sync_spool().await.unwrap();
    assert!(
        log.is_writable(),
        "the spool accepts appends during the outage"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(log.undelivered() > 0, "records wait in the spool");
    mock.broker_up(-1).unwrap();
    append_range(&log, 3000..4000).await;
    log.flush().await.unwrap();
    let duplicates = check(&log, 4000).await;
    println!("broker down/up: {duplicates} duplicate copies");
    assert_eq!(log.undelivered(), 0);
    assert_eq!(log.metrics().delivered.get(), 4000);
}

/// A permanent error stops the idempotent producer (gap-less guarantee);
/// the forwarder builds a new one and re-sends from the oldest
/// unacknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_produce_error_is_resent_in_order() {
    let mock = common::cluster(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("s.db")))
        .await
        .unwrap();
    append_range(&log, 0..500).await;
    log.flush().await.unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
    );
    append_range(&log, 500..3000).await;
    log.flush().await.unwrap();
    assert!(
        log.metrics().delivery_failures.get() > 0,
        "the failure was seen and counted"
    );
    let duplicates = check(&log, 3000).await;
    println!("permanent error: {duplicates} duplicate copies");
    assert_eq!(
        log.metrics().delivered.get(),
        3000,
        "each record counted once"
    );
    assert_eq!(log.undelivered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_times_out_while_the_broker_is_down_and_records_stay_spooled() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&mock, &dir.path().join("s.db"));
    config.delivery_timeout_ms = 1000;
    let log = KafkaEventLog::connect(config).await.unwrap();
    mock.broker_down(-1).unwrap();
    append_range(&log, 0..100).await;
    let err = log.flush().await.unwrap_err().to_string();
    assert!(err.contains("not yet delivered"), "{err}");
    assert_eq!(log.undelivered(), 100);
    mock.broker_up(-1).unwrap();
    common::eventually("delivery after the outage", Duration::from_secs(60), || {
        log.undelivered() == 0
    })
    .await;
    log.flush().await.unwrap();
    check(&log, 100).await;
}
