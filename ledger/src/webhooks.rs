//! Webhook delivery: every alert on `tollgate.alerts`, to each webhook
//! subscribed to its kind, at least once, surviving restarts.
//!
//! The intake consumes the alerts topic (consumer group
//! `tollgate-webhooks`, positions in the ledger's file) and queues one row
//! per (alert id, webhook) — `INSERT OR IGNORE`, so an alert is never queued
//! twice for a webhook — in the transaction that stores its position. The
//! sender POSTs due rows (at most 8 at once), signed with HMAC-SHA256 over
//! `<unix seconds>.<body>`; a 2xx marks the row delivered (never sent again),
//! anything else retries with exponential backoff until the next try would
//! fall beyond the give-up horizon (72 h after the first try), when the row
//! is failed and listed at `GET /admin/v1/webhook-deliveries?state=failed`.

use crate::alerts::{decode_alert, migrate, position, save_position};
use crate::LedgerError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tollgate_control::admin::AdminAuth;
use tollgate_control::ControlPlane;
use tollgate_core::budget::{Alert, AlertKind};
use tollgate_core::Escaped;
use tollgate_eventlog::{topics, EventLog, PositionSource};
use tollgate_sqlite::Database;
use utoipa::{IntoParams, ToSchema};

pub const CONSUMER_GROUP: &str = "tollgate-webhooks";
/// The intake's name in `alerts_positions`.
const INTAKE: &str = "webhooks";
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
pub const ALERT_ID_HEADER: &str = "tollgate-alert-id";
/// Most of a receiver's answer kept as `last_error`.
const ERROR_BODY_MAX: usize = 2 * 1024;
const SENDER_POLL: Duration = Duration::from_millis(100);
const INTAKE_WAIT: Duration = Duration::from_millis(200);
const INTAKE_MAX: usize = 1_000;

/// Timing of deliveries.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Delay after the first failed try; doubled after each next one.
    pub retry_initial: Duration,
    /// Longest delay between two tries.
    pub retry_max: Duration,
    /// A delivery whose next try would be later than this after its first
    /// is given up (failed).
    pub give_up_after: Duration,
    /// Bound on one POST, connecting and reading the answer included.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(72 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 8,
        }
    }
}

impl WebhookSettings {
    /// The wait after the `attempts`-th failed try (1-based).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.saturating_sub(1)).unwrap_or(0);
        match self.retry_initial.checked_mul(factor) {
            Some(d) if factor > 0 => d.min(self.retry_max),
            _ => self.retry_max,
        }
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix
/// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes a key of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// `tollgate_webhook_deliveries_total{outcome}` and
/// `tollgate_webhook_deliveries_failed_total`.
pub struct WebhookMetrics {
    pub deliveries: IntCounterVec,
    pub failed: IntCounter,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> Result<WebhookMetrics, prometheus::Error> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "tollgate_webhook_deliveries_total",
                "Webhook delivery tries by outcome: delivered (2xx), retry (to be tried again), failed (given up).",
            ),
            &["outcome"],
        )?;
        for outcome in ["delivered", "retry", "failed"] {
            deliveries.with_label_values(&[outcome]);
        }
        let failed = IntCounter::new(
            "tollgate_webhook_deliveries_failed_total",
            "Webhook deliveries given up (listed at /admin/v1/webhook-deliveries?state=failed).",
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        Ok(WebhookMetrics { deliveries, failed })
    }
}

/// A delivery's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<DeliveryState> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One alert's delivery to one webhook, as the admin API lists it.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct DeliveryView {
    pub alert_id: String,
    pub webhook_id: String,
    pub kind: AlertKind,
    pub state: DeliveryState,
    /// Tries made so far.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Pending deliveries: when the next try is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status; null when it did not answer.
    pub last_status: Option<u16>,
    /// Why the last try failed (the start of the receiver's answer, escaped).
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body sent.
    pub alert: Alert,
}

/// A due row for the sender.
struct Due {
    alert_id: String,
    webhook_id: String,
    payload: String,
    attempts: u32,
    first_attempt_ms: Option<i64>,
}

/// How one try ended.
enum Attempt {
    Delivered(u16),
    Failed {
        status: Option<u16>,
        error: String,
    },
    /// The webhook no longer exists: nothing to try again.
    Gone,
}

