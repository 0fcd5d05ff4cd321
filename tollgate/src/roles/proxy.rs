//! The proxy role: the gateway, the admin API and the bootstrap of a fresh
//! install.

use crate::config::Config;
use crate::node::{Node, ADMIN_TOKEN_ENV};
use anyhow::Context;
use axum::Router;
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tollgate_control::ControlPlane;
use tollgate_core::billing::{Adjustment, AdjustmentKind};
use tollgate_core::{Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::LogRecord;
use tollgate_proxy::{Gateway, ServeOptions};

pub(crate) async fn spawn_server(
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

pub(crate) fn warn_without_credentials(gateway: &Gateway) {
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
