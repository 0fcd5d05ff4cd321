//! Composition of the embedded (single-process) deployment.

use crate::config::Config;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tollgate_core::{Catalog, EventLog};
use tollgate_proxy::Gateway;
use tollgate_store::{Database, KeyStore, NewAccessKey, SqliteEventLog, SqliteEventLogOptions};

/// How often each instance re-reads access keys (so revocations apply within it).
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_millis(500);

pub struct Embedded {
    pub db: Database,
    pub keys: KeyStore,
    pub events: Arc<SqliteEventLog>,
    pub gateway: Arc<Gateway>,
}

/// Open storage and build the gateway; reports every config problem at once.
pub fn build(config: &Config) -> anyhow::Result<Embedded> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let keys = KeyStore::open(&db)?;
    let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default())?);
    let catalog = Catalog::builtin().context("loading the built-in model catalog")?;
    let gateway = Gateway::new(
        config.proxy(),
        catalog,
        keys.clone(),
        events.clone() as Arc<dyn EventLog>,
    )?;
    Ok(Embedded {
        db,
        keys,
        events,
        gateway,
    })
}

/// On a fresh install, create the first account and access key.
pub fn bootstrap(keys: &KeyStore, config: &Config) -> anyhow::Result<Option<NewAccessKey>> {
    if !config.bootstrap.enabled || !keys.accounts()?.is_empty() {
        return Ok(None);
    }
    let account = keys.create_account(&config.bootstrap.account_name)?;
    let key = keys.create_access_key(&account.id, "bootstrap")?;
    Ok(Some(key))
}

pub fn print_bootstrap_key(key: &NewAccessKey, listen: SocketAddr) {
    let token = &key.token;
    println!(
        "\n\
         ==========================================================================\n\
         Tollgate created your first access key. It is shown only this once:\n\n    \
         {token}\n\n\
         Send a first request (needs OPENAI_API_KEY set for the gateway):\n    \
         curl http://{listen}/v1/chat/completions \\\n      \
         -H \"Authorization: Bearer {token}\" -H 'content-type: application/json' \\\n      \
         -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\
         ==========================================================================\n"
    );
}

/// Run the embedded gateway until `shutdown`, then make every event durable.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let embedded = build(&config)?;
    if let Some(key) = bootstrap(&embedded.keys, &config)? {
        embedded.gateway.reload_keys()?;
        print_bootstrap_key(&key, config.server.listen);
    }
    let configured: Vec<&str> = embedded
        .gateway
        .providers
        .values()
        .filter(|p| !p.credentials.is_empty())
        .map(|p| p.spec.id.as_str())
        .collect();
    if configured.is_empty() {
        tracing::warn!("no provider has credentials: set OPENAI_API_KEY or ANTHROPIC_API_KEY, or providers.<id>.api_keys in the config");
    }
    let refresh = embedded.gateway.spawn_key_refresh(KEY_REFRESH_INTERVAL);
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    tracing::info!(
        listen = %config.server.listen,
        storage = %config.storage.path.display(),
        providers_with_credentials = ?configured,
        "tollgate serving (embedded mode)"
    );
    let app = tollgate_proxy::router(embedded.gateway.clone());
    tollgate_proxy::serve(listener, app, shutdown).await?;
    refresh.abort();
    embedded
        .events
        .flush()
        .await
        .context("flushing the event log at shutdown")?;
    tracing::info!("stopped; all usage events are durable");
    Ok(())
}
