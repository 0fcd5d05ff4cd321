//! The event-log interface every backend implements (embedded SQLite, Kafka).

use async_trait::async_trait;

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
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
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
}

/// Topic names shared by producers and consumers.
pub mod topics {
    /// Ledger inputs and usage, keyed by account id.
    pub const ACCOUNT_EVENTS: &str = "tollgate.account-events";
    /// Control-plane changes, keyed by object id (compacted in Kafka).
    pub const CONTROL: &str = "tollgate.control";
}
