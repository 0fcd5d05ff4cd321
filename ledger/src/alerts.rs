//! Alerts: the ledger raises one per (object, period or lot, kind) — a
//! budget's soft threshold or limit reached in a period, an account's
//! balance below its low-balance amount, a lot with credit left expiring
//! within 30 days — as an event on `tollgate.alerts` (key = alert id).
//!
//! The evaluator tails the balances topic (what the ledger published after
//! each batch) and, once a minute, sweeps every account of the ledger's
//! state for credit moving into the 30-day window with time alone. Ids are
//! deterministic (`tollgate_core::budget::alert_id`) and claimed in
//! `alerts_raised` before they are published; ids already on the alerts
//! topic are learnt first, so a replay, a restart or a standby with a
//! fresh file never raises one twice.

use crate::engine::AccountState;
use crate::{LedgerError, LedgerService};
use chrono::{DateTime, Duration as Days, SecondsFormat, Utc};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts, Registry};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_control::{ControlPlane, ControlState};
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::budget::{alert_id, Alert, AlertKind, BudgetSpend};
use tollgate_core::{AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::{topics, EventLog, LogRecord, StoredRecord};
use tollgate_sqlite::{Database, Migrations};

/// Credit expiring within this many days of ledger time raises an alert.
pub const EXPIRING_WINDOW_DAYS: i64 = 30;
/// How often every account is swept (credit enters the window with time).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the balances and alerts topics are read when idle.
const POLL: Duration = Duration::from_millis(200);
/// After a failed step, wait this long before the next.
const RETRY_AFTER: Duration = Duration::from_secs(1);
const READ_MAX: usize = 1_000;
/// The evaluator's name in `alerts_positions`.
const EVALUATOR: &str = "evaluator";

/// The alert and webhook tables, with their own version table.
const MIGRATIONS: Migrations = Migrations {
    table: "alerts_migrations",
    steps: &["CREATE TABLE alerts_raised (
            alert_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            -- the alert's JSON while it waits to be published (NULL once learnt from the log)
            payload TEXT,
            published INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE alerts_positions (
            consumer TEXT NOT NULL,
            topic TEXT NOT NULL,
            partition INTEGER NOT NULL,
            next_offset INTEGER NOT NULL,
            PRIMARY KEY (consumer, topic, partition)
        ) WITHOUT ROWID;
        CREATE TABLE webhook_deliveries (
            alert_id TEXT NOT NULL,
            webhook_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            first_attempt_ms INTEGER,
            last_attempt_ms INTEGER,
            next_attempt_ms INTEGER NOT NULL,
            last_status INTEGER,
            last_error TEXT,
            delivered_ms INTEGER,
            PRIMARY KEY (alert_id, webhook_id)
        ) WITHOUT ROWID;
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms);"],
};

/// Create or upgrade the alert and webhook tables in the ledger's file.
pub fn migrate(db: &Database) -> Result<(), LedgerError> {
    let mut conn = db.connect()?;
    MIGRATIONS.apply(&mut conn)?;
    Ok(())
}

pub(crate) fn position(
    conn: &Connection,
    consumer: &str,
    topic: &str,
    partition: u32,
) -> Result<Option<u64>, LedgerError> {
    Ok(conn
        .query_row(
            "SELECT next_offset FROM alerts_positions
             WHERE consumer = ?1 AND topic = ?2 AND partition = ?3",
            params![consumer, topic, partition],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|n| n as u64))
}

pub(crate) fn save_position(
    conn: &Connection,
    consumer: &str,
    topic: &str,
    partition: u32,
    next_offset: u64,
) -> Result<(), LedgerError> {
    conn.prepare_cached(
        "INSERT INTO alerts_positions (consumer, topic, partition, next_offset)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
    )?
    .execute(params![consumer, topic, partition, next_offset as i64])?;
    Ok(())
}

/// Decode an alert record of the log; None (logged) when unreadable.
pub(crate) fn decode_alert(record: &StoredRecord) -> Option<Alert> {
    match serde_json::from_slice::<Envelope>(&record.payload) {
        Ok(Envelope {
            body: EventBody::Alert(alert),
            ..
        }) => Some(alert),
        Ok(_) => None,
        Err(err) => {
            tracing::error!(offset = record.offset, error = %err, "skipping an unreadable alert record");
            None
        }
    }
}

/// What the evaluator compares against.
#[derive(Clone, Debug)]
pub struct AlertSettings {
    /// Low-balance amount of accounts that set none; zero or less: no
    /// low-balance alerts for them.
    pub low_balance: Usd,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            low_balance: Usd(rust_decimal::Decimal::ONE),
        }
    }
}

