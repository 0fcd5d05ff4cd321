//! Shared test setup: a librdkafka mock cluster with Tollgate's topics, and
//! a configuration pointing at it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_eventlog::{EventLog, LogRecord, StoredRecord};
use tollgate_kafka::KafkaConfig;

pub type Mock = MockCluster<'static, DefaultProducerContext>;

pub const ACCOUNT_PARTITIONS: i32 = 4;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,librdkafka=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A mock cluster holding the four Tollgate topics plus `extra` topics
/// (each with `ACCOUNT_PARTITIONS` partitions).
pub fn cluster(brokers: i32, extra: &[&str]) -> Mock {
    init_tracing();
    let mock = MockCluster::new(brokers).unwrap();
    mock.create_topic("tollgate.account-events", ACCOUNT_PARTITIONS, 1)
        .unwrap();
    mock.create_topic("tollgate.control", 1, 1).unwrap();
    mock.create_topic("tollgate.balances", ACCOUNT_PARTITIONS, 1)
        .unwrap();
    mock.create_topic("tollgate.alerts", ACCOUNT_PARTITIONS, 1)
        .unwrap();
    for topic in extra {
        mock.create_topic(topic, ACCOUNT_PARTITIONS, 1).unwrap();
    }
    mock
}

/// Generous timeouts: the tests wait for outcomes, never for speed.
pub fn config(mock: &Mock, spool: &Path) -> KafkaConfig {
    KafkaConfig {
        brokers: mock
            .bootstrap_servers()
            .split(',')
            .map(str::to_owned)
            .collect(),
        spool_path: spool.to_owned(),
        startup_timeout_ms: 20_000,
        delivery_timeout_ms: 60_000,
        // The mock cluster waits session.timeout.ms - 1 s before finishing a
        // rebalance after a member joined or left: keep it short.
        consumer: BTreeMap::from([
            ("session.timeout.ms".to_owned(), "3000".to_owned()),
            ("heartbeat.interval.ms".to_owned(), "500".to_owned()),
        ]),
        ..KafkaConfig::default()
    }
}

/// Record `id` of `key` (ids are unique across a test).
pub fn record(topic: &str, key: &str, id: usize) -> LogRecord {
    LogRecord {
        topic: topic.to_owned(),
        key: key.to_owned(),
        payload: format!("{key}:{id}").into_bytes(),
    }
}

pub fn id_of(record: &StoredRecord) -> usize {
    let text = String::from_utf8(record.payload.to_vec()).unwrap();
    text.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// After dropping repeated ids (keeping the first copy, as consumers do):
/// every id in `expected` is there exactly once, and each key's ids come in
/// increasing (= append) order. Returns how many copies were dropped.
pub fn check_dedup_and_order(records: &[StoredRecord], expected: usize) -> usize {
    let mut by_partition: BTreeMap<u32, Vec<&StoredRecord>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut last_of_key: BTreeMap<String, usize> = BTreeMap::new();
    for (_, mut rs) in by_partition {
        rs.sort_by_key(|r| r.offset);
        for r in rs {
            let id = id_of(r);
            if !seen.insert(id) {
                duplicates += 1;
                continue;
            }
            if let Some(prev) = last_of_key.insert(r.key.clone(), id) {
                assert!(prev < id, "key {} out of order: {prev} before {id}", r.key);
            }
        }
    }
    assert_eq!(seen.len(), expected, "every id once after dedup");
    assert!(seen.iter().all(|id| *id < expected));
    duplicates
}

/// Poll `cond` until it holds, failing after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn read_all(log: &Arc<dyn EventLog>, topic: &str) -> Vec<StoredRecord> {
    tollgate_eventlog_contract::read_all(log, topic).await
}
