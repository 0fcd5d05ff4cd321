//! The credits API. Access keys read their own account under `/v1/credits`;
//! the admin token reads any account and records purchases and adjustments
//! under `/admin/v1/accounts/{id}/…`. Amounts are exact decimal strings;
//! `*_display` fields round down to the cent (never showing more credit
//! than there is).

use crate::engine::{AccountState, LotSource};
use crate::service::LedgerService;
use crate::sqlite::{self, StoredEntry};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::str::FromStr;
use std::sync::Arc;
use tollgate_control::admin::AdminAuth;
use tollgate_control::ControlPlane;
use tollgate_core::billing::{Adjustment, AdjustmentKind, Purchase, MINIMUM_PURCHASE_USD};
use tollgate_core::budget::{Budget, BudgetId, BudgetPeriod};
use tollgate_core::secrets::hash_access_token;
use tollgate_core::{AccessKeyId, AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, LogRecord};
use utoipa::{IntoParams, ToSchema};

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

/// The error body every refusal has.
#[derive(Serialize, ToSchema)]
#[schema(as = CreditsError)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[schema(as = CreditsErrorDetail)]
pub struct ErrorDetail {
    /// invalid_request, unauthorized, not_found, conflict or internal.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The parameter or body field at fault, null when none is.
    param: Option<&'static str>,
    message: String,
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

// axum's own refusals (plain text) in this API's JSON shape.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::bad("body", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad("query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad("path", rejection.body_text())
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

/// The caller's account and key.
fn caller_key(api: &CreditsApi, headers: &HeaderMap) -> ApiResult<(AccountId, AccessKeyId)> {
    let token =
        tollgate_core::secrets::request_token(headers).ok_or_else(ApiError::unauthorized)?;
    api.control
        .snapshot()
        .key_by_hash(&hash_access_token(token))
        .map(|k| (k.account_id.clone(), k.id.clone()))
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

/// An account's credit balance.
#[derive(Serialize, ToSchema)]
#[schema(as = Balance)]
pub struct BalanceView {
    account_id: AccountId,
    /// Remaining credit over all unexpired lots, exact.
    balance: Usd,
    /// The balance rounded down to the cent.
    #[schema(example = "24.99")]
    balance_display: String,
    /// Usage not covered by credit, settled by the next purchase.
    debt: Usd,
}

fn balance_view(account: &AccountId, state: Option<&AccountState>) -> BalanceView {
    let (balance, debt) = state.map_or((Usd::ZERO, Usd::ZERO), |s| (s.balance(), s.debt));
    BalanceView {
        account_id: account.clone(),
        balance,
        balance_display: display(balance),
        debt,
    }
}

/// Where a lot's credit came from.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LotOrigin {
    Purchase,
    GoodwillCredit,
}

/// One lot of credit: a purchase or goodwill credit, expiring 365 days later.
#[derive(Serialize, ToSchema)]
#[schema(as = Lot)]
pub struct LotView {
    lot_id: String,
    source: LotOrigin,
    amount: Usd,
    remaining: Usd,
    purchased_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    expired: bool,
}

/// An account's lots, oldest first.
#[derive(Serialize, ToSchema)]
#[schema(as = LotList)]
pub struct LotsView {
    data: Vec<LotView>,
}

fn lots_view(state: Option<&AccountState>) -> LotsView {
    let data = state
        .map(|s| {
            s.lots
                .iter()
                .map(|l| LotView {
                    lot_id: l.lot_id.clone(),
                    source: match l.source {
                        LotSource::Purchase => LotOrigin::Purchase,
                        LotSource::GoodwillCredit => LotOrigin::GoodwillCredit,
                    },
                    amount: l.amount,
                    remaining: l.remaining,
                    purchased_at: l.purchased_at,
                    expires_at: l.expires_at,
                    expired: l.expired,
                })
                .collect()
        })
        .unwrap_or_default();
    LotsView { data }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpiringQuery {
    /// Horizon in days, 0 to 3650; default 30.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 3650)]
    days: Option<String>,
}

/// A lot that expires within the horizon.
#[derive(Serialize, ToSchema)]
pub struct ExpiringLot {
    lot_id: String,
    remaining: Usd,
    expires_at: DateTime<Utc>,
}

/// Credit expiring within `days` days.
#[derive(Serialize, ToSchema)]
#[schema(as = Expiring)]
pub struct ExpiringView {
    days: i64,
    amount: Usd,
    /// The amount rounded down to the cent.
    amount_display: String,
    lots: Vec<ExpiringLot>,
}

fn expiring_view(state: Option<&AccountState>, query: &ExpiringQuery) -> ApiResult<ExpiringView> {
    let days: i64 = match &query.days {
        None => 30,
        Some(text) => text
            .parse()
            .ok()
            .filter(|d| (0..=3650).contains(d))
            .ok_or_else(|| ApiError::bad("days", "days must be an integer from 0 to 3650"))?,
    };
    let horizon = Utc::now() + Duration::days(days);
    let lots: Vec<ExpiringLot> = state
        .map(|s| {
            s.lots
                .iter()
                .filter(|l| !l.expired && l.remaining > Usd::ZERO && l.expires_at <= horizon)
                .map(|l| ExpiringLot {
                    lot_id: l.lot_id.clone(),
                    remaining: l.remaining,
                    expires_at: l.expires_at,
                })
                .collect()
        })
        .unwrap_or_default();
    let total: Usd = lots.iter().map(|l| l.remaining).sum();
    Ok(ExpiringView {
        days,
        amount: total,
        amount_display: display(total),
        lots,
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// Only entries of this kind.
    #[param(value_type = Option<crate::engine::EntryKind>)]
    kind: Option<String>,
    /// RFC 3339, inclusive.
    #[param(value_type = Option<String>, format = DateTime)]
    start: Option<String>,
    /// RFC 3339, exclusive.
    #[param(value_type = Option<String>, format = DateTime)]
    end: Option<String>,
    /// 1 to 1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The cursor a previous page returned as `next_cursor`.
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
}

/// A page of ledger entries, oldest first.
#[derive(Serialize, ToSchema)]
#[schema(as = EntryPage)]
pub struct EntriesView {
    data: Vec<StoredEntry>,
    /// Pass as `after` for the next page; null on the last page.
    next_cursor: Option<String>,
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

fn entries_view(
    api: &CreditsApi,
    account: &AccountId,
    query: &EntriesQuery,
) -> ApiResult<EntriesView> {
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
    Ok(EntriesView {
        data: rows,
        next_cursor,
    })
}

/// The credits API's document (access keys, their own account), served at
/// `/v1/credits/openapi.json`; generated from the handlers' types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate credits API",
        version = "1",
        description = "An access key's own credits: balance, lots, ledger entries, credit about to expire \
            and budgets. Amounts are exact decimal strings; `*_display` fields round down to the cent \
            (never showing more credit than there is)."
    ),
    paths(my_balance, my_lots, my_entries, my_expiring, my_budgets, credits_openapi),
    modifiers(&ACCESS_KEY_SCHEME),
    security(("accessKey" = []))
)]
pub struct CreditsApiDoc;

/// The admin credits routes' part of the admin API document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    admin_balance,
    admin_lots,
    admin_entries,
    admin_expiring,
    admin_budgets,
    record_purchase,
    record_adjustment
))]
pub struct CreditsAdminDoc;

