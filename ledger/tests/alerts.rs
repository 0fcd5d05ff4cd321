//! The alert evaluator: low balance and expiring credit with exact amounts,
//! budget alerts from balance updates, one alert per id across replays,
//! restarts and a standby on a fresh file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod alerts_common;
mod common;

use alerts_common::*;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::{purchase, usage, usd};
use std::sync::Arc;
use std::time::Instant;
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::budget::{alert_id, AlertKind, Budget, BudgetId, BudgetPeriod, BudgetSpend};
use tollgate_core::control::ControlObject;
use tollgate_core::{AccountId, CredentialSource, EventBody};
use tollgate_eventlog::topics;
use tollgate_ledger::alerts::{AlertEvaluator, AlertSettings};
use tollgate_ledger::LedgerService;

fn ago(days: i64) -> String {
    (Utc::now() - Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn raised(evaluator: &AlertEvaluator, kind: AlertKind) -> u64 {
    evaluator
        .metrics
        .raised
        .with_label_values(&[kind.as_str()])
        .get()
}

fn evaluator(env: &Env, ledger: &Arc<LedgerService>) -> Arc<AlertEvaluator> {
    AlertEvaluator::open(
        ledger.clone(),
        env.control.clone(),
        env.log(),
        AlertSettings {
            low_balance: usd("1.00"),
        },
        &prometheus::Registry::new(),
    )
    .unwrap()
}

/// Steps until nothing is left to read.
async fn settle(evaluator: &Arc<AlertEvaluator>, swept: &mut Option<Instant>) {
    while evaluator.step(swept).await.unwrap() > 0 {}
}

#[tokio::test(flavor = "multi_thread")]
async fn low_balance_and_expiring_credit_alert_once_with_exact_amounts() {
    let env = Env::new().await;
    env.account("acct_a", None).await;
    // $10 bought 340 days ago (expires in 25 days), then 600,000 output
    // tokens at $15/M ($9.00) plus the fee ($0.05/M: $0.03): $0.97 left.
    env.append(
        topics::ACCOUNT_EVENTS,
        "acct_a",
        EventBody::Purchase(purchase("acct_a", "10", "p1", &ago(340))),
    )
    .await;
    env.append(
        topics::ACCOUNT_EVENTS,
        "acct_a",
        EventBody::Usage(Box::new(usage(
            "acct_a",
            0,
            600_000,
            CredentialSource::Operator,
            &ago(0),
        ))),
    )
    .await;
    let ledger = LedgerService::open(
        &env.db("ledger.db"),
        env.log(),
        &prometheus::Registry::new(),
        env.control.clone(),
    )
    .unwrap();
    let mut from = 0;
    let updates = env.apply(&ledger, &mut from).await;
    assert_eq!(updates.len(), 1);
    let as_of = updates[0].as_of;
    let evaluator = evaluator(&env, &ledger);
    let mut swept = None;
    settle(&evaluator, &mut swept).await;

    let lot = ledger
        .account_state(&AccountId::from("acct_a"))
        .unwrap()
        .lots[0]
        .clone();
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let low = alerts
        .iter()
        .find(|a| a.kind == AlertKind::LowBalance)
        .unwrap();
    assert_eq!(
        low.alert_id,
        alert_id(AlertKind::LowBalance, "acct_a", &lot.lot_id)
    );
    assert_eq!(low.account_id.as_str(), "acct_a");
    assert_eq!(low.balance, Some(usd("0.97")));
    assert_eq!(low.amount, Some(usd("1.00")));
    let expiring = alerts
        .iter()
        .find(|a| a.kind == AlertKind::CreditsExpiring)
        .unwrap();
    assert_eq!(
        expiring.alert_id,
        alert_id(AlertKind::CreditsExpiring, &lot.lot_id, "30d")
    );
    assert_eq!(expiring.amount, Some(usd("0.97")));
    assert_eq!(expiring.lot_id.as_deref(), Some(lot.lot_id.as_str()));
    assert_eq!(expiring.expires_at, Some(lot.expires_at));
    // Raised at ledger time (the start sweep and the update agree: the
    // newest event's time).
    assert_eq!(low.raised_at, as_of);
    assert_eq!(raised(&evaluator, AlertKind::LowBalance), 1);
    assert_eq!(raised(&evaluator, AlertKind::CreditsExpiring), 1);
    assert_eq!(raised(&evaluator, AlertKind::BudgetExceeded), 0);

    // The same balance update again (a replay) and another sweep: nothing new.
    env.append(
        topics::BALANCES,
        "acct_a",
        EventBody::Balance(updates[0].clone()),
    )
    .await;
    let mut swept = None;
    settle(&evaluator, &mut swept).await;
    assert_eq!(env.alerts().await.len(), 2);

    // A restart on the same file, then a standby on a fresh file replaying
    // the whole log: both learn the ids on the alerts topic.
    drop(evaluator);
    let again = self::evaluator(&env, &ledger);
    settle(&again, &mut None).await;
    let standby = LedgerService::open(
        &env.db("standby.db"),
        env.log(),
        &prometheus::Registry::new(),
        env.control.clone(),
    )
    .unwrap();
    // The standby applies the whole log and publishes its balances again.
    env.apply(&standby, &mut 0).await;
    let fresh = self::evaluator(&env, &standby);
    settle(&fresh, &mut None).await;
    assert_eq!(
        env.alerts().await.len(),
        2,
        "a replay raised an alert twice"
    );
    assert_eq!(raised(&fresh, AlertKind::LowBalance), 0);
    assert_eq!(raised(&again, AlertKind::LowBalance), 0);

    // A top-up is a new episode: the next fall below $1.00 alerts again.
    env.append(
        topics::ACCOUNT_EVENTS,
        "acct_a",
        EventBody::Purchase(purchase("acct_a", "5", "p2", &ago(0))),
    )
    .await;
    env.apply(&ledger, &mut from).await;
    settle(&again, &mut None).await;
    assert_eq!(env.alerts().await.len(), 2, "$5.97 is not low");
    // 400,000 output tokens: $6.00 + $0.02 fee → −$0.05 (debt).
    env.append(
        topics::ACCOUNT_EVENTS,
        "acct_a",
        EventBody::Usage(Box::new(usage(
            "acct_a",
            0,
            400_000,
            CredentialSource::Operator,
            &ago(0),
        ))),
    )
    .await;
    env.apply(&ledger, &mut from).await;
    settle(&again, &mut None).await;
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    let second = &alerts[2];
    assert_eq!(second.kind, AlertKind::LowBalance);
    assert_ne!(second.alert_id, low.alert_id);
    assert_eq!(second.balance, Some(usd("-0.05")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_account_low_balance_amount_wins_and_zero_turns_it_off() {
    let env = Env::new().await;
    env.account("acct_hi", Some(usd("20"))).await;
    env.account("acct_off", Some(usd("0"))).await;
    for account in ["acct_hi", "acct_off"] {
        env.append(
            topics::ACCOUNT_EVENTS,
            account,
            EventBody::Purchase(purchase(account, "10", "p1", &ago(0))),
        )
        .await;
    }
    let ledger = LedgerService::open(
        &env.db("ledger.db"),
        env.log(),
        &prometheus::Registry::new(),
        env.control.clone(),
    )
    .unwrap();
    env.apply(&ledger, &mut 0).await;
    let evaluator = evaluator(&env, &ledger);
    settle(&evaluator, &mut None).await;
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].account_id.as_str(), "acct_hi");
    assert_eq!(alerts[0].amount, Some(usd("20")));
    assert_eq!(alerts[0].balance, Some(usd("10")));
}

fn budget(id: &str, account: &str, amount: &str) -> Budget {
    let at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    Budget {
        id: BudgetId(id.into()),
        account_id: AccountId::from(account),
        access_key_id: None,
        name: id.into(),
        amount: usd(amount),
        period: BudgetPeriod::Day,
        soft_threshold_percent: 80,
        refuse: true,
        created_at: at,
        updated_at: at,
    }
}

fn spend_update(account: &str, balance: &str, day: &str, spent: &str) -> BalanceUpdate {
    let start: DateTime<Utc> = format!("{day}T00:00:00Z").parse().unwrap();
    BalanceUpdate {
        account_id: AccountId::from(account),
        balance: usd(balance),
        as_of: start + Duration::hours(12),
        applied: Default::default(),
        budgets: vec![
            BudgetSpend {
                budget_id: BudgetId("bud_1".into()),
                period_start: start,
                resets_at: Some(start + Duration::days(1)),
                spent: usd(spent),
            },
            // A budget that does not exist (deleted): ignored.
            BudgetSpend {
                budget_id: BudgetId("bud_gone".into()),
                period_start: start,
                resets_at: None,
                spent: usd("1000"),
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_alerts_once_per_period_threshold_then_limit() {
    let env = Env::new().await;
    env.account("acct_b", Some(usd("0"))).await;
    env.upsert(ControlObject::Budget(budget("bud_1", "acct_b", "1.00")))
        .await;
    env.append(
        topics::ACCOUNT_EVENTS,
        "acct_b",
        EventBody::Purchase(purchase("acct_b", "50", "p1", &ago(0))),
    )
    .await;
    let ledger = LedgerService::open(
        &env.db("ledger.db"),
        env.log(),
        &prometheus::Registry::new(),
        env.control.clone(),
    )
    .unwrap();
    env.apply(&ledger, &mut 0).await;
    let evaluator = evaluator(&env, &ledger);
    let mut swept = None;
    settle(&evaluator, &mut swept).await;
    assert!(env.alerts().await.is_empty());

    let feed = |update: BalanceUpdate| {
        let env = &env;
        async move {
            env.append(topics::BALANCES, "acct_b", EventBody::Balance(update))
                .await
        }
    };
    // $0.79 is under the 80% threshold; $0.80 reaches it; $0.99 again is
    // the same alert; $1.00 reaches the limit.
    feed(spend_update("acct_b", "50", "2026-03-02", "0.79")).await;
    settle(&evaluator, &mut swept).await;
    assert!(env.alerts().await.is_empty());
    feed(spend_update("acct_b", "50", "2026-03-02", "0.80")).await;
    feed(spend_update("acct_b", "50", "2026-03-02", "0.99")).await;
    settle(&evaluator, &mut swept).await;
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let threshold = &alerts[0];
    assert_eq!(threshold.kind, AlertKind::BudgetThreshold);
    assert_eq!(
        threshold.alert_id,
        alert_id(AlertKind::BudgetThreshold, "bud_1", "2026-03-02T00:00:00Z")
    );
    assert_eq!(threshold.spent, Some(usd("0.80")));
    assert_eq!(threshold.amount, Some(usd("1.00")));
    assert_eq!(threshold.budget_id, Some(BudgetId("bud_1".into())));
    assert_eq!(
        threshold.resets_at,
        Some("2026-03-03T00:00:00Z".parse().unwrap())
    );
    assert_eq!(
        threshold.raised_at,
        "2026-03-02T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    feed(spend_update("acct_b", "50", "2026-03-02", "1.00")).await;
    settle(&evaluator, &mut swept).await;
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[1].kind, AlertKind::BudgetExceeded);
    assert_eq!(
        alerts[1].alert_id,
        alert_id(AlertKind::BudgetExceeded, "bud_1", "2026-03-02T00:00:00Z")
    );
    // The next day's period: one update over the limit raises both.
    feed(spend_update("acct_b", "50", "2026-03-03", "1.50")).await;
    settle(&evaluator, &mut swept).await;
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), 4, "{alerts:#?}");
    let kinds: Vec<AlertKind> = alerts[2..].iter().map(|a| a.kind).collect();
    assert!(
        kinds.contains(&AlertKind::BudgetThreshold) && kinds.contains(&AlertKind::BudgetExceeded)
    );
    assert_eq!(raised(&evaluator, AlertKind::BudgetThreshold), 2);
    assert_eq!(raised(&evaluator, AlertKind::BudgetExceeded), 2);
    // A replay of every update: nothing new.
    for update in [
        spend_update("acct_b", "50", "2026-03-02", "1.00"),
        spend_update("acct_b", "50", "2026-03-03", "1.50"),
    ] {
        feed(update).await;
    }
    settle(&evaluator, &mut swept).await;
    assert_eq!(env.alerts().await.len(), 4);
}
