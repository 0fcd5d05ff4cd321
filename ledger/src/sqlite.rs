//! Durable ledger state in SQLite: lots, debts, entries, applied ids,
//! per-partition clocks and log positions — written in ONE transaction per
//! batch, so a crash at any point neither loses nor duplicates a debit.

use crate::engine::{
    has_standard_postings, standard_postings, AccountState, Allocation, Entry, EntryKind, Ledger,
    Lot, LotSource, Posting,
};
use crate::spend::{parse_scope, Spend, UsageOrigin};
use crate::text;
use crate::LedgerError;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use tollgate_core::budget::SpendScope;
use tollgate_core::{AccessKeyId, AccountId, Usd};
use tollgate_sqlite::Migrations;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE ledger_accounts (
        account_id TEXT PRIMARY KEY,
        partition INTEGER NOT NULL,
        debt TEXT NOT NULL
    );
    CREATE TABLE ledger_lots (
        lot_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        source TEXT NOT NULL,
        purchased_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        amount TEXT NOT NULL,
        remaining TEXT NOT NULL,
        expired INTEGER NOT NULL
    );
    CREATE INDEX ledger_lots_account ON ledger_lots (account_id);
    CREATE TABLE ledger_entries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        fee TEXT NOT NULL,
        upstream TEXT NOT NULL,
        balance_after TEXT NOT NULL,
        postings TEXT NOT NULL,
        allocations TEXT NOT NULL,
        memo TEXT
    );
    CREATE INDEX ledger_entries_account ON ledger_entries (account_id, seq);
    CREATE TABLE ledger_applied (dedup_key TEXT PRIMARY KEY);
    CREATE TABLE ledger_positions (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (topic, partition)
    );
    CREATE TABLE ledger_clocks (partition INTEGER PRIMARY KEY, at TEXT NOT NULL);
    CREATE TABLE ledger_watermarks (
        account_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (account_id, instance_id)
    );
",
    "
    -- Cheaper inserts, the same rows. Applied ids: one B-tree keyed by the
    -- id instead of a rowid table plus an index on it.
    CREATE TABLE ledger_applied_v2 (dedup_key TEXT PRIMARY KEY) WITHOUT ROWID;
    INSERT INTO ledger_applied_v2 (dedup_key) SELECT dedup_key FROM ledger_applied;
    DROP TABLE ledger_applied;
    ALTER TABLE ledger_applied_v2 RENAME TO ledger_applied;
    -- Entries: seq without AUTOINCREMENT (no sqlite_sequence update per
    -- insert); entries are never deleted, so the next seq is still one past
    -- the largest ever used. postings NULL: the entry's kind's standard
    -- postings (engine::standard_postings), derived from its own columns.
    CREATE TABLE ledger_entries_v2 (
        seq INTEGER PRIMARY KEY,
        account_id TEXT NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        fee TEXT NOT NULL,
        upstream TEXT NOT NULL,
        balance_after TEXT NOT NULL,
        postings TEXT,
        allocations TEXT NOT NULL,
        memo TEXT
    );
    INSERT INTO ledger_entries_v2 (seq, account_id, at, kind, source_id, amount, fee, upstream,
            balance_after, postings, allocations, memo)
        SELECT seq, account_id, at, kind, source_id, amount, fee, upstream,
            balance_after, postings, allocations, memo
        FROM ledger_entries ORDER BY seq;
    DROP TABLE ledger_entries;
    ALTER TABLE ledger_entries_v2 RENAME TO ledger_entries;
    CREATE INDEX ledger_entries_account ON ledger_entries (account_id, seq);
",
    "
    -- Budgets: usage debits per scope ('key:<id>', 'account:<id>') per UTC
    -- day of the usage's start (days since 1970-01-01).
    CREATE TABLE ledger_spend (
        scope TEXT NOT NULL,
        day INTEGER NOT NULL,
        spent TEXT NOT NULL,
        PRIMARY KEY (scope, day)
    ) WITHOUT ROWID;
    -- Usage entries keep their key and start, so a lifetime budget's
    -- creation day can be counted from its creation instant. NULL on
    -- entries booked before this version (and on every other kind).
    ALTER TABLE ledger_entries ADD COLUMN access_key_id TEXT;
    ALTER TABLE ledger_entries ADD COLUMN started_at TEXT;
