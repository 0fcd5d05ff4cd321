//! The admin API: JSON over HTTP under `/admin/v1`, authenticated by an
//! admin token compared in constant time. Secrets never leave it: access-key
//! tokens and webhook signing secrets are returned once (at creation or
//! rotation); provider keys never.

use crate::plane::{ConfigurationSpec, ControlError, ControlPlane, PriceSpec};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::budget::Budget;
use tollgate_core::control::{
    AccessKey, Account, Configuration, ConfigurationId, CustomProvider, PriceOverride, PricePlan,
    ProviderKey,
};
use tollgate_core::{AccessKeyId, AccountId, ApiSurface, ProviderKeyId};
use utoipa::ToSchema;

mod budgets;
mod plans;
mod webhooks;

/// The control plane's part of the admin API document, generated from the
/// handlers' types. The served document adds the parts of the routers
/// merged beside this one ([`AdminState::with_document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        version = "1",
        description = "Manage accounts, access keys, access-key configurations, provider keys, \
            custom providers, price overrides, price plans, budgets, alert webhooks and \
            accounts' low-balance amounts, and (where the ledger runs) accounts' credits. Every change is recorded on the control log and reaches every \
            gateway instance within a second."
    ),
    paths(
        list_accounts,
        create_account,
        get_account,
        list_keys,
        create_key,
        revoke_key,
        assign_configuration,
        list_configurations,
        create_configuration,
        get_configuration,
        update_configuration,
        delete_configuration,
        attach_key,
        detach_key,
        list_provider_keys,
        add_provider_key,
        rotate_provider_key,
        delete_provider_key,
        list_custom_providers,
        create_custom_provider,
        delete_custom_provider,
        list_price_overrides,
        set_price_override,
        delete_price_override,
        openapi,
        plans::list_price_plans,
        plans::create_price_plan,
        plans::get_price_plan,
        plans::update_price_plan,
        plans::delete_price_plan,
        plans::assign_price_plan,
        budgets::list_budgets,
        budgets::create_budget,
        budgets::get_budget,
        budgets::update_budget,
        budgets::delete_budget,
        budgets::set_low_balance,
        webhooks::list_webhooks,
        webhooks::create_webhook,
        webhooks::get_webhook,
        webhooks::update_webhook,
        webhooks::delete_webhook,
        webhooks::rotate_webhook_secret,
    ),
    modifiers(&ADMIN_TOKEN_SCHEME),
    security(("adminToken" = []))
)]
pub struct AdminApiDoc;

/// The document's security scheme.
const ADMIN_TOKEN_SCHEME: tollgate_core::openapi::BearerScheme =
    tollgate_core::openapi::BearerScheme {
        name: "adminToken",
        description: "The admin token (`TOLLGATE_ADMIN_TOKEN` or the admin token file).",
    };

/// The control plane's admin routes' document (without merged parts).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <AdminApiDoc as utoipa::OpenApi>::openapi()
}

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
    /// The document served at `/admin/v1/openapi.json`.
    document: Arc<utoipa::openapi::OpenApi>,
}

impl AdminState {
    pub fn new(control: Arc<ControlPlane>, admin_token: &str) -> AdminState {
        AdminState {
            control,
            auth: AdminAuth::new(admin_token),
            document: Arc::new(openapi_document()),
        }
    }

    /// Add the paths of a router merged beside the admin router (the
    /// proxy's, the ledger's) to the served document.
    pub fn with_document(mut self, part: utoipa::openapi::OpenApi) -> AdminState {
        Arc::make_mut(&mut self.document).merge(part);
        self
    }

    /// The document served at `/admin/v1/openapi.json`.
    pub fn document(&self) -> &utoipa::openapi::OpenApi {
        &self.document
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

/// The error body every refusal has: `{"error":{"type","message"}}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// unauthorized, invalid_request, not_found, conflict or unavailable.
    #[serde(rename = "type")]
    kind: &'static str,
    message: String,
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
        let body = ErrorBody {
            error: ErrorDetail { kind, message },
        };
        (status, Json(body)).into_response()
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

/// Path parameters with a 400 in the API's JSON shape (axum's is plain text).
struct PathParams<T>(T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(AdminError::BadRequest(rejection.body_text())),
        }
    }
}