/// The document's security scheme.
const ACCESS_KEY_SCHEME: tollgate_core::openapi::BearerScheme =
    tollgate_core::openapi::BearerScheme {
        name: "accessKey",
        description: "A Tollgate access key (tgk_…), as `Authorization: Bearer` or `x-api-key`.",
    };

/// The credits API's document as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <CreditsApiDoc as utoipa::OpenApi>::openapi()
}

/// The admin credits routes' paths, to merge into the admin API document.
pub fn admin_openapi() -> utoipa::openapi::OpenApi {
    <CreditsAdminDoc as utoipa::OpenApi>::openapi()
}

/// `/v1/credits/*` for access keys (their own account).
pub fn public_router(api: Arc<CreditsApi>) -> Router {
    Router::new()
        .route("/v1/credits/balance", get(my_balance))
        .route("/v1/credits/lots", get(my_lots))
        .route("/v1/credits/entries", get(my_entries))
        .route("/v1/credits/expiring", get(my_expiring))
        .route("/v1/credits/budgets", get(my_budgets))
        .route("/v1/credits/openapi.json", get(credits_openapi))
        .with_state(api)
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/credits/openapi.json",
    security(()),
    responses((status = 200, description = "OpenAPI document", body = Object))
)]
async fn credits_openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// The caller's balance and debt.
#[utoipa::path(
    get,
    path = "/v1/credits/balance",
    responses(
        (status = 200, description = "The balance", body = BalanceView),
        (status = 401, description = "Missing or unknown access key", body = ErrorBody),
    )
)]
async fn my_balance(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
) -> ApiResult<Json<BalanceView>> {
    let account = caller_account(&api, &headers)?;
    Ok(Json(balance_view(
        &account,
        api.ledger.account_state(&account).as_ref(),
    )))
}

