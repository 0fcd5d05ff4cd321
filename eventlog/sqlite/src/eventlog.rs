//! The embedded event log: an append-only SQLite table written by one
//! background thread with group commit.
//!
//! `append` only enqueues; the writer thread gathers what arrives within the
//! group-commit interval (2 ms by default, up to `max_batch`) and commits it
//! in one transaction. So the window a SIGKILL can lose is the records still
//! queued or in the commit under way (a few milliseconds), and a slow disk
//! makes batches larger rather than requests slower.
//!
//! Consumers in the same process (ledger, analytics, balance and control
//! tails) mostly read what was just written: the writer keeps its recently
//! committed records in memory (`Recent`), and a read that falls inside them
//! is answered from there instead of SQLite.

use crate::db::Database;
use crate::error::StoreError;
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tollgate_core::UsageEvent;
use tollgate_eventlog::group_commit::{self, GroupCommit, GroupCommitOptions, Round};
use tollgate_eventlog::{
    Batch, EventLog, EventLogError, LogRecord, PositionSource, StoredRecord, Subscription,
};

#[derive(Clone, Copy, Debug)]
pub struct SqliteEventLogOptions {
    /// Bound on queued, not-yet-committed records; appends wait when full.
    pub queue_capacity: usize,
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// How long the writer gathers records after the first one before
    /// committing them together. This is the window a SIGKILL can lose
    /// (plus the commit itself). Default 2 ms.
    pub group_commit: Duration,
    /// Payload bytes of recently committed records kept in memory for
    /// readers in this process. 0 turns the cache off.
    pub recent_bytes: usize,
    /// Past `recent_bytes`, records a subscription in this process has not
    /// read yet are still kept, up to this many bytes: a consumer busy
    /// writing a batch (analytics, the ledger) then reads what arrived
    /// meanwhile from memory, not back from SQLite. Once read, they go.
    pub recent_hold_bytes: usize,
}

impl Default for SqliteEventLogOptions {
    fn default() -> Self {
        SqliteEventLogOptions {
            queue_capacity: 65_536,
            max_batch: 8_192,
            group_commit: Duration::from_millis(2),
            recent_bytes: 2 << 20,
            recent_hold_bytes: 16 << 20,
        }
    }
}

/// SQLite's `cache_size` for the log's connections (negative: KiB).
const LOG_PAGE_CACHE_KIB: i64 = -256;

enum WriterMsg {
    Append(LogRecord, i64, Option<Arc<UsageEvent>>),
    Flush(oneshot::Sender<()>),
}

pub struct SqliteEventLog {
    tx: mpsc::Sender<WriterMsg>,
    reader: Arc<Mutex<Connection>>,
    recent: Arc<Mutex<Recent>>,
    writable: Arc<AtomicBool>,
}

/// Records this instance committed last, in offset order, with no gap:
/// offsets `first..first + records.len()` of the whole log (all topics).
/// Another process writing the same file breaks the run at our next commit,
/// which then starts a new one, so a range served from here is never
/// missing a record; a read past its end goes to SQLite.
struct Recent {
    records: VecDeque<StoredRecord>,
    bytes: usize,
    limit: usize,
    hold_limit: usize,
    /// Per subscription in this process: the offset up to which it has
    /// looked at the log (records before it are not held for it).
    cursors: HashMap<u64, u64>,
    next_reader: u64,
}

/// What a kept record counts against `recent_bytes`: its payload, and
/// about as much again for a decoded usage event riding along.
fn footprint(record: &StoredRecord) -> usize {
    let decoded = if record.usage.is_some() {
        record.payload.len()
    } else {
        0
    };
    record.payload.len() + decoded
}

impl Recent {
    fn new(limit: usize, hold_limit: usize) -> Recent {
        Recent {
            records: VecDeque::new(),
            bytes: 0,
            limit,
            hold_limit: hold_limit.max(limit),
            cursors: HashMap::new(),
            next_reader: 0,
        }
    }

