//! The ledger role: applies account events, publishes balances, ticks the
//! account-events topic, raises alerts and delivers them to webhooks, and
//! serves the credits API and the webhook-deliveries admin routes.

use super::Role;
use crate::config::Config;
use crate::node::Node;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tollgate_control::admin::AdminAuth;
use tollgate_ledger::alerts::AlertEvaluator;
use tollgate_ledger::api::CreditsApi;
use tollgate_ledger::webhooks::WebhookDeliverer;
use tollgate_ledger::LedgerService;

/// Start the ledger on `node`; its admin routes exist when there is an
/// admin token.
pub async fn start(
    config: &Config,
    node: &Node,
    admin_token: Option<&str>,
) -> anyhow::Result<Role> {
    let ledger = LedgerService::open(
        &node.db,
        node.log.clone(),
        &node.metrics,
        node.control.clone(),
    )
    .context("opening the ledger")?;
    // Usage applied before spend was kept gets its spend from the log once;
    // should that fail, the next start tries again.
    if let Err(err) = ledger.backfill_spend().await {
        tracing::warn!(error = %err, "spend of usage from before budgets not booked yet");
    }
    ledger.publish_all().await;
    let run = tokio::spawn(ledger.clone().run(node.stop_signal()));
    let evaluator = AlertEvaluator::open(
        ledger.clone(),
        node.control.clone(),
        node.log.clone(),
        config.alerts.evaluator_settings(),
        &node.metrics,
    )
    .context("opening the alert tables")?;
    let alerts = tokio::spawn(evaluator.run(node.stop_signal()));
    let deliverer = WebhookDeliverer::open(
        &node.db,
        node.control.clone(),
        node.log.clone(),
        config.alerts.webhook_settings(),
        &node.metrics,
    )
    .context("opening the webhook deliveries")?;
    let webhooks = tokio::spawn(deliverer.clone().run(node.stop_signal()));
    let ticker = node
        .backend
        .spawn_ticker(Duration::from_millis(config.ledger.tick_interval_ms.max(1)));
    let credits = Arc::new(CreditsApi {
        ledger,
        control: node.control.clone(),
        log: node.log.clone(),
    });
    Ok(Role {
        routes: tollgate_ledger::api::public_router(credits.clone()),
        admin_routes: admin_token.map(|token| {
            tollgate_ledger::api::admin_router(credits, AdminAuth::new(token)).merge(
                tollgate_ledger::webhooks::admin_router(deliverer, AdminAuth::new(token)),
            )
        }),
        loops: vec![ticker],
        // The ledger stops at the stop signal, after committing what it applied.
        finish: vec![Box::pin(async move {
            match run.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "the ledger stopped with an error"),
                Err(err) => tracing::error!(error = %err, "the ledger task failed"),
            }
            // Both stop at the stop signal; a delivery in flight is tried
            // again after the restart.
            let _ = alerts.await;
            match webhooks.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "webhook delivery stopped with an error")
                }
                Err(err) => tracing::error!(error = %err, "the webhook task failed"),
            }
        })],
    })
}