/// The caller's credit lots (amount, remaining, purchased, expires).
#[utoipa::path(
    get,
    path = "/v1/credits/lots",
    responses(
        (status = 200, description = "The lots, oldest first", body = LotsView),
        (status = 401, description = "Missing or unknown access key", body = ErrorBody),
    )
)]
async fn my_lots(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
) -> ApiResult<Json<LotsView>> {
    let account = caller_account(&api, &headers)?;
    Ok(Json(lots_view(api.ledger.account_state(&account).as_ref())))
}

/// The caller's ledger entries, oldest first, paginated.
#[utoipa::path(
    get,
    path = "/v1/credits/entries",
    params(EntriesQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntriesView),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing or unknown access key", body = ErrorBody),
    )
)]
async fn my_entries(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> ApiResult<Json<EntriesView>> {
    let Query(query) = query?;
    let account = caller_account(&api, &headers)?;
    Ok(Json(entries_view(&api, &account, &query)?))
}

/// The caller's credit expiring within N days.
#[utoipa::path(
    get,
    path = "/v1/credits/expiring",
    params(ExpiringQuery),
    responses(
        (status = 200, description = "Credit expiring within the horizon", body = ExpiringView),
        (status = 400, description = "`days` is invalid", body = ErrorBody),
        (status = 401, description = "Missing or unknown access key", body = ErrorBody),
    )
)]
async fn my_expiring(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
    query: Result<Query<ExpiringQuery>, QueryRejection>,
) -> ApiResult<Json<ExpiringView>> {
    let Query(query) = query?;
    let account = caller_account(&api, &headers)?;
    Ok(Json(expiring_view(
        api.ledger.account_state(&account).as_ref(),
        &query,
    )?))
}

/// Where a budget stands in its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetState {
    /// Below the soft threshold.
    Ok,
    /// At or above the soft threshold, below the amount.
    Threshold,
    /// At or above the amount.
    Exceeded,
}

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScopeView {
    AccessKey,
    Account,
}

/// One budget and the spend in its current period.
#[derive(Serialize, ToSchema)]
#[schema(as = BudgetStatus)]
pub struct BudgetView {
    budget_id: BudgetId,
    name: String,
    scope: BudgetScopeView,
    /// The key whose spend counts (scope `access_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<AccessKeyId>,
    /// The limit for one period.
    amount: Usd,
    period: BudgetPeriod,
    soft_threshold_percent: u8,
    /// Whether reaching `amount` refuses requests.
    refuse: bool,
    /// The current period's start (a lifetime budget's creation).
    period_start: DateTime<Utc>,
    /// When the period ends and spend starts again from zero; null: lifetime.
    resets_at: Option<DateTime<Utc>>,
    /// Usage debits (fee plus upstream, after the price plan) of usage
    /// started in the period, exact.
    spent: Usd,
    /// `amount − spent`; negative once exceeded.
    remaining: Usd,
    state: BudgetState,
}

/// Budgets and their spend, as of `as_of`.
#[derive(Serialize, ToSchema)]
#[schema(as = Budgets)]
pub struct BudgetsView {
    account_id: AccountId,
    /// The instant periods are taken at: the later of the ledger's time for
    /// the account and now.
    as_of: DateTime<Utc>,
    budgets: Vec<BudgetView>,
}

/// Reaching the amount exceeds a budget; reaching its soft threshold
/// (percent of the amount) is the warning.
pub fn budget_state(budget: &Budget, spent: Usd) -> BudgetState {
    if spent >= budget.amount {
        BudgetState::Exceeded
    } else if spent >= budget.soft_threshold() {
        BudgetState::Threshold
    } else {
        BudgetState::Ok
    }
}