    /// A subscription that will read from offset `at` on; its id.
    fn register(&mut self, at: u64) -> u64 {
        let id = self.next_reader;
        self.next_reader += 1;
        self.cursors.insert(id, at);
        id
    }

    fn unregister(&mut self, id: u64) {
        self.cursors.remove(&id);
        self.evict();
    }

    /// Drop the oldest records past `limit`, except ones a subscription
    /// has yet to read, which stay until `hold_limit`.
    fn evict(&mut self) {
        let unread_from = self.cursors.values().copied().min();
        while self.bytes > self.limit {
            let Some(oldest) = self.records.front() else {
                break;
            };
            let unread = unread_from.is_some_and(|from| oldest.offset >= from);
            if unread && self.bytes <= self.hold_limit {
                break;
            }
            if let Some(old) = self.records.pop_front() {
                self.bytes -= footprint(&old);
            }
        }
    }

    fn next_offset(&self) -> Option<u64> {
        self.records.back().map(|r| r.offset + 1)
    }

    fn push(&mut self, committed: Vec<StoredRecord>) {
        if self.limit == 0 {
            return;
        }
        let Some(first) = committed.first() else {
            return;
        };
        if self.next_offset() != Some(first.offset) {
            self.records.clear();
            self.bytes = 0;
        }
        for record in committed {
            self.bytes += footprint(&record);
            self.records.push_back(record);
        }
        self.evict();
    }

    /// Up to `max` records of `topic` from `from` on, if the run covers `from`.
    fn read(&self, topic: &str, from: u64, max: usize) -> Option<Vec<StoredRecord>> {
        let first = self.records.front()?.offset;
        if from < first || from >= first + self.records.len() as u64 {
            return None;
        }
        Some(
            self.records
                .range((from - first) as usize..)
                .filter(|r| r.topic == topic)
                .take(max)
                .cloned()
                .collect(),
        )
    }

    /// Subscription `id` has looked at the log up to (not including)
    /// offset `to`: nothing before it is held for it any more.
    fn looked(&mut self, id: u64, to: u64) {
        if let Some(cursor) = self.cursors.get_mut(&id) {
            *cursor = to;
            self.evict();
        }
    }
}

impl SqliteEventLog {
    /// Queue without waiting; the record comes back when the queue is full.
    fn queue(&self, record: LogRecord, usage: Option<Arc<UsageEvent>>) -> Result<(), LogRecord> {
        match self.tx.try_send(WriterMsg::Append(record, now_ms(), usage)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(WriterMsg::Append(r, _, _)))
            | Err(mpsc::error::TrySendError::Closed(WriterMsg::Append(r, _, _))) => Err(r),
            Err(_) => Ok(()),
        }
    }

    pub fn open(
        db: &Database,
        options: SqliteEventLogOptions,
    ) -> Result<SqliteEventLog, StoreError> {
        let writer_conn = db.connect()?;
        let reader_conn = db.connect()?;
        // Appends touch only the newest pages, and most reads are served
        // from `Recent`: a small page cache each keeps the process lean.
        for conn in [&writer_conn, &reader_conn] {
            conn.pragma_update(None, "cache_size", LOG_PAGE_CACHE_KIB)?;
        }
        let reader = Arc::new(Mutex::new(reader_conn));
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writable = Arc::new(AtomicBool::new(true));
        let writer_flag = writable.clone();
        let recent = Arc::new(Mutex::new(Recent::new(
            options.recent_bytes,
            options.recent_hold_bytes,
        )));
        let writer_recent = recent.clone();
        std::thread::Builder::new()
            .name("tollgate-eventlog-writer".into())
            .spawn(move || {
                crate::background_priority();
                let writer = LogWriter {
                    conn: writer_conn,
                    writable: writer_flag,
                    recent: writer_recent,
                    waiters: Vec::new(),
                };
                let options = GroupCommitOptions {
                    max_batch: options.max_batch,
                    gather: options.group_commit,
                };
                group_commit::run(writer, rx, options);
            })
            .map_err(|e| StoreError::Join(e.to_string()))?;
        Ok(SqliteEventLog {
            tx,
            reader,
            recent,
            writable,
        })
    }

    /// Records in the log for `topic` (all partitions; the embedded log has one).
    pub fn count(&self, topic: &str) -> Result<u64, StoreError> {
        let conn = self.reader.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM log_records WHERE topic = ?1",
            [topic],
            |row| row.get(0),
        )?;
        Ok(n as u64)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The log's side of the group-commit writer: records go to `log_records`,
