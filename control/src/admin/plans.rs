//! Admin routes for price plans and their assignment to accounts.

use super::{AdminResult, AdminState, JsonBody};
use crate::plans::PricePlanSpec;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
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

async fn list_price_plans(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = s.control.snapshot();
    Json(json!({"data": snapshot.price_plans.values().collect::<Vec<_>>()}))
}

async fn create_price_plan(
    State(s): State<AdminState>,
    JsonBody(spec): JsonBody<PricePlanSpec>,
) -> AdminResult<(StatusCode, Json<PricePlan>)> {
    let plan = s.control.create_price_plan(&spec).await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

async fn get_price_plan(
    State(s): State<AdminState>,
    Path(plan_id): Path<String>,
) -> AdminResult<Json<PricePlan>> {
    Ok(Json(s.control.price_plan(&plan_id)?))
}

async fn update_price_plan(
    State(s): State<AdminState>,
    Path(plan_id): Path<String>,
    JsonBody(spec): JsonBody<PricePlanSpec>,
) -> AdminResult<Json<PricePlan>> {
    Ok(Json(s.control.update_price_plan(&plan_id, &spec).await?))
}

async fn delete_price_plan(
    State(s): State<AdminState>,
    Path(plan_id): Path<String>,
) -> AdminResult<StatusCode> {
    s.control.delete_price_plan(&plan_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"plan_id": "plan_…"}`, or `{"plan_id": null}` for the default terms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignPlanBody {
    plan_id: Option<String>,
}

async fn assign_price_plan(
    State(s): State<AdminState>,
    Path(account_id): Path<String>,
    JsonBody(body): JsonBody<AssignPlanBody>,
) -> AdminResult<Json<Account>> {
    let account = s
        .control
        .assign_price_plan(&AccountId(account_id), body.plan_id.as_deref())
        .await?;
    Ok(Json(account))
}
