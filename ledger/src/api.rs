//! The credits API. Access keys read their own account under `/v1/credits`;
//! the admin token reads any account and records purchases and adjustments
//! under `/admin/v1/accounts/{id}/…`. Amounts are exact decimal strings;
//! `*_display` fields round down to the cent (never showing more credit
//! than there is).

use crate::engine::{AccountState, LotSource};
use crate::service::LedgerService;
use crate::sqlite::{self, StoredEntry};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::{json, Value};
use std::str::FromStr;
use std::sync::Arc;
use tollgate_control::admin::AdminAuth;
use tollgate_control::ControlPlane;
use tollgate_core::billing::{Adjustment, AdjustmentKind, Purchase, MINIMUM_PURCHASE_USD};
use tollgate_core::secrets::hash_access_token;
use tollgate_core::{AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, LogRecord};

pub struct CreditsApi {
    pub ledger: Arc<LedgerService>,
    pub control: Arc<ControlPlane>,
    pub log: Arc<dyn EventLog>,
}

pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn bad(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request",
            param: Some(param),
            message: message.into(),
        }
    }

    fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            param: None,
            message: "missing or invalid access key: send `Authorization: Bearer <key>`".into(),
        }
    }

    fn not_found(message: String) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            param: None,
            message,
        }
    }

    fn internal(message: String) -> ApiError {
        tracing::error!(detail = %tollgate_core::Escaped(&message), "credits API failure");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            param: None,
            message: "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(
                json!({"error": {"type": self.kind, "param": self.param, "message": self.message}}),
            ),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Round down to the cent, for display only.
pub fn display(amount: Usd) -> String {
    format!(
        "{:.2}",
        amount
            .amount()
            .round_dp_with_strategy(2, RoundingStrategy::ToNegativeInfinity)
    )
}

fn caller_account(api: &CreditsApi, headers: &HeaderMap) -> ApiResult<AccountId> {
    let token =
        tollgate_core::secrets::request_token(headers).ok_or_else(ApiError::unauthorized)?;
    api.control
        .snapshot()
        .key_by_hash(&hash_access_token(token))
        .map(|k| k.account_id.clone())
        .ok_or_else(ApiError::unauthorized)
}

fn known_account(api: &CreditsApi, id: &str) -> ApiResult<AccountId> {
    let id = AccountId(id.to_owned());
    if api.control.snapshot().accounts.contains_key(&id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("account {id} not found")))
    }
}

fn balance_json(account: &AccountId, state: Option<&AccountState>) -> Value {
    let (balance, debt) = state.map_or((Usd::ZERO, Usd::ZERO), |s| (s.balance(), s.debt));
    json!({
        "account_id": account,
        "balance": balance,
        "balance_display": display(balance),
        "debt": debt,
    })
}

