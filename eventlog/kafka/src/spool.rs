//! The local durable spool: an SQLite table (WAL) that every appended record
//! is committed to before Kafka sees it.
//!
//! One writer thread owns all writes: it takes whatever is queued and
//! commits it in one transaction (group commit), and it deletes what the
//! forwarder reports as acknowledged. The forwarder reads through its own
//! connection (WAL readers never block the writer).

use crate::config::SpoolDurability;
use crate::error::KafkaLogError;
use crate::forwarder::FwdEvent;
use crate::metrics::EventLogMetrics;
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tollgate_eventlog::LogRecord;

/// Most records committed in one transaction.
const MAX_BATCH: usize = 8_192;
/// SQLite page size assumed when turning `spool_max_bytes` into pages.
const PAGE_SIZE: u64 = 4_096;

pub(crate) struct SpoolRow {
    pub seq: u64,
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
}

pub(crate) enum WriterMsg {
    Append(LogRecord, i64),
    /// Answered once everything queued before it is committed: the last
    /// sequence number committed, or Err(n) when the batch it closed was
    /// dropped because the spool is full.
    Barrier(oneshot::Sender<Result<u64, u64>>),
    /// Delete every record up to and including this sequence number.
    Trim(u64),
    /// Commit what is queued before it, then stop.
    Shutdown,
}

/// What the spool held when it was opened.
pub(crate) struct SpoolState {
    /// Highest sequence number ever assigned (0 for a new spool).
    pub last_seq: u64,
    /// Records in the spool (all undelivered, since delivered ones are deleted).
    pub records: u64,
    /// Lowest sequence number present.
    pub first_seq: Option<u64>,
}

pub(crate) struct Spool {
    pub path: PathBuf,
    pub writer: Connection,
    /// Holds an exclusive lock on `<spool>.lock` for the writer's lifetime,
    /// so two processes never forward (and trim) the same spool.
    pub lock: Connection,
    pub state: SpoolState,
}

pub(crate) fn open(
    path: &Path,
    durability: SpoolDurability,
    max_bytes: u64,
) -> Result<Spool, KafkaLogError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| KafkaLogError::SpoolIo {
            path: path.display().to_string(),
            source,
        })?;
    }
    let lock = lock(path)?;
    let err = KafkaLogError::spool(path);
    let writer = Connection::open(path).map_err(KafkaLogError::spool(path))?;
    let setup = || -> rusqlite::Result<SpoolState> {
        // Must precede the first table: lets the file shrink after an outage.
        writer.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(
            None,
            "synchronous",
            match durability {
                SpoolDurability::Normal => "NORMAL",
                SpoolDurability::Full => "FULL",
            },
        )?;
        writer.busy_timeout(Duration::from_secs(5))?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS spool (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 topic TEXT NOT NULL,
                 record_key TEXT NOT NULL,
                 payload BLOB NOT NULL,
                 timestamp_ms INTEGER NOT NULL
             );",
        )?;
        if max_bytes > 0 {
            // SQLite answers SQLITE_FULL past this, exactly as on a full disk.
            let pages = (max_bytes / PAGE_SIZE).max(1);
            writer.pragma_update(None, "max_page_count", pages as i64)?;
        }
        let last_seq: Option<i64> = writer
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'spool'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let (records, first): (i64, Option<i64>) =
            writer.query_row("SELECT COUNT(*), MIN(seq) FROM spool", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(SpoolState {
            last_seq: last_seq.unwrap_or(0).max(0) as u64,
            records: records.max(0) as u64,
            first_seq: first.map(|s| s.max(0) as u64),
        })
    };
    let state = setup().map_err(err)?;
    Ok(Spool {
        path: path.to_owned(),
        writer,
        lock,
        state,
    })
}

fn lock(path: &Path) -> Result<Connection, KafkaLogError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let conn = Connection::open(&lock_path).map_err(KafkaLogError::spool(&lock_path))?;
    let held = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(1))?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.execute_batch("BEGIN EXCLUSIVE")
    };
    match held() {
        Ok(()) => Ok(conn),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            Err(KafkaLogError::SpoolLocked {
                path: path.display().to_string(),
            })
        }
        Err(e) => Err(KafkaLogError::spool(&lock_path)(e)),
    }
}

