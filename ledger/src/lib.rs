//! The credits ledger: consumes usage, purchases, adjustments and ticks from
//! the account-events topic, books exact double-entry entries, keeps lots
//! (365-day expiry, earliest-expiring burnt first) and debt, and publishes
//! balance updates that gateways use for admission.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod engine;
pub mod input;
pub mod service;
pub mod spend;
pub mod sqlite;
pub mod text;
pub mod webhooks;

pub use engine::{Entry, EntryKind, Ledger, Lot};
pub use service::{BudgetSource, LedgerMetrics, LedgerService, NoBudgets};

/// Run `work` (SQLite) on a blocking thread at background priority, never
/// on an async worker; shared by the alert evaluator and the deliverer.
pub(crate) async fn on_blocking_thread<S, T>(
    this: std::sync::Arc<S>,
    work: impl FnOnce(&S) -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tollgate_sqlite::background_priority();
        work(&this)
    })
    .await
    .map_err(|e| LedgerError::Join(e.to_string()))?
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger storage failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ledger storage holds unreadable data: {0}")]
    Corrupt(String),
    #[error("event log: {0}")]
    Log(#[from] tollgate_eventlog::EventLogError),
    #[error("storage: {0}")]
    Store(#[from] tollgate_sqlite::StoreError),
    #[error("background task failed: {0}")]
    Join(String),
    /// A record from a newer build: applying it without the fields this
    /// build does not know could bill it wrongly, so the ledger stops.
    #[error("record {partition}/{offset}: {version}")]
    UnsupportedVersion {
        partition: u32,
        offset: u64,
        version: tollgate_core::UnsupportedVersion,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("webhook client: {0}")]
    Http(String),
}