fn lots_json(state: Option<&AccountState>) -> Value {
    let lots: Vec<Value> = state
        .map(|s| {
            s.lots
                .iter()
                .map(|l| {
                    json!({
                        "lot_id": l.lot_id,
                        "source": match l.source { LotSource::Purchase => "purchase", LotSource::GoodwillCredit => "goodwill_credit" },
                        "amount": l.amount,
                        "remaining": l.remaining,
                        "purchased_at": l.purchased_at,
                        "expires_at": l.expires_at,
                        "expired": l.expired,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "data": lots })
}

#[derive(Deserialize)]
pub struct ExpiringQuery {
    days: Option<String>,
}

fn expiring_json(state: Option<&AccountState>, query: &ExpiringQuery) -> ApiResult<Value> {
    let days: i64 = match &query.days {
        None => 30,
        Some(text) => text
            .parse()
            .ok()
            .filter(|d| (0..=3650).contains(d))
            .ok_or_else(|| ApiError::bad("days", "days must be an integer from 0 to 3650"))?,
    };
    let horizon = Utc::now() + Duration::days(days);
    let lots: Vec<_> = state
        .map(|s| {
            s.lots
                .iter()
                .filter(|l| !l.expired && l.remaining > Usd::ZERO && l.expires_at <= horizon)
                .collect()
        })
        .unwrap_or_default();
    let total: Usd = lots.iter().map(|l| l.remaining).sum();
    Ok(json!({
        "days": days,
        "amount": total,
        "amount_display": display(total),
        "lots": lots.iter().map(|l| json!({"lot_id": l.lot_id, "remaining": l.remaining, "expires_at": l.expires_at})).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize)]
pub struct EntriesQuery {
    kind: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

fn parse_instant(param: &'static str, text: &Option<String>) -> ApiResult<Option<DateTime<Utc>>> {
    text.as_deref()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| ApiError::bad(param, format!("{param} must be an RFC 3339 timestamp")))
        })
        .transpose()
}

fn entries_json(api: &CreditsApi, account: &AccountId, query: &EntriesQuery) -> ApiResult<Value> {
    let limit: i64 = match &query.limit {
        None => 100,
        Some(t) => t
            .parse()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad("limit", "limit must be an integer from 1 to 1000"))?,
    };
    let after: i64 = match &query.after {
        None => 0,
        Some(t) => t.parse().ok().filter(|a| *a >= 0).ok_or_else(|| {
            ApiError::bad("after", "after must be a cursor returned as next_cursor")
        })?,
    };
    if let Some(kind) = &query.kind {
        if crate::engine::EntryKind::parse(kind).is_none() {
            return Err(ApiError::bad(
                "kind",
                "kind must be one of purchase, usage, expiry, refund, goodwill_credit, manual_debit, adjustment_rejected",
            ));
        }
    }
    let start = parse_instant("start", &query.start)?;
    let end = parse_instant("end", &query.end)?;
    let conn = api
        .ledger
        .database()
        .connect()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let sql = format!(
        "SELECT {} FROM ledger_entries WHERE account_id = ?1 AND seq > ?2
           AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR at >= ?4) AND (?5 IS NULL OR at < ?5)
         ORDER BY seq LIMIT ?6",
        sqlite::ENTRY_COLUMNS
    );
    let rows: Result<Vec<StoredEntry>, ApiError> = (|| {
        let mut stmt = conn
            .prepare(&sql)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let raw = stmt
            .query_map(
                rusqlite::params![
                    account.as_str(),
                    after,
                    query.kind,
                    start.map(sqlite::time_text),
                    end.map(sqlite::time_text),
                    limit
                ],
                sqlite::entry_from_row,
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        raw.map(|r| {
            r.map_err(|e| ApiError::internal(e.to_string()))
                .and_then(|r| {
                    sqlite::decode_entry(r).map_err(|e| ApiError::internal(e.to_string()))
                })
        })
        .collect()
    })();
    let rows = rows?;
    let next_cursor = if rows.len() as i64 == limit {
        rows.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(json!({ "data": rows, "next_cursor": next_cursor }))
}

/// `/v1/credits/*` for access keys (their own account).
pub fn public_router(api: Arc<CreditsApi>) -> Router {
    Router::new()
        .route("/v1/credits/balance", get(my_balance))
        .route("/v1/credits/lots", get(my_lots))
        .route("/v1/credits/entries", get(my_entries))
        .route("/v1/credits/expiring", get(my_expiring))
        .with_state(api)
}

async fn my_balance(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let account = caller_account(&api, &headers)?;
    Ok(Json(balance_json(
        &account,
        api.ledger.account_state(&account).as_ref(),
    )))
}

async fn my_lots(State(api): State<Arc<CreditsApi>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let account = caller_account(&api, &headers)?;
    Ok(Json(lots_json(api.ledger.account_state(&account).as_ref())))
}

async fn my_entries(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
    Query(query): Query<EntriesQuery>,
) -> ApiResult<Json<Value>> {
    let account = caller_account(&api, &headers)?;
    Ok(Json(entries_json(&api, &account, &query)?))
}

async fn my_expiring(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
    Query(query): Query<ExpiringQuery>,
) -> ApiResult<Json<Value>> {
    let account = caller_account(&api, &headers)?;
    Ok(Json(expiring_json(
        api.ledger.account_state(&account).as_ref(),
        &query,
    )?))
}

/// Admin routes: any account's credits, purchases and adjustments.
pub fn admin_router(api: Arc<CreditsApi>, auth: AdminAuth) -> Router {
    Router::new()
        .route(
            "/admin/v1/accounts/{account_id}/credits/balance",
            get(admin_balance),
        )
        .route(
            "/admin/v1/accounts/{account_id}/credits/lots",
            get(admin_lots),
        )
        .route(
            "/admin/v1/accounts/{account_id}/credits/entries",
            get(admin_entries),
        )
        .route(
            "/admin/v1/accounts/{account_id}/credits/expiring",
            get(admin_expiring),
        )
        .route(
            "/admin/v1/accounts/{account_id}/purchases",
            post(record_purchase),
        )
        .route(
            "/admin/v1/accounts/{account_id}/adjustments",
            post(record_adjustment),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            AdminAuth::require,
        ))
        .with_state(api)
}

async fn admin_balance(
    State(api): State<Arc<CreditsApi>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let account = known_account(&api, &id)?;
    Ok(Json(balance_json(
        &account,
        api.ledger.account_state(&account).as_ref(),
    )))
}

async fn admin_lots(
    State(api): State<Arc<CreditsApi>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let account = known_account(&api, &id)?;
    Ok(Json(lots_json(api.ledger.account_state(&account).as_ref())))
}

async fn admin_entries(
    State(api): State<Arc<CreditsApi>>,
    Path(id): Path<String>,
    Query(query): Query<EntriesQuery>,
) -> ApiResult<Json<Value>> {
    let account = known_account(&api, &id)?;
    Ok(Json(entries_json(&api, &account, &query)?))
}

async fn admin_expiring(
    State(api): State<Arc<CreditsApi>>,
    Path(id): Path<String>,
    Query(query): Query<ExpiringQuery>,
) -> ApiResult<Json<Value>> {
    let account = known_account(&api, &id)?;
    Ok(Json(expiring_json(
        api.ledger.account_state(&account).as_ref(),
        &query,
    )?))
}

/// A stable id from (account, idempotency key): a retried request gets the
/// same id back, and the ledger applies the key once.
fn derived_id(prefix: &str, account: &AccountId, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{account}\n{key}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

fn parse_amount(value: &Value) -> ApiResult<Usd> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(ApiError::bad(
                "amount",
                "amount is required, as a decimal string such as \"25.00\"",
            ))
        }
    };
    let amount = Decimal::from_str(&text)
        .map_err(|_| ApiError::bad("amount", format!("`{text}` is not a decimal amount")))?;
    if amount <= Decimal::ZERO {
        return Err(ApiError::bad("amount", "amount must be positive"));
    }
    Ok(Usd(amount))
}

fn idempotency_key(body: &Value) -> ApiResult<String> {
    body.get("idempotency_key")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::bad(
                "idempotency_key",
                "idempotency_key is required (1 to 200 characters)",
            )
        })
}

