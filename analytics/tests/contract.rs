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
    attribution_groups_add_up(store).await;
}

/// Grouped by end user or by a tag, the groups (null group included) add
/// up to the ungrouped totals — which the planner may answer from a
/// rollup — per account and across accounts.
async fn attribution_groups_add_up(store: &dyn UsageStore) {
    use tollgate_analytics::{GroupBy, UsageGroup};
    fn sum(groups: &[UsageGroup]) -> (u64, u64, TokensAndCost) {
        let mut t = TokensAndCost::default();
        for g in groups {
            t.0.input += g.tokens.input;
            t.0.cached_input += g.tokens.cached_input;
            t.0.cache_write_5m += g.tokens.cache_write_5m;
            t.0.cache_write_1h += g.tokens.cache_write_1h;
            t.0.output += g.tokens.output;
            t.0.reasoning += g.tokens.reasoning;
            t.1 += g.cost.fee;
            t.2 += g.cost.upstream;
        }
        t.1 = t.1.normalize();
        t.2 = t.2.normalize();
        (
            groups.iter().map(|g| g.requests).sum(),
            groups.iter().map(|g| g.errors).sum(),
            t,
        )
    }
    for account in [Some(ACCT_A), None] {
        let mut total = q(FULL_START, FULL_END);
        total.account_id = account.map(Into::into);
        let want = sum(&store.query(&total).await.unwrap());
        assert!(want.0 > 0);
        for (dim, key) in [
            (GroupBy::EndUser, None),
            (GroupBy::Tag, Some("team")),
            (GroupBy::Tag, Some("env")),
        ] {
            let mut grouped = total.clone();
            grouped.group_by = vec![dim];
            grouped.group_tag = key.map(Into::into);
            let groups = store.query(&grouped).await.unwrap();
            assert!(groups.len() >= 2, "{dim:?} {key:?}: {groups:?}");
            assert!(
                groups
                    .iter()
                    .any(|g| g.end_user == Some(None) || g.tag == Some(None)),
                "{dim:?} {key:?}: a group for rows without it"
            );
            assert_eq!(sum(&groups), want, "{account:?} {dim:?} {key:?}");
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct TokensAndCost(
    tollgate_analytics::model::TokenTotals,
    rust_decimal::Decimal,
    rust_decimal::Decimal,
);

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
