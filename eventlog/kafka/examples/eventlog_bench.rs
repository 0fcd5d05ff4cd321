//! Event-log throughput: appended → delivered, consumed, end to end, through
//! librdkafka's mock cluster (Kafka backend) and the embedded SQLite backend;
//! plus the spool's group-commit window (what a SIGKILL could lose).
//! Prints figures, asserts nothing.
//!
//! `cargo run --release -p tollgate-kafka --example eventlog_bench [events]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rdkafka::mocking::MockCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_eventlog::{EventLog, LogRecord, PositionSource};
use tollgate_kafka::{KafkaConfig, KafkaEventLog};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const TOPIC: &str = "tollgate.account-events";
const PARTITIONS: i32 = 12;
const ACCOUNTS: usize = 1_000;

struct Start;

impl PositionSource for Start {
    fn next_offset(&self, _topic: &str, _partition: u32) -> Option<u64> {
        None
    }
}

/// About the size of a usage event.
fn record(n: usize) -> LogRecord {
    let account = format!("acct_{:06}", n % ACCOUNTS);
    let payload = format!(
        r#"{{"v":1,"type":"usage","data":{{"event_id":"0191a3b2-0000-7000-8000-{n:012}","account_id":"{account}","access_key_id":"ak_0001","client_api":"openai","provider":"openai","model_served":"gpt-4o-mini","model_requested":"gpt-4o-mini","streamed":true,"tokens":{{"input":1200,"cached_input":0,"output":350}},"latency_us":812345,"status":200,"attempts":1}}}}"#
    );
    LogRecord {
        topic: TOPIC.to_owned(),
        key: account,
        payload: payload.into_bytes(),
    }
}

async fn append_all(log: &dyn EventLog, n: usize) {
    for i in 0..n {
        if let Err(back) = log.try_append(record(i)) {
            log.append(back).await.unwrap();
        }
    }
}

async fn consume(log: &dyn EventLog, group: &str, n: usize) -> Duration {
    let mut sub = log.subscribe(TOPIC, group, Arc::new(Start)).await.unwrap();
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        match sub
            .next_batch(2_000, Duration::from_secs(10))
            .await
            .unwrap()
        {
            Some(batch) => got += batch.records.len(),
            None => panic!("consumer stalled at {got}/{n}"),
        }
    }
    t.elapsed()
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>9.0} events/s ({n} in {:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Appends at `per_sec` for two seconds while timing how long everything
/// queued takes to be committed to the spool: the records a SIGKILL at that
/// instant would lose are exactly those.
async fn commit_window(log: &KafkaEventLog, per_sec: usize) -> (Duration, Duration, Duration) {
    let mut windows = Vec::new();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut next_probe = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let due = (start.elapsed().as_secs_f64() * per_sec as f64) as usize;
        while sent < due {
            log.append(record(sent)).await.unwrap();
            sent += 1;
        }
        if Instant::now() >= next_probe {
            let t = Instant::now();
            log.sync_spool().await.unwrap();
            windows.push(t.elapsed());
            next_probe = Instant::now() + Duration::from_millis(20);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    windows.sort();
    (
        percentile(&windows, 0.5),
        percentile(&windows, 0.99),
        *windows.last().unwrap(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();

    println!(
        "event log benchmark: {n} events of ~{} bytes, {ACCOUNTS} keys",
        record(0).payload.len()
    );
    println!();
    println!(
        "Kafka backend (librdkafka mock cluster, {PARTITIONS} partitions, spool on local disk)"
    );
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    mock.create_topic("tollgate.control", 1, 1).unwrap();
    mock.create_topic("tollgate.balances", PARTITIONS, 1)
        .unwrap();
    mock.create_topic("tollgate.alerts", PARTITIONS, 1).unwrap();
    let config = KafkaConfig {
        brokers: vec![mock.bootstrap_servers()],
        spool_path: dir.path().join("kafka-spool.db"),
        delivery_timeout_ms: 600_000,
        ..KafkaConfig::default()
    };
    let kafka = KafkaEventLog::connect(config).await.unwrap();

    let t = Instant::now();
    append_all(&kafka, n).await;
    let queued = t.elapsed();
    kafka.sync_spool().await.unwrap();
    let spooled = t.elapsed();
    kafka.flush().await.unwrap();
    let delivered = t.elapsed();
    println!("  appended (queued)          {}", rate(n, queued));
    println!("  appended → spooled         {}", rate(n, spooled));
    println!("  appended → delivered       {}", rate(n, delivered));
    let consumed = consume(&kafka, "bench-1", n).await;
    println!("  consumed (group member)    {}", rate(n, consumed));
    let t = Instant::now();
    let mut read = 0;
    for p in 0..PARTITIONS as u32 {
        let mut from = 0;
        loop {
            let batch = kafka.read(TOPIC, p, from, 10_000).await.unwrap();
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            read += batch.len();
        }
    }
    println!("  read (partition readers)   {}", rate(read, t.elapsed()));

    // End to end: a member consuming while records are appended.
    let log: Arc<dyn EventLog> = Arc::new(kafka.clone());
    let mut sub = log
        .subscribe(TOPIC, "bench-2", Arc::new(Start))
        .await
        .unwrap();
    // Skip what the first round wrote.
    let mut skipped = 0;
    while skipped < n {
        skipped += sub
            .next_batch(5_000, Duration::from_secs(10))
            .await
            .unwrap()
            .map_or(0, |b| b.records.len());
    }
    let t = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            if let Some(batch) = sub
                .next_batch(2_000, Duration::from_secs(10))
                .await
                .unwrap()
            {
                got += batch.records.len();
            }
        }
    });
    append_all(&kafka, n).await;
    consumer.await.unwrap();
    println!(
        "  end to end (append → consumed, concurrently) {}",
        rate(n, t.elapsed())
    );

    println!("  group-commit window (time for queued appends to reach the spool = what a SIGKILL loses):");
    for per_sec in [1_000, 10_000, 50_000] {
        let (p50, p99, max) = commit_window(&kafka, per_sec).await;
        println!("    at {per_sec:>6} events/s: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    }
    let report = kafka.close(Duration::from_secs(60)).await.unwrap();
    println!("  closed; {} records left in the spool", report.remaining);

    println!();
    println!("Embedded backend (SQLite, one partition)");
    let db = Database::open(dir.path().join("embedded.db"), Durability::Normal).unwrap();
    let embedded = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let t = Instant::now();
    append_all(&embedded, n).await;
    embedded.flush().await.unwrap();
    println!("  appended → committed       {}", rate(n, t.elapsed()));
    let consumed = consume(&embedded, "bench", n).await;
    println!("  consumed                   {}", rate(n, consumed));
}
