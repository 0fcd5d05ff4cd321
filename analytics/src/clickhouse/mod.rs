//! The ClickHouse usage store, through the official `clickhouse` crate over HTTP.
//!
//! Exactly-once without transactions: every raw row carries its log
//! position (partition, offset); the store resumes from the highest
//! position ClickHouse holds. Each INSERT carries rows of one month only,
//! below `max_insert_block_size`, so it is one block, one part per table:
//! it lands whole or not at all. After any failed insert the store re-reads
//! its position before retrying (an insert that timed out may have landed),
//! and checks every rollup against the raw table: rollups record the
//! highest offset they aggregated, and one left behind by a crash between
//! the raw part and its views is re-derived from the raw rows.

pub mod sql;

use crate::error::AnalyticsError;
use crate::model::{
    ms_to_time, parse_money, sort_groups, us_to_ms, CostTotals, GroupBy, LatencyPercentiles,
    TokenTotals, TtftPercentiles, UsageGroup, UsageQuery, UsageRecord,
};
use crate::store::{retention_cutoff, RetentionOutcome, UsageStore, WriteBatch};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clickhouse::Row;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sql::Source;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;
use tollgate_core::Endpoint;

/// Response/request compression. `none` is required for ClickHouse 18.16,
/// whose LZ4 framing the crate cannot read; `lz4` saves bandwidth on
/// current servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClickHouseCompression {
    #[default]
    None,
    Lz4,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding the analytics tables; created by `migrate`.
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Row type validation (`RowBinaryWithNamesAndTypes`). Must stay off
    /// for ClickHouse 18.16, which lacks that format.
    pub validation: bool,
    pub compression: ClickHouseCompression,
    /// Bound on any one request (insert or query).
    pub request_timeout_ms: u64,
    /// Answer aligned queries from the hour/day rollups. Off: every
    /// query scans raw rows (exact percentiles, slower on large ranges).
    pub use_rollups: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "tollgate".into(),
            user: None,
            password: None,
            validation: false,
            compression: ClickHouseCompression::None,
            request_timeout_ms: 30_000,
            use_rollups: true,
        }
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("validation", &self.validation)
            .field("compression", &self.compression)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("use_rollups", &self.use_rollups)
            .finish()
    }
}

/// One raw row as sent in RowBinary; field order = `sql::raw_columns()`.
#[derive(Row, Serialize)]
struct RawRow<'a> {
    event_id: &'a str,
    log_partition: u32,
    log_offset: u64,
    account_id: &'a str,
    access_key_id: &'a str,
    started_at: u32,
    started_ms: u64,
    provider: &'a str,
    model: &'a str,
    model_requested: &'a str,
    credential_source: &'a str,
    client_api: &'a str,
    status: u16,
    streamed: u8,
    error_kind: &'a str,
    tokens_input: u64,
    tokens_cached_input: u64,
    tokens_cache_write_5m: u64,
    tokens_cache_write_1h: u64,
    tokens_output: u64,
    fee: i128,
    upstream_cost: i128,
    latency_us: u64,
    ttft_us: u64,
    has_ttft: u8,
    tokens_reasoning: u64,
    endpoint: &'static str,
    end_user: &'a str,
    tag_keys: Vec<&'a str>,
    tag_values: Vec<&'a str>,
}