",
];

/// The ledger's migrations, in their own version table.
const LEDGER_MIGRATIONS: Migrations = Migrations {
    table: "ledger_migrations",
    steps: MIGRATIONS,
};

pub fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    Ok(LEDGER_MIGRATIONS.apply(conn)?)
}

/// Timestamps sort as text: fixed precision, UTC.
pub fn time_text(at: DateTime<Utc>) -> String {
    text::time(at)
}

pub fn parse_time(text: &str) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| LedgerError::Corrupt(format!("timestamp {text}: {e}")))
}

pub fn parse_usd(text: &str) -> Result<Usd, LedgerError> {
    Usd::from_str(text).map_err(|e| LedgerError::Corrupt(format!("amount {text}: {e}")))
}

fn source_text(source: LotSource) -> &'static str {
    match source {
        LotSource::Purchase => "purchase",
        LotSource::GoodwillCredit => "goodwill_credit",
    }
}

/// Load the whole ledger state (used at start and after a failed batch).
pub fn load(conn: &Connection) -> Result<Ledger, LedgerError> {
    let mut ledger = Ledger::default();
    let mut stmt = conn.prepare("SELECT account_id, partition, debt FROM ledger_accounts")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (id, partition, debt) = row?;
        ledger.accounts.insert(
            AccountId(id),
            AccountState {
                lots: vec![],
                debt: parse_usd(&debt)?,
                partition: partition as u32,
                applied: Default::default(),
            },
        );
    }
    let mut stmt = conn.prepare(
        "SELECT lot_id, account_id, source, purchased_at, expires_at, amount, remaining, expired
         FROM ledger_lots ORDER BY purchased_at, lot_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, bool>(7)?,
        ))
    })?;
    for row in rows {
        let (lot_id, account, source, purchased, expires, amount, remaining, expired) = row?;
        let account_id = AccountId(account);
        let lot = Lot {
            lot_id,
            account_id: account_id.clone(),
            source: if source == "goodwill_credit" {
                LotSource::GoodwillCredit
            } else {
                LotSource::Purchase
            },
            purchased_at: parse_time(&purchased)?,
            expires_at: parse_time(&expires)?,
            amount: parse_usd(&amount)?,
            remaining: parse_usd(&remaining)?,
            expired,
        };
        ledger
            .accounts
            .entry(account_id)
            .or_default()
            .lots
            .push(lot);
    }
    let mut stmt = conn.prepare("SELECT account_id, instance_id, seq FROM ledger_watermarks")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (account, instance, seq) = row?;
        ledger
            .accounts
            .entry(AccountId(account))
            .or_default()
            .applied
            .insert(instance, seq as u64);
    }
    let mut stmt = conn.prepare("SELECT partition, at FROM ledger_clocks")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (partition, at) = row?;
        ledger.clocks.insert(partition as u32, parse_time(&at)?);
    }
    for ((scope, day), spent) in spend_rows(conn)? {
        let scope = parse_scope(&scope)
            .ok_or_else(|| LedgerError::Corrupt(format!("spend scope {scope}")))?;
        ledger.spend.set(scope, day, spent);
    }
    Ok(ledger)
}

/// The stored spend rows: (scope key, day) → spent.
pub fn spend_rows(conn: &Connection) -> Result<BTreeMap<(String, i64), Usd>, LedgerError> {
    let mut stmt = conn.prepare("SELECT scope, day, spent FROM ledger_spend")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (scope, day, spent) = row?;
        out.insert((scope, day), parse_usd(&spent)?);
    }
    Ok(out)
}

/// Write the spend rows a batch changed, from the in-memory state.
/// Usage entries booked before spend was kept (ledger migration 3): their
/// event id → (entry seq, account, entry amount).
pub fn usage_without_start(
    conn: &Connection,
) -> Result<HashMap<String, (i64, AccountId, Usd)>, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT source_id, seq, account_id, amount FROM ledger_entries
         WHERE kind = 'usage' AND started_at IS NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (source_id, seq, account, amount) = row?;
        out.insert(source_id, (seq, AccountId(account), parse_usd(&amount)?));
    }
    Ok(out)
}

