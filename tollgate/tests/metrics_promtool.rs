//! Every service's `/metrics` passes `promtool check metrics` (Prometheus's
//! own linter: naming conventions, `_total` counters, base units, help
//! text, a parseable exposition).
//!
//! Two deployments of the real `tollgate` binary, each child process pointed
//! at an in-process mock upstream and sent a few requests (success,
//! stream, failover, refusals) so that every metric family has samples:
//! - `tollgate serve` (embedded: every role in one process, one /metrics);
//! - `tollgate proxy`, `tollgate ledger` and `tollgate analytics` as separate
//!   processes over a librdkafka mock cluster (created in this test process;
//!   its brokers listen on TCP), each scraped on its own listener — the
//!   three targets `dashboards/prometheus.yml` scrapes.
//!
//! Needs promtool (Debian's `prometheus` package; `./scripts/test` installs
//! it): without it this test FAILS, it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_mock_upstream::{MockUpstream, Rule};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const MASTER_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ADMIN_TOKEN: &str = "tga_metrics_promtool_test_admin_token_0123456789";
const GOOD_KEY: &str = "sk-promtool-good";
const FLAKY_KEY: &str = "sk-promtool-flaky";
const DEADLINE: Duration = Duration::from_secs(90);

/// Families each role must expose (with samples) after the traffic below.
const PROXY_FAMILIES: &[&str] = &[
    "tollgate_proxy_requests_total",
    "tollgate_proxy_errors_total",
    "tollgate_proxy_request_duration_seconds",
    "tollgate_proxy_time_to_first_token_seconds",
    "tollgate_proxy_upstream_attempts_total",
    "tollgate_proxy_failovers_total",
    "tollgate_proxy_count_tokens_requests_total",
    "tollgate_proxy_tokens_total",
    "tollgate_proxy_usage_events_emitted_total",
    "tollgate_proxy_usage_events_dropped_total",
    "tollgate_proxy_in_flight_requests",
    "tollgate_proxy_ledger_round_trip_seconds",
    "tollgate_proxy_budget_refusals_total",
];
const LEDGER_FAMILIES: &[&str] = &[
    "tollgate_ledger_entries_total",
    "tollgate_ledger_duplicate_events_total",
    "tollgate_ledger_unreadable_records_total",
    "tollgate_ledger_consumer_lag_seconds",
    "tollgate_ledger_balance_usd",
    "tollgate_ledger_credits_expiring_30d_usd",
    "tollgate_alerts_raised_total",
    "tollgate_webhook_deliveries_total",
    "tollgate_webhook_deliveries_failed_total",
];
const ANALYTICS_FAMILIES: &[&str] = &[
    "tollgate_analytics_rows_inserted_total",
    "tollgate_analytics_batch_rows",
    "tollgate_analytics_insert_duration_seconds",
    "tollgate_analytics_insert_failures_total",
    "tollgate_analytics_events_skipped_total",
    "tollgate_analytics_consumer_lag_seconds",
];
const EVENTLOG_FAMILIES: &[&str] = &[
    "tollgate_eventlog_appended_total",
    "tollgate_eventlog_spooled_records",
    "tollgate_eventlog_delivered_total",
    "tollgate_eventlog_delivery_failures_total",
    "tollgate_eventlog_dropped_total",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `tollgate` child process; stdout collected (the bootstrap key), killed
/// on drop.
struct Tollgate {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    what: String,
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    text
}

impl Tollgate {
    fn start(what: &str, role: &str, dir: &Path, env: &[(&str, String)]) -> Tollgate {
        let mut cmd = Command::new(BIN);
        cmd.arg(role).current_dir(dir);
        for (name, _) in std::env::vars() {
            if name.starts_with("TOLLGATE") || name.ends_with("_API_KEY") || name == "RUST_LOG" {
                cmd.env_remove(name);
            }
        }
        cmd.env("NO_PROXY", "127.0.0.1,localhost")
            .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE__LOG__LEVEL", "warn");
        for (name, value) in env {
            cmd.env(name, value);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Tollgate {
            child,
            stdout,
            stderr,
            what: what.to_owned(),
        }
    }

    fn output(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Wait for `/readyz` on `base`.
    async fn wait_ready(&mut self, base: &str) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.what, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {DEADLINE:?}:\n{}",
                self.what,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bootstrap access key the proxy prints once.
    async fn bootstrap_key(&self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let key = self
                .stdout
                .lock()
                .unwrap()
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("tgk_"))
                .map(str::to_owned);
            if let Some(key) = key {
                return key;
            }
            assert!(
                Instant::now() < deadline,
                "no bootstrap key:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings every process shares: the mock upstream as OpenAI with two
/// operator keys, the first of which fails once (a failover).
fn provider_env(mock: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("TOLLGATE__PROVIDERS__OPENAI__BASE_URL", mock.base_url()),
        (
            "TOLLGATE__PROVIDERS__OPENAI__API_KEYS",
            format!("[{FLAKY_KEY}, {GOOD_KEY}]"),
        ),
        // Ticks every second, so the ledger applies batches promptly.
        ("TOLLGATE__LEDGER__TICK_INTERVAL_MS", "1000".to_owned()),
    ]
}

/// A few requests so every proxy family has samples: plain, streamed, a
/// failover (the flaky key's 503), a refusal (bad key), an unknown model.
async fn traffic(gateway: &str, key: &str, mock: &MockUpstream) {
    mock.add_rule(Rule::for_key(FLAKY_KEY).fail(503).once());
    let client = reqwest::Client::new();
    let chat = |body: serde_json::Value, token: &str| {
        client
            .post(format!("{gateway}/v1/chat/completions"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let hello = json!({"role": "user", "content": "Hello"});
    // Split processes: the gateway refuses (402) until the ledger's balance
    // for the bootstrap grant reaches it.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = chat(json!({"model": "gpt-4o-mini", "messages": [hello]}), key)
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if status == 402 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "{body}");
        break;
    }
    let r = chat(
        json!({"model": "gpt-4o-mini", "messages": [hello], "stream": true}),
        key,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await.unwrap();
    let r = chat(
        json!({"model": "gpt-4o-mini", "messages": [hello]}),
        "tgk_nope",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = chat(json!({"model": "no-such-model", "messages": [hello]}), key)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(format!("{gateway}/v1/messages/count_tokens"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [hello]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A sample line of `family` (a name or `name{…}` followed by a value).
fn has_samples(text: &str, family: &str) -> bool {
    text.lines().any(|l| {
        !l.starts_with('#')
            && l.strip_prefix(family).is_some_and(|rest| {
                rest.starts_with(' ')
                    || rest.starts_with('{')
                    || rest.starts_with("_bucket")
                    || rest.starts_with("_count")
            })
    })
}

/// Scrape until every family in `families` has samples and `ready` holds.
async fn scrape_until(
    what: &str,
    base: &str,
    families: &[&[&str]],
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(base).await;
        let missing: Vec<&str> = families
            .iter()
            .flat_map(|f| f.iter().copied())
            .filter(|f| !has_samples(&text, f))
            .collect();
        if missing.is_empty() && ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: families without samples after {DEADLINE:?}: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `promtool check metrics` on the exposition; fails on any complaint.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required (apt-get install prometheus; ./scripts/test installs it): {e}"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !complaints.trim().is_empty() {
        println!("promtool on {what}:\n{complaints}");
    }
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics rejects {what}'s /metrics ({}):\n{complaints}\n--- exposition ---\n{text}",
        out.status
    );
}

fn counter(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(sample))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_metrics_pass_promtool() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = provider_env(&mock);
    env.extend([
        ("TOLLGATE__SERVER__LISTEN", format!("127.0.0.1:{port}")),
        (
            "TOLLGATE__ADMIN__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "TOLLGATE__STORAGE__PATH",
            dir.path().join("tollgate.db").display().to_string(),
        ),
    ]);
    let mut serve = Tollgate::start("tollgate serve", "serve", dir.path(), &env);
    serve.wait_ready(&base).await;
    let key = serve.bootstrap_key().await;
    traffic(&base, &key, &mock).await;
    let text = scrape_until(
        "serve",
        &base,
        &[PROXY_FAMILIES, LEDGER_FAMILIES, ANALYTICS_FAMILIES],
        |t| {
            counter(t, "tollgate_ledger_entries_total{kind=\"usage\"}") >= 1.0
                && counter(t, "tollgate_analytics_rows_inserted_total") >= 3.0
        },
    )
    .await;
    assert!(counter(&text, "tollgate_proxy_failovers_total") >= 1.0);
    promtool_check("tollgate serve", &text);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_ledger_and_analytics_metrics_pass_promtool() {
    let mock = MockUpstream::start().await.unwrap();
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    tollgate_kafka::create_mock_topics(&cluster, 2).unwrap();
    let brokers = cluster.bootstrap_servers();

    let mut processes = Vec::new();
    let mut bases = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, (role, listen_var)) in [
        ("proxy", "TOLLGATE__SERVER__LISTEN"),
        ("ledger", "TOLLGATE__LEDGER__LISTEN"),
        ("analytics", "TOLLGATE__ANALYTICS_API__LISTEN"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = dirs[i].path();
        let port = free_port();
        let mut env = provider_env(&mock);
        env.extend([
            ("TOLLGATE__EVENTLOG__BACKEND", "kafka".to_owned()),
            ("TOLLGATE__KAFKA__BROKERS", format!("[{brokers}]")),
            (
                "TOLLGATE__KAFKA__SPOOL_PATH",
                dir.join("spool.db").display().to_string(),
            ),
            ("TOLLGATE__KAFKA__CLIENT_ID", format!("promtool-{role}")),
            (
                "TOLLGATE__STORAGE__PATH",
                dir.join("tollgate.db").display().to_string(),
            ),
            (listen_var, format!("127.0.0.1:{port}")),
            (
                "TOLLGATE__ADMIN__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
        ]);
        let base = format!("http://127.0.0.1:{port}");
        let mut process = Tollgate::start(&format!("tollgate {role}"), role, dir, &env);
        process.wait_ready(&base).await;
        processes.push(process);
        bases.push(base);
    }
    let key = processes[0].bootstrap_key().await;
    traffic(&bases[0], &key, &mock).await;

    let proxy = scrape_until(
        "proxy",
        &bases[0],
        &[PROXY_FAMILIES, EVENTLOG_FAMILIES],
        |t| counter(t, "tollgate_eventlog_delivered_total") >= 1.0,
    )
    .await;
    let ledger = scrape_until(
        "ledger",
        &bases[1],
        &[LEDGER_FAMILIES, EVENTLOG_FAMILIES],
        |t| counter(t, "tollgate_ledger_entries_total{kind=\"usage\"}") >= 1.0,
    )
    .await;
    let analytics = scrape_until(
        "analytics",
        &bases[2],
        &[ANALYTICS_FAMILIES, EVENTLOG_FAMILIES],
        |t| counter(t, "tollgate_analytics_rows_inserted_total") >= 3.0,
    )
    .await;
    // Only the proxy builds a gateway; every process exports its node's
    // metrics (the edge's) beside its role's.
    for (what, text) in [("ledger", &ledger), ("analytics", &analytics)] {
        assert!(
            !text.contains("tollgate_proxy_"),
            "{what} exports gateway metrics:\n{text}"
        );
        assert!(
            has_samples(text, "tollgate_edge_open_connections"),
            "{what}: no edge metrics\n{text}"
        );
    }
    promtool_check("tollgate proxy", &proxy);
    promtool_check("tollgate ledger", &ledger);
    promtool_check("tollgate analytics", &analytics);
    drop(processes);
}
