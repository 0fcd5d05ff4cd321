//! `tollgate audit`: re-derive every account's balance and entries from the
//! raw log with a deliberately separate, simple, whole-log computation (no
//! stored state, no incremental updates) and compare with the ledger.
//!
//! The rules restated plainly: events apply in log order per partition,
//! each id once; ledger time is the latest event time seen on the
//! partition; before an account's event, and at every tick, lots whose
//! expiry (purchase + 365 days) is at or before ledger time expire; a debit
//! takes from the lot expiring first (then the oldest), the rest is debt;
//! new credit pays debt first; a refund needs enough unexpired credit.
//! Spend: each usage debit counts for its key and its account on the UTC
//! day its usage started.

use crate::sqlite;
use crate::LedgerError;
use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use tollgate_core::billing::{AdjustmentKind, CREDIT_LIFETIME_DAYS};
use tollgate_core::budget::{spend_day, SpendScope};
use tollgate_core::pricing::cost_of;
use tollgate_core::{Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, StoredRecord};

struct SimpleLot {
    id: String,
    bought: DateTime<Utc>,
    expires: DateTime<Utc>,
    left: Usd,
    done: bool,
}

#[derive(Default)]
struct SimpleAccount {
    partition: u32,
    lots: Vec<SimpleLot>,
    debt: Usd,
}

/// (kind, source id, amount): what an entry must say.
pub type EntryKey = (String, String, Usd);

#[derive(Default)]
pub struct Derived {
    pub balances: BTreeMap<String, Usd>,
    pub entries: BTreeMap<String, Vec<EntryKey>>,
    /// Budget spend: (scope key, UTC day of the usage's start) → the usage
    /// debits (each counted for its key and for its account).
    pub spend: BTreeMap<(String, i64), Usd>,
}

fn expire(
    account: &str,
    state: &mut SimpleAccount,
    now: DateTime<Utc>,
    entries: &mut BTreeMap<String, Vec<EntryKey>>,
) {
    let mut order: Vec<usize> = (0..state.lots.len()).collect();
    order.sort_by_key(|&i| {
        (
            state.lots[i].expires,
            state.lots[i].bought,
            state.lots[i].id.clone(),
        )
    });
    for i in order {
        let lot = &mut state.lots[i];
        if !lot.done && lot.expires <= now {
            lot.done = true;
            if lot.left != Usd::ZERO {
                entries.entry(account.to_owned()).or_default().push((
                    "expiry".into(),
                    lot.id.clone(),
                    -lot.left,
                ));
            }
            lot.left = Usd::ZERO;
        }
    }
}

fn take(state: &mut SimpleAccount, mut amount: Usd) {
    let mut order: Vec<usize> = (0..state.lots.len()).collect();
    order.sort_by_key(|&i| {
        (
            state.lots[i].expires,
            state.lots[i].bought,
            state.lots[i].id.clone(),
        )
    });
    for i in order {
        let lot = &mut state.lots[i];
        if lot.done || amount == Usd::ZERO {
            continue;
        }
        let used = amount.min(lot.left);
        lot.left -= used;
        amount -= used;
    }
    state.debt += amount;
}

fn give(state: &mut SimpleAccount, id: String, at: DateTime<Utc>, amount: Usd) {
    let paid = state.debt.min(amount);
    state.debt -= paid;
    state.lots.push(SimpleLot {
        id,
        bought: at,
        expires: at + Duration::days(CREDIT_LIFETIME_DAYS),
        left: amount - paid,
        done: false,
    });
}

/// Derive balances and entries from records (each partition in offset order).
pub fn derive(records: &[StoredRecord]) -> Result<Derived, LedgerError> {
    derive_excluding(records, HashSet::new())
}

/// `derive`, leaving out of spend the usage events in `not_in_spend` (those
/// a release before spend booked: it kept no spend for them).
pub fn derive_excluding(
    records: &[StoredRecord],
    not_in_spend: HashSet<String>,
) -> Result<Derived, LedgerError> {
    let mut by_partition: BTreeMap<u32, Vec<&StoredRecord>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut replay = Replay {
        not_in_spend,
        ..Replay::default()
    };
    for (partition, mut list) in by_partition {
        list.sort_by_key(|r| r.offset);
        let mut clock: Option<DateTime<Utc>> = None;
        for record in list {
            let Ok(envelope) = serde_json::from_slice::<Envelope>(&record.payload) else {
                continue;
            };
            // A newer build's record cannot be re-derived in full: refuse,
            // rather than report balances computed without its new fields.
            if let Err(version) = envelope.check_version() {
                return Err(LedgerError::UnsupportedVersion {
                    partition: record.partition,
                    offset: record.offset,
                    version,
                });
            }
            replay.record(partition, &mut clock, envelope.body);
        }
    }
    Ok(replay.finish())
}