/// The budgets of `account` that `keep` selects, with their spend now.
fn budgets_view(
    api: &CreditsApi,
    account: &AccountId,
    keep: impl Fn(&Budget) -> bool,
) -> ApiResult<BudgetsView> {
    let (as_of, all) = api
        .ledger
        .budget_status(account)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let budgets = all
        .into_iter()
        .filter(|(budget, _)| keep(budget))
        .map(|(budget, spend)| {
            let state = budget_state(&budget, spend.spent);
            BudgetView {
                scope: if budget.access_key_id.is_some() {
                    BudgetScopeView::AccessKey
                } else {
                    BudgetScopeView::Account
                },
                remaining: budget.amount - spend.spent,
                budget_id: budget.id,
                name: budget.name,
                access_key_id: budget.access_key_id,
                amount: budget.amount,
                period: budget.period,
                soft_threshold_percent: budget.soft_threshold_percent,
                refuse: budget.refuse,
                period_start: spend.period_start,
                resets_at: spend.resets_at,
                spent: spend.spent,
                state,
            }
        })
        .collect();
    Ok(BudgetsView {
        account_id: account.clone(),
        as_of,
        budgets,
    })
}

/// The caller's own budgets and its account's, with the spend in each
/// current period.
#[utoipa::path(
    get,
    path = "/v1/credits/budgets",
    responses(
        (status = 200, description = "The key's and its account's budgets", body = BudgetsView),
        (status = 401, description = "Missing or unknown access key", body = ErrorBody),
    )
)]
async fn my_budgets(
    State(api): State<Arc<CreditsApi>>,
    headers: HeaderMap,
) -> ApiResult<Json<BudgetsView>> {
    let (account, key) = caller_key(&api, &headers)?;
    Ok(Json(budgets_view(&api, &account, |b| {
        b.access_key_id.as_ref().is_none_or(|k| *k == key)
    })?))
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
            "/admin/v1/accounts/{account_id}/credits/budgets",
            get(admin_budgets),
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

type AccountPath = Result<Path<String>, PathRejection>;

/// An account's balance and debt.
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/credits/balance",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The balance", body = BalanceView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn admin_balance(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
) -> ApiResult<Json<BalanceView>> {
    let Path(id) = id?;
    let account = known_account(&api, &id)?;
    Ok(Json(balance_view(
        &account,
        api.ledger.account_state(&account).as_ref(),
    )))
}

/// An account's credit lots (amount, remaining, purchased, expires).
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/credits/lots",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The lots, oldest first", body = LotsView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn admin_lots(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
) -> ApiResult<Json<LotsView>> {
    let Path(id) = id?;
    let account = known_account(&api, &id)?;
    Ok(Json(lots_view(api.ledger.account_state(&account).as_ref())))
}

/// An account's ledger entries, oldest first, paginated.
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/credits/entries",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)"), EntriesQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntriesView),
        (status = 400, description = "A parameter is invalid; `param` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn admin_entries(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> ApiResult<Json<EntriesView>> {
    let (Path(id), Query(query)) = (id?, query?);
    let account = known_account(&api, &id)?;
    Ok(Json(entries_view(&api, &account, &query)?))
}

