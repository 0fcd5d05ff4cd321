//! `subscribe`: a consumer-group member whose partitions start where the
//! consumer's own durable state says (`PositionSource`), on every
//! (re)assignment.

use crate::config::KafkaConfig;
use crate::context;
use crate::error::KafkaLogError;
use crate::reader::to_record;
use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tollgate_eventlog::{Batch, EventLogError, PositionSource, StoredRecord, Subscription};

/// Records taken from librdkafka per blocking call.
const DRAIN: usize = 2_048;
/// Longest single `poll`, so a cancelled `next_batch` frees its thread soon.
const POLL_SLICE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct GroupState {
    assigned: BTreeSet<u32>,
    /// Partitions assigned or revoked since the last look: whatever was
    /// fetched for them before is stale.
    reset: BTreeSet<u32>,
    rebalances: u64,
}

impl GroupState {
    fn unassign_all(&mut self) {
        let all = std::mem::take(&mut self.assigned);
        self.reset.extend(all);
    }
}

pub(crate) struct GroupContext {
    group: String,
    /// Logical topic (what `PositionSource` is asked about).
    topic: String,
    physical: String,
    positions: Arc<dyn PositionSource>,
    state: Arc<Mutex<GroupState>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        context::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        context::error(&error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.physical)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut starts = BTreeMap::new();
                for &p in &partitions {
                    let Ok(partition) = u32::try_from(p) else {
                        continue;
                    };
                    // The consumer's own durable position wins; without one
                    // the group's committed offset, else the beginning
                    // (auto.offset.reset=earliest).
                    let offset = self
                        .positions
                        .next_offset(&self.topic, partition)
                        .and_then(|n| i64::try_from(n).ok());
                    if let Some(n) = offset {
                        if let Err(e) =
                            tpl.set_partition_offset(&self.physical, p, Offset::Offset(n))
                        {
                            tracing::error!(error = %e, partition, "cannot set start offset");
                        }
                    }
                    starts.insert(partition, offset);
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(group = %self.group, error = %e, "assigning partitions failed");
                }
                let mut state = self.state.lock();
                if !cooperative {
                    state.unassign_all();
                }
                state.assigned.extend(starts.keys());
                state.reset.extend(starts.keys());
                state.rebalances += 1;
                tracing::info!(group = %self.group, topic = %self.topic, starts = ?starts, "partitions assigned (None = committed offset or beginning)");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(group = %self.group, error = %e, "unassigning partitions failed");
                }
                let mut state = self.state.lock();
                for p in partitions.iter().filter_map(|p| u32::try_from(*p).ok()) {
                    state.assigned.remove(&p);
                    state.reset.insert(p);
                }
                if !cooperative {
                    state.unassign_all();
                }
                tracing::info!(group = %self.group, topic = %self.topic, revoked = ?partitions, "partitions revoked");
            }
            other => {
                tracing::error!(group = %self.group, error = ?other, "rebalance failed; dropping the assignment");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(group = %self.group, error = %e, "unassigning partitions failed");
                }
                self.state.lock().unassign_all();
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            // Commits only feed lag monitoring; positions live with the consumer.
            tracing::debug!(group = %self.group, error = %e, "offset commit failed");
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

/// A group member leaving: its group, and `true` once it has left.
type Closing = (String, watch::Receiver<bool>);

/// Members of this process being closed (leaving their group) in the
/// background, per group: a new member of the same group waits for them so
/// it does not join while they are still counted in the group.
static CLOSING: LazyLock<Mutex<Vec<Closing>>> = LazyLock::new(|| Mutex::new(Vec::new()));

async fn wait_for_closing(group: &str, timeout: Duration) {
    let waiting: Vec<watch::Receiver<bool>> = {
        let mut closing = CLOSING.lock();
        closing.retain(|(_, rx)| !*rx.borrow() && rx.has_changed().is_ok());
        closing
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, rx)| rx.clone())
            .collect()
    };
    for mut rx in waiting {
        let _ = tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await;
    }
}

pub(crate) struct KafkaSubscription {
    consumer: Option<Arc<GroupConsumer>>,
    group: String,
    state: Arc<Mutex<GroupState>>,
    buffers: BTreeMap<u32, VecDeque<StoredRecord>>,
    /// Where the round-robin over partitions with records starts next.
    turn: u32,
}

/// What one blocking poll round brought.
struct Pumped {
    records: Vec<StoredRecord>,
    reset: BTreeSet<u32>,
}

