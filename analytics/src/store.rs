//! The usage store interface both backends (ClickHouse, SQLite) implement.

use crate::error::AnalyticsError;
use crate::model::{UsageGroup, UsageQuery, UsageRecord};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Records of one log partition to apply, in log order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    pub partition: u32,
    /// Usage rows, ascending by `log_offset`. Shared: a store moves the
    /// batch to a blocking thread and the sink keeps it for a retry.
    pub rows: Arc<[UsageRecord]>,
    /// The log position after this batch (it may cover skipped records
    /// after the last row).
    pub next_offset: u64,
}

/// What a retention run dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// `YYYYMM` months dropped (whole partitions).
    pub months_dropped: Vec<u32>,
    /// Rows deleted (SQLite) — ClickHouse drops parts without counting.
    pub rows_deleted: u64,
}

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// `clickhouse` or `sqlite`, for metrics labels and logs.
    fn backend(&self) -> &'static str;

    /// Apply pending schema migrations. Idempotent; safe to run at every start.
    async fn migrate(&self) -> Result<(), AnalyticsError>;

    /// Per log partition, the next offset to consume: everything before it
    /// is durably stored. Read from the store itself, so a crash can never
    /// separate stored rows from their position.
    async fn positions(&self) -> Result<BTreeMap<u32, u64>, AnalyticsError>;

    /// Durably store a batch. Idempotent: rows at or before the stored
    /// position (or with an event id already stored) are not stored again.
    /// Returns the number of rows newly stored.
    async fn write(&self, batch: &WriteBatch) -> Result<u64, AnalyticsError>;

    /// Answer a usage query.
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, AnalyticsError>;

    /// Drop data of months before the current month minus `keep_months`
    /// (`keep_months = 3` in June keeps March..June).
    async fn apply_retention(
        &self,
        keep_months: u32,
        now: DateTime<Utc>,
    ) -> Result<RetentionOutcome, AnalyticsError>;

    /// The consumer's partition assignment changed: positions cached in
    /// memory may be stale (another instance may have written meanwhile).
    fn partitions_reassigned(&self) {}
}

/// The first `YYYYMM` kept by a retention of `keep_months` at `now`.
pub fn retention_cutoff(keep_months: u32, now: DateTime<Utc>) -> u32 {
    use chrono::Datelike;
    let months_since_zero = now.year() as i64 * 12 + (now.month0() as i64) - keep_months as i64;
    let year = months_since_zero.div_euclid(12);
    let month = months_since_zero.rem_euclid(12) + 1;
    (year.max(0) as u32) * 100 + month as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cutoff_counts_whole_months_back() {
        let june = Utc
            .with_ymd_and_hms(2025, 6, 15, 0, 0, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(retention_cutoff(3, june), 202503);
        assert_eq!(retention_cutoff(0, june), 202506);
        assert_eq!(retention_cutoff(6, june), 202412);
        assert_eq!(retention_cutoff(17, june), 202401);
    }
}
