//! The forwarder: produces spooled records to Kafka in spool order and has
//! them deleted from the spool once Kafka acknowledged them.
//!
//! One thread, fed by one channel: commits from the spool writer, delivery
//! reports from the producer, shutdown. librdkafka's idempotent producer
//! (no local message timeout) retries in order for as long as a broker is
//! away; a delivery failure reaches this thread only for permanent or fatal
//! errors. Then the forwarder purges everything in flight, waits for the
//! last report, backs off, builds a new producer if the old one is dead,
//! and re-sends from the oldest unacknowledged record: at-least-once, each
//! key still in order once consumers drop repeated event ids.

use crate::config::KafkaConfig;
use crate::context;
use crate::metrics::EventLogMetrics;
use crate::spool::{self, SpoolRow, WriterMsg};
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rusqlite::Connection;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tollgate_eventlog::Backoff;

/// Records read from the spool per query.
const READ_BATCH: usize = 2_048;
/// Records handed to the producer before events are looked at again.
const SEND_BURST: usize = 4_096;
/// How long purged records may take to report back before the producer is
/// replaced anyway.
const PURGE_GRACE: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub(crate) enum FwdEvent {
    /// The spool writer committed everything up to this sequence number.
    Committed(u64),
    Delivered {
        epoch: u64,
        seq: u64,
        outcome: Result<(String, i32, i64), RDKafkaErrorCode>,
    },
    Shutdown,
}

/// Next offset after the highest acknowledged one, per (topic, partition):
/// lets `read` know that records exist before its consumer fetched them.
pub(crate) type ProducedEnds = Arc<Mutex<HashMap<(String, i32), u64>>>;

/// Delivery reports of one producer incarnation (`epoch`).
pub(crate) struct DeliveryContext {
    tx: Sender<FwdEvent>,
    epoch: u64,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        context::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        context::error(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let outcome = match result {
            Ok(m) => Ok((m.topic().to_owned(), m.partition(), m.offset())),
            Err((e, _)) => Err(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
        };
        let _ = self.tx.send(FwdEvent::Delivered {
            epoch: self.epoch,
            seq: seq as u64,
            outcome,
        });
    }
}

pub(crate) fn create_producer(
    config: &KafkaConfig,
    tx: &Sender<FwdEvent>,
    epoch: u64,
) -> Result<ThreadedProducer<DeliveryContext>, KafkaError> {
    config
        .producer_client()
        .create_with_context(DeliveryContext {
            tx: tx.clone(),
            epoch,
        })
}

pub(crate) struct Forwarder {
    pub config: Arc<KafkaConfig>,
    pub producer: ThreadedProducer<DeliveryContext>,
    pub rx: Receiver<FwdEvent>,
    pub tx: Sender<FwdEvent>,
    pub reader: Connection,
    pub writer: mpsc::Sender<WriterMsg>,
    pub metrics: EventLogMetrics,
    pub delivered_upto: watch::Sender<u64>,
    pub produced_ends: ProducedEnds,
    /// Highest sequence number known committed to the spool.
    pub committed: u64,
    /// Every record up to here is acknowledged (or was never spooled).
    pub watermark: u64,
}

struct Run {
    epoch: u64,
    /// Highest sequence number handed to the producer in this run.
    cursor: u64,
    /// Highest sequence number read into `pending`.
    loaded: u64,
    pending: VecDeque<SpoolRow>,
    in_flight: BTreeSet<u64>,
    failed: BTreeSet<u64>,
    /// Acknowledged above the watermark (counted once even when re-sent).
    acked: BTreeSet<u64>,
    trimmed: u64,
    queue_full: bool,
    recovering: Option<Instant>,
    backoff: Backoff,
    shutdown: bool,
}

impl Forwarder {
    pub(crate) fn spawn(self, done: watch::Sender<bool>) -> Result<(), std::io::Error> {
        std::thread::Builder::new()
            .name("tollgate-kafka-forwarder".into())
            .spawn(move || {
                self.run();
                let _ = done.send(true);
            })
            .map(|_| ())
    }

