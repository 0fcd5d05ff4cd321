//! The event-log interface every backend implements (embedded SQLite, Kafka).

mod backoff;
pub mod group_commit;

pub use backoff::Backoff;

use async_trait::async_trait;
use std::sync::Arc;
use tollgate_core::UsageEvent;

/// A record to append: `key` decides ordering (one key, one total order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

/// A record as stored, with its position in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    /// Shared, not copied, when in-process readers take the same record.
    pub payload: bytes::Bytes,
    pub timestamp_ms: i64,
    /// The usage event `payload` encodes, when this process wrote the
    /// record and still holds it: in-process readers use it instead of
    /// decoding the payload. `None` when read back from storage or Kafka.
    pub usage: Option<Arc<UsageEvent>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log is closed")]
    Closed,
    #[error("event log storage failed: {0}")]
    Storage(String),
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Queue a record for durable append. Returns once queued (waiting only
    /// if the bounded queue is full); durability follows by group commit.
    async fn append(&self, record: LogRecord) -> Result<(), EventLogError>;

    /// Queue without waiting; gives the record back when the queue is full
    /// (the caller then falls back to `append`).
    fn try_append(&self, record: LogRecord) -> Result<(), LogRecord>;

    /// As `try_append`, for a record whose payload encodes `usage`: a
    /// backend that serves in-process readers from memory hands them the
    /// event itself. Others append the record alone.
    fn try_append_usage(&self, record: LogRecord, usage: Arc<UsageEvent>) -> Result<(), LogRecord> {
        let _ = usage;
        self.try_append(record)
    }

    /// Wait until every record queued before this call is durable.
    async fn flush(&self) -> Result<(), EventLogError>;

    /// Read up to `max` records of `topic`/`partition` from `from_offset` on.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, EventLogError>;

    /// Whether appends currently succeed (for readiness checks).
    fn is_writable(&self) -> bool;

    /// Partitions of `topic` (the embedded log has one).
    async fn partitions(&self, topic: &str) -> Result<u32, EventLogError>;

    /// Consume `topic` as a member of consumer `group`. For each partition
    /// assigned to this member the subscription starts at the position the
    /// consumer's own durable state gives (`positions`), else at the start.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        positions: Arc<dyn PositionSource>,
    ) -> Result<Box<dyn Subscription>, EventLogError>;
}

/// Where a consumer left off, read from the consumer's own durable state,
/// which records it in the same transaction as the effects it applied (so a
/// crash never separates an effect from its position).
pub trait PositionSource: Send + Sync {
    /// The next offset to read on `partition`, or None to start at the beginning.
    fn next_offset(&self, topic: &str, partition: u32) -> Option<u64>;
}

/// Records from one partition, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub partition: u32,
    pub records: Vec<StoredRecord>,
}

/// A consumer's stream of batches (at-least-once: after a crash or a
/// rebalance, records after the last durable position come again, so
/// consumers deduplicate by event id).
#[async_trait]
pub trait Subscription: Send {
    /// The next non-empty batch of at most `max` records, waiting up to
    /// `wait` for one; Ok(None) when none arrived in time.
    async fn next_batch(
        &mut self,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Option<Batch>, EventLogError>;

    /// Report that everything before `next_offset` on `partition` is
    /// durably applied (Kafka commits it, for lag and monitoring).
    async fn commit(&mut self, partition: u32, next_offset: u64) -> Result<(), EventLogError>;

    /// Partitions currently assigned to this member.
    fn assigned(&self) -> Vec<u32>;
}

/// Topic names shared by producers and consumers.
pub mod topics {
    /// Ledger inputs and usage, keyed by account id.
    pub const ACCOUNT_EVENTS: &str = "tollgate.account-events";
    /// Control-plane changes, keyed by object id (compacted in Kafka).
    pub const CONTROL: &str = "tollgate.control";
    /// Balance updates from the ledger, keyed by account id (compacted in Kafka).
    pub const BALANCES: &str = "tollgate.balances";
    /// Alerts the ledger raises, keyed by alert id (compacted in Kafka).
    pub const ALERTS: &str = "tollgate.alerts";
}
