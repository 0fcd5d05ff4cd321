//! Property tests: random purchases, usage, adjustments, duplicates and
//! ticks. For every seed: purchases − debits − expired = balance to the last
//! digit; a replay in different batch sizes equals the live run; duplicates
//! change nothing; the independent audit agrees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_core::billing::AdjustmentKind;
use tollgate_core::eventlog::topics;
use tollgate_core::{Batch, CredentialSource, EventBody, EventLog, LogRecord, StoredRecord, Usd};
use tollgate_ledger::{audit, LedgerService};
use tollgate_store::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const ACCOUNTS: [&str; 3] = ["acct_p1", "acct_p2", "acct_p3"];

/// A random history, as log payloads in order; some payloads repeat.
fn history(rng: &mut StdRng, length: usize) -> (Vec<Vec<u8>>, usize) {
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut duplicates = 0;
    let mut t = at("2026-01-01T00:00:00Z");
    for n in 0..length {
        t += chrono::Duration::minutes(rng.gen_range(1..3 * 24 * 60));
        let when = t.to_rfc3339();
        let account = ACCOUNTS[rng.gen_range(0..ACCOUNTS.len())];
        let body = match rng.gen_range(0..100) {
            0..=14 => {
                let cents = rng.gen_range(500..5_000);
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                // Retried purchases reuse a key now and then.
                let key = format!("p{}", rng.gen_range(0..length / 2));
                EventBody::Purchase(purchase(account, &amount, &key, &when))
            }
            15..=19 => {
                let kind = match rng.gen_range(0..3) {
                    0 => AdjustmentKind::Refund,
                    1 => AdjustmentKind::GoodwillCredit,
                    _ => AdjustmentKind::ManualDebit,
                };
                let amount = format!("{}.{:02}", rng.gen_range(0..8), rng.gen_range(1..100));
                EventBody::Adjustment(adjustment(account, kind, &amount, &format!("a{n}"), &when))
            }
            20..=27 => EventBody::Tick(tick(&when)),
            _ => {
                let source = if rng.gen_bool(0.3) {
                    CredentialSource::Byok
                } else {
                    CredentialSource::Operator
                };
                let input = rng.gen_range(0..400_000);
                let output = rng.gen_range(0..60_000);
                EventBody::Usage(Box::new(usage(account, input, output, source, &when)))
            }
        };
        payloads.push(payload(body));
        if n > 0 && rng.gen_bool(0.08) {
            let again = payloads[rng.gen_range(0..payloads.len())].clone();
            payloads.push(again);
            duplicates += 1;
        }
    }
    (payloads, duplicates)
}

struct Run {
    _dir: tempfile::TempDir,
    log: Arc<SqliteEventLog>,
    ledger: Arc<LedgerService>,
    db: Database,
}

async fn run(payloads: &[Vec<u8>], rng: &mut StdRng, max_batch: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("l.db"), Durability::Normal).unwrap();
    let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    for p in payloads {
        log.append(LogRecord {
            topic: topics::ACCOUNT_EVENTS.into(),
            key: "k".into(),
            payload: p.clone(),
        })
        .await
        .unwrap();
    }
    log.flush().await.unwrap();
    let ledger = LedgerService::open(&db, log.clone() as Arc<dyn EventLog>).unwrap();
    let records: Vec<StoredRecord> = log
        .read(topics::ACCOUNT_EVENTS, 0, 0, 1_000_000)
        .await
        .unwrap();
    let mut i = 0;
    while i < records.len() {
        let n = rng.gen_range(1..=max_batch).min(records.len() - i);
        let batch = Batch {
            partition: 0,
            records: records[i..i + n].to_vec(),
        };
        ledger.apply_batch(topics::ACCOUNT_EVENTS, &batch).unwrap();
        i += n;
    }
    Run {
        _dir: dir,
        log,
        ledger,
        db,
    }
}

/// (kind, source, amount, balance_after) per account, in order; and balances.
type Book = BTreeMap<String, (Vec<(String, String, String, String)>, String)>;

fn book(r: &Run) -> Book {
    let conn = r.db.connect().unwrap();
    let mut out: Book = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT account_id, kind, source_id, amount, balance_after FROM ledger_entries ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (account, kind, source, amount, after) = row.unwrap();
        out.entry(account)
            .or_default()
            .0
            .push((kind, source, amount, after));
    }
    for (id, state) in r.ledger.snapshot().accounts {
        out.entry(id.to_string()).or_default().1 = state.balance().to_string();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_balance_replay_and_ignore_duplicates() {
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (payloads, duplicates) = history(&mut rng, 400);
        assert!(duplicates > 0);

        let live = run(&payloads, &mut rng, 7).await;
        let live_book = book(&live);

        // purchases − debits − expired (and adjustments) = balance, exactly.
        for (account, (entries, balance)) in &live_book {
            let sum: Usd = entries.iter().map(|(_, _, a, _)| usd(a)).sum();
            assert_eq!(
                sum,
                usd(balance),
                "seed {seed}: {account} entries sum to its balance"
            );
            if let Some((_, _, _, after)) = entries.last() {
                assert_eq!(
                    usd(after),
                    usd(balance),
                    "seed {seed}: last balance_after is the balance"
                );
            }
        }

        // Replay in other batch sizes gives the same ledger.
        let replay = run(&payloads, &mut rng, 500).await;
        assert_eq!(book(&replay), live_book, "seed {seed}: replay equals live");

        // Without the duplicates, nothing changes.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<Vec<u8>> = payloads
            .iter()
            .filter(|p| seen.insert((*p).clone()))
            .cloned()
            .collect();
        assert_eq!(unique.len(), payloads.len() - duplicates);
        let deduped = run(&unique, &mut rng, 50).await;
        assert_eq!(
            book(&deduped),
            live_book,
            "seed {seed}: duplicates change nothing"
        );

        // The independent audit agrees.
        let conn = live.db.connect().unwrap();
        let problems = audit::audit(live.log.as_ref(), &conn).await.unwrap();
        assert!(
            problems.is_empty(),
            "seed {seed}: audit found {problems:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_detects_a_tampered_ledger() {
    let mut rng = StdRng::seed_from_u64(99);
    let (payloads, _) = history(&mut rng, 100);
    let live = run(&payloads, &mut rng, 10).await;
    let conn = live.db.connect().unwrap();
    conn.execute(
        "UPDATE ledger_entries SET amount = '-0.01' WHERE seq = (SELECT MAX(seq) FROM ledger_entries WHERE kind = 'usage')",
        [],
    )
    .unwrap();
    let problems = audit::audit(live.log.as_ref(), &conn).await.unwrap();
    assert!(!problems.is_empty(), "a changed entry must be reported");
}
