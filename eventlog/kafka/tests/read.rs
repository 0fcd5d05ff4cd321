//! `read`: records of one partition from an offset, in order; quick answers
//! at the end of a partition; records of other producers show up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;
use tollgate_eventlog::EventLog;
use tollgate_kafka::KafkaEventLog;

const TOPIC: &str = "tollgate.control";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_offsets_in_order() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("a.db")))
        .await
        .unwrap();
    assert!(
        log.read(TOPIC, 0, 0, 10).await.unwrap().is_empty(),
        "empty topic"
    );
    for id in 0..50 {
        log.append(common::record(TOPIC, &format!("obj_{}", id % 5), id))
            .await
            .unwrap();
    }
    log.flush().await.unwrap();
    let start = chrono::Utc::now().timestamp_millis();

    // Read-your-writes: after flush the records are there, in batches.
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let batch = log.read(TOPIC, 0, from, 7).await.unwrap();
        assert!(batch.len() <= 7);
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        all.extend(batch);
    }
    let ids: Vec<usize> = all.iter().map(common::id_of).collect();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
    assert!(all.iter().all(|r| r.topic == TOPIC && r.partition == 0));
    assert!(all.iter().all(|r| (r.timestamp_ms - start).abs() < 60_000));
    // At the end: nothing, repeatedly (the control plane asks every 100 ms).
    for _ in 0..3 {
        assert!(log.read(TOPIC, 0, from, 100).await.unwrap().is_empty());
    }
    // Going back re-positions the reader.
    let tail = log.read(TOPIC, 0, all[45].offset, 100).await.unwrap();
    assert_eq!(
        tail.iter().map(common::id_of).collect::<Vec<_>>(),
        vec![45, 46, 47, 48, 49]
    );

    // Another instance appends: this reader sees it on a later call.
    let other = KafkaEventLog::connect(common::config(&mock, &dir.path().join("b.db")))
        .await
        .unwrap();
    other
        .append(common::record(TOPIC, "obj_x", 50))
        .await
        .unwrap();
    other.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let batch = log.read(TOPIC, 0, from, 100).await.unwrap();
        if !batch.is_empty() {
            break batch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other instance's record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seen.iter().map(common::id_of).collect::<Vec<_>>(), vec![50]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_partitions_are_errors() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        KafkaEventLog::connect(common::config(&mock, &dir.path().join("a.db")))
            .await
            .unwrap(),
    );
    let err = log.partitions("no.such.topic").await.unwrap_err();
    assert!(err.to_string().contains("no.such.topic"), "{err}");
    let err = log.read(TOPIC, 7, 0, 10).await.unwrap_err();
    assert!(err.to_string().contains("partition 7"), "{err}");
}

/// Appends are refused, not spooled, when Kafka could never take them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_at_append() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("a.db")))
        .await
        .unwrap();
    let mut big = common::record(TOPIC, "k", 0);
    big.payload = vec![b'x'; 2_000_000];
    let err = log.append(big.clone()).await.unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    assert!(log.try_append(big).is_err());
    assert_eq!(log.metrics().appended.get(), 0);
}
