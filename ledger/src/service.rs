//! The ledger consumer: applies batches from the account-events topic in
//! one SQLite transaction each (state + position together), then commits
//! the log position and publishes balance updates.

use crate::engine::{AccountState, Entry, EntryKind, Ledger};
use crate::input::{LedgerInput, UsageCharge};
use crate::sqlite;
use crate::LedgerError;
use chrono::Utc;
use parking_lot::Mutex;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rusqlite::Connection;
use rust_decimal::prelude::ToPrimitive;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::{BalanceUpdate, Tick};
use tollgate_core::{AccountId, Envelope, EventBody};
use tollgate_eventlog::topics;
use tollgate_eventlog::{Batch, EventLog, LogRecord, PositionSource};
use tollgate_sqlite::Database;

pub const CONSUMER_GROUP: &str = "tollgate-ledger";
/// Most records applied in one transaction.
pub const BATCH_MAX: usize = 10_000;
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// After a partial batch, gather for this long before reading the next:
/// under steady load that makes a few large batches a second instead of
/// hundreds of tiny ones (each a transaction and balance updates), and it
/// adds at most this much to a balance's delay.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// "Caught up": the newest record of the batch is younger than this.
const LINGER_WHEN_LAG_BELOW_MS: i64 = 100;
/// How often every account's display gauges are recomputed (credit moves
/// into the 30-day expiry window with time alone, without any event).
const GAUGE_REFRESH: Duration = Duration::from_secs(60);
/// The horizon of `tollgate_ledger_credits_expiring_30d_usd`.
const EXPIRING_DAYS: i64 = 30;
/// Page cache of the ledger's writing connection, in KiB (SQLite's default is 2,000).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

pub struct LedgerMetrics {
    /// The registry these are on: the process's, shared with the other roles.
    pub registry: Registry,
    pub entries: IntCounterVec,
    pub duplicates: IntCounter,
    pub unreadable: IntCounter,
    /// Age of the newest record applied (log append time to now).
    pub lag: Gauge,
    /// `tollgate_ledger_balance_usd{account_id}`: for dashboards only (f64);
    /// billing never reads it (the ledger's decimals are the truth).
    pub balance: GaugeVec,
    /// `tollgate_ledger_credits_expiring_30d_usd{account_id}`: unexpired
    /// credit in lots expiring within 30 days; display only, like `balance`.
    pub expiring_30d: GaugeVec,
    /// 1 once the ledger stopped at a record written by a newer build.
    pub halted: IntGauge,
}

impl LedgerMetrics {
    fn new(registry: &Registry) -> Result<LedgerMetrics, prometheus::Error> {
        let entries = IntCounterVec::new(
            Opts::new(
                "tollgate_ledger_entries_total",
                "Ledger entries booked, by kind (usage = debits, purchase, expiry, …).",
            ),
            &["kind"],
        )?;
        let duplicates = IntCounter::new(
            "tollgate_ledger_duplicate_events_total",
            "Redelivered events recognised by id and not applied again.",
        )?;
        let unreadable = IntCounter::new(
            "tollgate_ledger_unreadable_records_total",
            "Log records the ledger could not decode (skipped, logged).",
        )?;
        let lag = Gauge::new(
            "tollgate_ledger_consumer_lag_seconds",
            "Age of the newest account-events record the ledger has applied (0 when idle and caught up).",
        )?;
        let balance = GaugeVec::new(
            Opts::new(
                "tollgate_ledger_balance_usd",
                "Account balance in USD (unexpired credit minus debt), for display: billing uses exact decimals, never this gauge.",
            ),
            &["account_id"],
        )?;
        let expiring_30d = GaugeVec::new(
            Opts::new(
                "tollgate_ledger_credits_expiring_30d_usd",
                "Unexpired credit in USD in lots that expire within the next 30 days, for display only.",
            ),
            &["account_id"],
        )?;
        let halted = IntGauge::new(
            "tollgate_ledger_halted",
            "1 when the ledger stopped at a record from a newer Tollgate (envelope version it does not read): upgrade the ledger.",
        )?;
        // Every entry kind starts at 0, so rates work from the first entry.
        for kind in crate::engine::EntryKind::ALL {
            entries.with_label_values(&[kind.as_str()]);
        }
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(unreadable.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(balance.clone()))?;
        registry.register(Box::new(expiring_30d.clone()))?;
        registry.register(Box::new(halted.clone()))?;
        Ok(LedgerMetrics {
            registry: registry.clone(),
            entries,
            duplicates,
            unreadable,
            lag,
            balance,
            expiring_30d,
            halted,
        })
    }
}

