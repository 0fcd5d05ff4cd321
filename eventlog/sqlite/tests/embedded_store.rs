#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;
use tollgate_core::{Envelope, EventBody, UsageEvent};
use tollgate_eventlog::{EventLog, LogRecord};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

fn record(key: &str, n: u32) -> LogRecord {
    LogRecord {
        topic: "t".into(),
        key: key.into(),
        payload: format!("payload-{n}").into_bytes(),
    }
}

#[tokio::test]
async fn appended_records_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    {
        let db = Database::open(&path, Durability::Normal).unwrap();
        let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
        for n in 0..1000 {
            log.append(record(if n % 2 == 0 { "a" } else { "b" }, n))
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
    }
    let db = Database::open(&path, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let all = log.read("t", 0, 0, 10_000).await.unwrap();
    assert_eq!(all.len(), 1000);
    let payloads: Vec<String> = all
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..1000).map(|n| format!("payload-{n}")).collect();
    assert_eq!(payloads, expected);
    assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
    // Reading from a position returns only what follows it.
    let tail = log.read("t", 0, all[990].offset, 100).await.unwrap();
    assert_eq!(tail.len(), 10);
    assert!(log.read("other", 0, 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn small_queue_applies_backpressure_without_losing_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("x.db"), Durability::Normal).unwrap();
    let log = SqliteEventLog::open(
        &db,
        SqliteEventLogOptions {
            queue_capacity: 4,
            max_batch: 3,
            ..SqliteEventLogOptions::default()
        },
    )
    .unwrap();
    let mut rejected = 0;
    for n in 0..500 {
        if let Err(back) = log.try_append(record("k", n)) {
            rejected += 1;
            log.append(back).await.unwrap();
        }
    }
    log.flush().await.unwrap();
    assert_eq!(log.count("t").unwrap(), 500);
    assert!(rejected > 0, "a queue of 4 must push back at some point");
}

fn topic_record(topic: &str, n: u32) -> LogRecord {
    LogRecord {
        topic: topic.into(),
        key: "k".into(),
        payload: format!("{topic}-{n}").into_bytes(),
    }
}

fn payloads(records: &[tollgate_eventlog::StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect()
}

/// Two instances writing one file (a second process, say): each reader sees
/// every record of both, in log order — the in-memory run of recent records
/// never hides a record the other instance wrote between ours.
#[tokio::test]
async fn readers_see_records_another_instance_wrote_between_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let db = Database::open(&path, Durability::Normal).unwrap();
    let a = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let b = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let mut expected = Vec::new();
    for round in 0..20u32 {
        // Alternate writers, and topics, in small committed groups.
        let (writer, name) = if round % 3 == 0 { (&b, "b") } else { (&a, "a") };
        for n in 0..5 {
            let topic = if n == 2 { "other" } else { "t" };
            let mut record = topic_record(topic, round * 10 + n);
            record.payload = format!("{name}-{topic}-{}", round * 10 + n).into_bytes();
            if topic == "t" {
                expected.push(String::from_utf8(record.payload.clone()).unwrap());
            }
            writer.append(record).await.unwrap();
        }
        writer.flush().await.unwrap();
    }
    for reader in [&a, &b] {
        // Read in small steps, as a consumer does, from every starting point.
        let mut seen = Vec::new();
        let mut next = 0;
        loop {
            let batch = reader.read("t", 0, next, 3).await.unwrap();
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            seen.extend(payloads(&batch));
        }
        assert_eq!(seen, expected);
    }
}

/// With a tiny in-memory run, older positions come from SQLite and give the
/// same records as a fresh reader would.
#[tokio::test]
async fn reads_behind_the_recent_records_come_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.db");
    let db = Database::open(&path, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(
        &db,
        SqliteEventLogOptions {
            recent_bytes: 64,
            max_batch: 7,
            ..SqliteEventLogOptions::default()
        },
    )
    .unwrap();
    for n in 0..300 {
        log.append(topic_record("t", n)).await.unwrap();
    }
    log.flush().await.unwrap();
    let all = log.read("t", 0, 0, 1_000).await.unwrap();
    let expected: Vec<String> = (0..300).map(|n| format!("t-{n}")).collect();
    assert_eq!(payloads(&all), expected);
    let fresh = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    for from in [0, all[150].offset, all[298].offset, all[299].offset + 1] {
        assert_eq!(
            log.read("t", 0, from, 50).await.unwrap(),
            fresh.read("t", 0, from, 50).await.unwrap(),
            "from offset {from}"
        );
    }
}

fn usage_event(n: u64) -> tollgate_core::UsageEvent {
    use tollgate_core::{
        AccessKeyId, AccountId, ApiSurface, CredentialSource, EventId, Prices, TokenCounts, Usd,
    };
    let started = chrono::Utc::now();
    UsageEvent {
        event_id: EventId::generate(),
        started_at: started,
        // Nanoseconds and decimals with trailing digits must survive JSON.
        finished_at: started + chrono::Duration::nanoseconds(123_456_789),
        account_id: AccountId::from("acct_ride"),
        access_key_id: AccessKeyId::from("ak_ride"),
        client_api: ApiSurface::Anthropic,
        endpoint: None,
        provider: Some("openai".into()),
        model_requested: "claude-via-translation".into(),
        model_served: Some("gpt-4o-mini".into()),
        credential_source: Some(CredentialSource::Operator),
        provider_key_id: None,
        streamed: true,
        tokens: TokenCounts {
            input: n,
            cached_input: 3,
            cache_write_5m: 2,
            cache_write_1h: 1,
            output: 40,
            reasoning: 0,
        },
        tokens_estimated: true,
        prices: Prices {
            input: "0.150".parse::<Usd>().unwrap(),
            output: "0.6000001".parse::<Usd>().unwrap(),
            ..Prices::default()
        },
        tool_calls: Vec::new(),
        end_user: None,
        tags: Default::default(),
        upstream_request_id: Some("req_\"x\"".into()),
        latency_us: 250,
        ttft_us: Some(90),
        upstream_latency_us: None,
        status: 200,
        error_kind: None,
        attempts: 2,
        client_disconnected: false,
        plan: None,
        instance_id: Some("gw_ride".into()),
        instance_seq: Some(n),
    }
}

async fn fresh_offset(db: &Database) -> u64 {
    let reader = SqliteEventLog::open(db, SqliteEventLogOptions::default()).unwrap();
    reader.read("t", 0, 0, 1).await.unwrap()[0].offset
}

/// A usage event appended with its record reaches readers in this process
/// as the event itself, and readers of the file as the same event's JSON:
/// the two must be the same event, or the ledger and analytics would see
/// different things depending on where they read.
#[tokio::test]
async fn a_usage_event_rides_with_its_record_only_inside_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("ride.db"), Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let events: Vec<UsageEvent> = (0..5).map(usage_event).collect();
    for event in &events {
        let record = LogRecord {
            topic: "t".into(),
            key: event.account_id.to_string(),
            payload: serde_json::to_vec(&Envelope::usage(event.clone())).unwrap(),
        };
        log.try_append_usage(record, std::sync::Arc::new(event.clone()))
            .unwrap();
    }
    log.append(record("plain", 0)).await.unwrap();
    log.flush().await.unwrap();

    // From the first record's offset, as a consumer that has caught up reads
    // (a read from before this instance's first write goes to the file).
    let first = fresh_offset(&db).await;
    let inside = log.read("t", 0, first, 100).await.unwrap();
    assert_eq!(inside.len(), 6);
    let riding: Vec<UsageEvent> = inside[..5]
        .iter()
        .map(|r| (**r.usage.as_ref().expect("in-process read carries the event")).clone())
        .collect();
    assert_eq!(riding, events);
    assert!(inside[5].usage.is_none(), "a plain append carries nothing");

    let fresh = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let from_file = fresh.read("t", 0, 0, 100).await.unwrap();
    assert!(from_file.iter().all(|r| r.usage.is_none()));
    for (stored, event) in from_file.iter().zip(&events) {
        let decoded: Envelope = serde_json::from_slice(&stored.payload).unwrap();
        assert_eq!(decoded.body, EventBody::Usage(Box::new(event.clone())));
    }
}

