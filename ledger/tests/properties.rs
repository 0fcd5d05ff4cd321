//! Property tests: random purchases, usage, adjustments, duplicates and
//! ticks. For every seed: purchases − debits − expired = balance to the last
//! digit; a replay in different batch sizes equals the live run; duplicates
//! change nothing; the independent audit agrees.
//!
//! Each property runs on the embedded log and on the Kafka backend (a
//! librdkafka mock cluster with four account-events partitions, so the
//! ledger's per-partition clocks and positions are exercised too). Records
//! are keyed by account, as the gateway keys them; ticks by a random
//! account, so they reach the partitions that hold accounts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::billing::AdjustmentKind;
use tollgate_core::pricing::AppliedPlan;
use tollgate_core::{AccessKeyId, CredentialSource, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{Batch, EventLog, LogRecord, StoredRecord};
use tollgate_kafka::{KafkaConfig, KafkaEventLog};
use tollgate_ledger::{audit, LedgerService};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const ACCOUNTS: [&str; 3] = ["acct_p1", "acct_p2", "acct_p3"];

/// A log record's key and payload.
type Keyed = (String, Vec<u8>);

/// A random history, as keyed log payloads in order; some records repeat.
fn history(rng: &mut StdRng, length: usize) -> (Vec<Keyed>, usize) {
    let mut payloads: Vec<Keyed> = Vec::new();
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
                let mut event = usage(account, input, output, source, &when);
                // Two keys per account; some requests start before midnight
                // and finish after it.
                event.access_key_id = AccessKeyId(format!("ak_{account}_{}", rng.gen_range(0..2)));
                event.started_at =
                    event.finished_at - chrono::Duration::seconds(rng.gen_range(0..7_200));
                // Some on a price plan (terms as the event recorded them).
                event.plan = match rng.gen_range(0..4) {
                    0 => Some(AppliedPlan {
                        plan_id: "plan_markup".into(),
                        fee_per_mtok: usd("0.08"),
                        upstream_multiplier: "1.25".parse().unwrap(),
                    }),
                    1 => Some(AppliedPlan {
                        plan_id: "plan_discount".into(),
                        fee_per_mtok: usd("0.000001"),
                        upstream_multiplier: "0.873".parse().unwrap(),
                    }),
                    _ => None,
                };
                EventBody::Usage(Box::new(event))
            }
        };
        payloads.push((account.to_owned(), payload(body)));
        if n > 0 && rng.gen_bool(0.08) {
            let again = payloads[rng.gen_range(0..payloads.len())].clone();
            payloads.push(again);
            duplicates += 1;
        }
    }
    (payloads, duplicates)
}

/// Which event log a run appends to and the ledger reads from.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Kafka,
}

const KAFKA_PARTITIONS: i32 = 4;

type Mock = MockCluster<'static, DefaultProducerContext>;

/// The event log of one run, and what must live as long as it.
enum Log {
    Embedded(Arc<SqliteEventLog>),
    /// The mock cluster is declared last so it outlives the client.
    Kafka {
        log: KafkaEventLog,
        _cluster: Mock,
    },
}

impl Log {
    async fn open(backend: Backend, dir: &std::path::Path, db: &Database) -> Log {
        match backend {
            Backend::Embedded => Log::Embedded(Arc::new(
                SqliteEventLog::open(db, SqliteEventLogOptions::default()).unwrap(),
            )),
            Backend::Kafka => {
                // The mock cluster does not answer CreateTopics.
                let cluster = MockCluster::new(1).unwrap();
                tollgate_kafka::create_mock_topics(&cluster, KAFKA_PARTITIONS).unwrap();
                let config = KafkaConfig {
                    brokers: vec![cluster.bootstrap_servers()],
                    spool_path: dir.join("spool.db"),
                    replication_factor: 1,
                    startup_timeout_ms: 30_000,
                    delivery_timeout_ms: 60_000,
                    ..KafkaConfig::default()
                };
                let log = KafkaEventLog::connect(config).await.unwrap();
                Log::Kafka {
                    log,
                    _cluster: cluster,
                }
            }
        }
    }

