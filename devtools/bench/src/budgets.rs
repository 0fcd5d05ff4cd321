//! Issue #19: what budget enforcement costs on the request path. Two
//! gateway children on one mock, one without budgets and one with 10
//! refusing budgets on the key's path (5 on the key, 5 on its account,
//! amounts never reached), measured at c=16 in alternating rounds.
//!
//! Budgets are written as the admin API writes them: upserts on the control
//! topic of the child's store, which the child's control plane tails. The
//! run first proves the budgeted child enforces: a $0 budget must refuse
//! (402 `budget_exceeded`) before it is raised with the others.

use crate::child::GatewayChild;
use crate::load::{self, Target};
use anyhow::{bail, Context};
use std::time::{Duration, Instant};
use tollgate_core::budget::Budget;
use tollgate_core::control::{ControlChange, ControlObject};
use tollgate_core::{AccessKeyId, AccountId, Envelope, EventBody};
use tollgate_eventlog::{topics, EventLog, LogRecord};
use tollgate_sqlite::{Database, SqliteEventLog};

/// Refusing budgets on the key's path: half on the key, half on the account.
pub const BUDGETS: usize = 10;
const NEVER_REACHED: &str = "1000000";
const PERIODS: [&str; 4] = ["day", "week", "month", "lifetime"];

/// The child's store, opened beside it (SQLite allows several connections).
pub struct Store {
    log: SqliteEventLog,
    account: AccountId,
    key: AccessKeyId,
}

impl Store {
    /// Open the child's store and find its bootstrap key on the control topic.
    pub async fn open(child: &GatewayChild) -> anyhow::Result<Store> {
        let db = Database::open(child.store_path(), tollgate_sqlite::Durability::Normal)?;
        let log = SqliteEventLog::open(&db, Default::default())?;
        let mut found = None;
        for partition in 0..log.partitions(topics::CONTROL).await? {
            let records = log.read(topics::CONTROL, partition, 0, 10_000).await?;
            for record in records {
                if let Ok(Envelope {
                    body:
                        EventBody::Control(ControlChange::Upsert {
                            object: ControlObject::AccessKey(key),
                        }),
                    ..
                }) = serde_json::from_slice(&record.payload)
                {
                    found = Some((key.account_id, key.id));
                }
            }
        }
        let (account, key) = found.context("no access key on the child's control topic")?;
        Ok(Store { log, account, key })
    }

    /// Budget `n` (even: on the key; odd: on the account) of `amount`.
    fn budget(&self, n: usize, amount: &str) -> anyhow::Result<Budget> {
        let key = n.is_multiple_of(2).then(|| self.key.clone());
        Ok(serde_json::from_value(serde_json::json!({
            "id": format!("bud_bench_{n}"),
            "account_id": self.account,
            "access_key_id": key,
            "name": format!("bench {n}"),
            "amount": amount,
            "period": PERIODS[n % PERIODS.len()],
            "soft_threshold_percent": 80,
            "refuse": true,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }))?)
    }

    async fn upsert(&self, budget: Budget) -> anyhow::Result<()> {
        let key = budget.id.to_string();
        let change = ControlChange::Upsert {
            object: ControlObject::Budget(budget),
        };
        self.log
            .append(LogRecord {
                topic: topics::CONTROL.to_owned(),
                key,
                payload: serde_json::to_vec(&Envelope::control(change))?,
            })
            .await?;
        self.log.flush().await?;
        Ok(())
    }

    /// A $0 budget must refuse through `target` (the child enforces
    /// budgets), then all `BUDGETS` are set never to be reached.
    pub async fn install(&self, target: &Target) -> anyhow::Result<()> {
        self.upsert(self.budget(0, "0")?).await?;
        until_status(target, 402, "budget_exceeded").await?;
        for n in 0..BUDGETS {
            self.upsert(self.budget(n, NEVER_REACHED)?).await?;
        }
        until_status(target, 200, "").await
    }
}

/// Probe until an answer has `status` and contains `text` (the control
/// tail reaches the child within 100 ms).
async fn until_status(target: &Target, status: u16, text: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exchange = load::probe(target).await?;
        let body = String::from_utf8_lossy(&exchange.body);
        if exchange.status.as_u16() == status && body.contains(text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "budgets: expected HTTP {status} {text}, got {}: {body}",
                exchange.status
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