/// Record a usage entry's key and start (spend backfill), by its seq.
pub fn set_usage_origin(
    tx: &Transaction<'_>,
    seq: i64,
    key: &AccessKeyId,
    started_at: DateTime<Utc>,
) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "UPDATE ledger_entries SET access_key_id = ?1, started_at = ?2 WHERE seq = ?3",
    )?
    .execute(params![key.as_str(), time_text(started_at), seq])?;
    Ok(())
}

pub fn save_spend(
    tx: &Transaction<'_>,
    spend: &Spend,
    key_days: &HashSet<(&AccessKeyId, i64)>,
    account_days: &HashSet<(&AccountId, i64)>,
) -> Result<(), LedgerError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO ledger_spend (scope, day, spent) VALUES (?1, ?2, ?3)
         ON CONFLICT (scope, day) DO UPDATE SET spent = excluded.spent",
    )?;
    let rows = key_days
        .iter()
        .map(|(id, day)| (SpendScope::AccessKey((*id).clone()), *day))
        .chain(
            account_days
                .iter()
                .map(|(id, day)| (SpendScope::Account((*id).clone()), *day)),
        );
    for (scope, day) in rows {
        let spent = spend.row(&scope, day);
        stmt.execute(params![scope.key(), day, text::decimal(spent.0)])?;
    }
    Ok(())
}

/// The usage debits of `account` (only `key`'s when set) started at or
/// after `from` and before the end of `from`'s UTC day: the part of a
/// lifetime budget's creation day that counts. Summed here, exactly (SQLite
/// cannot add decimal text exactly). Scans the account's entries.
pub fn creation_day_spend(
    conn: &Connection,
    account: &AccountId,
    key: Option<&AccessKeyId>,
    from: DateTime<Utc>,
) -> Result<Usd, LedgerError> {
    let day_end =
        from.date_naive().and_time(chrono::NaiveTime::MIN).and_utc() + chrono::Duration::days(1);
    let mut stmt = conn.prepare_cached(
        "SELECT amount FROM ledger_entries
         WHERE account_id = ?1 AND kind = 'usage' AND started_at >= ?2 AND started_at < ?3
           AND (?4 IS NULL OR access_key_id = ?4)",
    )?;
    let rows = stmt.query_map(
        params![
            account.as_str(),
            time_text(from),
            time_text(day_end),
            key.map(AccessKeyId::as_str)
        ],
        |r| r.get::<_, String>(0),
    )?;
    let mut total = Usd::ZERO;
    for row in rows {
        total -= parse_usd(&row?)?;
    }
    Ok(total)
}

/// Mark `dedup_key` applied; false when it already was (a redelivery).
pub fn claim(tx: &Transaction<'_>, dedup_key: &str) -> Result<bool, LedgerError> {
    Claims::new(tx)?.claim(dedup_key)
}

/// Claims within one transaction through one prepared statement (looking
/// it up in the statement cache per event showed in the profile).
pub struct Claims<'t>(rusqlite::CachedStatement<'t>);

impl<'t> Claims<'t> {
    pub fn new(tx: &'t Transaction<'_>) -> Result<Claims<'t>, LedgerError> {
        Ok(Claims(tx.prepare_cached(
            "INSERT OR IGNORE INTO ledger_applied (dedup_key) VALUES (?1)",
        )?))
    }

    /// Mark `dedup_key` applied; false when it already was (a redelivery).
    pub fn claim(&mut self, dedup_key: &str) -> Result<bool, LedgerError> {
        Ok(self.0.execute([dedup_key])? == 1)
    }
}

/// NULL when the entry's postings are its kind's standard ones (almost
/// always), else their JSON.
fn stored_postings(e: &Entry) -> Option<String> {
    (!has_standard_postings(e)).then(|| text::postings_json(&e.postings))
}

