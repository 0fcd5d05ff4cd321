//! A restart while the broker is down: the records are only in the spool,
//! and the next process delivers them once a broker answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;
use tollgate_eventlog::EventLog;
use tollgate_kafka::{KafkaEventLog, KafkaLogError};

const TOPIC: &str = "tollgate.account-events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_records_are_delivered_after_a_restart() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&mock, &dir.path().join("spool.db"));
    config.startup_timeout_ms = 2_000;
    {
        let log = KafkaEventLog::connect(config.clone()).await.unwrap();
        for id in 0..100 {
            log.append(common::record(TOPIC, &format!("acct_{}", id % 7), id))
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        mock.broker_down(-1).unwrap();
        for id in 100..2100 {
            log.append(common::record(TOPIC, &format!("acct_{}", id % 7), id))
                .await
                .unwrap();
        }
        let report = log.close(Duration::from_millis(500)).await.unwrap();
        assert_eq!(
            report.remaining, 2000,
            "everything after the outage stays spooled"
        );
        let err = log.append(common::record(TOPIC, "acct_0", 0)).await;
        assert!(err.is_err(), "a closed log refuses appends");
    }
    // Starting while the cluster is away fails, naming the broker.
    let err = KafkaEventLog::connect(config.clone()).await.err().unwrap();
    assert!(matches!(err, KafkaLogError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&config.brokers[0]), "{err}");

    mock.broker_up(-1).unwrap();
    let log = KafkaEventLog::connect(config).await.unwrap();
    assert_eq!(log.undelivered(), 2000, "the new process found the spool");
    log.flush().await.unwrap();
    assert_eq!(log.undelivered(), 0);
    let log: Arc<dyn EventLog> = Arc::new(log);
    let all = common::read_all(&log, TOPIC).await;
    common::check_dedup_and_order(&all, 2100);
}

/// Dropping the log without `close` (as a crash would, minus the kill)
/// also leaves undelivered records in the spool for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_log_leaves_its_records_spooled() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&mock, &dir.path().join("spool.db"));
    {
        let log = KafkaEventLog::connect(config.clone()).await.unwrap();
        mock.broker_down(-1).unwrap();
        for id in 0..500 {
            log.append(common::record(TOPIC, "acct_d", id))
                .await
                .unwrap();
        }
        log.sync_spool().await.unwrap();
    }
    mock.broker_up(-1).unwrap();
    let log = KafkaEventLog::connect(config).await.unwrap();
    log.flush().await.unwrap();
    let log: Arc<dyn EventLog> = Arc::new(log);
    let all = common::read_all(&log, TOPIC).await;
    common::check_dedup_and_order(&all, 500);
}

/// Two processes never forward one spool: the second is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_has_one_owner() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let log = KafkaEventLog::connect(common::config(&mock, &path))
        .await
        .unwrap();
    // Another process would hold this lock; here, a raw SQLite connection.
    let mut lock = std::ffi::OsString::from(path.as_os_str());
    lock.push(".lock");
    let other = rusqlite::Connection::open(&lock).unwrap();
    other.busy_timeout(Duration::from_millis(100)).unwrap();
    assert!(
        other.execute_batch("BEGIN EXCLUSIVE").is_err(),
        "the lock is held"
    );
    // In this process a second connect shares the open spool.
    let again = KafkaEventLog::connect(common::config(&mock, &path))
        .await
        .unwrap();
    again.append(common::record(TOPIC, "k", 0)).await.unwrap();
    log.flush().await.unwrap();
    assert_eq!(log.metrics().delivered.get(), 1);
}