/// The audit's own, independent replay state.
#[derive(Default)]
struct Replay {
    accounts: HashMap<String, SimpleAccount>,
    seen: HashSet<String>,
    not_in_spend: HashSet<String>,
    out: Derived,
}

impl Replay {
    fn record(&mut self, partition: u32, clock: &mut Option<DateTime<Utc>>, body: EventBody) {
        let (account, at, key) = match &body {
            EventBody::Usage(u) => (
                u.account_id.to_string(),
                u.finished_at,
                format!("usage:{}", u.event_id),
            ),
            EventBody::Purchase(p) => (
                p.account_id.to_string(),
                p.purchased_at,
                format!("purchase:{}:{}", p.account_id, p.idempotency_key),
            ),
            EventBody::Adjustment(a) => (
                a.account_id.to_string(),
                a.at,
                format!("adjustment:{}:{}", a.account_id, a.idempotency_key),
            ),
            EventBody::Tick(t) => {
                let now = clock.map_or(t.at, |c| c.max(t.at));
                *clock = Some(now);
                self.expire_partition(partition, now);
                return;
            }
            _ => return,
        };
        // A redelivered id is skipped before it can move the clock.
        if !self.seen.insert(key) {
            return;
        }
        let now = clock.map_or(at, |c| c.max(at));
        *clock = Some(now);
        if let EventBody::Usage(u) = &body {
            self.count_spend(u);
        }
        let state = self.accounts.entry(account.clone()).or_default();
        state.partition = partition;
        expire(&account, state, now, &mut self.out.entries);
        let entries = self.out.entries.entry(account).or_default();
        apply(state, entries, body);
    }

    /// A usage debit is spend of its key and of its account on the day it
    /// started.
    fn count_spend(&mut self, u: &tollgate_core::UsageEvent) {
        let cost = cost_of(u).total();
        if cost == Usd::ZERO || self.not_in_spend.contains(&u.event_id.to_string()) {
            return;
        }
        let day = spend_day(u.started_at);
        for scope in [
            SpendScope::AccessKey(u.access_key_id.clone()),
            SpendScope::Account(u.account_id.clone()),
        ] {
            *self.out.spend.entry((scope.key(), day)).or_default() += cost;
        }
    }

    /// A tick expires lots on every account of its partition, in name order.
    fn expire_partition(&mut self, partition: u32, now: DateTime<Utc>) {
        let mut names: Vec<String> = self
            .accounts
            .iter()
            .filter(|(_, s)| s.partition == partition)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        for name in names {
            if let Some(state) = self.accounts.get_mut(&name) {
                expire(&name, state, now, &mut self.out.entries);
            }
        }
    }

    fn finish(mut self) -> Derived {
        for (name, state) in self.accounts {
            let credit: Usd = state.lots.iter().filter(|l| !l.done).map(|l| l.left).sum();
            self.out.balances.insert(name, credit - state.debt);
        }
        self.out
    }
}

fn apply(state: &mut SimpleAccount, entries: &mut Vec<EntryKey>, body: EventBody) {
    match body {
        EventBody::Usage(u) => {
            let cost = cost_of(&u).total();
            if cost != Usd::ZERO {
                take(state, cost);
                entries.push(("usage".into(), u.event_id.to_string(), -cost));
            }
        }
        EventBody::Purchase(p) => {
            give(state, p.purchase_id.clone(), p.purchased_at, p.amount);
            entries.push(("purchase".into(), p.purchase_id, p.amount));
        }
        EventBody::Adjustment(a) => match a.kind {
            AdjustmentKind::GoodwillCredit => {
                give(state, a.adjustment_id.clone(), a.at, a.amount);
                entries.push(("goodwill_credit".into(), a.adjustment_id, a.amount));
            }
            AdjustmentKind::ManualDebit => {
                take(state, a.amount);
                entries.push(("manual_debit".into(), a.adjustment_id, -a.amount));
            }
            AdjustmentKind::Refund => {
                let credit: Usd = state.lots.iter().filter(|l| !l.done).map(|l| l.left).sum();
                if a.amount <= credit && state.debt == Usd::ZERO {
                    take(state, a.amount);
                    entries.push(("refund".into(), a.adjustment_id, -a.amount));
                } else {
                    entries.push(("adjustment_rejected".into(), a.adjustment_id, Usd::ZERO));
                }
            }
        },
        _ => {}
    }
}

