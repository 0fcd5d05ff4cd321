//! The embedded usage store: tables in Tollgate's one SQLite file, with
//! their own migration table (`analytics_migrations`) so they evolve apart
//! from the store crate's schema.
//!
//! Exactly-once: a batch's rows and its log position commit in one
//! transaction; rows are also unique by event id. Queries aggregate in Rust
//! over the raw rows (indexed by account and time): exact sums with
//! `rust_decimal`, and percentiles by the same definition as ClickHouse's
//! `quantileExact`, so both stores give the same numbers.

use crate::error::AnalyticsError;
use crate::model::{
    exact_quantile, ms_to_time, parse_money, sort_groups, us_to_ms, Bucket, CostTotals, GroupBy,
    LatencyPercentiles, TokenTotals, TtftPercentiles, UsageGroup, UsageQuery, LATENCY_LEVELS,
    TTFT_LEVELS,
};
use crate::store::{retention_cutoff, RetentionOutcome, UsageStore, WriteBatch};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_core::{Endpoint, TokenCounts};
use tollgate_sqlite::Migrations;

/// Numbered migrations, applied once each in order. Never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: raw usage rows and the consumer's positions.
    "CREATE TABLE analytics_usage (
        event_id TEXT PRIMARY KEY,
        log_partition INTEGER NOT NULL,
        log_offset INTEGER NOT NULL,
        account_id TEXT NOT NULL,
        access_key_id TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        model_requested TEXT NOT NULL,
        credential_source TEXT NOT NULL,
        client_api TEXT NOT NULL,
        status INTEGER NOT NULL,
        streamed INTEGER NOT NULL,
        error_kind TEXT NOT NULL,
        tokens_input INTEGER NOT NULL,
        tokens_cached_input INTEGER NOT NULL,
        tokens_cache_write_5m INTEGER NOT NULL,
        tokens_cache_write_1h INTEGER NOT NULL,
        tokens_output INTEGER NOT NULL,
        fee TEXT NOT NULL,
        upstream_cost TEXT NOT NULL,
        latency_us INTEGER NOT NULL,
        ttft_us INTEGER
     );
     CREATE INDEX analytics_usage_account_time ON analytics_usage (account_id, started_ms);
     CREATE INDEX analytics_usage_time ON analytics_usage (started_ms);
     CREATE TABLE analytics_positions (
        log_partition INTEGER PRIMARY KEY,
        next_offset INTEGER NOT NULL
     );",
    // 2: rows keyed by (started_ms, event_id), without a rowid: time-range
    // scans read the table itself, and each insert updates two B-trees
    // (the table and the account index) instead of four. An event always
    // has the same start, so the key still drops a redelivered event.
    "CREATE TABLE analytics_usage_v2 (
        event_id TEXT NOT NULL,
        log_partition INTEGER NOT NULL,
        log_offset INTEGER NOT NULL,
        account_id TEXT NOT NULL,
        access_key_id TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        model_requested TEXT NOT NULL,
        credential_source TEXT NOT NULL,
        client_api TEXT NOT NULL,
        status INTEGER NOT NULL,
        streamed INTEGER NOT NULL,
        error_kind TEXT NOT NULL,
        tokens_input INTEGER NOT NULL,
        tokens_cached_input INTEGER NOT NULL,
        tokens_cache_write_5m INTEGER NOT NULL,
        tokens_cache_write_1h INTEGER NOT NULL,
        tokens_output INTEGER NOT NULL,
        fee TEXT NOT NULL,
        upstream_cost TEXT NOT NULL,
        latency_us INTEGER NOT NULL,
        ttft_us INTEGER,
        PRIMARY KEY (started_ms, event_id)
     ) WITHOUT ROWID;
     INSERT OR IGNORE INTO analytics_usage_v2 (event_id, log_partition, log_offset, account_id,
        access_key_id, started_ms, provider, model, model_requested, credential_source,
        client_api, status, streamed, error_kind, tokens_input, tokens_cached_input,
        tokens_cache_write_5m, tokens_cache_write_1h, tokens_output, fee, upstream_cost,
        latency_us, ttft_us)
     SELECT event_id, log_partition, log_offset, account_id,
        access_key_id, started_ms, provider, model, model_requested, credential_source,
        client_api, status, streamed, error_kind, tokens_input, tokens_cached_input,
        tokens_cache_write_5m, tokens_cache_write_1h, tokens_output, fee, upstream_cost,
        latency_us, ttft_us
     FROM analytics_usage;
     DROP TABLE analytics_usage;
     ALTER TABLE analytics_usage_v2 RENAME TO analytics_usage;
     CREATE INDEX analytics_usage_account_time ON analytics_usage (account_id, started_ms);",
    // 3: the reasoning part of output tokens; rows stored before it reported
    // none.
    "ALTER TABLE analytics_usage ADD COLUMN tokens_reasoning INTEGER NOT NULL DEFAULT 0;",
    // 4: the endpoint that served each event. Rows stored before it are
    // backfilled from the client API, as `Endpoint::backfilled` reads
    // events that do not record one (`openai` → chat, `anthropic` →
    // messages); the sink writes it for every new row.
    "ALTER TABLE analytics_usage ADD COLUMN endpoint TEXT NOT NULL DEFAULT '';
     UPDATE analytics_usage
        SET endpoint = CASE client_api WHEN 'anthropic' THEN 'messages' ELSE 'chat' END;",
    // 5: attribution — the end user the client declared and the request's
    // tags as a JSON object (`{"team":"search"}`), both NULL when none.
    // Rows stored before it had neither and keep NULL; nothing is
    // rewritten. Filters and groups read a tag with `json_extract`.
    "ALTER TABLE analytics_usage ADD COLUMN end_user TEXT;
     ALTER TABLE analytics_usage ADD COLUMN tags TEXT;",
];