impl<'a> RawRow<'a> {
    fn new(r: &'a UsageRecord) -> RawRow<'a> {
        RawRow {
            event_id: &r.event_id,
            log_partition: r.log_partition,
            log_offset: r.log_offset,
            account_id: &r.account_id,
            access_key_id: &r.access_key_id,
            // `UsageRecord::from_event` bounds started_ms to the DateTime range.
            started_at: u32::try_from(r.started_ms.div_euclid(1000)).unwrap_or(u32::MAX),
            started_ms: u64::try_from(r.started_ms).unwrap_or(0),
            provider: &r.provider,
            model: &r.model,
            model_requested: &r.model_requested,
            credential_source: &r.credential_source,
            client_api: &r.client_api,
            status: r.status,
            streamed: u8::from(r.streamed),
            error_kind: &r.error_kind,
            tokens_input: r.tokens.input,
            tokens_cached_input: r.tokens.cached_input,
            tokens_cache_write_5m: r.tokens.cache_write_5m,
            tokens_cache_write_1h: r.tokens.cache_write_1h,
            tokens_output: r.tokens.output,
            fee: crate::model::money_to_i128(r.fee),
            upstream_cost: crate::model::money_to_i128(r.upstream_cost),
            latency_us: r.latency_us,
            ttft_us: r.ttft_us.unwrap_or(0),
            has_ttft: u8::from(r.ttft_us.is_some()),
            tokens_reasoning: r.tokens.reasoning,
            endpoint: r.endpoint.as_str(),
            end_user: r.end_user.as_deref().unwrap_or_default(),
            tag_keys: r.tags.keys().map(String::as_str).collect(),
            tag_values: r.tags.values().map(String::as_str).collect(),
        }
    }
}

/// One result row of `sql::usage_query` (RowBinary from the server, or
/// JSON from chdb in tests).
#[derive(Clone, Debug, Row, Deserialize)]
pub struct AggRow {
    pub g_bucket: u32,
    pub g_provider: String,
    pub g_model: String,
    pub g_access_key_id: String,
    pub g_status: u16,
    pub g_endpoint: String,
    pub g_end_user: String,
    pub g_has_tag: u8,
    pub g_tag: String,
    pub m_requests: u64,
    pub m_errors: u64,
    pub m_tokens_input: u64,
    pub m_tokens_cached_input: u64,
    pub m_tokens_cache_write_5m: u64,
    pub m_tokens_cache_write_1h: u64,
    pub m_tokens_output: u64,
    pub m_tokens_reasoning: u64,
    pub m_fee: String,
    pub m_upstream_cost: String,
    pub m_latency: Vec<f64>,
    pub m_ttft_n: u64,
    pub m_ttft: Vec<f64>,
}

/// Turn query rows into result groups (shared by the store and the chdb test).
pub fn groups_from_rows(
    query: &UsageQuery,
    rows: Vec<AggRow>,
) -> Result<Vec<UsageGroup>, AnalyticsError> {
    let mut groups = Vec::with_capacity(rows.len());
    // GROUP BY only constants (no grouping asked) aggregates like no GROUP
    // BY at all, yielding one all-zero row over no input: not a group.
    for row in rows.into_iter().filter(|r| r.m_requests > 0) {
        let level = |values: &[f64], i: usize, present: bool| -> Option<f64> {
            if present {
                values.get(i).map(|v| us_to_ms(*v))
            } else {
                None
            }
        };
        groups.push(UsageGroup {
            bucket_start: match query.bucket {
                Some(_) => Some(ms_to_time(i64::from(row.g_bucket) * 1000)?),
                None => None,
            },
            provider: query.groups(GroupBy::Provider).then_some(row.g_provider),
            model: query.groups(GroupBy::Model).then_some(row.g_model),
            access_key_id: query
                .groups(GroupBy::AccessKey)
                .then_some(row.g_access_key_id),
            status: query.groups(GroupBy::Status).then_some(row.g_status),
            endpoint: if query.groups(GroupBy::Endpoint) {
                Some(Endpoint::parse(&row.g_endpoint).ok_or_else(|| {
                    AnalyticsError::Corrupt(format!("stored endpoint {:?}", row.g_endpoint))
                })?)
            } else {
                None
            },
            // Stored `''`: the request declared no end user.
            end_user: query
                .groups(GroupBy::EndUser)
                .then(|| Some(row.g_end_user).filter(|u| !u.is_empty())),
            tag: query
                .groups(GroupBy::Tag)
                .then(|| (row.g_has_tag != 0).then_some(row.g_tag)),
            requests: row.m_requests,
            errors: row.m_errors,
            tokens: TokenTotals {
                input: row.m_tokens_input,
                cached_input: row.m_tokens_cached_input,
                cache_write_5m: row.m_tokens_cache_write_5m,
                cache_write_1h: row.m_tokens_cache_write_1h,
                output: row.m_tokens_output,
                reasoning: row.m_tokens_reasoning,
            },
            cost: CostTotals {
                fee: parse_money(&row.m_fee)?,
                upstream: parse_money(&row.m_upstream_cost)?,
            },
            latency_ms: LatencyPercentiles {
                p50: level(&row.m_latency, 0, row.m_requests > 0),
                p95: level(&row.m_latency, 1, row.m_requests > 0),
                p99: level(&row.m_latency, 2, row.m_requests > 0),
            },
            ttft_ms: TtftPercentiles {
                p50: level(&row.m_ttft, 0, row.m_ttft_n > 0),
                p95: level(&row.m_ttft, 1, row.m_ttft_n > 0),
            },
        });
    }
    sort_groups(&mut groups);
    Ok(groups)
}

#[derive(Row, Deserialize)]
struct PositionRow {
    log_partition: u32,
    next_offset: u64,
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
    max_offset: u64,
}

#[derive(Row, Deserialize)]
struct PartitionRow {
    table: String,
    partition: String,
}

#[derive(Row, Deserialize)]
struct VersionRow {
    version: u32,
}

#[derive(Row, Deserialize)]
struct CountRow {
    n: u64,
}

/// Row counts for checking exactly-once delivery (see `consistency`).
/// Field order follows `sql::consistency_counts` (and `sql::ROLLUPS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Row, Deserialize)]
pub struct Consistency {
    /// Rows in the raw table.
    pub raw_rows: u64,
    /// Distinct event ids in the raw table (== raw_rows unless duplicated).
    pub raw_events: u64,
    /// Events counted by each rollup (== raw_rows unless one is off).
    pub usage_rollup_day: u64,
    pub usage_rollup_all_hour: u64,
    pub usage_rollup_all_day: u64,
    pub usage_rollup_all_model_hour: u64,
}

impl Consistency {
    /// Every count: raw rows, distinct events, then each rollup's events.
    pub fn counts(&self) -> [u64; 6] {
        [
            self.raw_rows,
            self.raw_events,
            self.usage_rollup_day,
            self.usage_rollup_all_hour,
            self.usage_rollup_all_day,
            self.usage_rollup_all_model_hour,
        ]
    }

