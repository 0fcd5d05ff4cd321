//! The composition root. A process opens its node (storage, event log,
//! control plane, metrics registry, stop signal), starts the roles it runs
//! (proxy: gateway and admin API; ledger; analytics; `serve` runs all three
//! in one process), serves what they serve on one main listener until
//! shutdown, then stops them in order. Either event-log backend: embedded
//! SQLite (default) or Kafka.

use crate::config::Config;
use crate::node::{self, Node};
use crate::roles::proxy;
use crate::roles::{analytics, health_router, ledger, Role};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tollgate_proxy::ServeOptions;
use tollgate_sqlite::Database;

/// How long shutdown waits for usage events that wait on a token estimate.
const ESTIMATE_SETTLE: Duration = Duration::from_secs(10);

/// How often each instance reads new control-plane changes (so a revoked key
/// is refused everywhere well within a second).
pub const CONTROL_TAIL_INTERVAL: Duration = Duration::from_millis(100);

/// What `tollgate check-config` builds: the node and the gateway, so every
/// config problem is reported at once.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let node = Node::open(config).await?;
    proxy::gateway(config, &node)?;
    Ok(())
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
    on_ready: impl FnOnce(SocketAddr, Option<&str>),
) -> anyhow::Result<()> {
    crate::memory::fix_mmap_threshold();
    let node = Node::open(&config).await?;
    // The gateway before anything runs: a config problem stops the start here.
    let gateway = match roles.proxy {
        true => Some(proxy::gateway(&config, &node)?),
        false => None,
    };
    crate::memory::start_trimming();
    let control_tail = node.control.spawn_tail(CONTROL_TAIL_INTERVAL);
    let admin_token = admin_token(&config, roles, node.fresh)?;
    let admin_token = admin_token.as_deref();

    let mut others = Role::default();
    if roles.ledger {
        others = others.merge(ledger::start(&config, &node, admin_token).await?);
    }
    if roles.analytics {
        others = others.merge(analytics::start(&config, &node, admin_token)?);
    }
    let (proxy, front) = match gateway {
        Some(gateway) => {
            // The other roles' admin routes join the proxy's admin listener.
            let admin_routes = others.admin_routes.take();
            let started = proxy::start(
                gateway,
                &config,
                &node,
                admin_token,
                admin_routes,
                roles.ledger,
            );
            let (proxy, role) = started.await?;
            (Some(proxy), role)
        }
        None => (None, Role::serving(health_router(&node))),
    };
    let mut running = front.merge(others);
    running.loops.push(control_tail);

    let listener = main_listener(&config, roles, listener).await?;
    let addr = listener.local_addr()?;
    announce(&config, roles, addr);
    let routes = running.main_routes();
    let result = match &proxy {
        Some(proxy) => {
            proxy
                .serve(&config, &node, listener, routes, shutdown, on_ready)
                .await
        }
        None => {
            on_ready(addr, None);
            let options = ServeOptions::new(node.edge.clone());
            tollgate_proxy::serve_with(listener, routes, shutdown, options)
                .await
                .map_err(anyhow::Error::from)
        }
    };
    stop(&node, running).await?;
    result
}

/// The admin token: created on a fresh install where the proxy runs, only
/// read elsewhere; none when the admin API is disabled.
fn admin_token(config: &Config, roles: Roles, fresh: bool) -> anyhow::Result<Option<String>> {
    if !config.admin.enabled {
        Ok(None)
    } else if roles.proxy {
        node::admin_token(config, fresh)
    } else {
        Ok(node::read_admin_token(config))
    }
}

/// The main listener: the gateway's where the proxy runs, else the
/// ledger's, else the usage API's.
async fn main_listener(
    config: &Config,
    roles: Roles,
    bound: Option<TcpListener>,
) -> anyhow::Result<TcpListener> {
    if let Some(listener) = bound {
        return Ok(listener);
    }
    let listen = if roles.proxy {
        config.server.listen
    } else if roles.ledger {
        config.ledger.listen
    } else {
        config.analytics_api.listen
    };
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))
}

fn announce(config: &Config, roles: Roles, addr: SocketAddr) {
    if roles.proxy {
        tracing::info!(listen = %addr, storage = %config.storage.path.display(), backend = ?config.eventlog.backend, roles = ?roles, "tollgate serving");
    } else if roles.ledger {
        tracing::info!(listen = %addr, backend = ?config.eventlog.backend, "tollgate ledger running");
    } else {
        tracing::info!(listen = %addr, backend = ?config.analytics.backend, "tollgate analytics running");
    }
}

/// After the main listener has stopped: let usage events waiting on token
/// estimates reach the log, signal the roles to stop, wait for what they
/// finish, then make the log durable.
async fn stop(node: &Node, running: Role) -> anyhow::Result<()> {
    // Requests that ended while their token estimate ran emit their usage
    // events from the estimate threads: let them, before the log closes
    // (each estimate is bounded, see `tollgate_proxy::tokenize`).
    if !tollgate_proxy::estimate::settle(ESTIMATE_SETTLE).await {
        tracing::warn!(
            left = tollgate_proxy::estimate::in_flight(),
            "stopping with usage events still waiting on token estimates"
        );
    }
    node.stop();
    for finish in running.finish {
        finish.await;
    }
    for task in running.loops {
        task.abort();
    }
    node.backend.shutdown().await?;
    tracing::info!("stopped; all events are durable");
    Ok(())
}

/// Apply the usage store's migrations (`tollgate migrate`).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = Database::open(&config.storage.path, config.storage.durability)
        .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;
    let store = tollgate_analytics::open_store(&config.analytics, &db)?;
    tollgate_analytics::migrate(&*store).await?;
    Ok(())
}
