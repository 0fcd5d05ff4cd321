//! Spend controls end to end through the real binary (`tollgate serve`,
//! embedded log, an in-process mock upstream and webhook receiver), with
//! exact amounts: a key budget of $1.00 a day on an account holding $5.00.
//!
//! A config price override makes every gpt-4o input token cost $0.10, so a
//! three-word prompt costs $0.30 plus the processing fee:
//! - after three requests the key has spent 3c ≥ $0.80: one
//!   `budget_threshold` alert, delivered signed to the webhook;
//! - the fourth is still admitted (what is left is > 0) and takes spend to
//!   4c ≥ $1.00: one `budget_exceeded` alert;
//! - the fifth is refused with 402 `budget_exceeded` in OpenAI's shape, and
//!   on `/v1/messages` in Anthropic's, naming the budget, the spend and the
//!   reset at the next 00:00 UTC; another key of the account is admitted;
//! - `/v1/credits/budgets` shows exactly 4c spent; a restart raises and
//!   delivers nothing again; `tollgate audit` agrees (spend included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_core::budget::{alert_id, AlertKind};
use tollgate_core::Usd;
use tollgate_mock_upstream::MockUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const ADMIN_TOKEN: &str = "tga_spend_controls_suite_7b3e91";
const OPERATOR_KEY: &str = "sk-spend-controls-operator";
/// Generous: a loaded 2-core machine must pass.
const DEADLINE: Duration = Duration::from_secs(90);

fn usd(text: &str) -> Usd {
    text.parse().unwrap()
}

