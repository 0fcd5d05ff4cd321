//! The `[kafka]` configuration section and the librdkafka client settings
//! derived from it.

use crate::error::{ConfigProblem, KafkaLogError};
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tollgate_eventlog::topics;

/// Logical name of the balances topic (core names the other two).
pub const BALANCES_TOPIC: &str = "tollgate.balances";

/// Kafka backend settings. Every field has a default, so an empty section
/// is valid apart from `brokers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port` (or `scheme://host:port`) each; the
    /// client discovers the rest of the cluster from them.
    pub brokers: Vec<String>,
    /// Topic names in the cluster.
    pub topics: TopicNames,
    /// Partitions per topic, used only when creating topics.
    pub partitions: TopicPartitions,
    /// Replication factor, used only when creating topics.
    pub replication_factor: u16,
    /// Create missing topics at startup (needs the CreateTopics permission);
    /// when false a missing topic is a startup error naming it.
    pub create_topics: bool,
    /// The local durable spool (an SQLite file): every appended record is
    /// committed here first and deleted once Kafka acknowledged it.
    pub spool_path: PathBuf,
    /// `normal` survives a process crash; `full` also a power loss (fsync
    /// on every group commit).
    pub spool_durability: SpoolDurability,
    /// Largest size of the spool file in bytes; 0 means bounded only by the
    /// disk. When full, newly appended records are dropped (loudly).
    pub spool_max_bytes: u64,
    /// Bound on reaching the cluster at startup (metadata, topic checks),
    /// and on a subscription's first group assignment.
    pub startup_timeout_ms: u64,
    /// Bound on waiting for Kafka in `flush` (delivery of everything
    /// appended before it) and in `read` (fetching records known to exist).
    pub delivery_timeout_ms: u64,
    /// `client.id` of every client this backend creates.
    pub client_id: String,
    /// librdkafka producer properties, applied last (they override ours).
    pub producer: BTreeMap<String, String>,
    /// librdkafka consumer properties (readers and group members), applied last.
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["localhost:9092".to_owned()],
            topics: TopicNames::default(),
            partitions: TopicPartitions::default(),
            replication_factor: 3,
            create_topics: false,
            spool_path: PathBuf::from("data/kafka-spool.db"),
            spool_durability: SpoolDurability::Normal,
            spool_max_bytes: 0,
            startup_timeout_ms: 10_000,
            delivery_timeout_ms: 30_000,
            client_id: "tollgate".to_owned(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// Names of the four topics in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicNames {
    /// Ledger inputs (usage, purchases, adjustments, ticks), key = account
    /// id; retention unlimited when created here.
    pub account_events: String,
    /// Control-plane changes, key = object id; compacted.
    pub control: String,
    /// Balance updates, key = account id; compacted.
    pub balances: String,
    /// Alerts the ledger raised, key = alert id; compacted (the ledger
    /// reads it from the start to never raise an id twice).
    pub alerts: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            account_events: topics::ACCOUNT_EVENTS.to_owned(),
            control: topics::CONTROL.to_owned(),
            balances: BALANCES_TOPIC.to_owned(),
            alerts: topics::ALERTS.to_owned(),
        }
    }
}

/// Partition counts used when creating the topics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicPartitions {
    /// The unit of ledger parallelism: more partitions, more ledger members.
    pub account_events: u32,
    /// Must be 1: the control plane replays one totally ordered partition.
    pub control: u32,
    pub balances: u32,
    pub alerts: u32,
}

impl Default for TopicPartitions {
    fn default() -> Self {
        TopicPartitions {
            account_events: 12,
            control: 1,
            balances: 12,
            alerts: 12,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolDurability {
    #[default]
    Normal,
    Full,
}

/// Kafka's default `message.max.bytes` on the producer side.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room for the record and batch headers around key and payload.
const RECORD_OVERHEAD: usize = 1_024;

/// Producer properties the design depends on; overriding them is allowed
/// (the maps are applied last) but logged.
pub(crate) const PRODUCER_GUARANTEES: &[&str] = &[
    "enable.idempotence",
    "acks",
    "enable.gapless.guarantee",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "max.in.flight.requests.per.connection",
];

/// Problems found so far, in the order they are reported.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, field: &str, message: String) {
        self.0.push(ConfigProblem {
            field: field.to_owned(),
            message,
        });
    }
}

impl KafkaConfig {
    /// Every problem in the configuration, each naming its field.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Problems::default();
        self.cluster_problems(&mut problems);
        self.local_problems(&mut problems);
        self.client_problems(&mut problems);
        problems.0
    }