/// flushes are answered once the round they closed is committed.
struct LogWriter {
    conn: Connection,
    writable: Arc<AtomicBool>,
    recent: Arc<Mutex<Recent>>,
    waiters: Vec<oneshot::Sender<()>>,
}

impl GroupCommit for LogWriter {
    type Msg = WriterMsg;
    type Record = Pending;
    type Committed = Vec<u64>;
    type Error = rusqlite::Error;

    fn gather(&mut self, msg: WriterMsg, batch: &mut Vec<Pending>) -> bool {
        match msg {
            WriterMsg::Append(record, ts, usage) => batch.push((record, ts, usage)),
            WriterMsg::Flush(done) => self.waiters.push(done),
        }
        false
    }

    fn commit(&mut self, batch: &[Pending]) -> Result<Vec<u64>, rusqlite::Error> {
        commit(&mut self.conn, batch)
    }

    /// A failed commit (disk full, I/O error) is retried, never dropped.
    fn failed(&mut self, err: rusqlite::Error, batch: &[Pending]) -> bool {
        self.writable.store(false, Ordering::Relaxed);
        tracing::error!(error = %err, records = batch.len(), "event log commit failed; retrying");
        true
    }

    fn finish(&mut self, batch: &mut Vec<Pending>, round: Round<Vec<u64>>) {
        self.writable.store(true, Ordering::Relaxed);
        if let Round::Committed(offsets) = round {
            let committed = batch
                .drain(..)
                .zip(offsets)
                .map(|((record, ts, usage), offset)| StoredRecord {
                    topic: record.topic,
                    partition: 0,
                    offset,
                    key: record.key,
                    payload: record.payload.into(),
                    timestamp_ms: ts,
                    usage,
                })
                .collect();
            self.recent.lock().push(committed);
        }
        for done in self.waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Commit `batch` in one transaction; returns the records' offsets.
type Pending = (LogRecord, i64, Option<Arc<UsageEvent>>);

fn commit(conn: &mut Connection, batch: &[Pending]) -> Result<Vec<u64>, rusqlite::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let tx = conn.transaction()?;
    let mut offsets = Vec::with_capacity(batch.len());
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO log_records (topic, record_key, timestamp_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (record, ts, _) in batch {
            stmt.execute(rusqlite::params![
                record.topic,
                record.key,
                ts,
                record.payload
            ])?;
            offsets.push(tx.last_insert_rowid() as u64);
        }
    }
    tx.commit()?;
    Ok(offsets)
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(&self, record: LogRecord) -> Result<(), EventLogError> {
        self.tx
            .send(WriterMsg::Append(record, now_ms(), None))
            .await
            .map_err(|_| EventLogError::Closed)
    }

    fn try_append(&self, record: LogRecord) -> Result<(), LogRecord> {
        self.queue(record, None)
    }

    fn try_append_usage(&self, record: LogRecord, usage: Arc<UsageEvent>) -> Result<(), LogRecord> {
        self.queue(record, Some(usage))
    }

    async fn flush(&self) -> Result<(), EventLogError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(WriterMsg::Flush(done))
            .await
            .map_err(|_| EventLogError::Closed)?;
        wait.await.map_err(|_| EventLogError::Closed)
    }