fn usd_of(value: &Value) -> Usd {
    usd(value
        .as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {value}")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// The webhook receiver
// ---------------------------------------------------------------------------

/// One delivery as received: alert id header, signature header, body.
#[derive(Clone, Debug)]
struct Delivery {
    alert_id: String,
    signature: String,
    body: Vec<u8>,
}

async fn receive(
    State(got): State<Arc<Mutex<Vec<Delivery>>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    got.lock().unwrap().push(Delivery {
        alert_id: header("tollgate-alert-id"),
        signature: header("tollgate-signature"),
        body: body.to_vec(),
    });
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// The receiver's check, written from the documented recipe:
/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
fn signature_is_valid(secret: &str, delivery: &Delivery) -> bool {
    let mut timestamp = None;
    let mut v1 = None;
    for part in delivery.signature.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = Some(t.to_owned()),
            Some(("v1", sig)) => v1 = Some(sig.to_owned()),
            _ => {}
        }
    }
    let (Some(timestamp), Some(v1)) = (timestamp, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&delivery.body);
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&expected).is_ok()
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

struct Server {
    _dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    admin_port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

fn clean_command(config: &Path) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("TOLLGATE") || name.ends_with("_API_KEY") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.arg("--config").arg(config);
    command
}

impl Server {
    async fn start(mock: &MockUpstream) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.path().join("tollgate.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
                 [providers.openai]\nbase_url = \"{mock}\"\napi_keys = [\"{OPERATOR_KEY}\"]\n\
                 [storage]\npath = \"{db}\"\n\
                 [price_overrides.\"openai:gpt-4o\"]\ninput = \"100000\"\noutput = \"0\"\n\
                 [alerts]\nwebhook_retry_initial_ms = 100\nwebhook_retry_max_ms = 500\n\
                 [log]\nlevel = \"info\"\n",
                mock = mock.base_url(),
                db = dir.path().join("data/tollgate.db").display(),
            ),
        )
        .unwrap();
        let mut server = Server {
            log: dir.path().join("server.log"),
            _dir: dir,
            config,
            port,
            admin_port,
            child: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        server.spawn().await;
        server
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = clean_command(&self.config)
            .arg("serve")
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tollgate serve exited with {status}:\n{}", self.log_tail());
            }
            let ready = self
                .http
                .get(format!("http://127.0.0.1:{}/readyz", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never ready:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "tollgate did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit {status}:\n{}", self.log_tail());
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let mut request = self.http.request(method, url).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn get(&self, token: &str, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = self.http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// POST a client request: (status, cost-total header if any, body).
    async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Option<Usd>, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let cost = response
            .headers()
            .get("x-tollgate-cost-total")
            .map(|v| usd(v.to_str().unwrap()));
        (status, cost, response.json().await.unwrap())
    }

    fn audit(&self) -> String {
        let output = clean_command(&self.config).arg("audit").output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "audit failed:\n{text}");
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one budget `/v1/credits/budgets` shows `token`, once its spend is `spent`.
async fn budget_once_spent(server: &Server, token: &str, spent: Usd) -> Value {
    eventually(
        &format!("the budget's spend to reach {spent}"),
        async || {
            let status = server.get(token, "/v1/credits/budgets").await;
            let budget = status["budgets"].get(0)?.clone();
            (usd_of(&budget["spent"]) == spent).then_some(budget)
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// The worked example
// ---------------------------------------------------------------------------

/// An account with $5.00, two keys, a webhook and a $1.00/day budget on the
/// first key: (account id, key id, token, other token, budget, secret).
async fn set_up(
    server: &Server,
    hook_url: &str,
) -> (String, String, String, String, Value, String) {
    use reqwest::Method;
    let account = server
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "spend"})),
        )
        .await;
    let account_id = account["id"].as_str().unwrap().to_owned();
    let keys = format!("/admin/v1/accounts/{account_id}/access-keys");
    let key = server
        .admin(Method::POST, &keys, Some(json!({"name": "budgeted"})))
        .await;
    let other = server
        .admin(Method::POST, &keys, Some(json!({"name": "other"})))
        .await;
    let purchase = json!({"amount": "5.00", "idempotency_key": "spend-1"});
    let purchases = format!("/admin/v1/accounts/{account_id}/purchases");
    server.admin(Method::POST, &purchases, Some(purchase)).await;
    let webhook = server
        .admin(
            Method::POST,
            "/admin/v1/webhooks",
            Some(json!({"url": hook_url, "kinds": ["budget_threshold", "budget_exceeded"]})),
        )
        .await;
    let key_id = key["access_key"]["id"].as_str().unwrap().to_owned();
    let budget = server
        .admin(
            Method::POST,
            "/admin/v1/budgets",
            Some(json!({
                "account_id": account_id, "access_key_id": key_id, "name": "daily",
                "amount": "1.00", "period": "day",
            })),
        )
        .await;
    assert_eq!(budget["soft_threshold_percent"], 80, "{budget}");
    assert_eq!(budget["refuse"], true, "{budget}");
    (
        account_id,
        key_id,
        key["token"].as_str().unwrap().to_owned(),
        other["token"].as_str().unwrap().to_owned(),
        budget,
        webhook["secret"].as_str().unwrap().to_owned(),
    )
}

/// The 402 both APIs answer for the spent budget, checked member by member.
fn assert_budget_refusal(error: &Value, budget_id: &str, spent: Usd, resets_at: &str) {
    assert_eq!(error["budget_id"], budget_id, "{error}");
    assert_eq!(usd_of(&error["amount"]), usd("1.00"), "{error}");
    assert_eq!(usd_of(&error["spent"]), spent, "{error}");
    assert_eq!(error["resets_at"], resets_at, "{error}");
    assert_eq!(error["period"], "day", "{error}");
    let message = error["message"].as_str().unwrap();
    for part in [budget_id, "daily", &spent.to_string(), resets_at] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_key_budget_alerts_at_80_percent_refuses_at_its_amount_and_never_alerts_twice() {
    let mock = MockUpstream::start().await.unwrap();
    let (hook_url, deliveries) = start_receiver().await;
    let mut server = Server::start(&mock).await;
    let (account_id, _key_id, token, other_token, budget, secret) =
        set_up(&server, &hook_url).await;
    let budget_id = budget["id"].as_str().unwrap();
    eventually("the purchase in the balance", async || {
        let balance = server.get(&token, "/v1/credits/balance").await;
        (usd_of(&balance["balance"]) == usd("5.00")).then_some(())
    })
    .await;
    let listed = budget_once_spent(&server, &token, Usd::ZERO).await;
    let today = chrono::Utc::now().date_naive();
    let period_start = format!("{today}T00:00:00Z");
    let resets_at = format!("{}T00:00:00Z", today.succ_opt().unwrap());
    assert_eq!(listed["period_start"], period_start.as_str(), "{listed}");
    assert_eq!(listed["resets_at"], resets_at.as_str(), "{listed}");
    assert_eq!(listed["state"], "ok", "{listed}");

    // Three words in, the mock's reply out: 3 × $0.10 + (3 + out) × $0.05/M.
    let chat =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "one two three"}]});
    let mut costs = Vec::new();
    // The gateway learns the purchase from the ledger's balance update: until
    // then the first request is refused for credit (which costs nothing).
    let first_answer = eventually("the gateway to see the purchase", async || {
        let (status, cost, body) = server
            .post(&token, "/v1/chat/completions", chat.clone())
            .await;
        if status == 402 && body["error"]["code"] == "insufficient_credits" {
            return None;
        }
        Some((status, cost, body))
    })
    .await;
    let mut first = Some(first_answer);
    for n in 1..=4 {
        let (status, cost, body) = match first.take() {
            Some(answer) => answer,
            None => {
                server
                    .post(&token, "/v1/chat/completions", chat.clone())
                    .await
            }
        };
        assert_eq!(status, 200, "request {n}: {body}");
        let output = body["usage"]["completion_tokens"].as_u64().unwrap();
        let fee = Usd::new(rust_decimal::Decimal::from(3 + output) * usd("0.00000005").amount());
        let cost = cost.unwrap();
        assert_eq!(cost, usd("0.3") + fee, "request {n}");
        costs.push(cost);
        let spent: Usd = costs.iter().copied().sum();
        let shown = budget_once_spent(&server, &token, spent).await;
        let state = match n {
            1 | 2 => "ok",
            3 => "threshold",
            _ => "exceeded",
        };
        assert_eq!(shown["state"], state, "after request {n}: {shown}");
        assert_eq!(usd_of(&shown["remaining"]), usd("1.00") - spent);
    }
    let spent: Usd = costs.iter().copied().sum();
    assert!(costs[..3].iter().copied().sum::<Usd>() >= usd("0.80"));
    assert!(costs[..2].iter().copied().sum::<Usd>() < usd("0.80"));
    assert!(spent >= usd("1.00") && spent - costs[3] < usd("1.00"));

    // The fifth: refused in each API's own shape; the other key is not.
    let (status, _, body) = server
        .post(&token, "/v1/chat/completions", chat.clone())
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "budget_exceeded", "{body}");
    assert_budget_refusal(&body["error"], budget_id, spent, &resets_at);
    let messages = json!({"model": "gpt-4o", "max_tokens": 16,
        "messages": [{"role": "user", "content": "one two three"}]});
    let (status, _, body) = server.post(&token, "/v1/messages", messages).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_budget_refusal(&body["error"], budget_id, spent, &resets_at);
    let (status, _, body) = server
        .post(&other_token, "/v1/chat/completions", chat)
        .await;
    assert_eq!(status, 200, "the other key has no budget: {body}");
    let other_cost = usd("0.3")
        + Usd::new(
            rust_decimal::Decimal::from(3 + body["usage"]["completion_tokens"].as_u64().unwrap())
                * usd("0.00000005").amount(),
        );

    // One signed delivery per alert, with the spend of the update that crossed.
    let expected = [
        (
            AlertKind::BudgetThreshold,
            costs[..3].iter().copied().sum::<Usd>(),
        ),
        (AlertKind::BudgetExceeded, spent),
    ];
    let got = eventually("both alerts delivered", async || {
        let got = deliveries.lock().unwrap().clone();
        (got.len() >= 2).then_some(got)
    })
    .await;
    for (kind, spent_then) in expected {
        let id = alert_id(kind, budget_id, &period_start);
        let mine: Vec<&Delivery> = got.iter().filter(|d| d.alert_id == id).collect();
        assert_eq!(mine.len(), 1, "{kind:?} delivered once: {got:?}");
        assert!(signature_is_valid(&secret, mine[0]), "{kind:?} signature");
        let alert: Value = serde_json::from_slice(&mine[0].body).unwrap();
        assert_eq!(alert["alert_id"], id.as_str(), "{alert}");
        assert_eq!(alert["kind"], kind.as_str(), "{alert}");
        assert_eq!(alert["account_id"], account_id.as_str(), "{alert}");
        assert_eq!(usd_of(&alert["spent"]), spent_then, "{alert}");
        assert_eq!(usd_of(&alert["amount"]), usd("1.00"), "{alert}");
        assert_eq!(alert["period_start"], period_start.as_str(), "{alert}");
    }
    assert_eq!(got.len(), 2, "nothing else delivered: {got:?}");

    // The balance moved by exactly what both keys spent.
    let balance = eventually("the balance", async || {
        let balance = server.get(&token, "/v1/credits/balance").await;
        let left = usd_of(&balance["balance"]);
        (left == usd("5.00") - spent - other_cost).then_some(left)
    })
    .await;
    assert_eq!(balance, usd("5.00") - spent - other_cost);

    // A restart evaluates everything again: no alert is raised or sent twice.
    server.stop().await;
    server.spawn().await;
    let shown = budget_once_spent(&server, &token, spent).await;
    assert_eq!(shown["state"], "exceeded");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(deliveries.lock().unwrap().len(), 2, "no second delivery");
    let (status, _, _) = server
        .post(
            &token,
            "/v1/chat/completions",
            json!({"model": "gpt-4o",
            "messages": [{"role": "user", "content": "one two three"}]}),
        )
        .await;
    assert_eq!(status, 402, "still refused after the restart");
    server.stop().await;
    let audit = server.audit();
    assert!(audit.contains("audit OK"), "{audit}");
}