    /// Brokers, topics, partitions, replication.
    fn cluster_problems(&self, problems: &mut Problems) {
        if self.brokers.is_empty() {
            problems.add(
                "brokers",
                "at least one bootstrap server is required".into(),
            );
        }
        for (i, broker) in self.brokers.iter().enumerate() {
            if let Err(why) = check_broker(broker) {
                problems.add(&format!("brokers[{i}]"), format!("{broker:?}: {why}"));
            }
        }
        let names = [
            ("topics.account_events", &self.topics.account_events),
            ("topics.control", &self.topics.control),
            ("topics.balances", &self.topics.balances),
            ("topics.alerts", &self.topics.alerts),
        ];
        for (field, name) in names {
            if let Err(why) = check_topic_name(name) {
                problems.add(field, format!("{name:?}: {why}"));
            }
        }
        for (i, (field, name)) in names.iter().enumerate() {
            if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
                problems.add(
                    field,
                    format!("{name:?} is also {other}; topics must differ"),
                );
            }
        }
        for (field, n) in [
            ("partitions.account_events", self.partitions.account_events),
            ("partitions.balances", self.partitions.balances),
            ("partitions.alerts", self.partitions.alerts),
        ] {
            if n == 0 || n > i32::MAX as u32 {
                problems.add(field, format!("{n}: must be at least 1"));
            }
        }
        if self.partitions.control != 1 {
            problems.add(
                "partitions.control",
                format!(
                    "{}: must be 1 (the control plane replays one totally ordered partition)",
                    self.partitions.control
                ),
            );
        }
        if self.replication_factor == 0 || self.replication_factor > i16::MAX as u16 {
            problems.add(
                "replication_factor",
                format!("{}: must be 1..=32767", self.replication_factor),
            );
        }
    }

    /// The spool and the timeouts.
    fn local_problems(&self, problems: &mut Problems) {
        if self.spool_path.as_os_str().is_empty() {
            problems.add("spool_path", "must name a file".into());
        }
        if self.spool_max_bytes != 0 && self.spool_max_bytes < 1 << 20 {
            problems.add(
                "spool_max_bytes",
                format!(
                    "{}: use 0 (no limit) or at least 1048576 (1 MiB)",
                    self.spool_max_bytes
                ),
            );
        }
        for (field, ms) in [
            ("startup_timeout_ms", self.startup_timeout_ms),
            ("delivery_timeout_ms", self.delivery_timeout_ms),
        ] {
            if ms == 0 || ms > i32::MAX as u64 {
                problems.add(field, format!("{ms}: must be 1..=2147483647"));
            }
        }
    }

    /// The client id and the librdkafka settings passed through.
    fn client_problems(&self, problems: &mut Problems) {
        if self.client_id.trim().is_empty() {
            problems.add("client_id", "must not be empty".into());
        }
        for (section, map) in [("producer", &self.producer), ("consumer", &self.consumer)] {
            for (key, value) in map {
                let field = format!("{section}.\"{key}\"");
                if key == "group.id" && section == "consumer" {
                    problems.add(
                        &field,
                        "set per subscription by its group; remove it".into(),
                    );
                    continue;
                }
                // librdkafka checks names and values when they are set.
                if let Err(err) = ClientConfig::new().set(key, value).create_native_config() {
                    problems.add(&field, err.to_string());
                }
            }
        }
        if let Some(value) = self.producer.get("message.max.bytes") {
            if value.parse::<usize>().is_err() {
                problems.add(
                    "producer.\"message.max.bytes\"",
                    format!("{value:?} is not a byte count"),
                );
            }
        }
    }

    /// Ok, or an error listing every problem with its field.
    pub fn validate(&self) -> Result<(), KafkaLogError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(KafkaLogError::Config(problems))
        }
    }

    /// The topic in the cluster for a topic name used in code: the four
    /// Tollgate topics map to their configured names, any other name is used
    /// as it is.
    pub fn physical_topic<'a>(&'a self, logical: &'a str) -> &'a str {
        match logical {
            topics::ACCOUNT_EVENTS => &self.topics.account_events,
            topics::CONTROL => &self.topics.control,
            BALANCES_TOPIC => &self.topics.balances,
            topics::ALERTS => &self.topics.alerts,
            other => other,
        }
    }

    pub(crate) fn brokers_list(&self) -> String {
        self.brokers.join(",")
    }

    /// Largest key + payload a record may have: beyond it Kafka would refuse
    /// it forever, so `append` refuses it instead of spooling it.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.producer
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
            .saturating_sub(RECORD_OVERHEAD)
    }

    fn base_client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers_list())
            .set("client.id", &self.client_id)
            // Topics are created deliberately (create_topics), never by a typo.
            .set("allow.auto.create.topics", "false")
            // Come back quickly after an outage (librdkafka's default is 10 s).
            .set("reconnect.backoff.max.ms", "2000");
        c
    }

    /// The spool forwarder's producer.
    pub(crate) fn producer_client(&self) -> ClientConfig {
        let mut c = self.base_client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // A permanent error on one batch stops the producer instead of
            // letting later batches of the partition through (a gap would
            // reorder a key once the forwarder re-sends).
            .set("enable.gapless.guarantee", "true")
            // Never time out locally: librdkafka retries in order for as long
            // as the broker is away; the spool bounds memory, not a timeout.
            .set("message.timeout.ms", "0")
            .set("compression.type", compression())
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "65536")
            // Same key → same partition as Java clients compute it.
            .set("partitioner", "murmur2_random");
        self.apply(&mut c, &self.producer);
        c
    }

    /// The producer for records written straight to a partition (ticks):
    /// a timeout instead of the spool, as losing one is harmless.
    pub(crate) fn direct_producer_client(&self) -> ClientConfig {
        let mut c = self.producer_client();
        c.set("enable.gapless.guarantee", "false")
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string());
        c
    }

    /// A partition reader for `read` (assigned, never subscribed; the group
    /// id is required by librdkafka for assign but nothing is committed).
    pub(crate) fn reader_client(&self) -> ClientConfig {
        let mut c = self.base_client();
        c.set("group.id", format!("{}-reader", self.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A re-positioned reader waits for its outstanding long poll:
            // keep that short (idle cost: ten small fetches a second).
            .set("fetch.wait.max.ms", "100")
            // Readers are cached per partition: bound each one's prefetch.
            .set("queued.max.messages.kbytes", "8192")
            .set("auto.offset.reset", "earliest");
        self.apply(&mut c, &self.consumer);
        c
    }

    /// A consumer-group member for `subscribe`.
    pub(crate) fn group_client(&self, group: &str) -> ClientConfig {
        let mut c = self.base_client();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        self.apply(&mut c, &self.consumer);
        c
    }

    /// Metadata and admin requests.
    pub(crate) fn admin_client(&self) -> ClientConfig {
        let mut c = self.base_client();
        self.apply(&mut c, &self.consumer);
        c.remove("group.id");
        c
    }

    fn apply(&self, c: &mut ClientConfig, overrides: &BTreeMap<String, String>) {
        for (k, v) in overrides {
            c.set(k, v);
        }
    }
}

/// lz4 is compiled into librdkafka by rdkafka's default build; zstd needs
/// an optional feature. Checked rather than assumed.
pub(crate) fn compression() -> &'static str {
    let features = ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    if has("lz4") {
        "lz4"
    } else if has("zstd") {
        "zstd"
    } else {
        "none"
    }
}

fn check_broker(broker: &str) -> Result<(), String> {
    let rest = broker.split_once("://").map_or(broker, |(_, r)| r);
    let (host, port) = match rest.rsplit_once(':') {
        Some(hp) => hp,
        None => return Err("expected host:port".into()),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("missing host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is not 1..=65535")),
    }
}

/// Kafka's own rule for topic names.
fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not topic names".into());
    }
    if name.len() > 249 {
        return Err("longer than 249 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}
