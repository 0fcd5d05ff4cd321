//! `KafkaEventLog`: the `EventLog` over Kafka, spool first.

use crate::config::KafkaConfig;
use crate::context::LogContext;
use crate::error::KafkaLogError;
use crate::forwarder::{self, Forwarder, FwdEvent, ProducedEnds};
use crate::metrics::EventLogMetrics;
use crate::reader::Cursor;
use crate::spool::{self, WriterMsg, WriterShared};
use crate::startup;
use crate::subscription::KafkaSubscription;
use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, OnceCell};
use tokio::time::Instant;
use tollgate_eventlog::{
    EventLog, EventLogError, LogRecord, PositionSource, StoredRecord, Subscription,
};

/// Appends queued for the spool writer before `append` waits.
const QUEUE_CAPACITY: usize = 65_536;

/// A partition reader, created on first use.
type ReaderSlot = Arc<Mutex<Option<Cursor>>>;

/// What `close` left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReport {
    /// Records still in the spool, not acknowledged by Kafka; delivered by
    /// the next process that opens the same spool.
    pub remaining: u64,
}

/// The Kafka event log. Cheap to clone; every clone (and every `connect`
/// on the same spool path in this process) shares one spool, forwarder and
/// set of readers.
#[derive(Clone)]
pub struct KafkaEventLog {
    engine: Arc<Engine>,
}

/// How long a topic's partition count is reused before asking again
/// (partitions are only ever added, and rarely).
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(30);

struct Engine {
    config: Arc<KafkaConfig>,
    spool_path: PathBuf,
    writer: mpsc::Sender<WriterMsg>,
    forwarder: std::sync::mpsc::Sender<FwdEvent>,
    delivered: watch::Receiver<u64>,
    metrics: EventLogMetrics,
    writable: Arc<AtomicBool>,
    closed: AtomicBool,
    produced_ends: ProducedEnds,
    meta: Arc<BaseConsumer<LogContext>>,
    readers: Mutex<HashMap<(String, u32), ReaderSlot>>,
    /// Partition counts by logical topic, with when they were fetched:
    /// tailers ask every 100 ms, and a metadata request each time is waste.
    partition_counts: Mutex<HashMap<String, (u32, std::time::Instant)>>,
    direct: OnceCell<FutureProducer<LogContext>>,
    max_record: usize,
    done: Vec<watch::Receiver<bool>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The writer stops once the forwarder (its last other sender) is
        // gone; whatever was not delivered stays spooled.
        let _ = self.forwarder.send(FwdEvent::Shutdown);
        // Destroying librdkafka clients waits for their threads: not on the
        // async runtime that dropped the last handle.
        let readers = std::mem::take(&mut *self.readers.lock());
        let direct = self.direct.take();
        let meta = self.meta.clone();
        let _ = std::thread::Builder::new()
            .name("tollgate-kafka-drop".into())
            .spawn(move || drop((readers, direct, meta)));
    }
}

/// Open spools of this process: a second `connect` on the same path shares
/// the live engine, or waits until a dropped one has stopped writing.
struct Slot {
    engine: Weak<Engine>,
    done: Vec<watch::Receiver<bool>>,
}

static SPOOLS: LazyLock<tokio::sync::Mutex<HashMap<PathBuf, Slot>>> =
    LazyLock::new(|| tokio::sync::Mutex::new(HashMap::new()));

async fn wait_done(done: &[watch::Receiver<bool>], until: Instant) -> bool {
    for rx in done {
        let mut rx = rx.clone();
        let finished = tokio::time::timeout_at(until, rx.wait_for(|d| *d)).await;
        // A dropped sender means the thread is gone too.
        if let Ok(Err(_)) | Ok(Ok(_)) = finished {
            continue;
        }
        return false;
    }
    true
}

