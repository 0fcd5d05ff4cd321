//! Admin routes for webhooks. The signing secret is in the answers to
//! create and rotate-secret only; no answer ever carries its ciphertext.

use super::{AdminResult, AdminState, ErrorBody, JsonBody, PathParams, WebhookList};
use crate::webhooks::{NewWebhook, WebhookPatch, WebhookWithSecret};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tollgate_core::budget::{AlertKind, Webhook};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/admin/v1/webhooks",
            get(list_webhooks).post(create_webhook),
        )
        .route(
            "/admin/v1/webhooks/{webhook_id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route(
            "/admin/v1/webhooks/{webhook_id}/rotate-secret",
            post(rotate_webhook_secret),
        )
}

/// A webhook as the API shows it: never the secret, not even encrypted.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    /// `whk_…`
    pub id: String,
    pub url: String,
    /// The alert kinds delivered to it; empty: every kind.
    pub kinds: Vec<AlertKind>,
    pub created_at: DateTime<Utc>,
}

impl From<&Webhook> for WebhookView {
    fn from(webhook: &Webhook) -> Self {
        WebhookView {
            id: webhook.id.clone(),
            url: webhook.url.clone(),
            kinds: webhook.kinds.clone(),
            created_at: webhook.created_at,
        }
    }
}

/// A webhook and its signing secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookSecretView {
    /// `whk_…`
    pub id: String,
    pub url: String,
    /// The alert kinds delivered to it; empty: every kind.
    pub kinds: Vec<AlertKind>,
    pub created_at: DateTime<Utc>,
    /// The signing secret (`whsec_…`): returned only here, stored only
    /// encrypted. Deliveries are signed with it.
    pub secret: String,
}

impl From<WebhookWithSecret> for WebhookSecretView {
    fn from(created: WebhookWithSecret) -> Self {
        let view = WebhookView::from(&created.webhook);
        WebhookSecretView {
            id: view.id,
            url: view.url,
            kinds: view.kinds,
            created_at: view.created_at,
            secret: created.secret,
        }
    }
}

/// List webhooks (never their secrets)
#[utoipa::path(
    get,
    path = "/admin/v1/webhooks",
    responses(
        (status = 200, description = "The webhooks", body = WebhookList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn list_webhooks(State(s): State<AdminState>) -> Json<WebhookList> {
    let snapshot = s.control.snapshot();
    Json(WebhookList {
        data: snapshot.webhooks.values().map(WebhookView::from).collect(),
    })
}

/// Create a webhook; its signing secret is returned only in this response
#[utoipa::path(
    post,
    path = "/admin/v1/webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "The webhook and its signing secret", body = WebhookSecretView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn create_webhook(
    State(s): State<AdminState>,
    JsonBody(spec): JsonBody<NewWebhook>,
) -> AdminResult<(StatusCode, Json<WebhookSecretView>)> {
    let created = s.control.create_webhook(&spec).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Get a webhook (never its secret)
#[utoipa::path(
    get,
    path = "/admin/v1/webhooks/{webhook_id}",
    params(("webhook_id" = String, Path, description = "The webhook (whk_…)")),
    responses(
        (status = 200, description = "The webhook", body = WebhookView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )
)]
pub(super) async fn get_webhook(
    State(s): State<AdminState>,
    PathParams(webhook_id): PathParams<String>,
) -> AdminResult<Json<WebhookView>> {
    Ok(Json(WebhookView::from(&s.control.webhook(&webhook_id)?)))
}

/// Change a webhook's URL or alert kinds (the secret is kept)
#[utoipa::path(
    patch,
    path = "/admin/v1/webhooks/{webhook_id}",
    params(("webhook_id" = String, Path, description = "The webhook (whk_…)")),
    request_body = WebhookPatch,
    responses(
        (status = 200, description = "The webhook", body = WebhookView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn update_webhook(
    State(s): State<AdminState>,
    PathParams(webhook_id): PathParams<String>,
    JsonBody(patch): JsonBody<WebhookPatch>,
) -> AdminResult<Json<WebhookView>> {
    let webhook = s.control.update_webhook(&webhook_id, &patch).await?;
    Ok(Json(WebhookView::from(&webhook)))
}

/// Delete a webhook: no alert is delivered to it any more
#[utoipa::path(
    delete,
    path = "/admin/v1/webhooks/{webhook_id}",
    params(("webhook_id" = String, Path, description = "The webhook (whk_…)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn delete_webhook(
    State(s): State<AdminState>,
    PathParams(webhook_id): PathParams<String>,
) -> AdminResult<StatusCode> {
    s.control.delete_webhook(&webhook_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a webhook's signing secret; the new one is returned only in this response and signs every delivery from now on
#[utoipa::path(
    post,
    path = "/admin/v1/webhooks/{webhook_id}/rotate-secret",
    params(("webhook_id" = String, Path, description = "The webhook (whk_…)")),
    responses(
        (status = 200, description = "The webhook and its new signing secret", body = WebhookSecretView),
        (status = 400, description = "Invalid request; the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
        (status = 503, description = "The change could not be recorded on the control log", body = ErrorBody),
    )
)]
pub(super) async fn rotate_webhook_secret(
    State(s): State<AdminState>,
    PathParams(webhook_id): PathParams<String>,
) -> AdminResult<Json<WebhookSecretView>> {
    let rotated = s.control.rotate_webhook_secret(&webhook_id).await?;
    Ok(Json(rotated.into()))
}
