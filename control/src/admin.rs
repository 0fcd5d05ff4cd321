//! The admin API: JSON over HTTP under `/admin/v1`, authenticated by an
//! admin token compared in constant time. Secrets never leave it: access-key
//! tokens are returned once at creation; provider keys never.

use crate::plane::{ConfigurationSpec, ControlError, ControlPlane, PriceSpec};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::control::{AccessKey, ConfigurationId, ProviderKey};
use tollgate_core::{AccessKeyId, AccountId, ApiSurface, ProviderKeyId};

mod plans;

pub const OPENAPI: &str = include_str!("../openapi/admin.json");

/// Admin-token check: SHA-256 digests compared in constant time, so
/// neither the token's length nor its content leaks through timing.
#[derive(Clone)]
pub struct AdminAuth {
    token_digest: [u8; 32],
}

impl AdminAuth {
    pub fn new(admin_token: &str) -> AdminAuth {
        AdminAuth {
            token_digest: digest(admin_token),
        }
    }

    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let presented = tollgate_core::secrets::request_token(headers).unwrap_or("");
        !presented.is_empty() && bool::from(digest(presented).ct_eq(&self.token_digest))
    }

    /// Middleware refusing requests without the admin token (401, JSON).
    pub async fn require(
        State(auth): State<AdminAuth>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> Response {
        if auth.authorized(request.headers()) {
            next.run(request).await
        } else {
            AdminError::Unauthorized.into_response()
        }
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub control: Arc<ControlPlane>,
    pub auth: AdminAuth,
}

impl AdminState {
    pub fn new(control: Arc<ControlPlane>, admin_token: &str) -> AdminState {
        AdminState {
            control,
            auth: AdminAuth::new(admin_token),
        }
    }
}

fn digest(text: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).into()
}

#[derive(Debug)]
pub enum AdminError {
    Unauthorized,
    BadRequest(String),
    Control(ControlError),
}

impl From<ControlError> for AdminError {
    fn from(err: ControlError) -> Self {
        AdminError::Control(err)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, kind, message) = match self {
            AdminError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid admin token: send `Authorization: Bearer <admin token>`"
                    .to_owned(),
            ),
            AdminError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m),
            AdminError::Control(err) => match err {
                ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", err.to_string()),
                ControlError::Conflict(_) => (StatusCode::CONFLICT, "conflict", err.to_string()),
                ControlError::Invalid(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_request", err.to_string())
                }
                ControlError::Log(_) => {
                    tracing::error!(error = %err, "admin change could not be recorded");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        err.to_string(),
                    )
                }
            },
        };
        (
            status,
            Json(json!({"error": {"type": kind, "message": message}})),
        )
            .into_response()
    }
}

type AdminResult<T> = Result<T, AdminError>;

/// Body parsing with a 400 naming what is wrong (axum's default is plain text).
struct JsonBody<T>(T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(AdminError::BadRequest(rejection.body_text())),
        }
    }
}

/// An access key as the API shows it: never the hash or token.
#[derive(Serialize)]
pub struct AccessKeyView {
    pub id: AccessKeyId,
    pub account_id: AccountId,
    pub name: String,
    pub token_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub configuration_id: Option<ConfigurationId>,
}

fn key_view(control: &ControlPlane, key: &AccessKey) -> AccessKeyView {
    AccessKeyView {
        id: key.id.clone(),
        account_id: key.account_id.clone(),
        name: key.name.clone(),
        token_prefix: key.token_prefix.clone(),
        created_at: key.created_at,
        revoked_at: key.revoked_at,
        last_used_at: control.snapshot().last_used.get(&key.id).copied(),
        configuration_id: key.configuration_id.clone(),
    }
}

