//! The analytics sink: consumes usage events from the account-events topic
//! and writes them to a usage store in batches (by size and by time).
//!
//! Delivery: at-least-once from the log, exactly-once into the store. The
//! start position comes from the store itself (`UsageStore::positions`),
//! never from the log's committed offsets, and `UsageStore::write` skips
//! anything at or before the position it holds. `Subscription::commit` is
//! called only after the store accepted a batch (it serves lag monitoring).
//! Transient failures are retried with exponential backoff, forever: the
//! sink waits out a store outage and loses nothing. Bad data (undecodable
//! records, rows a store rejects as invalid) is logged, counted and skipped.

use crate::error::AnalyticsError;
use crate::metrics::AnalyticsMetrics;
use crate::model::{decode, Decoded, UsageRecord};
use crate::store::{UsageStore, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tollgate_eventlog::topics::ACCOUNT_EVENTS;
use tollgate_eventlog::{Backoff, EventLog, PositionSource, Subscription};

/// The consumer group of the analytics sink.
pub const CONSUMER_GROUP: &str = "tollgate-analytics";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Write when this many rows are pending.
    pub batch_max_rows: usize,
    /// Write when the oldest pending row has waited this long. Keep it ≤ 1 s:
    /// the API promises events visible within 5 s.
    pub batch_max_wait_ms: u64,
    /// First retry delay after a transient failure; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_max_rows: 10_000,
            batch_max_wait_ms: 500,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
        }
    }
}

impl SinkConfig {
    fn max_rows(&self) -> usize {
        self.batch_max_rows
            .clamp(1, crate::clickhouse::MAX_INSERT_ROWS)
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms.max(1))
    }
}

/// Positions handed to `EventLog::subscribe`: a snapshot of the store's.
#[derive(Clone, Debug, Default)]
pub struct StorePositions(pub BTreeMap<u32, u64>);

impl PositionSource for StorePositions {
    fn next_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        if topic != ACCOUNT_EVENTS {
            return None;
        }
        self.0.get(&partition).copied()
    }
}

/// A running sink; `shutdown` stops it after one last write attempt.
pub struct SinkHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    /// Stop consuming, try once to write what is pending, and wait for the
    /// task. Rows not written are simply consumed again at the next start.
    pub async fn shutdown(self) -> Result<(), AnalyticsError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| AnalyticsError::Task(e.to_string()))
    }

    /// Stop abruptly, as a crash would (tests of redelivery).
    pub fn abort(self) {
        self.task.abort();
    }
}

pub struct Sink {
    log: Arc<dyn EventLog>,
    store: Arc<dyn UsageStore>,
    config: SinkConfig,
    metrics: AnalyticsMetrics,
    start_from: Option<Arc<dyn PositionSource>>,
}

impl Sink {
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn UsageStore>,
        config: SinkConfig,
        metrics: AnalyticsMetrics,
    ) -> Sink {
        Sink {
            log,
            store,
            config,
            metrics,
            start_from: None,
        }
    }

    /// Start from these positions instead of the store's (a replay). The
    /// store still refuses anything it already holds.
    pub fn start_from(mut self, positions: Arc<dyn PositionSource>) -> Sink {
        self.start_from = Some(positions);
        self
    }

    /// Run the sink on the current tokio runtime.
    pub fn spawn(self) -> SinkHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut run = Run {
                sink: self,
                stop: stopped,
                pending: BTreeMap::new(),
                pending_rows: 0,
                oldest: None,
                oldest_event_ms: None,
            };
            run.main().await;
        });
        SinkHandle { stop, task }
    }
}

#[derive(Default)]
struct Pending {
    rows: Vec<UsageRecord>,
    next_offset: u64,
}

struct Run {
    sink: Sink,
    stop: watch::Receiver<bool>,
    pending: BTreeMap<u32, Pending>,
    pending_rows: usize,
    /// When the oldest pending row was consumed (the batch timer).
    oldest: Option<Instant>,
    /// Log timestamp of the oldest record consumed but not yet stored.
    oldest_event_ms: Option<i64>,
}

