//! The usage query API: `GET /v1/usage` (JSON) and its OpenAPI document.
//!
//! Every parameter is validated before a store is asked; a bad one is a 400
//! naming it. Scope comes from the bearer token: an access key sees only its
//! own account (whatever `account_id` says), the admin token sees all.

use crate::error::AnalyticsError;
use crate::model::{Bucket, GroupBy, StatusClass, UsageGroup, UsageQuery};
use crate::store::UsageStore;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::{AccountId, CredentialSource};

/// The OpenAPI document served at `/v1/usage/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi/usage.json");

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

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// An API error in the shape `{"error":{"type","param"?,"message"}}`.
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
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(param) = self.param {
            error["param"] = json!(param);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
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
    "group_by",
    "bucket",
];

/// Validate raw query pairs into a query (scope applied by the caller).
pub fn parse_query(pairs: &[(String, String)]) -> Result<(UsageQuery, Option<String>), ApiError> {
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in pairs {
        let Some(known) = PARAMETERS.iter().find(|p| **p == name.as_str()) else {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid_request",
                param: None,
                message: format!(
                    "unknown parameter `{name}`; accepted: {}",
                    PARAMETERS.join(", ")
                ),
            });
        };
        if seen.contains(known) {
            return Err(ApiError::invalid(
                known,
                format!("`{known}` is given more than once"),
            ));
        }
        seen.push(known);
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let time = |name: &'static str| -> Result<DateTime<Utc>, ApiError> {
        let text = get(name).ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("`{name}` is required (RFC 3339, e.g. 2025-01-31T00:00:00Z)"),
            )
        })?;
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| ApiError::invalid(name, format!("`{name}` is not an RFC 3339 time: {e}")))
    };
    let start = time("start")?;
    let end = time("end")?;
    if start.timestamp_millis() < 0 {
        return Err(ApiError::invalid(
            "start",
            "`start` must not be before 1970",
        ));
    }
    if end <= start {
        return Err(ApiError::invalid("end", "`end` must be after `start`"));
    }
    let text = |name: &'static str| -> Result<Option<String>, ApiError> {
        match get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() || v.len() > 256 => Err(ApiError::invalid(
                name,
                format!("`{name}` must be 1 to 256 characters"),
            )),
            Some(v) => Ok(Some(v.to_owned())),
        }
    };
    let mut query = UsageQuery::new(start, end);
    query.access_key_id = text("access_key_id")?;
    query.provider = text("provider")?;
    query.model = text("model")?;
    let account_id = text("account_id")?;
    if let Some(v) = get("status_class") {
        query.status_class = Some(StatusClass::parse(v).ok_or_else(|| {
            ApiError::invalid(
                "status_class",
                "`status_class` must be one of 2xx, 4xx, 5xx",
            )
        })?);
    }
    if let Some(v) = get("credential_source") {
        query.credential_source = Some(match v {
            "operator" => CredentialSource::Operator,
            "byok" => CredentialSource::Byok,
            _ => {
                return Err(ApiError::invalid(
                    "credential_source",
                    "`credential_source` must be operator or byok",
                ))
            }
        });
    }
    if let Some(v) = get("group_by") {
        for item in v.split(',').map(str::trim) {
            let dim = GroupBy::parse(item).ok_or_else(|| {
                ApiError::invalid(
                    "group_by",
                    format!("`group_by` item `{item}` is not one of provider, model, access_key, status"),
                )
            })?;
            if query.group_by.contains(&dim) {
                return Err(ApiError::invalid(
                    "group_by",
                    format!("`group_by` lists `{item}` twice"),
                ));
            }
            query.group_by.push(dim);
        }
    }
    if let Some(v) = get("bucket") {
        let bucket = Bucket::parse(v).ok_or_else(|| {
            ApiError::invalid("bucket", "`bucket` must be one of minute, hour, day")
        })?;
        let span = bucket.floor(query.end_ms() - 1) - bucket.floor(query.start_ms());
        if span / bucket.millis() + 1 > MAX_BUCKETS {
            return Err(ApiError::invalid(
                "bucket",
                format!("the range holds more than {MAX_BUCKETS} {v} buckets; use a coarser bucket or a shorter range"),
            ));
        }
        query.bucket = Some(bucket);
    }
    Ok((query, account_id))
}

#[derive(Serialize)]
struct UsageResponse {
    object: &'static str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    account_id: Option<String>,
    bucket: Option<Bucket>,
    group_by: Vec<GroupBy>,
    data: Vec<UsageGroup>,
}

async fn usage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
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
        group_by: query.group_by.clone(),
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
