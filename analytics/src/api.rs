//! The usage query API: `GET /v1/usage` (JSON) and its OpenAPI document.
//!
//! Every parameter is validated before a store is asked; a bad one is a 400
//! naming it. Scope comes from the bearer token: an access key sees only its
//! own account (whatever `account_id` says), the admin token sees all.

use crate::error::AnalyticsError;
use crate::model::{Bucket, GroupBy, StatusClass, UsageGroup, UsageQuery};
use crate::store::UsageStore;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::{AccountId, CredentialSource, Endpoint};

/// The usage API's OpenAPI document, generated from the handlers' types
/// and served at `/v1/usage/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate usage API",
        version = "1",
        description = "Usage analytics per account: requests, errors, tokens by class, exact costs \
            (decimal strings) and latency percentiles, grouped and bucketed. An access key sees only \
            its own account; the admin token sees every account and may pass account_id."
    ),
    paths(usage, openapi),
    modifiers(&BEARER_SCHEME),
    security(("bearer" = []))
)]
pub struct UsageApiDoc;

/// The bearer scheme: an access key or the admin token.
const BEARER_SCHEME: tollgate_core::openapi::BearerScheme = tollgate_core::openapi::BearerScheme {
    name: "bearer",
    description: "A Tollgate access key (tgk_…) or the admin token.",
};

/// The document as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <UsageApiDoc as utoipa::OpenApi>::openapi()
}

/// Most buckets one query may return per group: 10,000 (a week of minutes).
pub const MAX_BUCKETS: i64 = 10_000;

/// What a caller may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only this account's usage.
    Account(AccountId),
    /// Every account (the admin token).
    All,
}

/// Maps a bearer token to a scope; None refuses it. The integrator wires
/// this to the control plane (access keys) and the admin token, e.g. with
/// [`TokenAuthorizer`], or any closure `Fn(&str) -> Option<Scope>`.
pub trait Authorizer: Send + Sync + 'static {
    fn scope(&self, token: &str) -> Option<Scope>;
}

impl<F> Authorizer for F
where
    F: Fn(&str) -> Option<Scope> + Send + Sync + 'static,
{
    fn scope(&self, token: &str) -> Option<Scope> {
        self(token)
    }
}

/// The usual wiring: the admin token (compared as SHA-256 digests in
/// constant time) sees everything; any other token is hashed as access
/// keys are stored and looked up (e.g. in the control-plane snapshot:
/// `move |hash| plane.snapshot().key_by_hash(hash).map(|k| k.account_id.clone())`).
pub struct TokenAuthorizer<F> {
    admin_digest: Option<[u8; 32]>,
    lookup: F,
}

impl<F> TokenAuthorizer<F>
where
    F: Fn(&str) -> Option<AccountId> + Send + Sync + 'static,
{
    /// `admin_token` None: no admin access through this API.
    pub fn new(admin_token: Option<&str>, lookup: F) -> TokenAuthorizer<F> {
        TokenAuthorizer {
            admin_digest: admin_token.filter(|t| !t.is_empty()).map(digest),
            lookup,
        }
    }
}

fn digest(text: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).into()
}

impl<F> Authorizer for TokenAuthorizer<F>
where
    F: Fn(&str) -> Option<AccountId> + Send + Sync + 'static,
{
    fn scope(&self, token: &str) -> Option<Scope> {
        if let Some(admin) = &self.admin_digest {
            if bool::from(digest(token).ct_eq(admin)) {
                return Some(Scope::All);
            }
        }
        (self.lookup)(&tollgate_core::secrets::hash_access_token(token)).map(Scope::Account)
    }
}

#[derive(Clone)]
struct ApiState {
    store: Arc<dyn UsageStore>,
    auth: Arc<dyn Authorizer>,
}

/// The usage API routes: `GET /v1/usage` and `GET /v1/usage/openapi.json`.
pub fn router(store: Arc<dyn UsageStore>, auth: Arc<dyn Authorizer>) -> Router {
    Router::new()
        .route("/v1/usage", get(usage))
        .route("/v1/usage/openapi.json", get(openapi))
        .with_state(ApiState { store, auth })
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/usage/openapi.json",
    operation_id = "getUsageOpenApi",
    security(()),
    responses((status = 200, description = "OpenAPI document", body = Object))
)]
async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

/// The error body every refusal has: `{"error":{"type","param"?,"message"}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// invalid_request, authentication_error, permission_denied or unavailable.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The parameter at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    param: Option<&'static str>,
    message: String,
}

/// An API error, answered as an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request",
            param: Some(param),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind,
                param: self.param,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    /// axum's own refusal (plain text) in this API's JSON shape.
    fn from(rejection: QueryRejection) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request",
            param: None,
            message: rejection.body_text(),
        }
    }
}

