//! Migrations: numbered, recorded, idempotent (run twice, and on a second
//! handle), on both stores; SQLite tables live beside the store crate's in
//! the same file with their own migration table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tollgate_analytics::{
    AnalyticsConfig, Backend, ClickHouseConfig, ClickHouseStore, SqliteUsageStore, UsageStore,
};
use tollgate_core::Endpoint;

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
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
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

/// Events as an install of an earlier release holds them (the first half,
/// stored before reasoning counts and endpoints existed: their endpoint is
/// the one backfilled from the client API) followed by events stored after
/// the upgrade (the second half, with reasoning counts and endpoints): the
/// reference for an upgraded store.
fn upgraded_dataset() -> (Vec<tollgate_core::UsageEvent>, usize) {
    let events = dataset();
    let half = events.len() / 2;
    let mut upgraded = as_earlier_release(&events[..half]);
    upgraded.extend_from_slice(&events[half..]);
    assert!(upgraded[half..].iter().any(|e| e.tokens.reasoning > 0));
    // Some old events were embeddings or responses requests, which the
    // backfill reads as chat: the reference says so too.
    assert!(events[..half]
        .iter()
        .any(|e| e.endpoint == Some(Endpoint::Embeddings)));
    assert!(upgraded[..half]
        .iter()
        .all(|e| e.endpoint.is_none() && e.served_endpoint() != Endpoint::Embeddings));
    (upgraded, half)
}

/// A stored row's end user and tags (JSON), NULL when none.
type Attribution = (Option<String>, Option<String>);

