//! Every migration and every query the ClickHouse store sends, run through
//! chdb (ClickHouse 26, in-process) as well: the SQL must work on Debian's
//! 18.16 (the other tests) and on a current engine (this one), with the
//! same contract numbers. Fails — never skips — when python3 or chdb is
//! missing (`pip install -r tests/python/requirements.txt`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use tollgate_analytics::clickhouse::sql::{self, plan, Source, ROLLUPS};
use tollgate_analytics::clickhouse::{groups_from_rows, AggRow};

/// The rollup migration 4 adds and fills from the raw rows already there.
const BACKFILLED: &str = "usage_rollup_all_model_hour";

#[derive(Default)]
struct Script {
    steps: Vec<Value>,
    db: String,
    /// Columns added in each database so far: a run of the migrations
    /// skips them again, as the store's runner does (ClickHouse 18.16 has
    /// no `ADD COLUMN IF NOT EXISTS`).
    added: std::collections::HashSet<(String, String, String)>,
}

impl Script {
    fn use_db(&mut self, db: &str) -> usize {
        self.db = db.to_owned();
        self.steps.push(json!({ "use": db }));
        self.steps.len() - 1
    }
    fn exec(&mut self, sql: impl Into<String>) -> usize {
        self.steps
            .push(json!({ "sql": sql.into(), "fetch": false }));
        self.steps.len() - 1
    }
    fn fetch(&mut self, sql: impl Into<String>) -> usize {
        self.steps.push(json!({ "sql": sql.into(), "fetch": true }));
        self.steps.len() - 1
    }
    fn migrate(&mut self, only: Option<&[u32]>) {
        self.exec(sql::create_migrations_table());
        self.fetch(sql::applied_migrations());
        for (version, statements) in sql::migrations() {
            if only.is_some_and(|v| !v.contains(&version)) {
                continue;
            }
            for statement in statements {
                if let Some(table) = statement.strip_prefix("DROP TABLE IF EXISTS ") {
                    let db = self.db.clone();
                    self.added.retain(|(d, t, _)| !(*d == db && t == table));
                }
                if let Some((table, column)) = sql::added_column(&statement) {
                    let key = (self.db.clone(), table.to_owned(), column.to_owned());
                    if !self.added.insert(key) {
                        continue;
                    }
                }
                self.exec(statement);
            }
            self.exec(sql::record_migration(version));
        }
    }

    fn run(&self) -> (String, Vec<Value>) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/analytics_chdb.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 is required for the chdb test: {e}"));
        let input = serde_json::to_vec(&json!({ "steps": self.steps })).unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chdb run failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            parsed["engine"].as_str().unwrap_or_default().to_owned(),
            parsed["results"].as_array().unwrap().clone(),
        )
    }
}

fn rows_of(results: &[Value], step: usize) -> Vec<Value> {
    results[step].as_array().unwrap().clone()
}

fn num(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {row}"))
}

