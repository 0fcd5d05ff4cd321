//! End to end: the official OpenAI and Anthropic Python SDKs drive the real
//! `tollgate` binary (a child process configured by a TOML file plus one
//! `TOLLGATE__` variable), whose providers point at an in-process mock
//! upstream. The scripts are tests/python/sdk_openai.py, sdk_anthropic.py,
//! sdk_responses.py (the Responses API against a Responses, a chat-only and an
//! Anthropic model) and sdk_agents.py (the OpenAI Agents SDK); they add their
//! one-off mock rules (failures for failover, tool calls) through the mock's
//! control API at `TOLLGATE_MOCK_URL`.
//!
//! After the scripts, the ledger (`/v1/credits/entries`) and the usage API
//! (`/v1/usage`) are read with the access key; then the binary is stopped
//! with SIGTERM and its SQLite file is inspected: exactly the usage events the
//! scripts declared (client API, model, provider, streamed, status, tokens,
//! attempts), each priced at the catalog's (or the config's declared) prices
//! for its exact tokens, debited exactly that once in the ledger, the usage
//! API's groups summing them exactly, and neither the prompt canary
//! nor the reply canary nor any secret anywhere in the database files or the
//! gateway's logs.
//!
//! Needs Python 3 with the SDKs in tests/python/requirements.txt
//! (`./scripts/test` installs them); without them this test FAILS, it never
//! skips. `TOLLGATE_TEST_PYTHON` names another interpreter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tollgate_core::{CredentialSource, Envelope, EventBody, UsageEvent};
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;
use tollgate_mock_upstream::{MockUpstream, Rule};
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python");

/// Keep in sync with tests/python/e2e_common.py.
const CANARY: &str = "CANARY-7f3a9d";
const REPLY_CANARY: &str = "CANARY-REPLY-2b8e1c";
const REPLY_CANARY_TEXT: &str = "The secret reply word is CANARY-REPLY-2b8e1c for this test.";
/// Content chunks the mock streams for model `cut-model` before cutting (CUT_AFTER).
const CUT_AFTER_CHUNKS: usize = 2;
/// The mock's special models, served by the priced custom providers
/// `openai-mock` and `anthropic-mock` (config_toml).
const MOCK_MODELS: &[&str] = &["tool-model", "reply-canary", "cut-model", "slow-stream"];

/// Operator keys, tried in order: the second of each provider answers only
/// when a script's mock rule fails the first (keep in sync with e2e_common.py).
const OPENAI_OPERATOR_KEY: &str = "sk-e2e-operator-openai-51c0";
const OPENAI_OPERATOR_KEY_2: &str = "sk-e2e-operator-openai-2-7b14";
const ANTHROPIC_OPERATOR_KEY: &str = "sk-ant-e2e-operator-9d2e";
const ANTHROPIC_OPERATOR_KEY_2: &str = "sk-ant-e2e-operator-2-c3a8";
const GROQ_OPERATOR_KEY: &str = "gsk-e2e-operator-groq-4e61";
const GROQ_OPERATOR_KEY_2: &str = "gsk-e2e-operator-groq-2-90fd";
/// Every operator secret, for the leak scans.
const OPERATOR_KEYS: &[(&str, &str)] = &[
    (OPENAI_OPERATOR_KEY, "the OpenAI operator key"),
    (OPENAI_OPERATOR_KEY_2, "the second OpenAI operator key"),
    (ANTHROPIC_OPERATOR_KEY, "the Anthropic operator key"),
    (
        ANTHROPIC_OPERATOR_KEY_2,
        "the second Anthropic operator key",
    ),
    (GROQ_OPERATOR_KEY, "the Groq operator key"),
    (GROQ_OPERATOR_KEY_2, "the second Groq operator key"),
];
const ACCOUNT_NAME: &str = "sdk-e2e";

/// Deadlines are generous on purpose: a loaded 2-core CI box must not fail this.
const START_DEADLINE: Duration = Duration::from_secs(90);
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);
const STOP_DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child's output stream, collected line by line on a thread.
struct Captured {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
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

    /// What has arrived so far.
    fn snapshot(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything, once the child has closed the stream.
    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.snapshot()
    }
}