fn at_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// The intake's durable positions.
struct StoredPositions(Database);

impl PositionSource for StoredPositions {
    fn next_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        let conn = self.0.connect().ok()?;
        position(&conn, INTAKE, topic, partition).ok().flatten()
    }
}

/// Queues alerts for webhooks and sends them.
pub struct WebhookDeliverer {
    db: Database,
    conn: Mutex<Connection>,
    control: Arc<ControlPlane>,
    log: Arc<dyn EventLog>,
    client: reqwest::Client,
    settings: WebhookSettings,
    pub metrics: WebhookMetrics,
}

impl WebhookDeliverer {
    /// Open (migrating) the delivery table in the ledger's file `db`.
    pub fn open(
        db: &Database,
        control: Arc<ControlPlane>,
        log: Arc<dyn EventLog>,
        settings: WebhookSettings,
        registry: &Registry,
    ) -> Result<Arc<WebhookDeliverer>, LedgerError> {
        migrate(db)?;
        // rustls; honours HTTPS_PROXY/NO_PROXY. No redirects: a signed body
        // goes only to the URL the admin set.
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LedgerError::Http(e.to_string()))?;
        Ok(Arc::new(WebhookDeliverer {
            db: db.clone(),
            conn: Mutex::new(db.connect()?),
            control,
            log,
            client,
            settings,
            metrics: WebhookMetrics::register(registry)?,
        }))
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&WebhookDeliverer) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        crate::on_blocking_thread(self.clone(), work).await
    }

    /// Queue and send until `shutdown` turns true. Deliveries in flight at
    /// shutdown are dropped and tried again after the restart.
    pub async fn run(
        self: Arc<Self>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), LedgerError> {
        let intake = tokio::spawn(self.clone().keep_intake(shutdown.clone()));
        self.send_loop(shutdown).await;
        intake.await.map_err(|e| LedgerError::Join(e.to_string()))
    }

    /// The intake, subscribed again after a failure (its position is
    /// durable, so nothing is skipped).
    async fn keep_intake(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.clone().intake(shutdown.clone()).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "webhook intake failed; subscribing again");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Consume the alerts topic into delivery rows.
    async fn intake(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), LedgerError> {
        let positions = Arc::new(StoredPositions(self.db.clone()));
        let mut subscription = self
            .log
            .subscribe(topics::ALERTS, CONSUMER_GROUP, positions)
            .await?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let batch = tokio::select! {
                batch = subscription.next_batch(INTAKE_MAX, INTAKE_WAIT) => batch?,
                _ = shutdown.changed() => continue,
            };
            let Some(batch) = batch else { continue };
            let partition = batch.partition;
            let next = batch.records.last().map_or(0, |r| r.offset + 1);
            let alerts: Vec<Alert> = batch.records.iter().filter_map(decode_alert).collect();
            self.blocking(move |d| d.queue(partition, next, &alerts))
                .await?;
            if let Err(err) = subscription.commit(partition, next).await {
                tracing::warn!(error = %err, "webhook intake offset commit failed (the position is kept in the ledger's file)");
            }
        }
    }

    /// One row per (alert, subscribed webhook), and the position, at once.
    fn queue(&self, partition: u32, next: u64, alerts: &[Alert]) -> Result<(), LedgerError> {
        let control = self.control.snapshot();
        let now = Utc::now();
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for alert in alerts {
            let payload =
                serde_json::to_string(alert).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            for hook in control.webhooks.values() {
                if !hook.subscribes_to(alert.kind) {
                    continue;
                }
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO webhook_deliveries
                     (alert_id, webhook_id, kind, payload, state, attempts, created_at, next_attempt_ms)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6)",
                )?
                .execute(params![
                    alert.alert_id,
                    hook.id,
                    alert.kind.as_str(),
                    payload,
                    // Fixed width, so the listing's text order is time order.
                    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    now.timestamp_millis()
                ])?;
            }
        }
        save_position(&tx, INTAKE, topics::ALERTS, partition, next)?;
        tx.commit()?;
        Ok(())
    }

    /// Send due rows, at most `concurrency` at once, until shutdown.
    async fn send_loop(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut in_flight: JoinSet<(String, String)> = JoinSet::new();
        let mut sending: HashSet<(String, String)> = HashSet::new();
        loop {
            if *shutdown.borrow() {
                in_flight.abort_all();
                return;
            }
            while let Some(done) = in_flight.try_join_next() {
                if let Ok(key) = done {
                    sending.remove(&key);
                }
            }
            let free = self.settings.concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                let limit = free + sending.len();
                let due = match self.blocking(move |d| d.due(limit)).await {
                    Ok(due) => due,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading due webhook deliveries failed");
                        Vec::new()
                    }
                };
                for row in due {
                    let key = (row.alert_id.clone(), row.webhook_id.clone());
                    if sending.contains(&key) {
                        continue;
                    }
                    if in_flight.len() >= self.settings.concurrency {
                        break;
                    }
                    sending.insert(key.clone());
                    let this = self.clone();
                    in_flight.spawn(async move {
                        this.deliver(row).await;
                        key
                    });
                }
            }
            tokio::select! {
                () = tokio::time::sleep(SENDER_POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn due(&self, limit: usize) -> Result<Vec<Due>, LedgerError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT alert_id, webhook_id, payload, attempts, first_attempt_ms FROM webhook_deliveries
             WHERE state = 'pending' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![Utc::now().timestamp_millis(), limit as i64], |r| {
            Ok(Due {
                alert_id: r.get(0)?,
                webhook_id: r.get(1)?,
                payload: r.get(2)?,
                attempts: r.get(3)?,
                first_attempt_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Try one delivery and record how it ended.
    async fn deliver(self: &Arc<Self>, row: Due) {
        let started = Utc::now();
        let attempt = self.attempt(&row).await;
        let outcome = match self
            .blocking(move |d| d.record(&row, started, attempt))
            .await
        {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(error = %err, "recording a webhook delivery failed; it is tried again");
                return;
            }
        };
        self.metrics.deliveries.with_label_values(&[outcome]).inc();
        if outcome == "failed" {
            self.metrics.failed.inc();
        }
    }

    /// One signed POST of the row's body to its webhook's current URL.
    async fn attempt(&self, row: &Due) -> Attempt {
        let control = self.control.snapshot();
        let Some(hook) = control.webhooks.get(&row.webhook_id) else {
            return Attempt::Gone;
        };
        let Some(secret) = control.webhook_secret(&row.webhook_id) else {
            return Attempt::Failed {
                status: None,
                error: "the webhook's signing secret cannot be decrypted with this master key"
                    .into(),
            };
        };
        let body = row.payload.clone().into_bytes();
        let signed = signature(&secret.0, Utc::now().timestamp(), &body);
        let sent = self
            .client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ALERT_ID_HEADER, &row.alert_id)
            .header(SIGNATURE_HEADER, signed)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                return Attempt::Failed {
                    status: None,
                    // The URL is the admin's; its query may hold a token.
                    error: error_chain(&err.without_url()),
                };
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Attempt::Delivered(status);
        }
        let mut kept = Vec::new();
        while kept.len() < ERROR_BODY_MAX {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                _ => break,
            }
        }
        kept.truncate(ERROR_BODY_MAX);
        let text = String::from_utf8_lossy(&kept);
        Attempt::Failed {
            status: Some(status),
            error: format!("HTTP {status}: {}", tollgate_core::Escaped(&text)),
        }
    }

    /// Store a try's outcome; returns the metric's outcome label.
    fn record(
        &self,
        row: &Due,
        started: DateTime<Utc>,
        attempt: Attempt,
    ) -> Result<&'static str, LedgerError> {
        let now_ms = Utc::now().timestamp_millis();
        let first_ms = row.first_attempt_ms.unwrap_or(started.timestamp_millis());
        let attempts = row.attempts + 1;
        let (state, status, error, next_ms) = match attempt {
            Attempt::Delivered(status) => (DeliveryState::Delivered, Some(status), None, now_ms),
            Attempt::Gone => (
                DeliveryState::Failed,
                None,
                Some("the webhook was deleted".to_owned()),
                now_ms,
            ),
            Attempt::Failed { status, error } => {
                let wait = self.settings.backoff(attempts);
                let next_ms = now_ms.saturating_add(wait.as_millis() as i64);
                let horizon =
                    first_ms.saturating_add(self.settings.give_up_after.as_millis() as i64);
                let state = if next_ms > horizon {
                    DeliveryState::Failed
                } else {
                    DeliveryState::Pending
                };
                (state, status, Some(error), next_ms)
            }
        };
        let conn = self.conn.lock();
        conn.prepare_cached(
            "UPDATE webhook_deliveries SET state = ?3, attempts = ?4, first_attempt_ms = ?5,
             last_attempt_ms = ?6, next_attempt_ms = ?7, last_status = ?8, last_error = ?9,
             delivered_ms = CASE WHEN ?3 = 'delivered' THEN ?6 ELSE NULL END
             WHERE alert_id = ?1 AND webhook_id = ?2 AND state = 'pending'",
        )?
        .execute(params![
            row.alert_id,
            row.webhook_id,
            state.as_str(),
            attempts,
            first_ms,
            now_ms,
            next_ms,
            status,
            error
        ])?;
        Ok(match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retry",
            DeliveryState::Failed => {
                tracing::warn!(alert_id = %row.alert_id, webhook_id = %row.webhook_id, attempts, "webhook delivery given up");
                "failed"
            }
        })
    }

    /// Deliveries, newest first.
    pub fn list(
        &self,
        state: Option<DeliveryState>,
        webhook_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, LedgerError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT alert_id, webhook_id, kind, state, attempts, created_at, first_attempt_ms,
                    last_attempt_ms, next_attempt_ms, last_status, last_error, delivered_ms, payload
             FROM webhook_deliveries
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR webhook_id = ?2)
             ORDER BY created_at DESC, alert_id, webhook_id LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![state.map(DeliveryState::as_str), webhook_id, limit as i64],
            view_of_row,
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.map_err(LedgerError::Corrupt)?);
        }
        Ok(out)
    }

    /// Requeue a failed delivery now, with a fresh give-up horizon. None:
    /// no such delivery; Some(Err(state)): it is not failed.
    pub fn retry(
        &self,
        alert_id: &str,
        webhook_id: &str,
    ) -> Result<Option<Result<(), DeliveryState>>, LedgerError> {
        let conn = self.conn.lock();
        let current: Option<String> = conn
            .query_row(
                "SELECT state FROM webhook_deliveries WHERE alert_id = ?1 AND webhook_id = ?2",
                params![alert_id, webhook_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        let state = DeliveryState::parse(&current)
            .ok_or_else(|| LedgerError::Corrupt(format!("delivery state {current:?}")))?;
        if state != DeliveryState::Failed {
            return Ok(Some(Err(state)));
        }
        conn.execute(
            "UPDATE webhook_deliveries SET state = 'pending', first_attempt_ms = NULL,
             next_attempt_ms = ?3 WHERE alert_id = ?1 AND webhook_id = ?2 AND state = 'failed'",
            params![alert_id, webhook_id, Utc::now().timestamp_millis()],
        )?;
        Ok(Some(Ok(())))
    }
}

/// reqwest's error with its sources (the cause is in the chain).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    tollgate_core::Escaped(&text).to_string()
}

