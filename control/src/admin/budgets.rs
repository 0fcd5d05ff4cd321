//! Admin routes for budgets and accounts' low-balance amounts.

use super::{AdminResult, AdminState, BudgetList, ErrorBody, JsonBody, PathParams, QueryParams};
use crate::budgets::{BudgetPatch, NewBudget};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use tollgate_core::budget::Budget;
use tollgate_core::control::Account;
use tollgate_core::{AccessKeyId, AccountId, Usd};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/v1/budgets", get(list_budgets).post(create_budget))
        .route(
            "/admin/v1/budgets/{budget_id}",
            get(get_budget).patch(update_budget).delete(delete_budget),
        )
        .route(
            "/admin/v1/accounts/{account_id}/low-balance",
            put(set_low_balance),
        )
}

/// Which budgets a listing shows; both filters optional.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BudgetFilter {
    /// Only this account's budgets (its keys' included).
    account_id: Option<String>,
    /// Only the budgets on this access key.
    access_key_id: Option<String>,
}

/// List budgets, in creation order
#[utoipa::path(
    get,
    path = "/admin/v1/budgets",
    params(BudgetFilter),
    responses(
        (status = 200, description = "The budgets", body = BudgetList),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn list_budgets(
    State(s): State<AdminState>,
    QueryParams(filter): QueryParams<BudgetFilter>,
) -> Json<BudgetList> {
    let account = filter.account_id.map(AccountId);
    let key = filter.access_key_id.map(AccessKeyId);
    Json(BudgetList {
        data: s.control.budgets(account.as_ref(), key.as_ref()),
    })
}

/// Create a budget on an account or one of its access keys (threshold alert at 80% and refusal at 100% unless set otherwise)
#[utoipa::path(
    post,
    path = "/admin/v1/budgets",
    request_body = NewBudget,
    responses(
        (status = 201, description = "The budget", body = Budget),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn create_budget(
    State(s): State<AdminState>,
    JsonBody(spec): JsonBody<NewBudget>,
) -> AdminResult<(StatusCode, Json<Budget>)> {
    let budget = s.control.create_budget(&spec).await?;
    Ok((StatusCode::CREATED, Json(budget)))
}

/// Get a budget
#[utoipa::path(
    get,
    path = "/admin/v1/budgets/{budget_id}",
    params(("budget_id" = String, Path, description = "The budget (bud_…)")),
    responses(
        (status = 200, description = "The budget", body = Budget),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )
)]
pub(super) async fn get_budget(
    State(s): State<AdminState>,
    PathParams(budget_id): PathParams<String>,
) -> AdminResult<Json<Budget>> {
    Ok(Json(s.control.budget(&budget_id)?))
}

/// Change a budget's name, amount, threshold or refusal; the period and scope are fixed (create a new budget to change them)
#[utoipa::path(
    patch,
    path = "/admin/v1/budgets/{budget_id}",
    params(("budget_id" = String, Path, description = "The budget (bud_…)")),
    request_body = BudgetPatch,
    responses(
        (status = 200, description = "The budget", body = Budget),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn update_budget(
    State(s): State<AdminState>,
    PathParams(budget_id): PathParams<String>,
    JsonBody(patch): JsonBody<BudgetPatch>,
) -> AdminResult<Json<Budget>> {
    Ok(Json(s.control.update_budget(&budget_id, &patch).await?))
}

/// Delete a budget: requests it refused are admitted again
#[utoipa::path(
    delete,
    path = "/admin/v1/budgets/{budget_id}",
    params(("budget_id" = String, Path, description = "The budget (bud_…)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn delete_budget(
    State(s): State<AdminState>,
    PathParams(budget_id): PathParams<String>,
) -> AdminResult<StatusCode> {
    s.control.delete_budget(&budget_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"amount": "2.50"}`, or `{"amount": null}` for the global default.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LowBalanceBody {
    /// USD as a decimal string: at least 0, below 1e12, at most 6 decimal
    /// places. Null: the ledger's global default (`[alerts] low_balance_usd`).
    #[schema(example = "2.50")]
    amount: Option<Usd>,
}

/// Set the balance below which an account gets a low-balance alert, or null for the global default
#[utoipa::path(
    put,
    path = "/admin/v1/accounts/{account_id}/low-balance",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = LowBalanceBody,
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn set_low_balance(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
    JsonBody(body): JsonBody<LowBalanceBody>,
) -> AdminResult<Json<Account>> {
    let account = s
        .control
        .set_low_balance(&AccountId(account_id), body.amount)
        .await?;
    Ok(Json(account))
}