impl KafkaEventLog {
    /// Check the cluster and the topics, open the spool and start
    /// forwarding whatever it holds.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaEventLog, KafkaLogError> {
        config.validate()?;
        let startup_deadline = Instant::now() + Duration::from_millis(config.startup_timeout_ms);
        let spool_path =
            std::path::absolute(&config.spool_path).map_err(|source| KafkaLogError::SpoolIo {
                path: config.spool_path.display().to_string(),
                source,
            })?;
        let mut spools = SPOOLS.lock().await;
        if let Some(slot) = spools.get(&spool_path) {
            if let Some(engine) = slot.engine.upgrade() {
                if !engine.closed.load(Ordering::SeqCst) {
                    if *engine.config != config {
                        return Err(KafkaLogError::SpoolLocked {
                            path: format!(
                                "{} (open in this process with another configuration)",
                                spool_path.display()
                            ),
                        });
                    }
                    return Ok(KafkaEventLog { engine });
                }
            }
            if !wait_done(&slot.done, startup_deadline).await {
                return Err(KafkaLogError::SpoolLocked {
                    path: spool_path.display().to_string(),
                });
            }
        }
        let engine = Arc::new(Self::start(config, spool_path.clone()).await?);
        spools.insert(
            spool_path,
            Slot {
                engine: Arc::downgrade(&engine),
                done: engine.done.clone(),
            },
        );
        Ok(KafkaEventLog { engine })
    }

    async fn start(config: KafkaConfig, spool_path: PathBuf) -> Result<Engine, KafkaLogError> {
        for key in crate::config::PRODUCER_GUARANTEES {
            if let Some(value) = config.producer.get(*key) {
                tracing::warn!(key, value, "kafka.producer overrides a setting the event log's ordering and delivery guarantees rely on");
            }
        }
        let meta: Arc<BaseConsumer<LogContext>> =
            Arc::new(config.admin_client().create_with_context(LogContext)?);
        startup::ensure_topics(meta.clone(), &config).await?;

        let open_path = spool_path.clone();
        let durability = config.spool_durability;
        let max_bytes = config.spool_max_bytes;
        let (spool, reader) = tokio::task::spawn_blocking(move || {
            let spool = spool::open(&open_path, durability, max_bytes)?;
            let reader = spool::open_reader(&open_path)?;
            Ok::<_, KafkaLogError>((spool, reader))
        })
        .await
        .map_err(|e| KafkaLogError::Join(e.to_string()))??;

        let metrics = EventLogMetrics::new()?;
        metrics
            .spooled
            .set(i64::try_from(spool.state.records).unwrap_or(i64::MAX));
        let watermark = spool
            .state
            .first_seq
            .map_or(spool.state.last_seq, |first| first.saturating_sub(1));
        if spool.state.records > 0 {
            tracing::info!(
                spool = %spool_path.display(),
                records = spool.state.records,
                "resuming delivery of spooled event-log records"
            );
        }
        let config = Arc::new(config);
        let (fwd_tx, fwd_rx) = std::sync::mpsc::channel();
        let (writer_tx, writer_rx) = mpsc::channel(QUEUE_CAPACITY);
        let (delivered_tx, delivered_rx) = watch::channel(watermark);
        let (writer_done_tx, writer_done) = watch::channel(false);
        let (fwd_done_tx, fwd_done) = watch::channel(false);
        let writable = Arc::new(AtomicBool::new(true));
        let produced_ends = ProducedEnds::default();
        let producer = forwarder::create_producer(&config, &fwd_tx, 0)?;
        let last_seq = spool.state.last_seq;
        spool::spawn_writer(
            spool,
            writer_rx,
            WriterShared {
                metrics: metrics.clone(),
                writable: writable.clone(),
                forwarder: fwd_tx.clone(),
            },
            writer_done_tx,
        )?;
        Forwarder {
            config: config.clone(),
            producer,
            rx: fwd_rx,
            tx: fwd_tx.clone(),
            reader,
            writer: writer_tx.clone(),
            metrics: metrics.clone(),
            delivered_upto: delivered_tx,
            produced_ends: produced_ends.clone(),
            committed: last_seq,
            watermark,
        }
        .spawn(fwd_done_tx)
        .map_err(|e| KafkaLogError::Join(e.to_string()))?;
        Ok(Engine {
            max_record: config.max_record_bytes(),
            config,
            spool_path,
            writer: writer_tx,
            forwarder: fwd_tx,
            delivered: delivered_rx,
            metrics,
            writable,
            closed: AtomicBool::new(false),
            produced_ends,
            meta,
            readers: Mutex::new(HashMap::new()),
            partition_counts: Mutex::new(HashMap::new()),
            direct: OnceCell::new(),
            done: vec![writer_done, fwd_done],
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.engine.config
    }

    pub fn spool_path(&self) -> &std::path::Path {
        &self.engine.spool_path
    }

    /// The backend's metrics (to read, or to `register`).
    pub fn metrics(&self) -> &EventLogMetrics {
        &self.engine.metrics
    }

    /// Add the backend's metrics to `registry`.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), KafkaLogError> {
        Ok(self.engine.metrics.register(registry)?)
    }

    /// Records spooled and not yet acknowledged by Kafka.
    pub fn undelivered(&self) -> u64 {
        u64::try_from(self.engine.metrics.spooled.get()).unwrap_or_default()
    }

    pub fn is_closed(&self) -> bool {
        self.engine.closed.load(Ordering::SeqCst)
    }

    /// Wait until everything appended before this call is committed to the
    /// local spool (not yet to Kafka). Returns the spool sequence number.
    pub async fn sync_spool(&self) -> Result<u64, KafkaLogError> {
        let (done, wait) = oneshot::channel();
        self.engine
            .writer
            .send(WriterMsg::Barrier(done))
            .await
            .map_err(|_| KafkaLogError::Closed)?;
        match wait.await.map_err(|_| KafkaLogError::Closed)? {
            Ok(seq) => Ok(seq),
            Err(dropped) => Err(KafkaLogError::SpoolIo {
                path: self.engine.spool_path.display().to_string(),
                source: std::io::Error::other(format!("spool full: {dropped} records dropped")),
            }),
        }
    }

    /// Everything appended before the call delivered to Kafka, by `deadline`.
    async fn deliver_by(&self, deadline: Instant) -> Result<(), KafkaLogError> {
        let timeout_ms = self.engine.config.delivery_timeout_ms;
        let target = tokio::time::timeout_at(deadline, self.sync_spool())
            .await
            .map_err(|_| KafkaLogError::DeliveryTimeout {
                timeout_ms,
                remaining: self.undelivered(),
            })??;
        let mut delivered = self.engine.delivered.clone();
        let reached = tokio::time::timeout_at(deadline, delivered.wait_for(|w| *w >= target))
            .await
            .map(|r| r.map(|_| ()));
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(KafkaLogError::Closed),
            Err(_) => Err(KafkaLogError::DeliveryTimeout {
                timeout_ms,
                remaining: self.undelivered(),
            }),
        }
    }

    /// Shut down: try to deliver everything spooled within `timeout`, then
    /// stop; what is left stays in the spool for the next start. Appends
    /// fail with `Closed` from now on, on every handle of this spool.
    pub async fn close(&self, timeout: Duration) -> Result<CloseReport, KafkaLogError> {
        let engine = &self.engine;
        let deadline = Instant::now() + timeout;
        if !engine.closed.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.deliver_by(deadline).await {
                tracing::warn!(error = %e, "closing the event log before everything reached Kafka");
            }
            let _ = engine.forwarder.send(FwdEvent::Shutdown);
            let _ =
                tokio::time::timeout_at(deadline, engine.writer.send(WriterMsg::Shutdown)).await;
        }
        // Stopping takes a moment even when the deadline has passed.
        let grace = deadline.max(Instant::now() + Duration::from_secs(5));
        if !wait_done(&engine.done, grace).await {
            tracing::warn!("event-log threads still stopping");
        }
        let remaining = self.undelivered();
        if remaining > 0 {
            tracing::warn!(
                remaining,
                spool = %engine.spool_path.display(),
                "event-log records not yet in Kafka stay spooled; the next start delivers them"
            );
        }
        Ok(CloseReport { remaining })
    }

    fn check_record(&self, record: &LogRecord) -> Result<(), KafkaLogError> {
        let size = record.key.len() + record.payload.len();
        if size > self.engine.max_record {
            return Err(KafkaLogError::RecordTooLarge {
                size,
                max: self.engine.max_record,
            });
        }
        Ok(())
    }

    /// Produce `record` straight into `partition`, bypassing the spool, and
    /// wait for Kafka's acknowledgement (bounded by `delivery_timeout_ms`).
    /// For records whose loss is harmless (ticks); returns the offset.
    pub async fn append_to_partition(
        &self,
        record: LogRecord,
        partition: u32,
    ) -> Result<u64, KafkaLogError> {
        if self.is_closed() {
            return Err(KafkaLogError::Closed);
        }
        self.check_record(&record)?;
        let engine = &self.engine;
        let producer = engine
            .direct
            .get_or_try_init(|| async {
                engine
                    .config
                    .direct_producer_client()
                    .create_with_context::<_, FutureProducer<LogContext>>(LogContext)
            })
            .await?;
        let p = i32::try_from(partition).map_err(|_| KafkaLogError::UnknownPartition {
            topic: record.topic.clone(),
            partition,
        })?;
        let physical = engine.config.physical_topic(&record.topic);
        let timeout = Duration::from_millis(engine.config.delivery_timeout_ms);
        let delivery = producer
            .send(
                FutureRecord::to(physical)
                    .partition(p)
                    .key(record.key.as_bytes())
                    .payload(&record.payload)
                    .timestamp(chrono::Utc::now().timestamp_millis()),
                timeout,
            )
            .await
            .map_err(|(e, _)| match e.rdkafka_error_code() {
                Some(rdkafka::types::RDKafkaErrorCode::UnknownPartition) => {
                    KafkaLogError::UnknownPartition {
                        topic: record.topic.clone(),
                        partition,
                    }
                }
                _ => KafkaLogError::Kafka(e),
            })?;
        let next = u64::try_from(delivery.offset).map_or(0, |o| o + 1);
        let mut ends = engine.produced_ends.lock();
        let end = ends.entry((physical.to_owned(), p)).or_default();
        *end = (*end).max(next);
        Ok(next - 1)
    }

    /// Partition count of `topic`, from the cluster's metadata.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, KafkaLogError> {
        let meta = self.engine.meta.clone();
        let physical = self.engine.config.physical_topic(topic).to_owned();
        let timeout = Duration::from_millis(self.engine.config.delivery_timeout_ms);
        let logical = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = meta.fetch_metadata(Some(&physical), timeout)?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == physical) else {
                return Err(KafkaLogError::UnknownTopic(logical));
            };
            match t.error() {
                None => u32::try_from(t.partitions().len())
                    .map_err(|_| KafkaLogError::UnknownTopic(logical)),
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                    Err(KafkaLogError::UnknownTopic(logical))
                }
                Some(code) => Err(KafkaLogError::Kafka(
                    rdkafka::error::KafkaError::MetadataFetch(code.into()),
                )),
            }
        })
        .await
        .map_err(|e| KafkaLogError::Join(e.to_string()))?
    }

    fn enqueue(&self, record: LogRecord) -> Result<WriterMsg, LogRecord> {
        if self.is_closed() || self.check_record(&record).is_err() {
            return Err(record);
        }
        Ok(WriterMsg::Append(
            record,
            chrono::Utc::now().timestamp_millis(),
        ))
    }
}

