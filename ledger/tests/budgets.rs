//! Budget spend, worked with exact amounts: what counts (usage debits after
//! the price plan, by the day the usage started), per key and per account,
//! periods that reset by time, lifetime budgets from their creation
//! instant, duplicates, the audit, and republishing when budgets change.
//!
//! Prices (common.rs): input $3/M, output $15/M, fee $0.05/M tokens; so
//! 100,000 input tokens cost $0.30 + $0.005 = $0.305 and 200,000 cost $0.61.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::{DateTime, Utc};
use common::*;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::billing::{AdjustmentKind, BalanceUpdate};
use tollgate_core::budget::{Budget, BudgetId, BudgetPeriod, BudgetSpend, SpendScope};
use tollgate_core::pricing::AppliedPlan;
use tollgate_core::{AccessKeyId, AccountId, CredentialSource, EventBody, UsageEvent, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{Batch, EventLog, LogRecord};
use tollgate_ledger::{audit, BudgetSource, LedgerService};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

/// Budgets a test sets directly.
#[derive(Default)]
struct TestBudgets(Mutex<Vec<Budget>>);

impl BudgetSource for TestBudgets {
    fn budgets_of(&self, account: &AccountId) -> Vec<Budget> {
        let mut of: Vec<Budget> = self
            .0
            .lock()
            .iter()
            .filter(|b| &b.account_id == account)
            .cloned()
            .collect();
        of.sort_by(|a, b| a.id.cmp(&b.id));
        of
    }
    fn all_budgets(&self) -> BTreeMap<BudgetId, Budget> {
        self.0
            .lock()
            .iter()
            .map(|b| (b.id.clone(), b.clone()))
            .collect()
    }
}

fn budget(
    id: &str,
    account: &str,
    key: Option<&str>,
    amount: &str,
    period: BudgetPeriod,
    created: &str,
) -> Budget {
    Budget {
        id: BudgetId(id.into()),
        account_id: AccountId::from(account),
        access_key_id: key.map(AccessKeyId::from),
        name: id.into(),
        amount: usd(amount),
        period,
        soft_threshold_percent: 80,
        refuse: true,
        created_at: at(created),
        updated_at: at(created),
    }
}

/// A usage event of `input` uncached tokens by `key`, started at `started`
/// and finished at `finished`.
fn used(account: &str, key: &str, input: u64, started: &str, finished: &str) -> UsageEvent {
    let mut event = usage(account, input, 0, CredentialSource::Operator, finished);
    event.access_key_id = AccessKeyId::from(key);
    event.started_at = at(started);
    event
}

struct Harness {
    ledger: Arc<LedgerService>,
    log: Arc<SqliteEventLog>,
    db: Database,
    budgets: Arc<TestBudgets>,
    next: u64,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new(budgets: Vec<Budget>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("l.db"), Durability::Normal).unwrap();
        let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
        let budgets = Arc::new(TestBudgets(Mutex::new(budgets)));
        let ledger = LedgerService::open(
            &db,
            log.clone() as Arc<dyn EventLog>,
            &prometheus::Registry::new(),
            budgets.clone(),
        )
        .unwrap();
        Harness {
            ledger,
            log,
            db,
            budgets,
            next: 0,
            dir,
        }
    }

    async fn append(&self, body: EventBody) {
        let key = match &body {
            EventBody::Usage(u) => u.account_id.to_string(),
            EventBody::Purchase(p) => p.account_id.to_string(),
            EventBody::Adjustment(a) => a.account_id.to_string(),
            _ => "tick".into(),
        };
        self.log
            .append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.into(),
                key,
                payload: payload(body),
            })
            .await
            .unwrap();
        self.log.flush().await.unwrap();
    }

    /// Apply what was appended since the last call, `per_batch` records at
    /// a time; the balance updates of the last batch.
    async fn apply(&mut self, per_batch: usize) -> Vec<BalanceUpdate> {
        let records = self
            .log
            .read(topics::ACCOUNT_EVENTS, 0, self.next, 100_000)
            .await
            .unwrap();
        let mut last = Vec::new();
        for chunk in records.chunks(per_batch.max(1)) {
            self.next = chunk.last().unwrap().offset + 1;
            let batch = Batch {
                partition: 0,
                records: chunk.to_vec(),
            };
            last = self
                .ledger
                .apply_batch(topics::ACCOUNT_EVENTS, &batch)
                .unwrap();
        }
        last
    }

    async fn feed(&mut self, body: EventBody) -> Vec<BalanceUpdate> {
        self.append(body).await;
        self.apply(10_000).await
    }

    async fn audit(&self) -> Vec<String> {
        let conn = self.db.connect().unwrap();
        audit::audit(self.log.as_ref(), &conn).await.unwrap()
    }
}