type RowResult = Result<DeliveryView, String>;

fn view_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let kind: String = r.get(2)?;
    let state: String = r.get(3)?;
    let created: String = r.get(5)?;
    let payload: String = r.get(12)?;
    let opt_ms = |i: usize| -> rusqlite::Result<Option<DateTime<Utc>>> {
        Ok(r.get::<_, Option<i64>>(i)?.and_then(at_ms))
    };
    let (Some(kind), Some(state)) = (AlertKind::parse(&kind), DeliveryState::parse(&state)) else {
        return Ok(Err(format!("delivery kind {kind:?} or state {state:?}")));
    };
    let created_at = match DateTime::parse_from_rfc3339(&created) {
        Ok(at) => at.with_timezone(&Utc),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let alert = match serde_json::from_str::<Alert>(&payload) {
        Ok(alert) => alert,
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(Ok(DeliveryView {
        alert_id: r.get(0)?,
        webhook_id: r.get(1)?,
        kind,
        state,
        attempts: r.get(4)?,
        created_at,
        first_attempt_at: opt_ms(6)?,
        last_attempt_at: opt_ms(7)?,
        next_attempt_at: if state == DeliveryState::Pending {
            opt_ms(8)?
        } else {
            None
        },
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        delivered_at: opt_ms(11)?,
        alert,
    }))
}

// ---- admin API ---------------------------------------------------------------

/// The error body of the webhook-deliveries routes (the admin API's shape).
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookDeliveriesError)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[schema(as = WebhookDeliveriesErrorDetail)]
pub struct ErrorDetail {
    /// invalid_request, unauthorized, not_found, conflict or internal.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The parameter at fault, null when none is.
    param: Option<&'static str>,
    message: String,
}

