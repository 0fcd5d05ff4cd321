//! `[kafka]` configuration: defaults, strict parsing, validation naming
//! every problem's field, topic creation specs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use tollgate_kafka::{topic_specs, KafkaConfig, KafkaLogError, SpoolDurability};

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = KafkaConfig::default();
    assert_eq!(c.brokers, vec!["localhost:9092"]);
    assert_eq!(c.topics.account_events, "tollgate.account-events");
    assert_eq!(c.topics.control, "tollgate.control");
    assert_eq!(c.topics.balances, "tollgate.balances");
    assert_eq!(c.topics.alerts, "tollgate.alerts");
    assert_eq!(c.partitions.control, 1);
    assert!(!c.create_topics);
    assert_eq!(c.spool_path, PathBuf::from("data/kafka-spool.db"));
    assert_eq!(c.spool_durability, SpoolDurability::Normal);
    c.validate().unwrap();
    // An empty section is the defaults.
    let empty: KafkaConfig = toml::from_str("").unwrap();
    assert_eq!(empty, c);
}

#[test]
fn parses_a_full_section() {
    let c: KafkaConfig = toml::from_str(
        r#"
        brokers = ["k1:9092", "k2:9092"]
        replication_factor = 3
        create_topics = true
        spool_path = "/var/lib/tollgate/kafka-spool.db"
        spool_durability = "full"
        spool_max_bytes = 10737418240
        startup_timeout_ms = 5000
        delivery_timeout_ms = 20000
        client_id = "gw-1"
        [topics]
        account_events = "prod.account-events"
        [partitions]
        account_events = 24
        [producer]
        "linger.ms" = "10"
        [consumer]
        "fetch.max.bytes" = "10485760"
        "#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.brokers.len(), 2);
    assert_eq!(c.topics.account_events, "prod.account-events");
    assert_eq!(
        c.topics.control, "tollgate.control",
        "unset fields keep defaults"
    );
    assert_eq!(c.partitions.account_events, 24);
    assert_eq!(c.spool_durability, SpoolDurability::Full);
    assert_eq!(c.producer["linger.ms"], "10");
    assert_eq!(
        c.physical_topic("tollgate.account-events"),
        "prod.account-events"
    );
    assert_eq!(c.physical_topic("tollgate.balances"), "tollgate.balances");
    assert_eq!(c.physical_topic("tollgate.alerts"), "tollgate.alerts");
    assert_eq!(c.physical_topic("other"), "other");
}

#[test]
fn unknown_fields_are_errors() {
    let err = toml::from_str::<KafkaConfig>("broker = [\"k:1\"]").unwrap_err();
    assert!(err.to_string().contains("broker"), "{err}");
    let err = toml::from_str::<KafkaConfig>("[topics]\nusage = \"x\"").unwrap_err();
    assert!(err.to_string().contains("usage"), "{err}");
}

#[test]
fn validate_lists_every_problem_with_its_field() {
    let c = KafkaConfig {
        brokers: vec!["good:9092".into(), "nohost".into(), "h:0".into()],
        replication_factor: 0,
        spool_path: PathBuf::new(),
        spool_max_bytes: 10,
        startup_timeout_ms: 0,
        client_id: " ".into(),
        producer: BTreeMap::from([
            ("linger.mss".into(), "5".into()),
            ("acks".into(), "maybe".into()),
        ]),
        consumer: BTreeMap::from([("group.id".into(), "x".into())]),
        ..KafkaConfig::default()
    };
    let mut c = c;
    c.topics.control = "bad topic!".into();
    c.topics.balances = c.topics.account_events.clone();
    c.partitions.control = 2;
    c.partitions.account_events = 0;
    let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
    for field in [
        "brokers[1]",
        "brokers[2]",
        "topics.control",
        "topics.balances",
        "partitions.control",
        "partitions.account_events",
        "replication_factor",
        "spool_path",
        "spool_max_bytes",
        "startup_timeout_ms",
        "client_id",
        "producer.\"linger.mss\"",
        "producer.\"acks\"",
        "consumer.\"group.id\"",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    assert!(!fields.iter().any(|f| f == "brokers[0]"));
    let err = c.validate().unwrap_err();
    assert!(matches!(err, KafkaLogError::Config(ref p) if p.len() == fields.len()));
    let text = err.to_string();
    assert!(text.contains("producer.\"linger.mss\": "), "{text}");
    assert!(text.contains("partitions.control: 2: must be 1"), "{text}");
}

#[test]
fn created_topics_get_their_policies() {
    let mut c = KafkaConfig::default();
    let specs = topic_specs(&c);
    let get = |name: &str| specs.iter().find(|s| s.name == name).unwrap().clone();
    let events = get("tollgate.account-events");
    assert_eq!(events.partitions, 12);
    assert_eq!(events.replication_factor, 3);
    assert!(events.configs.contains(&("retention.ms", "-1".into())));
    assert!(events
        .configs
        .contains(&("min.insync.replicas", "2".into())));
    for compacted in ["tollgate.control", "tollgate.balances", "tollgate.alerts"] {
        assert!(get(compacted)
            .configs
            .contains(&("cleanup.policy", "compact".into())));
    }
    assert_eq!(get("tollgate.control").partitions, 1);
    c.replication_factor = 1;
    assert!(topic_specs(&c)
        .iter()
        .all(|s| s.configs.iter().all(|(k, _)| *k != "min.insync.replicas")));
}
