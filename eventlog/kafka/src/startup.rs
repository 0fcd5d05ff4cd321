//! Startup checks: the cluster answers, the four topics exist (or are
//! created when allowed), the control topic has one partition.

use crate::config::KafkaConfig;
use crate::context::LogContext;
use crate::error::KafkaLogError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How a topic is created when `create_topics` is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs (`cleanup.policy`, `retention.ms`, …).
    pub configs: Vec<(&'static str, String)>,
}

/// The four topics as `create_topics` would create them.
pub fn topic_specs(config: &KafkaConfig) -> Vec<TopicSpec> {
    let rf = i32::from(config.replication_factor);
    // acks=all only protects against a broker loss when more than one
    // replica must have the record.
    let min_isr = (rf >= 2).then(|| ("min.insync.replicas", (rf - 1).min(2).to_string()));
    let partitions = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let with = |mut v: Vec<(&'static str, String)>| {
        v.extend(min_isr.clone());
        v
    };
    vec![
        TopicSpec {
            name: config.topics.account_events.clone(),
            partitions: partitions(config.partitions.account_events),
            replication_factor: rf,
            // Ledger inputs are replayed from the start: kept forever.
            configs: with(vec![
                ("cleanup.policy", "delete".into()),
                ("retention.ms", "-1".into()),
            ]),
        },
        TopicSpec {
            name: config.topics.control.clone(),
            partitions: partitions(config.partitions.control),
            replication_factor: rf,
            configs: with(vec![("cleanup.policy", "compact".into())]),
        },
        TopicSpec {
            name: config.topics.balances.clone(),
            partitions: partitions(config.partitions.balances),
            replication_factor: rf,
            configs: with(vec![("cleanup.policy", "compact".into())]),
        },
        // Keyed by alert id: compaction keeps one record per alert.
        TopicSpec {
            name: config.topics.alerts.clone(),
            partitions: partitions(config.partitions.alerts),
            replication_factor: rf,
            configs: with(vec![("cleanup.policy", "compact".into())]),
        },
    ]
}

/// Partition counts of every topic the cluster lists.
pub(crate) fn cluster_topics(
    meta: &BaseConsumer<LogContext>,
    config: &KafkaConfig,
) -> Result<BTreeMap<String, usize>, KafkaLogError> {
    let timeout = Duration::from_millis(config.startup_timeout_ms);
    let metadata =
        meta.fetch_metadata(None, timeout)
            .map_err(|source| KafkaLogError::Unreachable {
                brokers: config.brokers_list(),
                timeout_ms: config.startup_timeout_ms,
                source,
            })?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect())
}

/// Check (and when allowed, create) the four topics.
pub(crate) async fn ensure_topics(
    meta: Arc<BaseConsumer<LogContext>>,
    config: &KafkaConfig,
) -> Result<(), KafkaLogError> {
    let existing = blocking_topics(meta.clone(), config).await?;
    let specs = topic_specs(config);
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .collect();
    let existing = if missing.is_empty() {
        existing
    } else if config.create_topics {
        create(config, &missing).await?;
        blocking_topics(meta, config).await?
    } else {
        return Err(KafkaLogError::MissingTopics {
            missing: missing.iter().map(|s| s.name.clone()).collect(),
            brokers: config.brokers_list(),
        });
    };
    match existing.get(&config.topics.control) {
        Some(1) => Ok(()),
        Some(n) => Err(KafkaLogError::ControlPartitions {
            topic: config.topics.control.clone(),
            partitions: *n,
        }),
        // Just created but not yet in the metadata: created with one.
        None => Ok(()),
    }
}

async fn blocking_topics(
    meta: Arc<BaseConsumer<LogContext>>,
    config: &KafkaConfig,
) -> Result<BTreeMap<String, usize>, KafkaLogError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || cluster_topics(&meta, &config))
        .await
        .map_err(|e| KafkaLogError::Join(e.to_string()))?
}

async fn create(config: &KafkaConfig, specs: &[&TopicSpec]) -> Result<(), KafkaLogError> {
    let admin: AdminClient<LogContext> = config.admin_client().create_with_context(LogContext)?;
    let timeout = Duration::from_millis(config.startup_timeout_ms);
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = tokio::time::timeout(timeout, admin.create_topics(&new_topics, &options))
        .await
        .map_err(|_| KafkaLogError::CreateTopic {
            topic: specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!("no answer within {} ms", config.startup_timeout_ms),
        })??;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created Kafka topic"),
            // Another instance was faster: fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaLogError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Create Tollgate's topics, under their default names, on a librdkafka
/// mock cluster (which does not answer CreateTopics): account events,
/// balances and alerts with `partitions` partitions each, control with one.
/// For tests and benchmarks.
pub fn create_mock_topics<C: rdkafka::ClientContext>(
    cluster: &rdkafka::mocking::MockCluster<'_, C>,
    partitions: i32,
) -> rdkafka::error::KafkaResult<()> {
    let defaults = crate::config::TopicNames::default();
    cluster.create_topic(&defaults.account_events, partitions, 1)?;
    cluster.create_topic(&defaults.control, 1, 1)?;
    cluster.create_topic(&defaults.balances, partitions, 1)?;
    cluster.create_topic(&defaults.alerts, partitions, 1)
}