pub struct ApiError(StatusCode, ErrorDetail);

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        param: Option<&'static str>,
        message: String,
    ) -> Self {
        ApiError(
            status,
            ErrorDetail {
                kind,
                param,
                message,
            },
        )
    }

    fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "webhook deliveries API failure");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            "internal error".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("query"),
            rejection.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("path"),
            rejection.body_text(),
        )
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// Only deliveries to this webhook (whk_…).
    webhook_id: Option<String>,
    /// 1 to 1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// A page of deliveries, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookDeliveries)]
pub struct DeliveriesView {
    data: Vec<DeliveryView>,
}

/// Alert deliveries to webhooks: failed ones (given up), pending ones
/// (waiting for their next try) or delivered ones, newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/webhook-deliveries",
    tag = "webhooks",
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "The deliveries", body = DeliveriesView),
        (status = 400, description = "Invalid request; `param` names the parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn list_deliveries(
    State(deliverer): State<Arc<WebhookDeliverer>>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<DeliveriesView>, ApiError> {
    let Query(query) = query?;
    // The message starts with the parameter, as every other 400 here.
    let bad = |param, message: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
            format!("{param}: {message}"),
        )
    };
    let state = match query.state.as_deref() {
        None => None,
        Some(text) => Some(DeliveryState::parse(text).ok_or_else(|| {
            bad(
                "state",
                &format!(
                    "must be pending, delivered or failed, not `{}`",
                    Escaped(text)
                ),
            )
        })?),
    };
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad("limit", "must be an integer from 1 to 1000"))?,
    };
    let this = deliverer.clone();
    let data =
        tokio::task::spawn_blocking(move || this.list(state, query.webhook_id.as_deref(), limit))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Ok(Json(DeliveriesView { data }))
}