impl KafkaSubscription {
    pub(crate) async fn start(
        config: &KafkaConfig,
        topic: &str,
        group: &str,
        positions: Arc<dyn PositionSource>,
    ) -> Result<KafkaSubscription, KafkaLogError> {
        let timeout = Duration::from_millis(config.startup_timeout_ms);
        wait_for_closing(group, timeout).await;
        let physical = config.physical_topic(topic).to_owned();
        let state = Arc::new(Mutex::new(GroupState::default()));
        let context = GroupContext {
            group: group.to_owned(),
            topic: topic.to_owned(),
            physical: physical.clone(),
            positions,
            state: state.clone(),
        };
        let consumer: GroupConsumer = config.group_client(group).create_with_context(context)?;
        consumer.subscribe(&[&physical])?;
        let mut sub = KafkaSubscription {
            consumer: Some(Arc::new(consumer)),
            group: group.to_owned(),
            state,
            buffers: BTreeMap::new(),
            turn: 0,
        };
        // Join the group before returning, so the first next_batch finds
        // partitions (a first join takes a few seconds on a real cluster).
        let deadline = Instant::now() + timeout;
        while sub.state.lock().rebalances == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    group,
                    topic,
                    "no partition assignment yet; consuming will start once the group is joined"
                );
                break;
            }
            sub.pump(left.min(POLL_SLICE), true).await?;
        }
        Ok(sub)
    }

    /// Poll librdkafka on a blocking thread for up to `wait`, keeping what
    /// arrives in per-partition buffers.
    async fn pump(&mut self, wait: Duration, until_assigned: bool) -> Result<(), KafkaLogError> {
        let Some(consumer) = self.consumer.clone() else {
            return Err(KafkaLogError::Closed);
        };
        let state = self.state.clone();
        let pumped = tokio::task::spawn_blocking(move || -> Result<Pumped, KafkaLogError> {
            let deadline = Instant::now() + wait;
            let mut out = Pumped {
                records: Vec::new(),
                reset: BTreeSet::new(),
            };
            let topic = consumer.context().topic.clone();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let slice = if out.records.is_empty() {
                    left.min(POLL_SLICE)
                } else {
                    Duration::ZERO
                };
                let polled = consumer.poll(slice);
                let got = match polled {
                    Some(Ok(m)) => {
                        out.records.push(to_record(&topic, &m));
                        true
                    }
                    Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                        return Err(KafkaLogError::Kafka(KafkaError::MessageConsumptionFatal(
                            code,
                        )));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        false
                    }
                    None => false,
                };
                // A rebalance ran inside poll: what was fetched for the
                // affected partitions before it is stale.
                let (reset, assigned_once) = {
                    let mut s = state.lock();
                    (std::mem::take(&mut s.reset), s.rebalances > 0)
                };
                if !reset.is_empty() {
                    out.records.retain(|r| !reset.contains(&r.partition));
                    out.reset.extend(reset);
                }
                if until_assigned && assigned_once {
                    return Ok(out);
                }
                if out.records.len() >= DRAIN {
                    return Ok(out);
                }
                if !got && (!out.records.is_empty() || Instant::now() >= deadline) {
                    return Ok(out);
                }
            }
        })
        .await
        .map_err(|e| KafkaLogError::Join(e.to_string()))??;
        for p in &pumped.reset {
            self.buffers.remove(p);
        }
        let assigned = self.state.lock().assigned.clone();
        for record in pumped.records {
            if assigned.contains(&record.partition) {
                self.buffers
                    .entry(record.partition)
                    .or_default()
                    .push_back(record);
            }
        }
        Ok(())
    }

    /// Up to `max` buffered records of one partition, partitions in turn.
    fn take_batch(&mut self, max: usize) -> Option<Batch> {
        let partition = self
            .buffers
            .range(self.turn..)
            .chain(self.buffers.range(..self.turn))
            .find(|(_, records)| !records.is_empty())
            .map(|(p, _)| *p)?;
        let records = self.buffers.get_mut(&partition)?;
        let n = max.max(1).min(records.len());
        let records: Vec<StoredRecord> = records.drain(..n).collect();
        self.turn = partition + 1;
        Some(Batch { partition, records })
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Batch>, EventLogError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(batch) = self.take_batch(max) {
                return Ok(Some(batch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.pump(left, false).await?;
            if let Some(batch) = self.take_batch(max) {
                return Ok(Some(batch));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    async fn commit(&mut self, partition: u32, next_offset: u64) -> Result<(), EventLogError> {
        let Some(consumer) = &self.consumer else {
            return Err(EventLogError::Closed);
        };
        // A partition that moved to another member is that member's to commit.
        if !self.state.lock().assigned.contains(&partition) {
            tracing::debug!(group = %self.group, partition, "not committing a partition no longer assigned");
            return Ok(());
        }
        let physical = consumer.context().physical.clone();
        let (Ok(p), Ok(offset)) = (i32::try_from(partition), i64::try_from(next_offset)) else {
            return Err(KafkaLogError::Offset(next_offset).into());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&physical, p, Offset::Offset(offset))
            .map_err(KafkaLogError::from)?;
        // Asynchronous: commits only serve lag monitoring, never positions.
        consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(KafkaLogError::from)?;
        Ok(())
    }

    fn assigned(&self) -> Vec<u32> {
        self.state.lock().assigned.iter().copied().collect()
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        // Leaving the group blocks until the coordinator answers: done on a
        // thread of its own, never on the async runtime.
        let (tx, rx) = watch::channel(false);
        CLOSING.lock().push((self.group.clone(), rx));
        let spawned = std::thread::Builder::new()
            .name("tollgate-kafka-leave".into())
            .spawn(move || {
                drop(consumer);
                let _ = tx.send(true);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot close the group member in the background");
        }
    }
}
