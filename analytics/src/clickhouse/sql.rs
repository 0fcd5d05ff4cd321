//! Every SQL statement the ClickHouse store sends, as plain functions so the
//! same text can be run through chdb (a current ClickHouse) in tests.
//!
//! Compatibility floor: ClickHouse 18.16 (Debian's package). So: no TTL, no
//! server-side `{param:Type}` parameters (values are escaped literals), no
//! DateTime64, no toStartOfInterval, no LowCardinality; money is
//! `Decimal(38, 18)`. Timestamps are `DateTime('UTC')` so bucketing never
//! depends on the server's time zone.

use crate::model::{Bucket, GroupBy, UsageQuery, UsageRecord};
use std::fmt::Write as _;

/// The raw table: one row per usage event.
pub const RAW_TABLE: &str = "usage_events";
/// Positions kept across retention (a floor under the raw table's max).
pub const POSITION_FLOOR_TABLE: &str = "usage_position_floor";
pub const MIGRATIONS_TABLE: &str = "analytics_migrations";

/// Which accounts a rollup aggregates, and so which dimensions it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every dimension across all accounts, one state set per model and
    /// hour (no credential source, no status): the operator's overview,
    /// one t-digest per output group of an unfiltered by-model query.
    AllByModel,
    /// All accounts, every dimension but account and access key.
    All,
    /// Per account and access key: customers' queries.
    Account,
}

/// A rollup: a granularity and a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollup {
    pub granularity: Bucket,
    pub scope: Scope,
}

const fn rollup(granularity: Bucket, scope: Scope) -> Rollup {
    Rollup { granularity, scope }
}

/// The rollups migration 2 created (kept as released: migrations are never
/// edited; migration 4 drops two of them).
const MIGRATION_2_ROLLUPS: [Rollup; 5] = [
    rollup(Bucket::Hour, Scope::Account),
    rollup(Bucket::Day, Scope::Account),
    rollup(Bucket::Minute, Scope::All),
    rollup(Bucket::Hour, Scope::All),
    rollup(Bucket::Day, Scope::All),
];

/// Rollups migration 4 drops: each held nearly one row per event on sparse
/// data (the per-account hour key, the all-accounts minute key) and cost
/// two thirds of the insert; the raw table's sort key serves per-account
/// minute and hour queries, and raw rows serve all-accounts minutes.
const MIGRATION_4_DROPPED: [Rollup; 2] = [
    rollup(Bucket::Hour, Scope::Account),
    rollup(Bucket::Minute, Scope::All),
];

/// The rollup migration 4 adds (and backfills from raw rows).
const MIGRATION_4_ADDED: Rollup = rollup(Bucket::Hour, Scope::AllByModel);

/// Every current rollup (views feeding them run at each insert).
pub const ROLLUPS: [Rollup; 4] = [
    rollup(Bucket::Day, Scope::Account),
    rollup(Bucket::Hour, Scope::All),
    rollup(Bucket::Day, Scope::All),
    MIGRATION_4_ADDED,
];

impl Rollup {
    pub fn table(self) -> String {
        let g = self.granularity.as_str();
        match self.scope {
            Scope::Account => format!("usage_rollup_{g}"),
            Scope::All => format!("usage_rollup_all_{g}"),
            Scope::AllByModel => format!("usage_rollup_all_model_{g}"),
        }
    }

    fn view(self) -> String {
        format!("{}_mv", self.table())
    }

    /// The key: every dimension the API filters or groups on in this scope,
    /// plus the log partition (a function of the account, the log's
    /// partition key) to track rollup positions.
    fn key(self) -> &'static str {
        match self.scope {
            Scope::Account => "account_id, bucket, access_key_id, provider, model, credential_source, status, log_partition",
            Scope::All => "bucket, provider, model, credential_source, status, log_partition",
            Scope::AllByModel => "bucket, provider, model, log_partition",
        }
    }

    /// Whether this rollup can answer `query` at all (scope and dimensions).
    /// No rollup keeps the endpoint (migration 6 added it to raw rows
    /// only), the end user or the tags (migration 7, likewise): a query
    /// filtering or grouping by any of them reads raw rows.
    fn serves(self, query: &UsageQuery) -> bool {
        if query.endpoint.is_some() || query.groups(GroupBy::Endpoint) || query.uses_attribution() {
            return false;
        }
        let all_accounts = query.account_id.is_none()
            && query.access_key_id.is_none()
            && !query.groups(GroupBy::AccessKey);
        match self.scope {
            Scope::Account => true,
            Scope::All => all_accounts,
            Scope::AllByModel => {
                all_accounts
                    && query.status_class.is_none()
                    && query.credential_source.is_none()
                    && !query.groups(GroupBy::Status)
            }
        }
    }
}

fn start_of(g: Bucket, column: &str) -> String {
    match g {
        Bucket::Minute => format!("toStartOfMinute({column})"),
        Bucket::Hour => format!("toStartOfHour({column})"),
        Bucket::Day => format!("toStartOfDay({column})"),
    }
}