/// `tollgate_alerts_raised_total{kind}`.
pub struct AlertMetrics {
    pub raised: IntCounterVec,
}

impl AlertMetrics {
    pub fn register(registry: &Registry) -> Result<AlertMetrics, prometheus::Error> {
        let raised = IntCounterVec::new(
            Opts::new(
                "tollgate_alerts_raised_total",
                "Alerts raised by this ledger, by kind (each alert id once).",
            ),
            &["kind"],
        )?;
        for kind in AlertKind::ALL {
            raised.with_label_values(&[kind.as_str()]);
        }
        registry.register(Box::new(raised.clone()))?;
        Ok(AlertMetrics { raised })
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An alert about `account` with every optional field empty.
fn bare(kind: AlertKind, id: String, account: &AccountId, at: DateTime<Utc>) -> Alert {
    Alert {
        alert_id: id,
        kind,
        account_id: account.clone(),
        raised_at: at,
        access_key_id: None,
        budget_id: None,
        period_start: None,
        resets_at: None,
        amount: None,
        spent: None,
        balance: None,
        lot_id: None,
        expires_at: None,
    }
}

/// The budget alerts one budget's spend calls for (threshold, limit or both).
pub fn budget_alerts(
    control: &ControlState,
    account: &AccountId,
    spend: &BudgetSpend,
    at: DateTime<Utc>,
) -> Vec<Alert> {
    let Some(budget) = control.budgets.get(&spend.budget_id) else {
        return Vec::new();
    };
    if &budget.account_id != account || spend.spent <= Usd::ZERO {
        return Vec::new();
    }
    let period = rfc3339(spend.period_start);
    let mut out = Vec::new();
    for (kind, reached) in [
        (AlertKind::BudgetThreshold, budget.soft_threshold()),
        (AlertKind::BudgetExceeded, budget.amount),
    ] {
        if spend.spent >= reached {
            let id = alert_id(kind, budget.id.as_str(), &period);
            let mut alert = bare(kind, id, account, at);
            alert.access_key_id = budget.access_key_id.clone();
            alert.budget_id = Some(budget.id.clone());
            alert.period_start = Some(spend.period_start);
            alert.resets_at = spend.resets_at;
            alert.amount = Some(budget.amount);
            alert.spent = Some(spend.spent);
            out.push(alert);
        }
    }
    out
}

/// Low-balance and expiring-credit alerts of one account at ledger time `at`.
pub fn account_alerts(
    control: &ControlState,
    settings: &AlertSettings,
    account: &AccountId,
    state: &AccountState,
    at: DateTime<Utc>,
) -> Vec<Alert> {
    let mut out = Vec::new();
    let low = control
        .accounts
        .get(account)
        .and_then(|a| a.low_balance_usd)
        .unwrap_or(settings.low_balance);
    let balance = state.balance();
    if low > Usd::ZERO && balance < low {
        // One alert per fall: the episode is the newest lot, so a top-up
        // (a new lot) lets the next fall alert again, and a replay of the
        // same log names the same episode.
        let episode = state
            .lots
            .iter()
            .max_by(|a, b| (a.purchased_at, &a.lot_id).cmp(&(b.purchased_at, &b.lot_id)))
            .map_or("none", |l| l.lot_id.as_str());
        let id = alert_id(AlertKind::LowBalance, account.as_str(), episode);
        let mut alert = bare(AlertKind::LowBalance, id, account, at);
        alert.amount = Some(low);
        alert.balance = Some(balance);
        out.push(alert);
    }
    let horizon = at + Days::days(EXPIRING_WINDOW_DAYS);
    for lot in &state.lots {
        if lot.expired || lot.remaining <= Usd::ZERO || lot.expires_at <= at {
            continue;
        }
        if lot.expires_at <= horizon {
            let id = alert_id(AlertKind::CreditsExpiring, &lot.lot_id, "30d");
            let mut alert = bare(AlertKind::CreditsExpiring, id, account, at);
            alert.amount = Some(lot.remaining);
            alert.lot_id = Some(lot.lot_id.clone());
            alert.expires_at = Some(lot.expires_at);
            out.push(alert);
        }
    }
    out
}

/// Tails balance updates, sweeps the ledger's accounts and raises alerts.
pub struct AlertEvaluator {
    conn: Mutex<Connection>,
    ledger: Arc<LedgerService>,
    control: Arc<ControlPlane>,
    log: Arc<dyn EventLog>,
    settings: AlertSettings,
    pub metrics: AlertMetrics,
}

impl AlertEvaluator {
    /// Open (migrating) the alert tables in the ledger's file.
    pub fn open(
        ledger: Arc<LedgerService>,
        control: Arc<ControlPlane>,
        log: Arc<dyn EventLog>,
        settings: AlertSettings,
        registry: &Registry,
    ) -> Result<Arc<AlertEvaluator>, LedgerError> {
        migrate(ledger.database())?;
        let conn = ledger.database().connect()?;
        Ok(Arc::new(AlertEvaluator {
            conn: Mutex::new(conn),
            ledger,
            control,
            log,
            settings,
            metrics: AlertMetrics::register(registry)?,
        }))
    }

    /// Evaluate until `shutdown` turns true; a failed step is logged and
    /// retried (the positions are durable, so nothing is skipped).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut swept: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let pause = match self.step(&mut swept).await {
                Ok(0) => POLL,
                Ok(_) => Duration::ZERO,
                Err(err) => {
                    tracing::warn!(error = %err, "alert evaluation failed; retrying");
                    RETRY_AFTER
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One round: learn alerts on the log; when due (at start, then once a
    /// minute) publish what waits and sweep; evaluate new balance updates. Returns the records read.
    pub async fn step(self: &Arc<Self>, swept: &mut Option<Instant>) -> Result<usize, LedgerError> {
        let mut read = self.learn().await?;
        if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            self.publish_waiting().await?;
            self.sweep().await?;
            *swept = Some(Instant::now());
        }
        for partition in 0..self.log.partitions(topics::BALANCES).await? {
            read += self.evaluate_partition(partition).await?;
        }
        Ok(read)
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&AlertEvaluator) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        crate::on_blocking_thread(self.clone(), work).await
    }

    fn stored_position(&self, topic: &'static str, partition: u32) -> Result<u64, LedgerError> {
        Ok(position(&self.conn.lock(), EVALUATOR, topic, partition)?.unwrap_or(0))
    }

    /// Record every alert id on the alerts topic (raised by this ledger,
    /// another member or an earlier file) as raised and published.
    async fn learn(self: &Arc<Self>) -> Result<usize, LedgerError> {
        let mut read = 0;
        for partition in 0..self.log.partitions(topics::ALERTS).await? {
            loop {
                let from = self
                    .blocking(move |e| e.stored_position(topics::ALERTS, partition))
                    .await?;
                let records = self
                    .log
                    .read(topics::ALERTS, partition, from, READ_MAX)
                    .await?;
                let Some(last) = records.last() else { break };
                let next = last.offset + 1;
                let ids: Vec<(String, AlertKind)> = records
                    .iter()
                    .filter_map(decode_alert)
                    .map(|a| (a.alert_id, a.kind))
                    .collect();
                read += records.len();
                let full = records.len() == READ_MAX;
                self.blocking(move |e| e.record_learnt(partition, next, &ids))
                    .await?;
                if !full {
                    break;
                }
            }
        }
        Ok(read)
    }

    fn record_learnt(
        &self,
        partition: u32,
        next: u64,
        ids: &[(String, AlertKind)],
    ) -> Result<(), LedgerError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for (id, kind) in ids {
            tx.prepare_cached(
                "INSERT INTO alerts_raised (alert_id, kind, payload, published) VALUES (?1, ?2, NULL, 1)
                 ON CONFLICT (alert_id) DO UPDATE SET published = 1, payload = NULL",
            )?
            .execute(params![id, kind.as_str()])?;
        }
        save_position(&tx, EVALUATOR, topics::ALERTS, partition, next)?;
        tx.commit()?;
        Ok(())
    }

    /// Evaluate the balance updates after the stored position of one
    /// partition of the balances topic.
    async fn evaluate_partition(self: &Arc<Self>, partition: u32) -> Result<usize, LedgerError> {
        let from = self
            .blocking(move |e| e.stored_position(topics::BALANCES, partition))
            .await?;
        let records = self
            .log
            .read(topics::BALANCES, partition, from, READ_MAX)
            .await?;
        let Some(last) = records.last() else {
            return Ok(0);
        };
        let next = last.offset + 1;
        let updates: Vec<BalanceUpdate> = records
            .iter()
            .filter_map(|r| match serde_json::from_slice::<Envelope>(&r.payload) {
                Ok(Envelope {
                    body: EventBody::Balance(update),
                    ..
                }) => Some(update),
                _ => None,
            })
            .collect();
        let raised = self
            .blocking(move |e| {
                let control = e.control.snapshot();
                let alerts: Vec<Alert> = updates
                    .iter()
                    .flat_map(|u| e.candidates(&control, u))
                    .collect();
                e.claim(&alerts, Some((topics::BALANCES, partition, next)))
            })
            .await?;
        self.publish(raised).await?;
        Ok(records.len())
    }

    /// The alerts one balance update calls for. Only accounts this ledger
    /// holds are evaluated (with a partitioned log, each member its own).
    /// Low balance and expiring credit are read from the ledger's state,
    /// and only when the update is its latest (same balance): an older
    /// update paired with a newer lot list would name the wrong episode.
    pub fn candidates(&self, control: &ControlState, update: &BalanceUpdate) -> Vec<Alert> {
        let Some(state) = self.ledger.account_state(&update.account_id) else {
            return Vec::new();
        };
        let mut out: Vec<Alert> = update
            .budgets
            .iter()
            .flat_map(|spend| budget_alerts(control, &update.account_id, spend, update.as_of))
            .collect();
        if state.balance() == update.balance {
            out.extend(account_alerts(
                control,
                &self.settings,
                &update.account_id,
                &state,
                update.as_of,
            ));
        }
        out
    }

    /// Every account of the ledger's state at the latest ledger time.
    async fn sweep(self: &Arc<Self>) -> Result<(), LedgerError> {
        let raised = self
            .blocking(|e| {
                let ledger = e.ledger.snapshot();
                let Some(at) = ledger.clocks.values().max().copied() else {
                    return Ok(Vec::new());
                };
                let control = e.control.snapshot();
                let mut accounts: Vec<_> = ledger.accounts.iter().collect();
                accounts.sort_by(|a, b| a.0.cmp(b.0));
                let alerts: Vec<Alert> = accounts
                    .into_iter()
                    .flat_map(|(id, s)| account_alerts(&control, &e.settings, id, s, at))
                    .collect();
                e.claim(&alerts, None)
            })
            .await?;
        self.publish(raised).await
    }

    /// Claim the alerts not raised before (and the position, when given)
    /// in one transaction; returns those claimed now.
    fn claim(
        &self,
        alerts: &[Alert],
        position: Option<(&'static str, u32, u64)>,
    ) -> Result<Vec<Alert>, LedgerError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let mut claimed = Vec::new();
        for alert in alerts {
            let payload =
                serde_json::to_string(alert).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO alerts_raised (alert_id, kind, payload, published)
                     VALUES (?1, ?2, ?3, 0)",
                )?
                .execute(params![alert.alert_id, alert.kind.as_str(), payload])?;
            if inserted == 1 {
                claimed.push(alert.clone());
            }
        }
        if let Some((topic, partition, next)) = position {
            save_position(&tx, EVALUATOR, topic, partition, next)?;
        }
        tx.commit()?;
        for alert in &claimed {
            self.metrics
                .raised
                .with_label_values(&[alert.kind.as_str()])
                .inc();
            tracing::info!(alert_id = %alert.alert_id, kind = alert.kind.as_str(), account_id = %alert.account_id, "alert raised");
        }
        Ok(claimed)
    }

