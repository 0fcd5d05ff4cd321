//! `/healthz`, `/readyz` and `/metrics`: the one health router every process
//! serves, whichever roles it runs (the gateway's router merges it too).

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use std::sync::Arc;
use tollgate_eventlog::EventLog;

/// Live always; ready while `log` takes writes; `registry` in text format.
pub fn router<S: Clone + Send + Sync + 'static>(
    log: Arc<dyn EventLog>,
    registry: Registry,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let writable = log.is_writable();
                async move {
                    if writable {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "event log is not writable")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = crate::metrics::render(&registry);
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        )
}
