//! The ledger consumer: applies batches from the account-events topic in
//! one SQLite transaction each (state + position together), then commits
//! the log position and publishes balance updates.

use crate::engine::{AccountState, Entry, EntryKind, Ledger};
use crate::input::{LedgerInput, UsageCharge};
use crate::spend::UsageOrigin;
use crate::sqlite;
use crate::LedgerError;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rusqlite::Connection;
use rust_decimal::prelude::ToPrimitive;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::{BalanceUpdate, Tick};
use tollgate_core::budget::{spend_day, Budget, BudgetId, BudgetSpend};
use tollgate_core::{AccessKeyId, AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{Batch, EventLog, LogRecord, PositionSource};
use tollgate_sqlite::Database;

mod backfill;

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

/// Where the ledger reads budgets (the control plane; tests give their own).
pub trait BudgetSource: Send + Sync {
    /// The budgets on `account` and on its keys.
    fn budgets_of(&self, account: &AccountId) -> Vec<Budget>;
    /// Every budget, by id (the run loop diffs it to republish accounts
    /// whose budgets changed).
    fn all_budgets(&self) -> BTreeMap<BudgetId, Budget>;
}

impl BudgetSource for tollgate_control::ControlPlane {
    fn budgets_of(&self, account: &AccountId) -> Vec<Budget> {
        self.snapshot().budgets_of(account).to_vec()
    }
    fn all_budgets(&self) -> BTreeMap<BudgetId, Budget> {
        self.snapshot().budgets.clone()
    }
}

/// No budgets (benchmarks, tests of other things).
pub struct NoBudgets;

impl BudgetSource for NoBudgets {
    fn budgets_of(&self, _: &AccountId) -> Vec<Budget> {
        Vec::new()
    }
    fn all_budgets(&self) -> BTreeMap<BudgetId, Budget> {
        BTreeMap::new()
    }
}

/// The instant periods were taken at, and each budget with its spend.
pub type BudgetStatus = (DateTime<Utc>, Vec<(Budget, BudgetSpend)>);

/// How often the run loop looks for created, changed or deleted budgets.
const BUDGET_CHECK: Duration = Duration::from_millis(250);

/// A lifetime budget's creation day counted from `created_at`: computed
/// once from the stored usage entries, then kept up to date from each
/// batch's usage (so it never depends on batch boundaries).
struct CreationDay {
    created_at: DateTime<Utc>,
    account: AccountId,
    key: Option<AccessKeyId>,
    spent: Usd,
}

#[derive(Default)]
struct LifetimeParts {
    parts: HashMap<BudgetId, CreationDay>,
    /// The creation days of `parts`: a batch's usage on other days skips them.
    days: HashSet<i64>,
}

impl LifetimeParts {
    fn get(&mut self, conn: &Connection, budget: &Budget) -> Result<Usd, LedgerError> {
        if let Some(part) = self.parts.get(&budget.id) {
            if part.created_at == budget.created_at
                && part.account == budget.account_id
                && part.key == budget.access_key_id
            {
                return Ok(part.spent);
            }
        }
        let spent = sqlite::creation_day_spend(
            conn,
            &budget.account_id,
            budget.access_key_id.as_ref(),
            budget.created_at,
        )?;
        self.days.insert(spend_day(budget.created_at));
        self.parts.insert(
            budget.id.clone(),
            CreationDay {
                created_at: budget.created_at,
                account: budget.account_id.clone(),
                key: budget.access_key_id.clone(),
                spent,
            },
        );
        Ok(spent)
    }

    /// Add a committed batch's usage to the parts it falls in.
    fn apply(&mut self, origins: &[UsageOrigin]) {
        if self.days.is_empty() {
            return;
        }
        for origin in origins {
            let day = spend_day(origin.started_at);
            if !self.days.contains(&day) {
                continue;
            }
            for part in self.parts.values_mut() {
                if origin.started_at >= part.created_at
                    && spend_day(part.created_at) == day
                    && origin.account_id == part.account
                    && part.key.as_ref().is_none_or(|k| *k == origin.access_key_id)
                {
                    part.spent += origin.spent;
                }
            }
        }
    }
}

pub struct LedgerService {
    db: Database,
    writer: Mutex<Connection>,
    state: Mutex<Ledger>,
    lifetime: Mutex<LifetimeParts>,
    budgets: Arc<dyn BudgetSource>,
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
    /// metrics go on `metrics`; balance updates carry the spend of the
    /// budgets `budgets` holds.
    pub fn open(
        db: &Database,
        log: Arc<dyn EventLog>,
        metrics: &Registry,
        budgets: Arc<dyn BudgetSource>,
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
            lifetime: Mutex::new(LifetimeParts::default()),
            budgets,
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
        let (changed, origins) = match result {
            Ok(applied) => applied,
            Err(err) => {
                // The transaction rolled back: the in-memory state must too.
                match sqlite::load(&conn) {
                    Ok(reloaded) => *state = reloaded,
                    Err(err) => tracing::error!(error = %err, "ledger state reload failed"),
                }
                return Err(err);
            }
        };
        let mut lifetime = self.lifetime.lock();
        lifetime.apply(&origins);
        let as_of = state
            .clocks
            .get(&batch.partition)
            .copied()
            .unwrap_or_else(Utc::now);
        let mut updates: Vec<BalanceUpdate> = changed
            .into_iter()
            .filter_map(|id| self.update_of(&state, &conn, &mut lifetime, id, Some(as_of)))
            .collect();
        updates.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(updates)
    }

    /// An account's balance update at `as_of` (None: its partition's ledger
    /// time, else now); None when the ledger has never seen the account.
    fn update_of(
        &self,
        state: &Ledger,
        conn: &Connection,
        lifetime: &mut LifetimeParts,
        id: AccountId,
        as_of: Option<DateTime<Utc>>,
    ) -> Option<BalanceUpdate> {
        let account = state.accounts.get(&id)?;
        let as_of = as_of
            .or_else(|| state.clocks.get(&account.partition).copied())
            .unwrap_or_else(Utc::now);
        let budgets = self.budgets.budgets_of(&id);
        let budgets = budget_spends(state, conn, lifetime, &budgets, as_of);
        Some(BalanceUpdate {
            account_id: id,
            balance: account.balance(),
            as_of,
            applied: account.applied.clone(),
            budgets,
        })
    }

    /// `account`'s budgets with their current period and spend, at the later
    /// of its partition's ledger time and now (so periods end by the clock
    /// even with no traffic, and never read earlier than a published update).
    pub fn budget_status(&self, account: &AccountId) -> Result<BudgetStatus, LedgerError> {
        let budgets = self.budgets.budgets_of(account);
        let conn = self.writer.lock();
        let state = self.state.lock();
        let mut lifetime = self.lifetime.lock();
        let now = Utc::now();
        let at = state
            .accounts
            .get(account)
            .and_then(|a| state.clocks.get(&a.partition))
            .map_or(now, |clock| now.max(*clock));
        let mut out = Vec::with_capacity(budgets.len());
        for budget in budgets {
            let spend = state
                .spend
                .budget_spend(&budget, at, |b| lifetime.get(&conn, b))?;
            out.push((budget, spend));
        }
        Ok((at, out))
    }

    /// Balance updates of `accounts` at their partitions' ledger time (the
    /// run loop publishes them when their budgets change).
    pub fn balance_updates(
        &self,
        accounts: impl IntoIterator<Item = AccountId>,
    ) -> Vec<BalanceUpdate> {
        let conn = self.writer.lock();
        let state = self.state.lock();
        let mut lifetime = self.lifetime.lock();
        accounts
            .into_iter()
            .filter_map(|id| self.update_of(&state, &conn, &mut lifetime, id, None))
            .collect()
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
        let mut budgets = BudgetWatch::new(self.budgets.all_budgets());
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(accounts) = budgets.changed(self.budgets.as_ref()) {
                let updates = self.balance_updates(accounts);
                self.publish(updates).await;
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
        let conn = self.writer.lock();
        let state = self.state.lock();
        let mut lifetime = self.lifetime.lock();
        let now = Utc::now();
        let ids: Vec<AccountId> = state.accounts.keys().cloned().collect();
        let mut all: Vec<BalanceUpdate> = ids
            .into_iter()
            .filter_map(|id| self.update_of(&state, &conn, &mut lifetime, id, Some(now)))
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
    /// The usage entries' key, start and debit, in entry order.
    origins: Vec<UsageOrigin>,
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
                let booked = work.entries.len();
                state.apply_charge(partition, &event, &mut work.entries);
                work.changed.insert(event.account_id.clone());
                // A usage entry is the last one it books (expiries first).
                if let Some(entry) = work.entries[booked..]
                    .last()
                    .filter(|e| e.kind == EntryKind::Usage)
                {
                    work.origins.push(UsageOrigin {
                        entry: work.entries.len() - 1,
                        spent: -entry.amount,
                        account_id: event.account_id,
                        access_key_id: event.access_key_id,
                        started_at: event.started_at,
                    });
                }
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

/// Apply `batch` in one transaction; returns the accounts it changed and
/// its usage entries' origins.
fn apply_in_transaction(
    conn: &mut Connection,
    state: &mut Ledger,
    metrics: &LedgerMetrics,
    topic: &str,
    batch: &Batch,
    next_offset: u64,
) -> Result<(HashSet<AccountId>, Vec<UsageOrigin>), LedgerError> {
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
        origins,
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
    sqlite::insert_entries(&tx, &entries, &origins)?;
    sqlite::save_accounts(&tx, state, &changed, &before)?;
    // The spend rows the batch changed, borrowed (no id copied per event).
    let key_days: HashSet<(&AccessKeyId, i64)> = origins
        .iter()
        .map(|o| (&o.access_key_id, spend_day(o.started_at)))
        .collect();
    let account_days: HashSet<(&AccountId, i64)> = origins
        .iter()
        .map(|o| (&o.account_id, spend_day(o.started_at)))
        .collect();
    sqlite::save_spend(&tx, &state.spend, &key_days, &account_days)?;
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
    Ok((changed, origins))
}

/// Each budget's current period at `at` and the spend in it. A budget whose
/// lifetime part cannot be read is left out (logged): the gateways keep its
/// last published spend rather than the ledger stopping after a commit.
fn budget_spends(
    state: &Ledger,
    conn: &Connection,
    lifetime: &mut LifetimeParts,
    budgets: &[Budget],
    at: DateTime<Utc>,
) -> Vec<BudgetSpend> {
    budgets
        .iter()
        .filter_map(|budget| {
            state
                .spend
                .budget_spend(budget, at, |b| lifetime.get(conn, b))
                .inspect_err(|err| {
                    tracing::error!(budget = %budget.id, error = %err, "budget spend not computed");
                })
                .ok()
        })
        .collect()
}

/// The budgets last seen, to republish the accounts whose budgets change.
struct BudgetWatch {
    seen: BTreeMap<BudgetId, Budget>,
    checked: Instant,
}

impl BudgetWatch {
    fn new(seen: BTreeMap<BudgetId, Budget>) -> BudgetWatch {
        BudgetWatch {
            seen,
            checked: Instant::now(),
        }
    }

    /// Every `BUDGET_CHECK`: the accounts with a budget created, changed or
    /// deleted since the last look (None when nothing changed).
    fn changed(&mut self, source: &dyn BudgetSource) -> Option<BTreeSet<AccountId>> {
        if self.checked.elapsed() < BUDGET_CHECK {
            return None;
        }
        self.checked = Instant::now();
        let now = source.all_budgets();
        if now == self.seen {
            return None;
        }
        let mut accounts = BTreeSet::new();
        for (id, budget) in &now {
            if self.seen.get(id) != Some(budget) {
                accounts.insert(budget.account_id.clone());
            }
        }
        for (id, budget) in &self.seen {
            if now.get(id) != Some(budget) {
                accounts.insert(budget.account_id.clone());
            }
        }
        self.seen = now;
        Some(accounts)
    }
}
