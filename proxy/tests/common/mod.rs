//! Shared harness: a real gateway on port 0 over a temporary embedded store,
//! pointed at an in-process mock upstream that speaks both APIs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tollgate_control::{ControlPlane, MasterKey};
use tollgate_core::{AccessKeyId, AccountId};
use tollgate_core::{Catalog, Envelope, EventBody, UsageEvent};
use tollgate_eventlog::EventLog;
use tollgate_mock_upstream::MockUpstream;
use tollgate_proxy::config::ProviderSettings;
use tollgate_proxy::{Gateway, ProxyConfig};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

/// How often every instance's control plane tails the control topic.
pub const CONTROL_TAIL_EVERY: Duration = Duration::from_millis(100);

/// A fixed master key for tests (provider keys are encrypted with it).
pub const TEST_MASTER_KEY: &str =
    "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

pub const OPENAI_KEY: &str = "sk-operator-openai-1";
pub const ANTHROPIC_KEY: &str = "sk-ant-operator-1";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub token: String,
    pub account_id: AccountId,
    pub key_id: AccessKeyId,
    pub control: Arc<ControlPlane>,
    pub events: Arc<SqliteEventLog>,
    pub gateway: Arc<Gateway>,
    pub db_path: std::path::PathBuf,
    pub mock: MockUpstream,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Config with openai and anthropic pointed at the mock, one operator key each.
pub fn mock_config(mock: &MockUpstream) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    // Credit enforcement has its own tests; elsewhere requests are metered only.
    config.billing.enforce = false;
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
    let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    let catalog = Catalog::builtin().unwrap();
    let control = open_control(&events, &catalog, &config).await;
    // Like the binary: changes made by other instances apply here too.
    let _tail = control.spawn_tail(CONTROL_TAIL_EVERY);
    let account = control.create_account("test").await.unwrap();
    let (key, token) = control
        .create_access_key(&account.id, "test-key", None)
        .await
        .unwrap();
    let gateway = Gateway::new(
        config,
        catalog,
        control.clone(),
        events.clone() as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    // Served as `tollgate serve` does (the proxied routes skip the router);
    // `Instance` below serves through the router alone.
    let app = tollgate_proxy::router(gateway.clone());
    let served = gateway.clone();
    let options = serve_options(&gateway);
    let server = tokio::spawn(async move {
        let stopped = async {
            let _ = rx.await;
        };
        let _ = tollgate_proxy::serve_gateway(listener, app, served, stopped, options).await;
    });
    TestGateway {
        addr,
        token,
        account_id: account.id,
        key_id: key.id,
        control,
        events,
        gateway,
        db_path,
        mock,
        _dir: dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// As `tollgate serve` serves: the edge's metrics on the gateway's
/// registry, TLS when the config asks for it.
pub fn serve_options(gateway: &Gateway) -> tollgate_proxy::ServeOptions {
    let edge =
        tollgate_proxy::Edge::new(&gateway.config.server, &gateway.metrics.registry).unwrap();
    let mut options = tollgate_proxy::ServeOptions::new(edge);
    if let Some(tls) = &gateway.config.server.tls {
        options.tls = Some(tollgate_proxy::tls_acceptor(tls).unwrap());
    }
    options
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestGateway {
    /// Signal shutdown and wait (bounded) for the server to return.
    pub async fn stop_serving(&mut self, within: Duration) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => tokio::time::timeout(within, server).await.is_ok(),
            None => true,
        }
    }

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
            .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
            .await
            .unwrap();
        records
            .iter()
            .map(|r| serde_json::from_slice::<Envelope>(&r.payload).unwrap())
            .filter_map(|e| match e.body {
                EventBody::Usage(u) => Some(*u),
                _ => None,
            })
            .collect()
    }

    /// Wait (bounded, generously: a loaded machine is slow) until at least
    /// `n` usage events are stored.
    pub async fn wait_for_events(&self, n: usize) -> Vec<UsageEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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

// ---------------------------------------------------------------------------
// Extensions used by the feature test files.

/// Second operator keys for failover tests (install them with `set_keys`).
pub const OPENAI_KEY_2: &str = "sk-operator-openai-2";
pub const ANTHROPIC_KEY_2: &str = "sk-ant-operator-2";

/// Replace the operator keys of a built-in provider in `config`.
pub fn set_keys(config: &mut ProxyConfig, provider: &str, keys: &[&str]) {
    config
        .providers
        .get_mut(provider)
        .unwrap_or_else(|| panic!("provider {provider} is not in the mock config"))
        .api_keys = keys.iter().map(|k| (*k).to_owned()).collect();
}

/// A URL whose port nothing listens on (bound, then released): connecting fails.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

/// Build (but do not serve) a gateway for `config` over a fresh store:
/// for checking what `Gateway::new` accepts.
pub async fn try_gateway(config: ProxyConfig) -> Result<Arc<Gateway>, tollgate_proxy::InitError> {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("t.db"), Durability::Normal).unwrap();
    let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    let catalog = Catalog::builtin().unwrap();
    let control = open_control(&events, &catalog, &config).await;
    Gateway::new(
        config,
        catalog,
        control,
        events as Arc<dyn EventLog>,
        &prometheus::Registry::new(),
    )
}

