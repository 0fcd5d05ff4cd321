//! The event-log contract: every backend (embedded SQLite, Kafka) runs these
//! same checks from its own tests, through a factory that opens the backend
//! on one storage location (opening twice = a restart).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_eventlog::{EventLog, LogRecord, PositionSource, StoredRecord};

/// Opens the backend under test; each call returns a fresh handle on the
/// same underlying log (a restart).
pub trait Factory {
    fn open(&self) -> impl Future<Output = Arc<dyn EventLog>>;
}

const WAIT: Duration = Duration::from_secs(2);

fn record(topic: &str, key: &str, n: usize) -> LogRecord {
    LogRecord {
        topic: topic.to_owned(),
        key: key.to_owned(),
        payload: format!("{key}:{n}").into_bytes(),
    }
}

/// Positions held in memory (a consumer's durable state, in the tests).
#[derive(Default)]
pub struct MemoryPositions(pub Mutex<HashMap<u32, u64>>);

impl PositionSource for MemoryPositions {
    fn next_offset(&self, _topic: &str, partition: u32) -> Option<u64> {
        self.0.lock().unwrap().get(&partition).copied()
    }
}

/// Read every record of `topic` across its partitions.
pub async fn read_all(log: &Arc<dyn EventLog>, topic: &str) -> Vec<StoredRecord> {
    let mut all = Vec::new();
    for partition in 0..log.partitions(topic).await.unwrap() {
        let mut from = 0;
        loop {
            let batch = log.read(topic, partition, from, 1000).await.unwrap();
            match batch.last() {
                Some(last) => from = last.offset + 1,
                None => break,
            }
            all.extend(batch);
        }
    }
    all
}

fn payloads_by_key(records: &[StoredRecord]) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_partition: BTreeMap<u32, Vec<&StoredRecord>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for (_, mut rs) in by_partition {
        rs.sort_by_key(|r| r.offset);
        for r in rs {
            by_key
                .entry(r.key.clone())
                .or_default()
                .push(String::from_utf8(r.payload.to_vec()).unwrap());
        }
    }
    by_key
}

/// Appended records are all readable after a flush, each key in append order,
/// offsets increasing within a partition.
pub async fn append_is_durable_and_ordered_per_key(factory: &impl Factory, topic: &str) {
    let log = factory.open().await;
    let keys = ["acct_a", "acct_b", "acct_c", "acct_d"];
    for n in 0..400 {
        let key = keys[n % keys.len()];
        log.append(record(topic, key, n)).await.unwrap();
    }
    log.flush().await.unwrap();
    let all = read_all(&log, topic).await;
    assert_eq!(all.len(), 400, "every appended record is readable");
    let by_key = payloads_by_key(&all);
    for key in keys {
        let expected: Vec<String> = (0..400)
            .filter(|n| keys[n % keys.len()] == key)
            .map(|n| format!("{key}:{n}"))
            .collect();
        assert_eq!(by_key[key], expected, "records of {key} keep their order");
    }
    // A key never spans partitions, so its order is total.
    let mut partition_of: HashMap<&str, u32> = HashMap::new();
    for r in &all {
        let p = *partition_of.entry(&r.key).or_insert(r.partition);
        assert_eq!(p, r.partition, "key {} is in one partition", r.key);
    }
}

/// Records survive a restart; reading from an offset returns what follows.
pub async fn records_survive_restart(factory: &impl Factory, topic: &str) {
    {
        let log = factory.open().await;
        for n in 0..50 {
            log.append(record(topic, "acct_r", n)).await.unwrap();
        }
        log.flush().await.unwrap();
    }
    let log = factory.open().await;
    let all = read_all(&log, topic).await;
    assert_eq!(all.len(), 50);
    let partition = all[0].partition;
    let tenth = all[10].offset;
    let tail = log.read(topic, partition, tenth, 1000).await.unwrap();
    assert_eq!(tail.len(), 40);
    assert_eq!(tail[0].payload, b"acct_r:10".to_vec());
}

/// A subscription starts at the consumer's durable position and, after a
/// "crash" that lost the latest position, redelivers — which deduplication by
/// id turns into exactly-once effects.
pub async fn consume_from_position_resume_and_dedup(factory: &impl Factory, topic: &str) {
    let log = factory.open().await;
    for n in 0..30 {
        log.append(record(topic, "acct_s", n)).await.unwrap();
    }
    log.flush().await.unwrap();

    let positions = Arc::new(MemoryPositions::default());
    let mut applied: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut durable_position: HashMap<u32, u64> = HashMap::new();
    {
        let mut sub = log
            .subscribe(topic, "contract-group", positions.clone())
            .await
            .unwrap();
        while applied.len() < 20 {
            let batch = sub
                .next_batch(5, WAIT)
                .await
                .unwrap()
                .expect("records arrive");
            for r in &batch.records {
                let id = String::from_utf8(r.payload.to_vec()).unwrap();
                if seen.insert(id.clone()) {
                    applied.push(id);
                }
            }
            let next = batch.records.last().unwrap().offset + 1;
            sub.commit(batch.partition, next).await.unwrap();
            // Only the first 10 effects' position is made durable: a crash loses the rest.
            if applied.len() <= 10 {
                durable_position.insert(batch.partition, next);
            }
        }
    }
    *positions.0.lock().unwrap() = durable_position;
    let log = factory.open().await;
    let mut sub = log
        .subscribe(topic, "contract-group", positions.clone())
        .await
        .unwrap();
    let mut redelivered = 0;
    while applied.len() < 30 {
        let batch = sub
            .next_batch(7, WAIT)
            .await
            .unwrap()
            .expect("records arrive after restart");
        for r in &batch.records {
            let id = String::from_utf8(r.payload.to_vec()).unwrap();
            if seen.insert(id.clone()) {
                applied.push(id);
            } else {
                redelivered += 1;
            }
        }
    }
    assert!(
        redelivered > 0,
        "records after the durable position come again"
    );
    let expected: Vec<String> = (0..30).map(|n| format!("acct_s:{n}")).collect();
    assert_eq!(
        applied, expected,
        "dedup by id gives each effect once, in order"
    );
    assert!(
        sub.next_batch(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "nothing beyond the end"
    );
}