pub struct SqliteUsageStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

impl SqliteUsageStore {
    /// Open on Tollgate's database file and apply pending migrations.
    pub fn open(db: &tollgate_sqlite::Database) -> Result<SqliteUsageStore, AnalyticsError> {
        let mut writer = db.connect()?;
        migrate(&mut writer)?;
        let reader = db.connect()?;
        Ok(SqliteUsageStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Rows stored (for tests and diagnostics).
    pub async fn row_count(&self) -> Result<u64, AnalyticsError> {
        let reader = self.reader.clone();
        blocking(move || {
            let n: i64 =
                reader
                    .lock()
                    .query_row("SELECT COUNT(*) FROM analytics_usage", [], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }
}

async fn blocking<T, F>(f: F) -> Result<T, AnalyticsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, AnalyticsError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AnalyticsError::Task(e.to_string()))?
}

/// The usage tables' migrations, in their own version table.
const USAGE_MIGRATIONS: Migrations = Migrations {
    table: "analytics_migrations",
    steps: MIGRATIONS,
};

fn migrate(conn: &mut Connection) -> Result<(), AnalyticsError> {
    Ok(USAGE_MIGRATIONS.apply(conn)?)
}

fn int(value: u64, what: &str) -> Result<i64, AnalyticsError> {
    i64::try_from(value).map_err(|_| AnalyticsError::BadData(format!("{what} {value} too large")))
}

fn write_batch(conn: &mut Connection, batch: &WriteBatch) -> Result<u64, AnalyticsError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored: u64 = tx
        .query_row(
            "SELECT next_offset FROM analytics_positions WHERE log_partition = ?1",
            [batch.partition],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map_or(0, |n| n as u64);
    let mut written = 0u64;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO analytics_usage (event_id, log_partition, log_offset, account_id,
                access_key_id, started_ms, provider, model, model_requested, credential_source,
                client_api, status, streamed, error_kind, tokens_input, tokens_cached_input,
                tokens_cache_write_5m, tokens_cache_write_1h, tokens_output, fee, upstream_cost,
                latency_us, ttft_us, tokens_reasoning, endpoint, end_user, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
        )?;
        for r in batch.rows.iter().filter(|r| r.log_offset >= stored) {
            let ttft = r.ttft_us.map(|t| int(t, "ttft_us")).transpose()?;
            let tags = if r.tags.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&r.tags)
                        .map_err(|e| AnalyticsError::BadData(format!("tags: {e}")))?,
                )
            };
            written += insert.execute(rusqlite::params![
                r.event_id,
                r.log_partition,
                int(r.log_offset, "log_offset")?,
                r.account_id,
                r.access_key_id,
                r.started_ms,
                r.provider,
                r.model,
                r.model_requested,
                r.credential_source,
                r.client_api,
                r.status,
                r.streamed,
                r.error_kind,
                int(r.tokens.input, "tokens")?,
                int(r.tokens.cached_input, "tokens")?,
                int(r.tokens.cache_write_5m, "tokens")?,
                int(r.tokens.cache_write_1h, "tokens")?,
                int(r.tokens.output, "tokens")?,
                r.fee.to_string(),
                r.upstream_cost.to_string(),
                int(r.latency_us, "latency_us")?,
                ttft,
                int(r.tokens.reasoning, "tokens")?,
                r.endpoint.as_str(),
                r.end_user,
                tags,
            ])? as u64;
        }
    }
    tx.execute(
        "INSERT INTO analytics_positions (log_partition, next_offset) VALUES (?1, ?2)
         ON CONFLICT (log_partition) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
        rusqlite::params![batch.partition, int(batch.next_offset, "next_offset")?],
    )?;
    tx.commit()?;
    Ok(written)
}