pub struct LedgerService {
    db: Database,
    writer: Mutex<Connection>,
    state: Mutex<Ledger>,
    log: Arc<dyn EventLog>,
    pub metrics: LedgerMetrics,
}

/// The ledger's durable positions, read from its own tables.
struct StoredPositions(Database);

impl PositionSource for StoredPositions {
    fn next_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        let conn = self.0.connect().ok()?;
        sqlite::position(&conn, topic, partition).ok().flatten()
    }
}

impl LedgerService {
    /// Open (migrating) the ledger tables in `db` and load the state; its
    /// metrics go on `metrics`.
    pub fn open(
        db: &Database,
        log: Arc<dyn EventLog>,
        metrics: &Registry,
    ) -> Result<Arc<LedgerService>, LedgerError> {
        let mut writer = db.connect()?;
        // A batch dirties a page of the entries index per account it
        // touches; with SQLite's default 2 MB cache those pages are evicted
        // and read back from the file batch after batch. 16 MB applies as
        // fast as 64 MB did on 1,000 accounts (ledger_bench) and bounds
        // what a long-running process keeps: the cache only grows.
        writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        sqlite::migrate(&mut writer)?;
        let state = sqlite::load(&writer)?;
        Ok(Arc::new(LedgerService {
            db: db.clone(),
            writer: Mutex::new(writer),
            state: Mutex::new(state),
            log,
            metrics: LedgerMetrics::new(metrics)?,
        }))
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// One account's current state.
    pub fn account_state(&self, account: &AccountId) -> Option<crate::engine::AccountState> {
        self.state.lock().accounts.get(account).cloned()
    }

    /// A copy of the in-memory state (tests, audit).
    pub fn snapshot(&self) -> Ledger {
        self.state.lock().clone()
    }

    /// Apply one batch durably; returns the balance updates to publish.
    pub fn apply_batch(
        &self,
        topic: &str,
        batch: &Batch,
    ) -> Result<Vec<BalanceUpdate>, LedgerError> {
        let Some(last) = batch.records.last() else {
            return Ok(vec![]);
        };
        let mut conn = self.writer.lock();
        let mut state = self.state.lock();
        let result = apply_in_transaction(
            &mut conn,
            &mut state,
            &self.metrics,
            topic,
            batch,
            last.offset + 1,
        );
        if result.is_err() {
            // The transaction rolled back: the in-memory state must too.
            match sqlite::load(&conn) {
                Ok(reloaded) => *state = reloaded,
                Err(err) => tracing::error!(error = %err, "ledger state reload failed"),
            }
        }
        result
    }

    /// Consume until `shutdown` turns true.
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), LedgerError> {
        let topic = topics::ACCOUNT_EVENTS;
        let positions = Arc::new(StoredPositions(self.db.clone()));
        let mut subscription = self.log.subscribe(topic, CONSUMER_GROUP, positions).await?;
        let mut gauges_refreshed = Instant::now();
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(until) = linger_until.take() {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    _ = shutdown.changed() => continue,
                }
            }
            if gauges_refreshed.elapsed() >= GAUGE_REFRESH {
                self.refresh_all_gauges();
                gauges_refreshed = Instant::now();
            }
            let batch = tokio::select! {
                batch = subscription.next_batch(BATCH_MAX, BATCH_WAIT) => batch?,
                _ = shutdown.changed() => continue,
            };
            let Some(batch) = batch else {
                self.metrics.lag.set(0.0);
                continue;
            };
            let partition = batch.partition;
            let batch_len = batch.records.len();
            let next = batch.records.last().map_or(0, |r| r.offset + 1);
            let newest_ms = batch
                .records
                .iter()
                .map(|r| r.timestamp_ms)
                .max()
                .unwrap_or(0);
            let service = self.clone();
            let updates = tokio::task::spawn_blocking(move || {
                tollgate_sqlite::background_priority();
                service.apply_batch(topic, &batch)
            })
            .await
            .map_err(|e| LedgerError::Join(e.to_string()))?
            .inspect_err(|err| {
                if matches!(err, LedgerError::UnsupportedVersion { .. }) {
                    self.metrics.halted.set(1);
                    tracing::error!(error = %err, "the ledger stopped: it does not skip a record it cannot fully read");
                }
            })?;
            let age_ms = (Utc::now().timestamp_millis() - newest_ms).max(0);
            self.metrics.lag.set(age_ms as f64 / 1000.0);
            // Linger only when caught up: with a backlog (or a partitioned
            // log handing out one partition's records at a time) the next
            // batch is read at once.
            if batch_len < BATCH_MAX && age_ms < LINGER_WHEN_LAG_BELOW_MS {
                linger_until = Some(tokio::time::Instant::now() + BATCH_LINGER);
            }
            // The effect is durable; the group commit is for lag monitoring.
            if let Err(err) = subscription.commit(partition, next).await {
                tracing::warn!(error = %err, "ledger offset commit failed (position is kept in the ledger's own state)");
            }
            self.update_gauges(updates.iter().map(|u| &u.account_id));
            self.publish(updates).await;
        }
        Ok(())
    }

    async fn publish(&self, updates: Vec<BalanceUpdate>) {
        for update in updates {
            let key = update.account_id.to_string();
            let payload = match serde_json::to_vec(&Envelope::new(EventBody::Balance(update))) {
                Ok(p) => p,
                Err(_) => continue,
            };
            let record = LogRecord {
                topic: topics::BALANCES.to_owned(),
                key,
                payload,
            };
            if let Err(err) = self.log.append(record).await {
                tracing::warn!(error = %err, "balance update not published; the next change republishes it");
            }
        }
    }

    /// The current balance update of every account (published at start so
    /// gateways that start later know every balance).
    pub fn all_balances(&self) -> Vec<BalanceUpdate> {
        let state = self.state.lock();
        let now = Utc::now();
        let mut all: Vec<BalanceUpdate> = state
            .accounts
            .iter()
            .map(|(id, s)| BalanceUpdate {
                account_id: id.clone(),
                balance: s.balance(),
                as_of: now,
                applied: s.applied.clone(),
                budgets: Vec::new(),
            })
            .collect();
        all.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        all
    }

    pub async fn publish_all(&self) {
        let all = self.all_balances();
        self.refresh_all_gauges();
        self.publish(all).await;
    }

    /// Set the display gauges (balance, credit expiring within 30 days) of
    /// `accounts` from the in-memory state. f64 for dashboards only.
    pub fn update_gauges<'a>(&self, accounts: impl IntoIterator<Item = &'a AccountId>) {
        let state = self.state.lock();
        let horizon = Utc::now() + chrono::Duration::days(EXPIRING_DAYS);
        for id in accounts {
            if let Some(account) = state.accounts.get(id) {
                self.set_gauges(id, account, horizon);
            }
        }
    }

    /// Recompute every account's display gauges.
    pub fn refresh_all_gauges(&self) {
        let state = self.state.lock();
        let horizon = Utc::now() + chrono::Duration::days(EXPIRING_DAYS);
        for (id, account) in &state.accounts {
            self.set_gauges(id, account, horizon);
        }
    }

    fn set_gauges(
        &self,
        id: &AccountId,
        account: &crate::engine::AccountState,
        horizon: chrono::DateTime<Utc>,
    ) {
        let expiring: tollgate_core::Usd = account
            .lots
            .iter()
            .filter(|l| {
                !l.expired && l.remaining > tollgate_core::Usd::ZERO && l.expires_at <= horizon
            })
            .map(|l| l.remaining)
            .sum();
        let f = |usd: tollgate_core::Usd| usd.amount().to_f64().unwrap_or(f64::NAN);
        let label = [id.as_str()];
        self.metrics
            .balance
            .with_label_values(&label)
            .set(f(account.balance()));
        self.metrics
            .expiring_30d
            .with_label_values(&label)
            .set(f(expiring));
    }

    /// Write a tick into the log every `every` (embedded: one partition).
    pub fn spawn_ticker(log: Arc<dyn EventLog>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Ok(payload) =
                    serde_json::to_vec(&Envelope::new(EventBody::Tick(Tick { at: Utc::now() })))
                else {
                    continue;
                };
                let record = LogRecord {
                    topic: topics::ACCOUNT_EVENTS.to_owned(),
                    key: "tick".to_owned(),
                    payload,
                };
                if let Err(err) = log.append(record).await {
                    tracing::warn!(error = %err, "ledger tick not written");
                }
            }
        })
    }
}