/// Try a failed delivery again now, with a fresh give-up horizon.
#[utoipa::path(
    post,
    path = "/admin/v1/webhook-deliveries/{alert_id}/{webhook_id}/retry",
    tag = "webhooks",
    params(
        ("alert_id" = String, Path, description = "The alert (alrt_…)"),
        ("webhook_id" = String, Path, description = "The webhook (whk_…)"),
    ),
    responses(
        (status = 202, description = "Queued: the next try is due now"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "The delivery is not failed", body = ErrorBody),
    )
)]
async fn retry_delivery(
    State(deliverer): State<Arc<WebhookDeliverer>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((alert_id, webhook_id)) = path?;
    let this = deliverer.clone();
    let (a, w) = (alert_id.clone(), webhook_id.clone());
    let result = tokio::task::spawn_blocking(move || this.retry(&a, &w))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match result {
        Some(Ok(())) => Ok(StatusCode::ACCEPTED),
        Some(Err(state)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            None,
            format!("the delivery is {}, not failed", state.as_str()),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            format!(
                "no delivery of alert {} to webhook {}",
                tollgate_core::Escaped(&alert_id),
                tollgate_core::Escaped(&webhook_id)
            ),
        )),
    }
}

/// The webhook-deliveries routes' part of the admin API document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_deliveries, retry_delivery))]
pub struct WebhooksAdminDoc;

/// The webhook-deliveries routes' paths, to merge into the admin API document.
pub fn admin_openapi() -> utoipa::openapi::OpenApi {
    <WebhooksAdminDoc as utoipa::OpenApi>::openapi()
}

/// `/admin/v1/webhook-deliveries…` behind the admin token.
pub fn admin_router(deliverer: Arc<WebhookDeliverer>, auth: AdminAuth) -> Router {
    Router::new()
        .route("/admin/v1/webhook-deliveries", get(list_deliveries))
        .route(
            "/admin/v1/webhook-deliveries/{alert_id}/{webhook_id}/retry",
            post(retry_delivery),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            AdminAuth::require,
        ))
        .with_state(deliverer)
}
