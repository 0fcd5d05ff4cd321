//! The roles a process runs (proxy, ledger, analytics) and what they share.

pub mod proxy;

use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tollgate_proxy::Gateway;

/// `/healthz`, `/readyz` and `/metrics` for a process without the proxy.
pub fn health_router(gateway: Arc<Gateway>) -> Router {
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