/// The control plane over `events`, as the binary builds it.
pub async fn open_control(
    events: &Arc<SqliteEventLog>,
    catalog: &Catalog,
    config: &ProxyConfig,
) -> Arc<ControlPlane> {
    ControlPlane::open(
        events.clone() as Arc<dyn EventLog>,
        Arc::new(MasterKey::parse(TEST_MASTER_KEY).unwrap()),
        Gateway::provider_ids(catalog, config),
    )
    .await
    .unwrap()
}

/// A minimal OpenAI chat request.
pub fn chat(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// A minimal OpenAI streamed chat request.
pub fn chat_stream(model: &str, text: &str) -> serde_json::Value {
    let mut body = chat(model, text);
    body["stream"] = serde_json::Value::Bool(true);
    body
}

/// A minimal Anthropic messages request.
pub fn messages(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
    })
}

/// A minimal Anthropic streamed messages request.
pub fn messages_stream(model: &str, text: &str) -> serde_json::Value {
    let mut body = messages(model, text);
    body["stream"] = serde_json::Value::Bool(true);
    body
}

/// A response header as a string ("" when absent).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Status, headers and JSON body of a response.
pub async fn json_of(
    response: reqwest::Response,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {text}"));
    (status, headers, body)
}

/// The JSON data of every OpenAI SSE chunk (not `[DONE]`).
pub fn openai_chunks(body: &str) -> Vec<serde_json::Value> {
    sse_events(body)
        .into_iter()
        .filter(|(_, data)| data != "[DONE]")
        .map(|(_, data)| {
            serde_json::from_str(&data).unwrap_or_else(|e| panic!("chunk not JSON ({e}): {data}"))
        })
        .collect()
}

