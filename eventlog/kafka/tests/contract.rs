//! The shared event-log contract suite, on the Kafka backend against
//! librdkafka's mock cluster. Re-opening keeps the same cluster and spool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use tollgate_eventlog::EventLog;
use tollgate_eventlog_contract as suite;
use tollgate_kafka::{KafkaConfig, KafkaEventLog};

struct Kafka {
    _mock: common::Mock,
    config: KafkaConfig,
    _dir: tempfile::TempDir,
}

impl suite::Factory for Kafka {
    async fn open(&self) -> Arc<dyn EventLog> {
        Arc::new(KafkaEventLog::connect(self.config.clone()).await.unwrap())
    }
}

fn factory(topic: &str) -> Kafka {
    let mock = common::cluster(3, &[topic]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&mock, &dir.path().join("spool.db"));
    Kafka {
        _mock: mock,
        config,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_is_durable_and_ordered_per_key() {
    let f = factory("contract.append");
    suite::append_is_durable_and_ordered_per_key(&f, "contract.append").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_restart() {
    let f = factory("contract.restart");
    suite::records_survive_restart(&f, "contract.restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_position_resume_and_dedup() {
    let f = factory("contract.consume");
    suite::consume_from_position_resume_and_dedup(&f, "contract.consume").await;
}

/// The suite's own topics are spread over several partitions here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_have_several_partitions() {
    let f = factory("contract.partitions");
    let log = suite::Factory::open(&f).await;
    assert_eq!(
        log.partitions("contract.partitions").await.unwrap(),
        common::ACCOUNT_PARTITIONS as u32
    );
}
