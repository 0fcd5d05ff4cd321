//! Webhook delivery against a local receiver: valid signatures, retries
//! after 500s, delivery after a restart mid-retry, never twice after an
//! acknowledgement, kinds filtering, give-up into the failed listing and
//! metrics, and the admin routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod alerts_common;

use alerts_common::*;
use chrono::Utc;
use hmac::{Hmac, Mac};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_control::admin::AdminAuth;
use tollgate_core::budget::{alert_id, Alert, AlertKind};
use tollgate_core::{AccountId, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_ledger::webhooks::{self, DeliveryState, WebhookDeliverer, WebhookSettings};
use tollgate_sqlite::Database;

const SECRET_ALL: &str = "whsec_all_0123456789";
const SECRET_LOW: &str = "whsec_low_9876543210";

fn alert(kind: AlertKind, object: &str) -> Alert {
    Alert {
        alert_id: alert_id(kind, object, "2026-12-07T00:00:00Z"),
        kind,
        account_id: AccountId::from("acct_w"),
        raised_at: Utc::now(),
        access_key_id: None,
        budget_id: None,
        period_start: None,
        resets_at: None,
        amount: Some(Usd::ZERO),
        spent: None,
        balance: None,
        lot_id: None,
        expires_at: None,
    }
}

/// A running deliverer and how to stop it (as a ledger restart would).
struct Running {
    deliverer: Arc<WebhookDeliverer>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(env: &Env, db: &Database, settings: WebhookSettings) -> Running {
        let deliverer = WebhookDeliverer::open(
            db,
            env.control.clone(),
            env.log(),
            settings,
            &prometheus::Registry::new(),
        )
        .unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn({
            let deliverer = deliverer.clone();
            async move { deliverer.run(stopped).await.unwrap() }
        });
        Running {
            deliverer,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the deliverer did not stop")
            .unwrap();
    }

    fn count(&self, outcome: &str) -> u64 {
        self.deliverer
            .metrics
            .deliveries
            .with_label_values(&[outcome])
            .get()
    }
}

fn fast() -> WebhookSettings {
    WebhookSettings {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(300),
        give_up_after: Duration::from_secs(600),
        ..WebhookSettings::default()
    }
}

/// The signature header checks out against `secret`: recomputed here.
fn assert_signed(request: &Received, secret: &str) {
    let header = request.headers["tollgate-signature"].to_str().unwrap();
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("malformed signature header {header}"));
    let t: i64 = t.parse().unwrap();
    assert!((Utc::now().timestamp() - t).abs() < 60, "stale timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        v1,
        "bad signature"
    );
    assert_eq!(request.headers["content-type"], "application/json");
    let body: Alert = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        request.headers["tollgate-alert-id"].to_str().unwrap(),
        body.alert_id
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_signed_retried_survive_a_restart_and_never_repeat() {
    let env = Env::new().await;
    let receiver = Receiver::start().await;
    env.webhook("whk_all", &receiver.url("/all"), vec![], SECRET_ALL)
        .await;
    env.webhook(
        "whk_low",
        &receiver.url("/low"),
        vec![AlertKind::LowBalance],
        SECRET_LOW,
    )
    .await;
    let low = alert(AlertKind::LowBalance, "acct_w");
    let budget = alert(AlertKind::BudgetExceeded, "bud_w");
    receiver.fail("/all", true);
    for a in [&low, &budget] {
        env.append(topics::ALERTS, &a.alert_id, EventBody::Alert(a.clone()))
            .await;
    }
    // The same alert again on the log (a second publish): queued once.
    env.append(topics::ALERTS, &low.alert_id, EventBody::Alert(low.clone()))
        .await;
    let db = env.db("ledger.db");
    let first = Running::start(&env, &db, fast());
    wait_for("a retry to /all", || {
        receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/all")
            .count()
            >= 4
    })
    .await;
    wait_for("the delivery to /low", || {
        receiver.acknowledged("/low").len() == 1
    })
    .await;
    assert!(first.count("retry") >= 2);
    first.stop().await;
    let pending = first_pending(&env, &db);
    assert_eq!(pending.len(), 2, "both /all deliveries wait: {pending:?}");
    assert!(pending
        .iter()
        .all(|d| d.attempts >= 1 && d.last_status == Some(500)));
    assert!(pending[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("HTTP 500: receiver\\nbroke"));

    // Restarted while the receiver recovers: both delivered, once each.
    receiver.fail("/all", false);
    let second = Running::start(&env, &db, fast());
    wait_for("both deliveries to /all", || {
        receiver.acknowledged("/all").len() == 2
    })
    .await;
    second.stop().await;
    // A third start: nothing acknowledged is sent again.
    let third = Running::start(&env, &db, fast());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let delivered = third
        .deliverer
        .list(Some(DeliveryState::Delivered), None, 100)
        .unwrap();
    third.stop().await;

    let mut all = receiver.acknowledged("/all");
    all.sort();
    let mut want = vec![low.alert_id.clone(), budget.alert_id.clone()];
    want.sort();
    assert_eq!(all, want, "exactly one acknowledged delivery per alert");
    assert_eq!(receiver.acknowledged("/low"), vec![low.alert_id.clone()]);
    assert!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/low")
            .count()
            == 1,
        "/low is subscribed to low_balance only"
    );
    for request in receiver.requests() {
        let secret = if request.path == "/all" {
            SECRET_ALL
        } else {
            SECRET_LOW
        };
        assert_signed(&request, secret);
    }
    assert_eq!(delivered.len(), 3);
    assert!(delivered
        .iter()
        .all(|d| d.delivered_at.is_some() && d.last_status == Some(200)));
}

/// The pending deliveries, read through a deliverer that is not running.
fn first_pending(env: &Env, db: &Database) -> Vec<webhooks::DeliveryView> {
    let reader = WebhookDeliverer::open(
        db,
        env.control.clone(),
        env.log(),
        WebhookSettings::default(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    reader
        .list(Some(DeliveryState::Pending), None, 100)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_is_given_up_listed_as_failed_and_retried_by_the_admin() {
    let env = Env::new().await;
    let receiver = Receiver::start().await;
    env.webhook("whk_down", &receiver.url("/down"), vec![], SECRET_ALL)
        .await;
    receiver.fail("/down", true);
    let a = alert(AlertKind::CreditsExpiring, "lot_1");
    env.append(topics::ALERTS, &a.alert_id, EventBody::Alert(a.clone()))
        .await;
    let db = env.db("ledger.db");
    // Tries after 50, 100, 100 ms…: the horizon of 400 ms is passed soon.
    let settings = WebhookSettings {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(100),
        give_up_after: Duration::from_millis(400),
        ..WebhookSettings::default()
    };
    let running = Running::start(&env, &db, settings);
    wait_for("the delivery to be given up", || {
        running.deliverer.metrics.failed.get() == 1
    })
    .await;
    assert_eq!(running.count("failed"), 1);
    assert!(running.count("retry") >= 2);
    let tries = receiver.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.requests().len(),
        tries,
        "a failed delivery is not tried again"
    );

    // The admin listing and retry, over HTTP.
    let app = webhooks::admin_router(running.deliverer.clone(), AdminAuth::new("admin-secret"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let unauthorized = client
        .get(format!("{admin}/admin/v1/webhook-deliveries?state=failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let list: serde_json::Value = client
        .get(format!(
            "{admin}/admin/v1/webhook-deliveries?state=failed&webhook_id=whk_down"
        ))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    assert_eq!(data[0]["alert_id"], a.alert_id.as_str());
    assert_eq!(data[0]["state"], "failed");
    assert_eq!(data[0]["last_status"], 500);
    assert_eq!(data[0]["attempts"].as_u64().unwrap() as usize, tries);
    assert_eq!(data[0]["alert"]["kind"], "credits_expiring");
    let bad = client
        .get(format!("{admin}/admin/v1/webhook-deliveries?state=lost"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<serde_json::Value>().await.unwrap()["error"]["param"],
        "state"
    );

    receiver.fail("/down", false);
    let retry = format!(
        "{admin}/admin/v1/webhook-deliveries/{}/whk_down/retry",
        a.alert_id
    );
    let response = client
        .post(&retry)
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    wait_for("the retried delivery", || {
        receiver.acknowledged("/down").len() == 1
    })
    .await;
    // Delivered now: retrying it again is a conflict; an unknown one 404.
    let response = client
        .post(&retry)
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let response = client
        .post(format!(
            "{admin}/admin/v1/webhook-deliveries/alrt_none/whk_down/retry"
        ))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_receivers_are_retried_and_deleted_webhooks_fail() {
    let env = Env::new().await;
    // A port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/gone", closed.local_addr().unwrap());
    drop(closed);
    env.webhook("whk_closed", &url, vec![], SECRET_ALL).await;
    let a = alert(AlertKind::LowBalance, "acct_closed");
    env.append(topics::ALERTS, &a.alert_id, EventBody::Alert(a.clone()))
        .await;
    let db = env.db("ledger.db");
    let running = Running::start(&env, &db, fast());
    wait_for("two refused tries", || running.count("retry") >= 2).await;
    let pending = running
        .deliverer
        .list(Some(DeliveryState::Pending), Some("whk_closed"), 10)
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].last_status, None);
    let error = pending[0].last_error.clone().unwrap();
    assert!(!error.is_empty() && !error.contains(SECRET_ALL), "{error}");
    assert!(pending[0].next_attempt_at.is_some());
    // Deleted: its delivery fails at the next try, not retried for ever.
    env.delete_webhook("whk_closed").await;
    wait_for("the deleted webhook's delivery to fail", || {
        running.deliverer.metrics.failed.get() == 1
    })
    .await;
    let failed = running
        .deliverer
        .list(Some(DeliveryState::Failed), None, 10)
        .unwrap();
    assert_eq!(
        failed[0].last_error.as_deref(),
        Some("the webhook was deleted")
    );
    running.stop().await;
}

#[test]
fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
    let settings = WebhookSettings::default();
    let secs = |n| settings.backoff(n).as_secs();
    assert_eq!([secs(1), secs(2), secs(3), secs(4)], [1, 2, 4, 8]);
    assert_eq!(secs(12), 2048);
    assert_eq!(secs(13), 3600, "capped at 1 h");
    assert_eq!(secs(200), 3600);
    // The documented recipe: HMAC-SHA256 over "<t>.<body>", hex.
    assert_eq!(
        webhooks::signature("secret", 1700000000, b"{}"),
        format!("t=1700000000,v1={}", {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
            mac.update(b"1700000000.{}");
            hex::encode(mac.finalize().into_bytes())
        })
    );
}