/// The parameters `GET /v1/usage` accepts; anything else is refused.
pub const PARAMETERS: &[&str] = &[
    "start",
    "end",
    "account_id",
    "access_key_id",
    "provider",
    "model",
    "status_class",
    "credential_source",
    "endpoint",
    "end_user",
    "tag",
    "group_by",
    "bucket",
];

/// The raw parameters of `GET /v1/usage`, each at most once; [`parse_query`]
/// validates them. Documented from this type.
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Range start, inclusive (RFC 3339). Millisecond resolution.
    #[param(required = true, value_type = String, format = DateTime, example = "2025-01-01T00:00:00Z")]
    start: Option<String>,
    /// Range end, exclusive (RFC 3339); after start.
    #[param(required = true, value_type = String, format = DateTime, example = "2025-01-02T00:00:00Z")]
    end: Option<String>,
    /// Admin token only: restrict to one account. An access key may pass only its own account.
    #[param(min_length = 1, max_length = 256)]
    account_id: Option<String>,
    /// Only requests made with this access key id (ak_…).
    #[param(min_length = 1, max_length = 256)]
    access_key_id: Option<String>,
    /// Only requests answered (or last tried) by this provider.
    #[param(min_length = 1, max_length = 256)]
    provider: Option<String>,
    /// Only this model (the model that answered, else the one requested).
    #[param(min_length = 1, max_length = 256)]
    model: Option<String>,
    /// Only this HTTP status class.
    #[param(schema_with = status_class_schema)]
    status_class: Option<String>,
    /// Only requests answered with the operator's credentials or the caller's own provider key.
    #[param(schema_with = credential_source_schema)]
    credential_source: Option<String>,
    /// Only requests served by this endpoint: chat (`/v1/chat/completions`), messages
    /// (`/v1/messages`), responses (`/v1/responses`) or embeddings (`/v1/embeddings`).
    #[param(schema_with = endpoint_schema)]
    endpoint: Option<String>,
    /// Only requests made for this end user (as the gateway stored it: declared or hashed).
    #[param(min_length = 1, max_length = 256)]
    end_user: Option<String>,
    /// Only requests carrying this tag with this value: `<key>:<value>` (the value may
    /// contain `:`). A key is 1 to 64 letters, digits, `_`, `-` or `.`.
    #[param(schema_with = tag_schema)]
    tag: Option<String>,
    /// Comma-separated dimensions (provider, model, access_key, status, endpoint, end_user,
    /// `tag:<key>`), each at most once, at most one tag.
    #[param(example = "provider,model")]
    group_by: Option<String>,
    /// Time bucket (UTC). At most 10000 buckets per range.
    #[param(value_type = Option<Bucket>)]
    bucket: Option<String>,
}

fn string_enum(values: &[&str], description: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

fn status_class_schema() -> utoipa::openapi::Object {
    string_enum(&["2xx", "4xx", "5xx"], "Only this HTTP status class.")
}

fn credential_source_schema() -> utoipa::openapi::Object {
    string_enum(
        &["operator", "byok"],
        "Only requests answered with the operator's credentials or the caller's own provider key.",
    )
}

fn endpoint_schema() -> utoipa::openapi::Object {
    string_enum(
        &Endpoint::ALL.map(Endpoint::as_str),
        "Only requests served by this endpoint: chat (/v1/chat/completions), messages \
         (/v1/messages), responses (/v1/responses) or embeddings (/v1/embeddings).",
    )
}

fn tag_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(TAG_FILTER_PATTERN))
        .max_length(Some(256 + 65))
        .description(Some(
            "Only requests carrying this tag with this value: `<key>:<value>`. A key is 1 to 64 \
             letters, digits, `_`, `-` or `.`; the value 1 to 256 characters.",
        ))
        .examples([serde_json::json!("team:search")])
        .build()
}

/// A tag filter: key, `:`, value.
const TAG_FILTER_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}:.{1,256}$";

/// Whether `key` is a tag key the API accepts: 1 to 64 ASCII letters,
/// digits, `_`, `-` or `.`.
pub fn valid_tag_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl UsageParams {
    /// Sort raw pairs into the parameters: unknown or repeated names are refused.
    fn from_pairs(pairs: &[(String, String)]) -> Result<UsageParams, ApiError> {
        let mut params = UsageParams::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "start" => &mut params.start,
                "end" => &mut params.end,
                "account_id" => &mut params.account_id,
                "access_key_id" => &mut params.access_key_id,
                "provider" => &mut params.provider,
                "model" => &mut params.model,
                "status_class" => &mut params.status_class,
                "credential_source" => &mut params.credential_source,
                "endpoint" => &mut params.endpoint,
                "end_user" => &mut params.end_user,
                "tag" => &mut params.tag,
                "group_by" => &mut params.group_by,
                "bucket" => &mut params.bucket,
                _ => {
                    return Err(ApiError {
                        status: StatusCode::BAD_REQUEST,
                        kind: "invalid_request",
                        param: None,
                        message: format!(
                            "unknown parameter `{name}`; accepted: {}",
                            PARAMETERS.join(", ")
                        ),
                    })
                }
            };
            if slot.is_some() {
                let known = PARAMETERS
                    .iter()
                    .find(|p| **p == name.as_str())
                    .copied()
                    .unwrap_or("parameter");
                return Err(ApiError::invalid(
                    known,
                    format!("`{known}` is given more than once"),
                ));
            }
            *slot = Some(value.clone());
        }
        Ok(params)
    }
}

