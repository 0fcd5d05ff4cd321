//! The proxy's part of the admin API document (`GET /admin/v1/model-prices`),
//! merged into the admin listener's document where the roles are composed.

use crate::gateway::ModelPrice;

/// `{"data": [...]}`: every model's effective prices.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ModelPriceList {
    data: Vec<ModelPrice>,
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(crate::routes::model_prices))]
pub struct ProxyAdminDoc;

/// The paths the proxy's admin router serves.
pub fn admin_openapi() -> utoipa::openapi::OpenApi {
    <ProxyAdminDoc as utoipa::OpenApi>::openapi()
}