/// Remove whatever in the caller's environment could change what the gateway
/// or the SDKs do (config overlays, provider keys, proxies, SDK base URLs).
fn clean_env(cmd: &mut Command) -> &mut Command {
    const EXACT: &[&str] = &[
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "RUST_LOG",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("TOLLGATE_")
            || name.to_ascii_uppercase().ends_with("_PROXY")
            || EXACT.contains(&name)
        {
            cmd.env_remove(name);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Run to completion (blocking) within `deadline`; a late child is killed.
fn run_with_deadline(mut cmd: Command, deadline: Duration, what: &str) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = Captured::start(child.stdout.take().unwrap());
    let mut stderr = Captured::start(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                stdout.finish(),
                stderr.finish()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    Finished {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

fn tollgate(args: &[&str], dir: &Path) -> Finished {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd).args(args).current_dir(dir);
    run_with_deadline(cmd, START_DEADLINE, &format!("tollgate {}", args.join(" ")))
}

fn python() -> String {
    std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fail (never skip) with instructions when Python or an SDK is missing.
fn require_python_sdks() -> String {
    let python = python();
    let install = "install them with `python3 -m pip install -r tests/python/requirements.txt` \
                   (./scripts/test does this)";
    let output = Command::new(&python)
        .args([
            "-c",
            "import sys, importlib.metadata as m, openai, anthropic, agents; \
             print(sys.version.split()[0], openai.__version__, anthropic.__version__, \
             m.version('openai-agents'))",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the SDK end-to-end test needs `{python}` (Python 3) with the official openai and \
                 anthropic SDKs, but it cannot be run: {e}; {install}"
            )
        });
    assert!(
        output.status.success(),
        "the SDK end-to-end test needs the official `openai`, `anthropic` and `openai-agents` \
         Python SDKs; \
         `{python}` cannot import them; {install}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let versions = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    eprintln!("python, openai, anthropic, openai-agents: {versions}");
    versions
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The gateway as a child process
// ---------------------------------------------------------------------------

struct GatewayProcess {
    child: Child,
    stdout: Captured,
    stderr: Captured,
    base_url: String,
    /// The bootstrap access key printed on first start.
    token: String,
}

impl GatewayProcess {
    /// Start `tollgate serve` on a free port and wait for its bootstrap key
    /// and `/readyz`. A lost race for the port is retried with another one.
    async fn start(dir: &Path, mock_base: &str, db_path: &Path) -> GatewayProcess {
        GatewayProcess::start_with_env(dir, mock_base, db_path, &[]).await
    }

    /// `start`, with extra `TOLLGATE__…` overlays.
    async fn start_with_env(
        dir: &Path,
        mock_base: &str,
        db_path: &Path,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let config_path = dir.join("tollgate.toml");
            std::fs::write(&config_path, config_toml(port, mock_base, db_path)).unwrap();
            let mut cmd = Command::new(BIN);
            clean_env(&mut cmd)
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                // The file gives the anthropic provider no key: this overlay
                // must, or every Claude request fails (checked upstream-side).
                .env(
                    "TOLLGATE__PROVIDERS__ANTHROPIC__API_KEYS",
                    format!(
                        "[{}, {}]",
                        toml_str(ANTHROPIC_OPERATOR_KEY),
                        toml_str(ANTHROPIC_OPERATOR_KEY_2)
                    ),
                )
                .envs(env.iter().copied())
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("cannot start the tollgate binary");
            let stdout = Captured::start(child.stdout.take().unwrap());
            let stderr = Captured::start(child.stderr.take().unwrap());
            let mut gateway = GatewayProcess {
                child,
                stdout,
                stderr,
                base_url: format!("http://127.0.0.1:{port}"),
                token: String::new(),
            };
            match gateway.wait_ready().await {
                Ok(()) => return gateway,
                Err(why) => {
                    let _ = gateway.child.kill();
                    let _ = gateway.child.wait();
                    let report = format!(
                        "{why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        gateway.stdout.finish(),
                        gateway.stderr.finish()
                    );
                    let port_taken = report.contains("binding");
                    failures.push(report);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "the tollgate binary did not become ready:\n{}",
            failures.join("\n\n")
        );
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        // 1. The bootstrap key, printed once on a fresh database.
        loop {
            let out = self.stdout.snapshot();
            if let Some(token) = out
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("tgk_") && !l.contains(char::is_whitespace))
            {
                self.token = token.to_owned();
                break;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("tollgate exited early ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no bootstrap key (a `tgk_…` line) on stdout within {START_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // 2. Readiness.
        let client = http_client();
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.base_url)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!(
                    "tollgate exited before /readyz answered ({status})"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/readyz did not answer 200 within {START_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything logged so far (stdout and stderr).
    fn logs(&self) -> String {
        format!(
            "--- gateway stdout ---\n{}\n--- gateway stderr ---\n{}",
            self.stdout.snapshot(),
            self.stderr.snapshot()
        )
    }

    /// SIGTERM (via `kill`, by pid), then wait for the exit.
    async fn terminate(&mut self) -> Finished {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("cannot run `kill`");
        assert!(kill.success(), "`kill -TERM {pid}` failed: {kill}");
        let deadline = Instant::now() + STOP_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "tollgate did not exit within {STOP_DEADLINE:?} of SIGTERM\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        Finished {
            status,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // Only on a failed test: never leave our child running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn config_toml(port: u16, mock_base: &str, db_path: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"

[routing]
total_timeout_ms = 120000
attempt_timeout_ms = 60000
connect_timeout_ms = 10000

[providers.openai]
base_url = {mock}
api_keys = [{openai_key}, {openai_key_2}]

[providers.anthropic]
base_url = {mock}
# api_keys come from TOLLGATE__PROVIDERS__ANTHROPIC__API_KEYS

# A chat-only OpenAI-API provider: Responses requests are translated for it.
[providers.groq]
base_url = {mock}
api_keys = [{groq_key}, {groq_key_2}]

# The mock's special models (not in the catalog), priced so the operator's
# keys may answer them: one custom provider per upstream API.
[[custom_providers]]
id = "openai-mock"
base_url = {mock}
api = "openai"
models = {special}
api_keys = [{openai_key}]
[custom_providers.prices]
{prices}
[[custom_providers]]
id = "anthropic-mock"
base_url = {mock}
api = "anthropic"
models = {special}
api_keys = [{anthropic_key}]
[custom_providers.prices]
{prices}
[storage]
path = {db}

[bootstrap]
account_name = {account}

[admin]
enabled = false

[log]
level = "info"
format = "text"
"#,
        mock = toml_str(mock_base),
        openai_key = toml_str(OPENAI_OPERATOR_KEY),
        openai_key_2 = toml_str(OPENAI_OPERATOR_KEY_2),
        groq_key = toml_str(GROQ_OPERATOR_KEY),
        groq_key_2 = toml_str(GROQ_OPERATOR_KEY_2),
        anthropic_key = toml_str(ANTHROPIC_OPERATOR_KEY),
        special = format!(
            "[{}]",
            MOCK_MODELS
                .iter()
                .map(|m| toml_str(m))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        prices = MOCK_MODELS
            .iter()
            .map(|m| format!(
                "{} = {{ input = \"0.15\", output = \"0.6\" }}\n",
                toml_str(m)
            ))
            .collect::<String>(),
        db = toml_str(&db_path.display().to_string()),
        account = toml_str(ACCOUNT_NAME),
    )
}

/// Every usage event stored in the database at `db_path`.
async fn stored_usage_events(db_path: &Path) -> Vec<UsageEvent> {
    let db = Database::open(db_path, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    log.read(topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter_map(
            |r| match serde_json::from_slice::<Envelope>(&r.payload).unwrap().body {
                EventBody::Usage(event) => Some(*event),
                _ => None,
            },
        )
        .collect()
}

/// SIGTERM while streams are open and requests keep arriving: in-flight work
/// may finish for `server.shutdown_grace_ms`, then the streams are cut and
/// billed for what was sent, the log is flushed, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_cuts_streams_after_the_grace_and_keeps_every_event() {
    let mock = MockUpstream::start().await.expect("mock upstream");
    // Each stream would run ~60 s: far past the grace.
    mock.add_rule(
        Rule::for_model("slow-stream")
            .reply_text("word ".repeat(300))
            .chunk_delay(Duration::from_millis(200)),
    );
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("data").join("tollgate.db");
    let mut gateway = GatewayProcess::start_with_env(
        dir.path(),
        &mock.base_url(),
        &db_path,
        &[("TOLLGATE__SERVER__SHUTDOWN_GRACE_MS", "1500")],
    )
    .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/chat/completions", gateway.base_url);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let response = client
            .post(&url)
            .bearer_auth(&gateway.token)
            .json(&json!({"model": "openai-mock:slow-stream", "stream": true,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", gateway.logs());
        streams.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
            use futures::StreamExt;
            let mut seen = 0usize;
            while let Some(Ok(chunk)) = body.next().await {
                seen += chunk.len();
            }
            seen
        }));
    }
    // Load that keeps coming while the gateway stops.
    let (base, token) = (gateway.base_url.clone(), gateway.token.clone());
    let load = tokio::spawn(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut answered = 0usize;
        for _ in 0..200 {
            let sent = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&token)
                .json(&json!({"model": "gpt-4o-mini",
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await;
            match sent {
                Ok(response) if response.status() == 200 => answered += 1,
                _ => break,
            }
        }
        answered
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let stopped = gateway.terminate().await;
    let took = asked.elapsed();
    assert!(stopped.status.success(), "{stopped}");
    let answered = load.await.unwrap();
    for stream in streams {
        assert!(
            stream.await.unwrap() > 0,
            "each stream sent something first"
        );
    }
    println!(
        "SIGTERM with 8 open streams and requests arriving: exit after {} ms (grace 1500 ms)",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(30),
        "the streams were cut at the grace, not run to their end (~60 s)"
    );
    let events = stored_usage_events(&db_path).await;
    let cut: Vec<_> = events
        .iter()
        .filter(|e| e.model_requested == "openai-mock:slow-stream")
        .collect();
    assert_eq!(
        cut.len(),
        8,
        "every cut stream is billed: {:?}",
        events
            .iter()
            .map(|e| (&e.model_requested, e.status, e.client_disconnected))
            .collect::<Vec<_>>()
    );
    assert!(cut
        .iter()
        .all(|e| e.client_disconnected && e.tokens.output > 0));
    let plain = events.len() - cut.len();
    assert!(
        plain >= answered,
        "every answered request has its event ({plain} < {answered})"
    );
}

// ---------------------------------------------------------------------------
// What the scripts report
// ---------------------------------------------------------------------------

/// The comparable part of a stored usage event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EventKey {
    client_api: String,
    model_requested: String,
    provider: Option<String>,
    streamed: bool,
    status: u16,
    input: u64,
    output: u64,
    attempts: u32,
}

impl EventKey {
    fn of(event: &UsageEvent) -> EventKey {
        EventKey {
            client_api: event.client_api.as_str().to_owned(),
            model_requested: event.model_requested.clone(),
            provider: event.provider.clone(),
            streamed: event.streamed,
            status: event.status,
            input: event.tokens.input,
            output: event.tokens.output,
            attempts: event.attempts,
        }
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {} via {} streamed={} status={} tokens in/out={}/{} attempts={}",
            self.client_api,
            self.model_requested,
            self.provider.as_deref().unwrap_or("(none)"),
            self.streamed,
            self.status,
            self.input,
            self.output,
            self.attempts
        )
    }
}

/// An event a script declared (`EXPECT_EVENT` in e2e_common.py); a `None`
/// token count is one the gateway estimates, so any value matches. `attempts`
/// defaults to 1 for a request that reached a provider, else 0 (a script
/// declares more for failover).
#[derive(Clone, Debug, Deserialize)]
struct Expected {
    client_api: String,
    model_requested: String,
    provider: Option<String>,
    streamed: bool,
    status: u16,
    input: Option<u64>,
    output: Option<u64>,
    #[serde(default)]
    attempts: Option<u32>,
}

impl Expected {
    fn matches(&self, event: &EventKey) -> bool {
        self.client_api == event.client_api
            && self.model_requested == event.model_requested
            && self.provider == event.provider
            && self.streamed == event.streamed
            && self.status == event.status
            && self.input.is_none_or(|n| n == event.input)
            && self.output.is_none_or(|n| n == event.output)
            && self.attempts() == event.attempts
    }

    fn attempts(&self) -> u32 {
        self.attempts
            .unwrap_or_else(|| u32::from(self.provider.is_some()))
    }

    /// Exact expectations first, so wildcards cannot steal their events.
    fn wildcards(&self) -> usize {
        usize::from(self.input.is_none()) + usize::from(self.output.is_none())
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |n: Option<u64>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        write!(
            f,
            "{} → {} via {} streamed={} status={} tokens in/out={}/{} attempts={}",
            self.client_api,
            self.model_requested,
            self.provider.as_deref().unwrap_or("(none)"),
            self.streamed,
            self.status,
            count(self.input),
            count(self.output),
            self.attempts()
        )
    }
}

struct ScriptReport {
    name: &'static str,
    requests: usize,
    expected: Vec<Expected>,
    /// (event id from `x-tollgate-event-id`, model requested)
    event_ids: Vec<(String, String)>,
    output: String,
}

async fn run_script(name: &'static str, gateway: &GatewayProcess, mock_url: &str) -> ScriptReport {
    let script = Path::new(PYTHON_DIR).join(name);
    assert!(script.exists(), "missing {}", script.display());
    let mut cmd = Command::new(python());
    clean_env(&mut cmd)
        .arg(&script)
        .current_dir(PYTHON_DIR)
        .env("TOLLGATE_BASE_URL", &gateway.base_url)
        .env("TOLLGATE_KEY", &gateway.token)
        .env("TOLLGATE_MOCK_URL", mock_url)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8");
    let finished =
        tokio::task::spawn_blocking(move || run_with_deadline(cmd, SCRIPT_DEADLINE, name))
            .await
            .unwrap();
    let output = finished.to_string();
    eprintln!("===== {name}\n{}", finished.stdout.trim_end());
    assert!(
        finished.status.success(),
        "{name} failed against the tollgate binary\n{output}\n{}",
        gateway.logs()
    );
    let mut report = ScriptReport {
        name,
        requests: usize::MAX,
        expected: Vec::new(),
        event_ids: Vec::new(),
        output,
    };
    for line in finished.stdout.lines() {
        if let Some(json) = line.strip_prefix("EXPECT_EVENT ") {
            let key: Expected = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("{name}: bad EXPECT_EVENT line {line:?}: {e}"));
            report.expected.push(key);
        } else if let Some(rest) = line.strip_prefix("EXPECT_EVENT_ID ") {
            let (id, model) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("{name}: bad EXPECT_EVENT_ID line {line:?}"));
            report.event_ids.push((id.to_owned(), model.to_owned()));
        } else if let Some(n) = line.strip_prefix("REQUESTS=") {
            report.requests = n
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name}: bad REQUESTS line {line:?}: {e}"));
        }
    }
    assert_ne!(
        report.requests,
        usize::MAX,
        "{name} printed no REQUESTS=<n> line\n{}",
        report.output
    );
    assert!(
        report.requests > 0,
        "{name} sent no model requests\n{}",
        report.output
    );
    assert_eq!(
        report.requests,
        report.expected.len(),
        "{name}: REQUESTS differs from its EXPECT_EVENT lines\n{}",
        report.output
    );
    report
}

// ---------------------------------------------------------------------------
// The end-to-end test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_against_the_binary() {
    require_python_sdks();

    let mock = MockUpstream::start().await.expect("mock upstream");
    mock.add_rule(Rule::for_model("tool-model").tool_call("get_weather", json!({"city": "Paris"})));
    mock.add_rule(Rule::for_model("reply-canary").reply_text(REPLY_CANARY_TEXT));
    mock.add_rule(Rule::for_model("cut-model").cut_stream(CUT_AFTER_CHUNKS));

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let db_path = data_dir.join("tollgate.db");
    let mut gateway = GatewayProcess::start(dir.path(), &mock.base_url(), &db_path).await;
    eprintln!(
        "tollgate serving on {} (database {})",
        gateway.base_url,
        db_path.display()
    );

    let range_start = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut reports = Vec::new();
    // The mock's control API (`/__mock/rules`) is beside its `/v1`.
    let mock_url = mock.base_url().trim_end_matches("/v1").to_owned();
    for script in [
        "sdk_openai.py",
        "sdk_anthropic.py",
        "sdk_responses.py",
        "sdk_agents.py",
    ] {
        let report = run_script(script, &gateway, &mock_url).await;
        reports.push(report);
    }

    // The ledger and the usage API, read while the gateway runs; compared
    // with the stored events below.
    let debits: usize = reports
        .iter()
        .flat_map(|r| &r.expected)
        .filter(|e| e.provider.is_some())
        .count();
    let total_requests: usize = reports.iter().map(|r| r.requests).sum();
    let ledger = usage_entries(&gateway, debits).await;
    let usage_report = usage_groups(&gateway, total_requests, range_start).await;

    // Stop with SIGTERM; the gateway flushes its event log before exiting 0.
    let stopped = gateway.terminate().await;
    assert!(
        stopped.status.success(),
        "tollgate did not exit 0 on SIGTERM\n{stopped}"
    );

    // ---- Nothing secret or private in the logs or the database files. ----
    let logs = format!("{}\n{}", stopped.stdout, stopped.stderr);
    for (needle, what) in [
        (CANARY, "the prompt canary"),
        (REPLY_CANARY, "the reply canary"),
    ]
    .into_iter()
    .chain(OPERATOR_KEYS.iter().copied())
    {
        assert!(
            !logs.contains(needle),
            "{what} ({needle}) appears in the gateway's logs\n{stopped}"
        );
    }
    let db_files: Vec<PathBuf> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tollgate.db"))
        })
        .collect();
    assert!(
        db_files.iter().any(|p| p == &db_path),
        "no database file at {}",
        db_path.display()
    );
    let mut all_bytes = Vec::new();
    for file in &db_files {
        let bytes = std::fs::read(file).unwrap();
        for (needle, what) in [
            (CANARY, "the prompt canary"),
            (REPLY_CANARY, "the reply canary"),
            ("CANARY", "a canary"),
            (gateway.token.as_str(), "the bootstrap access key's token"),
        ]
        .into_iter()
        .chain(OPERATOR_KEYS.iter().copied())
        {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{what} ({needle}) was found in {}",
                file.display()
            );
        }
        all_bytes.extend_from_slice(&bytes);
    }
    // Control: the scan does see event payloads (so the absence above means something).
    assert!(
        contains(&all_bytes, b"no-such-model-e2e") && contains(&all_bytes, b"claude-haiku-4-5"),
        "the database files do not contain the stored events' model names: the canary scan is not \
         looking at the right bytes ({db_files:?})"
    );

    // ---- The stored usage events. ----
    let db = Database::open(&db_path, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    // Accounts live on the control topic.
    let accounts: Vec<tollgate_core::control::Account> = log
        .read(topics::CONTROL, 0, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter_map(
            |r| match serde_json::from_slice::<Envelope>(&r.payload).unwrap().body {
                EventBody::Control(tollgate_core::control::ControlChange::Upsert {
                    object: tollgate_core::control::ControlObject::Account(account),
                }) => Some(account),
                _ => None,
            },
        )
        .collect();
    let account = accounts
        .iter()
        .find(|a| a.name == ACCOUNT_NAME)
        .unwrap_or_else(|| panic!("no bootstrap account `{ACCOUNT_NAME}`: {accounts:?}"));
    let records = log
        .read(topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap();
    // Only usage events count; other records on the topic (control changes) do not.
    let events: Vec<UsageEvent> = records
        .iter()
        .filter_map(|r| {
            let envelope: Envelope = serde_json::from_slice(&r.payload).unwrap_or_else(|e| {
                panic!(
                    "stored record at offset {} is not an event envelope: {e}",
                    r.offset
                )
            });
            match envelope.body {
                EventBody::Usage(event) => Some(*event),
                _ => None,
            }
        })
        .collect();

    let describe = |events: &[UsageEvent]| -> String {
        events
            .iter()
            .map(|e| format!("  {}\n", EventKey::of(e)))
            .collect()
    };
    assert_eq!(
        events.len(),
        total_requests,
        "one usage event per SDK request with a valid key: the scripts sent {} ({}), the database \
         holds {}:\n{}",
        total_requests,
        reports
            .iter()
            .map(|r| format!("{}={}", r.name, r.requests))
            .collect::<Vec<_>>()
            .join(", "),
        events.len(),
        describe(&events)
    );

    let mut expected: Vec<&Expected> = reports.iter().flat_map(|r| &r.expected).collect();
    expected.sort_by_key(|e| e.wildcards());
    let mut unmatched: Vec<EventKey> = events.iter().map(EventKey::of).collect();
    unmatched.sort();
    let mut missing = Vec::new();
    for want in expected {
        match unmatched.iter().position(|got| want.matches(got)) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => missing.push(want.to_string()),
        }
    }
    if !missing.is_empty() || !unmatched.is_empty() {
        let unexpected: Vec<String> = unmatched.iter().map(ToString::to_string).collect();
        panic!(
            "stored usage events differ from what the SDK scripts did\n\
             expected but not stored:\n{}\nstored but not expected:\n{}",
            lines(&missing),
            lines(&unexpected)
        );
    }

    // Events from both SDKs, each routed to the right provider (also
    // translated); the OpenAI SDK's Responses requests also reach Groq.
    for (client, more) in [("openai", &["groq"][..]), ("anthropic", &[][..])] {
        let mut want = BTreeSet::from(["anthropic", "anthropic-mock", "openai", "openai-mock"]);
        want.extend(more);
        let providers: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.client_api.as_str() == client && e.status == 200)
            .filter_map(|e| e.provider.as_deref())
            .collect();
        assert_eq!(
            providers, want,
            "successful {client}-SDK requests should have reached both providers (and both \
             priced custom providers for the mock's special models)"
        );
    }
    for event in &events {
        let key = EventKey::of(event);
        assert_eq!(event.account_id, account.id, "account of {key}");
        if event.provider.is_some() {
            // Reached an upstream (attempts as declared, matched above),
            // with the operator's keys.
            assert_eq!(
                event.credential_source,
                Some(CredentialSource::Operator),
                "credential source of {key}"
            );
            let upstream_model = event.model_served.as_deref().unwrap_or_default();
            assert!(
                !upstream_model.is_empty() && key.model_requested.ends_with(upstream_model),
                "model_served of {key}: {:?}",
                event.model_served
            );
            assert!(
                event
                    .upstream_request_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("req_mock_")),
                "upstream request id of {key}: {:?}",
                event.upstream_request_id
            );
        }
        assert!(
            !event.client_disconnected,
            "{key} marked client_disconnected"
        );
        assert!(event.finished_at >= event.started_at, "timestamps of {key}");
        match event.status {
            200 => {
                assert_eq!(event.error_kind, None, "error_kind of {key}");
                assert!(
                    !event.tokens_estimated,
                    "tokens of {key} were estimated: the mock reports usage"
                );
            }
            502 => {
                // Cut mid-stream: what was streamed is billed, by estimate.
                assert_eq!(
                    event.error_kind.as_deref(),
                    Some("upstream_stream_error"),
                    "error_kind of {key}"
                );
                assert!(
                    event.tokens_estimated,
                    "tokens of {key} not marked estimated"
                );
                assert!(
                    event.tokens.output > 0 && event.tokens.input > 0,
                    "a stream cut after some text bills something: {key}"
                );
            }
            400 | 404 => {
                let kind = if event.status == 400 {
                    "invalid_request"
                } else {
                    "model_unknown"
                };
                assert_eq!(
                    event.error_kind.as_deref(),
                    Some(kind),
                    "error_kind of {key}"
                );
                assert_eq!(event.attempts, 0, "attempts of {key}");
                assert_eq!(event.provider, None, "provider of {key}");
            }
            other => panic!("unexpected status {other} in {key}"),
        }
    }
    let account_keys: BTreeSet<&str> = events.iter().map(|e| e.access_key_id.as_str()).collect();
    assert_eq!(
        account_keys.len(),
        1,
        "all events come from the one bootstrap key: {account_keys:?}"
    );

    check_costs(&events, &ledger, &usage_report);

    // Event ids the SDKs saw in `x-tollgate-event-id` name stored events.
    for report in &reports {
        for (id, model) in &report.event_ids {
            let event = events
                .iter()
                .find(|e| e.event_id.to_string() == *id)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: x-tollgate-event-id {id} ({model}) names no stored event",
                        report.name
                    )
                });
            assert_eq!(&event.model_requested, model, "event {id}");
        }
    }

    // ---- What the upstream saw: operator keys, never the access key; the
    // canary did travel (so its absence from storage is meaningful). ----
    let upstream = mock.requests();
    // Token counts leave no event: they are counted apart.
    let is_count = |path: &str| path.starts_with("/v1/messages/count_tokens");
    let attempted: u32 = events.iter().map(|e| e.attempts).sum();
    let generating = upstream.iter().filter(|r| !is_count(&r.path)).count();
    assert_eq!(
        generating, attempted as usize,
        "one upstream call per attempt of a request that reached a provider (no extra calls)"
    );
    for request in &upstream {
        let want_keys: &[&str] = match request.path.as_str() {
            "/v1/chat/completions" => &[
                OPENAI_OPERATOR_KEY,
                OPENAI_OPERATOR_KEY_2,
                GROQ_OPERATOR_KEY,
                GROQ_OPERATOR_KEY_2,
            ],
            "/v1/embeddings" | "/v1/responses" => &[OPENAI_OPERATOR_KEY, OPENAI_OPERATOR_KEY_2],
            path if path == "/v1/messages" || is_count(path) => {
                &[ANTHROPIC_OPERATOR_KEY, ANTHROPIC_OPERATOR_KEY_2]
            }
            other => panic!("unexpected upstream path {other}"),
        };
        assert!(
            request
                .api_key
                .as_deref()
                .is_some_and(|k| want_keys.contains(&k)),
            "upstream credential on {}: {:?}",
            request.path,
            request.api_key
        );
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&gateway.token),
                "the client's access key leaked upstream in header `{name}`"
            );
        }
    }
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages/count_tokens",
    ] {
        assert!(
            upstream
                .iter()
                .any(|r| r.path == path && r.body.to_string().contains(CANARY)),
            "no upstream request to {path} carried the canary: the prompts did not get through"
        );
    }
}