/// Query parameters with a 400 in the API's JSON shape (axum's is plain text).
struct QueryParams<T>(T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(AdminError::BadRequest(rejection.body_text())),
        }
    }
}

/// `{"data": [...]}`, the shape of every listing.
macro_rules! listing {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            data: Vec<$item>,
        }
    };
}

listing!(AccountList, Account, "Accounts.");
listing!(AccessKeyList, AccessKeyView, "Access keys (never tokens).");
listing!(ConfigurationList, Configuration, "Configurations.");
listing!(
    ProviderKeyList,
    ProviderKeyView,
    "Provider keys (never secrets)."
);
listing!(
    CustomProviderList,
    CustomProvider,
    "Runtime custom providers."
);
listing!(PriceOverrideList, PriceOverride, "Runtime price overrides.");
listing!(PricePlanList, PricePlan, "Price plans.");
listing!(BudgetList, Budget, "Budgets.");
listing!(
    WebhookList,
    webhooks::WebhookView,
    "Webhooks (never their secrets)."
);

/// A new access key and its token, shown this once.
#[derive(Serialize, ToSchema)]
pub struct NewAccessKey {
    access_key: AccessKeyView,
    /// The token (tgk_…): returned only here, stored only as its SHA-256.
    token: String,
}

/// An access key as the API shows it: never the hash or token.
#[derive(Serialize, ToSchema)]
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
#[derive(Serialize, ToSchema)]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NameBody {
    /// Not blank (trimmed).
    #[schema(pattern = r"\S")]
    name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    /// Not blank (trimmed).
    #[schema(pattern = r"\S")]
    name: String,
    #[serde(default)]
    configuration_id: Option<ConfigurationId>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    configuration_id: Option<ConfigurationId>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProviderKeyBody {
    /// A built-in, config-file or runtime custom provider id.
    provider: String,
    /// Not blank (trimmed).
    #[schema(pattern = r"\S")]
    name: String,
    /// The upstream API key; stored encrypted, never returned. Not blank.
    #[schema(pattern = r"\S")]
    secret: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    /// The new upstream API key; stored encrypted, never returned. Not blank.
    #[schema(pattern = r"\S")]
    secret: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    provider_key_id: ProviderKeyId,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCustomProviderBody {
    /// Lowercase letters, digits, `-` or `_`; not a built-in or config-file provider id.
    #[schema(pattern = "^[a-z0-9_-]+$")]
    id: String,
    /// The upstream's base URL (http or https).
    #[schema(example = "https://llm.internal.example/v1")]
    base_url: String,
    api: ApiSurface,
    #[serde(default)]
    models: Vec<String>,
    /// Served on `/v1/embeddings`; only an `openai` api provider may have
    /// them, and a model is in `models` or here, not both.
    #[serde(default)]
    embedding_models: Vec<String>,
    /// Whether the upstream serves OpenAI's Responses API (`POST
    /// /responses`; an `openai` api provider only): `/v1/responses` then
    /// passes through instead of being translated to chat completions.
    #[serde(default)]
    responses: bool,
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
        .merge(budgets::routes())
        .merge(webhooks::routes())
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

/// This document
#[utoipa::path(
    get,
    path = "/admin/v1/openapi.json",
    security(()),
    responses(
        (status = 200, description = "OpenAPI document", body = Object),
    )
)]
async fn openapi(State(s): State<AdminState>) -> Json<utoipa::openapi::OpenApi> {
    Json(s.document().clone())
}

