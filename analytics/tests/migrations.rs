//! Migrations: numbered, recorded, idempotent (run twice, and on a second
//! handle), on both stores; SQLite tables live beside the store crate's in
//! the same file with their own migration table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tollgate_analytics::{
    AnalyticsConfig, Backend, ClickHouseConfig, ClickHouseStore, SqliteUsageStore, UsageStore,
};

#[tokio::test]
async fn sqlite_migrations_are_recorded_and_idempotent() {
    let (_dir, db, store) = sqlite_store();
    store.migrate().await.unwrap();
    tollgate_analytics::migrate(&*store).await.unwrap();
    let again = SqliteUsageStore::open(&db).unwrap();
    again.migrate().await.unwrap();
    let conn = db.connect().unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM analytics_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![1, 2]);
    // The store crate's own migrations are untouched and separate.
    let store_versions: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert!(store_versions >= 1);
    // The configured store opens on the same file.
    let opened = tollgate_analytics::open_store(&AnalyticsConfig::default(), &db).unwrap();
    assert_eq!(opened.backend(), "sqlite");
}

/// The usage table as migration 1 created it (a released install's).
const SQLITE_V1_USAGE_TABLE: &str = "CREATE TABLE analytics_usage (
        event_id TEXT PRIMARY KEY, log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL,
        account_id TEXT NOT NULL, access_key_id TEXT NOT NULL, started_ms INTEGER NOT NULL,
        provider TEXT NOT NULL, model TEXT NOT NULL, model_requested TEXT NOT NULL,
        credential_source TEXT NOT NULL, client_api TEXT NOT NULL, status INTEGER NOT NULL,
        streamed INTEGER NOT NULL, error_kind TEXT NOT NULL, tokens_input INTEGER NOT NULL,
        tokens_cached_input INTEGER NOT NULL, tokens_cache_write_5m INTEGER NOT NULL,
        tokens_cache_write_1h INTEGER NOT NULL, tokens_output INTEGER NOT NULL, fee TEXT NOT NULL,
        upstream_cost TEXT NOT NULL, latency_us INTEGER NOT NULL, ttft_us INTEGER
     );
     CREATE INDEX analytics_usage_account_time ON analytics_usage (account_id, started_ms);
     CREATE INDEX analytics_usage_time ON analytics_usage (started_ms);
     CREATE TABLE analytics_positions (log_partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
     CREATE TABLE analytics_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
     INSERT INTO analytics_migrations VALUES (1, '2026-01-01T00:00:00Z');";

/// An install at migration 1 that holds usage rows upgrades in place: every
/// query answers as before, and a redelivered row is still dropped.
#[tokio::test]
async fn sqlite_migration_2_keeps_an_installs_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = tollgate_sqlite::Database::open(
        dir.path().join("tollgate.db"),
        tollgate_sqlite::Durability::Normal,
    )
    .unwrap();
    let events = dataset();
    let old_rows = rows(&events);
    {
        let mut conn = db.connect().unwrap();
        conn.execute_batch(SQLITE_V1_USAGE_TABLE).unwrap();
        let tx = conn.transaction().unwrap();
        for r in &old_rows {
            tx.execute(
                "INSERT INTO analytics_usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                    ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
                rusqlite::params![
                    r.event_id,
                    r.log_partition,
                    r.log_offset as i64,
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
                    r.tokens.input as i64,
                    r.tokens.cached_input as i64,
                    r.tokens.cache_write_5m as i64,
                    r.tokens.cache_write_1h as i64,
                    r.tokens.output as i64,
                    r.fee.to_string(),
                    r.upstream_cost.to_string(),
                    r.latency_us as i64,
                    r.ttft_us.map(|t| t as i64),
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    let store = SqliteUsageStore::open(&db).unwrap();
    assert_eq!(store.row_count().await.unwrap(), old_rows.len() as u64);
    for (case, query) in contract_queries() {
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&events, &query), Percentiles::Exact);
    }
    // The same rows again (no position stored to filter them): none added.
    load(&store, &old_rows, 100).await;
    assert_eq!(store.row_count().await.unwrap(), old_rows.len() as u64);
}

#[tokio::test]
async fn clickhouse_migrations_are_recorded_and_idempotent() {
    let store = shared_clickhouse("migrations").await;
    store.migrate().await.unwrap();
    let second = ClickHouseStore::new(store.config().clone());
    tollgate_analytics::migrate(&second).await.unwrap();
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Name {
        name: String,
    }
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(store.config().database.clone())
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let versions: Vec<u32> = client
        .query("SELECT DISTINCT version FROM analytics_migrations ORDER BY version")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let tables: Vec<Name> = client
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all()
        .await
        .unwrap();
    let tables: Vec<String> = tables.into_iter().map(|t| t.name).collect();
    for expected in [
        "analytics_migrations",
        "usage_events",
        "usage_position_floor",
        "usage_rollup_day",
        "usage_rollup_day_mv",
        "usage_rollup_all_hour",
        "usage_rollup_all_hour_mv",
        "usage_rollup_all_day",
        "usage_rollup_all_day_mv",
        "usage_rollup_all_model_hour",
        "usage_rollup_all_model_hour_mv",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "{expected} missing from {tables:?}"
        );
    }
    // Migration 4 dropped the rollups that cost the most ingest.
    for dropped in [
        "usage_rollup_hour",
        "usage_rollup_hour_mv",
        "usage_rollup_all_minute",
        "usage_rollup_all_minute_mv",
    ] {
        assert!(
            !tables.iter().any(|t| t == dropped),
            "{dropped} still in {tables:?}"
        );
    }
    let config = AnalyticsConfig {
        backend: Backend::ClickHouse,
        clickhouse: store.config().clone(),
        ..AnalyticsConfig::default()
    };
    let (_dir, db, _) = sqlite_store();
    let opened = tollgate_analytics::open_store(&config, &db).unwrap();
    assert_eq!(opened.backend(), "clickhouse");
    opened.migrate().await.unwrap();
    drop_database(&store).await;
}

/// An install at migration 3 that already holds events upgrades in place:
/// migration 4 drops two rollups and fills the one it adds from the raw
/// rows, so every count and every contract answer is exact afterwards.
#[tokio::test]
async fn clickhouse_migration_4_upgrades_an_install_with_data() {
    use tollgate_analytics::clickhouse::sql::{self, plan, Source};
    let store = shared_clickhouse("migrations_upgrade").await;
    drop_database(&store).await;
    let server = ClickHouseStore::new(ClickHouseConfig {
        database: "default".into(),
        ..store.config().clone()
    });
    server
        .execute(&sql::create_database(&store.config().database))
        .await
        .unwrap();
    store
        .execute(&sql::create_migrations_table())
        .await
        .unwrap();
    for (version, statements) in sql::migrations() {
        if version > 3 {
            continue;
        }
        for statement in statements {
            store.execute(&statement).await.unwrap();
        }
        store
            .execute(&sql::record_migration(version))
            .await
            .unwrap();
    }
    let events = dataset();
    let rows = rows(&events);
    for chunk in rows.chunks(40) {
        store.execute(&sql::insert_values(chunk)).await.unwrap();
    }
    store.migrate().await.unwrap();
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(rows.len() as u64), "{c:?}");
    for (case, query) in contract_queries() {
        let mode = match plan(&query, true) {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&events, &query), mode);
    }
    drop_database(&store).await;
}