// ---------------------------------------------------------------------------
// Costs: every event's, in the ledger and the usage API
// ---------------------------------------------------------------------------

/// GET a JSON document from the gateway with the bootstrap key.
async fn get_json(gateway: &GatewayProcess, path_and_query: &str) -> serde_json::Value {
    let response = http_client()
        .get(format!("{}{path_and_query}", gateway.base_url))
        .bearer_auth(&gateway.token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "GET {path_and_query}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path_and_query}: {e}: {body}"))
}

/// Every `usage` entry of the bootstrap account's ledger (`/v1/credits/entries`),
/// once there are `want` of them (the ledger applies events asynchronously).
async fn usage_entries(gateway: &GatewayProcess, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = "/v1/credits/entries?kind=usage&limit=1000".to_owned();
            if let Some(cursor) = &after {
                path.push_str(&format!("&after={cursor}"));
            }
            let page = get_json(gateway, &path).await;
            entries.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => after = Some(cursor.to_owned()),
                None => break,
            }
        }
        if entries.len() >= want || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The usage API's groups by provider, model and status (`/v1/usage`), once
/// they count `want` requests (the analytics sink reads the log asynchronously).
async fn usage_groups(
    gateway: &GatewayProcess,
    want: usize,
    start: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let end = chrono::Utc::now() + chrono::Duration::minutes(10);
    let path = format!(
        "/v1/usage?start={}&end={}&group_by=provider,model,status",
        start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = get_json(gateway, &path).await;
        let requests: u64 = report["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["requests"].as_u64().unwrap())
            .sum();
        if requests as usize >= want || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The unit prices a request on `event`'s provider must have been billed at:
/// the catalog's, or the price the config declares for the mock's models.
fn expected_prices(event: &UsageEvent) -> tollgate_core::Prices {
    use tollgate_core::Usd;
    let provider = event.provider.as_deref().unwrap();
    let served = event.model_served.as_deref().unwrap();
    if provider.ends_with("-mock") {
        // A declared price without cache prices charges input's for them.
        let input = "0.15".parse::<Usd>().unwrap();
        return tollgate_core::Prices {
            input,
            cached_input: input,
            cache_write_5m: input,
            cache_write_1h: input,
            output: "0.6".parse::<Usd>().unwrap(),
        };
    }
    tollgate_core::Catalog::builtin()
        .unwrap()
        .provider_model(provider, served)
        .unwrap_or_else(|| panic!("{provider}:{served} is not in the catalog"))
        .prices
}

fn usd(value: &serde_json::Value, what: &str) -> tollgate_core::Usd {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a decimal string: {value}"))
        .parse()
        .unwrap_or_else(|e| panic!("{what} {value}: {e:?}"))
}

/// Each event's cost is the catalog (or declared) price of its exact tokens
/// on the operator's credentials; the ledger debits exactly that, once per
/// billed event, and the usage API's groups sum exactly the events' tokens
/// and costs.
fn check_costs(events: &[UsageEvent], ledger: &[serde_json::Value], usage: &serde_json::Value) {
    use std::collections::BTreeMap;
    use tollgate_core::pricing::cost_for;
    use tollgate_core::Usd;

    let mut billed = 0usize;
    // (provider, model served, status) → (requests, input, output, fee, upstream)
    type Totals = (u64, u64, u64, Usd, Usd);
    let mut groups: BTreeMap<(String, String, u16), Totals> = BTreeMap::new();
    for event in events {
        let key = EventKey::of(event);
        let cost = if event.provider.is_some() {
            let prices = expected_prices(event);
            assert_eq!(event.prices, prices, "prices recorded in {key}");
            cost_for(
                &event.tokens,
                &prices,
                Some(CredentialSource::Operator),
                None,
            )
        } else {
            tollgate_core::pricing::Cost::default()
        };
        let entries: Vec<&serde_json::Value> = ledger
            .iter()
            .filter(|e| e["source_id"].as_str() == Some(&event.event_id.to_string()))
            .collect();
        if cost.total() == Usd::ZERO {
            assert!(
                entries.is_empty(),
                "a ledger entry for free {key}: {entries:?}"
            );
        } else {
            billed += 1;
            assert_eq!(entries.len(), 1, "ledger entries for {key}: {entries:?}");
            let entry = entries[0];
            assert!(cost.upstream > Usd::ZERO, "no upstream cost for {key}");
            assert_eq!(
                usd(&entry["amount"], "amount"),
                Usd::ZERO - cost.total(),
                "ledger amount of {key}: {entry}"
            );
            assert_eq!(
                usd(&entry["fee"], "fee"),
                cost.fee,
                "ledger fee of {key}: {entry}"
            );
            assert_eq!(
                usd(&entry["upstream"], "upstream"),
                cost.upstream,
                "ledger upstream cost of {key}: {entry}"
            );
        }
        let group = groups
            .entry((
                event.provider.clone().unwrap_or_default(),
                // The usage API's `model` is the model served, when one was.
                event
                    .model_served
                    .clone()
                    .unwrap_or_else(|| event.model_requested.clone()),
                event.status,
            ))
            .or_insert((0, 0, 0, Usd::ZERO, Usd::ZERO));
        group.0 += 1;
        group.1 += event.tokens.input;
        group.2 += event.tokens.output;
        group.3 += cost.fee;
        group.4 += cost.upstream;
    }
    assert_eq!(
        ledger.len(),
        billed,
        "usage entries in the ledger: one per billed event\n{ledger:#?}"
    );
    let reported: BTreeMap<(String, String, u16), Totals> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                (
                    g["provider"].as_str().unwrap_or_default().to_owned(),
                    g["model"].as_str().unwrap().to_owned(),
                    u16::try_from(g["status"].as_u64().unwrap()).unwrap(),
                ),
                (
                    g["requests"].as_u64().unwrap(),
                    g["tokens"]["input"].as_u64().unwrap(),
                    g["tokens"]["output"].as_u64().unwrap(),
                    usd(&g["cost"]["fee"], "cost.fee"),
                    usd(&g["cost"]["upstream"], "cost.upstream"),
                ),
            )
        })
        .collect();
    assert_eq!(
        reported, groups,
        "the usage API's groups (provider, model, status) differ from the stored events"
    );
}

