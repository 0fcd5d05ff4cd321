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
use tollgate_eventlog::group_commit::{self, GroupCommit, GroupCommitOptions, Round};
use tollgate_eventlog::LogRecord;
use tollgate_sqlite::Migrations;

/// Most records committed in one transaction.
const MAX_BATCH: usize = 8_192;
/// The spool file's schema. Step 1 is `IF NOT EXISTS`: spools written before
/// the file had a version table already hold it.
const SPOOL_MIGRATIONS: Migrations = Migrations {
    table: "spool_migrations",
    steps: &["CREATE TABLE IF NOT EXISTS spool (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         topic TEXT NOT NULL,
         record_key TEXT NOT NULL,
         payload BLOB NOT NULL,
         timestamp_ms INTEGER NOT NULL
     );"],
};

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
    let mut writer = Connection::open(path).map_err(KafkaLogError::spool(path))?;
    let setup = |writer: &mut Connection| -> rusqlite::Result<SpoolState> {
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
        SPOOL_MIGRATIONS.apply(writer)?;
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
    let state = setup(&mut writer).map_err(err)?;
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
            let writer = SpoolWriter {
                path: &path,
                conn: writer,
                shared: &shared,
                last_seq: state.last_seq,
                barriers: Vec::new(),
                trim: None,
                trimmed: 0,
                last_vacuum: Instant::now(),
            };
            let options = GroupCommitOptions {
                max_batch: MAX_BATCH,
                gather: Duration::ZERO,
            };
            group_commit::run(writer, rx, options);
            // The lock goes only after the last write.
            drop(lock);
            let _ = done.send(true);
        })
        .map(|_| ())
        .map_err(|e| KafkaLogError::Join(e.to_string()))
}

/// The spool's side of the group-commit writer: it also trims what Kafka
/// acknowledged, and answers barriers with the round's outcome.
struct SpoolWriter<'a> {
    path: &'a Path,
    conn: Connection,
    shared: &'a WriterShared,
    last_seq: u64,
    barriers: Vec<oneshot::Sender<Result<u64, u64>>>,
    trim: Option<u64>,
    trimmed: u64,
    last_vacuum: Instant,
}

impl GroupCommit for SpoolWriter<'_> {
    type Msg = WriterMsg;
    type Record = (LogRecord, i64);
    type Committed = u64;
    type Error = rusqlite::Error;

    fn gather(&mut self, msg: WriterMsg, batch: &mut Vec<(LogRecord, i64)>) -> bool {
        match msg {
            WriterMsg::Append(record, ts) => batch.push((record, ts)),
            WriterMsg::Barrier(done) => self.barriers.push(done),
            WriterMsg::Trim(seq) => self.trim = self.trim.max(Some(seq)),
            WriterMsg::Shutdown => return true,
        }
        false
    }

    /// Trim first, in its own transaction: it frees pages for the appends,
    /// and a full spool must not roll it back.
    fn before_commit(&mut self) {
        let Some(upto) = self.trim.take().filter(|t| *t > self.trimmed) else {
            return;
        };
        match self
            .conn
            .execute("DELETE FROM spool WHERE seq <= ?1", [upto as i64])
        {
            Ok(_) => {
                self.trimmed = upto;
                // Empty again after a backlog: give the space back.
                if upto >= self.last_seq && self.last_vacuum.elapsed() > Duration::from_secs(60) {
                    self.last_vacuum = Instant::now();
                    if let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum") {
                        tracing::debug!(error = %e, "spool vacuum failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(spool = %self.path.display(), error = %e, "spool trim failed; retrying later");
                self.trim = Some(upto);
            }
        }
    }

    fn commit(&mut self, batch: &[(LogRecord, i64)]) -> rusqlite::Result<u64> {
        commit(&mut self.conn, batch)
    }

    /// A full spool (disk or `spool_max_bytes`) drops the batch; other
    /// failures are retried: the bounded queue then pushes back on appenders.
    fn failed(&mut self, err: rusqlite::Error, batch: &[(LogRecord, i64)]) -> bool {
        self.shared.writable.store(false, Ordering::Relaxed);
        if matches!(&err, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::DiskFull) {
            self.shared.metrics.dropped.inc_by(batch.len() as u64);
            tracing::error!(
                spool = %self.path.display(),
                dropped = batch.len(),
                "EVENTS LOST: the event spool is full (disk or spool_max_bytes); \
                 records that Kafka has not acknowledged yet fill it"
            );
            return false;
        }
        tracing::error!(spool = %self.path.display(), error = %err, records = batch.len(), "spool commit failed; retrying");
        true
    }

    fn finish(&mut self, batch: &mut Vec<(LogRecord, i64)>, round: Round<u64>) {
        let outcome = match round {
            Round::Empty => Ok(self.last_seq),
            Round::Committed(seq) => {
                self.shared.writable.store(true, Ordering::Relaxed);
                self.shared.metrics.appended.inc_by(batch.len() as u64);
                self.shared.metrics.spooled.add(batch.len() as i64);
                self.last_seq = seq;
                let _ = self.shared.forwarder.send(FwdEvent::Committed(seq));
                Ok(seq)
            }
            Round::Dropped => Err(batch.len() as u64),
        };
        for done in self.barriers.drain(..) {
            let _ = done.send(outcome);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A spool an earlier release wrote (its table, no version table) opens
    /// with its records and sequence, and records its schema version.
    #[test]
    fn a_spool_from_before_the_version_table_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE spool (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     topic TEXT NOT NULL,
                     record_key TEXT NOT NULL,
                     payload BLOB NOT NULL,
                     timestamp_ms INTEGER NOT NULL
                 );
                 INSERT INTO spool (topic, record_key, payload, timestamp_ms)
                     VALUES ('t', 'a', x'01', 1), ('t', 'b', x'02', 2), ('t', 'c', x'03', 3);
                 DELETE FROM spool WHERE seq = 1;",
            )
            .unwrap();
        let spool = open(&path, SpoolDurability::Normal, 0).unwrap();
        assert_eq!(spool.state.last_seq, 3);
        assert_eq!(spool.state.records, 2);
        assert_eq!(spool.state.first_seq, Some(2));
        let versions: i64 = spool
            .writer
            .query_row("SELECT MAX(version) FROM spool_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(versions, 1);
        assert_eq!(read_after(&spool.writer, 0, 10).unwrap().len(), 2);
    }
}
