//! The proxy role: the gateway, the admin API and the bootstrap of a fresh
//! install.

use super::Role;
use crate::config::Config;
use crate::node::{env_value, Node, ADMIN_TOKEN_ENV};
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_control::admin::AdminState;
use tollgate_core::billing::{Adjustment, AdjustmentKind};
use tollgate_core::{Catalog, Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::LogRecord;
use tollgate_proxy::{Gateway, ServeOptions};

/// How often gateways read new balance updates from the ledger.
pub const BALANCE_TAIL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the first start waits for the ledger to apply the starting
/// grant, so the first request is served with it known.
const GRANT_WAIT: Duration = Duration::from_secs(10);

/// The gateway on `node`; reports every config problem at once.
pub fn gateway(config: &Config, node: &Node) -> anyhow::Result<Arc<Gateway>> {
    let catalog = Catalog::builtin().context("loading the built-in model catalog")?;
    Ok(Gateway::new(
        config.proxy(),
        catalog,
        node.control.clone(),
        node.log.clone(),
        &node.metrics,
    )?)
}

/// The proxy role, started: serves on the main listener with [`Proxy::serve`].
pub struct Proxy {
    pub gateway: Arc<Gateway>,
    /// The access key a fresh install created, shown once.
    bootstrap_token: Option<String>,
}

/// Start the proxy: bootstrap a fresh install (and, when the ledger runs in
/// this process, wait for its starting grant), catch up on balances, open
/// the admin API with `admin_routes` (the other roles') beside its own.
pub async fn start(
    gateway: Arc<Gateway>,
    config: &Config,
    node: &Node,
    admin_token: Option<&str>,
    admin_routes: Option<Router>,
    ledger_runs: bool,
) -> anyhow::Result<(Proxy, Role)> {
    let bootstrapped = bootstrap(node, config).await?;
    // Not fatal (installs from before prices existed keep starting), but
    // said at every start: these models are refused on operator keys.
    for line in gateway.config.unpriced_models() {
        tracing::warn!("{line}");
    }
    gateway.admission.catch_up(node.log.as_ref()).await?;
    let balance_tail = gateway
        .admission
        .spawn_tail(node.log.clone(), BALANCE_TAIL_INTERVAL);
    if let Some(boot) = &bootstrapped {
        if ledger_runs && boot.granted {
            wait_for_grant(&gateway, node, boot).await?;
        }
        print_bootstrap(
            boot,
            config,
            admin_token.is_some() && env_value(ADMIN_TOKEN_ENV).is_none(),
        );
    }
    warn_without_credentials(&gateway);
    let admin = admin_api(
        config,
        node,
        &gateway,
        admin_token,
        admin_routes,
        ledger_runs,
    )
    .await?;
    let role = Role {
        routes: tollgate_proxy::router(gateway.clone()),
        admin_routes: None,
        loops: vec![balance_tail],
        finish: admin
            .into_iter()
            .map(|task| -> super::Finish {
                Box::pin(async move {
                    let _ = task.await;
                })
            })
            .collect(),
    };
    let proxy = Proxy {
        gateway,
        bootstrap_token: bootstrapped.map(|b| b.token),
    };
    Ok((proxy, role))
}

/// Serve the first request with the starting grant already known.
async fn wait_for_grant(gateway: &Gateway, node: &Node, boot: &Bootstrapped) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + GRANT_WAIT;
    while gateway.admission.credit(&boot.account_id).is_none()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        gateway.admission.catch_up(node.log.as_ref()).await?;
    }
    Ok(())
}

/// The admin API: the control plane's routes, the gateway's and
/// `admin_routes` (the ledger's when `ledger_runs`), on `admin.listen`;
/// none without a token.
async fn admin_api(
    config: &Config,
    node: &Node,
    gateway: &Arc<Gateway>,
    admin_token: Option<&str>,
    admin_routes: Option<Router>,
    ledger_runs: bool,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let Some(token) = admin_token else {
        tracing::warn!(
            "admin API disabled: no admin token (set {ADMIN_TOKEN_ENV} or create {})",
            config.admin_token_file().display()
        );
        return Ok(None);
    };
    // One document for the one listener: the gateway's part, and the
    // ledger's credits routes where the ledger runs beside it.
    let mut state = AdminState::new(node.control.clone(), token)
        .with_document(tollgate_proxy::admin_docs::admin_openapi());
    if ledger_runs {
        state = state
            .with_document(tollgate_ledger::api::admin_openapi())
            .with_document(tollgate_ledger::webhooks::admin_openapi());
    }
    let mut app = tollgate_control::admin::router(state.clone()).merge(
        tollgate_proxy::admin_router(gateway.clone(), state.auth.clone()),
    );
    if let Some(routes) = admin_routes {
        app = app.merge(routes);
    }
    let stop = node.stop_signal();
    let server = spawn_server(
        config.admin.listen,
        app,
        node.edge.clone(),
        stop,
        "admin API",
    );
    Ok(Some(server.await?))
}

impl Proxy {
    /// Serve `routes` on `listener` until `shutdown`, the proxied routes
    /// straight to the gateway; `on_ready` gets the bootstrap token.
    pub async fn serve(
        &self,
        config: &Config,
        node: &Node,
        listener: TcpListener,
        routes: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_ready: impl FnOnce(std::net::SocketAddr, Option<&str>),
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let mut options = ServeOptions::new(node.edge.clone());
        if let Some(tls) = &config.server.tls {
            options.tls = Some(tollgate_proxy::tls_acceptor(tls).context("setting up TLS")?);
        }
        on_ready(addr, self.bootstrap_token.as_deref());
        tollgate_proxy::serve_gateway(listener, routes, self.gateway.clone(), shutdown, options)
            .await
            .map_err(anyhow::Error::from)
    }
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
pub async fn bootstrap(node: &Node, config: &Config) -> anyhow::Result<Option<Bootstrapped>> {
    let control = &node.control;
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
        node.log
            .append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.to_owned(),
                key: account.id.to_string(),
                payload,
            })
            .await?;
        node.log.flush().await?;
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