/// Read every record of the account-events topic.
pub async fn read_log(log: &dyn EventLog) -> Result<Vec<StoredRecord>, LedgerError> {
    let topic = topics::ACCOUNT_EVENTS;
    let mut all = Vec::new();
    for partition in 0..log.partitions(topic).await? {
        let mut from = 0;
        loop {
            let batch = log.read(topic, partition, from, 10_000).await?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            all.extend(batch);
        }
    }
    Ok(all)
}

/// What the ledger's tables say, in the same shape.
pub fn stored(conn: &Connection) -> Result<Derived, LedgerError> {
    let mut out = Derived::default();
    let mut stmt = conn
        .prepare("SELECT account_id, kind, source_id, amount FROM ledger_entries ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (account, kind, source, amount) = row?;
        out.entries
            .entry(account)
            .or_default()
            .push((kind, source, sqlite::parse_usd(&amount)?));
    }
    let ledger = sqlite::load(conn)?;
    for (id, state) in ledger.accounts {
        out.balances.insert(id.to_string(), state.balance());
    }
    out.spend = sqlite::spend_rows(conn)?;
    Ok(out)
}

/// Usage entries booked before the ledger kept spend (no `started_at`).
pub fn booked_before_spend(conn: &Connection) -> Result<HashSet<String>, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT source_id FROM ledger_entries WHERE kind = 'usage' AND started_at IS NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Differences between derived and stored spend rows (a missing row is zero).
fn compare_spend(derived: &Derived, ledger: &Derived, problems: &mut Vec<String>) {
    let rows: std::collections::BTreeSet<&(String, i64)> =
        derived.spend.keys().chain(ledger.spend.keys()).collect();
    for row in rows {
        let want = derived.spend.get(row).copied().unwrap_or_default();
        let have = ledger.spend.get(row).copied().unwrap_or_default();
        if want != have {
            let (scope, day) = row;
            let date = chrono::DateTime::from_timestamp(day * 86_400, 0)
                .map_or_else(|| day.to_string(), |d| d.date_naive().to_string());
            problems.push(format!(
                "spend of {scope} on {date}: from the log {want}, the ledger says {have}"
            ));
        }
    }
}

/// Every difference between the re-derivation and the ledger, described.
pub fn compare(derived: &Derived, ledger: &Derived) -> Vec<String> {
    let mut problems = Vec::new();
    let names: std::collections::BTreeSet<&String> = derived
        .balances
        .keys()
        .chain(ledger.balances.keys())
        .collect();
    for name in names {
        let want = derived.balances.get(name).copied().unwrap_or_default();
        let have = ledger.balances.get(name).copied().unwrap_or_default();
        if want != have {
            problems.push(format!(
                "account {name}: balance from the log is {want}, the ledger says {have}"
            ));
        }
        let mut want_entries = derived.entries.get(name).cloned().unwrap_or_default();
        let mut have_entries = ledger.entries.get(name).cloned().unwrap_or_default();
        want_entries.sort();
        have_entries.sort();
        if want_entries != have_entries {
            let missing: Vec<_> = want_entries
                .iter()
                .filter(|e| !have_entries.contains(e))
                .collect();
            let extra: Vec<_> = have_entries
                .iter()
                .filter(|e| !want_entries.contains(e))
                .collect();
            problems.push(format!(
                "account {name}: entries differ; missing from the ledger: {missing:?}; not derivable from the log: {extra:?}"
            ));
        }
    }
    compare_spend(derived, ledger, &mut problems);
    problems
}

/// Audit the ledger in `conn` against `log` (up to the positions the ledger
/// has applied, so a running ledger can be audited); returns the differences.
pub async fn audit(log: &dyn EventLog, conn: &Connection) -> Result<Vec<String>, LedgerError> {
    let mut records = read_log(log).await?;
    let mut applied_through = std::collections::HashMap::new();
    for r in &records {
        if let std::collections::hash_map::Entry::Vacant(slot) = applied_through.entry(r.partition)
        {
            slot.insert(sqlite::position(conn, topics::ACCOUNT_EVENTS, r.partition)?.unwrap_or(0));
        }
    }
    records.retain(|r| r.offset < applied_through.get(&r.partition).copied().unwrap_or(0));
    let derived = derive_excluding(&records, booked_before_spend(conn)?)?;
    let ledger = stored(conn)?;
    Ok(compare(&derived, &ledger))
}
