use std::fmt;
use tollgate_eventlog::EventLogError;

/// One configuration problem, naming its field (relative to `[kafka]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that can go wrong in the Kafka backend.
#[derive(Debug, thiserror::Error)]
pub enum KafkaLogError {
    #[error("invalid kafka configuration: {}", join(.0))]
    Config(Vec<ConfigProblem>),

    #[error("cannot reach the Kafka brokers {brokers} within {timeout_ms} ms: {source}")]
    Unreachable {
        brokers: String,
        timeout_ms: u64,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    #[error(
        "missing Kafka topics: {}. Create them (e.g. `kafka-topics.sh --bootstrap-server {brokers} \
         --create --topic NAME --partitions N --replication-factor R`, with \
         cleanup.policy=compact for the control, balances and alerts topics and retention.ms=-1 for \
         account events) or set kafka.create_topics = true",
        missing.join(", ")
    )]
    MissingTopics {
        missing: Vec<String>,
        brokers: String,
    },

    #[error("creating Kafka topic {topic} failed: {reason}")]
    CreateTopic { topic: String, reason: String },

    #[error("Kafka topic {topic} has {partitions} partitions; the control plane needs exactly 1")]
    ControlPartitions { topic: String, partitions: usize },

    #[error("Kafka topic {0} does not exist")]
    UnknownTopic(String),

    #[error("Kafka topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },

    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    #[error("event spool {path}: {source}")]
    Spool {
        path: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("event spool {path} is in use by another process")]
    SpoolLocked { path: String },

    #[error("event spool {path}: {source}")]
    SpoolIo {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{remaining} records not yet delivered to Kafka after {timeout_ms} ms; they stay \
         spooled and are delivered once the brokers answer"
    )]
    DeliveryTimeout { timeout_ms: u64, remaining: u64 },

    #[error("no records from Kafka topic {topic} partition {partition} within {timeout_ms} ms although offset {from} exists")]
    ReadTimeout {
        topic: String,
        partition: u32,
        from: u64,
        timeout_ms: u64,
    },

    #[error("record of {size} bytes exceeds the {max}-byte limit (producer message.max.bytes)")]
    RecordTooLarge { size: usize, max: usize },

    #[error("offset {0} is out of range")]
    Offset(u64),

    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    #[error("background task failed: {0}")]
    Join(String),

    #[error("event log is closed")]
    Closed,
}

impl From<KafkaLogError> for EventLogError {
    fn from(err: KafkaLogError) -> Self {
        match err {
            KafkaLogError::Closed => EventLogError::Closed,
            other => EventLogError::Storage(other.to_string()),
        }
    }
}

impl KafkaLogError {
    pub(crate) fn spool(path: &std::path::Path) -> impl FnOnce(rusqlite::Error) -> Self + '_ {
        move |source| KafkaLogError::Spool {
            path: path.display().to_string(),
            source,
        }
    }
}
