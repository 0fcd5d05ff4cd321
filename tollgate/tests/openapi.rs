//! The admin, credits and usage APIs' OpenAPI documents against the real
//! binary (`tollgate serve`, every role in one process):
//! - each listener serves exactly the (method, path) pairs its document
//!   names (see tests/openapi/route_coverage.rs);
//! - axum's own refusals (wrong content type, malformed JSON, bad query,
//!   bad path bytes) come back in each API's JSON error shape;
//! - schemathesis (tests/python/requirements.txt) runs each served document
//!   against the process with a bounded number of examples: no 5xx, every
//!   status, content type and body as documented.
//!
//! Needs Python 3 with schemathesis installed; without it this test FAILS,
//! it never skips. `TOLLGATE_TEST_PYTHON` names another interpreter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/openapi/route_coverage.rs"]
mod route_coverage;

use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const ADMIN_TOKEN: &str = "openapi-test-admin-token-5d1c";
const START_DEADLINE: Duration = Duration::from_secs(90);
/// Per API: examples per operation and phase (a run takes seconds), and
/// the deadline after which the test kills schemathesis and fails.
const MAX_EXAMPLES: u32 = 25;
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(120);

/// `tollgate serve` on free ports: the proxy listener (credits and usage
/// APIs) and the admin listener.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
    admin: String,
    /// The bootstrap access key.
    token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [storage]\npath = \"{db}\"\n\
             [admin]\nenabled = true\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [bootstrap]\naccount_name = \"openapi\"\n\
             [log]\nlevel = \"warn\"\n",
            db = dir.path().join("data/tollgate.db").display()
        );
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(BIN);
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("TOLLGATE_") || name.ends_with("_API_KEY") || name == "RUST_LOG" {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_PROXY", "127.0.0.1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the tollgate binary");
        let mut stdout = child.stdout.take().unwrap();
        let (found, token) = std::sync::mpsc::channel();
        // Reads stdout to its end: a closed pipe would stop the server.
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            let mut sent = false;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if !sent {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if let Some(token) = text
                        .split_whitespace()
                        .find(|w| w.starts_with("tgk_") && w.len() > 20)
                    {
                        sent = found.send(token.to_owned()).is_ok();
                    }
                }
            }
        });
        let mut server = Server {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            token: String::new(),
        };
        server.token = token.recv_timeout(START_DEADLINE).unwrap_or_default();
        assert!(
            server.token.starts_with("tgk_"),
            "no bootstrap access key printed"
        );
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let proxy_up = client.get(format!("{}/readyz", server.base)).send().await;
            let admin_up = client
                .get(format!("{}/admin/v1/openapi.json", server.admin))
                .send()
                .await;
            if proxy_up.is_ok_and(|r| r.status().is_success())
                && admin_up.is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "tollgate exited before it was ready"
            );
            assert!(
                Instant::now() < deadline,
                "tollgate not ready in {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn document(&self, url: &str) -> Value {
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.json().await.unwrap()
    }

    async fn account_id(&self) -> String {
        let accounts: Value = reqwest::Client::new()
            .get(format!("{}/admin/v1/accounts", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        accounts["data"][0]["id"].as_str().unwrap().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn every_listener_serves_exactly_the_routes_its_document_names() {
    let server = Server::start().await;
    let admin_doc = server
        .document(&format!("{}/admin/v1/openapi.json", server.admin))
        .await;
    let admin_sources = [
        include_str!("../../control/src/admin.rs"),
        include_str!("../../control/src/admin/plans.rs"),
        include_str!("../../control/src/admin/budgets.rs"),
        include_str!("../../control/src/admin/webhooks.rs"),
        include_str!("../../ledger/src/api.rs"),
        include_str!("../../ledger/src/webhooks.rs"),
        include_str!("../../proxy/src/routes.rs"),
    ];
    // 43 control-plane operations, 7 credits, 2 webhook deliveries, 1 model-prices.
    route_coverage::assert_routes_documented(
        &server.admin,
        &admin_doc,
        &admin_sources,
        ADMIN_TOKEN,
        53,
    )
    .await;
    let credits_doc = server
        .document(&format!("{}/v1/credits/openapi.json", server.base))
        .await;
    route_coverage::assert_routes_documented(
        &server.base,
        &credits_doc,
        &[include_str!("../../ledger/src/api.rs")],
        &server.token,
        6,
    )
    .await;
    let usage_doc = server
        .document(&format!("{}/v1/usage/openapi.json", server.base))
        .await;
    route_coverage::assert_routes_documented(
        &server.base,
        &usage_doc,
        &[include_str!("../../analytics/src/api.rs")],
        &server.token,
        2,
    )
    .await;
}

/// Sends `body` with `content_type`; asserts a 400 in the `{"error":{"type",
/// "message"}}` shape (every API's), and returns the error object.
async fn assert_json_400(
    method: &str,
    url: &str,
    token: &str,
    content_type: Option<&str>,
    body: &'static [u8],
) -> Value {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(token)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    assert_eq!(status, 400, "{method} {url}: {text}");
    assert!(
        header.starts_with("application/json"),
        "{method} {url}: {header} {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["error"]["type"], "invalid_request",
        "{method} {url}: {text}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{method} {url}: {text}"
    );
    body["error"].clone()
}

#[tokio::test]
async fn axum_rejections_come_back_in_each_apis_json_error_shape() {
    let server = Server::start().await;
    let account = server.account_id().await;
    let (admin, base) = (&server.admin, &server.base);
    let json = Some("application/json");
    // Admin API (control plane): wrong content type, malformed JSON, bad path bytes.
    let accounts = format!("{admin}/admin/v1/accounts");
    assert_json_400(
        "POST",
        &accounts,
        ADMIN_TOKEN,
        Some("text/plain"),
        b"{\"name\":\"x\"}",
    )
    .await;
    assert_json_400("POST", &accounts, ADMIN_TOKEN, None, b"{\"name\":\"x\"}").await;
    assert_json_400("POST", &accounts, ADMIN_TOKEN, json, b"{\"name\":").await;
    assert_json_400("POST", &accounts, ADMIN_TOKEN, json, b"{\"name\":7}").await;
    assert_json_400("GET", &format!("{accounts}/%FF%FE"), ADMIN_TOKEN, None, b"").await;
    // Admin API (ledger's routes): body, path and query.
    let purchases = format!("{admin}/admin/v1/accounts/{account}/purchases");
    let error = assert_json_400("POST", &purchases, ADMIN_TOKEN, Some("text/plain"), b"{}").await;
    assert_eq!(error["param"], "body");
    assert_json_400("POST", &purchases, ADMIN_TOKEN, json, b"[1,").await;
    let bad_path = format!("{admin}/admin/v1/accounts/%FF/credits/balance");
    assert_eq!(
        assert_json_400("GET", &bad_path, ADMIN_TOKEN, None, b"").await["param"],
        "path"
    );
    let entries = format!("{admin}/admin/v1/accounts/{account}/credits/entries?limit=1&limit=2");
    assert_eq!(
        assert_json_400("GET", &entries, ADMIN_TOKEN, None, b"").await["param"],
        "query"
    );
    // Credits API: a query axum cannot parse.
    let entries = format!("{base}/v1/credits/entries?kind=usage&kind=purchase");
    assert_json_400("GET", &entries, &server.token, None, b"").await;
    let expiring = format!("{base}/v1/credits/expiring?days=1&days=2");
    assert_json_400("GET", &expiring, &server.token, None, b"").await;
    // Usage API: bytes that are no query at all.
    let usage = format!("{base}/v1/usage?%FF%FE=%00&&=");
    assert_json_400("GET", &usage, &server.token, None, b"").await;
}

fn python() -> String {
    std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs schemathesis on the document at `schema_url` against `base`; fails
/// the test on any failure it reports, on a missing schemathesis, or past
/// the deadline.
fn schemathesis(api: &str, schema_url: &str, base: &str, token: &str, dir: &Path) {
    let started = Instant::now();
    let mut child = Command::new(python())
        .args(["-m", "schemathesis.cli", "run", schema_url, "--url", base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", "20261207", "--no-color"])
        .args([
            "--report-dir",
            &dir.join("schemathesis").display().to_string(),
        ])
        .env("NO_PROXY", "127.0.0.1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` for schemathesis ({e}); install it with \
                 `python3 -m pip install -r tests/python/requirements.txt`",
                python()
            )
        });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let mut errors = String::new();
        let _ = err.read_to_string(&mut errors);
        format!("{text}\n{errors}")
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SCHEMATHESIS_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis on the {api} API ran past {SCHEMATHESIS_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = reader.join().unwrap();
    eprintln!(
        "schemathesis, {api} API: {status} in {:.1?}\n{output}",
        started.elapsed()
    );
    assert!(
        output.contains("Schemathesis v"),
        "schemathesis did not run (install it with \
         `python3 -m pip install -r tests/python/requirements.txt`):\n{output}"
    );
    assert!(
        status.success(),
        "schemathesis found failures in the {api} API:\n{output}"
    );
    assert!(
        output.contains("passed") && !output.contains(" 0 generated"),
        "schemathesis generated no test cases for the {api} API:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_in_the_admin_api() {
    let server = Server::start().await;
    let url = format!("{}/admin/v1/openapi.json", server.admin);
    let (admin, dir) = (server.admin.clone(), server.dir.path().to_owned());
    tokio::task::spawn_blocking(move || schemathesis("admin", &url, &admin, ADMIN_TOKEN, &dir))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_in_the_credits_api() {
    let server = Server::start().await;
    let url = format!("{}/v1/credits/openapi.json", server.base);
    let (base, token, dir) = (
        server.base.clone(),
        server.token.clone(),
        server.dir.path().to_owned(),
    );
    tokio::task::spawn_blocking(move || schemathesis("credits", &url, &base, &token, &dir))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_in_the_usage_api() {
    let server = Server::start().await;
    let url = format!("{}/v1/usage/openapi.json", server.base);
    let (base, token, dir) = (
        server.base.clone(),
        server.token.clone(),
        server.dir.path().to_owned(),
    );
    tokio::task::spawn_blocking(move || schemathesis("usage", &url, &base, &token, &dir))
        .await
        .unwrap();
}
