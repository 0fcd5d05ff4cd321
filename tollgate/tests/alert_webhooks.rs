//! Alerts end to end through the real binary: `tollgate ledger` (embedded
//! log) raises a low-balance alert and POSTs it to a local receiver that
//! answers 500; the ledger is killed (SIGKILL) mid-retry, restarted and
//! delivers once the receiver recovers; a third start sends nothing again
//! and raises no second alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use chrono::Utc;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_control::MasterKey;
use tollgate_core::billing::Purchase;
use tollgate_core::budget::{AlertKind, Webhook};
use tollgate_core::control::{Account, ControlChange, ControlObject};
use tollgate_core::{AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::{topics, EventLog, LogRecord};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const MASTER_KEY: &str = "5a4b3c2d1e0f99887766554433221100ffeeddccbbaa00112233445566778899";
const ADMIN_TOKEN: &str = "tga_alert_webhooks_test_admin_token_0123456789";
const SECRET: &str = "whsec_end_to_end_42";
const DEADLINE: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Hooks {
    /// (alert id, signature header, body, status answered)
    got: Vec<(String, String, Vec<u8>, u16)>,
    failing: bool,
}

async fn receive(
    State(hooks): State<Arc<Mutex<Hooks>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut hooks = hooks.lock().unwrap();
    let status = if hooks.failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    hooks.got.push((
        header("tollgate-alert-id"),
        header("tollgate-signature"),
        body.to_vec(),
        status.as_u16(),
    ));
    status
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_ledger(config: &Path, log_file: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .unwrap();
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("TOLLGATE") || name.ends_with("_API_KEY") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .arg("--config")
        .arg(config)
        .arg("ledger")
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

async fn wait_for(what: &str, child: &mut Child, log_file: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the ledger exited ({status}) waiting for {what}:\n{}",
                std::fs::read_to_string(log_file).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn append(log: &SqliteEventLog, topic: &str, key: &str, envelope: Envelope) {
    log.append(LogRecord {
        topic: topic.into(),
        key: key.into(),
        payload: serde_json::to_vec(&envelope).unwrap(),
    })
    .await
    .unwrap();
    log.flush().await.unwrap();
}

/// An account with $5.00 (below the configured $10 low-balance amount)
/// and a webhook for every kind, written to the log before the ledger starts.
async fn seed(log: &SqliteEventLog, url: &str) {
    let master = MasterKey::parse(MASTER_KEY).unwrap();
    let account = Account {
        id: AccountId::from("acct_e2e"),
        name: "e2e".into(),
        created_at: Utc::now(),
        price_plan_id: None,
        low_balance_usd: None,
    };
    let webhook = Webhook {
        id: "whk_e2e".into(),
        url: url.into(),
        kinds: vec![AlertKind::LowBalance],
        secret_ciphertext: master.encrypt(SECRET),
        created_at: Utc::now(),
    };
    for object in [
        ControlObject::Account(account),
        ControlObject::Webhook(webhook),
    ] {
        let key = object.object_id();
        let change = Envelope::control(ControlChange::Upsert { object });
        append(log, topics::CONTROL, &key, change).await;
    }
    let purchase = Purchase {
        purchase_id: "pur_e2e".into(),
        account_id: AccountId::from("acct_e2e"),
        amount: "5.00".parse::<Usd>().unwrap(),
        idempotency_key: "e2e".into(),
        purchased_at: Utc::now(),
    };
    let body = Envelope::new(EventBody::Purchase(purchase));
    append(log, topics::ACCOUNT_EVENTS, "acct_e2e", body).await;
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} failed");
}

async fn stop(child: &mut Child, how: &str) {
    signal(child, how);
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the ledger did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_ledger_delivers_its_alert_once_after_the_restart() {
    let hooks = Arc::new(Mutex::new(Hooks {
        failing: true,
        ..Hooks::default()
    }));
    let app = Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/tollgate.db");
    let port = free_port();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n[ledger]\nlisten = \"127.0.0.1:{port}\"\n\
             [alerts]\nlow_balance_usd = \"10\"\nwebhook_retry_initial_ms = 100\n\
             webhook_retry_max_ms = 200\n[log]\nlevel = \"warn\"\n",
            store.display()
        ),
    )
    .unwrap();
    let log_file = dir.path().join("ledger.log");
    let db = Database::open(&store, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    seed(&log, &url).await;

    let tries = |h: &Arc<Mutex<Hooks>>| h.lock().unwrap().got.len();
    let mut child = start_ledger(&config, &log_file);
    wait_for("two failed tries", &mut child, &log_file, || {
        tries(&hooks) >= 2
    })
    .await;
    stop(&mut child, "-KILL").await;

    hooks.lock().unwrap().failing = false;
    let failed_before = tries(&hooks);
    let mut child = start_ledger(&config, &log_file);
    let acknowledged =
        |h: &Arc<Mutex<Hooks>>| h.lock().unwrap().got.iter().filter(|g| g.3 == 204).count();
    wait_for("the delivery", &mut child, &log_file, || {
        acknowledged(&hooks) == 1
    })
    .await;
    // The admin listing (the ledger's own listener, alone in its process).
    let listing: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "http://127.0.0.1:{port}/admin/v1/webhook-deliveries?state=delivered"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stop(&mut child, "-TERM").await;
    let rows = listing["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listing}");
    assert_eq!(rows[0]["webhook_id"], "whk_e2e");
    assert!(rows[0]["attempts"].as_u64().unwrap() >= 2, "{listing}");

    // A third start: nothing is sent again, no alert raised again.
    let mut child = start_ledger(&config, &log_file);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "the ledger exited");
    stop(&mut child, "-TERM").await;

    let got = hooks.lock().unwrap().got.clone();
    assert!(failed_before >= 2);
    assert_eq!(
        got.iter().filter(|g| g.3 == 204).count(),
        1,
        "delivered once"
    );
    assert_eq!(
        got.last().unwrap().3,
        204,
        "nothing after the acknowledgement"
    );
    let alert_ids: std::collections::BTreeSet<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(alert_ids.len(), 1, "one alert, however many tries");
    for (id, signature, body, _) in &got {
        let t: i64 = signature
            .strip_prefix("t=")
            .and_then(|s| s.split(',').next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            signature,
            &tollgate_ledger::webhooks::signature(SECRET, t, body)
        );
        let alert: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(alert["alert_id"], id.as_str());
        assert_eq!(alert["kind"], "low_balance");
        let usd = |field: &str| alert[field].as_str().unwrap().parse::<Usd>().unwrap();
        assert_eq!(usd("balance"), "5".parse().unwrap());
        assert_eq!(usd("amount"), "10".parse().unwrap());
    }
    let alerts = log.read(topics::ALERTS, 0, 0, 1000).await.unwrap();
    assert_eq!(alerts.len(), 1, "one alert on the log across three starts");
}