#[async_trait]
impl EventLog for KafkaEventLog {
    async fn append(&self, record: LogRecord) -> Result<(), EventLogError> {
        if self.is_closed() {
            return Err(EventLogError::Closed);
        }
        self.check_record(&record)?;
        let msg = WriterMsg::Append(record, chrono::Utc::now().timestamp_millis());
        self.engine
            .writer
            .send(msg)
            .await
            .map_err(|_| EventLogError::Closed)
    }

    fn try_append(&self, record: LogRecord) -> Result<(), LogRecord> {
        let msg = self.enqueue(record)?;
        match self.engine.writer.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(WriterMsg::Append(r, _)))
            | Err(mpsc::error::TrySendError::Closed(WriterMsg::Append(r, _))) => Err(r),
            Err(_) => Ok(()),
        }
    }

    async fn flush(&self) -> Result<(), EventLogError> {
        let deadline =
            Instant::now() + Duration::from_millis(self.engine.config.delivery_timeout_ms);
        Ok(self.deliver_by(deadline).await?)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, EventLogError> {
        let engine = &self.engine;
        let slot = engine
            .readers
            .lock()
            .entry((topic.to_owned(), partition))
            .or_default()
            .clone();
        let physical = engine.config.physical_topic(topic).to_owned();
        let known_end = i32::try_from(partition)
            .ok()
            .and_then(|p| engine.produced_ends.lock().get(&(physical, p)).copied());
        let config = engine.config.clone();
        let topic = topic.to_owned();
        let timeout = Duration::from_millis(config.delivery_timeout_ms);
        let meta = engine.meta.clone();
        let records = tokio::task::spawn_blocking(move || {
            let mut slot = slot.lock();
            let cursor = match &mut *slot {
                Some(cursor) => cursor,
                empty => empty.insert(Cursor::new(&config, &topic, partition)?),
            };
            cursor.read(from_offset, max, known_end, timeout, &meta)
        })
        .await
        .map_err(|e| KafkaLogError::Join(e.to_string()))??;
        Ok(records)
    }

    fn is_writable(&self) -> bool {
        !self.is_closed()
            && self.engine.writable.load(Ordering::Relaxed)
            && !self.engine.writer.is_closed()
    }

    async fn partitions(&self, topic: &str) -> Result<u32, EventLogError> {
        if let Some((count, at)) = self.engine.partition_counts.lock().get(topic) {
            if at.elapsed() < PARTITION_COUNT_TTL {
                return Ok(*count);
            }
        }
        let count = self.partition_count(topic).await?;
        self.engine
            .partition_counts
            .lock()
            .insert(topic.to_owned(), (count, std::time::Instant::now()));
        Ok(count)
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        positions: Arc<dyn PositionSource>,
    ) -> Result<Box<dyn Subscription>, EventLogError> {
        // Fail fast on a topic that does not exist (a member would otherwise
        // wait for partitions forever).
        self.partition_count(topic).await?;
        let sub = KafkaSubscription::start(&self.engine.config, topic, group, positions).await?;
        Ok(Box::new(sub))
    }
}