/// A read-only connection for the forwarder.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, KafkaLogError> {
    let conn = Connection::open(path).map_err(KafkaLogError::spool(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(KafkaLogError::spool(path))?;
    Ok(conn)
}

/// Up to `limit` spooled records after sequence number `after`, in order.
pub(crate) fn read_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<SpoolRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, topic, record_key, payload, timestamp_ms FROM spool
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![after as i64, limit as i64], |r| {
        Ok(SpoolRow {
            seq: r.get::<_, i64>(0)?.max(0) as u64,
            topic: r.get(1)?,
            key: r.get(2)?,
            payload: r.get(3)?,
            timestamp_ms: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Shared between the writer thread and the handles.
pub(crate) struct WriterShared {
    pub metrics: EventLogMetrics,
    /// False while the last commit failed (readiness).
    pub writable: Arc<AtomicBool>,
    pub forwarder: std::sync::mpsc::Sender<FwdEvent>,
}

pub(crate) fn spawn_writer(
    spool: Spool,
    rx: mpsc::Receiver<WriterMsg>,
    shared: WriterShared,
    done: tokio::sync::watch::Sender<bool>,
) -> Result<(), KafkaLogError> {
    std::thread::Builder::new()
        .name("tollgate-kafka-spool".into())
        .spawn(move || {
            let Spool {
                path,
                writer,
                lock,
                state,
            } = spool;
            writer_loop(&path, writer, rx, &shared, state.last_seq);
            // The lock goes only after the last write.
            drop(lock);
            let _ = done.send(true);
        })
        .map(|_| ())
        .map_err(|e| KafkaLogError::Join(e.to_string()))
}

fn writer_loop(
    path: &Path,
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriterMsg>,
    shared: &WriterShared,
    mut last_seq: u64,
) {
    let mut batch: Vec<(LogRecord, i64)> = Vec::with_capacity(MAX_BATCH);
    let mut barriers = Vec::new();
    let mut trim: Option<u64> = None;
    let mut trimmed = 0u64;
    let mut last_vacuum = Instant::now();
    let mut stop = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Append(record, ts) => batch.push((record, ts)),
                WriterMsg::Barrier(done) => barriers.push(done),
                WriterMsg::Trim(seq) => trim = trim.max(Some(seq)),
                WriterMsg::Shutdown => stop = true,
            }
            if batch.len() < MAX_BATCH && !stop {
                next = rx.try_recv().ok();
            }
        }
        // Trim first, in its own transaction: it frees pages for the
        // appends, and a full spool must not roll it back.
        if let Some(upto) = trim.take().filter(|t| *t > trimmed) {
            match conn.execute("DELETE FROM spool WHERE seq <= ?1", [upto as i64]) {
                Ok(_) => {
                    trimmed = upto;
                    // Empty again after a backlog: give the space back.
                    if upto >= last_seq && last_vacuum.elapsed() > Duration::from_secs(60) {
                        last_vacuum = Instant::now();
                        if let Err(e) = conn.execute_batch("PRAGMA incremental_vacuum") {
                            tracing::debug!(error = %e, "spool vacuum failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(spool = %path.display(), error = %e, "spool trim failed; retrying later");
                    trim = Some(upto);
                }
            }
        }
        let outcome = commit_with_retry(path, &mut conn, &batch, shared);
        if let Ok(Some(seq)) = outcome {
            last_seq = seq;
            let _ = shared.forwarder.send(FwdEvent::Committed(seq));
        }
        batch.clear();
        for done in barriers.drain(..) {
            let _ = done.send(match outcome {
                Err(n) => Err(n),
                Ok(_) => Ok(last_seq),
            });
        }
        if stop {
            break;
        }
    }
}

/// Commit `batch`; Ok(last seq) or Ok(None) for an empty batch; Err(n)
/// when the spool is full and the n records were dropped. Other failures
/// are retried: the bounded queue then pushes back on appenders.
fn commit_with_retry(
    path: &Path,
    conn: &mut Connection,
    batch: &[(LogRecord, i64)],
    shared: &WriterShared,
) -> Result<Option<u64>, u64> {
    if batch.is_empty() {
        return Ok(None);
    }
    let mut backoff = Duration::from_millis(10);
    loop {
        match commit(conn, batch) {
            Ok(seq) => {
                shared.writable.store(true, Ordering::Relaxed);
                shared.metrics.appended.inc_by(batch.len() as u64);
                shared.metrics.spooled.add(batch.len() as i64);
                return Ok(Some(seq));
            }
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::DiskFull => {
                shared.writable.store(false, Ordering::Relaxed);
                shared.metrics.dropped.inc_by(batch.len() as u64);
                tracing::error!(
                    spool = %path.display(),
                    dropped = batch.len(),
                    "EVENTS LOST: the event spool is full (disk or spool_max_bytes); \
                     records that Kafka has not acknowledged yet fill it"
                );
                return Err(batch.len() as u64);
            }
            Err(e) => {
                shared.writable.store(false, Ordering::Relaxed);
                tracing::error!(spool = %path.display(), error = %e, records = batch.len(), "spool commit failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn commit(conn: &mut Connection, batch: &[(LogRecord, i64)]) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut last = 0;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO spool (topic, record_key, payload, timestamp_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (record, ts) in batch {
            stmt.execute(rusqlite::params![
                record.topic,
                record.key,
                record.payload,
                ts
            ])?;
            last = tx.last_insert_rowid();
        }
    }
    tx.commit()?;
    Ok(last.max(0) as u64)
}