fn lines(items: &[String]) -> String {
    if items.is_empty() {
        return "  (none)\n".into();
    }
    items.iter().map(|k| format!("  {k}\n")).collect()
}

// ---------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------

#[test]
fn help_lists_commands_and_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let help = tollgate(&["--help"], dir.path());
    assert!(help.status.success(), "tollgate --help\n{help}");
    for needle in ["serve", "check-config", "keys", "TOLLGATE__", "--config"] {
        assert!(
            help.stdout.contains(needle),
            "`tollgate --help` does not mention {needle}\n{help}"
        );
    }
    let serve = tollgate(&["serve", "--help"], dir.path());
    assert!(serve.status.success(), "tollgate serve --help\n{serve}");
    for needle in ["serve", "--config"] {
        assert!(
            serve.stdout.contains(needle),
            "`tollgate serve --help` does not mention {needle}\n{serve}"
        );
    }
    // --help must not start anything or create files.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "--help created files"
    );
}

#[test]
fn check_config_accepts_a_valid_config_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ok.toml");
    let db = dir.path().join("data").join("tollgate.db");
    std::fs::write(
        &config,
        config_toml(free_port(), "http://127.0.0.1:9/v1", &db),
    )
    .unwrap();
    let out = tollgate(
        &["check-config", "--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success(), "check-config on a valid file\n{out}");
    assert!(
        !out.stdout.contains(OPENAI_OPERATOR_KEY),
        "check-config printed a secret\n{out}"
    );
    assert!(out.stdout.contains("<redacted>"), "{out}");
    assert!(!db.exists(), "check-config must not create the database");
}

#[test]
fn check_config_names_every_unpriced_custom_provider_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.toml");
    std::fs::write(
        &path,
        "[[custom_providers]]\nid = \"local\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n\
         api = \"openai\"\nmodels = [\"llama3.2\", \"qwen-unpriced\"]\n\
         [custom_providers.prices]\n\"llama3.2\" = { input = \"0\", output = \"0\" }\n\
         [[custom_providers]]\nid = \"box\"\nbase_url = \"http://10.0.0.7/v1\"\n\
         api = \"anthropic\"\nmodels = [\"box-unpriced\"]\n",
    )
    .unwrap();
    let out = tollgate(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    // A warning, not a refusal: installs from before prices existed still start.
    assert!(out.status.success(), "{out}");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "one line per unpriced model\n{out}");
    assert!(
        warnings[0].contains("`qwen-unpriced`") && warnings[0].contains("local:qwen-unpriced"),
        "{out}"
    );
    assert!(warnings[1].contains("box:box-unpriced"), "{out}");
    assert!(
        !out.stderr.contains("`llama3.2`"),
        "a priced model is not named\n{out}"
    );
    assert!(
        out.stderr.contains("2 unpriced custom-provider model(s)"),
        "{out}"
    );
    // The declared prices are part of the printed config.
    assert!(out.stdout.contains("llama3.2"), "{out}");

    // A price must be an exact decimal string: a TOML number is refused, naming the field.
    let path = dir.path().join("float.toml");
    std::fs::write(
        &path,
        "[[custom_providers]]\nid = \"local\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n\
         api = \"openai\"\nmodels = [\"m\"]\n\
         [custom_providers.prices]\nm = { input = 0.1, output = \"0\" }\n",
    )
    .unwrap();
    let out = tollgate(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(!out.status.success(), "a float price was accepted\n{out}");
    assert!(out.stderr.contains("input"), "{out}");
}

#[test]
fn check_config_rejects_invalid_configs_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "plain http to a public host",
            "[[custom_providers]]\nid = \"local\"\nbase_url = \"http://example.com/v1\"\n\
             api = \"openai\"\nmodels = [\"m\"]\n",
            "custom_providers[0].base_url",
        ),
        (
            "an unknown key",
            "[server]\nlisten = \"127.0.0.1:8080\"\nlisten_adress = \"x\"\n",
            "listen_adress",
        ),
        (
            "a bad value",
            "[routing]\ntotal_timeout_ms = 0\n",
            "routing.total_timeout_ms",
        ),
        (
            "an unknown provider",
            "[providers.opnai]\napi_keys = [\"k\"]\n",
            "providers.opnai",
        ),
        (
            "a price for a model the provider does not serve",
            "[[custom_providers]]\nid = \"local\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             api = \"openai\"\nmodels = [\"m\"]\n[custom_providers.prices]\n\
             typo = { input = \"1\", output = \"1\" }\n",
            "custom_providers[0].prices",
        ),
    ];
    for (i, (what, text, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = tollgate(
            &["check-config", "--config", path.to_str().unwrap()],
            dir.path(),
        );
        assert!(
            !out.status.success(),
            "check-config accepted a config with {what}\n{out}"
        );
        assert!(
            out.stderr.contains(field),
            "check-config's error for {what} does not name `{field}`\n{out}"
        );
    }

    // Unknown keys arriving through the environment overlay are errors too.
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd)
        .args(["check-config"])
        .env("TOLLGATE__SERVER__LISTN", "127.0.0.1:1")
        .current_dir(dir.path());
    let out = run_with_deadline(cmd, START_DEADLINE, "tollgate check-config");
    assert!(
        !out.status.success(),
        "check-config accepted TOLLGATE__SERVER__LISTN\n{out}"
    );
    assert!(out.stderr.contains("listn"), "{out}");

    // A missing config file is named.
    let out = tollgate(&["check-config", "--config", "missing.toml"], dir.path());
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("missing.toml"), "{out}");
}