    /// True when each of `events` events is stored exactly once everywhere.
    pub fn exactly(&self, events: u64) -> bool {
        self.counts().iter().all(|c| *c == events)
    }
}

/// What the store knows about one log partition.
#[derive(Clone, Copy, Debug)]
struct PartitionState {
    next_offset: u64,
}

pub struct ClickHouseStore {
    client: clickhouse::Client,
    /// Same server without a database (to create it).
    server: clickhouse::Client,
    config: ClickHouseConfig,
    /// Known positions; cleared after a failed insert or a reassignment so
    /// the next write re-reads (and repairs) from ClickHouse first.
    known: Mutex<HashMap<u32, PartitionState>>,
    /// Per partition, the offsets (first, last) of an insert that failed
    /// without us knowing whether it landed: if it did, its rows count as
    /// written by the retry that finds them (for `rows_inserted`).
    unconfirmed: Mutex<HashMap<u32, (u64, u64)>>,
}

impl ClickHouseStore {
    pub fn new(config: ClickHouseConfig) -> ClickHouseStore {
        let mut server = clickhouse::Client::default()
            .with_url(config.url.clone())
            .with_validation(config.validation)
            .with_compression(match config.compression {
                ClickHouseCompression::None => clickhouse::Compression::None,
                ClickHouseCompression::Lz4 => clickhouse::Compression::Lz4,
            });
        if let Some(user) = &config.user {
            server = server.with_user(user.clone());
        }
        if let Some(password) = &config.password {
            server = server.with_password(password.clone());
        }
        let client = server.clone().with_database(config.database.clone());
        ClickHouseStore {
            client,
            server,
            config,
            known: Mutex::new(HashMap::new()),
            unconfirmed: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ClickHouseConfig {
        &self.config
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms.max(1))
    }

    async fn bounded<T, F>(&self, fut: F) -> Result<T, AnalyticsError>
    where
        F: Future<Output = Result<T, clickhouse::error::Error>>,
    {
        match tokio::time::timeout(self.timeout(), fut).await {
            Ok(result) => result.map_err(AnalyticsError::from),
            Err(_) => Err(AnalyticsError::Timeout(self.timeout())),
        }
    }

    /// Run one statement (DDL, INSERT … SELECT) verbatim.
    pub async fn execute(&self, statement: &str) -> Result<(), AnalyticsError> {
        self.bounded(self.client.query_raw(statement).execute())
            .await
    }

    async fn fetch<T>(&self, statement: &str) -> Result<Vec<T>, AnalyticsError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.bounded(self.client.query_raw(statement).fetch_all::<T>())
            .await
    }

    /// Answer `SELECT 1`: the server is up and the credentials work.
    pub async fn ping(&self) -> Result<(), AnalyticsError> {
        self.bounded(self.server.query_raw("SELECT 1").execute())
            .await
    }

    /// Raw, distinct and per-rollup event counts (equal when every event
    /// was stored exactly once everywhere).
    pub async fn consistency(&self) -> Result<Consistency, AnalyticsError> {
        let rows: Vec<Consistency> = self.fetch(&sql::consistency_counts()).await?;
        rows.into_iter()
            .next()
            .ok_or_else(|| AnalyticsError::Corrupt("consistency query returned no row".into()))
    }