/// Accumulates one result group.
#[derive(Default)]
struct Acc {
    requests: u64,
    errors: u64,
    tokens: TokenTotals,
    fee: Decimal,
    upstream: Decimal,
    latency: Vec<u64>,
    ttft: Vec<u64>,
}

type GroupKey = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<u16>,
    Option<String>,
    Option<Option<String>>,
    Option<Option<String>>,
);

fn run_query(conn: &Connection, q: &UsageQuery) -> Result<Vec<UsageGroup>, AnalyticsError> {
    let (sql, params) = usage_sql(q);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut groups: BTreeMap<GroupKey, Acc> = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let started_ms: i64 = row.get(0)?;
        let status: u16 = row.get(4)?;
        let key: GroupKey = (
            q.bucket.map(|b: Bucket| b.floor(started_ms)),
            if q.groups(GroupBy::Provider) {
                Some(row.get(1)?)
            } else {
                None
            },
            if q.groups(GroupBy::Model) {
                Some(row.get(2)?)
            } else {
                None
            },
            if q.groups(GroupBy::AccessKey) {
                Some(row.get(3)?)
            } else {
                None
            },
            q.groups(GroupBy::Status).then_some(status),
            if q.groups(GroupBy::Endpoint) {
                Some(row.get(15)?)
            } else {
                None
            },
            if q.groups(GroupBy::EndUser) {
                Some(row.get(16)?)
            } else {
                None
            },
            if q.groups(GroupBy::Tag) {
                Some(row.get(17)?)
            } else {
                None
            },
        );
        let acc = groups.entry(key).or_default();
        acc.requests += 1;
        if status >= 400 {
            acc.errors += 1;
        }
        acc.tokens.add(&TokenCounts {
            input: row.get::<_, i64>(5)? as u64,
            cached_input: row.get::<_, i64>(6)? as u64,
            cache_write_5m: row.get::<_, i64>(7)? as u64,
            cache_write_1h: row.get::<_, i64>(8)? as u64,
            output: row.get::<_, i64>(9)? as u64,
            reasoning: row.get::<_, i64>(14)? as u64,
        });
        acc.fee += parse_money(&row.get::<_, String>(10)?)?;
        acc.upstream += parse_money(&row.get::<_, String>(11)?)?;
        acc.latency.push(row.get::<_, i64>(12)? as u64);
        if let Some(ttft) = row.get::<_, Option<i64>>(13)? {
            acc.ttft.push(ttft as u64);
        }
    }
    let mut out = groups
        .into_iter()
        .map(|(key, acc)| usage_group(key, acc))
        .collect::<Result<Vec<_>, _>>()?;
    sort_groups(&mut out);
    Ok(out)
}

/// The JSON path of one tag in the `tags` column. API-validated keys are
/// letters, digits, `_`, `-` and `.`; quoted, so `.` is part of the key.
fn tag_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

/// The raw rows the query selects, and its parameters. Column 17 is the
/// grouped tag's value (NULL without the tag, or when not grouping by one).
fn usage_sql(q: &UsageQuery) -> (String, Vec<Value>) {
    let mut sql = String::from(
        "SELECT started_ms, provider, model, access_key_id, status, tokens_input,
                tokens_cached_input, tokens_cache_write_5m, tokens_cache_write_1h, tokens_output,
                fee, upstream_cost, latency_us, ttft_us, tokens_reasoning, endpoint, end_user,
                json_extract(tags, ?)
         FROM analytics_usage WHERE started_ms >= ? AND started_ms < ?",
    );
    let mut params: Vec<Value> = vec![
        q.group_tag
            .as_deref()
            .map_or(Value::Null, |key| Value::Text(tag_path(key))),
        Value::Integer(q.start_ms()),
        Value::Integer(q.end_ms()),
    ];
    if let Some(account) = &q.account_id {
        sql.push_str(" AND account_id = ?");
        params.push(Value::Text(account.to_string()));
    }
    for (column, value) in [
        ("access_key_id", &q.access_key_id),
        ("provider", &q.provider),
        ("model", &q.model),
    ] {
        if let Some(value) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            params.push(Value::Text(value.clone()));
        }
    }
    if let Some(class) = q.status_class {
        let (low, high) = class.range();
        sql.push_str(" AND status >= ? AND status < ?");
        params.push(Value::Integer(low.into()));
        params.push(Value::Integer(high.into()));
    }
    if let Some(source) = q.credential_source {
        sql.push_str(" AND credential_source = ?");
        params.push(Value::Text(source.as_str().to_owned()));
    }
    if let Some(endpoint) = q.endpoint {
        sql.push_str(" AND endpoint = ?");
        params.push(Value::Text(endpoint.as_str().to_owned()));
    }
    if let Some(end_user) = &q.end_user {
        sql.push_str(" AND end_user = ?");
        params.push(Value::Text(end_user.clone()));
    }
    if let Some((key, value)) = &q.tag {
        sql.push_str(" AND json_extract(tags, ?) = ?");
        params.push(Value::Text(tag_path(key)));
        params.push(Value::Text(value.clone()));
    }
    (sql, params)
}