fn spends(updates: &[BalanceUpdate], account: &str) -> Vec<BudgetSpend> {
    updates
        .iter()
        .find(|u| u.account_id.as_str() == account)
        .map(|u| u.budgets.clone())
        .unwrap_or_default()
}

fn spent_of(updates: &[BalanceUpdate], account: &str, id: &str) -> (DateTime<Utc>, Usd) {
    let all = spends(updates, account);
    let s = all
        .iter()
        .find(|s| s.budget_id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} in {all:?}"));
    (s.period_start, s.spent)
}

#[tokio::test]
async fn a_daily_key_budget_counts_by_start_day_and_resets_at_midnight() {
    let a = "acct_d1";
    let mut h = Harness::new(vec![
        budget(
            "bud_key",
            a,
            Some("ak_1"),
            "1.00",
            BudgetPeriod::Day,
            "2030-03-01T00:00:00Z",
        ),
        budget(
            "bud_acct",
            a,
            None,
            "10.00",
            BudgetPeriod::Month,
            "2030-03-01T00:00:00Z",
        ),
    ]);
    h.feed(EventBody::Purchase(purchase(
        a,
        "50",
        "p1",
        "2030-03-09T08:00:00Z",
    )))
    .await;
    let first = used(
        a,
        "ak_1",
        100_000,
        "2030-03-09T10:00:00Z",
        "2030-03-09T10:00:02Z",
    );
    let updates = h.feed(EventBody::Usage(Box::new(first.clone()))).await;
    let key = &spends(&updates, a)[1];
    assert_eq!(key.budget_id.as_str(), "bud_key");
    assert_eq!(key.period_start, at("2030-03-09T00:00:00Z"));
    assert_eq!(key.resets_at, Some(at("2030-03-10T00:00:00Z")));
    assert_eq!(key.spent, usd("0.305"));

    // Another $0.61 by the key; $0.61 by another key of the account counts
    // for the account only.
    h.feed(EventBody::Usage(Box::new(used(
        a,
        "ak_1",
        200_000,
        "2030-03-09T12:00:00Z",
        "2030-03-09T12:00:01Z",
    ))))
    .await;
    let updates = h
        .feed(EventBody::Usage(Box::new(used(
            a,
            "ak_2",
            200_000,
            "2030-03-09T13:00:00Z",
            "2030-03-09T13:00:01Z",
        ))))
        .await;
    assert_eq!(spent_of(&updates, a, "bud_key").1, usd("0.915"));
    assert_eq!(spent_of(&updates, a, "bud_acct").1, usd("1.525"));

    // A manual debit is not spend; a redelivered usage event adds nothing.
    h.feed(EventBody::Adjustment(adjustment(
        a,
        AdjustmentKind::ManualDebit,
        "2.00",
        "m1",
        "2030-03-09T14:00:00Z",
    )))
    .await;
    let updates = h.feed(EventBody::Usage(Box::new(first))).await;
    assert!(updates.is_empty(), "a duplicate changes no account");
    assert_eq!(
        h.ledger.budget_status(&AccountId::from(a)).unwrap().1[1]
            .1
            .spent,
        usd("0.915")
    );

    // On a price plan (fee $0.10/M, upstream ×2): $0.60 + $0.01 = $0.61.
    let mut planned = used(
        a,
        "ak_1",
        100_000,
        "2030-03-09T15:00:00Z",
        "2030-03-09T15:00:01Z",
    );
    planned.plan = Some(AppliedPlan {
        plan_id: "plan_x2".into(),
        fee_per_mtok: usd("0.10"),
        upstream_multiplier: "2".parse().unwrap(),
    });
    let updates = h.feed(EventBody::Usage(Box::new(planned))).await;
    assert_eq!(spent_of(&updates, a, "bud_key").1, usd("1.525"));

    // Started 23:59:59, finished 00:00:01: it counts on the 9th. The update
    // is at ledger time (00:00:01 on the 10th): a new period, nothing spent.
    let updates = h
        .feed(EventBody::Usage(Box::new(used(
            a,
            "ak_1",
            100_000,
            "2030-03-09T23:59:59Z",
            "2030-03-10T00:00:01Z",
        ))))
        .await;
    assert_eq!(
        spent_of(&updates, a, "bud_key"),
        (at("2030-03-10T00:00:00Z"), usd("0"))
    );
    let spend = h.ledger.snapshot().spend;
    let key = SpendScope::AccessKey(AccessKeyId::from("ak_1"));
    let day = tollgate_core::budget::spend_day(at("2030-03-09T12:00:00Z"));
    assert_eq!(spend.row(&key, day), usd("1.83"));
    assert_eq!(spend.row(&key, day + 1), usd("0"));
    assert_eq!(
        spend.row(&SpendScope::Account(AccountId::from(a)), day),
        usd("2.44")
    );
    // The month runs on: everything of March.
    assert_eq!(spent_of(&updates, a, "bud_acct").1, usd("2.440"));

    // A tick moves ledger time: the next day's period shows with no traffic.
    h.feed(EventBody::Usage(Box::new(used(
        a,
        "ak_1",
        100_000,
        "2030-03-10T09:00:00Z",
        "2030-03-10T09:00:01Z",
    ))))
    .await;
    let status = h.ledger.budget_status(&AccountId::from(a)).unwrap();
    assert_eq!(
        status.0,
        at("2030-03-10T09:00:01Z"),
        "ledger time (later than now)"
    );
    assert_eq!(status.1[1].1.spent, usd("0.305"));
    h.feed(EventBody::Tick(tick("2030-03-11T00:00:00Z"))).await;
    let status = h.ledger.budget_status(&AccountId::from(a)).unwrap();
    assert_eq!(status.1[1].1.period_start, at("2030-03-11T00:00:00Z"));
    assert_eq!(status.1[1].1.spent, usd("0"));

    assert_eq!(h.audit().await, Vec::<String>::new());

    // Restarted, the ledger loads the same spend.
    let reopened = LedgerService::open(
        &h.db,
        h.log.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
        h.budgets.clone(),
    )
    .unwrap();
    assert_eq!(reopened.snapshot().spend, h.ledger.snapshot().spend);
    drop(h.dir);
}

