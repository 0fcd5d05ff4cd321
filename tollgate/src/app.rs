//! Composition of Tollgate's roles — proxy (gateway + admin API), ledger,
//! and (with `serve`) all of them in one process — over either event-log
//! backend: embedded SQLite (default) or Kafka.

use crate::config::{Config, EventLogBackend};
use anyhow::{bail, Context};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_control::admin::AdminState;
use tollgate_control::{ControlPlane, MasterKey};
use tollgate_core::billing::{Adjustment, AdjustmentKind};
use tollgate_core::{Catalog, Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, LogRecord};
use tollgate_kafka::KafkaEventLog;
use tollgate_ledger::api::CreditsApi;
use tollgate_ledger::LedgerService;
use tollgate_proxy::{Gateway, ServeOptions};
use tollgate_sqlite::{Database, SqliteEventLog, SqliteEventLogOptions};

/// How long shutdown waits for usage events that wait on a token estimate.
const ESTIMATE_SETTLE: Duration = Duration::from_secs(10);

/// How often each instance reads new control-plane changes (so a revoked key
/// is refused everywhere well within a second).
pub const CONTROL_TAIL_INTERVAL: Duration = Duration::from_millis(100);

/// How often gateways read new balance updates from the ledger.
pub const BALANCE_TAIL_INTERVAL: Duration = Duration::from_millis(100);

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
    fn spawn_ticker(&self, every: Duration) -> JoinHandle<()> {
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

/// The control plane on `node`'s log.
async fn open_control(
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

/// Everything a process can run; roles pick what they use.
pub struct Built {
    pub node: Node,
    pub control: Arc<ControlPlane>,
    pub gateway: Arc<Gateway>,
}

/// Open storage, the control plane and the gateway; reports every config
/// problem at once.
pub async fn build(config: &Config) -> anyhow::Result<Built> {
    let node = open_node(config).await?;
    let catalog = Catalog::builtin().context("loading the built-in model catalog")?;
    let control = open_control(config, &node, &catalog).await?;
    let gateway = Gateway::new(config.proxy(), catalog, control.clone(), node.log.clone())?;
    if let LogBackend::Kafka(log) = &node.backend {
        log.register_metrics(&gateway.metrics.registry)?;
    }
    Ok(Built {
        node,
        control,
        gateway,
    })
}

/// Which roles a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub proxy: bool,
    pub ledger: bool,
    pub analytics: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        proxy: true,
        ledger: true,
        analytics: true,
    };
    /// `tollgate proxy`: gateway and admin API.
    pub const PROXY: Roles = Roles {
        proxy: true,
        ledger: false,
        analytics: false,
    };
    /// `tollgate ledger`: the ledger, credits API, health and metrics.
    pub const LEDGER: Roles = Roles {
        proxy: false,
        ledger: true,
        analytics: false,
    };
    /// `tollgate analytics`: the usage sink and usage API.
    pub const ANALYTICS: Roles = Roles {
        proxy: false,
        ledger: false,
        analytics: true,
    };
}

/// Run `roles` alone on their configured listener until `shutdown`.
pub async fn run_only(
    config: Config,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_roles(config, roles, None, shutdown, |_, _| {}).await
}

/// Run every role in one process (`tollgate serve`).
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
    run_roles(config, Roles::ALL, Some(listener), shutdown, on_ready).await
}

