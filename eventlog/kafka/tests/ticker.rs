//! Ledger ticks: one per partition per interval, key "tick", the versioned
//! JSON envelope core reads as `EventBody::Tick`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;
use tollgate_core::{Envelope, EventBody};
use tollgate_eventlog::{EventLog, LogRecord};
use tollgate_kafka::{spawn_ticker, KafkaEventLog, KafkaLogError, TICK_KEY};

const TOPIC: &str = "tollgate.account-events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_reach_every_partition() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("s.db")))
        .await
        .unwrap();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let ticker = spawn_ticker(Arc::new(log.clone()), TOPIC, Duration::from_millis(100));
    let dyn_log: Arc<dyn EventLog> = Arc::new(log.clone());
    let partitions = common::ACCOUNT_PARTITIONS as u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let per_partition = loop {
        let mut counts = vec![0usize; partitions as usize];
        for r in common::read_all(&dyn_log, TOPIC).await {
            counts[r.partition as usize] += 1;
        }
        if counts.iter().all(|c| *c >= 3) {
            break counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ticks in every partition: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ticker.abort();
    println!("ticks per partition: {per_partition:?}");
    for r in common::read_all(&dyn_log, TOPIC).await {
        assert_eq!(r.key, TICK_KEY);
        let raw: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(raw["v"], tollgate_core::ENVELOPE_VERSION);
        assert_eq!(raw["type"], "tick");
        let at = raw["data"]["at"].as_str().unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        assert!(at >= before, "stamped at write time");
        let envelope: Envelope = serde_json::from_slice(&r.payload).unwrap();
        assert!(matches!(envelope.body, EventBody::Tick(_)));
    }
    assert_eq!(log.write_ticks(TOPIC).await.unwrap(), partitions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_name_a_missing_partition() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&mock, &dir.path().join("s.db"));
    config.delivery_timeout_ms = 5_000;
    let log = KafkaEventLog::connect(config).await.unwrap();
    let record = LogRecord {
        topic: TOPIC.into(),
        key: TICK_KEY.into(),
        payload: b"{}".to_vec(),
    };
    let offset = log.append_to_partition(record.clone(), 2).await.unwrap();
    let read = log.read(TOPIC, 2, offset, 10).await.unwrap();
    assert_eq!(read.len(), 1, "a direct write is readable at its offset");
    let err = log.append_to_partition(record, 99).await.unwrap_err();
    assert!(
        matches!(err, KafkaLogError::UnknownPartition { partition: 99, .. }),
        "{err:?}"
    );
}
