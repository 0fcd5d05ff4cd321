#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The split-process deployment on Kafka, end to end: real `tollgate proxy`
//! and `tollgate ledger` child processes, each with its own config file,
//! storage directory and spool, all pointed at one librdkafka mock cluster
//! created in this test process (its brokers listen on TCP, so the children
//! reach them) and at an in-process mock upstream. Every process gets the
//! same master key and admin token through the environment.
//!
//! The mock cluster does not answer CreateTopics: the topics are created
//! through the mock and `kafka.create_topics` stays off.
//!
//! librdkafka's mock accepts broker connections on descriptors without
//! close-on-exec, so every spawn first marks this process's descriptors
//! close-on-exec (`no_inherited_fds`): otherwise a child started later would
//! hold the broker side of earlier connections open and `broker_down` could
//! not cut them.
//!
//! Deadlines are generous (a loaded 2-core box must pass); nothing asserts
//! on speed. Measurements (propagation delays, the outage, the SIGKILL
//! window) are printed: run with `--nocapture` to see them, and set
//! `KAFKA_SPLIT_LOGS=1` to also print every child's log when it stops.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_core::{Envelope, EventBody};
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;
use tollgate_kafka::{KafkaConfig, KafkaEventLog};
use tollgate_mock_upstream::MockUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

type Mock = MockCluster<'static, DefaultProducerContext>;

const BROKERS: i32 = 3;
const PARTITIONS: i32 = 4;
/// The same for every process: provider keys encrypted by one are readable by all.
const MASTER_KEY: &str = "5c1f0e2d3b4a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ADMIN_TOKEN: &str = "tga_kafka_split_test_admin_token_0123456789";
const OPERATOR_KEY: &str = "sk-kafka-split-operator";
const MODEL: &str = "gpt-4o-mini";
/// A dearer model, to use up a tiny balance in a few requests.
const TINY_MODEL: &str = "gpt-4o";

const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(60);
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

/// The heavy tests share two CPU cores at most: run them one at a time so
/// one test's load does not distort another's measurements.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The mock cluster
// ---------------------------------------------------------------------------

fn cluster() -> Mock {
    let mock = MockCluster::new(BROKERS).unwrap();
    tollgate_kafka::create_mock_topics(&mock, PARTITIONS).unwrap();
    mock
}