/// Run `roles` until `shutdown`, then stop cleanly: in-flight requests
/// finish, the ledger commits what it applied, the log is flushed.
pub async fn run_roles(
    config: Config,
    roles: Roles,
    listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr, Option<&str>),
) -> anyhow::Result<()> {
    crate::memory::fix_mmap_threshold();
    let built = build(&config).await?;
    crate::memory::start_trimming();
    let log = built.node.log.clone();
    // One edge for every listener: its caps hold for the whole process.
    let edge = tollgate_proxy::Edge::new(&config.server, &built.gateway.metrics.registry)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks: Vec<JoinHandle<()>> = vec![built.control.spawn_tail(CONTROL_TAIL_INTERVAL)];
    let admin_token = if config.admin.enabled && roles.proxy {
        admin_token(&config, built.node.fresh)?
    } else if config.admin.enabled {
        env_value(ADMIN_TOKEN_ENV).or(std::fs::read_to_string(config.admin_token_file())
            .ok()
            .map(|t| t.trim().to_owned()))
    } else {
        None
    };
    let bootstrapped = if roles.proxy {
        bootstrap(&built.node, &built.control, &config).await?
    } else {
        None
    };

    let mut ledger_task = None;
    let credits = if roles.ledger {
        let ledger =
            LedgerService::open(&built.node.db, log.clone()).context("opening the ledger")?;
        ledger.publish_all().await;
        ledger_task = Some(tokio::spawn(ledger.clone().run(stop_rx.clone())));
        tasks.push(
            built
                .node
                .backend
                .spawn_ticker(Duration::from_millis(config.ledger.tick_interval_ms.max(1))),
        );
        built
            .gateway
            .metrics
            .add_registry(ledger.metrics.registry.clone());
        Some(Arc::new(CreditsApi {
            ledger,
            control: built.control.clone(),
            log: log.clone(),
        }))
    } else {
        None
    };

    // The analytics role: the usage sink and the usage API.
    let mut sink = None;
    let usage_api = if roles.analytics {
        let store = tollgate_analytics::open_store(&config.analytics, &built.node.db)
            .context("opening the usage store")?;
        let metrics = tollgate_analytics::AnalyticsMetrics::register(
            &built.gateway.metrics.registry,
            store.backend(),
        )?;
        sink = Some(
            tollgate_analytics::Sink::new(
                log.clone(),
                store.clone(),
                config.analytics.sink.clone(),
                metrics,
            )
            .spawn(),
        );
        if let Some(task) =
            tollgate_analytics::spawn_retention(store.clone(), config.analytics.retention.clone())
        {
            tasks.push(task);
        }
        let plane = built.control.clone();
        let authorizer =
            tollgate_analytics::TokenAuthorizer::new(admin_token.as_deref(), move |hash: &str| {
                plane
                    .snapshot()
                    .key_by_hash(hash)
                    .map(|k| k.account_id.clone())
            });
        Some(tollgate_analytics::router(store, Arc::new(authorizer)))
    } else {
        None
    };

    if roles.proxy {
        // Not fatal (installs from before prices existed keep starting), but
        // said at every start: these models are refused on operator keys.
        for line in built.gateway.config.unpriced_models() {
            tracing::warn!("{line}");
        }
        built.gateway.admission.catch_up(log.as_ref()).await?;
        tasks.push(
            built
                .gateway
                .admission
                .spawn_tail(log.clone(), BALANCE_TAIL_INTERVAL),
        );
        if let (Some(boot), true) = (&bootstrapped, roles.ledger) {
            // Serve the first request with the starting grant already known.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while boot.granted
                && built.gateway.admission.credit(&boot.account_id).is_none()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                built.gateway.admission.catch_up(log.as_ref()).await?;
            }
        }
        if let Some(boot) = &bootstrapped {
            print_bootstrap(
                boot,
                &config,
                admin_token.is_some() && env_value(ADMIN_TOKEN_ENV).is_none(),
            );
        }
        warn_without_credentials(&built.gateway);
    }

    // The admin API: control-plane routes where the proxy runs, credits
    // routes where the ledger runs (one listener when both do).
    let mut admin_task = None;
    if let (Some(token), true) = (&admin_token, config.admin.enabled && roles.proxy) {
        let mut state = AdminState::new(built.control.clone(), token)
            .with_document(tollgate_proxy::admin_docs::admin_openapi());
        if credits.is_some() {
            state = state.with_document(tollgate_ledger::api::admin_openapi());
        }
        let mut app = tollgate_control::admin::router(state.clone()).merge(
            tollgate_proxy::admin_router(built.gateway.clone(), state.auth.clone()),
        );
        if let Some(credits) = &credits {
            app = app.merge(tollgate_ledger::api::admin_router(
                credits.clone(),
                state.auth.clone(),
            ));
        }
        admin_task = Some(
            spawn_server(
                config.admin.listen,
                app,
                edge.clone(),
                stop_rx.clone(),
                "admin API",
            )
            .await?,
        );
    } else if config.admin.enabled && roles.proxy {
        tracing::warn!(
            "admin API disabled: no admin token (set {ADMIN_TOKEN_ENV} or create {})",
            config.admin_token_file().display()
        );
    }

    let mut result = Ok(());
    if roles.proxy {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("binding {}", config.server.listen))?,
        };
        let addr = listener.local_addr()?;
        tracing::info!(listen = %addr, storage = %config.storage.path.display(), backend = ?config.eventlog.backend, roles = ?roles, "tollgate serving");
        let mut app = tollgate_proxy::router(built.gateway.clone());
        if let Some(credits) = &credits {
            app = app.merge(tollgate_ledger::api::public_router(credits.clone()));
        }
        if let Some(usage) = usage_api.clone() {
            app = app.merge(usage);
        }
        let mut options = ServeOptions::new(edge.clone());
        if let Some(tls) = &config.server.tls {
            options.tls = Some(tollgate_proxy::tls_acceptor(tls).context("setting up TLS")?);
        }
        on_ready(addr, bootstrapped.as_ref().map(|b| b.token.as_str()));
        result =
            tollgate_proxy::serve_gateway(listener, app, built.gateway.clone(), shutdown, options)
                .await
                .map_err(anyhow::Error::from);
    } else if let (Some(usage), false) = (usage_api.clone(), roles.ledger) {
        // Analytics alone serves the usage API and its health and metrics.
        let app = usage.merge(health_router(built.gateway.clone()));
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(config.analytics_api.listen)
                .await
                .with_context(|| format!("binding {}", config.analytics_api.listen))?,
        };
        let addr = listener.local_addr()?;
        tracing::info!(listen = %addr, backend = ?config.analytics.backend, "tollgate analytics running");
        on_ready(addr, None);
        result =
            tollgate_proxy::serve_with(listener, app, shutdown, ServeOptions::new(edge.clone()))
                .await
                .map_err(anyhow::Error::from);
    } else if let Some(credits) = &credits {
        // The ledger alone serves the credits API and its health and metrics.
        let mut app = tollgate_ledger::api::public_router(credits.clone())
            .merge(health_router(built.gateway.clone()));
        if let Some(token) = &admin_token {
            let auth = tollgate_control::admin::AdminAuth::new(token);
            app = app.merge(tollgate_ledger::api::admin_router(credits.clone(), auth));
        }
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(config.ledger.listen)
                .await
                .with_context(|| format!("binding {}", config.ledger.listen))?,
        };
        let addr = listener.local_addr()?;
        tracing::info!(listen = %addr, backend = ?config.eventlog.backend, "tollgate ledger running");
        on_ready(addr, None);
        result =
            tollgate_proxy::serve_with(listener, app, shutdown, ServeOptions::new(edge.clone()))
                .await
                .map_err(anyhow::Error::from);
    }

    // Requests that ended while their token estimate ran emit their usage
    // events from the estimate threads: let them, before the log closes
    // (each estimate is bounded, see `tollgate_proxy::tokenize`).
    if !tollgate_proxy::estimate::settle(ESTIMATE_SETTLE).await {
        tracing::warn!(
            left = tollgate_proxy::estimate::in_flight(),
            "stopping with usage events still waiting on token estimates"
        );
    }
    let _ = stop_tx.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    if let Some(task) = ledger_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "the ledger stopped with an error"),
            Err(err) => tracing::error!(error = %err, "the ledger task failed"),
        }
    }
    if let Some(sink) = sink {
        if let Err(err) = sink.shutdown().await {
            tracing::error!(error = %err, "the analytics sink stopped with an error");
        }
    }
    for task in tasks {
        task.abort();
    }
    built.node.backend.shutdown().await?;
    tracing::info!("stopped; all events are durable");
    result
}