/// Raw columns as migration 1 created them (never edited); the columns
/// later migrations add follow in `RAW_COLUMNS_ADDED`.
const RAW_COLUMNS_V1: &[(&str, &str)] = &[
    ("event_id", "String"),
    ("log_partition", "UInt32"),
    ("log_offset", "UInt64"),
    ("account_id", "String"),
    ("access_key_id", "String"),
    ("started_at", "DateTime('UTC')"),
    ("started_ms", "UInt64"),
    ("provider", "String"),
    ("model", "String"),
    ("model_requested", "String"),
    ("credential_source", "String"),
    ("client_api", "String"),
    ("status", "UInt16"),
    ("streamed", "UInt8"),
    ("error_kind", "String"),
    ("tokens_input", "UInt64"),
    ("tokens_cached_input", "UInt64"),
    ("tokens_cache_write_5m", "UInt64"),
    ("tokens_cache_write_1h", "UInt64"),
    ("tokens_output", "UInt64"),
    ("fee", "Decimal(38, 18)"),
    ("upstream_cost", "Decimal(38, 18)"),
    ("latency_us", "UInt64"),
    ("ttft_us", "UInt64"),
    ("has_ttft", "UInt8"),
];

/// Raw columns added by later migrations, in order (`ALTER … ADD COLUMN`
/// appends them, so they follow the migration 1 columns): migration 5's
/// reasoning tokens, migration 6's endpoint, migration 7's attribution.
const RAW_COLUMNS_ADDED: &[(&str, &str)] = &[
    ("tokens_reasoning", "UInt64"),
    (ENDPOINT_COLUMN, "String"),
    (END_USER_COLUMN, "String"),
    (TAG_KEYS_COLUMN, "Array(String)"),
    (TAG_VALUES_COLUMN, "Array(String)"),
];

/// Migration 7 (attribution, raw rows only): the end user the client
/// declared (`''` when none, which is also what rows stored before it read)
/// and the request's tags as parallel arrays — `tag_keys[i]` has the value
/// `tag_values[i]`, keys sorted and distinct — since 18.16 has no `Map`.
/// Rows stored before it read `[]` (no tags).
const END_USER_COLUMN: &str = "end_user";
const TAG_KEYS_COLUMN: &str = "tag_keys";
const TAG_VALUES_COLUMN: &str = "tag_values";

/// The value of tag `key` in a raw row (`''` when the row lacks it; tell
/// the two apart with [`has_tag`]).
pub fn tag_value(key: &str) -> String {
    format!(
        "arrayElement({TAG_VALUES_COLUMN}, indexOf({TAG_KEYS_COLUMN}, {}))",
        quote(key)
    )
}

/// Whether a raw row carries tag `key` (UInt8).
pub fn has_tag(key: &str) -> String {
    format!("has({TAG_KEYS_COLUMN}, {})", quote(key))
}

/// The endpoint that served an event: migration 6 adds it to the raw table
/// only (no rollup keeps it).
const ENDPOINT_COLUMN: &str = "endpoint";

/// Migration 6's column default: rows stored before it (and any insert that
/// leaves the column out) read the endpoint backfilled from the client API,
/// as `Endpoint::backfilled` reads events that do not record one. ClickHouse
/// computes a missing column's default when it reads an older part, so the
/// rows already there are neither rewritten nor lost.
const ENDPOINT_DEFAULT: &str = "String DEFAULT if(client_api = 'anthropic', 'messages', 'chat')";

/// Raw columns in insert order (the `Row` struct follows this order).
pub fn raw_columns() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    RAW_COLUMNS_V1.iter().chain(RAW_COLUMNS_ADDED)
}

/// Token columns of the rollups migrations 2 and 4 created (never edited).
const TOKEN_COLUMNS_V1: [&str; 5] = [
    "tokens_input",
    "tokens_cached_input",
    "tokens_cache_write_5m",
    "tokens_cache_write_1h",
    "tokens_output",
];

/// The reasoning part of output: migration 5 adds it to the raw table and
/// to every current rollup (existing rows and states read as 0).
const REASONING_COLUMN: &str = "tokens_reasoning";

/// Every token column of the raw table and the current rollups, in
/// `AggRow` order.
const TOKEN_COLUMNS: [&str; 6] = [
    "tokens_input",
    "tokens_cached_input",
    "tokens_cache_write_5m",
    "tokens_cache_write_1h",
    "tokens_output",
    REASONING_COLUMN,
];

fn create_raw() -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {RAW_TABLE} (");
    for (i, (name, ty)) in RAW_COLUMNS_V1.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "{name} {ty}");
    }
    // Month partitions make retention a metadata-only DROP PARTITION; the
    // sort key serves per-account time-range scans.
    sql.push_str(
        ") ENGINE = MergeTree() PARTITION BY toYYYYMM(started_at) \
         ORDER BY (account_id, started_at, event_id)",
    );
    sql
}