/// Insert `entries`; `origins` (in entry order) give the usage entries'
/// key and start.
pub fn insert_entries(
    tx: &Transaction<'_>,
    entries: &[Entry],
    origins: &[UsageOrigin],
) -> Result<(), LedgerError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO ledger_entries (account_id, at, kind, source_id, amount, fee, upstream,
            balance_after, postings, allocations, memo, access_key_id, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let mut origins = origins.iter().peekable();
    for (i, e) in entries.iter().enumerate() {
        let origin = origins.next_if(|o| o.entry == i);
        stmt.execute(params![
            e.account_id.as_str(),
            time_text(e.at),
            e.kind.as_str(),
            e.source_id,
            text::decimal(e.amount.0),
            text::decimal(e.fee.0),
            text::decimal(e.upstream.0),
            text::decimal(e.balance_after.0),
            stored_postings(e),
            text::allocations_json(&e.allocations),
            e.memo,
            origin.map(|o| o.access_key_id.as_str()),
            origin.map(|o| time_text(o.started_at)),
        ])?;
    }
    Ok(())
}

/// Write the current state of the accounts that changed: for an account
/// whose state before the batch is in `before`, only the rows that differ
/// from it (lots are only ever appended, so they pair up by position);
/// for the others, every row. `before` must hold an account's state from
/// before the batch's first change to it, or nothing.
pub fn save_accounts(
    tx: &Transaction<'_>,
    ledger: &Ledger,
    changed: &HashSet<AccountId>,
    before: &HashMap<AccountId, Option<AccountState>>,
) -> Result<(), LedgerError> {
    let mut account_stmt = tx.prepare_cached(
        "INSERT INTO ledger_accounts (account_id, partition, debt) VALUES (?1, ?2, ?3)
         ON CONFLICT (account_id) DO UPDATE SET partition = excluded.partition, debt = excluded.debt",
    )?;
    let mut lot_stmt = tx.prepare_cached(
        "INSERT INTO ledger_lots (lot_id, account_id, source, purchased_at, expires_at, amount, remaining, expired)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (lot_id) DO UPDATE SET remaining = excluded.remaining, expired = excluded.expired",
    )?;
    let mut mark_stmt = tx.prepare_cached(
        "INSERT INTO ledger_watermarks (account_id, instance_id, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (account_id, instance_id) DO UPDATE SET seq = excluded.seq",
    )?;
    for account_id in changed {
        let Some(state) = ledger.accounts.get(account_id) else {
            continue;
        };
        let old = before.get(account_id).and_then(Option::as_ref);
        if old.is_none_or(|old| old.partition != state.partition || old.debt != state.debt) {
            account_stmt.execute(params![
                account_id.as_str(),
                state.partition,
                text::decimal(state.debt.0)
            ])?;
        }
        for (i, lot) in state.lots.iter().enumerate() {
            let old_lot = old.and_then(|old| old.lots.get(i));
            if old_lot.is_some_and(|o| {
                o.lot_id == lot.lot_id && o.remaining == lot.remaining && o.expired == lot.expired
            }) {
                continue;
            }
            lot_stmt.execute(params![
                lot.lot_id,
                lot.account_id.as_str(),
                source_text(lot.source),
                time_text(lot.purchased_at),
                time_text(lot.expires_at),
                text::decimal(lot.amount.0),
                text::decimal(lot.remaining.0),
                lot.expired,
            ])?;
        }
        for (instance, seq) in &state.applied {
            if old.is_some_and(|old| old.applied.get(instance) == Some(seq)) {
                continue;
            }
            mark_stmt.execute(params![account_id.as_str(), instance, *seq as i64])?;
        }
    }
    Ok(())
}

pub fn save_clocks(
    tx: &Transaction<'_>,
    clocks: &HashMap<u32, DateTime<Utc>>,
) -> Result<(), LedgerError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO ledger_clocks (partition, at) VALUES (?1, ?2)
         ON CONFLICT (partition) DO UPDATE SET at = excluded.at",
    )?;
    for (partition, at) in clocks {
        stmt.execute(params![partition, time_text(*at)])?;
    }
    Ok(())
}

pub fn save_position(
    tx: &Transaction<'_>,
    topic: &str,
    partition: u32,
    next_offset: u64,
) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "INSERT INTO ledger_positions (topic, partition, next_offset) VALUES (?1, ?2, ?3)
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
    )?
    .execute(params![topic, partition, next_offset as i64])?;
    Ok(())
}

pub fn position(
    conn: &Connection,
    topic: &str,
    partition: u32,
) -> Result<Option<u64>, LedgerError> {
    Ok(conn
        .query_row(
            "SELECT next_offset FROM ledger_positions WHERE topic = ?1 AND partition = ?2",
            params![topic, partition],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|n| n as u64))
}

