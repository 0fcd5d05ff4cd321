//! Analytics benchmark: prints (never asserts)
//! - ingest rows/s through `UsageStore::write` into ClickHouse (RowBinary
//!   insert + four rollup views) and into SQLite;
//! - the latency of a one-month group-by-model hourly query over
//!   10 million synthetic events (generated server-side with
//!   `INSERT … SELECT … FROM numbers(N)`, which also fills the rollups),
//!   for one account and for all accounts, from rollups and from raw rows.
//!
//! `cargo run --release -p tollgate-analytics --example analytics_bench`
//! Env: TOLLGATE_CLICKHOUSE_URL (default http://127.0.0.1:8123),
//! BENCH_EVENTS (default 10000000), BENCH_INGEST_ROWS (default 1000000),
//! BENCH_KEEP (set: keep the `tollgate_bench` database afterwards).

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use std::time::{Duration, Instant};
use tollgate_analytics::clickhouse::sql::{plan, Source};
use tollgate_analytics::{
    Bucket, ClickHouseConfig, ClickHouseStore, GroupBy, SqliteUsageStore, UsageQuery, UsageRecord,
    UsageStore, WriteBatch,
};
use tollgate_core::{AccountId, TokenCounts};

type Error = Box<dyn std::error::Error>;

const MODELS: [(&str, &str); 6] = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("groq", "llama-3.3-70b-versatile"),
    ("google", "gemini-2.0-flash"),
];

/// 2025-03-01T00:00:00Z: the benchmark month.
const MONTH_START_MS: i64 = 1_740_787_200_000;
const MONTH_MS: i64 = 31 * 86_400_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn synthetic(i: u64, total: u64) -> UsageRecord {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let (provider, model) = MODELS[(h % 6) as usize];
    let input = 100 + h % 2_000;
    let output = 20 + (h >> 11) % 800;
    let started_ms = MONTH_START_MS + (i as i64 * MONTH_MS) / total.max(1) as i64;
    UsageRecord {
        log_partition: 0,
        log_offset: i + 1,
        event_id: format!("evt_{i}"),
        account_id: format!("acct_{}", i % 100),
        access_key_id: format!("ak_{}_{}", i % 100, h % 3),
        provider: provider.into(),
        model: model.into(),
        model_requested: model.into(),
        credential_source: if h.is_multiple_of(5) {
            "byok"
        } else {
            "operator"
        }
        .into(),
        client_api: "openai".into(),
        endpoint: tollgate_core::Endpoint::Chat,
        end_user: None,
        tags: Default::default(),
        status: if h % 100 < 95 { 200 } else { 429 },
        started_ms,
        streamed: i.is_multiple_of(2),
        error_kind: String::new(),
        tokens: TokenCounts {
            input,
            output,
            ..TokenCounts::default()
        },
        fee: Decimal::from(input + output) * Decimal::new(5, 8),
        upstream_cost: Decimal::from(input * 150 + output * 600) / Decimal::from(1_000_000_000u64),
        latency_us: 200_000 + (h >> 5) % 5_000_000,
        ttft_us: i.is_multiple_of(2).then_some(50_000 + (h >> 7) % 500_000),
    }
}

async fn ingest(store: &dyn UsageStore, rows: u64, batch: u64) -> Result<f64, Error> {
    let mut elapsed = Duration::ZERO;
    let mut i = 0;
    while i < rows {
        let end = (i + batch).min(rows);
        let write = WriteBatch {
            partition: 0,
            rows: (i..end).map(|j| synthetic(j, rows)).collect(),
            next_offset: end + 1,
        };
        let started = Instant::now();
        store.write(&write).await?;
        elapsed += started.elapsed();
        i = end;
    }
    Ok(rows as f64 / elapsed.as_secs_f64())
}