fn create_rollup(r: Rollup) -> String {
    let dims = match r.scope {
        Scope::Account => {
            "account_id String, bucket DateTime('UTC'), access_key_id String, provider String, \
             model String, credential_source String, status UInt16, "
        }
        Scope::All => {
            "bucket DateTime('UTC'), provider String, model String, credential_source String, \
             status UInt16, "
        }
        Scope::AllByModel => "bucket DateTime('UTC'), provider String, model String, ",
    };
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({dims}log_partition UInt32, \
         requests AggregateFunction(sum, UInt64), errors AggregateFunction(sum, UInt64)",
        r.table()
    );
    for col in TOKEN_COLUMNS_V1 {
        let _ = write!(sql, ", {col} AggregateFunction(sum, UInt64)");
    }
    sql.push_str(
        ", fee AggregateFunction(sum, Decimal(38, 18)), \
         upstream_cost AggregateFunction(sum, Decimal(38, 18)), \
         latency_q AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64), \
         ttft_n AggregateFunction(sum, UInt64), \
         ttft_q AggregateFunction(quantilesTDigestIf(0.5, 0.95), UInt64, UInt8), \
         max_log_offset AggregateFunction(max, UInt64)",
    );
    let _ = write!(
        sql,
        ") ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMM(bucket) ORDER BY ({})",
        r.key()
    );
    sql
}

/// The aggregation a rollup applies to raw rows, with the reasoning column
/// (from migration 5) or without it: used by its materialized view and,
/// verbatim, by the repair that re-derives a rollup from raw rows. Columns
/// come in the rollup table's order (`INSERT … SELECT` is positional): the
/// added reasoning column last.
fn rollup_select(r: Rollup, reasoning: bool, filter: &str) -> String {
    let bucket = start_of(r.granularity, "started_at");
    let dims = match r.scope {
        Scope::Account => format!(
            "account_id, {bucket} AS bucket, access_key_id, provider, model, credential_source, status"
        ),
        Scope::All => format!("{bucket} AS bucket, provider, model, credential_source, status"),
        Scope::AllByModel => format!("{bucket} AS bucket, provider, model"),
    };
    let mut sql = format!(
        "SELECT {dims}, log_partition, \
         sumState(toUInt64(1)) AS requests, sumState(toUInt64(status >= 400)) AS errors"
    );
    for col in TOKEN_COLUMNS_V1 {
        let _ = write!(sql, ", sumState({col}) AS {col}");
    }
    sql.push_str(
        ", sumState(fee) AS fee, sumState(upstream_cost) AS upstream_cost, \
         quantilesTDigestState(0.5, 0.95, 0.99)(latency_us) AS latency_q, \
         sumState(toUInt64(has_ttft)) AS ttft_n, \
         quantilesTDigestIfState(0.5, 0.95)(ttft_us, has_ttft) AS ttft_q, \
         maxState(log_offset) AS max_log_offset",
    );
    if reasoning {
        let _ = write!(sql, ", sumState({REASONING_COLUMN}) AS {REASONING_COLUMN}");
    }
    let _ = write!(sql, " FROM {RAW_TABLE}{filter} GROUP BY {}", r.key());
    sql
}

fn create_rollup_view(r: Rollup, reasoning: bool) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {} TO {} AS {}",
        r.view(),
        r.table(),
        rollup_select(r, reasoning, "")
    )
}

/// `ALTER TABLE … ADD COLUMN`: ClickHouse 18.16 has no `IF NOT EXISTS`
/// there, so the runner skips it when the column exists (`added_column`).
fn add_column(table: &str, column: &str, ty: &str) -> String {
    format!("ALTER TABLE {table} ADD COLUMN {column} {ty}")
}

/// The (table, column) an `add_column` statement adds, so that a migration
/// interrupted after it can be run again: the runner checks
/// `column_exists` first.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let rest = statement.strip_prefix("ALTER TABLE ")?;
    let (table, rest) = rest.split_once(" ADD COLUMN ")?;
    let (column, _) = rest.split_once(' ')?;
    Some((table, column))
}

/// Whether `table` of the current database has `column` (a count, 0 or 1).
pub fn column_exists(table: &str, column: &str) -> String {
    format!(
        "SELECT count() AS n FROM system.columns WHERE database = currentDatabase() \
         AND table = {} AND name = {}",
        quote(table),
        quote(column)
    )
}

pub fn create_database(database: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {}", ident(database))
}

pub fn create_migrations_table() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version UInt32, applied_at DateTime('UTC')) \
         ENGINE = MergeTree() ORDER BY version"
    )
}

pub fn applied_migrations() -> String {
    format!("SELECT DISTINCT version FROM {MIGRATIONS_TABLE} ORDER BY version")
}

pub fn record_migration(version: u32) -> String {
    format!("INSERT INTO {MIGRATIONS_TABLE} (version, applied_at) VALUES ({version}, now())")
}