#[tokio::test]
async fn account_budgets_per_calendar_month_and_iso_week() {
    let a = "acct_m1";
    let mut h = Harness::new(vec![
        budget(
            "bud_month",
            a,
            None,
            "5",
            BudgetPeriod::Month,
            "2030-01-01T00:00:00Z",
        ),
        budget(
            "bud_week",
            a,
            None,
            "5",
            BudgetPeriod::Week,
            "2030-01-01T00:00:00Z",
        ),
    ]);
    // Thursday 31 January, then Friday 1 February (ISO week from Monday 28th).
    h.feed(EventBody::Usage(Box::new(used(
        a,
        "ak_1",
        100_000,
        "2030-01-31T23:00:00Z",
        "2030-01-31T23:00:01Z",
    ))))
    .await;
    let updates = h
        .feed(EventBody::Usage(Box::new(used(
            a,
            "ak_2",
            200_000,
            "2030-02-01T01:00:00Z",
            "2030-02-01T01:00:01Z",
        ))))
        .await;
    assert_eq!(
        spent_of(&updates, a, "bud_month"),
        (at("2030-02-01T00:00:00Z"), usd("0.61"))
    );
    assert_eq!(
        spent_of(&updates, a, "bud_week"),
        (at("2030-01-28T00:00:00Z"), usd("0.915"))
    );
    // The next Monday starts a new week; February runs on.
    let updates = h
        .feed(EventBody::Usage(Box::new(used(
            a,
            "ak_1",
            100_000,
            "2030-02-04T00:00:00Z",
            "2030-02-04T00:00:01Z",
        ))))
        .await;
    assert_eq!(
        spent_of(&updates, a, "bud_week"),
        (at("2030-02-04T00:00:00Z"), usd("0.305"))
    );
    assert_eq!(spent_of(&updates, a, "bud_month").1, usd("0.915"));
    assert_eq!(h.audit().await, Vec::<String>::new());
}

