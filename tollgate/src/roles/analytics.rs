//! The analytics role: the usage sink into the usage store, its retention,
//! and the usage API.

use super::Role;
use crate::config::Config;
use crate::node::Node;
use anyhow::Context;
use std::sync::Arc;
use tollgate_analytics::{AnalyticsMetrics, Sink, TokenAuthorizer};

/// Start the sink on `node`; the usage API answers access keys (their own
/// account) and the admin token (every account).
pub fn start(config: &Config, node: &Node, admin_token: Option<&str>) -> anyhow::Result<Role> {
    let store = tollgate_analytics::open_store(&config.analytics, &node.db)
        .context("opening the usage store")?;
    let metrics = AnalyticsMetrics::register(&node.metrics, store.backend())?;
    let sink = Sink::new(
        node.log.clone(),
        store.clone(),
        config.analytics.sink.clone(),
        metrics,
    )
    .spawn();
    let retention =
        tollgate_analytics::spawn_retention(store.clone(), config.analytics.retention.clone());
    let control = node.control.clone();
    let authorizer = TokenAuthorizer::new(admin_token, move |hash: &str| {
        control
            .snapshot()
            .key_by_hash(hash)
            .map(|k| k.account_id.clone())
    });
    Ok(Role {
        routes: tollgate_analytics::router(store, Arc::new(authorizer)),
        admin_routes: None,
        loops: retention.into_iter().collect(),
        // The sink writes its last batch before the log closes.
        finish: vec![Box::pin(async move {
            if let Err(err) = sink.shutdown().await {
                tracing::error!(error = %err, "the analytics sink stopped with an error");
            }
        })],
    })
}