    /// Answer `query` from a chosen source (the planner's choice by default;
    /// tests compare raw against rollups).
    pub async fn query_from(
        &self,
        query: &UsageQuery,
        source: Source,
    ) -> Result<Vec<UsageGroup>, AnalyticsError> {
        let rows: Vec<AggRow> = self.fetch(&sql::usage_query(query, source)).await?;
        groups_from_rows(query, rows)
    }

    /// Bring every rollup of `partition` level with the raw table: a rollup
    /// whose highest aggregated offset is below the raw table's (a crash or
    /// error between the raw part and its views) gets the missing events
    /// re-derived from raw rows. Only the partition's writer may call this
    /// (a concurrent insert's views could otherwise be counted twice).
    async fn repair_rollups(&self, partition: u32, raw: &Count) -> Result<u32, AnalyticsError> {
        let mut repaired = 0;
        if raw.n == 0 {
            return Ok(0);
        }
        for rollup in sql::ROLLUPS {
            let rolled = self.count(&sql::rollup_position(rollup, partition)).await?;
            if rolled.n > 0 && rolled.max_offset >= raw.max_offset {
                if rolled.n > raw.n {
                    // Cannot happen with ClickHouse writing a table before
                    // its views; if it does, say so loudly.
                    tracing::error!(rollup = %rollup.table(), partition, raw = raw.n, rollup = rolled.n, "rollup counts more events than the raw table");
                }
                continue;
            }
            tracing::warn!(rollup = %rollup.table(), partition, raw_events = raw.n, rollup_events = rolled.n, "rollup behind the raw table; re-deriving the missing events");
            let after = (rolled.n > 0).then_some(rolled.max_offset);
            self.execute(&sql::repair_rollup(rollup, partition, after))
                .await?;
            repaired += 1;
        }
        Ok(repaired)
    }

    async fn count(&self, statement: &str) -> Result<Count, AnalyticsError> {
        let rows: Vec<Count> = self.fetch(statement).await?;
        Ok(rows.into_iter().next().unwrap_or(Count {
            n: 0,
            max_offset: 0,
        }))
    }

    /// Next offset per partition: raw max + 1, floored by positions kept
    /// across retention. Read-only (safe next to a running writer).
    async fn read_positions(&self) -> Result<BTreeMap<u32, u64>, AnalyticsError> {
        let mut positions = BTreeMap::new();
        for statement in [sql::raw_positions(), sql::floor_positions()] {
            let rows: Vec<PositionRow> = self.fetch(&statement).await?;
            for row in rows {
                let entry = positions.entry(row.log_partition).or_insert(0);
                *entry = (*entry).max(row.next_offset);
            }
        }
        Ok(positions)
    }

    /// The writer's view of a partition, verified against ClickHouse (and
    /// its rollups repaired) the first time after start, a failure or a
    /// reassignment.
    async fn next_offset(&self, partition: u32) -> Result<u64, AnalyticsError> {
        if let Some(state) = self.known.lock().get(&partition) {
            return Ok(state.next_offset);
        }
        let raw = self.count(&sql::raw_position(partition)).await?;
        self.repair_rollups(partition, &raw).await?;
        let floor = self.count(&sql::floor_position(partition)).await?;
        let mut next = if raw.n > 0 { raw.max_offset + 1 } else { 0 };
        if floor.n > 0 {
            next = next.max(floor.max_offset);
        }
        self.known
            .lock()
            .insert(partition, PartitionState { next_offset: next });
        Ok(next)
    }

    fn forget_positions(&self) {
        self.known.lock().clear();
    }

