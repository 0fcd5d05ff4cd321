//! Consumer groups: two members split the partitions; when one leaves, the
//! survivor takes its partitions over from the consumer's durable positions
//! (not from the group's committed offsets), so nothing is applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tollgate_eventlog::{EventLog, Subscription};
use tollgate_eventlog_contract::MemoryPositions;
use tollgate_kafka::KafkaEventLog;

const TOPIC: &str = "tollgate.account-events";
const GROUP: &str = "ledger-test";
const WAIT: Duration = Duration::from_secs(60);

/// The consumers' shared durable state (a ledger database, in real life):
/// effects and positions change together.
#[derive(Default)]
struct Ledger {
    seen: HashSet<usize>,
    redelivered: usize,
    /// (member, phase, partition) → first offset received.
    first: BTreeMap<(&'static str, u8, u32), u64>,
}

struct Member {
    assigned: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Box<dyn Subscription>>,
}

fn run(
    name: &'static str,
    mut sub: Box<dyn Subscription>,
    ledger: Arc<Mutex<Ledger>>,
    positions: Arc<MemoryPositions>,
    phase: Arc<AtomicU8>,
) -> Member {
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, s) = (assigned.clone(), stop.clone());
    let task = tokio::spawn(async move {
        while !s.load(Ordering::SeqCst) {
            if let Some(batch) = sub
                .next_batch(100, Duration::from_millis(200))
                .await
                .unwrap()
            {
                let next = batch.records.last().unwrap().offset + 1;
                {
                    let mut ledger = ledger.lock().unwrap();
                    let phase = phase.load(Ordering::SeqCst);
                    ledger
                        .first
                        .entry((name, phase, batch.partition))
                        .or_insert(batch.records[0].offset);
                    for r in &batch.records {
                        if !ledger.seen.insert(common::id_of(r)) {
                            ledger.redelivered += 1;
                        }
                    }
                    positions.0.lock().unwrap().insert(batch.partition, next);
                }
                // The group's committed offset lags on purpose: resuming from
                // it would re-deliver; resuming from positions does not.
                sub.commit(batch.partition, batch.records[0].offset)
                    .await
                    .unwrap();
            }
            *a.lock().unwrap() = sub.assigned();
        }
        sub
    });
    Member {
        assigned,
        stop,
        task,
    }
}

async fn append(log: &KafkaEventLog, ids: std::ops::Range<usize>) {
    for id in ids {
        log.append(common::record(TOPIC, &format!("acct_{}", id % 40), id))
            .await
            .unwrap();
    }
    log.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_partitions_and_the_survivor_resumes_from_positions() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&mock, &dir.path().join("spool.db"));
    let brokers = mock.bootstrap_servers();
    let log = KafkaEventLog::connect(config).await.unwrap();
    append(&log, 0..400).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let positions = Arc::new(MemoryPositions::default());
    let phase = Arc::new(AtomicU8::new(1));
    let sub_a = log
        .subscribe(TOPIC, GROUP, positions.clone())
        .await
        .unwrap();
    let a = run("a", sub_a, ledger.clone(), positions.clone(), phase.clone());
    let sub_b = log
        .subscribe(TOPIC, GROUP, positions.clone())
        .await
        .unwrap();
    let b = run("b", sub_b, ledger.clone(), positions.clone(), phase.clone());

    let all: Vec<u32> = (0..common::ACCOUNT_PARTITIONS as u32).collect();
    common::eventually("both members hold partitions", WAIT, || {
        let (pa, pb) = (
            a.assigned.lock().unwrap().clone(),
            b.assigned.lock().unwrap().clone(),
        );
        let union: BTreeSet<u32> = pa.iter().chain(&pb).copied().collect();
        !pa.is_empty()
            && !pb.is_empty()
            && pa.len() + pb.len() == all.len()
            && union.len() == all.len()
    })
    .await;
    common::eventually("the first 400 records applied", WAIT, || {
        ledger.lock().unwrap().seen.len() == 400
    })
    .await;

    // B leaves; A takes over B's partitions where B's positions say.
    let b_partitions = b.assigned.lock().unwrap().clone();
    b.stop.store(true, Ordering::SeqCst);
    drop(b.task.await.unwrap());
    let b_positions: BTreeMap<u32, u64> = {
        let p = positions.0.lock().unwrap();
        b_partitions.iter().map(|q| (*q, p[q])).collect()
    };
    phase.store(2, Ordering::SeqCst);
    append(&log, 400..600).await;
    common::eventually("A holds every partition", WAIT, || {
        *a.assigned.lock().unwrap() == all
    })
    .await;
    common::eventually("all 600 records applied", WAIT, || {
        ledger.lock().unwrap().seen.len() == 600
    })
    .await;

    {
        let ledger = ledger.lock().unwrap();
        assert_eq!(
            ledger.redelivered, 0,
            "nothing re-delivered across rebalances"
        );
        for (p, position) in &b_positions {
            if let Some(first) = ledger.first.get(&("a", 2, *p)) {
                assert_eq!(first, position, "A resumes partition {p} at B's position");
            }
        }
        assert!(
            b_positions
                .keys()
                .any(|p| ledger.first.contains_key(&("a", 2, *p))),
            "A read some of B's former partitions"
        );
    }

    // Commits reach the group (for lag monitoring).
    let sub_a = {
        a.stop.store(true, Ordering::SeqCst);
        a.task.await.unwrap()
    };
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", GROUP)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in &all {
        tpl.add_partition(TOPIC, *p as i32);
    }
    let committed = watcher
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let committed: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert!(
        committed
            .iter()
            .any(|o| matches!(o, Offset::Offset(n) if *n > 0)),
        "offsets were committed: {committed:?}"
    );
    drop(sub_a);
}

/// A topic that does not exist is an error, not a member waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_missing_topic_fails() {
    let mock = common::cluster(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = KafkaEventLog::connect(common::config(&mock, &dir.path().join("s.db")))
        .await
        .unwrap();
    let err = log
        .subscribe("no.such.topic", GROUP, Arc::new(MemoryPositions::default()))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no.such.topic"), "{err}");
}