/// The events of the lifetime test: before and after 12:00 on the creation
/// day, and the next day, by the budget's key and another key.
fn lifetime_events(a: &str) -> Vec<EventBody> {
    [
        (
            "ak_1",
            100_000,
            "2030-05-05T11:59:59Z",
            "2030-05-05T12:00:03Z",
        ),
        (
            "ak_1",
            100_000,
            "2030-05-05T12:00:00Z",
            "2030-05-05T12:00:04Z",
        ),
        (
            "ak_2",
            200_000,
            "2030-05-05T13:00:00Z",
            "2030-05-05T13:00:01Z",
        ),
        (
            "ak_1",
            200_000,
            "2030-05-06T08:00:00Z",
            "2030-05-06T08:00:01Z",
        ),
        (
            "ak_1",
            100_000,
            "2030-05-04T08:00:00Z",
            "2030-05-06T09:00:01Z",
        ),
    ]
    .into_iter()
    .map(|(key, input, started, finished)| {
        EventBody::Usage(Box::new(used(a, key, input, started, finished)))
    })
    .collect()
}

#[tokio::test]
async fn a_lifetime_budget_counts_from_its_creation_instant() {
    let a = "acct_l1";
    let budgets = || {
        vec![
            budget(
                "bud_life_key",
                a,
                Some("ak_1"),
                "3",
                BudgetPeriod::Lifetime,
                "2030-05-05T12:00:00Z",
            ),
            budget(
                "bud_life_acct",
                a,
                None,
                "3",
                BudgetPeriod::Lifetime,
                "2030-05-05T12:00:00Z",
            ),
        ]
    };
    // Key: $0.305 (12:00:00) + $0.61 (next day) = $0.915; the event before
    // 12:00 and the one started the day before are not in it. Account: plus
    // ak_2's $0.61.
    let want = |updates: &[BalanceUpdate]| {
        assert_eq!(
            spent_of(updates, a, "bud_life_key"),
            (at("2030-05-05T12:00:00Z"), usd("0.915"))
        );
        assert_eq!(spent_of(updates, a, "bud_life_acct").1, usd("1.525"));
    };
    // Budgets known from the start, one event per batch (the creation day's
    // part computed before any of it, then kept up by each batch).
    let mut one_by_one = Harness::new(budgets());
    for event in lifetime_events(a) {
        one_by_one.append(event).await;
    }
    want(&one_by_one.apply(1).await);
    // All in one batch.
    let mut at_once = Harness::new(budgets());
    for event in lifetime_events(a) {
        at_once.append(event).await;
    }
    want(&at_once.apply(10_000).await);
    // Budgets appearing only after every event (read from stored entries).
    let mut late = Harness::new(vec![]);
    for event in lifetime_events(a) {
        late.append(event).await;
    }
    late.apply(2).await;
    *late.budgets.0.lock() = budgets();
    want(&late.ledger.balance_updates([AccountId::from(a)]));
    // A restarted ledger reads the same.
    let reopened = LedgerService::open(
        &late.db,
        late.log.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
        late.budgets.clone(),
    )
    .unwrap();
    want(&reopened.all_balances());
    assert_eq!(late.audit().await, Vec::<String>::new());
}

