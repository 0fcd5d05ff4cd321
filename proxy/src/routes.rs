//! The composition root of the HTTP app. Layer order (outermost first):
//! the edge's limits (`crate::server`, `crate::edge`: connection, request
//! and buffered-byte caps, declared length, deadlines) → body-size limit →
//! handlers. Handlers read `Arc<Gateway>` state; auth, metering and
//! failover happen inside `dispatch::handle`, which checks the key before
//! reading the body.

use crate::dispatch::{extract_token, handle};
use crate::error::ProxyError;
use crate::gateway::Gateway;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use std::sync::Arc;
use tollgate_core::ApiSurface;

pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.config.server.max_body_bytes;
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(gw): State<Arc<Gateway>>, request: Request| {
                handle(gw, ApiSurface::Openai, request)
            }),
        )
        .route(
            "/v1/messages",
            post(|State(gw): State<Arc<Gateway>>, request: Request| {
                handle(gw, ApiSurface::Anthropic, request)
            }),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// The API a proxied route speaks: `POST /v1/chat/completions` (OpenAI)
/// and `POST /v1/messages` (Anthropic). The server answers these through
/// `dispatch::handle` directly when it is given the gateway (no router, no
/// middleware on them), and the router does the same for other callers.
pub(crate) fn proxied_api(method: &http::Method, path: &str) -> Option<ApiSurface> {
    if method != http::Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(ApiSurface::Openai),
        "/v1/messages" => Some(ApiSurface::Anthropic),
        _ => None,
    }
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.events.is_writable() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "event log is not writable").into_response()
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
        .into_response()
}

fn model_api(headers: &HeaderMap) -> ApiSurface {
    if headers.contains_key("anthropic-version") {
        ApiSurface::Anthropic
    } else {
        ApiSurface::Openai
    }
}

/// Every catalog model as (listed name, provider): a model reachable by its
/// bare id is listed bare; otherwise provider-qualified.
fn listed_models(gateway: &Gateway) -> Vec<(String, &str)> {
    gateway
        .catalog
        .models()
        .iter()
        .map(|m| {
            let bare_default = gateway
                .catalog
                .model(&m.id)
                .is_some_and(|d| d.provider == m.provider);
            let name = if bare_default {
                m.id.clone()
            } else {
                format!("{}:{}", m.provider, m.id)
            };
            (name, m.provider.as_str())
        })
        .collect()
}

fn model_object(api: ApiSurface, id: &str, provider: &str) -> serde_json::Value {
    match api {
        ApiSurface::Openai => {
            json!({"id": id, "object": "model", "created": 0, "owned_by": provider})
        }
        ApiSurface::Anthropic => json!({
            "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"
        }),
    }
}

/// OpenAI's model list, or Anthropic's when the caller sends `anthropic-version`.
async fn list_models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let api = model_api(&headers);
    if let Err(err) = extract_token(&headers)
        .ok_or(ProxyError::MissingKey)
        .and_then(|token| gateway.authenticate(token))
    {
        return err.into_response_for(api);
    }
    let names = listed_models(&gateway);
    let data: Vec<_> = names
        .iter()
        .map(|(id, provider)| model_object(api, id, provider))
        .collect();
    let body = match api {
        ApiSurface::Openai => json!({"object": "list", "data": data}),
        ApiSurface::Anthropic => json!({
            "data": data,
            "has_more": false,
            "first_id": names.first().map(|(id, _)| id),
            "last_id": names.last().map(|(id, _)| id),
        }),
    };
    axum::Json(body).into_response()
}

/// One model of the list, by its listed name.
async fn get_model(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Path(model): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let api = model_api(&headers);
    if let Err(err) = extract_token(&headers)
        .ok_or(ProxyError::MissingKey)
        .and_then(|token| gateway.authenticate(token))
    {
        return err.into_response_for(api);
    }
    match listed_models(&gateway).iter().find(|(id, _)| *id == model) {
        Some((id, provider)) => axum::Json(model_object(api, id, provider)).into_response(),
        None => ProxyError::ModelUnknown { model }.into_response_for(api),
    }
}
