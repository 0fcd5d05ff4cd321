//! Admin routes for price plans and their assignment to accounts.

use super::{AdminResult, AdminState, ErrorBody, JsonBody, PathParams, PricePlanList};
use crate::plans::PricePlanSpec;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use tollgate_core::control::{Account, PricePlan};
use tollgate_core::AccountId;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/admin/v1/price-plans",
            get(list_price_plans).post(create_price_plan),
        )
        .route(
            "/admin/v1/price-plans/{plan_id}",
            get(get_price_plan)
                .put(update_price_plan)
                .delete(delete_price_plan),
        )
        .route(
            "/admin/v1/accounts/{account_id}/price-plan",
            put(assign_price_plan),
        )
}

/// List price plans
#[utoipa::path(
    get,
    path = "/admin/v1/price-plans",
    responses(
        (status = 200, description = "The plans", body = PricePlanList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn list_price_plans(State(s): State<AdminState>) -> Json<PricePlanList> {
    let snapshot = s.control.snapshot();
    Json(PricePlanList {
        data: snapshot.price_plans.values().cloned().collect(),
    })
}

/// Create a price plan (terms left out take the defaults: fee 0.05 per million tokens, multiplier 1)
#[utoipa::path(
    post,
    path = "/admin/v1/price-plans",
    request_body = PricePlanSpec,
    responses(
        (status = 201, description = "The plan", body = PricePlan),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn create_price_plan(
    State(s): State<AdminState>,
    JsonBody(spec): JsonBody<PricePlanSpec>,
) -> AdminResult<(StatusCode, Json<PricePlan>)> {
    let plan = s.control.create_price_plan(&spec).await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// Get a price plan
#[utoipa::path(
    get,
    path = "/admin/v1/price-plans/{plan_id}",
    params(("plan_id" = String, Path, description = "The price plan (plan_…)")),
    responses(
        (status = 200, description = "The plan", body = PricePlan),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )
)]
pub(super) async fn get_price_plan(
    State(s): State<AdminState>,
    PathParams(plan_id): PathParams<String>,
) -> AdminResult<Json<PricePlan>> {
    Ok(Json(s.control.price_plan(&plan_id)?))
}

/// Replace a plan's name and terms; they apply to requests made from now on (usage events keep the terms they were billed on)
#[utoipa::path(
    put,
    path = "/admin/v1/price-plans/{plan_id}",
    params(("plan_id" = String, Path, description = "The price plan (plan_…)")),
    request_body = PricePlanSpec,
    responses(
        (status = 200, description = "The plan", body = PricePlan),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn update_price_plan(
    State(s): State<AdminState>,
    PathParams(plan_id): PathParams<String>,
    JsonBody(spec): JsonBody<PricePlanSpec>,
) -> AdminResult<Json<PricePlan>> {
    Ok(Json(s.control.update_price_plan(&plan_id, &spec).await?))
}

/// Delete a price plan no account is on
#[utoipa::path(
    delete,
    path = "/admin/v1/price-plans/{plan_id}",
    params(("plan_id" = String, Path, description = "The price plan (plan_…)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn delete_price_plan(
    State(s): State<AdminState>,
    PathParams(plan_id): PathParams<String>,
) -> AdminResult<StatusCode> {
    s.control.delete_price_plan(&plan_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"plan_id": "plan_…"}`, or `{"plan_id": null}` for the default terms.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AssignPlanBody {
    plan_id: Option<String>,
}

/// Put an account on a price plan, or back on the default terms with null
#[utoipa::path(
    put,
    path = "/admin/v1/accounts/{account_id}/price-plan",
    params(("account_id" = String, Path, description = "The account (acct_…)")),
    request_body = AssignPlanBody,
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 409, description = "Conflicts with existing state", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn assign_price_plan(
    State(s): State<AdminState>,
    PathParams(account_id): PathParams<String>,
    JsonBody(body): JsonBody<AssignPlanBody>,
) -> AdminResult<Json<Account>> {
    let account = s
        .control
        .assign_price_plan(&AccountId(account_id), body.plan_id.as_deref())
        .await?;
    Ok(Json(account))
}