#[test]
fn migrations_and_every_query_run_on_current_clickhouse_with_the_same_numbers() {
    let events = dataset();
    let rows = rows(&events);
    let mut s = Script::default();

    // Main database: migrations twice (idempotent), the dataset, every query.
    s.exec(sql::create_database("tg_chdb"));
    s.use_db("tg_chdb");
    s.migrate(None);
    s.migrate(None);
    let applied = s.fetch(sql::applied_migrations());
    for chunk in rows.chunks(40) {
        s.exec(sql::insert_values(chunk));
    }
    let raw_positions = s.fetch(sql::raw_positions());
    let floor_before = s.fetch(sql::floor_positions());
    let raw_position = s.fetch(sql::raw_position(0));
    let floor_position_before = s.fetch(sql::floor_position(0));
    let rollup_positions: Vec<usize> = ROLLUPS
        .iter()
        .map(|r| s.fetch(sql::rollup_position(*r, 0)))
        .collect();
    let consistency = s.fetch(sql::consistency_counts());
    let mut query_steps = Vec::new();
    for (case, query) in contract_queries() {
        let planned = plan(&query, true);
        query_steps.push((
            case,
            query.clone(),
            planned,
            s.fetch(sql::usage_query(&query, planned)),
        ));
        query_steps.push((
            case,
            query.clone(),
            Source::Raw,
            s.fetch(sql::usage_query(&query, Source::Raw)),
        ));
    }
    // A repair that has nothing to do changes nothing.
    for r in ROLLUPS {
        s.exec(sql::repair_rollup(r, 0, Some(rows.len() as u64)));
    }
    let consistency_after_noop_repair = s.fetch(sql::consistency_counts());
    // Retention: keep a position floor, drop February everywhere.
    let partitions = s.fetch(sql::list_partitions());
    s.exec(sql::record_floor(&[(0, rows.len() as u64 + 1)]).unwrap());
    let floor_after = s.fetch(sql::floor_positions());
    let floor_position_after = s.fetch(sql::floor_position(0));
    s.exec(sql::drop_partition(sql::RAW_TABLE, 202502));
    for r in ROLLUPS {
        s.exec(sql::drop_partition(&r.table(), 202502));
    }
    let partitions_after = s.fetch(sql::list_partitions());
    let consistency_after_drop = s.fetch(sql::consistency_counts());

    // Second database: rollups created after raw rows exist — migration 2's
    // stay empty until repaired (the re-derivation the store runs when a
    // rollup is behind), migration 4 backfills the one it adds.
    s.use_db("tg_chdb_repair");
    s.migrate(Some(&[1]));
    for chunk in rows.chunks(100) {
        s.exec(sql::insert_values_v1(chunk));
    }
    s.migrate(Some(&[2, 3, 4, 5, 6, 7]));
    let before_repair = s.fetch(sql::consistency_counts());
    // Rows of the first release read the endpoint backfilled from their
    // client API (migration 6's default).
    let backfilled_endpoints =
        s.fetch("SELECT client_api, endpoint FROM usage_events ORDER BY log_offset");
    for r in ROLLUPS.iter().filter(|r| r.table() != BACKFILLED) {
        s.exec(sql::repair_rollup(*r, 0, None));
    }
    let after_repair = s.fetch(sql::consistency_counts());
    let empty_rollup = s.fetch(sql::rollup_position(ROLLUPS[0], 7));
    let repaired_positions = s.fetch(sql::rollup_position(ROLLUPS[2], 0));
    let backfilled_positions = s.fetch(sql::rollup_position(ROLLUPS[3], 0));

    // Third database: an install at migration 5 (reasoning, no endpoint)
    // holding the first third, upgraded to 6, the second third stored with
    // endpoints (no attribution), upgraded to 7, the last third stored with
    // end users and tags: every contract query answers for old and new rows.
    let third = events.len() / 3;
    let mut upgraded = without_attribution(&without_endpoint(&events[..third]));
    upgraded.extend(without_attribution(&events[third..2 * third]));
    upgraded.extend_from_slice(&events[2 * third..]);
    let upgraded_rows = common::rows(&upgraded);
    s.use_db("tg_chdb_endpoint");
    s.migrate(Some(&[1, 2, 3, 4, 5]));
    for chunk in upgraded_rows[..third].chunks(40) {
        s.exec(sql::insert_values_v5(chunk));
    }
    s.migrate(Some(&[6]));
    for chunk in upgraded_rows[third..2 * third].chunks(40) {
        s.exec(sql::insert_values_v6(chunk));
    }
    s.migrate(Some(&[7]));
    for chunk in upgraded_rows[2 * third..].chunks(40) {
        s.exec(sql::insert_values(chunk));
    }
    // Rows stored before migration 7 read no end user and no tags.
    let attribution_of_old_rows = s.fetch(format!(
        "SELECT count() AS n, sum(end_user != '') AS with_end_user, \
         sum(length(tag_keys) + length(tag_values)) AS tags FROM usage_events \
         WHERE log_offset <= {}",
        2 * third
    ));
    let mut upgraded_steps = Vec::new();
    for (case, query) in contract_queries() {
        let planned = plan(&query, true);
        upgraded_steps.push((
            case,
            query.clone(),
            planned,
            s.fetch(sql::usage_query(&query, planned)),
        ));
    }

    let (engine, results) = s.run();
    assert!(
        !engine.starts_with("18."),
        "chdb should be a current ClickHouse, got {engine}"
    );

    let versions: Vec<u64> = rows_of(&results, applied)
        .iter()
        .map(|r| num(r, "version"))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
    let n = rows.len() as u64;
    let p = rows_of(&results, raw_positions);
    assert_eq!(
        (num(&p[0], "log_partition"), num(&p[0], "next_offset")),
        (0, n + 1)
    );
    assert!(rows_of(&results, floor_before).is_empty());
    let one = &rows_of(&results, raw_position)[0];
    assert_eq!((num(one, "n"), num(one, "max_offset")), (n, n));
    let fp = &rows_of(&results, floor_position_before)[0];
    assert_eq!(num(fp, "n"), 0);
    for step in rollup_positions {
        let r = &rows_of(&results, step)[0];
        assert_eq!((num(r, "n"), num(r, "max_offset")), (n, n));
    }
    let counted = |step: usize| -> Vec<(String, u64)> {
        let row = &rows_of(&results, step)[0];
        let mut fields = vec!["raw_rows".to_owned(), "raw_events".to_owned()];
        fields.extend(ROLLUPS.iter().map(|r| r.table()));
        fields
            .into_iter()
            .map(|f| {
                let v = num(row, &f);
                (f, v)
            })
            .collect()
    };
    for step in [consistency, consistency_after_noop_repair] {
        for (field, value) in counted(step) {
            assert_eq!(value, n, "{field}");
        }
    }
    for (case, query, source, step) in query_steps {
        let agg: Vec<AggRow> = rows_of(&results, step)
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let got = groups_from_rows(&query, agg).unwrap();
        let mode = match source {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        assert_matches(
            &format!("chdb {case} ({source:?})"),
            &got,
            &reference(&events, &query),
            mode,
        );
        if case == "account_b" {
            assert_account_b_literals(&got);
        }
    }
    let months = |step: usize| -> Vec<(String, String)> {
        rows_of(&results, step)
            .iter()
            .map(|r| {
                (
                    r["table"].as_str().unwrap().to_owned(),
                    r["partition"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let before = months(partitions);
    assert!(before.contains(&("usage_events".into(), "202502".into())));
    assert!(before.contains(&("usage_rollup_all_day".into(), "202503".into())));
    assert_eq!(before.len(), 10, "{before:?}");
    let after = months(partitions_after);
    assert!(after.iter().all(|(_, p)| p == "202503"), "{after:?}");
    assert_eq!(after.len(), 5);
    let f = &rows_of(&results, floor_after)[0];
    assert_eq!(num(f, "next_offset"), n + 1);
    let fp = &rows_of(&results, floor_position_after)[0];
    assert_eq!((num(fp, "n"), num(fp, "max_offset")), (1, n + 1));
    let march = events
        .iter()
        .filter(|e| e.started_at >= t("2025-03-01T00:00:00Z"))
        .count() as u64;
    for (field, value) in counted(consistency_after_drop) {
        assert_eq!(value, march, "{field} after dropping February");
    }

    for (field, value) in counted(before_repair) {
        let expected = if field.starts_with("raw") || field == BACKFILLED {
            n
        } else {
            0
        };
        assert_eq!(value, expected, "{field} before repair");
    }
    for (field, value) in counted(after_repair) {
        assert_eq!(value, n, "{field} after repair");
    }
    for step in [repaired_positions, backfilled_positions] {
        let r = &rows_of(&results, step)[0];
        assert_eq!((num(r, "n"), num(r, "max_offset")), (n, n));
    }
    let e = &rows_of(&results, empty_rollup)[0];
    assert_eq!(num(e, "n"), 0);

    let stored = rows_of(&results, backfilled_endpoints);
    assert_eq!(stored.len(), rows.len());
    assert!(stored.iter().any(|r| r["client_api"] == "anthropic"));
    for r in &stored {
        let want = if r["client_api"] == "anthropic" {
            "messages"
        } else {
            "chat"
        };
        assert_eq!(r["endpoint"], want, "{r}");
    }
    let old = &rows_of(&results, attribution_of_old_rows)[0];
    assert_eq!(
        (num(old, "n"), num(old, "with_end_user"), num(old, "tags")),
        (2 * third as u64, 0, 0)
    );
    let mut endpoint_cases = 0;
    let mut attribution_cases = 0;
    for (case, query, source, step) in upgraded_steps {
        let agg: Vec<AggRow> = rows_of(&results, step)
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let got = groups_from_rows(&query, agg).unwrap();
        let mode = match source {
            Source::Raw => Percentiles::Exact,
            Source::Rollup(_) => Percentiles::RankTolerance,
        };
        if query.endpoint.is_some() || query.groups(tollgate_analytics::GroupBy::Endpoint) {
            assert_eq!(source, Source::Raw, "{case}");
            endpoint_cases += 1;
        }
        if query.uses_attribution() {
            assert_eq!(source, Source::Raw, "{case}");
            attribution_cases += 1;
        }
        assert_matches(
            &format!("chdb upgraded {case} ({source:?})"),
            &got,
            &reference(&upgraded, &query),
            mode,
        );
    }
    assert!(endpoint_cases >= 4);
    assert!(attribution_cases >= 6);
}
