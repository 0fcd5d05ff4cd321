//! Entries read back from storage exactly as the engine booked them, for
//! every kind — also their postings, which storage keeps implicit when they
//! are the kind's standard ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::collections::BTreeSet;
use tollgate_core::billing::AdjustmentKind;
use tollgate_core::{AccountId, CredentialSource};
use tollgate_ledger::engine::{chart, has_standard_postings, standard_postings, Ledger, Posting};
use tollgate_ledger::{sqlite, Entry, EntryKind};

fn read_back(conn: &rusqlite::Connection) -> Vec<(Entry, bool)> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {}, postings IS NULL FROM ledger_entries ORDER BY seq",
            sqlite::ENTRY_COLUMNS
        ))
        .unwrap();
    stmt.query_map([], |row| Ok((sqlite::entry_from_row(row)?, row.get(12)?)))
        .unwrap()
        .map(|r| {
            let (raw, implicit) = r.unwrap();
            (sqlite::decode_entry(raw).unwrap().entry, implicit)
        })
        .collect()
}

#[test]
fn every_kind_of_entry_reads_back_as_booked() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    let a = "acct_store";
    ledger.apply_usage(
        0,
        &usage(
            a,
            1_000,
            0,
            CredentialSource::Operator,
            "2026-01-01T00:00:00Z",
        ),
        &mut out,
    );
    ledger.apply_purchase(
        0,
        &purchase(a, "5.00", "p1", "2026-01-02T00:00:00Z"),
        &mut out,
    );
    ledger.apply_usage(
        0,
        &usage(
            a,
            100_000,
            20_000,
            CredentialSource::Operator,
            "2026-01-03T00:00:00Z",
        ),
        &mut out,
    );
    ledger.apply_usage(
        0,
        &usage(
            a,
            100_000,
            20_000,
            CredentialSource::Byok,
            "2026-01-04T00:00:00Z",
        ),
        &mut out,
    );
    for (kind, amount, key) in [
        (AdjustmentKind::GoodwillCredit, "1.50", "g"),
        (AdjustmentKind::ManualDebit, "0.25", "m"),
        (AdjustmentKind::Refund, "0.50", "r"),
        (AdjustmentKind::Refund, "500", "r2"),
    ] {
        ledger.apply_adjustment(
            0,
            &adjustment(a, kind, amount, key, "2026-01-05T00:00:00Z"),
            &mut out,
        );
    }
    ledger.tick(0, at("2027-06-01T00:00:00Z"), &mut out);
    let kinds: BTreeSet<&str> = out.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.len(), EntryKind::ALL.len(), "every kind: {kinds:?}");

    // And one with postings outside the standard: kept as written.
    let mut custom = out[1].clone();
    custom.postings = vec![
        Posting {
            ledger_account: chart::CASH.into(),
            amount: usd("5.00"),
        },
        Posting {
            ledger_account: "customer:\"quoted\"".into(),
            amount: usd("-5.00"),
        },
    ];
    out.push(custom);

    // The in-place check says what comparing with the built postings says,
    // also for postings that differ in one way or another.
    for e in &out {
        let mut variants = vec![e.clone()];
        for i in 0..e.postings.len() {
            let mut changed = e.clone();
            changed.postings[i].amount += usd("0.01");
            variants.push(changed);
            let mut renamed = e.clone();
            renamed.postings[i].ledger_account = "customer:someone_else".into();
            variants.push(renamed);
        }
        let mut extra = e.clone();
        extra.postings.push(Posting {
            ledger_account: chart::UPSTREAM_COST.into(),
            amount: usd("0"),
        });
        variants.push(extra);
        let mut fewer = e.clone();
        fewer.postings.pop();
        variants.push(fewer);
        for v in variants {
            let built = standard_postings(v.kind, &v.account_id, v.amount, v.fee, v.upstream);
            assert_eq!(has_standard_postings(&v), v.postings == built, "{v:?}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let db = tollgate_sqlite::Database::open(
        dir.path().join("s.db"),
        tollgate_sqlite::Durability::Normal,
    )
    .unwrap();
    let mut conn = db.connect().unwrap();
    sqlite::migrate(&mut conn).unwrap();
    let tx = conn.transaction().unwrap();
    sqlite::insert_entries(&tx, &out, &[]).unwrap();
    tx.commit().unwrap();

    let back = read_back(&conn);
    let entries: Vec<Entry> = back.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(entries, out);
    let implicit: Vec<bool> = back.iter().map(|(_, implicit)| *implicit).collect();
    let mut expected = vec![true; out.len()];
    *expected.last_mut().unwrap() = false;
    assert_eq!(implicit, expected, "standard postings are implicit");
    assert!(ledger.accounts.contains_key(&AccountId::from(a)));
}

/// A file a release before the shared migration module wrote (the embedded
/// store's fixture): the ledger keeps its recorded versions, runs nothing
/// again, and loads the balance it had booked.
#[test]
fn a_file_from_the_previous_release_keeps_its_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    let dump = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../eventlog/sqlite/tests/fixtures/previous-release.sql"
    ))
    .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&dump)
        .unwrap();
    let db = tollgate_sqlite::Database::open(&path, tollgate_sqlite::Durability::Normal).unwrap();
    let mut conn = db.connect().unwrap();
    sqlite::migrate(&mut conn).unwrap();
    sqlite::migrate(&mut conn).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM ledger_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3]);
    let entries: i64 = conn
        .query_row("SELECT COUNT(*) FROM ledger_entries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(entries, 5);
    let ledger = sqlite::load(&conn).unwrap();
    let account = AccountId::from("acct_01a251771a417473ab113f3efa01b2b0");
    let balance = ledger.accounts[&account].balance();
    assert_eq!(balance.to_string(), "29.99998695");
    // Version 3 (spend) keeps every entry; the ones booked before it have
    // no key or start and no spend, and the audit leaves them out of spend.
    assert!(ledger.spend.rows().is_empty());
    let usage: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'usage' AND started_at IS NULL AND access_key_id IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(usage > 0);
    assert_eq!(
        tollgate_ledger::audit::booked_before_spend(&conn)
            .unwrap()
            .len() as i64,
        usage
    );
}