    fn shared(&self) -> Arc<dyn EventLog> {
        match self {
            Log::Embedded(log) => log.clone(),
            Log::Kafka { log, .. } => Arc::new(log.clone()),
        }
    }

    async fn close(&self) {
        if let Log::Kafka { log, .. } = self {
            log.close(Duration::from_secs(10)).await.unwrap();
        }
    }
}

struct Run {
    ledger: Arc<LedgerService>,
    db: Database,
    log: Log,
    _dir: tempfile::TempDir,
}

/// Append `payloads` to a fresh log of `backend`, then apply every
/// partition in batches of 1..=`max_batch` records, partitions interleaved
/// at random.
async fn run(backend: Backend, payloads: &[Keyed], rng: &mut StdRng, max_batch: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("l.db"), Durability::Normal).unwrap();
    let log = Log::open(backend, dir.path(), &db).await;
    let shared = log.shared();
    for (key, p) in payloads {
        shared
            .append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.into(),
                key: key.clone(),
                payload: p.clone(),
            })
            .await
            .unwrap();
    }
    shared.flush().await.unwrap();
    let ledger = LedgerService::open(
        &db,
        shared.clone(),
        &prometheus::Registry::new(),
        Arc::new(tollgate_ledger::NoBudgets),
    )
    .unwrap();
    let records: Vec<StoredRecord> = audit::read_log(shared.as_ref()).await.unwrap();
    // At least every payload (Kafka may add redelivered copies).
    assert!(records.len() >= payloads.len(), "{backend:?}: records lost");
    let mut pending: BTreeMap<u32, std::collections::VecDeque<StoredRecord>> = BTreeMap::new();
    for record in records {
        pending
            .entry(record.partition)
            .or_default()
            .push_back(record);
    }
    if let Backend::Kafka = backend {
        assert!(
            pending.len() > 1,
            "the accounts' records should spread over several partitions"
        );
    }
    while !pending.is_empty() {
        let partitions: Vec<u32> = pending.keys().copied().collect();
        // One partition (embedded) draws nothing, as before partitions.
        let partition = match partitions.as_slice() {
            [only] => *only,
            several => several[rng.gen_range(0..several.len())],
        };
        let queue = pending.get_mut(&partition).unwrap();
        let n = rng.gen_range(1..=max_batch).min(queue.len());
        let batch = Batch {
            partition,
            records: queue.drain(..n).collect(),
        };
        if queue.is_empty() {
            pending.remove(&partition);
        }
        ledger.apply_batch(topics::ACCOUNT_EVENTS, &batch).unwrap();
    }
    Run {
        ledger,
        db,
        log,
        _dir: dir,
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

/// The stored spend rows, checked equal to the in-memory ones.
fn spend(r: &Run) -> BTreeMap<(String, i64), Usd> {
    let conn = r.db.connect().unwrap();
    let stored = tollgate_ledger::sqlite::spend_rows(&conn).unwrap();
    assert_eq!(
        stored,
        r.ledger.snapshot().spend.rows(),
        "stored spend is the state's"
    );
    stored
}

/// The properties over `seeds` random histories of `length` records.
async fn random_histories_balance_replay_and_ignore_duplicates(
    backend: Backend,
    seeds: u64,
    length: usize,
) {
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let (payloads, duplicates) = history(&mut rng, length);
        assert!(duplicates > 0);

        let live = run(backend, &payloads, &mut rng, 7).await;
        let live_book = book(&live);
        let live_spend = spend(&live);
        // Each account's spend is its usage debits, and so is the sum of
        // its keys' spend.
        for (account, (entries, _)) in &live_book {
            let debits: Usd = -entries
                .iter()
                .filter(|(kind, ..)| kind == "usage")
                .map(|(_, _, a, _)| usd(a))
                .sum::<Usd>();
            let of = |prefix: String| -> Usd {
                live_spend
                    .iter()
                    .filter(|((scope, _), _)| scope.starts_with(&prefix))
                    .map(|(_, v)| *v)
                    .sum()
            };
            assert_eq!(
                of(format!("account:{account}")),
                debits,
                "seed {seed}: {account}"
            );
            assert_eq!(
                of(format!("key:ak_{account}_")),
                debits,
                "seed {seed}: {account} keys"
            );
        }
        assert!(
            live_book.values().any(|(entries, _)| !entries.is_empty()),
            "{backend:?} seed {seed}: the ledger booked nothing"
        );

        // purchases − debits − expired (and adjustments) = balance, exactly.
        for (account, (entries, balance)) in &live_book {
            let sum: Usd = entries.iter().map(|(_, _, a, _)| usd(a)).sum();
            assert_eq!(
                sum,
                usd(balance),
                "{backend:?} seed {seed}: {account} entries sum to its balance"
            );
            if let Some((_, _, _, after)) = entries.last() {
                assert_eq!(
                    usd(after),
                    usd(balance),
                    "{backend:?} seed {seed}: last balance_after is the balance"
                );
            }
        }

        // Replay in other batch sizes gives the same ledger.
        let replay = run(backend, &payloads, &mut rng, 500).await;
        assert_eq!(
            book(&replay),
            live_book,
            "{backend:?} seed {seed}: replay equals live"
        );
        assert_eq!(
            spend(&replay),
            live_spend,
            "{backend:?} seed {seed}: replayed spend equals live"
        );
        replay.log.close().await;

        // Without the duplicates, nothing changes.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<Keyed> = payloads
            .iter()
            .filter(|p| seen.insert((*p).clone()))
            .cloned()
            .collect();
        assert_eq!(unique.len(), payloads.len() - duplicates);
        let deduped = run(backend, &unique, &mut rng, 50).await;
        assert_eq!(
            book(&deduped),
            live_book,
            "{backend:?} seed {seed}: duplicates change nothing"
        );
        assert_eq!(
            spend(&deduped),
            live_spend,
            "{backend:?} seed {seed}: duplicates add no spend"
        );
        deduped.log.close().await;

        // The independent audit agrees.
        let conn = live.db.connect().unwrap();
        let problems = audit::audit(live.log.shared().as_ref(), &conn)
            .await
            .unwrap();
        assert!(
            problems.is_empty(),
            "{backend:?} seed {seed}: audit found {problems:#?}"
        );
        live.log.close().await;
    }
}