/// `/healthz`, `/readyz` and `/metrics` for a process without the proxy.
fn health_router(gateway: Arc<Gateway>) -> Router {
    let ready = gateway.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.events.is_writable() {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "event log is not writable",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let gateway = gateway.clone();
                async move { gateway.metrics.render() }
            }),
        )
}

async fn spawn_server(
    addr: std::net::SocketAddr,
    app: Router,
    edge: Arc<tollgate_proxy::Edge>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} on {addr}"))?;
    tracing::info!(listen = %addr, "{what} listening");
    Ok(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.changed().await;
        };
        let _ = tollgate_proxy::serve_with(listener, app, stopped, ServeOptions::new(edge)).await;
    }))
}

fn warn_without_credentials(gateway: &Gateway) {
    if gateway.providers.values().all(|p| p.credentials.is_empty()) {
        tracing::warn!("no provider has operator credentials: set OPENAI_API_KEY or ANTHROPIC_API_KEY, providers.<id>.api_keys in the config, or attach provider keys through the admin API");
    }
}

/// What bootstrap created, to print once.
pub struct Bootstrapped {
    pub token: String,
    pub account_id: tollgate_core::AccountId,
    pub granted: bool,
}

/// On a fresh install, create the first account and access key.
pub async fn bootstrap(
    embedded: &Node,
    control: &ControlPlane,
    config: &Config,
) -> anyhow::Result<Option<Bootstrapped>> {
    if !config.bootstrap.enabled || !control.snapshot().accounts.is_empty() {
        return Ok(None);
    }
    let account = control
        .create_account(&config.bootstrap.account_name)
        .await?;
    let (_, token) = control
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
            .log
            .append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.to_owned(),
                key: account.id.to_string(),
                payload,
            })
            .await?;
        embedded.log.flush().await?;
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

/// Apply the usage store's migrations (`tollgate migrate`).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let store = tollgate_analytics::open_store(&config.analytics, &db)?;
    tollgate_analytics::migrate(&*store).await?;
    Ok(())
}
