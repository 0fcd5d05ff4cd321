//! Composition of Tollgate's roles — proxy (gateway + admin API), ledger,
//! and (with `serve`) all of them in one process — over either event-log
//! backend: embedded SQLite (default) or Kafka.

use crate::config::Config;
use crate::node::{
    admin_token, env_value, open_control, open_node, LogBackend, Node, ADMIN_TOKEN_ENV,
};
use crate::roles::health_router;
use crate::roles::proxy::{bootstrap, print_bootstrap, spawn_server, warn_without_credentials};
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_control::admin::AdminState;
use tollgate_control::ControlPlane;
use tollgate_core::Catalog;
use tollgate_ledger::api::CreditsApi;
use tollgate_ledger::LedgerService;
use tollgate_proxy::{Gateway, ServeOptions};
use tollgate_sqlite::Database;

/// How long shutdown waits for usage events that wait on a token estimate.
const ESTIMATE_SETTLE: Duration = Duration::from_secs(10);

/// How often each instance reads new control-plane changes (so a revoked key
/// is refused everywhere well within a second).
pub const CONTROL_TAIL_INTERVAL: Duration = Duration::from_millis(100);

/// How often gateways read new balance updates from the ledger.
pub const BALANCE_TAIL_INTERVAL: Duration = Duration::from_millis(100);

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
    let gateway = Gateway::new(
        config.proxy(),
        catalog,
        control.clone(),
        node.log.clone(),
        &prometheus::Registry::new(),
    )?;
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
            LedgerService::open(&built.node.db, log.clone(), &built.gateway.metrics.registry)
                .context("opening the ledger")?;
        ledger.publish_all().await;
        ledger_task = Some(tokio::spawn(ledger.clone().run(stop_rx.clone())));
        tasks.push(
            built
                .node
                .backend
                .spawn_ticker(Duration::from_millis(config.ledger.tick_interval_ms.max(1))),
        );
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
        let state = AdminState::new(built.control.clone(), token);
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

/// Apply the usage store's migrations (`tollgate migrate`).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let store = tollgate_analytics::open_store(&config.analytics, &db)?;
    tollgate_analytics::migrate(&*store).await?;
    Ok(())
}
