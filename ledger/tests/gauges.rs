//! The display gauges: `tollgate_ledger_balance_usd` and
//! `tollgate_ledger_credits_expiring_30d_usd` per account, set by the running
//! ledger after the batches that change an account.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::{Duration, SecondsFormat, Utc};
use common::*;
use std::sync::Arc;
use tollgate_core::{CredentialSource, EventBody};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, LogRecord};
use tollgate_ledger::LedgerService;
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

fn ago(days: i64) -> String {
    (Utc::now() - Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn balance_and_expiring_credit_gauges_follow_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("l.db"), Durability::Normal).unwrap();
    let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    let append = |body: EventBody, account: &str| {
        let log = log.clone();
        let record = LogRecord {
            topic: topics::ACCOUNT_EVENTS.into(),
            key: account.into(),
            payload: payload(body),
        };
        async move { log.append(record).await.unwrap() }
    };
    // g1: $10 bought 340 days ago (expires in 25 days) and $5 today; one
    // request of 1,000 + 1,000 tokens ($0.018 upstream + $0.0001 fee) burns
    // the lot that expires first. g2: $7 bought today.
    append(
        EventBody::Purchase(purchase("acct_g1", "10", "old", &ago(340))),
        "acct_g1",
    )
    .await;
    append(
        EventBody::Purchase(purchase("acct_g1", "5", "new", &ago(0))),
        "acct_g1",
    )
    .await;
    append(
        EventBody::Usage(Box::new(usage(
            "acct_g1",
            1_000,
            1_000,
            CredentialSource::Operator,
            &ago(0),
        ))),
        "acct_g1",
    )
    .await;
    append(
        EventBody::Purchase(purchase("acct_g2", "7", "new", &ago(0))),
        "acct_g2",
    )
    .await;
    log.flush().await.unwrap();

    let ledger = LedgerService::open(
        &db,
        log.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
        Arc::new(tollgate_ledger::NoBudgets),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(ledger.clone().run(stopped));
    let gauge = |vec: &prometheus::GaugeVec, account: &str| vec.with_label_values(&[account]).get();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while gauge(&ledger.metrics.balance, "acct_g2") != 7.0 {
        assert!(std::time::Instant::now() < deadline, "gauges never set");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let close = |got: f64, want: f64| (got - want).abs() < 1e-9;
    let m = &ledger.metrics;
    assert!(
        close(gauge(&m.balance, "acct_g1"), 14.9819),
        "{}",
        gauge(&m.balance, "acct_g1")
    );
    assert!(close(gauge(&m.expiring_30d, "acct_g1"), 9.9819));
    assert_eq!(gauge(&m.expiring_30d, "acct_g2"), 0.0);

    // A later debit moves both gauges of the account it touches.
    append(
        EventBody::Usage(Box::new(usage(
            "acct_g1",
            1_000_000,
            0,
            CredentialSource::Byok,
            &ago(0),
        ))),
        "acct_g1",
    )
    .await;
    log.flush().await.unwrap();
    while !close(gauge(&m.balance, "acct_g1"), 14.9319) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gauge(&m.balance, "acct_g1")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(close(gauge(&m.expiring_30d, "acct_g1"), 9.9319));
    let text = {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &m.registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        text.contains("tollgate_ledger_balance_usd{account_id=\"acct_g1\"} 14.9319"),
        "{text}"
    );
    assert!(text.contains("tollgate_ledger_credits_expiring_30d_usd{account_id=\"acct_g2\"} 0"));
    assert!(
        text.contains("tollgate_ledger_entries_total{kind=\"refund\"} 0"),
        "every kind starts at 0"
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}