/// What a batch changes, gathered as its records apply.
#[derive(Default)]
struct BatchChanges {
    entries: Vec<Entry>,
    changed: HashSet<AccountId>,
    /// Accounts as they were before this batch (None: new in it), so that
    /// only what changed is written back.
    before: HashMap<AccountId, Option<AccountState>>,
}

impl BatchChanges {
    fn remember(&mut self, state: &Ledger, id: &AccountId) {
        if !self.before.contains_key(id) {
            self.before
                .insert(id.clone(), state.accounts.get(id).cloned());
        }
    }
}

/// Apply one decoded record, once: its dedup key is claimed in the batch's
/// transaction.
fn apply_input(
    state: &mut Ledger,
    metrics: &LedgerMetrics,
    claims: &mut sqlite::Claims<'_>,
    partition: u32,
    input: LedgerInput,
    work: &mut BatchChanges,
) -> Result<(), LedgerError> {
    match input {
        LedgerInput::Usage(event) => {
            if claims.claim(&format!("usage:{}", event.event_id))? {
                work.remember(state, &event.account_id);
                state.apply_charge(partition, &event, &mut work.entries);
                work.changed.insert(event.account_id.clone());
            } else {
                metrics.duplicates.inc();
            }
        }
        LedgerInput::Purchase(purchase) => {
            let key = format!(
                "purchase:{}:{}",
                purchase.account_id, purchase.idempotency_key
            );
            if claims.claim(&key)? {
                work.remember(state, &purchase.account_id);
                state.apply_purchase(partition, &purchase, &mut work.entries);
                work.changed.insert(purchase.account_id.clone());
            } else {
                metrics.duplicates.inc();
            }
        }
        LedgerInput::Adjustment(adjustment) => {
            let key = format!(
                "adjustment:{}:{}",
                adjustment.account_id, adjustment.idempotency_key
            );
            if claims.claim(&key)? {
                work.remember(state, &adjustment.account_id);
                state.apply_adjustment(partition, &adjustment, &mut work.entries);
                work.changed.insert(adjustment.account_id.clone());
            } else {
                metrics.duplicates.inc();
            }
        }
        LedgerInput::Tick(tick) => {
            for id in state.due_at_tick(partition, tick.at) {
                work.remember(state, &id);
            }
            state.tick(partition, tick.at, &mut work.entries);
        }
        // Returned above, before anything of the batch was applied.
        LedgerInput::Other | LedgerInput::Unsupported(_) => {}
    }
    Ok(())
}