/// 10M events generated inside ClickHouse (the views fill the rollups).
fn generate_sql(events: u64) -> String {
    let models = MODELS.map(|(_, m)| format!("'{m}'")).join(", ");
    let providers = MODELS.map(|(p, _)| format!("'{p}'")).join(", ");
    format!(
        "INSERT INTO usage_events (event_id, log_partition, log_offset, account_id, access_key_id, \
         started_at, started_ms, provider, model, model_requested, credential_source, client_api, \
         status, streamed, error_kind, tokens_input, tokens_cached_input, tokens_cache_write_5m, \
         tokens_cache_write_1h, tokens_output, fee, upstream_cost, latency_us, ttft_us, has_ttft) \
         SELECT concat('evt_', toString(number)), toUInt32(1), number + 1, \
         concat('acct_', toString(number % 100)), \
         concat('ak_', toString(number % 100), '_', toString(intHash32(number) % 3)), \
         toDateTime(intDiv(ms, 1000)), ms, \
         arrayElement([{providers}], idx), arrayElement([{models}], idx), arrayElement([{models}], idx), \
         if(h % 5 = 0, 'byok', 'operator'), 'openai', \
         toUInt16(if(h % 100 < 95, 200, 429)), toUInt8(number % 2), '', \
         tin, toUInt64(0), toUInt64(0), toUInt64(0), tout, \
         toDecimal128((tin + tout) * 5, 18) / 100000000, \
         toDecimal128(tin * 150 + tout * 600, 18) / 1000000000, \
         toUInt64(200000 + h % 5000000), toUInt64(50000 + h % 500000), toUInt8(number % 2 = 0) \
         FROM (SELECT number, toUInt64(intHash64(number)) AS h, toUInt64(h % 6 + 1) AS idx, \
         toUInt64(100 + h % 2000) AS tin, toUInt64(20 + intDiv(h, 7) % 800) AS tout, \
         toUInt64({MONTH_START_MS} + intDiv(number * {MONTH_MS}, {events})) AS ms \
         FROM system.numbers LIMIT {events})"
    )
}

async fn time_query(
    store: &ClickHouseStore,
    query: &UsageQuery,
    source: Source,
) -> Result<(Duration, usize), Error> {
    let mut times = Vec::new();
    let mut groups = 0;
    for _ in 0..5 {
        let started = Instant::now();
        groups = store.query_from(query, source).await?.len();
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], groups))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url =
        std::env::var("TOLLGATE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let events = env_u64("BENCH_EVENTS", 10_000_000);
    let ingest_rows = env_u64("BENCH_INGEST_ROWS", 1_000_000);
    let config = ClickHouseConfig {
        url: url.clone(),
        database: "tollgate_bench".into(),
        request_timeout_ms: 600_000,
        ..ClickHouseConfig::default()
    };

    // --- ingest: ClickHouse
    let store = ClickHouseStore::new(config.clone());
    store.migrate().await?;
    store
        .execute("DROP DATABASE IF EXISTS tollgate_bench")
        .await?;
    store.migrate().await?;
    let ch_rate = ingest(&store, ingest_rows, 50_000).await?;
    println!(
        "ingest  clickhouse: {ch_rate:>10.0} rows/s  ({ingest_rows} rows, batches of 50000, RowBinary + 4 rollup views)"
    );

    // --- ingest: SQLite
    let dir = tempfile_dir()?;
    let db =
        tollgate_sqlite::Database::open(dir.join("bench.db"), tollgate_sqlite::Durability::Normal)?;
    let sqlite = SqliteUsageStore::open(&db)?;
    let sqlite_rows = ingest_rows.min(200_000);
    let sqlite_rate = ingest(&sqlite, sqlite_rows, 10_000).await?;
    println!(
        "ingest  sqlite:     {sqlite_rate:>10.0} rows/s  ({sqlite_rows} rows, batches of 10000, one transaction each)"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // --- 10M events, generated server-side
    store
        .execute("DROP DATABASE IF EXISTS tollgate_bench")
        .await?;
    store.migrate().await?;
    let started = Instant::now();
    store.execute(&generate_sql(events)).await?;
    println!(
        "generate {events} events in clickhouse (raw + rollups): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let start = Utc
        .timestamp_millis_opt(MONTH_START_MS)
        .single()
        .ok_or("time")?;
    let end = Utc
        .timestamp_millis_opt(MONTH_START_MS + MONTH_MS)
        .single()
        .ok_or("time")?;
    let mut query = UsageQuery::new(start, end);
    query.group_by = vec![GroupBy::Model];
    query.bucket = Some(Bucket::Hour);
    for (scope, account) in [("one account", Some("acct_7")), ("all accounts", None)] {
        query.account_id = account.map(AccountId::from);
        for (label, source) in [("rollup", plan(&query, true)), ("raw rows", Source::Raw)] {
            let (median, groups) = time_query(&store, &query, source).await?;
            println!(
                "query   month × model × hour, {scope:<12} from {label:<8}: {:>8.1} ms median of 5 ({groups} groups, {events} events; {source:?})",
                median.as_secs_f64() * 1000.0
            );
        }
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        store
            .execute("DROP DATABASE IF EXISTS tollgate_bench")
            .await?;
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("tollgate-analytics-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