#[test]
fn config_parses_from_toml_with_defaults() {
    let config: AnalyticsConfig = toml::from_str(
        r#"
        backend = "clickhouse"
        [clickhouse]
        url = "http://ch:8123"
        compression = "lz4"
        validation = true
        [sink]
        batch_max_rows = 500
        batch_max_wait_ms = 250
        [retention]
        months = 13
        "#,
    )
    .unwrap();
    assert_eq!(config.backend, Backend::ClickHouse);
    assert_eq!(
        config.clickhouse.compression,
        tollgate_analytics::ClickHouseCompression::Lz4
    );
    assert!(config.clickhouse.validation);
    assert_eq!(config.clickhouse.database, "tollgate");
    assert_eq!(config.sink.batch_max_rows, 500);
    assert_eq!(config.sink.retry_max_ms, 5_000);
    assert_eq!(config.retention.months, Some(13));
    assert!(toml::from_str::<AnalyticsConfig>("[sink]\nbatch_size = 1").is_err());
    let default = AnalyticsConfig::default();
    assert_eq!(default.backend, Backend::Sqlite);
    assert!(!default.clickhouse.validation);
    assert_eq!(
        default.clickhouse.compression,
        tollgate_analytics::ClickHouseCompression::None
    );
}

/// A file a release before the shared migration module wrote (the embedded
/// store's fixture): the usage tables keep their recorded versions (and the
/// times they were applied: nothing ran again) and their rows.
#[tokio::test]
async fn sqlite_file_from_the_previous_release_keeps_versions_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    let dump = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../eventlog/sqlite/tests/fixtures/previous-release.sql"
    ))
    .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&dump)
        .unwrap();
    let db = tollgate_sqlite::Database::open(&path, tollgate_sqlite::Durability::Normal).unwrap();
    let store = SqliteUsageStore::open(&db).unwrap();
    store.migrate().await.unwrap();
    let versions: Vec<(i64, String)> = db
        .connect()
        .unwrap()
        .prepare("SELECT version, applied_at FROM analytics_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        versions,
        vec![
            (1, "2026-12-07T17:04:42.474976869+00:00".to_string()),
            (2, "2026-12-07T17:04:42.475403940+00:00".to_string())
        ]
    );
    assert_eq!(store.row_count().await.unwrap(), 4);
    let positions = store.positions().await.unwrap();
    assert_eq!(positions.len(), 1);
}