/// The sink was told to stop while waiting.
struct Stopped;

/// The sink met a record it must not skip and cannot read.
struct Halted;

impl Run {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleep, or return early with `Stopped` when asked to stop.
    async fn pause(&mut self, delay: Duration) -> Result<(), Stopped> {
        if self.stopping() {
            return Err(Stopped);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.stop.changed() => Err(Stopped),
        }
    }

    /// The retry delays of one loop: `retry_initial_ms`, doubling up to
    /// `retry_max_ms`.
    fn retry(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.sink.config.retry_initial_ms.max(1)),
            Duration::from_millis(self.sink.config.retry_max_ms.max(1)),
        )
    }

    async fn main(&mut self) {
        let backend = self.sink.store.backend();
        let Ok(positions) = self.start_positions().await else {
            return;
        };
        let Ok(mut sub) = self.subscribe(positions.clone()).await else {
            return;
        };
        tracing::info!(backend, partitions = ?sub.assigned(), "analytics sink started");
        let assigned = sub.assigned();
        if self.verify(&assigned, positions.as_ref()).await.is_err() {
            return;
        }
        self.consume(sub.as_mut(), positions.as_ref(), assigned)
            .await;
        tracing::info!(backend, "analytics sink stopped");
    }

    /// Schema and positions first: without them we cannot know where to
    /// start, so a store that is down at startup is waited for.
    async fn start_positions(&mut self) -> Result<Arc<dyn PositionSource>, Stopped> {
        if let Some(positions) = self.sink.start_from.clone() {
            return Ok(positions);
        }
        let store = self.sink.store.clone();
        let backend = store.backend();
        let mut retry = self.retry();
        loop {
            // Migrations are idempotent and cheap when applied: the
            // sink never writes to a schema older than its code.
            let ready = match store.migrate().await {
                Ok(()) => store.positions().await,
                Err(err) => Err(err),
            };
            match ready {
                Ok(p) => return Ok(Arc::new(StorePositions(p))),
                Err(err) => {
                    tracing::warn!(backend, error = %err, retry_in = ?retry.current(), "analytics store unavailable; waiting to start");
                    self.pause(retry.next_delay()).await?;
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        positions: Arc<dyn PositionSource>,
    ) -> Result<Box<dyn Subscription>, Stopped> {
        let mut retry = self.retry();
        loop {
            match self
                .sink
                .log
                .subscribe(ACCOUNT_EVENTS, CONSUMER_GROUP, positions.clone())
                .await
            {
                Ok(sub) => return Ok(sub),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?retry.current(), "analytics cannot subscribe; retrying");
                    self.pause(retry.next_delay()).await?;
                }
            }
        }
    }

    /// Poll the log and store what it gives, in batches, until told to stop.
    async fn consume(
        &mut self,
        sub: &mut dyn Subscription,
        positions: &dyn PositionSource,
        mut assigned: Vec<u32>,
    ) {
        let mut poll_retry = self.retry();
        loop {
            if self.stopping() {
                // One attempt; what fails is consumed again at the next start.
                let _ = self.flush(sub, true).await;
                break;
            }
            let max_wait = self.sink.config.max_wait();
            let due = self.oldest.is_some_and(|t| t.elapsed() >= max_wait);
            if self.pending_rows >= self.sink.config.max_rows() || due {
                // Err only when told to stop: the loop's top handles that.
                let _ = self.flush(sub, false).await;
                continue;
            }
            let wait = match self.oldest {
                Some(t) => max_wait.saturating_sub(t.elapsed()),
                None => max_wait,
            };
            let want = self.sink.config.max_rows() - self.pending_rows;
            let polled = tokio::select! {
                polled = sub.next_batch(want.max(1), wait) => polled,
                _ = self.stop.changed() => continue,
            };
            let now_assigned = sub.assigned();
            if now_assigned != assigned {
                let gained = self.reassigned(&assigned, &now_assigned);
                assigned = now_assigned;
                if self.verify(&gained, positions).await.is_err() {
                    continue;
                }
            }
            match polled {
                Ok(Some(batch)) => {
                    poll_retry.reset();
                    if self.take(batch).is_err() {
                        // Store what came before the record, then stop.
                        let _ = self.flush(sub, true).await;
                        break;
                    }
                }
                Ok(None) => self.update_lag(),
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?poll_retry.current(), "analytics cannot read the event log; retrying");
                    // Err only when told to stop: the loop's top handles that.
                    let _ = self.pause(poll_retry.next_delay()).await;
                }
            }
        }
    }

    /// The subscription's partitions changed: drop what is pending for the
    /// ones lost; the ones gained are returned.
    fn reassigned(&mut self, before: &[u32], now: &[u32]) -> Vec<u32> {
        // Another member may have written the partitions we gained.
        self.sink.store.partitions_reassigned();
        self.pending.retain(|p, _| now.contains(p));
        self.pending_rows = self.pending.values().map(|p| p.rows.len()).sum();
        now.iter()
            .filter(|p| !before.contains(p))
            .copied()
            .collect()
    }

    /// Write an empty batch to each newly assigned partition: the store then
    /// checks it (ClickHouse repairs rollups a crash left behind) now, not
    /// only when the partition's next event arrives.
    async fn verify(
        &mut self,
        partitions: &[u32],
        positions: &dyn PositionSource,
    ) -> Result<(), Stopped> {
        for partition in partitions {
            if let Some(next_offset) = positions.next_offset(ACCOUNT_EVENTS, *partition) {
                let batch = WriteBatch {
                    partition: *partition,
                    rows: Arc::from([]),
                    next_offset,
                };
                self.write(batch, false).await?;
            }
        }
        Ok(())
    }

    /// Lag = age of the oldest record consumed but not yet stored: it keeps
    /// growing through a store outage and is 0 once everything is stored.
    fn update_lag(&self) {
        let lag = match self.oldest_event_ms {
            Some(ts) => ((chrono::Utc::now().timestamp_millis() - ts).max(0) as f64) / 1000.0,
            None => 0.0,
        };
        self.sink.metrics.consumer_lag.set(lag);
    }

    /// Queue a batch's usage rows; Err at a record from a newer build, with
    /// the rows before it queued and the position left at it.
    fn take(&mut self, batch: tollgate_eventlog::Batch) -> Result<(), Halted> {
        let Some(last) = batch.records.last() else {
            return Ok(());
        };
        if let Some(first) = batch.records.first() {
            let ts = self
                .oldest_event_ms
                .map_or(first.timestamp_ms, |t| t.min(first.timestamp_ms));
            self.oldest_event_ms = Some(ts);
        }
        self.update_lag();
        let next_offset = last.offset + 1;
        let pending = self.pending.entry(batch.partition).or_default();
        for record in &batch.records {
            match decode(record) {
                Decoded::Usage(row) => {
                    pending.rows.push(*row);
                    self.pending_rows += 1;
                }
                Decoded::Other => {}
                Decoded::Unsupported(version) => {
                    pending.next_offset = pending.next_offset.max(record.offset);
                    self.sink.metrics.halted.set(1);
                    tracing::error!(partition = record.partition, offset = record.offset, error = %version, "analytics stopped: it does not skip a record it cannot fully read");
                    return Err(Halted);
                }
                Decoded::Bad(reason) => {
                    // Decode errors can quote the event's values (model names): escaped.
                    tracing::warn!(partition = record.partition, offset = record.offset, reason = %tollgate_core::Escaped(&reason), "skipping undecodable event");
                    self.sink
                        .metrics
                        .events_skipped
                        .with_label_values(&["undecodable"])
                        .inc();
                }
            }
        }
        pending.next_offset = pending.next_offset.max(next_offset);
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        Ok(())
    }

    /// Write everything pending, partition by partition, then commit.
    async fn flush(
        &mut self,
        sub: &mut (dyn Subscription + '_),
        once: bool,
    ) -> Result<(), Stopped> {
        let partitions: Vec<u32> = self.pending.keys().copied().collect();
        for partition in partitions {
            let Some(pending) = self.pending.remove(&partition) else {
                continue;
            };
            let rows = pending.rows.len();
            let batch = WriteBatch {
                partition,
                rows: pending.rows.into(),
                next_offset: pending.next_offset,
            };
            match self.write(batch.clone(), once).await {
                Ok(()) => {
                    self.pending_rows -= rows;
                    if let Err(err) = sub.commit(partition, batch.next_offset).await {
                        // The store holds the position; a failed commit only
                        // delays the log's view of our progress.
                        tracing::warn!(partition, error = %err, "event log commit failed");
                    }
                }
                Err(Stopped) => {
                    self.pending.insert(
                        partition,
                        Pending {
                            rows: batch.rows.to_vec(),
                            next_offset: batch.next_offset,
                        },
                    );
                    return Err(Stopped);
                }
            }
        }
        self.oldest = None;
        self.oldest_event_ms = None;
        self.pending_rows = 0;
        self.update_lag();
        Ok(())
    }

    /// Write one batch until the store accepts it. Bad data is isolated by
    /// halving the batch until the offending row stands alone; that row is
    /// skipped (its position still advances).
    async fn write(&mut self, batch: WriteBatch, once: bool) -> Result<(), Stopped> {
        let store = self.sink.store.clone();
        let metrics = self.sink.metrics.clone();
        let mut work = VecDeque::from([batch]);
        let mut retry = self.retry();
        while let Some(batch) = work.pop_front() {
            let started = Instant::now();
            match store.write(&batch).await {
                Ok(written) => {
                    metrics.rows_inserted.inc_by(written);
                    // Position-only writes (skipped records, checks) are not batches.
                    if !batch.rows.is_empty() {
                        metrics.batch_rows.observe(batch.rows.len() as f64);
                        metrics
                            .insert_duration
                            .observe(started.elapsed().as_secs_f64());
                    }
                    retry.reset();
                }
                Err(err) if err.is_bad_data() => {
                    metrics
                        .insert_failures
                        .with_label_values(&["bad_data"])
                        .inc();
                    if batch.rows.len() > 1 {
                        let (first_rows, second_rows) = batch.rows.split_at(batch.rows.len() / 2);
                        let first = WriteBatch {
                            partition: batch.partition,
                            rows: first_rows.into(),
                            next_offset: second_rows
                                .first()
                                .map_or(batch.next_offset, |r| r.log_offset),
                        };
                        let second = WriteBatch {
                            partition: batch.partition,
                            rows: second_rows.into(),
                            next_offset: batch.next_offset,
                        };
                        work.push_front(second);
                        work.push_front(first);
                    } else {
                        if let Some(row) = batch.rows.first() {
                            tracing::error!(event_id = %row.event_id, partition = row.log_partition, offset = row.log_offset, error = %err, "store rejected an event as invalid; skipping it");
                            metrics
                                .events_skipped
                                .with_label_values(&["rejected"])
                                .inc();
                        }
                        work.push_front(WriteBatch {
                            partition: batch.partition,
                            rows: Arc::from([]),
                            next_offset: batch.next_offset,
                        });
                    }
                }
                Err(err) => {
                    metrics
                        .insert_failures
                        .with_label_values(&["transient"])
                        .inc();
                    tracing::warn!(backend = store.backend(), rows = batch.rows.len(), error = %err, retry_in = ?retry.current(), "analytics write failed; retrying");
                    if once {
                        return Err(Stopped);
                    }
                    work.push_front(batch);
                    self.update_lag();
                    self.pause(retry.next_delay()).await?;
                }
            }
        }
        Ok(())
    }
}