fn apply_in_transaction(
    conn: &mut Connection,
    state: &mut Ledger,
    metrics: &LedgerMetrics,
    topic: &str,
    batch: &Batch,
    next_offset: u64,
) -> Result<Vec<BalanceUpdate>, LedgerError> {
    let tx = conn.transaction()?;
    let mut work = BatchChanges::default();
    let partition = batch.partition;
    let mut claims = sqlite::Claims::new(&tx)?;
    for record in &batch.records {
        let decoded = match &record.usage {
            // Written by this process: the event itself, not its JSON.
            Some(usage) => Ok(LedgerInput::Usage(UsageCharge::from(&**usage))),
            None => LedgerInput::decode(&record.payload),
        };
        let input = match decoded {
            Ok(LedgerInput::Unsupported(version)) => {
                // Nothing of this batch is committed: the record and those
                // after it wait for a ledger that reads them.
                return Err(LedgerError::UnsupportedVersion {
                    partition,
                    offset: record.offset,
                    version,
                });
            }
            Ok(input) => input,
            Err(err) => {
                metrics.unreadable.inc();
                tracing::error!(offset = record.offset, error = %err, "skipping an unreadable record");
                continue;
            }
        };
        apply_input(state, metrics, &mut claims, partition, input, &mut work)?;
    }
    drop(claims);
    let BatchChanges {
        entries,
        mut changed,
        before,
    } = work;
    // Entries by kind, counted once per batch and only once committed.
    let mut booked = [0u64; EntryKind::ALL.len()];
    for entry in &entries {
        if !changed.contains(&entry.account_id) {
            changed.insert(entry.account_id.clone());
        }
        if let Some(i) = EntryKind::ALL.iter().position(|k| *k == entry.kind) {
            booked[i] += 1;
        }
    }
    sqlite::insert_entries(&tx, &entries)?;
    sqlite::save_accounts(&tx, state, &changed, &before)?;
    sqlite::save_clocks(&tx, &state.clocks)?;
    sqlite::save_position(&tx, topic, partition, next_offset)?;
    tx.commit()?;
    for (kind, count) in EntryKind::ALL.iter().zip(booked) {
        if count > 0 {
            metrics
                .entries
                .with_label_values(&[kind.as_str()])
                .inc_by(count);
        }
    }
    let as_of = state
        .clocks
        .get(&partition)
        .copied()
        .unwrap_or_else(Utc::now);
    let mut updates: Vec<BalanceUpdate> = changed
        .into_iter()
        .filter_map(|id| {
            state.accounts.get(&id).map(|s| BalanceUpdate {
                account_id: id.clone(),
                balance: s.balance(),
                as_of,
                applied: s.applied.clone(),
                budgets: Vec::new(),
            })
        })
        .collect();
    updates.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    Ok(updates)
}