/// One group's totals and percentiles.
fn usage_group(key: GroupKey, mut acc: Acc) -> Result<UsageGroup, AnalyticsError> {
    let (bucket, provider, model, access_key_id, status, endpoint, end_user, tag) = key;
    let endpoint = endpoint
        .map(|e| {
            Endpoint::parse(&e)
                .ok_or_else(|| AnalyticsError::Corrupt(format!("stored endpoint {e:?}")))
        })
        .transpose()?;
    acc.latency.sort_unstable();
    acc.ttft.sort_unstable();
    let pct =
        |values: &[u64], level: f64| exact_quantile(values, level).map(|v| us_to_ms(v as f64));
    Ok(UsageGroup {
        bucket_start: bucket.map(ms_to_time).transpose()?,
        provider,
        model,
        access_key_id,
        status,
        endpoint,
        end_user,
        tag,
        requests: acc.requests,
        errors: acc.errors,
        tokens: acc.tokens,
        cost: CostTotals {
            fee: acc.fee.normalize(),
            upstream: acc.upstream.normalize(),
        },
        latency_ms: LatencyPercentiles {
            p50: pct(&acc.latency, LATENCY_LEVELS[0]),
            p95: pct(&acc.latency, LATENCY_LEVELS[1]),
            p99: pct(&acc.latency, LATENCY_LEVELS[2]),
        },
        ttft_ms: TtftPercentiles {
            p50: pct(&acc.ttft, TTFT_LEVELS[0]),
            p95: pct(&acc.ttft, TTFT_LEVELS[1]),
        },
    })
}

#[async_trait]
impl UsageStore for SqliteUsageStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), AnalyticsError> {
        let writer = self.writer.clone();
        blocking(move || migrate(&mut writer.lock())).await
    }

    async fn positions(&self) -> Result<BTreeMap<u32, u64>, AnalyticsError> {
        let reader = self.reader.clone();
        blocking(move || {
            let conn = reader.lock();
            let mut stmt =
                conn.prepare("SELECT log_partition, next_offset FROM analytics_positions")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))?;
            let mut positions = BTreeMap::new();
            for row in rows {
                let (partition, next) = row?;
                positions.insert(partition, next as u64);
            }
            Ok(positions)
        })
        .await
    }

    async fn write(&self, batch: &WriteBatch) -> Result<u64, AnalyticsError> {
        let writer = self.writer.clone();
        let batch = batch.clone();
        blocking(move || {
            tollgate_sqlite::background_priority();
            write_batch(&mut writer.lock(), &batch)
        })
        .await
    }

    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageGroup>, AnalyticsError> {
        let reader = self.reader.clone();
        let query = query.clone();
        blocking(move || run_query(&reader.lock(), &query)).await
    }

    async fn apply_retention(
        &self,
        keep_months: u32,
        now: DateTime<Utc>,
    ) -> Result<RetentionOutcome, AnalyticsError> {
        let cutoff = retention_cutoff(keep_months, now);
        let (year, month) = ((cutoff / 100) as i32, cutoff % 100);
        let cutoff_ms = Utc
            .with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .map(|t| t.timestamp_millis())
            .ok_or_else(|| AnalyticsError::Corrupt(format!("bad retention cutoff {cutoff}")))?;
        let writer = self.writer.clone();
        blocking(move || {
            let mut conn = writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let months = {
                let mut stmt = tx.prepare(
                    "SELECT DISTINCT CAST(strftime('%Y%m', started_ms / 1000, 'unixepoch') AS INTEGER)
                     FROM analytics_usage WHERE started_ms < ?1 ORDER BY 1",
                )?;
                let rows = stmt.query_map([cutoff_ms], |r| r.get::<_, u32>(0))?;
                rows.collect::<Result<Vec<u32>, _>>()?
            };
            // Positions live in their own table, so deleting rows never
            // moves the consumer back.
            let deleted = tx.execute(
                "DELETE FROM analytics_usage WHERE started_ms < ?1",
                [cutoff_ms],
            )?;
            tx.commit()?;
            Ok(RetentionOutcome {
                months_dropped: months,
                rows_deleted: deleted as u64,
            })
        })
        .await
    }
}