/// Numbered migrations: (version, statements). Each statement is
/// idempotent (IF NOT EXISTS), so a run interrupted between a statement and
/// the version record is simply completed by the next run. Never edit a
/// released migration: add a new one.
pub fn migrations() -> Vec<(u32, Vec<String>)> {
    let mut rollups = Vec::new();
    for r in MIGRATION_2_ROLLUPS {
        rollups.push(create_rollup(r));
    }
    for r in MIGRATION_2_ROLLUPS {
        rollups.push(create_rollup_view(r, false));
    }
    let mut fewer_rollups = Vec::new();
    for r in MIGRATION_4_DROPPED {
        // View first: nothing may insert into a table being dropped.
        fewer_rollups.push(format!("DROP TABLE IF EXISTS {}", r.view()));
        fewer_rollups.push(format!("DROP TABLE IF EXISTS {}", r.table()));
    }
    // The new rollup is rebuilt from scratch on every run of this migration
    // (drop, create, backfill from raw rows, then the view), so a run
    // interrupted anywhere is redone whole, never counted twice. Inserts
    // between the backfill and the view are found by the position check.
    let added = MIGRATION_4_ADDED;
    fewer_rollups.push(format!("DROP TABLE IF EXISTS {}", added.view()));
    fewer_rollups.push(format!("DROP TABLE IF EXISTS {}", added.table()));
    fewer_rollups.push(create_rollup(added));
    fewer_rollups.push(format!(
        "INSERT INTO {} {}",
        added.table(),
        rollup_select(added, false, "")
    ));
    fewer_rollups.push(create_rollup_view(added, false));
    // Reasoning tokens: a column on the raw table (0 in existing rows) and
    // a sum state on every rollup (existing states merge to 0: rows before
    // it reported none), then each view again with the new column. Rows
    // inserted between a view's drop and its creation are found by the
    // position check and repaired from raw rows, like a crash between an
    // insert and its views.
    let mut reasoning = vec![add_column(RAW_TABLE, REASONING_COLUMN, "UInt64 DEFAULT 0")];
    for r in ROLLUPS {
        reasoning.push(add_column(
            &r.table(),
            REASONING_COLUMN,
            "AggregateFunction(sum, UInt64)",
        ));
        reasoning.push(format!("DROP TABLE IF EXISTS {}", r.view()));
        reasoning.push(create_rollup_view(r, true));
    }
    vec![
        (1, vec![create_raw()]),
        (2, rollups),
        (
            3,
            vec![format!(
                "CREATE TABLE IF NOT EXISTS {POSITION_FLOOR_TABLE} (log_partition UInt32, \
                 next_offset UInt64, recorded_at DateTime('UTC')) ENGINE = MergeTree() \
                 ORDER BY (log_partition, next_offset)"
            )],
        ),
        (4, fewer_rollups),
        (5, reasoning),
        (
            6,
            vec![add_column(RAW_TABLE, ENDPOINT_COLUMN, ENDPOINT_DEFAULT)],
        ),
        (
            7,
            vec![
                add_column(RAW_TABLE, END_USER_COLUMN, "String DEFAULT ''"),
                add_column(RAW_TABLE, TAG_KEYS_COLUMN, "Array(String)"),
                add_column(RAW_TABLE, TAG_VALUES_COLUMN, "Array(String)"),
            ],
        ),
    ]
}

/// Next offset per partition from raw rows: max offset + 1.
pub fn raw_positions() -> String {
    format!(
        "SELECT log_partition, max(log_offset) + 1 AS next_offset \
         FROM {RAW_TABLE} GROUP BY log_partition ORDER BY log_partition"
    )
}

pub fn floor_positions() -> String {
    format!(
        "SELECT log_partition, max(next_offset) AS next_offset \
         FROM {POSITION_FLOOR_TABLE} GROUP BY log_partition ORDER BY log_partition"
    )
}

/// Events and highest offset of one partition in the raw table (the count
/// tells "empty" from "offset 0").
pub fn raw_position(partition: u32) -> String {
    format!(
        "SELECT count() AS n, max(log_offset) AS max_offset FROM {RAW_TABLE} \
         WHERE log_partition = {partition}"
    )
}

/// The position floor of one partition (0 rows when none was recorded).
pub fn floor_position(partition: u32) -> String {
    format!(
        "SELECT count() AS n, max(next_offset) AS max_offset FROM {POSITION_FLOOR_TABLE} \
         WHERE log_partition = {partition}"
    )
}

pub fn record_floor(positions: &[(u32, u64)]) -> Option<String> {
    if positions.is_empty() {
        return None;
    }
    let mut sql = format!(
        "INSERT INTO {POSITION_FLOOR_TABLE} (log_partition, next_offset, recorded_at) VALUES "
    );
    for (i, (partition, next)) in positions.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "({partition}, {next}, now())");
    }
    Some(sql)
}

/// Events a rollup holds for one partition and the highest offset it
/// aggregated.
pub fn rollup_position(r: Rollup, partition: u32) -> String {
    format!(
        "SELECT toUInt64(sumMerge(requests)) AS n, toUInt64(maxMerge(max_log_offset)) AS max_offset \
         FROM {} WHERE log_partition = {partition}",
        r.table()
    )
}