/// Each stored row's (end user, tags JSON), from the SQLite file.
fn sqlite_attribution(db: &tollgate_sqlite::Database) -> Vec<Attribution> {
    db.connect()
        .unwrap()
        .prepare("SELECT end_user, tags FROM analytics_usage ORDER BY log_offset")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Each stored row's (client API, endpoint), from the SQLite file.
fn sqlite_endpoints(db: &tollgate_sqlite::Database) -> Vec<(String, String)> {
    db.connect()
        .unwrap()
        .prepare("SELECT client_api, endpoint FROM analytics_usage ORDER BY log_offset")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The backfill rule: `openai` → chat, `anthropic` → messages.
fn backfilled(client_api: &str) -> &'static str {
    match client_api {
        "anthropic" => "messages",
        _ => "chat",
    }
}

/// An install at migration 1 that holds usage rows upgrades in place: every
/// query answers as before (its rows report no reasoning tokens), rows
/// stored afterwards keep theirs, and a redelivered row is still dropped.
#[tokio::test]
async fn sqlite_migration_2_keeps_an_installs_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = tollgate_sqlite::Database::open(
        dir.path().join("tollgate.db"),
        tollgate_sqlite::Durability::Normal,
    )
    .unwrap();
    let (events, half) = upgraded_dataset();
    let all_rows = rows(&events);
    let old_rows = &all_rows[..half];
    {
        let mut conn = db.connect().unwrap();
        conn.execute_batch(SQLITE_V1_USAGE_TABLE).unwrap();
        let tx = conn.transaction().unwrap();
        for r in old_rows {
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
    // Migration 4 backfilled every old row's endpoint from its client API.
    let stored = sqlite_endpoints(&db);
    assert_eq!(stored.len(), half);
    assert!(stored.iter().any(|(api, _)| api == "anthropic"));
    for (api, endpoint) in &stored {
        assert_eq!(endpoint, backfilled(api));
    }
    // Migration 5 added attribution: the old rows have none (NULL).
    assert_eq!(sqlite_attribution(&db), vec![(None, None); half]);
    for (case, query) in contract_queries() {
        let got = store.query(&query).await.unwrap();
        assert_matches(
            case,
            &got,
            &reference(&events[..half], &query),
            Percentiles::Exact,
        );
    }
    load(&store, &all_rows[half..], 100).await;
    for (case, query) in contract_queries() {
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&events, &query), Percentiles::Exact);
    }
    // Rows stored after it keep their end user and tags (JSON), NULL when none.
    let stored = sqlite_attribution(&db);
    let mut want: Vec<(u64, Attribution)> = all_rows[half..]
        .iter()
        .map(|r| {
            let tags = (!r.tags.is_empty()).then(|| serde_json::to_string(&r.tags).unwrap());
            (r.log_offset, (r.end_user.clone(), tags))
        })
        .collect();
    want.sort_unstable();
    assert!(want.iter().any(|(_, (u, t))| u.is_some() && t.is_some()));
    assert!(want.iter().any(|(_, (u, t))| u.is_none() && t.is_none()));
    assert_eq!(
        stored[half..],
        want.into_iter().map(|(_, a)| a).collect::<Vec<_>>()
    );
    // Contract answers compare whole token totals, reasoning included.
    let totals = &contract_queries()[0].1;
    let want: u64 = reference(&events, totals)
        .iter()
        .map(|g| g.group.tokens.reasoning)
        .sum();
    assert!(want > 0);
    // The same rows again (no position stored to filter them): none added.
    load(&store, &all_rows, 100).await;
    assert_eq!(store.row_count().await.unwrap(), all_rows.len() as u64);
    // Rows stored after the upgrade keep the endpoint their events record.
    let stored = sqlite_endpoints(&db);
    let recorded: Vec<&str> = events[half..]
        .iter()
        .map(|e| e.served_endpoint().as_str())
        .collect();
    assert!(recorded.contains(&"embeddings") && recorded.contains(&"responses"));
    let mut after: Vec<(u64, &str)> = all_rows[half..]
        .iter()
        .map(|r| (r.log_offset, r.endpoint.as_str()))
        .collect();
    after.sort_unstable();
    assert_eq!(
        stored[half..]
            .iter()
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>(),
        after.iter().map(|(_, e)| *e).collect::<Vec<_>>()
    );
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
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
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
    let events = as_earlier_release(&dataset());
    let rows = rows(&events);
    for chunk in rows.chunks(40) {
        store.execute(&sql::insert_values_v1(chunk)).await.unwrap();
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

/// An install at migration 4 with events upgrades in place: migration 5
/// adds the reasoning column to the raw table and every rollup (the rows
/// and rollup states already there read 0), the views carry it from then
/// on, and every contract answer — from rollups and from raw rows — is
/// exact over old and new rows together. Run twice, it changes nothing.
#[tokio::test]
async fn clickhouse_migration_5_adds_reasoning_keeping_rows_and_rollups() {
    use tollgate_analytics::clickhouse::sql::{self, plan, Source};
    let store = shared_clickhouse("migrations_reasoning").await;
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
        if version > 4 {
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
    let (events, half) = upgraded_dataset();
    let rows = rows(&events);
    for chunk in rows[..half].chunks(40) {
        store.execute(&sql::insert_values_v1(chunk)).await.unwrap();
    }
    // A run of migration 5 interrupted after its first statements: the
    // next run skips the columns already added and completes it.
    let migration_5 = &sql::migrations()[4];
    assert_eq!(migration_5.0, 5);
    for statement in &migration_5.1[..2] {
        assert!(sql::added_column(statement).is_some());
        store.execute(statement).await.unwrap();
    }
    store.migrate().await.unwrap();
    tollgate_analytics::migrate(&ClickHouseStore::new(store.config().clone()))
        .await
        .unwrap();
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(half as u64), "{c:?}");
    for (case, query) in contract_queries() {
        let got = store.query(&query).await.unwrap();
        let want = reference(&events[..half], &query);
        assert!(got.iter().all(|g| g.tokens.reasoning == 0), "{case}");
        let mode = match plan(&query, true) {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        assert_matches(case, &got, &want, mode);
    }
    load(&*store, &rows[half..], 60).await;
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(rows.len() as u64), "{c:?}");
    let mut rollup_answers = 0;
    for (case, query) in contract_queries() {
        let mode = match plan(&query, true) {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => {
                rollup_answers += 1;
                Percentiles::RankTolerance
            }
        };
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&events, &query), mode);
    }
    assert!(rollup_answers > 0);
    drop_database(&store).await;
}

