//! How fast the ledger applies events, embedded and through Kafka.
//!
//! `cargo run --release -p tollgate-ledger --example ledger_bench [-- --events N --accounts N --kafka-events N]`
//!
//! Writes one purchase per account and then N usage events (default 500,000
//! over 1,000 accounts; operator and own credentials, random token counts)
//! into a SQLite event log, then measures events applied per second:
//! 1. `LedgerService::apply_batch` on batches of the service's batch size,
//!    reading each batch from the log outside the timing and then including
//!    it; also per CPU-second of the applying thread (user + system), the
//!    figure least disturbed by other load on a shared machine;
//! 2. the service's `run` loop (subscription, apply, balance publication) on
//!    a copy of the same log, until its stored position reaches the end;
//! 3. the `run` loop on the Kafka backend: the purchases and the first
//!    `--kafka-events` usage events (default 100,000; 0 skips it), keyed by
//!    account, in a librdkafka mock cluster with four account-events
//!    partitions, timed from the ledger's first applied batch (after its
//!    consumer group formed) until every partition is applied.
//!
//! Prints figures; asserts nothing (the target is ≥ 100,000 events/s embedded).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Duration as Span, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::Purchase;
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, CredentialSource, Envelope, EventBody, EventId, Prices,
    TokenCounts, UsageEvent, Usd,
};
use tollgate_eventlog::topics;
use tollgate_eventlog::{Batch, EventLog, LogRecord};
use tollgate_kafka::{KafkaConfig, KafkaEventLog};
use tollgate_ledger::LedgerService;
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

/// The service's batch size.
const BATCH: usize = tollgate_ledger::service::BATCH_MAX;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

fn usd(text: &str) -> Usd {
    Usd::from_str(text).unwrap()
}

/// (key = account id, payload) of every record, in order.
fn payloads(accounts: usize, events: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(7);
    let start = Utc::now();
    let prices = Prices {
        input: usd("2.50"),
        cached_input: usd("1.25"),
        cache_write_5m: usd("0"),
        cache_write_1h: usd("0"),
        output: usd("10.00"),
    };
    let mut out = Vec::with_capacity(accounts + events);
    for a in 0..accounts {
        let account = format!("acct_bench_{a:05}");
        let purchase = Purchase {
            purchase_id: format!("pur_{account}"),
            account_id: AccountId(account.clone()),
            amount: usd("500.00"),
            idempotency_key: "initial".into(),
            purchased_at: start,
        };
        let payload = serde_json::to_vec(&Envelope::new(EventBody::Purchase(purchase))).unwrap();
        out.push((account, payload));
    }
    for n in 0..events {
        let at = start + Span::milliseconds(n as i64);
        let account = format!("acct_bench_{:05}", rng.gen_range(0..accounts));
        let key = account.clone();
        let source = if rng.gen_bool(0.8) {
            CredentialSource::Operator
        } else {
            CredentialSource::Byok
        };
        let event = UsageEvent {
            event_id: EventId::generate(),
            started_at: at,
            finished_at: at,
            account_id: AccountId(account),
            access_key_id: AccessKeyId::from("ak_bench"),
            client_api: ApiSurface::Openai,
            endpoint: None,
            provider: Some("openai".into()),
            model_requested: "gpt-4o".into(),
            model_served: Some("gpt-4o".into()),
            credential_source: Some(source),
            provider_key_id: None,
            streamed: rng.gen_bool(0.5),
            tokens: TokenCounts {
                input: rng.gen_range(1..4_000),
                output: rng.gen_range(1..1_000),
                ..TokenCounts::default()
            },
            tokens_estimated: false,
            prices,
            tool_calls: Vec::new(),
            end_user: None,
            tags: Default::default(),
            upstream_request_id: Some(format!("req_{n}")),
            latency_us: rng.gen_range(100_000..2_000_000),
            ttft_us: None,
            upstream_latency_us: None,
            status: 200,
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            plan: None,
            instance_id: Some("gw_bench".into()),
            instance_seq: Some(n as u64),
        };
        out.push((key, serde_json::to_vec(&Envelope::usage(event)).unwrap()));
    }
    out
}

/// CPU time (user, system) of the calling thread, where Linux tells it:
/// on a shared machine it shows what the work costs, waits aside.
fn thread_cpu() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Option<Duration> {
        Some(Duration::from_millis(
            fields.get(i)?.parse::<u64>().ok()? * 10,
        )) // USER_HZ = 100
    };
    Some((ticks(11)?, ticks(12)?))
}

/// Append `(key, payload)` records to the account-events topic, durably.
async fn append_all(log: &dyn EventLog, records: Vec<(String, Vec<u8>)>) {
    for (key, payload) in records {
        log.append(LogRecord {
            topic: topics::ACCOUNT_EVENTS.to_owned(),
            key,
            payload,
        })
        .await
        .unwrap();
    }
    log.flush().await.unwrap();
}