/// Re-derive a rollup's rows for raw events after `after_offset` (None:
/// all events) of `partition`: the repair for a crash between the raw
/// insert and its views.
pub fn repair_rollup(r: Rollup, partition: u32, after_offset: Option<u64>) -> String {
    let filter = match after_offset {
        Some(offset) => format!(" WHERE log_partition = {partition} AND log_offset > {offset}"),
        None => format!(" WHERE log_partition = {partition}"),
    };
    format!(
        "INSERT INTO {} {}",
        r.table(),
        rollup_select(r, true, &filter)
    )
}

/// Active partitions (months) of every analytics table.
pub fn list_partitions() -> String {
    let mut tables = vec![format!("'{RAW_TABLE}'")];
    for r in ROLLUPS {
        tables.push(format!("'{}'", r.table()));
    }
    format!(
        "SELECT DISTINCT table, partition FROM system.parts \
         WHERE database = currentDatabase() AND active AND table IN ({}) \
         ORDER BY table, partition",
        tables.join(", ")
    )
}

pub fn drop_partition(table: &str, month: u32) -> String {
    format!("ALTER TABLE {} DROP PARTITION {month}", ident(table))
}

/// Consistency counts used by operators and tests: raw rows, distinct
/// event ids, and each rollup's event count.
pub fn consistency_counts() -> String {
    let mut sql = format!(
        "SELECT (SELECT count() FROM {RAW_TABLE}) AS raw_rows, \
         (SELECT uniqExact(event_id) FROM {RAW_TABLE}) AS raw_events"
    );
    for r in ROLLUPS {
        let _ = write!(
            sql,
            ", (SELECT toUInt64(sumMerge(requests)) FROM {0}) AS {0}",
            r.table()
        );
    }
    sql
}

/// Where a usage query reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Raw,
    Rollup(Rollup),
}

/// The rollup with the fewest rows that answers `query` exactly — in scope,
/// range and bucket aligned to its granularity; coarser before finer, then
/// fewer dimensions before more (by model, all accounts, per account) —
/// else the raw table.
pub fn plan(query: &UsageQuery, use_rollups: bool) -> Source {
    if !use_rollups {
        return Source::Raw;
    }
    let mut candidates: Vec<Rollup> = ROLLUPS
        .iter()
        .copied()
        .filter(|r| r.serves(query))
        .collect();
    candidates.sort_by_key(|r| (std::cmp::Reverse(r.granularity.millis()), r.scope));
    for r in candidates {
        let step = r.granularity.millis();
        let aligned = query.start_ms() % step == 0 && query.end_ms() % step == 0;
        let bucket_ok = query.bucket.is_none_or(|b| b.millis() % step == 0);
        if aligned && bucket_ok {
            return Source::Rollup(r);
        }
    }
    Source::Raw
}

/// Output columns of a usage query, in `AggRow` order. Aliases never
/// shadow a stored column name: ClickHouse substitutes aliases into WHERE.
pub fn usage_query(query: &UsageQuery, source: Source) -> String {
    let time = match source {
        Source::Raw => "started_at",
        Source::Rollup(_) => "bucket",
    };
    let bucket = match query.bucket {
        Some(b) => format!("toUInt32({})", start_of(b, time)),
        None => "toUInt32(0)".to_owned(),
    };
    let dim = |d: GroupBy, absent: &str| -> String {
        if query.groups(d) {
            d.column().to_owned()
        } else {
            absent.to_owned()
        }
    };
    // Tag groups: (has the tag, its value); without the tag sorts first.
    let (has, tag) = match (&query.group_tag, query.groups(GroupBy::Tag)) {
        (Some(key), true) => (format!("toUInt8({})", has_tag(key)), tag_value(key)),
        _ => ("toUInt8(0)".to_owned(), "''".to_owned()),
    };
    let mut sql = format!(
        "SELECT {bucket} AS g_bucket, {} AS g_provider, {} AS g_model, {} AS g_access_key_id, \
         {} AS g_status, {} AS g_endpoint, {} AS g_end_user, {has} AS g_has_tag, {tag} AS g_tag, ",
        dim(GroupBy::Provider, "''"),
        dim(GroupBy::Model, "''"),
        dim(GroupBy::AccessKey, "''"),
        dim(GroupBy::Status, "toUInt16(0)"),
        dim(GroupBy::Endpoint, "''"),
        dim(GroupBy::EndUser, "''"),
    );
    push_metrics(&mut sql, source);
    let table = match source {
        Source::Raw => RAW_TABLE.to_owned(),
        Source::Rollup(r) => r.table(),
    };
    let _ = write!(sql, " FROM {table} WHERE ");
    let conditions = conditions(query, source);
    sql.push_str(&conditions.join(" AND "));
    let keys = "g_bucket, g_provider, g_model, g_access_key_id, g_status, g_endpoint, \
                g_end_user, g_has_tag, g_tag";
    let _ = write!(sql, " GROUP BY {keys} ORDER BY {keys}");
    sql
}