fn parse_time(name: &'static str, value: Option<&str>) -> Result<DateTime<Utc>, ApiError> {
    let text = value.ok_or_else(|| {
        ApiError::invalid(
            name,
            format!("`{name}` is required (RFC 3339, e.g. 2025-01-31T00:00:00Z)"),
        )
    })?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ApiError::invalid(name, format!("`{name}` is not an RFC 3339 time: {e}")))
}

fn parse_text(name: &'static str, value: Option<&String>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > 256 => Err(ApiError::invalid(
            name,
            format!("`{name}` must be 1 to 256 characters"),
        )),
        Some(v) => Ok(Some(v.clone())),
    }
}

fn parse_status_class(value: Option<&str>) -> Result<Option<StatusClass>, ApiError> {
    value
        .map(|v| {
            StatusClass::parse(v).ok_or_else(|| {
                ApiError::invalid(
                    "status_class",
                    "`status_class` must be one of 2xx, 4xx, 5xx",
                )
            })
        })
        .transpose()
}

fn parse_credential_source(value: Option<&str>) -> Result<Option<CredentialSource>, ApiError> {
    value
        .map(|v| match v {
            "operator" => Ok(CredentialSource::Operator),
            "byok" => Ok(CredentialSource::Byok),
            _ => Err(ApiError::invalid(
                "credential_source",
                "`credential_source` must be operator or byok",
            )),
        })
        .transpose()
}

fn parse_endpoint(value: Option<&str>) -> Result<Option<Endpoint>, ApiError> {
    value
        .map(|v| {
            Endpoint::parse(v).ok_or_else(|| {
                ApiError::invalid(
                    "endpoint",
                    "`endpoint` must be one of chat, messages, responses, embeddings",
                )
            })
        })
        .transpose()
}

fn parse_tag(value: Option<&str>) -> Result<Option<(String, String)>, ApiError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let (key, tag_value) = v.split_once(':').ok_or_else(|| {
        ApiError::invalid("tag", "`tag` must be `<key>:<value>`, e.g. team:search")
    })?;
    if !valid_tag_key(key) {
        return Err(ApiError::invalid(
            "tag",
            "`tag`'s key must be 1 to 64 letters, digits, `_`, `-` or `.`",
        ));
    }
    if tag_value.is_empty() || tag_value.chars().count() > 256 {
        return Err(ApiError::invalid(
            "tag",
            "`tag`'s value must be 1 to 256 characters",
        ));
    }
    Ok(Some((key.to_owned(), tag_value.to_owned())))
}

/// The dimensions, and the tag key when `tag:<key>` is one of them.
fn parse_group_by(value: Option<&str>) -> Result<(Vec<GroupBy>, Option<String>), ApiError> {
    let mut group_by = Vec::new();
    let mut tag = None;
    for item in value.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
        let dim = if let Some(key) = item.strip_prefix("tag:") {
            if !valid_tag_key(key) {
                return Err(ApiError::invalid(
                    "group_by",
                    format!(
                        "`group_by` item `{item}`: a tag key is 1 to 64 letters, digits, `_`, `-` or `.`"
                    ),
                ));
            }
            if tag.is_some() {
                return Err(ApiError::invalid(
                    "group_by",
                    "`group_by` may name at most one tag",
                ));
            }
            tag = Some(key.to_owned());
            GroupBy::Tag
        } else {
            GroupBy::parse(item).ok_or_else(|| {
                ApiError::invalid(
                    "group_by",
                    format!(
                        "`group_by` item `{item}` is not one of provider, model, access_key, status, \
                         endpoint, end_user, tag:<key>"
                    ),
                )
            })?
        };
        if group_by.contains(&dim) {
            return Err(ApiError::invalid(
                "group_by",
                format!("`group_by` lists `{item}` twice"),
            ));
        }
        group_by.push(dim);
    }
    Ok((group_by, tag))
}