    fn run(mut self) {
        let mut run = Run {
            epoch: 0,
            cursor: self.watermark,
            loaded: self.watermark,
            pending: VecDeque::new(),
            in_flight: BTreeSet::new(),
            failed: BTreeSet::new(),
            acked: BTreeSet::new(),
            trimmed: self.watermark,
            queue_full: false,
            recovering: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            shutdown: false,
        };
        loop {
            let has_work = run.recovering.is_none()
                && !run.queue_full
                && (!run.pending.is_empty() || run.loaded < self.committed);
            let wait = if has_work {
                Duration::ZERO
            } else if run.recovering.is_some() || run.queue_full {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(250)
            };
            match self.rx.recv_timeout(wait) {
                Ok(ev) => self.handle(&mut run, ev),
                Err(RecvTimeoutError::Timeout) => run.queue_full = false,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(ev) = self.rx.try_recv() {
                self.handle(&mut run, ev);
            }
            if run.shutdown {
                break;
            }
            if run.recovering.is_some() {
                self.recover(&mut run);
            } else if !run.queue_full {
                self.send(&mut run);
            }
            self.advance(&mut run);
        }
        // Whatever is still in flight stays spooled for the next start.
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    fn handle(&mut self, run: &mut Run, ev: FwdEvent) {
        match ev {
            FwdEvent::Committed(seq) => self.committed = self.committed.max(seq),
            FwdEvent::Shutdown => run.shutdown = true,
            FwdEvent::Delivered {
                epoch,
                seq,
                outcome: Ok((topic, partition, offset)),
            } => {
                run.queue_full = false;
                if epoch == run.epoch {
                    run.in_flight.remove(&seq);
                }
                // An acknowledgement from an earlier producer is still proof
                // of delivery.
                if seq > self.watermark && run.acked.insert(seq) {
                    self.metrics.delivered.inc();
                    self.metrics.spooled.dec();
                }
                let next = u64::try_from(offset).map_or(0, |o| o + 1);
                let mut ends = self.produced_ends.lock();
                let end = ends.entry((topic, partition)).or_default();
                *end = (*end).max(next);
                run.backoff.reset();
            }
            FwdEvent::Delivered {
                epoch,
                seq,
                outcome: Err(code),
            } => {
                run.queue_full = false;
                if epoch != run.epoch {
                    return;
                }
                run.in_flight.remove(&seq);
                run.failed.insert(seq);
                if !matches!(
                    code,
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                ) {
                    self.metrics.delivery_failures.inc();
                    self.fail(run, &format!("delivery failed: {code}"));
                }
            }
        }
    }

    /// Stop sending, purge what is queued or in flight, then (in `recover`)
    /// re-send from the oldest unacknowledged record.
    fn fail(&mut self, run: &mut Run, reason: &str) {
        if run.recovering.is_some() {
            return;
        }
        tracing::error!(
            reason,
            retry_in_ms = run.backoff.current().as_millis() as u64,
            "Kafka delivery failed; records stay spooled and are re-sent"
        );
        run.recovering = Some(Instant::now());
        run.pending.clear();
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    fn recover(&mut self, run: &mut Run) {
        let Some(since) = run.recovering else { return };
        let waited = since.elapsed();
        if !run.in_flight.is_empty() && waited < PURGE_GRACE {
            return;
        }
        if waited < run.backoff.current() {
            return;
        }
        let fatal = self.producer.client().fatal_error();
        if fatal.is_some() || !run.in_flight.is_empty() {
            if let Some((code, reason)) = fatal {
                tracing::warn!(%code, reason, "Kafka producer failed fatally; creating a new one");
            }
            match create_producer(&self.config, &self.tx, run.epoch + 1) {
                Ok(producer) => {
                    // Reports of the old producer are ignored from now on,
                    // except acknowledgements.
                    run.epoch += 1;
                    self.producer = producer;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create a Kafka producer; retrying");
                    run.recovering = Some(Instant::now());
                    run.backoff.next_delay();
                    return;
                }
            }
        }
        // Re-send from the oldest unacknowledged record.
        let resume = self.oldest_unacked(run).saturating_sub(1);
        run.cursor = resume;
        run.loaded = resume;
        run.pending.clear();
        run.in_flight.clear();
        run.failed.clear();
        run.recovering = None;
        run.backoff.next_delay();
        tracing::info!(from_seq = resume + 1, "re-sending spooled records to Kafka");
    }

    /// Lowest sequence number not known delivered (cursor + 1 if none).
    fn oldest_unacked(&self, run: &Run) -> u64 {
        let blocked = run
            .in_flight
            .first()
            .copied()
            .into_iter()
            .chain(run.failed.first().copied())
            .min();
        blocked.unwrap_or(run.cursor + 1)
    }

    fn send(&mut self, run: &mut Run) {
        let mut sent = 0;
        while sent < SEND_BURST {
            if run.pending.is_empty() {
                if run.loaded >= self.committed {
                    return;
                }
                match spool::read_after(&self.reader, run.loaded, READ_BATCH) {
                    Ok(rows) if rows.is_empty() => {
                        // Nothing beyond `loaded` (e.g. an empty commit).
                        run.loaded = self.committed;
                        return;
                    }
                    Ok(rows) => {
                        run.loaded = rows.last().map_or(run.loaded, |r| r.seq);
                        run.pending.extend(rows);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the event spool failed; retrying");
                        std::thread::sleep(Duration::from_millis(100));
                        return;
                    }
                }
            }
            let Some(row) = run.pending.front() else {
                return;
            };
            let topic = self.config.physical_topic(&row.topic);
            let record = BaseRecord::with_opaque_to(topic, row.seq as usize)
                .key(row.key.as_bytes())
                .payload(&row.payload)
                .timestamp(row.timestamp_ms);
            match self.producer.send(record) {
                Ok(()) => {
                    run.in_flight.insert(row.seq);
                    run.cursor = row.seq;
                    run.pending.pop_front();
                    sent += 1;
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // The bounded producer queue pushes back; acks free it.
                    run.queue_full = true;
                    return;
                }
                Err((e, _)) => {
                    let seq = row.seq;
                    run.failed.insert(seq);
                    self.metrics.delivery_failures.inc();
                    self.fail(run, &format!("producing record {seq} failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Publish the new watermark and have the spool trimmed up to it.
    fn advance(&mut self, run: &mut Run) {
        let watermark = self.oldest_unacked(run).saturating_sub(1);
        if watermark > self.watermark {
            self.watermark = watermark;
            run.acked = run.acked.split_off(&(watermark + 1));
            self.delivered_upto.send_replace(watermark);
        }
        if self.watermark > run.trimmed
            && self
                .writer
                .try_send(WriterMsg::Trim(self.watermark))
                .is_ok()
        {
            run.trimmed = self.watermark;
        }
    }
}