    async fn read(
        &self,
        topic: &str,
        _partition: u32,
        from_offset: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, EventLogError> {
        read_records(&self.reader, &self.recent, None, topic, from_offset, max).await
    }

    fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    async fn partitions(&self, _topic: &str) -> Result<u32, EventLogError> {
        Ok(1)
    }

    async fn subscribe(
        &self,
        topic: &str,
        _group: &str,
        positions: Arc<dyn PositionSource>,
    ) -> Result<Box<dyn Subscription>, EventLogError> {
        // One partition, one member: the group is trivially this consumer.
        let next = positions.next_offset(topic, 0).unwrap_or(0);
        let reader_id = self.recent.lock().register(next);
        Ok(Box::new(EmbeddedSubscription {
            reader: self.reader.clone(),
            recent: self.recent.clone(),
            reader_id,
            topic: topic.to_owned(),
            next,
        }))
    }
}

/// Polls the log table from the consumer's position.
struct EmbeddedSubscription {
    reader: Arc<Mutex<Connection>>,
    recent: Arc<Mutex<Recent>>,
    /// This subscription's id in `recent` (which holds what it has not read).
    reader_id: u64,
    topic: String,
    next: u64,
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        self.recent.lock().unregister(self.reader_id);
    }
}

/// How often an idle embedded subscription looks for new records.
const EMBEDDED_POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Batch>, EventLogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let records = read_records(
                &self.reader,
                &self.recent,
                Some(self.reader_id),
                &self.topic,
                self.next,
                max,
            )
            .await?;
            if let Some(last) = records.last() {
                self.next = last.offset + 1;
                return Ok(Some(Batch {
                    partition: 0,
                    records,
                }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(EMBEDDED_POLL.min(deadline - now)).await;
        }
    }

    async fn commit(&mut self, _partition: u32, _next_offset: u64) -> Result<(), EventLogError> {
        // The consumer's own state holds its position; nothing to do here.
        Ok(())
    }

    fn assigned(&self) -> Vec<u32> {
        vec![0]
    }
}

async fn read_records(
    reader: &Arc<Mutex<Connection>>,
    recent: &Mutex<Recent>,
    subscription: Option<u64>,
    topic: &str,
    from_offset: u64,
    max: usize,
) -> Result<Vec<StoredRecord>, EventLogError> {
    let run_end = {
        let mut recent = recent.lock();
        let run_end = recent.next_offset();
        if let Some(records) = recent.read(topic, from_offset, max) {
            // Everything from `from_offset` to the newest record we wrote.
            if !records.is_empty() {
                if let (Some(id), Some(run_end)) = (subscription, run_end) {
                    recent.looked(id, looked_to(&records, max, run_end));
                }
                return Ok(records);
            }
        }
        run_end
    };
    let records = read_file(reader, topic, from_offset, max).await?;
    if let (Some(id), Some(run_end)) = (subscription, run_end) {
        // The file held at least everything the run did when it was read.
        recent
            .lock()
            .looked(id, looked_to(&records, max, run_end).max(from_offset));
    }
    Ok(records)
}

/// How far a read of up to `max` records has looked: a full batch up to
/// its last record, a short one through everything there was.
fn looked_to(records: &[StoredRecord], max: usize, end: u64) -> u64 {
    match records.last() {
        Some(last) if records.len() >= max => last.offset + 1,
        _ => end,
    }
}

async fn read_file(
    reader: &Arc<Mutex<Connection>>,
    topic: &str,
    from_offset: u64,
    max: usize,
) -> Result<Vec<StoredRecord>, EventLogError> {
    let reader = reader.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::background_priority();
        let conn = reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT log_offset, record_key, payload, timestamp_ms FROM log_records
             WHERE topic = ?1 AND log_offset >= ?2 ORDER BY log_offset LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            rusqlite::params![topic, from_offset as i64, max as i64],
            |row| {
                Ok(StoredRecord {
                    topic: topic.clone(),
                    partition: 0,
                    offset: row.get::<_, i64>(0)? as u64,
                    key: row.get(1)?,
                    payload: row.get::<_, Vec<u8>>(2)?.into(),
                    timestamp_ms: row.get(3)?,
                    usage: None,
                })
            },
        )?;
        rows.collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| EventLogError::Storage(e.to_string()))?
    .map_err(|e| EventLogError::Storage(e.to_string()))
}