/// List accounts
#[utoipa::path(
    get,
    path = "/admin/v1/accounts",
    responses(
        (status = 200, description = "The accounts", body = AccountList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn list_accounts(State(s): State<AdminState>) -> Json<AccountList> {
    let snapshot = s.control.snapshot();
    Json(AccountList {
        data: snapshot.accounts.values().cloned().collect(),
    })
}

/// Create an account
#[utoipa::path(
    post,
    path = "/admin/v1/accounts",
    request_body = NameBody,
    responses(
        (status = 201, description = "The new account", body = Account),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn create_account(
    State(s): State<AdminState>,
    JsonBody(body): JsonBody<NameBody>,
) -> AdminResult<(StatusCode, Json<Account>)> {
    let account = s.control.create_account(&body.name).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

/// Get an account
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )
)]
async fn get_account(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
) -> AdminResult<Json<Account>> {
    let snapshot = s.control.snapshot();
    let account = snapshot
        .accounts
        .get(&AccountId(account_id.clone()))
        .ok_or_else(|| ControlError::NotFound(format!("account {account_id}")))?;
    Ok(Json(account.clone()))
}

/// List an account's access keys (never tokens)
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/access-keys",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The keys", body = AccessKeyList),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )
)]
async fn list_keys(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
) -> AdminResult<Json<AccessKeyList>> {
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
    Ok(Json(AccessKeyList { data: keys }))
}

/// Create an access key; the token is returned only in this response
#[utoipa::path(
    post,
    path = "/admin/v1/accounts/{account_id}/access-keys",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = NewKeyBody,
    responses(
        (status = 201, description = "The key and its token", body = NewAccessKey),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn create_key(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
    JsonBody(body): JsonBody<NewKeyBody>,
) -> AdminResult<(StatusCode, Json<NewAccessKey>)> {
    let (key, token) = s
        .control
        .create_access_key(&AccountId(account_id), &body.name, body.configuration_id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewAccessKey {
            access_key: key_view(&s.control, &key),
            token,
        }),
    ))
}

