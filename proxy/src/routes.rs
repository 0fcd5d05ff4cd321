//! The composition root of the HTTP app. Layer order (outermost first):
//! the edge's limits (`crate::server`, `crate::edge`: connection, request
//! and buffered-byte caps, declared length, deadlines) → body-size limit →
//! handlers. Handlers read `Arc<Gateway>` state; auth, metering and
//! failover happen inside `dispatch::handle`, which checks the key before
//! reading the body.

use crate::api::anthropic_messages::AnthropicMessages;
use crate::api::openai_chat::OpenAiChat;
use crate::api::openai_embeddings::OpenAiEmbeddings;
use crate::api::openai_responses::OpenAiResponses;
use crate::api::ClientApi;
use crate::dispatch::{extract_token, handle};
use crate::error::ProxyError;
use crate::gateway::{Caller, Gateway};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use std::sync::Arc;
use tollgate_control::admin::AdminAuth;
use tollgate_core::Prices;

pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.config.server.max_body_bytes;
    let mut router = Router::new();
    for &api in CLIENT_APIS {
        router = router.route(
            api.path(),
            post(move |State(gw): State<Arc<Gateway>>, request: Request| handle(gw, api, request)),
        );
    }
    router
        .route(
            crate::api::count_tokens::PATH,
            post(|State(gw): State<Arc<Gateway>>, request: Request| {
                crate::api::count_tokens::handle(gw, request)
            }),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .merge(crate::health::router(
            gateway.events.clone(),
            gateway.metrics.registry.clone(),
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// The client APIs the gateway serves, each on its `POST` route. Adding an
/// API is its module (`crate::api`) plus its entry here.
pub(crate) static CLIENT_APIS: &[&dyn ClientApi] = &[
    &OpenAiChat,
    &AnthropicMessages,
    &OpenAiEmbeddings,
    &OpenAiResponses,
];

/// The API a proxied route speaks. The server answers these through
/// `dispatch::handle` directly when it is given the gateway (no router, no
/// middleware on them), and the router does the same for other callers.
pub(crate) fn proxied_api(method: &http::Method, path: &str) -> Option<&'static dyn ClientApi> {
    if method != http::Method::POST {
        return None;
    }
    CLIENT_APIS.iter().find(|api| api.path() == path).copied()
}

/// The API whose model list the caller gets: the one its headers name,
/// else OpenAI's.
fn model_api(headers: &HeaderMap) -> &'static dyn ClientApi {
    CLIENT_APIS
        .iter()
        .find(|api| api.named_by(headers))
        .copied()
        .unwrap_or(&OpenAiChat)
}

/// One model of `/v1/models`: its listed name, provider and effective unit
/// prices (None: unpriced, so it answers only on the caller's own key).
struct Listed<'a> {
    name: String,
    provider: &'a str,
    prices: Option<Prices>,
}

/// Every catalog model: a model reachable by its bare id is listed bare;
/// otherwise provider-qualified. Prices as `caller`'s snapshot has them,
/// overrides applied.
fn listed_models<'a>(gateway: &'a Gateway, caller: &Caller) -> Vec<Listed<'a>> {
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
            let (prices, _) =
                gateway.effective_prices(&caller.snapshot, &m.provider, &m.id, Some(m));
            Listed {
                name,
                provider: m.provider.as_str(),
                prices,
            }
        })
        .collect()
}

/// The API's model object plus `prices`: USD per million tokens per token
/// class, exact decimal strings (null when unpriced).
fn model_object(api: &dyn ClientApi, model: &Listed) -> serde_json::Value {
    api.model_object(&model.name, model.provider, model.prices.as_ref())
}

/// OpenAI's model list, or Anthropic's when the caller sends `anthropic-version`.
async fn list_models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let api = model_api(&headers);
    let caller = match extract_token(&headers)
        .ok_or(ProxyError::MissingKey)
        .and_then(|token| gateway.authenticate(token))
    {
        Ok(caller) => caller,
        Err(err) => return err.into_response_for(api),
    };
    let models = listed_models(&gateway, &caller);
    let data: Vec<_> = models.iter().map(|m| model_object(api, m)).collect();
    let first = models.first().map(|m| m.name.as_str());
    let last = models.last().map(|m| m.name.as_str());
    axum::Json(api.model_list(data, first, last)).into_response()
}

/// One model of the list, by its listed name.
async fn get_model(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Path(model): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let api = model_api(&headers);
    let caller = match extract_token(&headers)
        .ok_or(ProxyError::MissingKey)
        .and_then(|token| gateway.authenticate(token))
    {
        Ok(caller) => caller,
        Err(err) => return err.into_response_for(api),
    };
    match listed_models(&gateway, &caller)
        .iter()
        .find(|m| m.name == model)
    {
        Some(found) => axum::Json(model_object(api, found)).into_response(),
        None => ProxyError::ModelUnknown { model }.into_response_for(api),
    }
}

/// Admin routes served from the gateway's view (mounted on the admin
/// listener beside the control plane's): `GET /admin/v1/model-prices`, the
/// effective unit prices of every model and where each comes from.
pub fn admin_router(gateway: Arc<Gateway>, auth: AdminAuth) -> Router {
    Router::new()
        .route("/admin/v1/model-prices", get(model_prices))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            AdminAuth::require,
        ))
        .with_state(gateway)
}

/// Effective unit prices of every model the gateway knows (catalog, config
/// custom providers, runtime custom providers, overridden pass-through
/// models) and where each comes from.
#[utoipa::path(
    get,
    path = "/admin/v1/model-prices",
    responses(
        (status = 200, description = "Every model's effective prices", body = crate::admin_docs::ModelPriceList),
        (status = 401, description = "Missing or wrong admin token", body = tollgate_control::admin::ErrorBody),
    )
)]
async fn model_prices(State(gateway): State<Arc<Gateway>>) -> Response {
    let snapshot = gateway.control.snapshot();
    axum::Json(json!({"data": gateway.price_list(&snapshot)})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_api_is_found_by_its_route_and_only_on_post() {
        for api in CLIENT_APIS {
            let found = proxied_api(&http::Method::POST, api.path()).map(|a| a.surface());
            assert_eq!(found, Some(api.surface()), "{}", api.path());
            assert!(proxied_api(&http::Method::GET, api.path()).is_none());
        }
        assert!(proxied_api(&http::Method::POST, "/v1/models").is_none());
    }
}