async fn append(api: &CreditsApi, account: &AccountId, body: EventBody) -> ApiResult<()> {
    let payload =
        serde_json::to_vec(&Envelope::new(body)).map_err(|e| ApiError::internal(e.to_string()))?;
    api.log
        .append(LogRecord {
            topic: topics::ACCOUNT_EVENTS.to_owned(),
            key: account.to_string(),
            payload,
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    api.log
        .flush()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn record_purchase(
    State(api): State<Arc<CreditsApi>>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = known_account(&api, &id)?;
    let Json(body) = body.map_err(|e| ApiError::bad("body", e.body_text()))?;
    let amount = parse_amount(body.get("amount").unwrap_or(&Value::Null))?;
    let minimum =
        Usd::from_str(MINIMUM_PURCHASE_USD).map_err(|e| ApiError::internal(e.to_string()))?;
    if amount < minimum {
        return Err(ApiError::bad(
            "amount",
            format!("the minimum purchase is ${MINIMUM_PURCHASE_USD}"),
        ));
    }
    let key = idempotency_key(&body)?;
    let purchase_id = derived_id("pur", &account, &key);
    // A retry must not change what was bought: same key, same amount.
    if let Some(lot) = api
        .ledger
        .account_state(&account)
        .and_then(|state| state.lots.into_iter().find(|l| l.lot_id == purchase_id))
    {
        if lot.amount != amount {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                kind: "conflict",
                param: Some("idempotency_key"),
                message: format!(
                    "idempotency key `{key}` was already used for a purchase of {}",
                    lot.amount
                ),
            });
        }
        // Same answer as the first time (202), marked as already applied.
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "purchase_id": purchase_id,
                "account_id": account,
                "amount": lot.amount,
                "idempotency_key": key,
                "purchased_at": lot.purchased_at,
                "status": "already_applied",
            })),
        ));
    }
    let purchase = Purchase {
        purchase_id,
        account_id: account.clone(),
        amount,
        idempotency_key: key,
        purchased_at: Utc::now(),
    };
    append(&api, &account, EventBody::Purchase(purchase.clone())).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(purchase))))
}

async fn record_adjustment(
    State(api): State<Arc<CreditsApi>>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = known_account(&api, &id)?;
    let Json(body) = body.map_err(|e| ApiError::bad("body", e.body_text()))?;
    let kind = match body.get("kind").and_then(Value::as_str) {
        Some("refund") => AdjustmentKind::Refund,
        Some("goodwill_credit") => AdjustmentKind::GoodwillCredit,
        Some("manual_debit") => AdjustmentKind::ManualDebit,
        _ => {
            return Err(ApiError::bad(
                "kind",
                "kind must be refund, goodwill_credit or manual_debit",
            ))
        }
    };
    let amount = parse_amount(body.get("amount").unwrap_or(&Value::Null))?;
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad("reason", "reason is required"))?
        .to_owned();
    let key = idempotency_key(&body)?;
    let adjustment = Adjustment {
        adjustment_id: derived_id("adj", &account, &key),
        account_id: account.clone(),
        kind,
        amount,
        reason,
        idempotency_key: key,
        at: Utc::now(),
    };
    append(&api, &account, EventBody::Adjustment(adjustment.clone())).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(adjustment))))
}
