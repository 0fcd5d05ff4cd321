//! Ledger ticks: time on the log, written into every partition of the
//! account-events topic so expiry happens for accounts with no traffic.

use crate::error::KafkaLogError;
use crate::log::KafkaEventLog;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tollgate_core::billing::Tick;
use tollgate_core::{Envelope, EventBody, ENVELOPE_VERSION};
use tollgate_eventlog::LogRecord;

/// Record key of every tick.
pub const TICK_KEY: &str = "tick";

/// `{"v":2,"type":"tick","data":{"at":"<RFC 3339>"}}` (the current envelope version) for now.
pub fn tick_payload(at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let envelope = Envelope {
        v: ENVELOPE_VERSION,
        body: EventBody::Tick(Tick { at }),
    };
    // Serializing a struct of a timestamp cannot fail; an empty payload
    // would be skipped by readers anyway.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

impl KafkaEventLog {
    /// Write one tick, stamped now, into every partition of `topic`
    /// (straight to Kafka, not through the spool: a lost tick is harmless,
    /// the next one carries a later time). Returns how many were written.
    pub async fn write_ticks(&self, topic: &str) -> Result<u32, KafkaLogError> {
        let partitions = self.partition_count(topic).await?;
        let payload = tick_payload(chrono::Utc::now());
        let sends = (0..partitions).map(|partition| {
            self.append_to_partition(
                LogRecord {
                    topic: topic.to_owned(),
                    key: TICK_KEY.to_owned(),
                    payload: payload.clone(),
                },
                partition,
            )
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(partitions)
    }
}

/// Write a tick into every partition of `topic` every `interval` until the
/// task is aborted or the log is closed. Failures are logged and the next
/// interval tries again.
pub fn spawn_ticker(
    log: Arc<KafkaEventLog>,
    topic: impl Into<String>,
    interval: Duration,
) -> JoinHandle<()> {
    let topic = topic.into();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if log.is_closed() {
                break;
            }
            match log.write_ticks(&topic).await {
                Ok(n) => tracing::trace!(topic, partitions = n, "ticks written"),
                Err(KafkaLogError::Closed) => break,
                Err(e) => tracing::warn!(topic, error = %e, "writing ledger ticks failed"),
            }
        }
    })
}