/// Each raw row's (client API, endpoint) as ClickHouse reads it, by offset.
async fn clickhouse_endpoints(store: &ClickHouseStore) -> Vec<(String, String)> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Stored {
        client_api: String,
        endpoint: String,
    }
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(store.config().database.clone())
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let rows: Vec<Stored> = client
        .query("SELECT client_api, endpoint FROM usage_events ORDER BY log_offset")
        .fetch_all()
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| (r.client_api, r.endpoint))
        .collect()
}

/// An install at migration 5 with events upgrades in place: migration 6
/// adds the endpoint to the raw table with a default computed from the
/// client API, so the rows already there read the backfilled endpoint
/// (nothing rewritten, nothing lost), rows stored afterwards keep their
/// own, the rollups are untouched, and every contract answer — endpoint
/// queries from raw rows, the others from rollups where aligned — is exact
/// over old and new rows together. Interrupted after its statement or run
/// twice, it completes and changes nothing.
#[tokio::test]
async fn clickhouse_migration_6_adds_the_endpoint_backfilling_existing_rows() {
    use tollgate_analytics::clickhouse::sql::{self, plan, Source};
    let store = shared_clickhouse("migrations_endpoint").await;
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
        if version > 5 {
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
    let half = events.len() / 2;
    // The release before endpoints: reasoning counted, no endpoint (and no
    // attribution, which came later still).
    let mut upgraded = without_attribution(&without_endpoint(&events[..half]));
    upgraded.extend_from_slice(&events[half..]);
    let rows = rows(&upgraded);
    for chunk in rows[..half].chunks(40) {
        store.execute(&sql::insert_values_v5(chunk)).await.unwrap();
    }
    // Interrupted after its one statement: the next run skips the column.
    let (version, statements) = sql::migrations()[5].clone();
    assert_eq!(version, 6);
    store.execute(&statements[0]).await.unwrap();
    store.migrate().await.unwrap();
    tollgate_analytics::migrate(&ClickHouseStore::new(store.config().clone()))
        .await
        .unwrap();
    let old = clickhouse_endpoints(&store).await;
    assert_eq!(old.len(), half);
    assert!(old.iter().any(|(api, _)| api == "anthropic"));
    for (api, endpoint) in &old {
        assert_eq!(endpoint, backfilled(api));
    }
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(half as u64), "{c:?}");
    for (case, query) in contract_queries() {
        let mode = match plan(&query, true) {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&upgraded[..half], &query), mode);
    }
    load(&*store, &rows[half..], 60).await;
    let all = clickhouse_endpoints(&store).await;
    assert_eq!(all.len(), rows.len());
    for ((_, endpoint), row) in all.iter().zip(&rows) {
        assert_eq!(endpoint, row.endpoint.as_str(), "offset {}", row.log_offset);
    }
    assert!(all[half..].iter().any(|(_, e)| e == "embeddings"));
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(rows.len() as u64), "{c:?}");
    let mut endpoint_cases = 0;
    for (case, query) in contract_queries() {
        let source = plan(&query, true);
        let mode = match source {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        if query.endpoint.is_some() || query.groups(tollgate_analytics::GroupBy::Endpoint) {
            assert_eq!(source, Source::Raw, "{case}");
            endpoint_cases += 1;
        }
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&upgraded, &query), mode);
    }
    assert!(endpoint_cases >= 4);
    drop_database(&store).await;
}

/// Each raw row's (end user, tag keys, tag values) as ClickHouse reads it,
/// by offset.
async fn clickhouse_attribution(
    store: &ClickHouseStore,
) -> Vec<(String, Vec<String>, Vec<String>)> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Stored {
        end_user: String,
        tag_keys: Vec<String>,
        tag_values: Vec<String>,
    }
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(store.config().database.clone())
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let rows: Vec<Stored> = client
        .query("SELECT end_user, tag_keys, tag_values FROM usage_events ORDER BY log_offset")
        .fetch_all()
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| (r.end_user, r.tag_keys, r.tag_values))
        .collect()
}

