//! A process's node, what every role runs on (storage, the event log, the
//! control plane, the metrics registry, the stop signal), and the secrets
//! it needs.

use crate::config::{Config, EventLogBackend};
use anyhow::{bail, Context};
use prometheus::Registry;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_control::{ControlPlane, MasterKey};
use tollgate_core::Catalog;
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;
use tollgate_kafka::KafkaEventLog;
use tollgate_ledger::LedgerService;
use tollgate_proxy::{Edge, Gateway};
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

/// What every role of a process runs on, built once: storage, the event log,
/// the control plane on it, the metrics registry, the edge its listeners
/// share and the stop signal.
pub struct Node {
    /// The local SQLite file: ledger state; in embedded mode also the log.
    pub db: Database,
    pub backend: LogBackend,
    pub log: Arc<dyn EventLog>,
    /// True when the log held no control-plane state before this start.
    pub fresh: bool,
    pub control: Arc<ControlPlane>,
    /// Every metric the process exports: each role registers its own here,
    /// and `/metrics` serves them all.
    pub metrics: Registry,
    /// One edge for every listener, so its caps hold for the whole process.
    pub edge: Arc<Edge>,
    stop: watch::Sender<bool>,
}

impl Node {
    /// Open storage, the event log and the control plane on it.
    pub async fn open(config: &Config) -> anyhow::Result<Node> {
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
        let control = open_control(config, &log, fresh).await?;
        let metrics = Registry::new();
        if let LogBackend::Kafka(log) = &backend {
            log.register_metrics(&metrics)?;
        }
        let edge = Edge::new(&config.server, &metrics)?;
        Ok(Node {
            db,
            backend,
            log,
            fresh,
            control,
            metrics,
            edge,
            stop: watch::channel(false).0,
        })
    }

    /// Turns true once the roles are to stop (their listeners, the ledger).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
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

/// The admin token, read but never created (a process without the proxy):
/// `TOLLGATE_ADMIN_TOKEN`, else the token file.
pub fn read_admin_token(config: &Config) -> Option<String> {
    env_value(ADMIN_TOKEN_ENV).or(std::fs::read_to_string(config.admin_token_file())
        .ok()
        .map(|t| t.trim().to_owned()))
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

/// The control plane on `log`.
async fn open_control(
    config: &Config,
    log: &Arc<dyn EventLog>,
    fresh: bool,
) -> anyhow::Result<Arc<ControlPlane>> {
    let master = Arc::new(master_key(config, fresh)?);
    let catalog = Catalog::builtin().context("loading the built-in model catalog")?;
    ControlPlane::open(
        log.clone(),
        master,
        Gateway::provider_ids(&catalog, &config.proxy()),
    )
    .await
    .context("reading the control plane from the log")
}