/// A stored entry as the credits API returns it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StoredEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// A stored entry's columns, as read (decoded by `decode_entry`).
pub struct RawEntry {
    seq: u64,
    text: [String; 8],
    postings: Option<String>,
    allocations: String,
    memo: Option<String>,
}

pub fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    Ok(RawEntry {
        seq: row.get::<_, i64>(0)? as u64,
        text: [
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
        ],
        postings: row.get(9)?,
        allocations: row.get(10)?,
        memo: row.get(11)?,
    })
}

pub const ENTRY_COLUMNS: &str =
    "seq, account_id, at, kind, source_id, amount, fee, upstream, balance_after, postings, allocations, memo";

pub fn decode_entry(raw: RawEntry) -> Result<StoredEntry, LedgerError> {
    let RawEntry {
        seq,
        text: [account, at, kind, source_id, amount, fee, upstream, balance_after],
        postings,
        allocations,
        memo,
    } = raw;
    let account_id = AccountId(account);
    let kind = EntryKind::parse(&kind)
        .ok_or_else(|| LedgerError::Corrupt(format!("entry kind {kind}")))?;
    let (amount, fee, upstream) = (parse_usd(&amount)?, parse_usd(&fee)?, parse_usd(&upstream)?);
    let postings: Vec<Posting> = match postings {
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| LedgerError::Corrupt(e.to_string()))?
        }
        None => standard_postings(kind, &account_id, amount, fee, upstream),
    };
    let allocations: Vec<Allocation> =
        serde_json::from_str(&allocations).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
    Ok(StoredEntry {
        seq,
        entry: Entry {
            account_id,
            at: parse_time(&at)?,
            kind,
            source_id,
            amount,
            fee,
            upstream,
            balance_after: parse_usd(&balance_after)?,
            postings,
            allocations,
            memo,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A store written by the first schema keeps its applied ids and entries
    /// (seq included) through the later migrations, and new entries continue
    /// after the old ones.
    #[test]
    fn migrating_the_first_schema_keeps_every_row() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE ledger_migrations (version INTEGER PRIMARY KEY);
             INSERT INTO ledger_migrations (version) VALUES (1);",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "INSERT INTO ledger_applied (dedup_key) VALUES ('usage:a'), ('purchase:acct:k');
             INSERT INTO ledger_entries (seq, account_id, at, kind, source_id, amount, fee, upstream,
                 balance_after, postings, allocations, memo)
             VALUES (7, 'acct', '2026-01-01T00:00:00.000000000Z', 'purchase', 'pur_1', '5.00', '0', '0',
                 '5.00', '[]', '[]', NULL);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM ledger_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);

        let tx = conn.transaction().unwrap();
        assert!(
            !claim(&tx, "usage:a").unwrap(),
            "an applied id stays applied"
        );
        assert!(claim(&tx, "usage:b").unwrap());
        insert_entries(
            &tx,
            &[Entry {
                account_id: AccountId::from("acct"),
                at: parse_time("2026-01-02T00:00:00Z").unwrap(),
                kind: EntryKind::ManualDebit,
                source_id: "adj_1".into(),
                amount: parse_usd("-1").unwrap(),
                fee: Usd::ZERO,
                upstream: Usd::ZERO,
                balance_after: parse_usd("4.00").unwrap(),
                postings: vec![],
                allocations: vec![],
                memo: Some("test".into()),
            }],
            &[],
        )
        .unwrap();
        tx.commit().unwrap();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY seq"
            ))
            .unwrap();
        let entries: Vec<StoredEntry> = stmt
            .query_map([], entry_from_row)
            .unwrap()
            .map(|row| decode_entry(row.unwrap()).unwrap())
            .collect();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![7, 8],
            "old entries keep their seq; new ones follow"
        );
        assert_eq!(entries[0].entry.kind, EntryKind::Purchase);
        assert_eq!(entries[0].entry.amount, parse_usd("5.00").unwrap());
        assert_eq!(entries[1].entry.memo.as_deref(), Some("test"));
        let without_rowid: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'ledger_applied' AND sql LIKE '%WITHOUT ROWID%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(without_rowid, 1);
    }
}