    async fn insert_run(&self, rows: &[&UsageRecord]) -> Result<(), AnalyticsError> {
        let timeout = self.timeout();
        let mut insert = self
            .bounded(self.client.insert::<RawRow<'_>>(sql::RAW_TABLE))
            .await?
            .with_timeouts(Some(timeout), Some(timeout));
        for row in rows {
            insert.write(&RawRow::new(row)).await?;
        }
        insert.end().await?;
        Ok(())
    }
}

/// Above this many rows an INSERT may be split into several blocks by
/// ClickHouse (`max_insert_block_size`), and so stop being atomic.
pub const MAX_INSERT_ROWS: usize = 1_000_000;

#[async_trait]
impl UsageStore for ClickHouseStore {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn migrate(&self) -> Result<(), AnalyticsError> {
        self.bounded(
            self.server
                .query_raw(&sql::create_database(&self.config.database))
                .execute(),
        )
        .await?;
        self.execute(&sql::create_migrations_table()).await?;
        let applied: Vec<VersionRow> = self.fetch(&sql::applied_migrations()).await?;
        for (version, statements) in sql::migrations() {
            if applied.iter().any(|v| v.version == version) {
                continue;
            }
            for statement in statements {
                if let Some((table, column)) = sql::added_column(&statement) {
                    let found: Vec<CountRow> =
                        self.fetch(&sql::column_exists(table, column)).await?;
                    if found.iter().any(|c| c.n > 0) {
                        continue;
                    }
                }
                self.execute(&statement).await?;
            }
            self.execute(&sql::record_migration(version)).await?;
            tracing::info!(version, "analytics clickhouse migration applied");
        }
        Ok(())
    }

    async fn positions(&self) -> Result<BTreeMap<u32, u64>, AnalyticsError> {
        // The first write to each partition re-verifies and repairs it.
        self.forget_positions();
        self.read_positions().await
    }

    async fn write(&self, batch: &WriteBatch) -> Result<u64, AnalyticsError> {
        let next = self.next_offset(batch.partition).await?;
        let fresh: Vec<&UsageRecord> = batch.rows.iter().filter(|r| r.log_offset >= next).collect();
        // Rows of earlier failed attempts that turned out to have landed
        // count as written now; the range is cleared only on success.
        let prior = self.unconfirmed.lock().get(&batch.partition).copied();
        let mut written = prior.map_or(0, |(first, last)| {
            batch
                .rows
                .iter()
                .filter(|r| (first..=last).contains(&r.log_offset) && r.log_offset < next)
                .count() as u64
        });
        // Consecutive runs of one month each: an INSERT spanning two
        // partitions makes two parts, which could land one without the other.
        let mut start = 0;
        while start < fresh.len() {
            let month = fresh[start].month();
            let mut end = start + 1;
            while end < fresh.len() && fresh[end].month() == month && end - start < MAX_INSERT_ROWS
            {
                end += 1;
            }
            let run = &fresh[start..end];
            if let Err(err) = self.insert_run(run).await {
                // It may have landed (timeout after commit) or landed in the
                // raw table only: re-read positions and repair before any retry.
                self.forget_positions();
                // Earlier runs of this call landed, this one may have.
                if let (Some(first), Some(last)) = (fresh.first(), run.last()) {
                    let first = prior.map_or(first.log_offset, |(f, _)| f.min(first.log_offset));
                    self.unconfirmed
                        .lock()
                        .insert(batch.partition, (first, last.log_offset));
                }
                return Err(err);
            }
            written += run.len() as u64;
            if let Some(last) = run.last() {
                self.known.lock().insert(
                    batch.partition,
                    PartitionState {
                        next_offset: last.log_offset + 1,
                    },
                );
            }
            start = end;
        }
        self.unconfirmed.lock().remove(&batch.partition);
        Ok(written)
    }

    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, AnalyticsError> {
        self.query_from(query, sql::plan(query, self.config.use_rollups))
            .await
    }

    async fn apply_retention(
        &self,
        keep_months: u32,
        now: DateTime<Utc>,
    ) -> Result<RetentionOutcome, AnalyticsError> {
        let cutoff = retention_cutoff(keep_months, now);
        // Dropping the newest rows of a partition would lower its position;
        // keep a floor so a restart never re-consumes dropped events.
        let positions = self.read_positions().await?;
        let floor: Vec<(u32, u64)> = positions.into_iter().collect();
        if let Some(statement) = sql::record_floor(&floor) {
            self.execute(&statement).await?;
        }
        let parts: Vec<PartitionRow> = self.fetch(&sql::list_partitions()).await?;
        let mut outcome = RetentionOutcome::default();
        for part in parts {
            let Ok(month) = part.partition.trim_matches('\'').parse::<u32>() else {
                tracing::warn!(table = %part.table, partition = %part.partition, "unexpected partition id; left alone");
                continue;
            };
            if month < cutoff {
                self.execute(&sql::drop_partition(&part.table, month))
                    .await?;
                if !outcome.months_dropped.contains(&month) {
                    outcome.months_dropped.push(month);
                }
            }
        }
        outcome.months_dropped.sort_unstable();
        Ok(outcome)
    }

    fn partitions_reassigned(&self) {
        self.forget_positions();
    }
}
