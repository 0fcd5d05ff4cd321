//! Tollgate analytics: the usage-event sink, the usage stores (ClickHouse at
//! scale, SQLite embedded), rollups, retention and the usage query API.
//!
//! Wiring (see docs/analytics.md):
//! 1. `open_store(&config, &db)` then `migrate(&*store)` (also what
//!    `tollgate migrate` calls);
//! 2. `Sink::new(log, store.clone(), config.sink, metrics).spawn()`;
//! 3. `api::router(store, authorizer)` merged into the HTTP server;
//! 4. `spawn_retention(store, config.retention)` when retention is set.

pub mod api;
pub mod clickhouse;
mod error;
pub mod metrics;
pub mod model;
pub mod sink;
pub mod sqlite;
pub mod store;

pub use crate::clickhouse::{ClickHouseCompression, ClickHouseConfig, ClickHouseStore};
pub use api::{router, Authorizer, Scope, TokenAuthorizer};
pub use error::AnalyticsError;
pub use metrics::AnalyticsMetrics;
pub use model::{Bucket, GroupBy, StatusClass, UsageGroup, UsageQuery, UsageRecord};
pub use sink::{Sink, SinkConfig, SinkHandle, StorePositions, CONSUMER_GROUP};
pub use sqlite::SqliteUsageStore;
pub use store::{RetentionOutcome, UsageStore, WriteBatch};

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Which usage store backs analytics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Tables in Tollgate's SQLite file: nothing to install.
    #[default]
    Sqlite,
    ClickHouse,
}

/// Retention: whole months are dropped (ClickHouse: `DROP PARTITION`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Months kept before the current one (3 in June keeps March..June);
    /// None keeps everything.
    pub months: Option<u32>,
    /// How often the retention task runs.
    pub check_every_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            months: None,
            check_every_s: 3_600,
        }
    }
}

/// The `[analytics]` configuration section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    pub backend: Backend,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub retention: RetentionConfig,
}

/// The configured store. SQLite tables are migrated on open; call
/// [`migrate`] for ClickHouse (it needs the server).
pub fn open_store(
    config: &AnalyticsConfig,
    db: &tollgate_sqlite::Database,
) -> Result<Arc<dyn UsageStore>, AnalyticsError> {
    Ok(match config.backend {
        Backend::Sqlite => Arc::new(SqliteUsageStore::open(db)?),
        Backend::ClickHouse => Arc::new(ClickHouseStore::new(config.clickhouse.clone())),
    })
}

/// Apply the store's pending migrations (idempotent): at startup and from
/// the binary's `migrate` command.
pub async fn migrate(store: &dyn UsageStore) -> Result<(), AnalyticsError> {
    store.migrate().await
}

/// Run retention now and then every `check_every_s`; None when retention
/// is not configured.
pub fn spawn_retention(
    store: Arc<dyn UsageStore>,
    config: RetentionConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    let months = config.months?;
    let every = Duration::from_secs(config.check_every_s.max(1));
    Some(tokio::spawn(async move {
        loop {
            match store.apply_retention(months, chrono::Utc::now()).await {
                Ok(outcome) if !outcome.months_dropped.is_empty() => {
                    tracing::info!(backend = store.backend(), months = ?outcome.months_dropped, rows = outcome.rows_deleted, "analytics retention dropped old months");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(backend = store.backend(), error = %err, "analytics retention failed; will retry");
                }
            }
            tokio::time::sleep(every).await;
        }
    }))
}