/// The aggregate columns: computed from raw rows, or merged from a rollup's states.
fn push_metrics(sql: &mut String, source: Source) {
    match source {
        Source::Raw => {
            sql.push_str("count() AS m_requests, countIf(status >= 400) AS m_errors");
            for col in TOKEN_COLUMNS {
                let _ = write!(sql, ", sum({col}) AS m_{col}");
            }
            sql.push_str(
                ", toString(sum(fee)) AS m_fee, toString(sum(upstream_cost)) AS m_upstream_cost, \
                 arrayMap(x -> toFloat64(x), quantilesExact(0.5, 0.95, 0.99)(latency_us)) AS m_latency, \
                 sum(toUInt64(has_ttft)) AS m_ttft_n, \
                 arrayMap(x -> toFloat64(x), quantilesExactIf(0.5, 0.95)(ttft_us, has_ttft = 1)) AS m_ttft",
            );
        }
        Source::Rollup(_) => {
            sql.push_str(
                "toUInt64(sumMerge(requests)) AS m_requests, toUInt64(sumMerge(errors)) AS m_errors",
            );
            for col in TOKEN_COLUMNS {
                let _ = write!(sql, ", toUInt64(sumMerge({col})) AS m_{col}");
            }
            // An empty t-digest yields NaN; the counts say when it is empty.
            sql.push_str(
                ", toString(sumMerge(fee)) AS m_fee, \
                 toString(sumMerge(upstream_cost)) AS m_upstream_cost, \
                 arrayMap(x -> if(isNaN(x), 0., toFloat64(x)), \
                 quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_q)) AS m_latency, \
                 toUInt64(sumMerge(ttft_n)) AS m_ttft_n, \
                 arrayMap(x -> if(isNaN(x), 0., toFloat64(x)), \
                 quantilesTDigestIfMerge(0.5, 0.95)(ttft_q)) AS m_ttft",
            );
        }
    }
}

/// The WHERE conditions of a usage query, joined with AND by the caller.
fn conditions(query: &UsageQuery, source: Source) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some(account) = &query.account_id {
        conditions.push(format!("account_id = {}", quote(account.as_str())));
    }
    let (start_ms, end_ms) = (query.start_ms(), query.end_ms());
    match source {
        Source::Raw => {
            // Whole-second bounds on the sort key for index pruning, then
            // the exact millisecond range.
            conditions.push(format!(
                "started_at >= toDateTime({}) AND started_at <= toDateTime({})",
                start_ms.div_euclid(1000).max(0),
                (end_ms - 1).div_euclid(1000).max(0)
            ));
            conditions.push(format!(
                "started_ms >= {} AND started_ms < {}",
                start_ms.max(0),
                end_ms.max(0)
            ));
        }
        Source::Rollup(_) => {
            conditions.push(format!(
                "bucket >= toDateTime({}) AND bucket < toDateTime({})",
                start_ms.div_euclid(1000).max(0),
                end_ms.div_euclid(1000).max(0)
            ));
        }
    }
    if let Some(key) = &query.access_key_id {
        conditions.push(format!("access_key_id = {}", quote(key)));
    }
    if let Some(provider) = &query.provider {
        conditions.push(format!("provider = {}", quote(provider)));
    }
    if let Some(model) = &query.model {
        conditions.push(format!("model = {}", quote(model)));
    }
    if let Some(class) = query.status_class {
        let (low, high) = class.range();
        conditions.push(format!("status >= {low} AND status < {high}"));
    }
    if let Some(source) = query.credential_source {
        conditions.push(format!("credential_source = {}", quote(source.as_str())));
    }
    if let Some(endpoint) = query.endpoint {
        conditions.push(format!("{ENDPOINT_COLUMN} = {}", quote(endpoint.as_str())));
    }
    if let Some(end_user) = &query.end_user {
        conditions.push(format!("{END_USER_COLUMN} = {}", quote(end_user)));
    }
    if let Some((key, value)) = &query.tag {
        conditions.push(format!(
            "{} AND {} = {}",
            has_tag(key),
            tag_value(key),
            quote(value)
        ));
    }
    conditions
}

/// `INSERT … VALUES` for rows: how the chdb test loads the same rows the
/// server gets through RowBinary (chdb has no HTTP interface).
pub fn insert_values(rows: &[UsageRecord]) -> String {
    insert_rows(rows, RAW_COLUMNS_ADDED.len())
}

/// `INSERT … VALUES` into the raw table as migration 1 created it (no
/// reasoning or endpoint column): how tests fill an install of an earlier
/// release.
pub fn insert_values_v1(rows: &[UsageRecord]) -> String {
    insert_rows(rows, 0)
}

/// `INSERT … VALUES` into the raw table as migration 5 left it (reasoning,
/// no endpoint): how tests fill an install of the release before endpoints.
pub fn insert_values_v5(rows: &[UsageRecord]) -> String {
    insert_rows(rows, 1)
}

