//! Composition of the embedded (single-process) deployment.

use crate::config::Config;
use anyhow::{bail, Context};
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tollgate_control::admin::AdminState;
use tollgate_control::{ControlPlane, MasterKey};
use tollgate_core::billing::{Adjustment, AdjustmentKind};
use tollgate_core::eventlog::topics;
use tollgate_core::{Catalog, Envelope, EventBody, EventLog, LogRecord, Usd};
use tollgate_ledger::api::CreditsApi;
use tollgate_ledger::LedgerService;
use tollgate_proxy::Gateway;
use tollgate_store::{Database, SqliteEventLog, SqliteEventLogOptions};

/// How often each instance reads new control-plane changes (so a revoked key
/// is refused everywhere well within a second).
pub const CONTROL_TAIL_INTERVAL: Duration = Duration::from_millis(100);

/// How often gateways read new balance updates from the ledger.
pub const BALANCE_TAIL_INTERVAL: Duration = Duration::from_millis(100);

pub const MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
pub const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

pub struct Embedded {
    pub db: Database,
    pub events: Arc<SqliteEventLog>,
    pub control: Arc<ControlPlane>,
    pub gateway: Arc<Gateway>,
    pub ledger: Arc<LedgerService>,
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
    let gateway = Gateway::new(proxy_config, catalog, control.clone(), log.clone())?;
    let ledger = LedgerService::open(&db, log).context("opening the ledger")?;
    Ok(Embedded {
        db,
        events,
        control,
        gateway,
        ledger,
        fresh,
    })
}

/// What bootstrap created, to print once.
pub struct Bootstrapped {
    pub token: String,
    pub account_id: tollgate_core::AccountId,
    pub granted: bool,
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
    let grant = Usd::from_str(config.bootstrap.starting_credit_usd.trim()).with_context(|| {
        format!(
            "bootstrap.starting_credit_usd: `{}` is not a decimal amount",
            config.bootstrap.starting_credit_usd
        )
    })?;
    if grant > Usd::ZERO {
        let grant = Adjustment {
            adjustment_id: format!("adj_bootstrap_{}", account.id),
            account_id: account.id.clone(),
            kind: AdjustmentKind::GoodwillCredit,
            amount: grant,
            reason: "starting grant of a fresh install".into(),
            idempotency_key: "bootstrap-grant".into(),
            at: chrono::Utc::now(),
        };
        let payload = serde_json::to_vec(&Envelope::new(EventBody::Adjustment(grant)))?;
        embedded
            .events
            .append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.to_owned(),
                key: account.id.to_string(),
                payload,
            })
            .await?;
        embedded.events.flush().await?;
    }
    Ok(Some(Bootstrapped {
        token,
        account_id: account.id,
        granted: grant > Usd::ZERO,
    }))
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
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    serve_on(config, listener, shutdown, |_, _| {}).await
}

/// `serve` on an already-bound listener; `on_ready` gets the address and
/// (on a fresh install) the bootstrap token once requests can be served.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr, Option<&str>),
) -> anyhow::Result<()> {
    let embedded = build(&config).await?;
    let admin_token = if config.admin.enabled {
        admin_token(&config, embedded.fresh)?
    } else {
        None
    };
    let bootstrapped = bootstrap(&embedded, &config).await?;
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
    let log = embedded.events.clone() as Arc<dyn EventLog>;

    // The ledger role, in-process: consume, tick, publish balances.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    embedded.ledger.publish_all().await;
    let ledger_task = tokio::spawn(embedded.ledger.clone().run(stop_rx.clone()));
    let ticker = LedgerService::spawn_ticker(
        log.clone(),
        Duration::from_millis(config.ledger.tick_interval_ms.max(1)),
    );
    embedded.gateway.admission.catch_up(log.as_ref()).await?;
    let balances = embedded
        .gateway
        .admission
        .spawn_tail(log.clone(), BALANCE_TAIL_INTERVAL);
    if let Some(boot) = &bootstrapped {
        // Serve the first request with the starting grant already known.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while boot.granted
            && embedded
                .gateway
                .admission
                .credit(&boot.account_id)
                .is_none()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            embedded.gateway.admission.catch_up(log.as_ref()).await?;
        }
        print_bootstrap(
            boot,
            &config,
            admin_token.is_some() && env_value(ADMIN_TOKEN_ENV).is_none(),
        );
    }
    let credits = Arc::new(CreditsApi {
        ledger: embedded.ledger.clone(),
        control: embedded.control.clone(),
        log: log.clone(),
    });

    let mut admin_task = None;
    match (&admin_token, config.admin.enabled) {
        (Some(token), true) => {
            let listener = TcpListener::bind(config.admin.listen)
                .await
                .with_context(|| format!("binding the admin API on {}", config.admin.listen))?;
            let state = AdminState::new(embedded.control.clone(), token);
            let app = tollgate_control::admin::router(state.clone()).merge(
                tollgate_ledger::api::admin_router(credits.clone(), state.auth.clone()),
            );
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

    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr,
        storage = %config.storage.path.display(),
        providers_with_credentials = ?configured,
        "tollgate serving (embedded mode)"
    );
    let app = tollgate_proxy::router(embedded.gateway.clone())
        .merge(tollgate_ledger::api::public_router(credits));
    on_ready(addr, bootstrapped.as_ref().map(|b| b.token.as_str()));
    tollgate_proxy::serve(listener, app, shutdown).await?;
    let _ = stop_tx.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    ticker.abort();
    balances.abort();
    tail.abort();
    match ledger_task.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(error = %err, "the ledger stopped with an error"),
        Err(err) => tracing::error!(error = %err, "the ledger task failed"),
    }
    embedded
        .events
        .flush()
        .await
        .context("flushing the event log at shutdown")?;
    tracing::info!("stopped; all usage events are durable");
    Ok(())
}

/// The ledger role alone (embedded store): consume, tick, publish balances,
/// until `shutdown`. Used by `tollgate ledger`; `serve` runs it in-process.
pub async fn run_ledger(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default())?);
    let log = events.clone() as Arc<dyn EventLog>;
    let ledger = LedgerService::open(&db, log.clone()).context("opening the ledger")?;
    ledger.publish_all().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(ledger.clone().run(stop_rx));
    let ticker = LedgerService::spawn_ticker(
        log,
        Duration::from_millis(config.ledger.tick_interval_ms.max(1)),
    );
    tracing::info!(storage = %config.storage.path.display(), "ledger running");
    shutdown.await;
    let _ = stop_tx.send(true);
    ticker.abort();
    task.await.context("ledger task")??;
    events.flush().await?;
    tracing::info!("ledger stopped");
    Ok(())
}