/// Append `n` usage records to topic "t", each with its event riding along.
async fn append_usage(log: &SqliteEventLog, n: u64) {
    for i in 0..n {
        let event = usage_event(i);
        let record = LogRecord {
            topic: "t".into(),
            key: event.account_id.to_string(),
            payload: serde_json::to_vec(&Envelope::usage(event.clone())).unwrap(),
        };
        log.try_append_usage(record, std::sync::Arc::new(event))
            .unwrap();
    }
    log.flush().await.unwrap();
}

/// The subscription's next batch of up to `max` records (there must be one).
async fn next(
    sub: &mut Box<dyn tollgate_eventlog::Subscription>,
    max: usize,
) -> Vec<tollgate_eventlog::StoredRecord> {
    sub.next_batch(max, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a batch within 5 s")
        .records
}

/// Read one record first, so the subscription is at the head of the log
/// (its very first read, from offset 0, goes to the file either way).
async fn caught_up(sub: &mut Box<dyn tollgate_eventlog::Subscription>, log: &SqliteEventLog) {
    append_usage(log, 1).await;
    assert_eq!(next(sub, 1_000).await.len(), 1);
}

fn small_recent() -> SqliteEventLogOptions {
    // Room for about two usage records, and for ~60 unread ones.
    SqliteEventLogOptions {
        recent_bytes: 4 * 1024,
        recent_hold_bytes: 128 * 1024,
        ..SqliteEventLogOptions::default()
    }
}

/// A subscription that has not read yet (a consumer busy writing a batch)
/// still gets what arrived meanwhile from memory, up to the hold limit;
/// once it has read them they go, and so does a dropped subscription's hold.
#[tokio::test]
async fn records_a_subscription_has_not_read_are_held_in_memory_until_read() {
    use std::sync::Arc;
    use tollgate_eventlog_contract::MemoryPositions;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("hold.db"), Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, small_recent()).unwrap();
    let positions = Arc::new(MemoryPositions::default());
    let mut sub = log.subscribe("t", "g", positions.clone()).await.unwrap();
    caught_up(&mut sub, &log).await;
    append_usage(&log, 40).await;
    let batch = next(&mut sub, 1_000).await;
    assert_eq!(batch.len(), 40);
    assert!(
        batch.iter().all(|r| r.usage.is_some()),
        "every record came from memory, none read back from the file"
    );
    // Read: no longer held. A reader from the start now goes to the file.
    let first = batch[0].offset;
    assert!(log.read("t", 0, first, 1).await.unwrap()[0].usage.is_none());

    // A subscription that has not read yet holds what follows its start...
    let idle = log.subscribe("t", "g2", positions.clone()).await.unwrap();
    append_usage(&log, 10).await;
    let tail = next(&mut sub, 1_000).await;
    assert_eq!(tail.len(), 10);
    let held_for_idle = tail[0].offset;
    assert!(log.read("t", 0, held_for_idle, 1).await.unwrap()[0]
        .usage
        .is_some());
    // ...until it is dropped.
    drop(idle);
    assert!(log.read("t", 0, held_for_idle, 1).await.unwrap()[0]
        .usage
        .is_none());
}

