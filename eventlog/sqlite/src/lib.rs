//! The embedded backend: a single SQLite file in WAL mode holding the event
//! log (and, as they land, the ledger and usage tables). No server to install.

mod background;
mod db;
mod error;
mod eventlog;
mod migrate;

pub use background::background_priority;

pub use db::{Database, Durability};
pub use error::StoreError;
pub use eventlog::{SqliteEventLog, SqliteEventLogOptions};
pub use migrate::Migrations;
