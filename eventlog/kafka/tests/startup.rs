//! Startup errors: an unreachable cluster is named, missing topics are
//! listed with how to create them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rdkafka::mocking::MockCluster;
use tollgate_kafka::{KafkaConfig, KafkaEventLog, KafkaLogError};

#[tokio::test]
async fn unreachable_brokers_are_named() {
    common::init_tracing();
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    let config = KafkaConfig {
        brokers: vec![addr.clone()],
        spool_path: dir.path().join("s.db"),
        startup_timeout_ms: 1_500,
        ..KafkaConfig::default()
    };
    let err = KafkaEventLog::connect(config).await.err().unwrap();
    assert!(matches!(err, KafkaLogError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&addr), "names the broker: {text}");
    assert!(text.contains("1500 ms"), "{text}");
    assert!(
        !dir.path().join("s.db").exists(),
        "no spool without a cluster"
    );
}

#[tokio::test]
async fn missing_topics_are_listed_with_how_to_create_them() {
    common::init_tracing();
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("tollgate.control", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&mock, &dir.path().join("s.db"));
    let err = KafkaEventLog::connect(config).await.err().unwrap();
    match &err {
        KafkaLogError::MissingTopics { missing, .. } => assert_eq!(
            missing,
            &[
                "tollgate.account-events".to_owned(),
                "tollgate.balances".to_owned(),
                "tollgate.alerts".to_owned()
            ]
        ),
        other => panic!("expected MissingTopics, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("tollgate.account-events, tollgate.balances, tollgate.alerts"),
        "{text}"
    );
    assert!(text.contains("create_topics = true"), "{text}");
    assert!(text.contains("cleanup.policy=compact"), "{text}");
    assert!(!text.contains("tollgate.control,"), "{text}");
}

#[tokio::test]
async fn renamed_topics_are_checked_under_their_names() {
    let mock = common::cluster(1, &["prod.usage"]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&mock, &dir.path().join("s.db"));
    config.topics.account_events = "prod.usage".into();
    config.topics.balances = "prod.balances".into();
    let err = KafkaEventLog::connect(config.clone()).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("missing Kafka topics: prod.balances"),
        "{err}"
    );
    mock.create_topic("prod.balances", 2, 1).unwrap();
    let log = KafkaEventLog::connect(config).await.unwrap();
    // Code names the logical topic; the cluster's is used.
    use tollgate_eventlog::EventLog;
    assert_eq!(
        log.partitions(tollgate_eventlog::topics::ACCOUNT_EVENTS)
            .await
            .unwrap(),
        common::ACCOUNT_PARTITIONS as u32
    );
    assert_eq!(log.partitions("tollgate.balances").await.unwrap(), 2);
}

#[tokio::test]
async fn a_control_topic_with_several_partitions_is_refused() {
    common::init_tracing();
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("tollgate.account-events", 2, 1).unwrap();
    mock.create_topic("tollgate.control", 3, 1).unwrap();
    mock.create_topic("tollgate.balances", 2, 1).unwrap();
    mock.create_topic("tollgate.alerts", 2, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = KafkaEventLog::connect(common::config(&mock, &dir.path().join("s.db")))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, KafkaLogError::ControlPartitions { partitions: 3, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused_before_connecting() {
    let config = KafkaConfig {
        brokers: vec![],
        ..KafkaConfig::default()
    };
    let err = KafkaEventLog::connect(config).await.err().unwrap();
    assert!(err.to_string().contains("brokers: at least one"), "{err}");
}