fn brokers(mock: &Mock) -> Vec<String> {
    mock.bootstrap_servers()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Reads the account-events topic from the test process (its own spool and
/// client id), accumulating what it has read so far.
struct EventReader {
    log: KafkaEventLog,
    next: BTreeMap<u32, u64>,
    /// Usage events in topic order per partition: (event id, account id).
    usage: Vec<(String, String)>,
}

impl EventReader {
    async fn connect(mock: &Mock, dir: &Path) -> EventReader {
        let config = KafkaConfig {
            brokers: brokers(mock),
            spool_path: dir.join("reader-spool.db"),
            replication_factor: 1,
            startup_timeout_ms: 30_000,
            delivery_timeout_ms: 60_000,
            client_id: "kafka-split-test-reader".into(),
            ..KafkaConfig::default()
        };
        let log = KafkaEventLog::connect(config).await.unwrap();
        EventReader {
            log,
            next: BTreeMap::new(),
            usage: Vec::new(),
        }
    }

    /// Read every partition to its current end.
    async fn catch_up(&mut self) {
        let partitions = self.log.partitions(topics::ACCOUNT_EVENTS).await.unwrap();
        for partition in 0..partitions {
            loop {
                let from = self.next.get(&partition).copied().unwrap_or(0);
                let records = self
                    .log
                    .read(topics::ACCOUNT_EVENTS, partition, from, 5_000)
                    .await
                    .unwrap();
                let Some(last) = records.last() else { break };
                self.next.insert(partition, last.offset + 1);
                for record in &records {
                    let envelope: Envelope = serde_json::from_slice(&record.payload)
                        .unwrap_or_else(|e| {
                            panic!(
                                "undecodable record at {partition}/{}: {e}: {}",
                                record.offset,
                                String::from_utf8_lossy(&record.payload)
                            )
                        });
                    if let EventBody::Usage(usage) = envelope.body {
                        self.usage
                            .push((usage.event_id.to_string(), usage.account_id.to_string()));
                    }
                }
            }
        }
    }

    /// Distinct usage event ids, and how many copies beyond the first were read.
    fn distinct(&self) -> (BTreeSet<String>, usize) {
        let mut ids = BTreeSet::new();
        let mut duplicates = 0;
        for (id, _) in &self.usage {
            if !ids.insert(id.clone()) {
                duplicates += 1;
            }
        }
        (ids, duplicates)
    }

    async fn close(self) {
        let _ = self.log.close(Duration::from_secs(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child's output, collected line by line on a thread.
struct Captured {
    text: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Captured {
    fn start(stream: impl Read + Send + 'static) -> Captured {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        Captured {
            text,
            reader: Some(reader),
        }
    }

    fn snapshot(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.snapshot()
    }
}

/// librdkafka's mock cluster accepts connections on sockets without
/// close-on-exec: a child spawned later would inherit the broker side of
/// every connection open at that moment, and `broker_down` could then no
/// longer close them (the inherited copy keeps them open, so clients wait
/// for answers until their socket timeout instead of reconnecting). Mark
/// every descriptor of this process close-on-exec right before spawning.
fn no_inherited_fds() {
    close_fds::set_fds_cloexec_threadsafe(3, &[]);
}

/// A command with nothing from the caller's environment that could change
/// what Tollgate does, plus the shared master key and admin token.
fn tollgate_command(config: &Path) -> Command {
    no_inherited_fds();
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("TOLLGATE")
            || name.ends_with("_API_KEY")
            || name.to_ascii_uppercase().ends_with("_PROXY")
            || name == "RUST_LOG"
        {
            cmd.env_remove(name);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One process's configuration: its own directory, ports, spool, storage.
#[derive(Clone)]
struct Node {
    name: String,
    config: PathBuf,
    server: u16,
    admin: u16,
    ledger: u16,
}

struct NodeOptions {
    brokers: Vec<String>,
    upstream: String,
    bootstrap: bool,
    enforce: bool,
    startup_timeout_ms: u64,
}

fn node(root: &Path, name: &str, options: &NodeOptions) -> Node {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let (server, admin, ledger) = (free_port(), free_port(), free_port());
    let brokers = options
        .brokers
        .iter()
        .map(|b| format!("{b:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{server}"

[admin]
listen = "127.0.0.1:{admin}"

[ledger]
listen = "127.0.0.1:{ledger}"
tick_interval_ms = 1000

[providers.openai]
base_url = "{upstream}"
api_keys = ["{OPERATOR_KEY}"]

[storage]
path = "{storage}"

[billing]
enforce = {enforce}

[eventlog]
backend = "kafka"

[kafka]
brokers = [{brokers}]
spool_path = "{spool}"
replication_factor = 1
startup_timeout_ms = {startup}
delivery_timeout_ms = 60000
client_id = "tollgate-{name}"

[kafka.consumer]
# The mock cluster finishes a rebalance session.timeout.ms - 1 s after a
# member joined: keep it short.
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "500"

[bootstrap]
enabled = {bootstrap}
account_name = "split-{name}"
starting_credit_usd = "5.00"

[log]
level = "info"
"#,
        upstream = options.upstream,
        storage = dir.join("data/tollgate.db").display(),
        spool = dir.join("data/kafka-spool.db").display(),
        enforce = options.enforce,
        startup = options.startup_timeout_ms,
        bootstrap = options.bootstrap,
    );
    let config = dir.join("tollgate.toml");
    std::fs::write(&config, text).unwrap();
    Node {
        name: name.to_owned(),
        config,
        server,
        admin,
        ledger,
    }
}

/// What the split tests run on: a mock cluster, a mock upstream, a
/// directory for the processes' files and an HTTP client. Fields drop in
/// order: the cluster last.
struct Rig {
    http: reqwest::Client,
    root: tempfile::TempDir,
    upstream: MockUpstream,
    mock: Mock,
}

impl Rig {
    async fn new() -> Rig {
        Rig {
            http: http_client(),
            root: tempfile::tempdir().unwrap(),
            upstream: MockUpstream::start().await.unwrap(),
            mock: cluster(),
        }
    }

    /// Admission on; `bootstrap`: the process may create the first account.
    fn options(&self, bootstrap: bool) -> NodeOptions {
        NodeOptions {
            brokers: brokers(&self.mock),
            upstream: self.upstream.base_url(),
            bootstrap,
            enforce: true,
            startup_timeout_ms: 30_000,
        }
    }

    fn node(&self, name: &str, bootstrap: bool) -> Node {
        node(self.root.path(), name, &self.options(bootstrap))
    }
}

/// A running `tollgate proxy` or `tollgate ledger`.
struct Process {
    what: String,
    child: Child,
    stdout: Captured,
    stderr: Captured,
}

impl Process {
    fn spawn(node: &Node, role: &str) -> Process {
        let mut command = tollgate_command(&node.config);
        command
            .arg(role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        no_inherited_fds();
        let mut child = command.spawn().unwrap();
        Process {
            what: format!("tollgate {role} ({})", node.name),
            stdout: Captured::start(child.stdout.take().unwrap()),
            stderr: Captured::start(child.stderr.take().unwrap()),
            child,
        }
    }

    /// Start `role` and wait until its `/readyz` answers 200.
    async fn start(http: &reqwest::Client, node: &Node, role: &str) -> Process {
        let process = Process::spawn(node, role);
        let port = if role == "ledger" {
            node.ledger
        } else {
            node.server
        };
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + START_DEADLINE;
        let mut process = process;
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if response.status() == 200 {
                    break;
                }
            }
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "{} exited during startup ({status})\n{}",
                    process.what,
                    process.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {START_DEADLINE:?}\n{}",
                process.what,
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.what,
            self.stdout.snapshot(),
            self.what,
            tail(&self.stderr.snapshot(), 60)
        )
    }

    /// The bootstrap access key this process printed, if any.
    fn printed_token(&self) -> Option<String> {
        self.stdout
            .snapshot()
            .split_whitespace()
            .find(|w| w.starts_with("tgk_"))
            .map(str::to_owned)
    }

    async fn wait_for_token(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(token) = self.printed_token() {
                return token;
            }
            assert!(
                Instant::now() < deadline,
                "{} printed no bootstrap key\n{}",
                self.what,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait for the exit; returns the status and stderr.
    async fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        no_inherited_fds();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("cannot run `kill`");
        assert!(sent.success(), "`kill -TERM {pid}` failed");
        let status = self.wait_exit().await;
        let stderr = self.stderr.finish();
        self.stdout.finish();
        (status, stderr)
    }

    /// SIGTERM and require a clean exit.
    async fn stop_cleanly(self) {
        let what = self.what.clone();
        let (status, stderr) = self.terminate().await;
        if std::env::var_os("KAFKA_SPLIT_LOGS").is_some() {
            println!("--- {what} stderr ---\n{stderr}");
        }
        assert!(
            status.success(),
            "{what} did not exit 0 after SIGTERM: {status}\n--- stderr ---\n{}",
            tail(&stderr, 60)
        );
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {STOP_DEADLINE:?}\n{}",
                    self.what,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!("{}", self.logs());
            }
        }
    }
}

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One answered chat request.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    event_id: Option<String>,
    cost: Decimal,
    body: String,
    /// When the client had the whole body.
    completed: Instant,
}

impl Answer {
    /// From a 402: the available credit the gateway's admission computed.
    fn available(&self) -> Option<Decimal> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        let message = body["error"]["message"].as_str()?;
        let rest = message.split("available balance is ").nth(1)?;
        Decimal::from_str(rest.split(';').next()?.trim()).ok()
    }
}

async fn chat(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    model: &str,
) -> reqwest::Result<Answer> {
    let body = json!({
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello through the split deployment"}],
    });
    chat_body(http, port, token, &body).await
}

async fn chat_body(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    body: &Value,
) -> reqwest::Result<Answer> {
    let response = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let event_id = header("x-tollgate-event-id");
    // Refusals cost nothing and carry no cost; every 200 tells its cost.
    let cost = match header("x-tollgate-cost-total") {
        Some(c) => Decimal::from_str(&c).unwrap_or_else(|e| panic!("cost header {c:?}: {e}")),
        None => {
            assert_ne!(status, 200, "a 200 without x-tollgate-cost-total");
            Decimal::ZERO
        }
    };
    let body = response.text().await?;
    Ok(Answer {
        status,
        event_id,
        cost,
        body,
        completed: Instant::now(),
    })
}

async fn chat_ok(http: &reqwest::Client, port: u16, token: &str, model: &str) -> Answer {
    let answer = chat(http, port, token, model).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.event_id.is_some());
    answer
}

async fn admin_post(http: &reqwest::Client, port: u16, path: &str, body: Value) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}/admin/v1{path}");
    admin_send(http.post(url).json(&body)).await
}

async fn admin_get(http: &reqwest::Client, port: u16, path: &str) -> (u16, Value) {
    admin_send(http.get(format!("http://127.0.0.1:{port}/admin/v1{path}"))).await
}

/// Send with the admin token; the status and the JSON body (or its text).
async fn admin_send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The balance the ledger serves to `token` (credits API on `ledger.listen`).
async fn ledger_balance(http: &reqwest::Client, node: &Node, token: &str) -> Option<Decimal> {
    decimal(&ledger_get(http, node, token, "/v1/credits/balance").await?["balance"])
}

/// A 200 answer of the ledger's credits API to `token`.
async fn ledger_get(http: &reqwest::Client, node: &Node, token: &str, path: &str) -> Option<Value> {
    let response = http
        .get(format!("http://127.0.0.1:{}{path}", node.ledger))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}

/// An amount as the APIs write it (a decimal string, or a number).
fn decimal(value: &Value) -> Option<Decimal> {
    match value {
        Value::String(s) => Decimal::from_str(s).ok(),
        Value::Number(n) => Decimal::from_str(&n.to_string()).ok(),
        _ => None,
    }
}

/// A gauge or counter from a process's `/metrics`.
async fn metric(http: &reqwest::Client, port: u16, name: &str) -> Option<f64> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Poll `probe` until it yields `Ok`; on timeout fail with the last `Err`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deadline for a polling loop: `tick` fails the test once it passed.
struct Deadline {
    what: String,
    timeout: Duration,
    at: Instant,
}

impl Deadline {
    fn new(what: &str, timeout: Duration) -> Deadline {
        Deadline {
            what: what.to_owned(),
            timeout,
            at: Instant::now() + timeout,
        }
    }

    async fn tick(&self, last: impl std::fmt::Display) {
        assert!(
            Instant::now() < self.at,
            "timed out after {:?} waiting for {}; last: {last}",
            self.timeout,
            self.what
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send requests until one is answered with `status`; every answer is kept
/// in `answers`. Returns when that answer arrived.
async fn chat_until(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    model: &str,
    status: u16,
    answers: &mut Vec<Answer>,
    what: &str,
) -> Instant {
    let deadline = Deadline::new(what, CONVERGE_DEADLINE);
    loop {
        let answer = chat(http, port, token, model).await.unwrap();
        let got = answer.status;
        let body = answer.body.clone();
        answers.push(answer);
        if got == status {
            return Instant::now();
        }
        deadline.tick(format!("{got}: {body}")).await;
    }
}

async fn wait_for_balance(
    http: &reqwest::Client,
    ledger: &Node,
    token: &str,
    expected: Decimal,
    what: &str,
) {
    eventually(what, CONVERGE_DEADLINE, || async {
        match ledger_balance(http, ledger, token).await {
            Some(balance) if balance == expected => Ok(()),
            other => Err(format!("ledger balance {other:?}, expected {expected}")),
        }
    })
    .await;
}

/// Prints progress with the time since the test started.
struct Clock(Instant);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now())
    }

    fn note(&self, what: &str) {
        println!("[{:6.2} s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn usd(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn sum(answers: &[Answer]) -> Decimal {
    answers.iter().map(|a| a.cost).sum()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_and_a_ledger_converge_on_control_state_and_balances() {
    let _heavy = HEAVY.lock().await;
    let split = TwoProxies::start().await;
    let (http, boot_token) = (split.http.clone(), split.token.clone());
    let (a, b, l) = (split.a.clone(), split.b.clone(), split.l.clone());
    assert_eq!(
        split.proxy_b.printed_token(),
        None,
        "B found the control topic non-empty and did not bootstrap\n{}",
        split.proxy_b.logs()
    );

    // Control state through A's admin API.
    let (status, account) = admin_post(&http, a.admin, "/accounts", json!({"name": "team"})).await;
    assert_eq!(status, 201, "{account}");
    let account_id = account["id"].as_str().unwrap().to_owned();
    let (status, configuration) = admin_post(
        &http,
        a.admin,
        &format!("/accounts/{account_id}/configurations"),
        json!({"name": "openai-only", "allowed_providers": ["openai"]}),
    )
    .await;
    assert_eq!(status, 201, "{configuration}");
    let (status, key) = admin_post(
        &http,
        a.admin,
        &format!("/accounts/{account_id}/access-keys"),
        json!({"name": "svc", "configuration_id": configuration["id"]}),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let team_token = key["token"].as_str().unwrap().to_owned();
    let team_key_id = key["access_key"]["id"].as_str().unwrap().to_owned();
    let key_created = Instant::now();

    // The purchase: the credits admin routes live where the ledger runs
    // (`ledger.listen`); a proxy-only admin API serves the control plane.
    let purchase = eventually(
        "the ledger to accept a purchase for the new account",
        CONVERGE_DEADLINE,
        || async {
            match admin_post(
                &http,
                l.ledger,
                &format!("/accounts/{account_id}/purchases"),
                json!({"amount": "5.00", "idempotency_key": "order-1"}),
            )
            .await
            {
                (200 | 202, body) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        purchase["amount"].as_str().map(usd),
        Some(usd("5.00")),
        "{purchase}"
    );

    // B learns the key from the log (and the purchase's balance from the ledger).
    let mut boot_answers: Vec<Answer> = Vec::new();
    let mut team_answers: Vec<Answer> = Vec::new();
    let first_ok = chat_until(
        &http,
        b.server,
        &team_token,
        MODEL,
        200,
        &mut team_answers,
        "the new key to work on proxy B",
    )
    .await;
    println!(
        "new key + purchase usable on proxy B {} ms after the key was created on A",
        first_ok.duration_since(key_created).as_millis()
    );

    // The key's configuration (created on A) is enforced on B.
    let refused = chat(&http, b.server, &team_token, "claude-sonnet-4-5")
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    team_answers.push(refused);

    // Traffic through both proxies, on both accounts, once each proxy
    // knows both balances (until then it answers 402, at no cost).
    for port in [a.server, b.server] {
        for (token, answers) in [
            (&boot_token, &mut boot_answers),
            (&team_token, &mut team_answers),
        ] {
            chat_until(
                &http,
                port,
                token,
                MODEL,
                200,
                answers,
                "both balances on both proxies",
            )
            .await;
        }
    }
    for _ in 0..15 {
        for port in [a.server, b.server] {
            boot_answers.push(chat_ok(&http, port, &boot_token, MODEL).await);
            team_answers.push(chat_ok(&http, port, &team_token, MODEL).await);
        }
    }
    let expected_boot = usd("5.00") - sum(&boot_answers);
    let expected_team = usd("5.00") - sum(&team_answers);
    assert!(sum(&boot_answers) > Decimal::ZERO);
    wait_for_balance(
        &http,
        &l,
        &boot_token,
        expected_boot,
        "the bootstrap account's balance on the ledger",
    )
    .await;
    wait_for_balance(
        &http,
        &l,
        &team_token,
        expected_team,
        "the team account's balance on the ledger",
    )
    .await;
    println!(
        "ledger balances: bootstrap {expected_boot} ({} requests), team {expected_team} ({} requests)",
        boot_answers.len(),
        team_answers.len()
    );

    // Revoked through B, refused by A.
    let (status, revoked) = admin_post(
        &http,
        b.admin,
        &format!("/access-keys/{team_key_id}/revoke"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    let revoked_at = Instant::now();
    let refused_at = eventually(
        "proxy A to refuse the key revoked through B",
        CONVERGE_DEADLINE,
        || async {
            let answer = chat(&http, a.server, &team_token, MODEL)
                .await
                .map_err(|e| e.to_string())?;
            if answer.status == 401 {
                Ok(Instant::now())
            } else {
                Err(format!("A answered {}", answer.status))
            }
        },
    )
    .await;
    println!(
        "key revoked on B refused by A after {} ms",
        refused_at.duration_since(revoked_at).as_millis()
    );
    assert_eq!(
        chat(&http, b.server, &team_token, MODEL)
            .await
            .unwrap()
            .status,
        401
    );

    // A tiny balance, used up through A: both proxies' admission sees the
    // ledger's balance and refuses with 402.
    let (status, tiny) = admin_post(&http, a.admin, "/accounts", json!({"name": "tiny"})).await;
    assert_eq!(status, 201, "{tiny}");
    let tiny_id = tiny["id"].as_str().unwrap().to_owned();
    let (status, key) = admin_post(
        &http,
        a.admin,
        &format!("/accounts/{tiny_id}/access-keys"),
        json!({"name": "tiny"}),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let tiny_token = key["token"].as_str().unwrap().to_owned();
    let grant = usd("0.0002");
    eventually(
        "the ledger to accept a goodwill credit",
        CONVERGE_DEADLINE,
        || async {
            match admin_post(
                &http,
                l.ledger,
                &format!("/accounts/{tiny_id}/adjustments"),
                json!({"kind": "goodwill_credit", "amount": grant.to_string(),
                       "reason": "tiny test balance", "idempotency_key": "tiny-1"}),
            )
            .await
            {
                (202, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let mut tiny_answers: Vec<Answer> = Vec::new();
    chat_until(
        &http,
        b.server,
        &tiny_token,
        TINY_MODEL,
        200,
        &mut tiny_answers,
        "the tiny balance on proxy B",
    )
    .await;
    let deadline = Deadline::new(
        "the tiny balance to be used up through A",
        CONVERGE_DEADLINE,
    );
    loop {
        let answer = chat(&http, a.server, &tiny_token, TINY_MODEL)
            .await
            .unwrap();
        let status = answer.status;
        tiny_answers.push(answer);
        match ledger_balance(&http, &l, &tiny_token).await {
            Some(balance) if balance <= Decimal::ZERO => break,
            other => {
                deadline
                    .tick(format!("A answered {status}; ledger balance {other:?}"))
                    .await
            }
        }
    }
    // Both proxies refuse with exactly the ledger's balance. Until the last
    // update reaches a proxy it may still admit one more request (the
    // overshoot is bounded): every answer is counted, and the expected
    // balance follows.
    let deadline = Deadline::new(
        "both proxies to refuse the used-up account with the ledger's balance",
        CONVERGE_DEADLINE,
    );
    let expected_tiny = loop {
        let expected = grant - sum(&tiny_answers);
        let ledger_says = ledger_balance(&http, &l, &tiny_token).await;
        let mut agreed = ledger_says == Some(expected);
        let mut last = format!("ledger {ledger_says:?}, expected {expected}");
        for (name, port) in [("A", a.server), ("B", b.server)] {
            let answer = chat(&http, port, &tiny_token, TINY_MODEL).await.unwrap();
            agreed &= answer.status == 402 && answer.available() == Some(expected);
            last.push_str(&format!("; {name}: {} {}", answer.status, answer.body));
            tiny_answers.push(answer);
        }
        if agreed {
            break expected;
        }
        deadline.tick(last).await;
    };
    assert!(expected_tiny <= Decimal::ZERO);
    println!(
        "tiny account: granted {grant}, {} answers, ledger balance {expected_tiny}; A and B both answer 402 with that balance",
        tiny_answers.len()
    );

    split.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_arrives_after_the_broker_was_down_under_load() {
    let _heavy = HEAVY.lock().await;
    let clock = Clock::start();
    let rig = Rig::new().await;
    let (mock, http) = (&rig.mock, rig.http.clone());
    let p = rig.node("proxy", true);
    let l = rig.node("ledger", false);
    let proxy = Process::start(&http, &p, "proxy").await;
    let token = proxy.wait_for_token().await;
    let ledger = Process::start(&http, &l, "ledger").await;
    clock.note("proxy and ledger ready");

    // Until the ledger's balance for the starting grant reaches the proxy,
    // it answers 402 (those requests have events too, at no cost).
    let mut answers: Vec<Answer> = Vec::new();
    chat_until(
        &http,
        p.server,
        &token,
        MODEL,
        200,
        &mut answers,
        "the starting grant on the proxy",
    )
    .await;

    clock.note("the starting grant reached the proxy");
    // Load: two paced client loops, a bounded number of requests each.
    const LOOPS: usize = 2;
    const PER_LOOP: usize = 250;
    let completed = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..LOOPS {
        let (http, token, completed) = (http.clone(), token.clone(), completed.clone());
        let port = p.server;
        loops.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..PER_LOOP {
                let answer = chat(&http, port, &token, MODEL).await;
                let answer = answer.unwrap_or_else(|e| panic!("the proxy did not answer: {e}"));
                completed.fetch_add(1, Ordering::Relaxed);
                answers.push(answer);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answers
        }));
    }
    eventually("load to start", CONVERGE_DEADLINE, || async {
        let n = completed.load(Ordering::Relaxed);
        (n >= 40).then_some(()).ok_or(format!("{n} completed"))
    })
    .await;
    for broker in 1..=BROKERS {
        mock.broker_down(broker).unwrap();
    }
    let down_at = Instant::now();
    let completed_before = completed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spooled = metric(&http, p.server, "tollgate_eventlog_spooled_records")
        .await
        .unwrap_or_default();
    let completed_during = completed.load(Ordering::Relaxed) - completed_before;
    for broker in 1..=BROKERS {
        mock.broker_up(broker).unwrap();
    }
    let up_at = Instant::now();
    println!(
        "brokers down for {} ms: {completed_during} requests answered meanwhile; {spooled} records spooled before the brokers came back",
        up_at.duration_since(down_at).as_millis()
    );
    assert!(
        completed_during > 0,
        "the proxy kept answering while no broker did"
    );
    assert!(spooled > 0.0, "usage events waited in the spool");
    for handle in loops {
        answers.extend(handle.await.unwrap());
    }
    let bad: Vec<&Answer> = answers[answers.len() - LOOPS * PER_LOOP..]
        .iter()
        .filter(|a| a.status != 200)
        .collect();
    assert!(bad.is_empty(), "non-200 answers under load: {bad:?}");

    // Every response's event, once after dedup, and nothing else.
    let expected: BTreeSet<String> = answers.iter().filter_map(|a| a.event_id.clone()).collect();
    assert_eq!(
        expected.len(),
        answers.len(),
        "every answer names its event"
    );
    clock.note("load done");
    let mut reader = EventReader::connect(&rig.mock, rig.root.path()).await;
    let deadline = Deadline::new(
        "every usage event in the account-events topic",
        CONVERGE_DEADLINE,
    );
    loop {
        reader.catch_up().await;
        let (found, _) = reader.distinct();
        let missing = expected.difference(&found).count();
        if missing == 0 {
            break;
        }
        deadline
            .tick(format!("{missing} of {} missing", expected.len()))
            .await;
    }
    clock.note("every event read from Kafka");
    let expected_balance = usd("5.00") - sum(&answers);
    wait_for_balance(
        &http,
        &l,
        &token,
        expected_balance,
        "the ledger's balance after the outage",
    )
    .await;
    clock.note("the ledger's balance matches");
    // The ledger has applied all of them: read anything that could follow.
    reader.catch_up().await;
    let (found, duplicates) = reader.distinct();
    println!(
        "{} answers, {} distinct usage events in Kafka ({duplicates} duplicate copies), ledger balance {expected_balance}",
        answers.len(),
        found.len()
    );
    assert_eq!(
        found, expected,
        "usage events in Kafka = events of the answers"
    );
    reader.close().await;

    clock.note("reader closed");
    proxy.stop_cleanly().await;
    clock.note("proxy stopped");
    ledger.stop_cleanly().await;
    clock.note("ledger stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_proxy_loses_at_most_the_group_commit_window() {
    let _heavy = HEAVY.lock().await;
    let rig = Rig::new().await;
    let http = rig.http.clone();
    // No ledger here: admission off, so every request is answered 200.
    let options = NodeOptions {
        enforce: false,
        ..rig.options(true)
    };
    let p = node(rig.root.path(), "proxy", &options);
    let mut proxy = Process::start(&http, &p, "proxy").await;
    let token = proxy.wait_for_token().await;

    const CLIENTS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..CLIENTS {
        let (http, token) = (http.clone(), token.clone());
        let (stop, completed) = (stop.clone(), completed.clone());
        let port = p.server;
        loops.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match chat(&http, port, &token, MODEL).await {
                    Ok(answer) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                        answers.push(answer);
                    }
                    // After the kill: connection refused / reset.
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (answers, errors)
        }));
    }
    eventually("load to build up", CONVERGE_DEADLINE, || async {
        let n = completed.load(Ordering::Relaxed);
        (n >= 400).then_some(()).ok_or(format!("{n} completed"))
    })
    .await;
    let killed_at = Instant::now();
    proxy.child.kill().unwrap();
    let status = proxy.wait_exit().await;
    assert!(!status.success(), "SIGKILL ends the process: {status}");
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    let mut client_errors = 0;
    for handle in loops {
        let (a, e) = handle.await.unwrap();
        answers.extend(a);
        client_errors += e;
    }
    drop(proxy);
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(ok.len(), answers.len(), "every completed answer was a 200");

    // Restart on the same spool: what it holds is delivered.
    let proxy = Process::start(&http, &p, "proxy").await;
    assert_eq!(proxy.printed_token(), None, "no second bootstrap");
    eventually(
        "the restarted proxy's spool to drain",
        CONVERGE_DEADLINE,
        || async {
            match metric(&http, p.server, "tollgate_eventlog_spooled_records").await {
                Some(n) if n <= 0.0 => Ok(()),
                other => Err(format!("spooled {other:?}")),
            }
        },
    )
    .await;
    let (status, stderr) = proxy.terminate().await;
    assert!(
        status.success(),
        "restarted proxy exits 0 on SIGTERM: {status}"
    );
    let resumed = plain(&stderr)
        .lines()
        .find(|l| l.contains("resuming delivery of spooled event-log records"))
        .and_then(|l| l.split("records=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| "0".into());
    println!("the restarted proxy found {resumed} records in its spool and delivered them");

    let mut reader = EventReader::connect(&rig.mock, rig.root.path()).await;
    reader.catch_up().await;
    let (found, duplicates) = reader.distinct();
    let missing: Vec<&Answer> = answers
        .iter()
        .filter(|a| !found.contains(a.event_id.as_deref().unwrap()))
        .collect();
    let answered: BTreeSet<&str> = answers
        .iter()
        .filter_map(|a| a.event_id.as_deref())
        .collect();
    let unanswered = found
        .iter()
        .filter(|id| !answered.contains(id.as_str()))
        .count();
    let before_kill = |a: &Answer| -> f64 {
        if a.completed <= killed_at {
            killed_at.duration_since(a.completed).as_secs_f64() * 1000.0
        } else {
            -(a.completed.duration_since(killed_at).as_secs_f64() * 1000.0)
        }
    };
    let mut windows: Vec<f64> = missing.iter().map(|a| before_kill(a)).collect();
    windows.sort_by(|x, y| x.total_cmp(y));
    println!(
        "SIGKILL under {CLIENTS} concurrent clients: {} responses completed, {} distinct usage events in Kafka \
         ({duplicates} duplicate copies, {unanswered} of requests in flight at the kill), {} completed responses \
         without an event; completed this many ms before the kill: {:?}; {client_errors} client errors after the kill",
        answers.len(),
        found.len(),
        missing.len(),
        windows
            .iter()
            .map(|ms| format!("{ms:.1}"))
            .collect::<Vec<_>>()
    );
    let late: Vec<f64> = windows.iter().copied().filter(|ms| *ms >= 250.0).collect();
    assert!(
        late.is_empty(),
        "responses completed 250 ms or more before the SIGKILL lost their usage events: {late:?} ms"
    );
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_start_is_a_clear_error() {
    let upstream = MockUpstream::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let closed = free_port();
    let broker = format!("127.0.0.1:{closed}");
    let p = node(
        root.path(),
        "proxy",
        &NodeOptions {
            brokers: vec![broker.clone()],
            upstream: upstream.base_url(),
            bootstrap: true,
            enforce: true,
            startup_timeout_ms: 2_000,
        },
    );
    let started = Instant::now();
    let mut process = Process::spawn(&p, "proxy");
    let status = process.wait_exit().await;
    let stderr = process.stderr.finish();
    println!(
        "unreachable broker: exit {status} after {} ms",
        started.elapsed().as_millis()
    );
    assert!(!status.success(), "exits non-zero\n{stderr}");
    assert!(
        stderr.contains(&broker),
        "the error names the broker {broker}\n{stderr}"
    );
    assert!(
        stderr.contains("cannot reach the Kafka brokers"),
        "the error says what failed\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_kafka_settings_without_a_broker() {
    let root = tempfile::tempdir().unwrap();
    let closed = free_port();
    let p = node(
        root.path(),
        "proxy",
        &NodeOptions {
            brokers: vec![format!("127.0.0.1:{closed}")],
            upstream: "http://127.0.0.1:9/v1".into(),
            bootstrap: true,
            enforce: true,
            startup_timeout_ms: 2_000,
        },
    );
    let output = tollgate_command(&p.config)
        .arg("check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check-config accepts a kafka config without a broker\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("backend = \"kafka\""), "{stdout}");
    assert!(stdout.contains(&format!("127.0.0.1:{closed}")), "{stdout}");
    assert!(
        !stdout.contains(ADMIN_TOKEN) && !stdout.contains(MASTER_KEY),
        "{stdout}"
    );

    // An invalid kafka field: through the file and through the environment.
    let text = std::fs::read_to_string(&p.config).unwrap();
    let bad = p.config.with_file_name("bad.toml");
    std::fs::write(&bad, format!("{text}\n[kafka.partitions]\ncontrol = 3\n")).unwrap();
    for (config, env) in [
        (bad.as_path(), None),
        (
            p.config.as_path(),
            Some(("TOLLGATE__KAFKA__PARTITIONS__CONTROL", "3")),
        ),
    ] {
        let mut command = tollgate_command(config);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.arg("check-config").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "kafka.partitions.control = 3 is refused ({env:?})\n{stderr}"
        );
        assert!(
            stderr.contains("partitions.control"),
            "the error names the field ({env:?})\n{stderr}"
        );
    }
}

/// A proxy's ledger round trips (`tollgate_proxy_ledger_round_trip_seconds`):
/// (count, mean, upper bound of the highest bucket with an observation).
async fn round_trips(http: &reqwest::Client, port: u16) -> (u64, f64, f64) {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let name = "tollgate_proxy_ledger_round_trip_seconds";
    let value = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let line = |suffix: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("{name}{suffix}")))
            .map(value)
            .unwrap_or_else(|| panic!("no {name}{suffix} in\n{text}"))
    };
    let (count, sum) = (line("_count") as u64, line("_sum"));
    // Buckets are cumulative: the first whose count is the total bounds all.
    let highest = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, count_text) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count_text.trim().parse::<f64>().ok()? as u64))
        })
        .find(|(_, n)| *n == count)
        .map_or(f64::INFINITY, |(le, _)| le);
    (count, sum / count.max(1) as f64, highest)
}

/// What the clients of one proxy spent and how often they were refused.
#[derive(Default)]
struct ProxyTally {
    spent: Decimal,
    admitted: usize,
    refused: usize,
    /// When each admitted request was answered, and its cost.
    costs: Vec<(Instant, Decimal)>,
}

impl ProxyTally {
    fn add(&mut self, other: ProxyTally) {
        self.spent += other.spent;
        self.admitted += other.admitted;
        self.refused += other.refused;
        self.costs.extend(other.costs);
    }

    /// The most spent by requests answered within any `window`.
    fn most_spent_within(&mut self, window: Duration) -> Decimal {
        self.costs.sort_by_key(|(at, _)| *at);
        let (mut most, mut sum, mut from) = (Decimal::ZERO, Decimal::ZERO, 0);
        for (at, cost) in &self.costs {
            sum += cost;
            while at.duration_since(self.costs[from].0) > window {
                sum -= self.costs[from].1;
                from += 1;
            }
            most = most.max(sum);
        }
        most
    }
}

/// The error code of a refusal's body (`error.code`).
fn error_code(body: &str) -> Option<String> {
    let body: Value = serde_json::from_str(body).ok()?;
    body["error"]["code"].as_str().map(str::to_owned)
}

/// Clients sending `body` to `port` back to back until they are refused
/// once `spent` is set (the ledger saw the credit used up). Every refusal
/// must be a 402 with the error code `refusal`.
fn spend_through(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    body: &Value,
    clients: usize,
    spent: &Arc<AtomicBool>,
    refusal: &'static str,
) -> Vec<tokio::task::JoinHandle<ProxyTally>> {
    (0..clients)
        .map(|_| {
            let (http, token, body, spent) =
                (http.clone(), token.to_owned(), body.clone(), spent.clone());
            tokio::spawn(async move {
                let mut tally = ProxyTally::default();
                loop {
                    let answer = chat_body(&http, port, &token, &body).await.unwrap();
                    match answer.status {
                        200 => {
                            tally.spent += answer.cost;
                            tally.admitted += 1;
                            tally.costs.push((answer.completed, answer.cost));
                        }
                        402 => {
                            assert_eq!(
                                error_code(&answer.body).as_deref(),
                                Some(refusal),
                                "a 402 refused with another code: {}",
                                answer.body
                            );
                            tally.refused += 1;
                            if spent.load(Ordering::Relaxed) {
                                return tally;
                            }
                        }
                        other => panic!("unexpected {other}: {}", answer.body),
                    }
                }
            })
        })
        .collect()
}

/// 200 prompt tokens on gpt-4o: about $0.0005 a request, so a dollar lasts
/// many round trips.
fn spend_body() -> Value {
    json!({
        "model": TINY_MODEL,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": vec!["a"; 200].join(" ")}],
    })
}

/// The most a request with `body` may cost (M of the bound): its maximum
/// as admission prices it, every byte counted as an input token.
fn max_cost(body: &Value) -> Decimal {
    let prices = tollgate_core::Catalog::builtin()
        .unwrap()
        .model(TINY_MODEL)
        .unwrap()
        .prices;
    let tokens = tollgate_core::TokenCounts {
        input: serde_json::to_vec(body).unwrap().len() as u64,
        output: 16,
        ..tollgate_core::TokenCounts::default()
    };
    let cost = tollgate_core::pricing::cost_for(
        &tokens,
        &prices,
        Some(tollgate_core::CredentialSource::Operator),
        None,
    );
    cost.total().amount()
}

/// Two `tollgate proxy` processes (A bootstraps the $5.00 account) and a
/// `tollgate ledger` on one mock cluster. Fields drop in order: the
/// processes before the rig they use.
struct TwoProxies {
    proxy_a: Process,
    proxy_b: Process,
    ledger: Process,
    a: Node,
    b: Node,
    l: Node,
    /// The bootstrap key's token.
    token: String,
    http: reqwest::Client,
    _rig: Rig,
}

impl TwoProxies {
    /// Start them and wait until the ledger serves the starting credit.
    async fn start() -> TwoProxies {
        let rig = Rig::new().await;
        let http = rig.http.clone();
        let a = rig.node("proxy-a", true);
        let l = rig.node("ledger", false);
        let b = rig.node("proxy-b", true);
        let proxy_a = Process::start(&http, &a, "proxy").await;
        let token = proxy_a.wait_for_token().await;
        let ledger = Process::start(&http, &l, "ledger").await;
        let proxy_b = Process::start(&http, &b, "proxy").await;
        // The bootstrap account's $5.00 (`starting_credit_usd`).
        wait_for_balance(&http, &l, &token, usd("5.00"), "the starting credit").await;
        TwoProxies {
            proxy_a,
            proxy_b,
            ledger,
            a,
            b,
            l,
            token,
            http,
            _rig: rig,
        }
    }

    /// One request answered 200 through each proxy (each knows the
    /// balance); what they cost.
    async fn warm_up(&self) -> Decimal {
        let mut answers = Vec::new();
        for port in [self.a.server, self.b.server] {
            chat_until(
                &self.http,
                port,
                &self.token,
                TINY_MODEL,
                200,
                &mut answers,
                "the balance on both proxies",
            )
            .await;
        }
        sum(&answers)
    }

    /// `clients` clients per proxy send `body` until `used_up` says the
    /// ledger saw the limit reached, and then each until its proxy refuses
    /// it (402 with the code `refusal`). Returns each proxy's tally.
    async fn spend<F, Fut>(
        &self,
        body: &Value,
        clients: usize,
        refusal: &'static str,
        used_up: F,
    ) -> Vec<ProxyTally>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let flag = Arc::new(AtomicBool::new(false));
        let spenders = [self.a.server, self.b.server].map(|port| {
            spend_through(&self.http, port, &self.token, body, clients, &flag, refusal)
        });
        eventually("the limit to be spent", Duration::from_secs(180), used_up).await;
        // Every client now runs until its proxy refuses it (within a round trip).
        flag.store(true, Ordering::Relaxed);
        let mut tallies = Vec::new();
        for spender in spenders {
            let mut tally = ProxyTally::default();
            for client in spender {
                tally.add(client.await.unwrap());
            }
            tallies.push(tally);
        }
        tallies
    }

    /// Assert `overshoot` within N × 2 × M + (N − 1) × S, with the round
    /// trip the proxies measured (the slowest bucket either saw) and S the
    /// most either instance spent within one; print the figures.
    async fn assert_within_bound(
        &self,
        tallies: &mut [ProxyTally],
        max_cost: Decimal,
        overshoot: Decimal,
        clients: usize,
    ) {
        let mut round_trip = 0f64;
        for (name, port) in [("A", self.a.server), ("B", self.b.server)] {
            let (count, mean, highest) = round_trips(&self.http, port).await;
            println!(
                "proxy {name}: {count} ledger round trips, mean {:.1} ms, all within {highest} s",
                mean * 1e3
            );
            assert!(count > 0, "proxy {name} timed no round trip");
            round_trip = round_trip.max(highest);
        }
        let per_round_trip = tallies
            .iter_mut()
            .map(|t| t.most_spent_within(Duration::from_secs_f64(round_trip)))
            .max()
            .unwrap();
        let instances = Decimal::from(2);
        // Per instance: M, or 2 × M once what is left is under 2 × M (the cap).
        let bound = instances * (max_cost + max_cost) + (instances - Decimal::ONE) * per_round_trip;
        for (name, tally) in ["A", "B"].iter().zip(tallies.iter()) {
            println!(
                "proxy {name}: {} admitted, {} refused, spent {}",
                tally.admitted, tally.refused, tally.spent
            );
        }
        println!(
            "one request's maximum {max_cost}; the most one instance spent within a round trip \
             ({round_trip} s): {per_round_trip}; overshoot {overshoot}, bound {bound}",
        );
        assert!(
            overshoot <= bound,
            "overshoot {overshoot} beyond the bound {bound}"
        );
        assert!(
            tallies.iter().all(|t| t.refused >= clients),
            "every client was refused in the end"
        );
    }

    async fn stop(self) {
        self.proxy_b.stop_cleanly().await;
        self.proxy_a.stop_cleanly().await;
        self.ledger.stop_cleanly().await;
    }
}

/// Issue #16, N instances: two proxies spend one $5.00 account at once
/// through Kafka. Each sees the other's spend one ledger round trip late,
/// so the overshoot is bounded by N × (per-instance overshoot) + (N − 1) ×
/// one instance's spend per round trip (docs/ledger.md, Admission). The
/// round trip is measured by the proxies themselves and the bound asserted
/// with it; the figures are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_overshoot_a_balance_within_the_round_trip_bound() {
    const CLIENTS_PER_PROXY: usize = 8;
    let _heavy = HEAVY.lock().await;
    let split = TwoProxies::start().await;
    let (http, l, token) = (&split.http, &split.l, split.token.as_str());
    let balance = usd("5.00");
    let body = spend_body();
    let warmup = split.warm_up().await;

    let started = Instant::now();
    let used_up = || async {
        match ledger_balance(http, l, token).await {
            Some(left) if left <= Decimal::ZERO => Ok(()),
            other => Err(format!("ledger balance {other:?}")),
        }
    };
    let mut tallies = split
        .spend(&body, CLIENTS_PER_PROXY, "insufficient_credits", used_up)
        .await;
    let spent = warmup + tallies.iter().map(|t| t.spent).sum::<Decimal>();
    let expected = balance - spent;
    wait_for_balance(http, l, token, expected, "every answer debited").await;
    println!("spent in {:.1} s", started.elapsed().as_secs_f64());
    let overshoot = -expected;
    split
        .assert_within_bound(&mut tallies, max_cost(&body), overshoot, CLIENTS_PER_PROXY)
        .await;
    split.stop().await;
}

/// The budget `budget_id` as the ledger's credits API shows it to `token`.
async fn ledger_budget(
    http: &reqwest::Client,
    ledger: &Node,
    token: &str,
    budget_id: &str,
) -> Option<Value> {
    let body = ledger_get(http, ledger, token, "/v1/credits/budgets").await?;
    body["budgets"]
        .as_array()?
        .iter()
        .find(|b| b["budget_id"] == budget_id)
        .cloned()
}

/// The account and id of the key whose token is `token`, through the
/// admin API on `admin`.
async fn access_key_id(http: &reqwest::Client, admin: u16, token: &str) -> (String, String) {
    let (status, accounts) = admin_get(http, admin, "/accounts").await;
    assert_eq!(status, 200, "{accounts}");
    for account in accounts["data"].as_array().unwrap() {
        let account_id = account["id"].as_str().unwrap();
        let path = format!("/accounts/{account_id}/access-keys");
        let (status, keys) = admin_get(http, admin, &path).await;
        assert_eq!(status, 200, "{keys}");
        let mine = keys["data"].as_array().unwrap().iter().find(|k| {
            k["token_prefix"]
                .as_str()
                .is_some_and(|p| token.starts_with(p))
        });
        if let Some(key) = mine {
            return (
                account_id.to_owned(),
                key["id"].as_str().unwrap().to_owned(),
            );
        }
    }
    panic!("no access key for the token in {accounts}");
}

/// Issue #19, N instances: two proxies spend one refusing $1.00 key budget
/// at once through Kafka (the account's $5.00 balance never limits). The
/// overshoot is bounded as the balance's: spend ≤ amount + N × 2 × M +
/// (N − 1) × S (docs/ledger.md, "Budgets: enforcement"), S measured with
/// the round trip the proxies timed; every refusal is `budget_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_overshoot_a_key_budget_within_the_round_trip_bound() {
    const CLIENTS_PER_PROXY: usize = 8;
    let _heavy = HEAVY.lock().await;
    let split = TwoProxies::start().await;
    let (http, l, token) = (&split.http, &split.l, split.token.as_str());
    let (account_id, key_id) = access_key_id(http, split.a.admin, token).await;
    let amount = usd("1.00");
    let (status, budget) = admin_post(
        http,
        split.a.admin,
        "/budgets",
        json!({"account_id": account_id, "access_key_id": key_id, "name": "split",
               "amount": amount.to_string(), "period": "lifetime", "refuse": true}),
    )
    .await;
    assert_eq!(status, 201, "{budget}");
    let budget_id = budget["id"].as_str().unwrap().to_owned();
    // Both proxies' control planes and the ledger have the budget.
    eventually("the budget everywhere", CONVERGE_DEADLINE, || async {
        for admin in [split.a.admin, split.b.admin] {
            let (status, found) = admin_get(http, admin, &format!("/budgets/{budget_id}")).await;
            if status != 200 {
                return Err(format!("admin port {admin}: {status} {found}"));
            }
        }
        match ledger_budget(http, l, token, &budget_id).await {
            Some(_) => Ok(()),
            None => Err("the ledger does not list the budget".to_owned()),
        }
    })
    .await;
    let body = spend_body();
    let warmup = split.warm_up().await;

    let started = Instant::now();
    let used_up = || async {
        let budget = ledger_budget(http, l, token, &budget_id).await;
        match budget.as_ref().and_then(|b| decimal(&b["spent"])) {
            Some(spent) if spent >= amount => Ok(()),
            _ => Err(format!("budget {budget:?}")),
        }
    };
    let mut tallies = split
        .spend(&body, CLIENTS_PER_PROXY, "budget_exceeded", used_up)
        .await;
    let spent = warmup + tallies.iter().map(|t| t.spent).sum::<Decimal>();
    let budget = eventually("every answer in the budget", CONVERGE_DEADLINE, || async {
        let budget = ledger_budget(http, l, token, &budget_id).await;
        match budget.as_ref().and_then(|b| decimal(&b["spent"])) {
            Some(seen) if seen == spent => Ok(budget.unwrap()),
            _ => Err(format!("budget {budget:?}, expected spent {spent}")),
        }
    })
    .await;
    println!(
        "spent in {:.1} s: {spent} of the budget's {amount}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(budget["state"], "exceeded", "{budget}");
    wait_for_balance(
        http,
        l,
        token,
        usd("5.00") - spent,
        "the balance moved by the spend",
    )
    .await;
    split
        .assert_within_bound(
            &mut tallies,
            max_cost(&body),
            spent - amount,
            CLIENTS_PER_PROXY,
        )
        .await;
    split.stop().await;
}