async fn audit_detects_a_tampered_ledger(backend: Backend) {
    let mut rng = StdRng::seed_from_u64(99);
    let (payloads, _) = history(&mut rng, 100);
    let live = run(backend, &payloads, &mut rng, 10).await;
    let conn = live.db.connect().unwrap();
    let log = live.log.shared();
    assert!(
        audit::audit(log.as_ref(), &conn).await.unwrap().is_empty(),
        "{backend:?}: the untouched ledger passes"
    );
    conn.execute(
        "UPDATE ledger_entries SET amount = '-0.01' WHERE seq = (SELECT MAX(seq) FROM ledger_entries WHERE kind = 'usage')",
        [],
    )
    .unwrap();
    let problems = audit::audit(log.as_ref(), &conn).await.unwrap();
    assert!(
        !problems.is_empty(),
        "{backend:?}: a changed entry must be reported"
    );
    // A spend row off by a hundredth of a cent is reported on its own.
    let fresh = run(backend, &payloads, &mut rng, 10).await;
    let conn = fresh.db.connect().unwrap();
    let (scope, day, spent): (String, i64, String) = conn
        .query_row(
            "SELECT scope, day, spent FROM ledger_spend ORDER BY scope, day LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let tampered = usd(&spent) + usd("0.0001");
    conn.execute(
        "UPDATE ledger_spend SET spent = ?1 WHERE scope = ?2 AND day = ?3",
        rusqlite::params![tampered.to_string(), scope, day],
    )
    .unwrap();
    let problems = audit::audit(fresh.log.shared().as_ref(), &conn)
        .await
        .unwrap();
    assert_eq!(problems.len(), 1, "{backend:?}: {problems:#?}");
    assert!(
        problems[0].starts_with(&format!("spend of {scope} on ")),
        "{problems:?}"
    );
    fresh.log.close().await;
    live.log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_random_histories_balance_replay_and_ignore_duplicates() {
    random_histories_balance_replay_and_ignore_duplicates(Backend::Embedded, 12, 400).await;
}

/// Fewer seeds than embedded: each run starts a mock cluster and a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_random_histories_balance_replay_and_ignore_duplicates() {
    random_histories_balance_replay_and_ignore_duplicates(Backend::Kafka, 4, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_audit_detects_a_tampered_ledger() {
    audit_detects_a_tampered_ledger(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_audit_detects_a_tampered_ledger() {
    audit_detects_a_tampered_ledger(Backend::Kafka).await;
}

/// A record from a newer build (envelope version above this one's) is
/// neither applied nor skipped: the batch holding it fails as a whole, the
/// ledger's position stays before it, and the audit refuses to re-derive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_a_newer_build_stops_the_ledger_and_the_audit() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut payloads, _) = history(&mut rng, 20);
    let newer = br#"{"v":3,"type":"usage","data":{"tokens":"a shape this build does not know"}}"#;
    payloads.insert(10, ("acct_a".to_owned(), newer.to_vec()));

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("l.db"), Durability::Normal).unwrap();
    let log = Log::open(Backend::Embedded, dir.path(), &db).await;
    let shared = log.shared();
    for (key, payload) in &payloads {
        let record = LogRecord {
            topic: topics::ACCOUNT_EVENTS.into(),
            key: key.clone(),
            payload: payload.clone(),
        };
        shared.append(record).await.unwrap();
    }
    shared.flush().await.unwrap();
    let ledger = LedgerService::open(
        &db,
        shared.clone(),
        &prometheus::Registry::new(),
        Arc::new(tollgate_ledger::NoBudgets),
    )
    .unwrap();
    let records = audit::read_log(shared.as_ref()).await.unwrap();
    let newer_offset = records[10].offset;
    let batch = |records: &[StoredRecord]| Batch {
        partition: 0,
        records: records.to_vec(),
    };

    let refused = ledger
        .apply_batch(topics::ACCOUNT_EVENTS, &batch(&records))
        .unwrap_err();
    assert!(
        matches!(refused, tollgate_ledger::LedgerError::UnsupportedVersion { offset, .. } if offset == newer_offset),
        "{refused}"
    );
    assert!(refused.to_string().contains("upgrade"), "{refused}");
    let conn = db.connect().unwrap();
    let position = || tollgate_ledger::sqlite::position(&conn, topics::ACCOUNT_EVENTS, 0).unwrap();
    assert_eq!(position(), None, "nothing of the failed batch was applied");
    assert!(ledger.snapshot().accounts.is_empty());

    // What precedes it applies; the record itself never does.
    ledger
        .apply_batch(topics::ACCOUNT_EVENTS, &batch(&records[..10]))
        .unwrap();
    assert_eq!(position(), Some(newer_offset));
    assert!(ledger
        .apply_batch(topics::ACCOUNT_EVENTS, &batch(&records[10..]))
        .is_err());
    assert_eq!(position(), Some(newer_offset));

    let audited = audit::derive(&records);
    assert!(
        matches!(
            audited,
            Err(tollgate_ledger::LedgerError::UnsupportedVersion { .. })
        ),
        "the audit refuses too"
    );
}