/// Credit expiring within N days.
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/credits/expiring",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)"), ExpiringQuery),
    responses(
        (status = 200, description = "Credit expiring within the horizon", body = ExpiringView),
        (status = 400, description = "`days` is invalid", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn admin_expiring(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
    query: Result<Query<ExpiringQuery>, QueryRejection>,
) -> ApiResult<Json<ExpiringView>> {
    let (Path(id), Query(query)) = (id?, query?);
    let account = known_account(&api, &id)?;
    Ok(Json(expiring_view(
        api.ledger.account_state(&account).as_ref(),
        &query,
    )?))
}

/// Every budget of an account (its keys' included), with the spend in each
/// current period.
#[utoipa::path(
    get,
    path = "/admin/v1/accounts/{account_id}/credits/budgets",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    responses(
        (status = 200, description = "The account's budgets", body = BudgetsView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn admin_budgets(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
) -> ApiResult<Json<BudgetsView>> {
    let Path(id) = id?;
    let account = known_account(&api, &id)?;
    Ok(Json(budgets_view(&api, &account, |_| true)?))
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

fn idempotency_key(value: &Value) -> ApiResult<String> {
    value
        .as_str()
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

/// A credit purchase. Fields are checked in the handler, so a refusal names
/// the field at fault; unknown fields are ignored.
#[derive(Deserialize, ToSchema)]
pub struct PurchaseRequest {
    /// USD as a decimal string (a JSON number is accepted too); at least 5.00.
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "25.00")]
    amount: Value,
    /// 1 to 200 characters; a retry with the same key (per account) is applied once.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    idempotency_key: Value,
}

/// A correction: a refund, goodwill credit or manual debit, with a reason.
#[derive(Deserialize, ToSchema)]
pub struct AdjustmentRequest {
    #[serde(default)]
    #[schema(value_type = AdjustmentKind, required = true)]
    kind: Value,
    /// USD as a decimal string (a JSON number is accepted too); positive.
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "5.00")]
    amount: Value,
    /// Why, for the audit trail; not blank.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1)]
    reason: Value,
    /// 1 to 200 characters; a retry with the same key (per account) is applied once.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    idempotency_key: Value,
}

/// A recorded purchase; `status` is `already_applied` when the idempotency
/// key had been used for the same amount before.
#[derive(Serialize, ToSchema)]
pub struct PurchaseReceipt {
    #[serde(flatten)]
    purchase: Purchase,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<String>, pattern = "^already_applied$")]
    status: Option<&'static str>,
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

/// Record a credit purchase (minimum $5.00; one lot expiring 365 days
/// later). A retry with the same idempotency key is applied once.
#[utoipa::path(
    post,
    path = "/admin/v1/accounts/{account_id}/purchases",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = PurchaseRequest,
    responses(
        (status = 202, description = "Accepted onto the log; the ledger applies it within a second", body = PurchaseReceipt),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for another amount", body = ErrorBody),
    )
)]
async fn record_purchase(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
    body: Result<Json<PurchaseRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PurchaseReceipt>)> {
    let Path(id) = id?;
    let account = known_account(&api, &id)?;
    let Json(body) = body?;
    let amount = parse_amount(&body.amount)?;
    let minimum =
        Usd::from_str(MINIMUM_PURCHASE_USD).map_err(|e| ApiError::internal(e.to_string()))?;
    if amount < minimum {
        return Err(ApiError::bad(
            "amount",
            format!("the minimum purchase is ${MINIMUM_PURCHASE_USD}"),
        ));
    }
    let key = idempotency_key(&body.idempotency_key)?;
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
        let purchase = Purchase {
            purchase_id,
            account_id: account,
            amount: lot.amount,
            idempotency_key: key,
            purchased_at: lot.purchased_at,
        };
        return Ok((
            StatusCode::ACCEPTED,
            Json(PurchaseReceipt {
                purchase,
                status: Some("already_applied"),
            }),
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
    Ok((
        StatusCode::ACCEPTED,
        Json(PurchaseReceipt {
            purchase,
            status: None,
        }),
    ))
}

/// Record a refund, goodwill credit or manual debit (a new entry with a reason).
#[utoipa::path(
    post,
    path = "/admin/v1/accounts/{account_id}/adjustments",
    tag = "credits",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = AdjustmentRequest,
    responses(
        (status = 202, description = "Accepted onto the log", body = Adjustment),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
async fn record_adjustment(
    State(api): State<Arc<CreditsApi>>,
    id: AccountPath,
    body: Result<Json<AdjustmentRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Adjustment>)> {
    let Path(id) = id?;
    let account = known_account(&api, &id)?;
    let Json(body) = body?;
    let kind = match body.kind.as_str() {
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
    let amount = parse_amount(&body.amount)?;
    let reason = body
        .reason
        .as_str()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad("reason", "reason is required"))?
        .to_owned();
    let key = idempotency_key(&body.idempotency_key)?;
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
    Ok((StatusCode::ACCEPTED, Json(adjustment)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_budget_is_at_its_threshold_from_the_percent_and_exceeded_at_its_amount() {
        let at: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let budget = Budget {
            id: BudgetId("bud_1".into()),
            account_id: AccountId::from("acct_1"),
            access_key_id: None,
            name: "b".into(),
            amount: "1.00".parse().unwrap(),
            period: BudgetPeriod::Day,
            soft_threshold_percent: 80,
            refuse: true,
            created_at: at,
            updated_at: at,
        };
        let state = |spent: &str| budget_state(&budget, spent.parse().unwrap());
        assert_eq!(state("0"), BudgetState::Ok);
        assert_eq!(state("0.7999"), BudgetState::Ok);
        assert_eq!(state("0.80"), BudgetState::Threshold);
        assert_eq!(state("0.99999"), BudgetState::Threshold);
        assert_eq!(state("1"), BudgetState::Exceeded);
        assert_eq!(state("1.5"), BudgetState::Exceeded);
    }
}