/// Concatenated `choices[0].delta.content` of an OpenAI stream.
pub fn openai_stream_text(body: &str) -> String {
    openai_chunks(body)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Concatenated `text_delta` text of an Anthropic stream.
pub fn anthropic_stream_text(body: &str) -> String {
    anthropic_events(body)
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .filter_map(|(_, data)| data["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// (event name, parsed data) of every Anthropic SSE event.
pub fn anthropic_events(body: &str) -> Vec<(String, serde_json::Value)> {
    sse_events(body)
        .into_iter()
        .map(|(name, data)| {
            let value: serde_json::Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event data not JSON ({e}): {data}"));
            (name.unwrap_or_default(), value)
        })
        .collect()
}

/// Number of recorded upstream requests that carried `key`.
pub fn requests_with_key(mock: &MockUpstream, key: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.api_key.as_deref() == Some(key))
        .count()
}

/// A fresh access key on the test account whose configuration (pass-through
/// allowed) has a new provider key for `provider` attached; returns its token.
pub async fn byok_token(gw: &TestGateway, provider: &str, secret: &str) -> String {
    let spec = tollgate_control::ConfigurationSpec {
        name: format!("byok-{provider}"),
        allow_passthrough_models: true,
        ..tollgate_control::ConfigurationSpec::default()
    };
    let config = gw
        .control
        .create_configuration(&gw.account_id, spec)
        .await
        .unwrap();
    let key = gw
        .control
        .add_provider_key(&gw.account_id, provider, "own", secret)
        .await
        .unwrap();
    gw.control
        .attach_provider_key(&config.id, &key.id)
        .await
        .unwrap();
    let (_, token) = gw
        .control
        .create_access_key(&gw.account_id, "byok", Some(config.id))
        .await
        .unwrap();
    token
}

/// Poll `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestGateway {
    /// POST a JSON body to `path` with the test key as a bearer token.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        Self::client()
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The one stored usage event with this id (waits for it, bounded).
    pub async fn event(&self, event_id: &str) -> UsageEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.usage_events().await;
            let mut matching: Vec<_> = events
                .into_iter()
                .filter(|e| e.event_id.to_string() == event_id)
                .collect();
            if matching.len() > 1 {
                panic!("{} events share id {event_id}", matching.len());
            }
            if let Some(event) = matching.pop() {
                return event;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no usage event with id {event_id}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The only stored usage event; fails if there is not exactly one.
    pub async fn only_event(&self) -> UsageEvent {
        let mut events = self.wait_for_events(1).await;
        assert_eq!(
            events.len(),
            1,
            "expected exactly one usage event: {events:#?}"
        );
        events.pop().unwrap()
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics_text(&self) -> String {
        Self::client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Sum of the samples of metric `name` whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

// ---------------------------------------------------------------------------
// More instances on one store (the tenancy tests).

/// A second gateway instance sharing the first one's SQLite file: its own
/// event log (writer and reader connections), control plane (replaying and
/// tailing the shared control topic) and gateway, on its own port.
pub struct Instance {
    pub addr: SocketAddr,
    pub control: Arc<ControlPlane>,
    pub events: Arc<SqliteEventLog>,
    pub gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Instance {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl TestGateway {
    /// Start another instance on the same store, with the same proxy config.
    pub async fn start_instance(&self) -> Instance {
        let db = Database::open(&self.db_path, Durability::Normal).unwrap();
        let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
        let catalog = Catalog::builtin().unwrap();
        let config = self.gateway.config.clone();
        let control = open_control(&events, &catalog, &config).await;
        let _tail = control.spawn_tail(CONTROL_TAIL_EVERY);
        let gateway = Gateway::new(
            config,
            catalog,
            control.clone(),
            events.clone() as Arc<dyn EventLog>,
            &prometheus::Registry::new(),
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
        Instance {
            addr,
            control,
            events,
            gateway,
            shutdown: Some(tx),
        }
    }
}

impl TestGateway {
    /// A control plane on the same store that does not tail: its view stays
    /// as of now until it writes itself (an instance whose tail has not run
    /// yet). Keep the event log alive as long as the plane.
    pub async fn stale_control(&self) -> (Arc<ControlPlane>, Arc<SqliteEventLog>) {
        let db = Database::open(&self.db_path, Durability::Normal).unwrap();
        let events = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
        let catalog = Catalog::builtin().unwrap();
        let control = open_control(&events, &catalog, &self.gateway.config).await;
        (control, events)
    }
}

/// POST an OpenAI chat request to `base` (e.g. `http://127.0.0.1:PORT`) with `token`.
pub async fn post_openai_to(
    base: &str,
    token: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    TestGateway::client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POST an Anthropic messages request to `base` with `token`, as the Anthropic SDK does.
pub async fn post_anthropic_to(
    base: &str,
    token: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    TestGateway::client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// An exact amount from its decimal text.
pub fn usd(amount: &str) -> tollgate_core::Usd {
    amount.parse().unwrap()
}

/// Declared prices: input, output, then optionally cached input.
pub fn declared(
    input: &str,
    output: &str,
    cached_input: Option<&str>,
) -> tollgate_proxy::config::DeclaredPrices {
    use tollgate_proxy::config::{DeclaredPrices, ExactUsd};
    DeclaredPrices {
        input: ExactUsd(usd(input)),
        output: ExactUsd(usd(output)),
        cached_input: cached_input.map(|p| ExactUsd(usd(p))),
        cache_write_5m: None,
        cache_write_1h: None,
    }
}

/// A new access key of the test account under a configuration allowing one
/// request per minute.
pub async fn one_a_minute_key(gw: &TestGateway) -> String {
    let spec = tollgate_control::ConfigurationSpec {
        name: "one-a-minute".into(),
        rate_limits: tollgate_core::control::RateLimits {
            requests_per_minute: Some(1),
            tokens_per_minute: None,
        },
        ..tollgate_control::ConfigurationSpec::default()
    };
    key_under(gw, spec).await
}

/// A new access key of the test account allowed only `models`.
pub async fn allowlisted_key(gw: &TestGateway, models: &[&str]) -> String {
    let spec = tollgate_control::ConfigurationSpec {
        name: "allowlisted".into(),
        allowed_models: Some(models.iter().map(|m| (*m).to_owned()).collect()),
        ..tollgate_control::ConfigurationSpec::default()
    };
    key_under(gw, spec).await
}

pub async fn key_under(gw: &TestGateway, spec: tollgate_control::ConfigurationSpec) -> String {
    let name = spec.name.clone();
    let config = gw
        .control
        .create_configuration(&gw.account_id, spec)
        .await
        .unwrap();
    let (_, token) = gw
        .control
        .create_access_key(&gw.account_id, &name, Some(config.id))
        .await
        .unwrap();
    token
}

/// Status, then the error in OpenAI's shape (`message` and `type` set).
pub async fn openai_refusal(response: reqwest::Response, status: u16) -> serde_json::Value {
    let (got, _, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    error.clone()
}

/// Settings under which `check_openai_limits` can reach every limit.
pub fn tight_limits(config: &mut ProxyConfig) {
    config.server.max_body_bytes = 2_048;
    config.routing.total_timeout_ms = 700;
    config.routing.attempt_timeout_ms = 5_000;
}

/// On an OpenAI-shaped route of a gateway started with `tight_limits`:
/// 413 over the body limit, 429 past a key's requests per minute, 403 for
/// a model outside the key's allowlist and 504 when the upstream never
/// answers in time — each in OpenAI's error shape. `request(model, input)`
/// makes the route's body; `allowed` is on the allowlist, `denied` is not.
pub async fn check_openai_limits(
    gw: &TestGateway,
    path: &str,
    request: impl Fn(&str, serde_json::Value) -> serde_json::Value,
    allowed: &str,
    denied: &str,
) {
    let x = || serde_json::json!("x");
    let big = serde_json::json!("word ".repeat(1_000));
    let error = openai_refusal(gw.post_json(path, &request(allowed, big)).await, 413).await;
    assert_eq!(error["code"], "request_too_large");

    let limited = one_a_minute_key(gw).await;
    let post_limited = || {
        TestGateway::client()
            .post(gw.url(path))
            .bearer_auth(&limited)
            .json(&request(allowed, x()))
            .send()
    };
    assert_eq!(post_limited().await.unwrap().status(), 200);
    let error = openai_refusal(post_limited().await.unwrap(), 429).await;
    assert_eq!(error["code"], "rate_limit_exceeded");

    let allowlisted = allowlisted_key(gw, &[allowed]).await;
    let response = TestGateway::client()
        .post(gw.url(path))
        .bearer_auth(&allowlisted)
        .json(&request(denied, x()))
        .send()
        .await
        .unwrap();
    let error = openai_refusal(response, 403).await;
    assert_eq!(error["code"], "model_not_allowed");

    gw.mock
        .add_rule(tollgate_mock_upstream::Rule::any().delay(Duration::from_secs(60)));
    let error = openai_refusal(gw.post_json(path, &request(allowed, x())).await, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
}

/// On an OpenAI-shaped route of a gateway started with
/// `server.max_requests = 1`: while a request for `slow` (held 1 s by the
/// mock) is in flight, another (`fast`) gets 503 `overloaded` with
/// `retry-after: 1` in OpenAI's shape, and the held one still succeeds.
pub async fn check_openai_edge_cap(
    gw: &TestGateway,
    path: &str,
    request: impl Fn(&str, serde_json::Value) -> serde_json::Value,
    slow: &str,
    fast: &str,
) {
    gw.mock.add_rule(
        tollgate_mock_upstream::Rule::for_model(slow).delay(Duration::from_millis(1_000)),
    );
    let held = TestGateway::client()
        .post(gw.url(path))
        .bearer_auth(&gw.token)
        .json(&request(slow, serde_json::json!("slow")))
        .send();
    let held = tokio::spawn(held);
    // The held request is in flight once the mock has it.
    assert!(eventually(Duration::from_secs(5), || !gw.mock.requests().is_empty()).await);
    let response = gw
        .post_json(path, &request(fast, serde_json::json!("x")))
        .await;
    assert_eq!(header(&response, "retry-after"), "1");
    assert_eq!(openai_refusal(response, 503).await["code"], "overloaded");
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
}