/// `INSERT … VALUES` into the raw table as migration 6 left it (endpoint,
/// no attribution): how tests fill an install of the release before it.
pub fn insert_values_v6(rows: &[UsageRecord]) -> String {
    insert_rows(rows, 2)
}

/// A ClickHouse `Array(String)` literal.
fn string_array<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let items: Vec<String> = items.map(|i| quote(i)).collect();
    format!("[{}]", items.join(", "))
}

/// Rows with the migration 1 columns and the first `added` later ones.
fn insert_rows(rows: &[UsageRecord], added: usize) -> String {
    let names: Vec<&str> = RAW_COLUMNS_V1
        .iter()
        .chain(&RAW_COLUMNS_ADDED[..added])
        .map(|(name, _)| *name)
        .collect();
    let mut sql = format!("INSERT INTO {RAW_TABLE} ({}) VALUES ", names.join(", "));
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(
            sql,
            "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}",
            quote(&r.event_id),
            r.log_partition,
            r.log_offset,
            quote(&r.account_id),
            quote(&r.access_key_id),
            r.started_ms.div_euclid(1000),
            r.started_ms,
            quote(&r.provider),
            quote(&r.model),
            quote(&r.model_requested),
            quote(&r.credential_source),
            quote(&r.client_api),
            r.status,
            u8::from(r.streamed),
            quote(&r.error_kind),
            r.tokens.input,
            r.tokens.cached_input,
            r.tokens.cache_write_5m,
            r.tokens.cache_write_1h,
            r.tokens.output,
            quote(&r.fee.to_string()),
            quote(&r.upstream_cost.to_string()),
            r.latency_us,
            r.ttft_us.unwrap_or(0),
            u8::from(r.ttft_us.is_some()),
        );
        if added >= 1 {
            let _ = write!(sql, ", {}", r.tokens.reasoning);
        }
        if added >= 2 {
            let _ = write!(sql, ", {}", quote(r.endpoint.as_str()));
        }
        if added >= 5 {
            let _ = write!(
                sql,
                ", {}, {}, {}",
                quote(r.end_user.as_deref().unwrap_or_default()),
                string_array(r.tags.keys()),
                string_array(r.tags.values())
            );
        }
        sql.push(')');
    }
    sql
}

