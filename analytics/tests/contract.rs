//! The usage-store contract: one fixed dataset, every contract query, the
//! same expected numbers from every store — SQLite, ClickHouse through the
//! planner (rollups where aligned), ClickHouse raw-only. Counts, tokens and
//! costs (decimal strings) are exact everywhere; percentiles are exact on
//! raw rows and within the stated rank tolerance from rollups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tollgate_analytics::clickhouse::sql::{plan, Source, ROLLUPS};
use tollgate_analytics::UsageStore;

async fn run_contract(
    store: &dyn UsageStore,
    mode_of: impl Fn(&tollgate_analytics::UsageQuery) -> Percentiles,
) {
    let events = dataset();
    let rows = rows(&events);
    load(store, &rows, 37).await;
    for (case, query) in contract_queries() {
        let got = store.query(&query).await.unwrap();
        let want = reference(&events, &query);
        assert_matches(case, &got, &want, mode_of(&query));
        if case == "account_b" {
            assert_account_b_literals(&got);
        }
        if case == "empty_range" {
            assert!(got.is_empty());
        }
        if case == "totals" {
            assert_eq!(got[0].requests, 240);
        }
    }
}

#[tokio::test]
async fn sqlite_store_meets_the_contract() {
    let (_dir, _db, store) = sqlite_store();
    run_contract(&*store, |_| Percentiles::Exact).await;
}

#[tokio::test]
async fn clickhouse_store_meets_the_contract_with_rollups() {
    let store = shared_clickhouse("contract_rollups").await;
    // The dataset must exercise every rollup level and the raw path.
    let sources: Vec<Source> = contract_queries()
        .iter()
        .map(|(_, q)| plan(q, true))
        .collect();
    assert!(sources.contains(&Source::Raw));
    for rollup in ROLLUPS {
        assert!(
            sources.contains(&Source::Rollup(rollup)),
            "no contract query reads {rollup:?}"
        );
    }
    run_contract(&*store, |q| match plan(q, true) {
        Source::Raw => Percentiles::Exact,
        Source::Rollup(_) => Percentiles::RankTolerance,
    })
    .await;
    let c = store.consistency().await.unwrap();
    assert!(c.exactly(243), "{c:?}");
    drop_database(&store).await;
}

#[tokio::test]
async fn clickhouse_raw_path_gives_exactly_the_sqlite_numbers() {
    let store = shared_clickhouse("contract_raw").await;
    let events = dataset();
    load(&*store, &rows(&events), 50).await;
    let (_dir, _db, sqlite) = sqlite_store();
    load(&*sqlite, &rows(&events), 50).await;
    for (case, query) in contract_queries() {
        let raw = store.query_from(&query, Source::Raw).await.unwrap();
        assert_matches(case, &raw, &reference(&events, &query), Percentiles::Exact);
        // Same queries, same numbers: identical to the embedded store.
        assert_eq!(raw, sqlite.query(&query).await.unwrap(), "{case}");
    }
    drop_database(&store).await;
}