fn parse_bucket(value: Option<&str>, query: &UsageQuery) -> Result<Option<Bucket>, ApiError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let bucket = Bucket::parse(v)
        .ok_or_else(|| ApiError::invalid("bucket", "`bucket` must be one of minute, hour, day"))?;
    let span = bucket.floor(query.end_ms() - 1) - bucket.floor(query.start_ms());
    if span / bucket.millis() + 1 > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "bucket",
            format!("the range holds more than {MAX_BUCKETS} {v} buckets; use a coarser bucket or a shorter range"),
        ));
    }
    Ok(Some(bucket))
}

/// Validate raw query pairs into a query (scope applied by the caller).
pub fn parse_query(pairs: &[(String, String)]) -> Result<(UsageQuery, Option<String>), ApiError> {
    let params = UsageParams::from_pairs(pairs)?;
    let start = parse_time("start", params.start.as_deref())?;
    let end = parse_time("end", params.end.as_deref())?;
    if start.timestamp_millis() < 0 {
        return Err(ApiError::invalid(
            "start",
            "`start` must not be before 1970",
        ));
    }
    if end <= start {
        return Err(ApiError::invalid("end", "`end` must be after `start`"));
    }
    let mut query = UsageQuery::new(start, end);
    query.access_key_id = parse_text("access_key_id", params.access_key_id.as_ref())?;
    query.provider = parse_text("provider", params.provider.as_ref())?;
    query.model = parse_text("model", params.model.as_ref())?;
    let account_id = parse_text("account_id", params.account_id.as_ref())?;
    query.status_class = parse_status_class(params.status_class.as_deref())?;
    query.credential_source = parse_credential_source(params.credential_source.as_deref())?;
    query.endpoint = parse_endpoint(params.endpoint.as_deref())?;
    query.end_user = parse_text("end_user", params.end_user.as_ref())?;
    query.tag = parse_tag(params.tag.as_deref())?;
    if params.group_by.is_some() {
        (query.group_by, query.group_tag) = parse_group_by(params.group_by.as_deref())?;
    }
    query.bucket = parse_bucket(params.bucket.as_deref(), &query)?;
    Ok((query, account_id))
}

/// The answer of `GET /v1/usage`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = UsageReport)]
struct UsageResponse {
    #[schema(value_type = String, example = "usage_report", pattern = "^usage_report$")]
    object: &'static str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    account_id: Option<String>,
    bucket: Option<Bucket>,
    /// The dimensions as asked (`tag:<key>` for a tag).
    #[schema(example = json!(["model", "tag:team"]))]
    group_by: Vec<String>,
    /// Groups in bucket, then dimension order; only groups with requests appear.
    data: Vec<UsageGroup>,
}

/// Usage metrics over a time range.
#[utoipa::path(
    get,
    path = "/v1/usage",
    operation_id = "getUsage",
    params(UsageParams),
    responses(
        (status = 200, description = "Groups in bucket, then dimension order; only groups with requests appear.", body = UsageResponse),
        (status = 400, description = "A parameter is invalid; `param` names it.", body = ErrorBody),
        (status = 401, description = "Missing or unknown bearer token.", body = ErrorBody),
        (status = 403, description = "An access key asked for another account.", body = ErrorBody),
        (status = 503, description = "The usage store did not answer.", body = ErrorBody),
    )
)]
async fn usage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query?;
    let unauthorized = |message: &str| ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "authentication_error",
        param: None,
        message: message.to_owned(),
    };
    let token = tollgate_core::secrets::request_token(&headers)
        .ok_or_else(|| unauthorized("send `Authorization: Bearer <access key or admin token>`"))?;
    let scope = state
        .auth
        .scope(token)
        .ok_or_else(|| unauthorized("the token is not a valid access key or admin token"))?;
    let (mut query, account_param) = parse_query(&pairs)?;
    query.account_id = match (scope, account_param) {
        (Scope::All, account) => account.map(AccountId),
        (Scope::Account(own), None) => Some(own),
        (Scope::Account(own), Some(asked)) if asked == own.as_str() => Some(own),
        (Scope::Account(_), Some(_)) => {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                kind: "permission_denied",
                param: Some("account_id"),
                message: "an access key can only read its own account's usage".into(),
            })
        }
    };
    let data = state.store.query(&query).await.map_err(|err| {
        // A store's error can quote the query's filters (client text): escaped.
        tracing::warn!(error = %tollgate_core::Escaped(&err.to_string()), "usage query failed");
        store_error(&err)
    })?;
    Ok(Json(UsageResponse {
        object: "usage_report",
        start: query.start,
        end: query.end,
        account_id: query.account_id.as_ref().map(|a| a.to_string()),
        bucket: query.bucket,
        group_by: query.group_by_names(),
        data,
    })
    .into_response())
}

fn store_error(err: &AnalyticsError) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "unavailable",
        param: None,
        message: format!("the usage store did not answer: {err}"),
    }
}
