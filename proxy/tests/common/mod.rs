//! Shared harness: a real gateway on port 0 over a temporary embedded store,
//! pointed at an in-process mock upstream that speaks both APIs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tollgate_core::{Catalog, Envelope, EventBody, EventLog, UsageEvent};
use tollgate_mock_upstream::MockUpstream;
use tollgate_proxy::config::ProviderSettings;
use tollgate_proxy::{Gateway, ProxyConfig};
use tollgate_store::{Database, Durability, KeyStore, SqliteEventLog, SqliteEventLogOptions};

pub const OPENAI_KEY: &str = "sk-operator-openai-1";
pub const ANTHROPIC_KEY: &str = "sk-ant-operator-1";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub token: String,
    pub keys: KeyStore,
    pub events: Arc<SqliteEventLog>,
    pub gateway: Arc<Gateway>,
    pub db_path: std::path::PathBuf,
    pub mock: MockUpstream,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

/// Config with openai and anthropic pointed at the mock, one operator key each.
pub fn mock_config(mock: &MockUpstream) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    config.routing.attempt_timeout_ms = 2_000;
    config.routing.total_timeout_ms = 10_000;
    config.providers.insert(
        "openai".into(),
        ProviderSettings {
            base_url: Some(mock.base_url()),
            api_keys: vec![OPENAI_KEY.into()],
        },
    );
    config.providers.insert(
        "anthropic".into(),
        ProviderSettings {
            base_url: Some(mock.base_url()),
            api_keys: vec![ANTHROPIC_KEY.into()],
        },
    );
    config
}

pub async fn start() -> TestGateway {
    start_with(|_| {}).await
}

/// Start a gateway whose config is the mock config adjusted by `adjust`.
pub async fn start_with(adjust: impl FnOnce(&mut ProxyConfig)) -> TestGateway {
    let mock = MockUpstream::start().await.expect("mock upstream");
    let mut config = mock_config(&mock);
    adjust(&mut config);
    start_on(mock, config).await
}

pub async fn start_on(mock: MockUpstream, config: ProxyConfig) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("tollgate.db");
    let db = Database::open(&db_path, Durability::Normal).unwrap();
    let keys = KeyStore::open(&db).unwrap();
    let account = keys.create_account("test").unwrap();
    let created = keys.create_access_key(&account.id, "test-key").unwrap();
    let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    let gateway = Gateway::new(
        config,
        Catalog::builtin().unwrap(),
        keys.clone(),
        events.clone() as Arc<dyn EventLog>,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let app = tollgate_proxy::router(gateway.clone());
    tokio::spawn(async move {
        let _ = tollgate_proxy::serve(listener, app, async {
            let _ = rx.await;
        })
        .await;
    });
    TestGateway {
        addr,
        token: created.token,
        keys,
        events,
        gateway,
        db_path,
        mock,
        _dir: dir,
        shutdown: Some(tx),
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().build().unwrap()
    }

    /// POST JSON to an OpenAI-style path with the test key.
    pub async fn post_openai(&self, body: serde_json::Value) -> reqwest::Response {
        Self::client()
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// POST JSON to `/v1/messages` the way the Anthropic SDK does.
    pub async fn post_anthropic(&self, body: serde_json::Value) -> reqwest::Response {
        Self::client()
            .post(self.url("/v1/messages"))
            .header("x-api-key", &self.token)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// All usage events stored so far (waits for the log to be durable).
    pub async fn usage_events(&self) -> Vec<UsageEvent> {
        self.events.flush().await.unwrap();
        let records = self
            .events
            .read(tollgate_core::eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
            .await
            .unwrap();
        records
            .iter()
            .map(|r| serde_json::from_slice::<Envelope>(&r.payload).unwrap())
            .map(|e| match e.body {
                EventBody::Usage(u) => *u,
            })
            .collect()
    }

    /// Wait (bounded) until at least `n` usage events are stored.
    pub async fn wait_for_events(&self, n: usize) -> Vec<UsageEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.usage_events().await;
            if events.len() >= n || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Parse an SSE body into (event name, data) pairs.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.trim_start().to_owned());
            }
        }
        if !data.is_empty() {
            out.push((name, data.join("\n")));
        }
    }
    out
}