#[tokio::test]
async fn the_audit_catches_a_tampered_spend_row() {
    let a = "acct_t1";
    let mut h = Harness::new(vec![]);
    for event in lifetime_events(a) {
        h.append(event).await;
    }
    h.apply(3).await;
    assert_eq!(h.audit().await, Vec::<String>::new());
    let conn = h.db.connect().unwrap();
    conn.execute(
        "UPDATE ledger_spend SET spent = '0.304' WHERE scope = 'key:ak_1' AND day = ?1",
        [tollgate_core::budget::spend_day(at("2030-05-04T08:00:00Z"))],
    )
    .unwrap();
    let problems = h.audit().await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("spend of key:ak_1 on 2030-05-0")
            && problems[0].contains("0.305")
            && problems[0].contains("0.304"),
        "{problems:?}"
    );
}

/// A budget created while the ledger runs is published with its spend
/// without waiting for traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_budget_is_published_without_traffic() {
    let a = "acct_n1";
    let h = Harness::new(vec![]);
    h.append(EventBody::Usage(Box::new(used(
        a,
        "ak_1",
        100_000,
        "2030-06-01T10:00:00Z",
        "2030-06-01T10:00:01Z",
    ))))
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(h.ledger.clone().run(stopped));
    let published = |id: &'static str| {
        let log = h.log.clone();
        async move {
            let records = log.read(topics::BALANCES, 0, 0, 10_000).await.unwrap();
            records.iter().rev().find_map(|r| {
                let envelope: tollgate_core::Envelope = serde_json::from_slice(&r.payload).ok()?;
                let EventBody::Balance(update) = envelope.body else {
                    return None;
                };
                update
                    .budgets
                    .into_iter()
                    .find(|b| b.budget_id.as_str() == id)
            })
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.budgets.0.lock().push(budget(
        "bud_new",
        a,
        Some("ak_1"),
        "1",
        BudgetPeriod::Day,
        "2030-06-01T00:00:00Z",
    ));
    let mut found = None;
    for _ in 0..50 {
        found = published("bud_new").await;
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = found.expect("the new budget's spend was published");
    assert_eq!(found.spent, usd("0.305"));
    assert_eq!(found.period_start, at("2030-06-01T00:00:00Z"));
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
}

/// A ledger upgraded from before spend (usage entries without key or start,
/// no spend rows) books that usage's spend from the log at start: the rows
/// the live run wrote, so the audit agrees; a later start finds nothing.
#[tokio::test]
async fn usage_from_before_spend_is_booked_from_the_log_at_start() {
    let mut h = Harness::new(vec![]);
    for event in lifetime_events("acct_up") {
        h.append(event).await;
    }
    h.apply(3).await;
    let conn = h.db.connect().unwrap();
    let live = tollgate_ledger::sqlite::spend_rows(&conn).unwrap();
    let usage: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'usage'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(usage > 1 && !live.is_empty());
    // What a ledger from before migration 3 left behind.
    conn.execute_batch(
        "DELETE FROM ledger_spend;
         UPDATE ledger_entries SET access_key_id = NULL, started_at = NULL;",
    )
    .unwrap();
    let upgraded = LedgerService::open(
        &h.db,
        h.log.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
        h.budgets.clone(),
    )
    .unwrap();
    assert_eq!(upgraded.snapshot().spend, Default::default());
    assert_eq!(upgraded.backfill_spend().await.unwrap(), usage as usize);
    assert_eq!(tollgate_ledger::sqlite::spend_rows(&conn).unwrap(), live);
    assert_eq!(upgraded.snapshot().spend, h.ledger.snapshot().spend);
    assert_eq!(h.audit().await, Vec::<String>::new());
    assert_eq!(upgraded.backfill_spend().await.unwrap(), 0);
}