/// Past the hold limit, the oldest unread records go anyway: the lagging
/// subscription reads those from the file, the rest from memory.
#[tokio::test]
async fn the_hold_is_bounded() {
    use std::sync::Arc;
    use tollgate_eventlog_contract::MemoryPositions;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("bound.db"), Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, small_recent()).unwrap();
    let mut sub = log
        .subscribe("t", "g", Arc::new(MemoryPositions::default()))
        .await
        .unwrap();
    caught_up(&mut sub, &log).await;
    append_usage(&log, 300).await;
    let mut records = Vec::new();
    while records.len() < 300 {
        records.extend(next(&mut sub, 50).await);
    }
    let from_memory = records.iter().filter(|r| r.usage.is_some()).count();
    assert!(records[0].usage.is_none(), "the oldest came from the file");
    assert!(records[299].usage.is_some(), "the newest came from memory");
    assert!(
        (20..=100).contains(&from_memory),
        "{from_memory} of 300 held in 128 KiB"
    );
}

/// The shared event-log contract, on the embedded backend.
mod contract {
    use super::*;
    use std::sync::Arc;
    use tollgate_eventlog_contract as suite;

    struct Embedded(std::path::PathBuf);

    impl suite::Factory for Embedded {
        async fn open(&self) -> Arc<dyn EventLog> {
            let db = Database::open(&self.0, Durability::Normal).unwrap();
            Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap())
        }
    }

    fn factory() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contract.db");
        (dir, Embedded(path))
    }

    #[tokio::test]
    async fn append_is_durable_and_ordered_per_key() {
        let (_dir, f) = factory();
        suite::append_is_durable_and_ordered_per_key(&f, "contract.append").await;
    }

    #[tokio::test]
    async fn records_survive_restart() {
        let (_dir, f) = factory();
        suite::records_survive_restart(&f, "contract.restart").await;
    }

    #[tokio::test]
    async fn consume_from_position_resume_and_dedup() {
        let (_dir, f) = factory();
        suite::consume_from_position_resume_and_dedup(&f, "contract.consume").await;
    }
}

/// `tests/fixtures/previous-release.sql`: a `sqlite3 .dump` of a file a
/// release before the shared migration module wrote (`tollgate serve`: a
/// purchase, three requests and a refused one; every component migrated).
fn load_previous_release(path: &std::path::Path) {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/previous-release.sql"
    ))
    .unwrap();
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(&sql)
        .unwrap();
}

#[tokio::test]
async fn a_file_from_the_previous_release_opens_with_its_versions_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    load_previous_release(&path);
    let db = Database::open(&path, Durability::Normal).unwrap();
    let conn = db.connect().unwrap();
    // The recorded version and its time are kept: nothing ran again.
    let versions: Vec<(i64, String)> = conn
        .prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        versions,
        vec![(1, "2026-12-07T17:04:42.458863814+00:00".to_string())]
    );
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let control = log
        .read(tollgate_eventlog::topics::CONTROL, 0, 0, 100)
        .await
        .unwrap();
    let account = log
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100)
        .await
        .unwrap();
    let balances = log
        .read(tollgate_eventlog::topics::BALANCES, 0, 0, 100)
        .await
        .unwrap();
    assert_eq!(control.len() + account.len() + balances.len(), 15);
    // Usage events written then still decode, and this build writes them
    // byte for byte as they are stored.
    let mut usage = 0;
    for r in &account {
        let envelope: Envelope = serde_json::from_slice(&r.payload).unwrap();
        if let EventBody::Usage(event) = envelope.body {
            let mut written = Vec::new();
            tollgate_core::UsageEnvelope(&event).write_json(&mut written);
            assert_eq!(written, r.payload.to_vec());
            usage += 1;
        }
    }
    assert_eq!(usage, 4);
    // New records continue after the old ones.
    log.append(record("k", 1)).await.unwrap();
    log.flush().await.unwrap();
    let next = log.read("t", 0, 0, 10).await.unwrap();
    assert!(next[0].offset > 15);
}
