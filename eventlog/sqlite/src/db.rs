use crate::error::StoreError;
use crate::migrate::Migrations;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How hard a commit presses data to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL + synchronous=NORMAL: a committed record survives a process crash
    /// (SIGKILL); an OS crash or power loss may lose the last commits.
    #[default]
    Normal,
    /// synchronous=FULL: each commit is fsynced; survives power loss.
    Full,
}

/// The event log's migrations (its version table keeps the name releases
/// before the shared module gave it).
const MIGRATIONS: Migrations = Migrations {
    table: "schema_migrations",
    steps: &[
        // 1: the event log. Control-plane state lives on the log itself.
        "CREATE TABLE log_records (
        log_offset INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        record_key TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        payload BLOB NOT NULL
     );
     CREATE INDEX log_records_topic ON log_records (topic, log_offset);",
    ],
};

/// WAL pages after which a commit checkpoints (SQLite's default is 1,000).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// A handle on the database file; cheap to clone, opens connections on demand.
#[derive(Clone, Debug)]
pub struct Database {
    path: PathBuf,
    durability: Durability,
}

impl Database {
    /// Open (creating if needed) the file and apply pending migrations.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Database, StoreError> {
        let db = Database {
            path: path.as_ref().to_path_buf(),
            durability,
        };
        if let Some(parent) = db.path.parent() {
            if !parent.as_os_str().is_empty() {
                let _ = std::fs::create_dir_all(parent);
            }
        }
        let mut conn = db.connect()?;
        MIGRATIONS.apply(&mut conn)?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new connection with Tollgate's pragmas.
    pub fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match self.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every connection that commits may run the checkpoint. At SQLite's
        // default of 1,000 pages the event-log writer, the ledger and the
        // analytics writer would each copy the WAL back and fsync several
        // times a second under load; every ~40 MB costs far less per event,
        // and the WAL file stays bounded.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        Ok(conn)
    }
}