/// A ClickHouse string literal: backslash and quote escaped.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A backquoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(h: u32, m: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, h, m, 0)
            .single()
            .unwrap_or_default()
    }

    const fn r(granularity: Bucket, scope: Scope) -> Source {
        Source::Rollup(Rollup { granularity, scope })
    }

    #[test]
    fn planner_picks_the_smallest_rollup_that_answers() {
        let mut q = UsageQuery::new(at(0, 0), at(0, 0) + chrono::Duration::days(2));
        assert_eq!(plan(&q, true), r(Bucket::Day, Scope::All));
        q.bucket = Some(Bucket::Hour);
        assert_eq!(plan(&q, true), r(Bucket::Hour, Scope::AllByModel));
        // Status or credential filters need the all-accounts rollups that
        // keep those dimensions.
        q.status_class = Some(crate::model::StatusClass::ServerError);
        assert_eq!(plan(&q, true), r(Bucket::Hour, Scope::All));
        q.status_class = None;
        q.group_by = vec![GroupBy::Status];
        assert_eq!(plan(&q, true), r(Bucket::Hour, Scope::All));
        q.group_by = vec![GroupBy::Model];
        assert_eq!(plan(&q, true), r(Bucket::Hour, Scope::AllByModel));
        // No minute rollups: minutes come from raw rows.
        q.end = at(5, 30);
        assert_eq!(plan(&q, true), Source::Raw);
        // An account (or a key) needs the per-account rollup, which has
        // only days; the raw sort key serves an account's hours.
        let mut q = UsageQuery::new(at(0, 0), at(0, 0) + chrono::Duration::days(2));
        q.account_id = Some("acct_x".into());
        assert_eq!(plan(&q, true), r(Bucket::Day, Scope::Account));
        q.bucket = Some(Bucket::Hour);
        assert_eq!(plan(&q, true), Source::Raw);
        let mut q = UsageQuery::new(at(0, 0), at(0, 0) + chrono::Duration::days(1));
        q.group_by = vec![GroupBy::AccessKey];
        assert_eq!(plan(&q, true), r(Bucket::Day, Scope::Account));
        assert_eq!(plan(&q, false), Source::Raw);
    }

    #[test]
    fn migration_5_adds_reasoning_to_raw_rows_and_every_rollup() {
        let all = migrations();
        let (version, statements) = all[4].clone();
        assert_eq!(version, 5);
        let added: Vec<(&str, &str)> = statements.iter().filter_map(|s| added_column(s)).collect();
        assert_eq!(added.len(), 1 + ROLLUPS.len());
        assert_eq!(added[0], (RAW_TABLE, "tokens_reasoning"));
        for r in ROLLUPS {
            let table = r.table();
            assert!(added.contains(&(table.as_str(), "tokens_reasoning")));
            assert!(statements.iter().any(|s| s.starts_with(&format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {}",
                r.view()
            )) && s.contains("sumState(tokens_reasoning)")));
        }
        // Released migrations are unchanged: no reasoning before 5.
        for (version, statements) in &all[..4] {
            assert!(
                statements.iter().all(|s| !s.contains("reasoning")),
                "migration {version}"
            );
        }
        assert_eq!(added_column("CREATE TABLE x (a UInt8)"), None);
        assert_eq!(
            raw_columns()
                .nth(RAW_COLUMNS_V1.len())
                .map(|(name, _)| *name),
            Some("tokens_reasoning")
        );
    }

    #[test]
    fn migration_6_adds_the_endpoint_to_raw_rows_only_backfilled_from_the_client_api() {
        let all = migrations();
        let (version, statements) = all[5].clone();
        assert_eq!(version, 6);
        assert_eq!(
            statements,
            ["ALTER TABLE usage_events ADD COLUMN endpoint String \
              DEFAULT if(client_api = 'anthropic', 'messages', 'chat')"]
        );
        assert_eq!(added_column(&statements[0]), Some((RAW_TABLE, "endpoint")));
        for (version, statements) in &all[..5] {
            assert!(
                statements.iter().all(|s| !s.contains("endpoint")),
                "migration {version}"
            );
        }
        assert_eq!(
            raw_columns()
                .nth(RAW_COLUMNS_V1.len() + 1)
                .map(|(name, _)| *name),
            Some("endpoint")
        );
    }

    #[test]
    fn migration_7_adds_attribution_to_raw_rows_only() {
        let all = migrations();
        let (version, statements) = all.last().cloned().unwrap_or_default();
        assert_eq!(version, 7);
        assert_eq!(
            statements,
            [
                "ALTER TABLE usage_events ADD COLUMN end_user String DEFAULT ''",
                "ALTER TABLE usage_events ADD COLUMN tag_keys Array(String)",
                "ALTER TABLE usage_events ADD COLUMN tag_values Array(String)",
            ]
        );
        for s in &statements {
            assert_eq!(added_column(s).map(|(t, _)| t), Some(RAW_TABLE));
        }
        for (version, statements) in &all[..6] {
            assert!(
                statements
                    .iter()
                    .all(|s| !s.contains("end_user") && !s.contains("tag_")),
                "migration {version}"
            );
        }
        let last: Vec<&str> = raw_columns().map(|(name, _)| *name).collect();
        assert_eq!(
            last[last.len() - 3..],
            ["end_user", "tag_keys", "tag_values"]
        );
    }

    #[test]
    fn attribution_queries_read_raw_rows() {
        let day = UsageQuery::new(at(0, 0), at(0, 0) + chrono::Duration::days(2));
        let mut q = day.clone();
        q.end_user = Some("u'1".into());
        assert_eq!(plan(&q, true), Source::Raw);
        assert!(usage_query(&q, Source::Raw).contains("end_user = 'u\\'1'"));
        let mut q = day.clone();
        q.tag = Some(("team".into(), "search".into()));
        assert_eq!(plan(&q, true), Source::Raw);
        let sql = usage_query(&q, Source::Raw);
        assert!(
            sql.contains(
                "has(tag_keys, 'team') AND arrayElement(tag_values, indexOf(tag_keys, 'team')) = 'search'"
            ),
            "{sql}"
        );
        let mut q = day.clone();
        q.group_by = vec![GroupBy::Tag];
        q.group_tag = Some("team".into());
        assert_eq!(plan(&q, true), Source::Raw);
        let sql = usage_query(&q, Source::Raw);
        assert!(
            sql.contains("toUInt8(has(tag_keys, 'team')) AS g_has_tag"),
            "{sql}"
        );
        let mut q = day;
        q.account_id = Some("acct_x".into());
        q.group_by = vec![GroupBy::EndUser];
        assert_eq!(plan(&q, true), Source::Raw);
        assert!(usage_query(&q, Source::Raw).contains("end_user AS g_end_user"));
    }

    #[test]
    fn endpoint_queries_read_raw_rows() {
        use tollgate_core::Endpoint;
        let day = UsageQuery::new(at(0, 0), at(0, 0) + chrono::Duration::days(2));
        assert_eq!(plan(&day, true), r(Bucket::Day, Scope::All));
        let mut q = day.clone();
        q.endpoint = Some(Endpoint::Embeddings);
        assert_eq!(plan(&q, true), Source::Raw);
        let sql = usage_query(&q, Source::Raw);
        assert!(sql.contains("endpoint = 'embeddings'"), "{sql}");
        let mut q = day.clone();
        q.account_id = Some("acct_x".into());
        q.group_by = vec![GroupBy::Endpoint];
        assert_eq!(plan(&q, true), Source::Raw);
        let sql = usage_query(&q, Source::Raw);
        assert!(sql.contains("endpoint AS g_endpoint"), "{sql}");
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(ident("db`x"), "`db\\`x`");
    }
}