/// An install at migration 6 with events upgrades in place: migration 7
/// adds `end_user` and the parallel tag arrays to the raw table only, the
/// rows already there read `''` and `[]` (nothing rewritten, nothing
/// lost), rows stored afterwards keep theirs, the rollups are untouched,
/// and every contract answer — attribution queries from raw rows, the
/// others from rollups where aligned — is exact over old and new rows.
/// Interrupted after its first statement or run twice, it completes.
#[tokio::test]
async fn clickhouse_migration_7_adds_attribution_keeping_rows() {
    use tollgate_analytics::clickhouse::sql::{self, plan, Source};
    let store = shared_clickhouse("migrations_attribution").await;
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
        if version > 6 {
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
    let half = events.len() / 2;
    let mut upgraded = without_attribution(&events[..half]);
    upgraded.extend_from_slice(&events[half..]);
    let rows = rows(&upgraded);
    for chunk in rows[..half].chunks(40) {
        store.execute(&sql::insert_values_v6(chunk)).await.unwrap();
    }
    let (version, statements) = sql::migrations().pop().unwrap();
    assert_eq!(version, 7);
    store.execute(&statements[0]).await.unwrap();
    store.migrate().await.unwrap();
    tollgate_analytics::migrate(&ClickHouseStore::new(store.config().clone()))
        .await
        .unwrap();
    let old = clickhouse_attribution(&store).await;
    assert_eq!(old, vec![(String::new(), vec![], vec![]); half]);
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(half as u64), "{c:?}");
    for (case, query) in contract_queries() {
        let mode = match plan(&query, true) {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&upgraded[..half], &query), mode);
    }
    load(&*store, &rows[half..], 60).await;
    let all = clickhouse_attribution(&store).await;
    assert_eq!(all.len(), rows.len());
    for ((end_user, keys, values), row) in all.iter().zip(&rows) {
        assert_eq!(
            (end_user.as_str(), keys, values),
            (
                row.end_user.as_deref().unwrap_or_default(),
                &row.tags.keys().cloned().collect::<Vec<_>>(),
                &row.tags.values().cloned().collect::<Vec<_>>()
            ),
            "offset {}",
            row.log_offset
        );
    }
    assert!(all[half..]
        .iter()
        .any(|(u, k, _)| u == "u_o'brien" && k.len() == 2));
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(rows.len() as u64), "{c:?}");
    let mut attribution_cases = 0;
    for (case, query) in contract_queries() {
        let source = plan(&query, true);
        let mode = match source {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        if query.uses_attribution() {
            assert_eq!(source, Source::Raw, "{case}");
            attribution_cases += 1;
        }
        let got = store.query(&query).await.unwrap();
        assert_matches(case, &got, &reference(&upgraded, &query), mode);
    }
    assert!(attribution_cases >= 6);
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
        versions[..2],
        [
            (1, "2026-12-07T17:04:42.474976869+00:00".to_string()),
            (2, "2026-12-07T17:04:42.475403940+00:00".to_string())
        ]
    );
    // Migrations 3 (reasoning tokens), 4 (endpoints) and 5 (attribution)
    // run on it once; its rows report no reasoning, read the endpoint
    // backfilled from their client API (all four are OpenAI chat requests)
    // and have no end user and no tags.
    assert_eq!(
        versions.iter().map(|v| v.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(sqlite_attribution(&db), vec![(None, None); 4]);
    assert_eq!(store.row_count().await.unwrap(), 4);
    let reasoning: Vec<i64> = db
        .connect()
        .unwrap()
        .prepare("SELECT tokens_reasoning FROM analytics_usage")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(reasoning, vec![0; 4]);
    assert_eq!(
        sqlite_endpoints(&db),
        vec![("openai".to_owned(), "chat".to_owned()); 4]
    );
    let mut by_endpoint =
        tollgate_analytics::UsageQuery::new(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"));
    by_endpoint.group_by = vec![tollgate_analytics::GroupBy::Endpoint];
    let got = store.query(&by_endpoint).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].endpoint, got[0].requests),
        (Some(Endpoint::Chat), 4)
    );
    let positions = store.positions().await.unwrap();
    assert_eq!(positions.len(), 1);
}