fn rate(events: usize, elapsed: Duration) -> String {
    format!(
        "{:>9.0} events/s ({events} events in {:.2} s)",
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let accounts = arg("--accounts", 1_000);
    let events = arg("--events", 500_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let db = Database::open(&path, Durability::Normal).unwrap();
    let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());

    let started = Instant::now();
    let all = payloads(accounts, events);
    let total = all.len();
    let bytes: usize = all.iter().map(|(_, p)| p.len()).sum();
    append_all(log.as_ref(), all).await;
    println!(
        "wrote {total} records ({} purchases + {events} usage events, {:.0} bytes each on average) in {:.1} s",
        accounts,
        bytes as f64 / total as f64,
        started.elapsed().as_secs_f64()
    );
    // A copy of the log for the run loop, before any ledger table exists.
    let copy = dir.path().join("copy.db");
    db.connect()
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();

    // 1. apply_batch, batch by batch.
    let ledger = LedgerService::open(
        &db,
        log.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
        Arc::new(tollgate_ledger::NoBudgets),
    )
    .unwrap();
    let mut from = 0;
    let mut applying = Duration::ZERO;
    let mut applied = 0;
    let overall = Instant::now();
    let cpu_before = thread_cpu();
    loop {
        let records = log
            .read(topics::ACCOUNT_EVENTS, 0, from, BATCH)
            .await
            .unwrap();
        let Some(last) = records.last() else { break };
        from = last.offset + 1;
        applied += records.len();
        let batch = Batch {
            partition: 0,
            records,
        };
        let t = Instant::now();
        ledger.apply_batch(topics::ACCOUNT_EVENTS, &batch).unwrap();
        applying += t.elapsed();
    }
    let cpu = thread_cpu()
        .zip(cpu_before)
        .map(|(after, before)| (after.0 - before.0, after.1 - before.1));
    let with_reads = overall.elapsed();
    assert_eq!(applied, total);
    let entries = ledger.metrics.entries.with_label_values(&["usage"]).get();
    println!("apply_batch, batches of {BATCH}:");
    println!("  applying only:      {}", rate(total, applying));
    println!("  with log reads:     {}", rate(total, with_reads));
    if let Some((user, system)) = cpu {
        let cpu = user + system;
        println!(
            "  per CPU-second:     {:>9.0} events/s (CPU time of the applying thread, log reads excluded: {:.2} s = {:.2} s user + {:.2} s system)",
            total as f64 / cpu.as_secs_f64(),
            cpu.as_secs_f64(),
            user.as_secs_f64(),
            system.as_secs_f64()
        );
    }
    println!("  ({entries} usage entries booked)");

    // 2. The service's run loop on the copy.
    let copy_db = Database::open(&copy, Durability::Normal).unwrap();
    let copy_log =
        Arc::new(SqliteEventLog::open(&copy_db, SqliteEventLogOptions::default()).unwrap());
    let service = LedgerService::open(
        &copy_db,
        copy_log.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
        Arc::new(tollgate_ledger::NoBudgets),
    )
    .unwrap();
    let conn = copy_db.connect().unwrap();
    let end: i64 = conn
        .query_row(
            "SELECT MAX(log_offset) + 1 FROM log_records WHERE topic = ?1",
            [topics::ACCOUNT_EVENTS],
            |row| row.get(0),
        )
        .unwrap();
    let end = end as u64;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(service.clone().run(stopped));
    loop {
        let at = tollgate_ledger::sqlite::position(&conn, topics::ACCOUNT_EVENTS, 0)
            .unwrap()
            .unwrap_or(0);
        if at >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    println!("run loop (subscription + apply + balance updates):");
    println!("  {}", rate(total, elapsed));

    let kafka_events = arg("--kafka-events", 100_000);
    if kafka_events > 0 {
        through_kafka(accounts, kafka_events.min(events), dir.path()).await;
    }
}

const KAFKA_PARTITIONS: i32 = 4;

/// The run loop on the Kafka backend (mock cluster).
async fn through_kafka(accounts: usize, events: usize, dir: &std::path::Path) {
    let cluster = MockCluster::new(1).unwrap();
    tollgate_kafka::create_mock_topics(&cluster, KAFKA_PARTITIONS).unwrap();
    let config = KafkaConfig {
        brokers: vec![cluster.bootstrap_servers()],
        spool_path: dir.join("kafka-spool.db"),
        replication_factor: 1,
        startup_timeout_ms: 30_000,
        delivery_timeout_ms: 120_000,
        // The mock cluster finishes a group join session.timeout.ms - 1 s
        // after the member joined.
        consumer: std::collections::BTreeMap::from([
            ("session.timeout.ms".to_owned(), "3000".to_owned()),
            ("heartbeat.interval.ms".to_owned(), "500".to_owned()),
        ]),
        ..KafkaConfig::default()
    };
    let log = KafkaEventLog::connect(config).await.unwrap();
    let started = Instant::now();
    let all = payloads(accounts, events);
    let total = all.len();
    append_all(&log, all).await;
    let mut ends = Vec::new();
    for partition in 0..KAFKA_PARTITIONS as u32 {
        let mut from = 0;
        loop {
            let records = log
                .read(topics::ACCOUNT_EVENTS, partition, from, 50_000)
                .await
                .unwrap();
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
        }
        ends.push(from);
    }
    println!(
        "through Kafka (mock cluster, {KAFKA_PARTITIONS} partitions): wrote {total} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let db = Database::open(dir.join("kafka-ledger.db"), Durability::Normal).unwrap();
    let shared: Arc<dyn EventLog> = Arc::new(log.clone());
    let service = LedgerService::open(
        &db,
        shared,
        &prometheus::Registry::new(),
        Arc::new(tollgate_ledger::NoBudgets),
    )
    .unwrap();
    let conn = db.connect().unwrap();
    let applied = || -> Vec<u64> {
        (0..KAFKA_PARTITIONS as u32)
            .map(|p| {
                tollgate_ledger::sqlite::position(&conn, topics::ACCOUNT_EVENTS, p)
                    .unwrap()
                    .unwrap_or(0)
            })
            .collect()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(service.clone().run(stopped));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let at = applied();
        let done: u64 = at.iter().sum();
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if at == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger did not catch up: {at:?} of {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished = Instant::now();
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    let (first_at, first_count) = first.unwrap();
    let end: u64 = ends.iter().sum();
    println!("  run loop, after its first applied batch:");
    println!(
        "  {}",
        rate((end - first_count) as usize, finished - first_at)
    );
    log.close(Duration::from_secs(10)).await.unwrap();
}
