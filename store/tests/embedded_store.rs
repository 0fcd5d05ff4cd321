#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tollgate_core::{EventLog, LogRecord};
use tollgate_store::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

fn record(key: &str, n: u32) -> LogRecord {
    LogRecord {
        topic: "t".into(),
        key: key.into(),
        payload: format!("payload-{n}").into_bytes(),
    }
}

#[tokio::test]
async fn appended_records_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    {
        let db = Database::open(&path, Durability::Normal).unwrap();
        let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
        for n in 0..1000 {
            log.append(record(if n % 2 == 0 { "a" } else { "b" }, n))
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
    }
    let db = Database::open(&path, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let all = log.read("t", 0, 0, 10_000).await.unwrap();
    assert_eq!(all.len(), 1000);
    let payloads: Vec<String> = all
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..1000).map(|n| format!("payload-{n}")).collect();
    assert_eq!(payloads, expected);
    assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
    // Reading from a position returns only what follows it.
    let tail = log.read("t", 0, all[990].offset, 100).await.unwrap();
    assert_eq!(tail.len(), 10);
    assert!(log.read("other", 0, 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn small_queue_applies_backpressure_without_losing_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("x.db"), Durability::Normal).unwrap();
    let log = SqliteEventLog::open(
        &db,
        SqliteEventLogOptions {
            queue_capacity: 4,
            max_batch: 3,
            ..SqliteEventLogOptions::default()
        },
    )
    .unwrap();
    let mut rejected = 0;
    for n in 0..500 {
        if let Err(back) = log.try_append(record("k", n)) {
            rejected += 1;
            log.append(back).await.unwrap();
        }
    }
    log.flush().await.unwrap();
    assert_eq!(log.count("t").unwrap(), 500);
    assert!(rejected > 0, "a queue of 4 must push back at some point");
}

/// The shared event-log contract, on the embedded backend.
mod contract {
    use super::*;
    use std::sync::Arc;
    use tollgate_eventlog_contract as suite;

    struct Embedded(std::path::PathBuf);

    impl suite::Factory for Embedded {
        async fn open(&self) -> Arc<dyn EventLog> {
            let db = Database::open(&self.0, Durability::Normal).unwrap();
            Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap())
        }
    }

    fn factory() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contract.db");
        (dir, Embedded(path))
    }

    #[tokio::test]
    async fn append_is_durable_and_ordered_per_key() {
        let (_dir, f) = factory();
        suite::append_is_durable_and_ordered_per_key(&f, "contract.append").await;
    }

    #[tokio::test]
    async fn records_survive_restart() {
        let (_dir, f) = factory();
        suite::records_survive_restart(&f, "contract.restart").await;
    }

    #[tokio::test]
    async fn consume_from_position_resume_and_dedup() {
        let (_dir, f) = factory();
        suite::consume_from_position_resume_and_dedup(&f, "contract.consume").await;
    }
}
