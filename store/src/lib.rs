//! The embedded backend: a single SQLite file in WAL mode holds the event
//! log and the control-plane tables. No server to install.

mod db;
mod error;
mod eventlog;
mod keys;

pub use db::{Database, Durability};
pub use error::StoreError;
pub use eventlog::{SqliteEventLog, SqliteEventLogOptions};
pub use keys::{AccessKeyRecord, Account, KeyStore, NewAccessKey};