/// A provider key as the API shows it: never the secret, not even encrypted.
#[derive(Serialize)]
pub struct ProviderKeyView {
    pub id: ProviderKeyId,
    pub account_id: AccountId,
    pub provider: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

impl From<&ProviderKey> for ProviderKeyView {
    fn from(key: &ProviderKey) -> Self {
        ProviderKeyView {
            id: key.id.clone(),
            account_id: key.account_id.clone(),
            provider: key.provider.clone(),
            name: key.name.clone(),
            created_at: key.created_at,
            rotated_at: key.rotated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: String,
    #[serde(default)]
    configuration_id: Option<ConfigurationId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    configuration_id: Option<ConfigurationId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProviderKeyBody {
    provider: String,
    name: String,
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    provider_key_id: ProviderKeyId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCustomProviderBody {
    id: String,
    base_url: String,
    api: ApiSurface,
    #[serde(default)]
    models: Vec<String>,
}

/// The admin router; mount it on its own listener.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route(
            "/admin/v1/accounts",
            get(list_accounts).post(create_account),
        )
        .route("/admin/v1/accounts/{account_id}", get(get_account))
        .route(
            "/admin/v1/accounts/{account_id}/access-keys",
            get(list_keys).post(create_key),
        )
        .route("/admin/v1/access-keys/{key_id}/revoke", post(revoke_key))
        .route(
            "/admin/v1/access-keys/{key_id}/configuration",
            put(assign_configuration),
        )
        .route(
            "/admin/v1/accounts/{account_id}/configurations",
            get(list_configurations).post(create_configuration),
        )
        .route(
            "/admin/v1/configurations/{config_id}",
            get(get_configuration)
                .put(update_configuration)
                .delete(delete_configuration),
        )
        .route(
            "/admin/v1/configurations/{config_id}/provider-keys",
            post(attach_key),
        )
        .route(
            "/admin/v1/configurations/{config_id}/provider-keys/{provider_key_id}",
            axum::routing::delete(detach_key),
        )
        .route(
            "/admin/v1/accounts/{account_id}/provider-keys",
            get(list_provider_keys).post(add_provider_key),
        )
        .route(
            "/admin/v1/provider-keys/{provider_key_id}/secret",
            put(rotate_provider_key),
        )
        .route(
            "/admin/v1/provider-keys/{provider_key_id}",
            axum::routing::delete(delete_provider_key),
        )
        .route(
            "/admin/v1/custom-providers",
            get(list_custom_providers).post(create_custom_provider),
        )
        .route(
            "/admin/v1/custom-providers/{provider_id}",
            axum::routing::delete(delete_custom_provider),
        )
        .merge(plans::routes())
        .route("/admin/v1/price-overrides", get(list_price_overrides))
        .route(
            "/admin/v1/price-overrides/{provider}/{*model}",
            put(set_price_override).delete(delete_price_override),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            AdminAuth::require,
        ))
        .route("/admin/v1/openapi.json", get(openapi));
    // Full paths (no `nest`): other routers (credits) merge beside these.
    api.with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_accounts(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = s.control.snapshot();
    Json(json!({"data": snapshot.accounts.values().collect::<Vec<_>>()}))
}

async fn create_account(
    State(s): State<AdminState>,
    JsonBody(body): JsonBody<NameBody>,
) -> AdminResult<(StatusCode, Json<serde_json::Value>)> {
    let account = s.control.create_account(&body.name).await?;
    Ok((StatusCode::CREATED, Json(json!(account))))
}

async fn get_account(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
) -> AdminResult<Json<serde_json::Value>> {
    let snapshot = s.control.snapshot();
    let account = snapshot
        .accounts
        .get(&AccountId(account_id.clone()))
        .ok_or_else(|| ControlError::NotFound(format!("account {account_id}")))?;
    Ok(Json(json!(account)))
}

async fn list_keys(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
) -> AdminResult<Json<serde_json::Value>> {
    let snapshot = s.control.snapshot();
    let account_id = AccountId(account_id);
    if !snapshot.accounts.contains_key(&account_id) {
        return Err(ControlError::NotFound(format!("account {account_id}")).into());
    }
    let keys: Vec<AccessKeyView> = snapshot
        .access_keys
        .values()
        .filter(|k| k.account_id == account_id)
        .map(|k| key_view(&s.control, k))
        .collect();
    Ok(Json(json!({ "data": keys })))
}

async fn create_key(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
    JsonBody(body): JsonBody<NewKeyBody>,
) -> AdminResult<(StatusCode, Json<serde_json::Value>)> {
    let (key, token) = s
        .control
        .create_access_key(&AccountId(account_id), &body.name, body.configuration_id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"access_key": key_view(&s.control, &key), "token": token})),
    ))
}

async fn revoke_key(
    State(s): State<AdminState>,
    Path(key_id): Path<String>,
) -> AdminResult<Json<AccessKeyView>> {
    let key = s.control.revoke_access_key(&AccessKeyId(key_id)).await?;
    Ok(Json(key_view(&s.control, &key)))
}

async fn assign_configuration(
    State(s): State<AdminState>,
    Path(key_id): Path<String>,
    JsonBody(body): JsonBody<AssignBody>,
) -> AdminResult<Json<AccessKeyView>> {
    let key = s
        .control
        .assign_configuration(&AccessKeyId(key_id), body.configuration_id)
        .await?;
    Ok(Json(key_view(&s.control, &key)))
}

async fn list_configurations(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
) -> Json<serde_json::Value> {
    let snapshot = s.control.snapshot();
    let account_id = AccountId(account_id);
    let configs: Vec<_> = snapshot
        .configurations
        .values()
        .filter(|c| c.account_id == account_id)
        .collect();
    Json(json!({ "data": configs }))
}

