//! Shared by the alert and webhook tests: an embedded log with a control
//! plane on it, ledgers on their own files, and a local webhook receiver.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use chrono::Utc;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_control::{ControlPlane, MasterKey, ProviderIds};
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::budget::{Alert, AlertKind, Webhook};
use tollgate_core::control::{Account, ControlChange, ControlObject};
use tollgate_core::{AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::{topics, Batch, EventLog, LogRecord};
use tollgate_ledger::LedgerService;
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

pub const MASTER: &str = "8f2c1a4b9d3e7f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

/// The log (and control topic) in one file; ledgers in others, so a
/// "standby" can start on a fresh file against the same log.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub log: Arc<SqliteEventLog>,
    pub control: Arc<ControlPlane>,
    pub master: Arc<MasterKey>,
}

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("log.db"), Durability::Normal).unwrap();
        let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
        let master = Arc::new(MasterKey::parse(MASTER).unwrap());
        let providers = ProviderIds {
            builtin: HashSet::new(),
            from_config: HashSet::new(),
        };
        let control =
            ControlPlane::open(log.clone() as Arc<dyn EventLog>, master.clone(), providers)
                .await
                .unwrap();
        Env {
            dir,
            log,
            control,
            master,
        }
    }

    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    pub fn db(&self, name: &str) -> Database {
        Database::open(self.dir.path().join(name), Durability::Normal).unwrap()
    }

    pub async fn append(&self, topic: &str, key: &str, body: EventBody) {
        self.log
            .append(LogRecord {
                topic: topic.into(),
                key: key.into(),
                payload: serde_json::to_vec(&Envelope::new(body)).unwrap(),
            })
            .await
            .unwrap();
        self.log.flush().await.unwrap();
    }

    pub async fn upsert(&self, object: ControlObject) {
        let key = object.object_id();
        let payload =
            serde_json::to_vec(&Envelope::control(ControlChange::Upsert { object })).unwrap();
        self.log
            .append(LogRecord {
                topic: topics::CONTROL.into(),
                key,
                payload,
            })
            .await
            .unwrap();
        self.log.flush().await.unwrap();
        self.control.catch_up().await.unwrap();
    }

    pub async fn delete_webhook(&self, id: &str) {
        let change = ControlChange::Delete {
            kind: tollgate_core::control::ControlKind::Webhook,
            id: id.into(),
        };
        self.log
            .append(LogRecord {
                topic: topics::CONTROL.into(),
                key: id.into(),
                payload: serde_json::to_vec(&Envelope::control(change)).unwrap(),
            })
            .await
            .unwrap();
        self.log.flush().await.unwrap();
        self.control.catch_up().await.unwrap();
    }

    pub async fn account(&self, id: &str, low_balance: Option<Usd>) {
        self.upsert(ControlObject::Account(Account {
            id: AccountId::from(id),
            name: id.into(),
            created_at: Utc::now(),
            price_plan_id: None,
            low_balance_usd: low_balance,
        }))
        .await;
    }

    pub async fn webhook(&self, id: &str, url: &str, kinds: Vec<AlertKind>, secret: &str) {
        self.upsert(ControlObject::Webhook(Webhook {
            id: id.into(),
            url: url.into(),
            kinds,
            secret_ciphertext: self.master.encrypt(secret),
            created_at: Utc::now(),
        }))
        .await;
    }

    /// Apply every account event not applied yet and publish the balance
    /// updates, as the ledger's run loop does.
    pub async fn apply(&self, ledger: &LedgerService, from: &mut u64) -> Vec<BalanceUpdate> {
        let records = self
            .log
            .read(topics::ACCOUNT_EVENTS, 0, *from, 100_000)
            .await
            .unwrap();
        let Some(last) = records.last() else {
            return Vec::new();
        };
        *from = last.offset + 1;
        let batch = Batch {
            partition: 0,
            records,
        };
        let updates = ledger.apply_batch(topics::ACCOUNT_EVENTS, &batch).unwrap();
        for update in &updates {
            self.append(
                topics::BALANCES,
                update.account_id.as_str(),
                EventBody::Balance(update.clone()),
            )
            .await;
        }
        updates
    }

    /// Every alert on the alerts topic, in log order.
    pub async fn alerts(&self) -> Vec<Alert> {
        self.log
            .read(topics::ALERTS, 0, 0, 100_000)
            .await
            .unwrap()
            .iter()
            .map(
                |r| match serde_json::from_slice::<Envelope>(&r.payload).unwrap().body {
                    EventBody::Alert(alert) => alert,
                    other => panic!("not an alert: {other:?}"),
                },
            )
            .collect()
    }
}

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub status: u16,
}

#[derive(Default)]
pub struct ReceiverState {
    pub requests: Vec<Received>,
    /// Paths answered 500 (while listed).
    pub failing: HashSet<String>,
}

/// A local HTTP server recording every POST; `/…` paths in `failing`
/// answer 500 with a body, others 200.
pub struct Receiver {
    pub base: String,
    pub state: Arc<Mutex<ReceiverState>>,
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, &'static str) {
    let mut state = state.lock();
    let path = uri.path().to_owned();
    let status = if state.failing.contains(&path) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.requests.push(Received {
        path,
        headers,
        body: body.to_vec(),
        status: status.as_u16(),
    });
    (
        status,
        if status.is_success() {
            "ok"
        } else {
            "receiver\nbroke"
        },
    )
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn fail(&self, path: &str, on: bool) {
        let mut state = self.state.lock();
        if on {
            state.failing.insert(path.into());
        } else {
            state.failing.remove(path);
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().requests.clone()
    }

    /// Requests to `path` answered 2xx, by alert id header.
    pub fn acknowledged(&self, path: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path && r.status == 200)
            .map(|r| r.headers["tollgate-alert-id"].to_str().unwrap().to_owned())
            .collect()
    }
}

/// Wait up to 20 s for `done`.
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
