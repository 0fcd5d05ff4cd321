//! A process's node: its storage, its event log and the control plane on
//! it, which every role runs on; and the secrets those need.

use crate::config::{Config, EventLogBackend};
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tollgate_control::{ControlPlane, MasterKey};
use tollgate_core::Catalog;
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;
use tollgate_kafka::KafkaEventLog;
use tollgate_ledger::LedgerService;
use tollgate_proxy::Gateway;
use tollgate_sqlite::{Database, SqliteEventLog, SqliteEventLogOptions};

/// How long shutdown waits for Kafka to take what is spooled (the rest is
/// delivered on the next start).
const KAFKA_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub const MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
pub const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// The event log this process uses, with what its backend needs at shutdown.
#[derive(Clone)]
pub enum LogBackend {
    Embedded(Arc<SqliteEventLog>),
    Kafka(Arc<KafkaEventLog>),
}

impl LogBackend {
    pub fn log(&self) -> Arc<dyn EventLog> {
        match self {
            LogBackend::Embedded(log) => log.clone(),
            LogBackend::Kafka(log) => log.clone(),
        }
    }

    /// Ticks into every partition of the account-events topic.
    pub(crate) fn spawn_ticker(&self, every: Duration) -> JoinHandle<()> {
        match self {
            LogBackend::Embedded(log) => LedgerService::spawn_ticker(log.clone(), every),
            LogBackend::Kafka(log) => {
                tollgate_kafka::spawn_ticker(log.clone(), topics::ACCOUNT_EVENTS, every)
            }
        }
    }

    /// Make everything appended durable (embedded) or delivered/spooled (Kafka).
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        match self {
            LogBackend::Embedded(log) => log.flush().await.context("flushing the event log")?,
            LogBackend::Kafka(log) => {
                let report = log.close(KAFKA_CLOSE_TIMEOUT).await?;
                if report.remaining > 0 {
                    tracing::warn!(
                        remaining = report.remaining,
                        "events left in the local spool; they are delivered on the next start"
                    );
                }
            }
        }
        Ok(())
    }
}

/// A process's storage: the local SQLite file (ledger state; in embedded
/// mode also the log) and the event log.
pub struct Node {
    pub db: Database,
    pub backend: LogBackend,
    pub log: Arc<dyn EventLog>,
    /// True when the log held no control-plane state before this start.
    pub fresh: bool,
}

pub async fn open_node(config: &Config) -> anyhow::Result<Node> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let backend = match config.eventlog.backend {
        EventLogBackend::Embedded => LogBackend::Embedded(Arc::new(SqliteEventLog::open(
            &db,
            SqliteEventLogOptions::default(),
        )?)),
        EventLogBackend::Kafka => {
            let log = KafkaEventLog::connect(config.kafka.clone())
                .await
                .context("connecting to Kafka")?;
            LogBackend::Kafka(Arc::new(log))
        }
    };
    let log = backend.log();
    let fresh = log.read(topics::CONTROL, 0, 0, 1).await?.is_empty();
    Ok(Node {
        db,
        backend,
        log,
        fresh,
    })
}

/// Write a secret file readable by its owner only.
fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    Ok(())
}

pub(crate) fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The master key: `TOLLGATE_MASTER_KEY`, else the key file; a fresh install
/// creates the file. Anything else is a clear startup error, because losing
/// the key makes every stored provider key unreadable.
fn master_key(config: &Config, fresh: bool) -> anyhow::Result<MasterKey> {
    if let Some(value) = env_value(MASTER_KEY_ENV) {
        return MasterKey::parse(&value).with_context(|| format!("{MASTER_KEY_ENV} is invalid"));
    }
    let file = config.master_key_file();
    if file.exists() {
        return MasterKey::from_file(&file).map_err(anyhow::Error::from);
    }
    if fresh && config.bootstrap.enabled {
        write_secret_file(&file, &MasterKey::generate_hex())?;
        tracing::info!(file = %file.display(), "created a new master key for provider-key encryption; back it up");
        return MasterKey::from_file(&file).map_err(anyhow::Error::from);
    }
    bail!(
        "no master key: set {MASTER_KEY_ENV} (64 hex characters) or create {} (e.g. `openssl rand -hex 32 > {}`). \
         It encrypts provider keys at rest and must stay the same across restarts.",
        file.display(),
        file.display()
    )
}

/// The admin token: `TOLLGATE_ADMIN_TOKEN`, else the token file; a fresh
/// install creates the file. None disables the admin API.
pub fn admin_token(config: &Config, fresh: bool) -> anyhow::Result<Option<String>> {
    if let Some(value) = env_value(ADMIN_TOKEN_ENV) {
        return Ok(Some(value.trim().to_owned()));
    }
    let file = config.admin_token_file();
    if file.exists() {
        let token = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        return Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty()));
    }
    if fresh && config.bootstrap.enabled {
        let token = format!("tga_{}", MasterKey::generate_hex());
        write_secret_file(&file, &token)?;
        return Ok(Some(token));
    }
    Ok(None)
}

/// The control plane on `node`'s log.
pub(crate) async fn open_control(
    config: &Config,
    node: &Node,
    catalog: &Catalog,
) -> anyhow::Result<Arc<ControlPlane>> {
    let master = Arc::new(master_key(config, node.fresh)?);
    ControlPlane::open(
        node.log.clone(),
        master,
        Gateway::provider_ids(catalog, &config.proxy()),
    )
    .await
    .context("reading the control plane from the log")
}