async fn create_configuration(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
    JsonBody(spec): JsonBody<ConfigurationSpec>,
) -> AdminResult<(StatusCode, Json<serde_json::Value>)> {
    let config = s
        .control
        .create_configuration(&AccountId(account_id), spec)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(config))))
}

async fn get_configuration(
    State(s): State<AdminState>,
    Path(config_id): Path<String>,
) -> AdminResult<Json<serde_json::Value>> {
    Ok(Json(json!(s
        .control
        .configuration(&ConfigurationId(config_id))?)))
}

async fn update_configuration(
    State(s): State<AdminState>,
    Path(config_id): Path<String>,
    JsonBody(spec): JsonBody<ConfigurationSpec>,
) -> AdminResult<Json<serde_json::Value>> {
    let config = s
        .control
        .update_configuration(&ConfigurationId(config_id), spec)
        .await?;
    Ok(Json(json!(config)))
}

async fn delete_configuration(
    State(s): State<AdminState>,
    Path(config_id): Path<String>,
) -> AdminResult<StatusCode> {
    s.control
        .delete_configuration(&ConfigurationId(config_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attach_key(
    State(s): State<AdminState>,
    Path(config_id): Path<String>,
    JsonBody(body): JsonBody<AttachBody>,
) -> AdminResult<Json<serde_json::Value>> {
    let config = s
        .control
        .attach_provider_key(&ConfigurationId(config_id), &body.provider_key_id)
        .await?;
    Ok(Json(json!(config)))
}

async fn detach_key(
    State(s): State<AdminState>,
    Path((config_id, provider_key_id)): Path<(String, String)>,
) -> AdminResult<Json<serde_json::Value>> {
    let config = s
        .control
        .detach_provider_key(&ConfigurationId(config_id), &ProviderKeyId(provider_key_id))
        .await?;
    Ok(Json(json!(config)))
}

async fn list_provider_keys(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
) -> Json<serde_json::Value> {
    let snapshot = s.control.snapshot();
    let account_id = AccountId(account_id);
    let keys: Vec<ProviderKeyView> = snapshot
        .provider_keys
        .values()
        .filter(|k| k.account_id == account_id)
        .map(ProviderKeyView::from)
        .collect();
    Json(json!({ "data": keys }))
}

async fn add_provider_key(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
    JsonBody(body): JsonBody<NewProviderKeyBody>,
) -> AdminResult<(StatusCode, Json<ProviderKeyView>)> {
    let key = s
        .control
        .add_provider_key(
            &AccountId(account_id),
            &body.provider,
            &body.name,
            &body.secret,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ProviderKeyView::from(&key))))
}

async fn rotate_provider_key(
    State(s): State<AdminState>,
    Path(provider_key_id): Path<String>,
    JsonBody(body): JsonBody<SecretBody>,
) -> AdminResult<Json<ProviderKeyView>> {
    let key = s
        .control
        .rotate_provider_key(&ProviderKeyId(provider_key_id), &body.secret)
        .await?;
    Ok(Json(ProviderKeyView::from(&key)))
}

async fn delete_provider_key(
    State(s): State<AdminState>,
    Path(provider_key_id): Path<String>,
) -> AdminResult<StatusCode> {
    s.control
        .delete_provider_key(&ProviderKeyId(provider_key_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_custom_providers(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = s.control.snapshot();
    Json(json!({"data": snapshot.custom_providers.values().collect::<Vec<_>>()}))
}

async fn create_custom_provider(
    State(s): State<AdminState>,
    JsonBody(body): JsonBody<NewCustomProviderBody>,
) -> AdminResult<(StatusCode, Json<serde_json::Value>)> {
    let provider = s
        .control
        .create_custom_provider(&body.id, &body.base_url, body.api, body.models)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(provider))))
}

async fn delete_custom_provider(
    State(s): State<AdminState>,
    Path(provider_id): Path<String>,
) -> AdminResult<StatusCode> {
    s.control.delete_custom_provider(&provider_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- price overrides ---------------------------------------------------------

async fn list_price_overrides(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = s.control.snapshot();
    Json(json!({"data": snapshot.price_override_list().collect::<Vec<_>>()}))
}

async fn set_price_override(
    State(s): State<AdminState>,
    Path((provider, model)): Path<(String, String)>,
    JsonBody(spec): JsonBody<PriceSpec>,
) -> AdminResult<Json<serde_json::Value>> {
    let price = s
        .control
        .set_price_override(&provider, &model, &spec)
        .await?;
    Ok(Json(json!(price)))
}

async fn delete_price_override(
    State(s): State<AdminState>,
    Path((provider, model)): Path<(String, String)>,
) -> AdminResult<StatusCode> {
    s.control.delete_price_override(&provider, &model).await?;
    Ok(StatusCode::NO_CONTENT)
}
