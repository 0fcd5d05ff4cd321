//! Composition of the embedded (single-process) deployment.

use crate::config::Config;
use anyhow::{bail, Context};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tollgate_control::admin::AdminState;
use tollgate_control::{ControlPlane, MasterKey};
use tollgate_core::eventlog::topics;
use tollgate_core::{Catalog, EventLog};
use tollgate_proxy::Gateway;
use tollgate_store::{Database, SqliteEventLog, SqliteEventLogOptions};

/// How often each instance reads new control-plane changes (so a revoked key
/// is refused everywhere well within a second).
pub const CONTROL_TAIL_INTERVAL: Duration = Duration::from_millis(100);

pub const MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
pub const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

pub struct Embedded {
    pub db: Database,
    pub events: Arc<SqliteEventLog>,
    pub control: Arc<ControlPlane>,
    pub gateway: Arc<Gateway>,
    /// True when the store held no control-plane state before this start.
    pub fresh: bool,
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

fn env_value(name: &str) -> Option<String> {
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

/// Open storage, the control plane and the gateway; reports every config
/// problem at once.
pub async fn build(config: &Config) -> anyhow::Result<Embedded> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default())?);
    let log = events.clone() as Arc<dyn EventLog>;
    let fresh = log.read(topics::CONTROL, 0, 0, 1).await?.is_empty();
    let catalog = Catalog::builtin().context("loading the built-in model catalog")?;
    let proxy_config = config.proxy();
    let master = Arc::new(master_key(config, fresh)?);
    let control = ControlPlane::open(
        log.clone(),
        master,
        Gateway::provider_ids(&catalog, &proxy_config),
    )
    .await
    .context("reading the control plane from the log")?;
    let gateway = Gateway::new(proxy_config, catalog, control.clone(), log)?;
    Ok(Embedded {
        db,
        events,
        control,
        gateway,
        fresh,
    })
}

/// What bootstrap created, to print once.
pub struct Bootstrapped {
    pub token: String,
}

/// On a fresh install, create the first account and access key.
pub async fn bootstrap(
    embedded: &Embedded,
    config: &Config,
) -> anyhow::Result<Option<Bootstrapped>> {
    if !config.bootstrap.enabled || !embedded.control.snapshot().accounts.is_empty() {
        return Ok(None);
    }
    let account = embedded
        .control
        .create_account(&config.bootstrap.account_name)
        .await?;
    let (_, token) = embedded
        .control
        .create_access_key(&account.id, "bootstrap", None)
        .await?;
    Ok(Some(Bootstrapped { token }))
}

pub fn print_bootstrap(boot: &Bootstrapped, config: &Config, admin_token_shown: bool) {
    let token = &boot.token;
    let listen = config.server.listen;
    let admin_file = config.admin_token_file();
    let admin_line = if admin_token_shown {
        format!(
            "Admin API on http://{} — its token is in {} (or set {ADMIN_TOKEN_ENV}).\n",
            config.admin.listen,
            admin_file.display()
        )
    } else {
        String::new()
    };
    println!(
        "\n\
         ==========================================================================\n\
         Tollgate created your first access key. It is shown only this once:\n\n    \
         {token}\n\n\
         Send a first request (the gateway needs OPENAI_API_KEY set):\n    \
         curl http://{listen}/v1/chat/completions \\\n      \
         -H \"Authorization: Bearer {token}\" -H 'content-type: application/json' \\\n      \
         -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\
         {admin_line}\
         ==========================================================================\n"
    );
}

/// Run the embedded gateway (and admin API) until `shutdown`, then make
/// every event durable.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let embedded = build(&config).await?;
    let admin_token = if config.admin.enabled {
        admin_token(&config, embedded.fresh)?
    } else {
        None
    };
    if let Some(boot) = bootstrap(&embedded, &config).await? {
        print_bootstrap(
            &boot,
            &config,
            admin_token.is_some() && env_value(ADMIN_TOKEN_ENV).is_none(),
        );
    }
    let configured: Vec<&str> = embedded
        .gateway
        .providers
        .values()
        .filter(|p| !p.credentials.is_empty())
        .map(|p| p.spec.id.as_str())
        .collect();
    if configured.is_empty() {
        tracing::warn!("no provider has operator credentials: set OPENAI_API_KEY or ANTHROPIC_API_KEY, providers.<id>.api_keys in the config, or attach provider keys through the admin API");
    }
    let tail = embedded.control.spawn_tail(CONTROL_TAIL_INTERVAL);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_task = None;
    match (&admin_token, config.admin.enabled) {
        (Some(token), true) => {
            let listener = TcpListener::bind(config.admin.listen)
                .await
                .with_context(|| format!("binding the admin API on {}", config.admin.listen))?;
            let app =
                tollgate_control::admin::router(AdminState::new(embedded.control.clone(), token));
            let mut stop = stop_rx.clone();
            admin_task = Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            }));
            tracing::info!(listen = %config.admin.listen, "admin API listening");
        }
        (None, true) => tracing::warn!(
            "admin API disabled: no admin token (set {ADMIN_TOKEN_ENV} or create {})",
            config.admin_token_file().display()
        ),
        _ => {}
    }

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
    let _ = stop_tx.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    tail.abort();
    embedded
        .events
        .flush()
        .await
        .context("flushing the event log at shutdown")?;
    tracing::info!("stopped; all usage events are durable");
    Ok(())
}