/// Revoke an access key (refused by every gateway within 1 s)
#[utoipa::path(
    post,
    path = "/admin/v1/access-keys/{key_id}/revoke",
    params(("key_id" = String, Path, description = "The access key (ak_…)")),
    responses(
        (status = 200, description = "The revoked key", body = AccessKeyView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn revoke_key(
    State(s): State<AdminState>,
    PathParams(key_id): PathParams<String>,
) -> AdminResult<Json<AccessKeyView>> {
    let key = s.control.revoke_access_key(&AccessKeyId(key_id)).await?;
    Ok(Json(key_view(&s.control, &key)))
}

/// Assign (or clear, with null) a key's configuration
#[utoipa::path(
    put,
    path = "/admin/v1/access-keys/{key_id}/configuration",
    params(("key_id" = String, Path, description = "The access key (ak_…)")),
    request_body = AssignBody,
    responses(
        (status = 200, description = "The key", body = AccessKeyView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn assign_configuration(
    State(s): State<AdminState>,
    PathParams(key_id): PathParams<String>,
    JsonBody(body): JsonBody<AssignBody>,
) -> AdminResult<Json<AccessKeyView>> {
    let key = s
        .control
        .assign_configuration(&AccessKeyId(key_id), body.configuration_id)
        .await?;
    Ok(Json(key_view(&s.control, &key)))
}

/// List an account's access-key configurations
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/configurations",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The configurations", body = ConfigurationList),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn list_configurations(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
) -> Json<ConfigurationList> {
    let snapshot = s.control.snapshot();
    let account_id = AccountId(account_id);
    let data = snapshot
        .configurations
        .values()
        .filter(|c| c.account_id == account_id)
        .cloned()
        .collect();
    Json(ConfigurationList { data })
}

/// Create a configuration
#[utoipa::path(
    post,
    path = "/admin/v1/accounts/{account_id}/configurations",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = ConfigurationSpec,
    responses(
        (status = 201, description = "The new configuration", body = Configuration),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn create_configuration(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
    JsonBody(spec): JsonBody<ConfigurationSpec>,
) -> AdminResult<(StatusCode, Json<Configuration>)> {
    let config = s
        .control
        .create_configuration(&AccountId(account_id), spec)
        .await?;
    Ok((StatusCode::CREATED, Json(config)))
}

/// Get a configuration
#[utoipa::path(
    get,
    path = "/admin/v1/configurations/{config_id}",
    params(("config_id" = String, Path, description = "The configuration (cfg_…)")),
    responses(
        (status = 200, description = "The configuration", body = Configuration),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )
)]
async fn get_configuration(
    State(s): State<AdminState>,
    PathParams(config_id): PathParams<String>,
) -> AdminResult<Json<Configuration>> {
    Ok(Json(s.control.configuration(&ConfigurationId(config_id))?))
}

/// Replace a configuration's rules (attachments are kept)
#[utoipa::path(
    put,
    path = "/admin/v1/configurations/{config_id}",
    params(("config_id" = String, Path, description = "The configuration (cfg_…)")),
    request_body = ConfigurationSpec,
    responses(
        (status = 200, description = "The configuration", body = Configuration),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn update_configuration(
    State(s): State<AdminState>,
    PathParams(config_id): PathParams<String>,
    JsonBody(spec): JsonBody<ConfigurationSpec>,
) -> AdminResult<Json<Configuration>> {
    let config = s
        .control
        .update_configuration(&ConfigurationId(config_id), spec)
        .await?;
    Ok(Json(config))
}

/// Delete a configuration not assigned to an active key
#[utoipa::path(
    delete,
    path = "/admin/v1/configurations/{config_id}",
    params(("config_id" = String, Path, description = "The configuration (cfg_…)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn delete_configuration(
    State(s): State<AdminState>,
    PathParams(config_id): PathParams<String>,
) -> AdminResult<StatusCode> {
    s.control
        .delete_configuration(&ConfigurationId(config_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Attach a provider key (most recently attached is tried first)
#[utoipa::path(
    post,
    path = "/admin/v1/configurations/{config_id}/provider-keys",
    params(("config_id" = String, Path, description = "The configuration (cfg_…)")),
    request_body = AttachBody,
    responses(
        (status = 200, description = "The configuration", body = Configuration),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn attach_key(
    State(s): State<AdminState>,
    PathParams(config_id): PathParams<String>,
    JsonBody(body): JsonBody<AttachBody>,
) -> AdminResult<Json<Configuration>> {
    let config = s
        .control
        .attach_provider_key(&ConfigurationId(config_id), &body.provider_key_id)
        .await?;
    Ok(Json(config))
}

/// Detach a provider key
#[utoipa::path(
    delete,
    path = "/admin/v1/configurations/{config_id}/provider-keys/{provider_key_id}",
    params(("config_id" = String, Path, description = "The configuration (cfg_…)"), ("provider_key_id" = String, Path, description = "The provider key (pk_…)")),
    responses(
        (status = 200, description = "The configuration", body = Configuration),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn detach_key(
    State(s): State<AdminState>,
    PathParams((config_id, provider_key_id)): PathParams<(String, String)>,
) -> AdminResult<Json<Configuration>> {
    let config = s
        .control
        .detach_provider_key(&ConfigurationId(config_id), &ProviderKeyId(provider_key_id))
        .await?;
    Ok(Json(config))
}

/// List an account's provider keys (never secrets)
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/provider-keys",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The provider keys", body = ProviderKeyList),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn list_provider_keys(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
) -> Json<ProviderKeyList> {
    let snapshot = s.control.snapshot();
    let account_id = AccountId(account_id);
    let keys: Vec<ProviderKeyView> = snapshot
        .provider_keys
        .values()
        .filter(|k| k.account_id == account_id)
        .map(ProviderKeyView::from)
        .collect();
    Json(ProviderKeyList { data: keys })
}

/// Store a provider key (encrypted at rest)
#[utoipa::path(
    post,
    path = "/admin/v1/accounts/{account_id}/provider-keys",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = NewProviderKeyBody,
    responses(
        (status = 201, description = "The provider key (never its secret)", body = ProviderKeyView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn add_provider_key(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
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

/// Rotate a provider key's secret, keeping its id
#[utoipa::path(
    put,
    path = "/admin/v1/provider-keys/{provider_key_id}/secret",
    params(("provider_key_id" = String, Path, description = "The provider key (pk_…)")),
    request_body = SecretBody,
    responses(
        (status = 200, description = "The provider key", body = ProviderKeyView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn rotate_provider_key(
    State(s): State<AdminState>,
    PathParams(provider_key_id): PathParams<String>,
    JsonBody(body): JsonBody<SecretBody>,
) -> AdminResult<Json<ProviderKeyView>> {
    let key = s
        .control
        .rotate_provider_key(&ProviderKeyId(provider_key_id), &body.secret)
        .await?;
    Ok(Json(ProviderKeyView::from(&key)))
}

/// Delete a provider key (detached everywhere first)
#[utoipa::path(
    delete,
    path = "/admin/v1/provider-keys/{provider_key_id}",
    params(("provider_key_id" = String, Path, description = "The provider key (pk_…)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn delete_provider_key(
    State(s): State<AdminState>,
    PathParams(provider_key_id): PathParams<String>,
) -> AdminResult<StatusCode> {
    s.control
        .delete_provider_key(&ProviderKeyId(provider_key_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List runtime custom providers
#[utoipa::path(
    get,
    path = "/admin/v1/custom-providers",
    responses(
        (status = 200, description = "The custom providers", body = CustomProviderList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn list_custom_providers(State(s): State<AdminState>) -> Json<CustomProviderList> {
    let snapshot = s.control.snapshot();
    Json(CustomProviderList {
        data: snapshot.custom_providers.values().cloned().collect(),
    })
}

/// Define a custom provider (ids from the config file are refused)
#[utoipa::path(
    post,
    path = "/admin/v1/custom-providers",
    request_body = NewCustomProviderBody,
    responses(
        (status = 201, description = "The custom provider", body = CustomProvider),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn create_custom_provider(
    State(s): State<AdminState>,
    JsonBody(body): JsonBody<NewCustomProviderBody>,
) -> AdminResult<(StatusCode, Json<CustomProvider>)> {
    let provider = s
        .control
        .create_custom_provider(
            &body.id,
            &body.base_url,
            body.api,
            body.models,
            body.embedding_models,
            body.responses,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(provider)))
}

/// Delete a runtime custom provider
#[utoipa::path(
    delete,
    path = "/admin/v1/custom-providers/{provider_id}",
    params(("provider_id" = String, Path, description = "The runtime custom provider id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn delete_custom_provider(
    State(s): State<AdminState>,
    PathParams(provider_id): PathParams<String>,
) -> AdminResult<StatusCode> {
    s.control.delete_custom_provider(&provider_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- price overrides ---------------------------------------------------------

/// List runtime price overrides
#[utoipa::path(
    get,
    path = "/admin/v1/price-overrides",
    responses(
        (status = 200, description = "The overrides", body = PriceOverrideList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn list_price_overrides(State(s): State<AdminState>) -> Json<PriceOverrideList> {
    let snapshot = s.control.snapshot();
    Json(PriceOverrideList {
        data: snapshot.price_override_list().cloned().collect(),
    })
}

/// Set (or replace) the unit prices of provider:model; they win over the config file's overrides, declared custom-provider prices and the catalog, and price a model that has none. Reaches every instance within a second.
#[utoipa::path(
    put,
    path = "/admin/v1/price-overrides/{provider}/{model}",
    params(("provider" = String, Path, description = "The provider id"), ("model" = String, Path, description = "The model id as requested after the provider prefix (may contain `/`)")),
    request_body = PriceSpec,
    responses(
        (status = 200, description = "The override", body = PriceOverride),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn set_price_override(
    State(s): State<AdminState>,
    PathParams((provider, model)): PathParams<(String, String)>,
    JsonBody(spec): JsonBody<PriceSpec>,
) -> AdminResult<Json<PriceOverride>> {
    let price = s
        .control
        .set_price_override(&provider, &model, &spec)
        .await?;
    Ok(Json(price))
}

/// Remove a runtime override: the config file's or the catalog's prices apply again (or none)
#[utoipa::path(
    delete,
    path = "/admin/v1/price-overrides/{provider}/{model}",
    params(("provider" = String, Path, description = "The provider id"), ("model" = String, Path, description = "The model id as requested after the provider prefix (may contain `/`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
async fn delete_price_override(
    State(s): State<AdminState>,
    PathParams((provider, model)): PathParams<(String, String)>,
) -> AdminResult<StatusCode> {
    s.control.delete_price_override(&provider, &model).await?;
    Ok(StatusCode::NO_CONTENT)
}