    /// Claimed alerts not yet on the log (a crash or a log failure between
    /// claim and publish): published again, so none is lost.
    async fn publish_waiting(self: &Arc<Self>) -> Result<(), LedgerError> {
        let waiting = self
            .blocking(|e| {
                let conn = e.conn.lock();
                let mut stmt = conn.prepare_cached(
                    "SELECT payload FROM alerts_raised WHERE published = 0 AND payload IS NOT NULL",
                )?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                let mut out = Vec::new();
                for row in rows {
                    let text = row?;
                    out.push(
                        serde_json::from_str::<Alert>(&text)
                            .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                    );
                }
                Ok(out)
            })
            .await?;
        self.publish(waiting).await
    }

    /// Append each alert to the alerts topic (key = its id), make them
    /// durable, then mark them published.
    async fn publish(self: &Arc<Self>, alerts: Vec<Alert>) -> Result<(), LedgerError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let key = alert.alert_id.clone();
            let payload = serde_json::to_vec(&Envelope::new(EventBody::Alert(alert)))
                .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            self.log
                .append(LogRecord {
                    topic: topics::ALERTS.to_owned(),
                    key: key.clone(),
                    payload,
                })
                .await?;
            ids.push(key);
        }
        self.log.flush().await?;
        self.blocking(move |e| {
            let mut conn = e.conn.lock();
            let tx = conn.transaction()?;
            for id in &ids {
                tx.prepare_cached("UPDATE alerts_raised SET published = 1 WHERE alert_id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
