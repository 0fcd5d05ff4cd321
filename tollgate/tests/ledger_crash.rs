//! Crash safety of the ledger role: random ledger inputs (purchases, usage on
//! operator and own credentials, adjustments, ticks, redelivered duplicates)
//! are appended straight into the event log while `tollgate ledger` runs on
//! it as a child process and is SIGKILLed at random moments and restarted,
//! again and again. In the end the ledger's tables must hold exactly what
//! `audit::derive` computes from the whole log — every balance and every
//! entry, none lost, none twice — and `tollgate audit` must agree.
//!
//! The same test runs on both backends:
//! - embedded: the log is the SQLite store the child's ledger tables live in;
//! - Kafka: a librdkafka mock cluster in this process (its brokers listen on
//!   loopback TCP, so the child reaches them; it does not answer
//!   CreateTopics, so the topics are created through the mock), with four
//!   account-events partitions; records are keyed by account, as the
//!   gateway keys them. A restarted member waits for the consumer group to
//!   rebalance first, so here each kill comes at a random moment after the
//!   restarted ledger has applied something, and there are fewer kills.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration as Span, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::{Adjustment, AdjustmentKind, Purchase, Tick};
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, Catalog, CredentialSource, Envelope, EventBody, EventId,
    Prices, TokenCounts, UsageEvent, Usd,
};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, LogRecord};
use tollgate_kafka::{KafkaConfig, KafkaEventLog};
use tollgate_ledger::audit;
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const DEADLINE: Duration = Duration::from_secs(60);
const KAFKA_PARTITIONS: i32 = 4;

type Mock = MockCluster<'static, DefaultProducerContext>;

/// How much of a beating one backend's run takes.
struct Plan {
    initial_records: usize,
    kills: usize,
    final_records: usize,
    /// Count each run's random lifetime from its first applied batch rather
    /// than from its start (Kafka: a restart waits for a group rebalance).
    lifetime_after_progress: bool,
}

const EMBEDDED_PLAN: Plan = Plan {
    initial_records: 3_000,
    kills: 7,
    final_records: 500,
    lifetime_after_progress: false,
};

const KAFKA_PLAN: Plan = Plan {
    initial_records: 1_500,
    kills: 4,
    final_records: 300,
    lifetime_after_progress: true,
};

/// Random ledger inputs on a timeline that starts tomorrow, so the ticks
/// the ledger role writes itself (at the wall clock) never move time.
struct Generator {
    rng: StdRng,
    now: DateTime<Utc>,
    accounts: Vec<String>,
    prices: Vec<Prices>,
    sent: Vec<(String, Vec<u8>)>,
    seq: u64,
    duplicates: usize,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        let catalog = Catalog::builtin().unwrap();
        let prices = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]
            .iter()
            .map(|m| catalog.model(m).unwrap().prices)
            .collect();
        // Accounts 0-2 never buy: their usage only ever makes debt.
        let accounts = (0..15).map(|i| format!("acct_crash_{i:02}")).collect();
        Generator {
            rng: StdRng::seed_from_u64(seed),
            now: Utc::now() + Span::days(1),
            accounts,
            prices,
            sent: Vec::new(),
            seq: 0,
            duplicates: 0,
        }
    }

    fn cents(&mut self, low: u64, high: u64) -> Usd {
        let cents = self.rng.gen_range(low..high);
        Usd::from_str(&format!("{}.{:02}", cents / 100, cents % 100)).unwrap()
    }

    fn usage(&mut self, account: &str) -> UsageEvent {
        let source = match self.rng.gen_range(0..10) {
            0..=5 => Some(CredentialSource::Operator),
            6..=8 => Some(CredentialSource::Byok),
            _ => None,
        };
        let prices = self.prices[self.rng.gen_range(0..self.prices.len())];
        let tokens = TokenCounts {
            input: self.rng.gen_range(0..400_000),
            cached_input: if self.rng.gen_bool(0.2) {
                self.rng.gen_range(0..100_000)
            } else {
                0
            },
            cache_write_5m: if self.rng.gen_bool(0.1) {
                self.rng.gen_range(0..20_000)
            } else {
                0
            },
            cache_write_1h: 0,
            output: self.rng.gen_range(0..60_000),
            reasoning: 0,
        };
        self.seq += 1;
        UsageEvent {
            event_id: EventId::generate(),
            started_at: self.now - Span::seconds(2),
            finished_at: self.now,
            account_id: AccountId::from(account),
            access_key_id: AccessKeyId::from("ak_crash"),
            client_api: ApiSurface::Openai,
            endpoint: None,
            provider: Some("openai".into()),
            model_requested: "gpt-4o".into(),
            model_served: Some("gpt-4o".into()),
            credential_source: source,
            provider_key_id: None,
            streamed: self.rng.gen_bool(0.5),
            tokens,
            tokens_estimated: false,
            prices,
            tool_calls: Vec::new(),
            end_user: None,
            tags: Default::default(),
            upstream_request_id: None,
            latency_us: 1_000,
            ttft_us: None,
            upstream_latency_us: None,
            status: if source.is_some() { 200 } else { 502 },
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            plan: None,
            instance_id: Some(format!("gw_crash_{}", self.rng.gen_range(0..3))),
            instance_seq: Some(self.seq),
        }
    }

    /// The next record's key (its account; for a tick, a random account's,
    /// so ticks reach the partitions that hold accounts) and payload.
    fn next_record(&mut self) -> (String, Vec<u8>) {
        // A redelivery of something already sent, now and then.
        if !self.sent.is_empty() && self.rng.gen_bool(0.05) {
            self.duplicates += 1;
            let i = self.rng.gen_range(0..self.sent.len());
            return self.sent[i].clone();
        }
        self.now += Span::seconds(self.rng.gen_range(1..4 * 3600));
        let index = self.rng.gen_range(0..self.accounts.len());
        let account = self.accounts[index].clone();
        let n = self.sent.len();
        let body = match self.rng.gen_range(0..100) {
            0..=9 if index >= 3 => {
                // Retried purchases reuse a key now and then.
                let key = format!("order-{}", self.rng.gen_range(0..(n / 3).max(1)));
                EventBody::Purchase(Purchase {
                    purchase_id: format!("pur_{account}_{key}"),
                    account_id: AccountId::from(account.as_str()),
                    amount: self.cents(500, 6_000),
                    idempotency_key: key,
                    purchased_at: self.now,
                })
            }
            10..=15 => {
                let kind = match self.rng.gen_range(0..3) {
                    0 => AdjustmentKind::Refund,
                    1 => AdjustmentKind::GoodwillCredit,
                    _ => AdjustmentKind::ManualDebit,
                };
                let key = format!("adj-{}", self.rng.gen_range(0..n.max(1)));
                EventBody::Adjustment(Adjustment {
                    adjustment_id: format!("adj_{account}_{key}"),
                    account_id: AccountId::from(account.as_str()),
                    kind,
                    amount: self.cents(1, 2_000),
                    reason: "crash test".into(),
                    idempotency_key: key,
                    at: self.now,
                })
            }
            16..=20 => EventBody::Tick(Tick { at: self.now }),
            _ => EventBody::Usage(Box::new(self.usage(&account))),
        };
        let record = (account, serde_json::to_vec(&Envelope::new(body)).unwrap());
        self.sent.push(record.clone());
        record
    }

    async fn append(&mut self, log: &dyn EventLog, n: usize) {
        for _ in 0..n {
            let (key, payload) = self.next_record();
            log.append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.to_owned(),
                key,
                payload,
            })
            .await
            .unwrap();
        }
        log.flush().await.unwrap();
    }
}

/// librdkafka's mock cluster accepts broker connections on descriptors
/// without close-on-exec: a child would inherit the broker side of this
/// process's connections. Mark every descriptor close-on-exec before spawning.
fn no_inherited_fds() {
    close_fds::set_fds_cloexec_threadsafe(3, &[]);
}

fn tollgate(config: &Path) -> Command {
    no_inherited_fds();
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

fn start_ledger(config: &Path, log_file: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .unwrap();
    tollgate(config)
        .arg("ledger")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn signal(child: &Child, signal: &str) {
    no_inherited_fds();
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} failed");
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the ledger did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ledger's stored next offset on each account-events partition.
fn positions(db: &Database, partitions: u32) -> BTreeMap<u32, u64> {
    let conn = db.connect().unwrap();
    (0..partitions)
        .map(|p| {
            let at = tollgate_ledger::sqlite::position(&conn, topics::ACCOUNT_EVENTS, p)
                .unwrap_or(None)
                .unwrap_or(0);
            (p, at)
        })
        .collect()
}

/// One past the last record of each account-events partition.
fn log_ends(records: &[tollgate_eventlog::StoredRecord], partitions: u32) -> BTreeMap<u32, u64> {
    let mut ends: BTreeMap<u32, u64> = (0..partitions).map(|p| (p, 0)).collect();
    for r in records {
        let end = ends.entry(r.partition).or_default();
        *end = (*end).max(r.offset + 1);
    }
    ends
}

/// Records applied and in the log, over all partitions.
fn total(offsets: &BTreeMap<u32, u64>) -> u64 {
    offsets.values().sum()
}

/// Ticks the ledger role wrote itself (key "tick").
fn own_ticks(records: &[tollgate_eventlog::StoredRecord]) -> usize {
    records.iter().filter(|r| r.key == "tick").count()
}

struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The event log the test appends to and the child's ledger consumes.
enum Backend {
    Embedded(Arc<SqliteEventLog>),
    /// The mock cluster is declared last so it outlives the client.
    Kafka {
        log: KafkaEventLog,
        _cluster: Mock,
    },
}

impl Backend {
    fn log(&self) -> Arc<dyn EventLog> {
        match self {
            Backend::Embedded(log) => log.clone(),
            Backend::Kafka { log, .. } => Arc::new(log.clone()),
        }
    }

    fn plan(&self) -> &'static Plan {
        match self {
            Backend::Embedded(_) => &EMBEDDED_PLAN,
            Backend::Kafka { .. } => &KAFKA_PLAN,
        }
    }
}

/// The child's configuration: its store, its own listener port, the log.
fn write_config(path: &Path, store: &Path, eventlog: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The ledger's own ticker: once at start, then not for an hour.
    std::fs::write(
        path,
        format!(
            "[storage]\npath = \"{}\"\n[ledger]\nlisten = \"127.0.0.1:{port}\"\ntick_interval_ms = 3600000\n[log]\nlevel = \"warn\"\n{eventlog}",
            store.display()
        ),
    )
    .unwrap();
}

/// A mock cluster with Tollgate's topics, the test's own client on it, and
/// the `[eventlog]`/`[kafka]` settings that point the child at it.
async fn kafka(dir: &Path) -> (Backend, String) {
    let cluster = MockCluster::new(1).unwrap();
    tollgate_kafka::create_mock_topics(&cluster, KAFKA_PARTITIONS).unwrap();
    let brokers = cluster.bootstrap_servers();
    let config = KafkaConfig {
        brokers: vec![brokers.clone()],
        spool_path: dir.join("test-spool.db"),
        replication_factor: 1,
        startup_timeout_ms: 30_000,
        delivery_timeout_ms: 60_000,
        client_id: "ledger-crash-test".into(),
        ..KafkaConfig::default()
    };
    let log = KafkaEventLog::connect(config).await.unwrap();
    let settings = format!(
        r#"[eventlog]
backend = "kafka"
[kafka]
brokers = ["{brokers}"]
spool_path = "{spool}"
replication_factor = 1
startup_timeout_ms = 30000
delivery_timeout_ms = 60000
client_id = "tollgate-crash-ledger"
[kafka.consumer]
# The mock cluster finishes a rebalance session.timeout.ms - 1 s after a
# member joined or left: keep it short.
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "500"
"#,
        spool = dir.join("data/kafka-spool.db").display(),
    );
    (
        Backend::Kafka {
            log,
            _cluster: cluster,
        },
        settings,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogKind {
    Embedded,
    Kafka,
}

async fn a_ledger_killed_at_random_moments_ends_exactly_where_the_log_says(kind: LogKind) {
    let seed: u64 = std::env::var("TOLLGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let name = format!("{kind:?}");
    println!("{name}: seed {seed} (rerun with TOLLGATE_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("data/tollgate.db");
    let config = dir.path().join("tollgate.toml");
    let log_file = dir.path().join("ledger.log");

    let db = Database::open(&store, Durability::Normal).unwrap();
    let backend = if kind == LogKind::Kafka {
        let (backend, settings) = kafka(dir.path()).await;
        write_config(&config, &store, &settings);
        backend
    } else {
        write_config(&config, &store, "");
        Backend::Embedded(Arc::new(
            SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap(),
        ))
    };
    let plan = backend.plan();
    let log = backend.log();
    let partitions = log.partitions(topics::ACCOUNT_EVENTS).await.unwrap();
    let log_text = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let mut generator = Generator::new(seed);
    generator.append(log.as_ref(), plan.initial_records).await;

    let mut guard = Guard(None);
    let mut kills = Vec::new();
    for kill in 1..=plan.kills {
        let at_start = total(&positions(&db, partitions));
        guard.0 = Some(start_ledger(&config, &log_file));
        // Keep appending while it runs, for a random 20-300 ms (from its
        // first applied batch, when the plan says so).
        let lifetime = Duration::from_millis(rng.gen_range(20..=300));
        let deadline = Instant::now() + DEADLINE;
        let mut started = (!plan.lifetime_after_progress).then(Instant::now);
        while started.is_none_or(|t| t.elapsed() < lifetime) {
            if started.is_some() {
                let n = rng.gen_range(20..200);
                generator.append(log.as_ref(), n).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1..15))).await;
            } else {
                // A trickle while the restarted ledger joins its group.
                let n = rng.gen_range(1..20);
                generator.append(log.as_ref(), n).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..100))).await;
            }
            if started.is_none() && total(&positions(&db, partitions)) > at_start {
                started = Some(Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the ledger applied nothing within {DEADLINE:?}:\n{}",
                log_text()
            );
        }
        let mut child = guard.0.take().unwrap();
        let exited_early = child.try_wait().unwrap();
        assert!(
            exited_early.is_none(),
            "{name}: the ledger exited on its own ({exited_early:?}):\n{}",
            log_text()
        );
        signal(&child, "-KILL");
        let status = wait_exit(&mut child).await;
        assert!(!status.success());
        let at = total(&positions(&db, partitions));
        let end = total(&log_ends(
            &audit::read_log(log.as_ref()).await.unwrap(),
            partitions,
        ));
        println!(
            "{name} kill {kill}: SIGKILL after {} ms at stored position {at} of {end}",
            lifetime.as_millis()
        );
        kills.push((lifetime, at, end));
        // And more while it is down.
        let n = rng.gen_range(50..300);
        generator.append(log.as_ref(), n).await;
    }
    assert_eq!(kills.len(), plan.kills);
    let busy = kills.iter().filter(|(_, at, end)| at < end).count();
    println!(
        "{name}: {} kills, {busy} of them with records still to apply",
        kills.len()
    );

    // Last run: let it finish everything, then stop it properly.
    generator.append(log.as_ref(), plan.final_records).await;
    let ticks_before = own_ticks(&audit::read_log(log.as_ref()).await.unwrap());
    guard.0 = Some(start_ledger(&config, &log_file));
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Its start ticks are in the log, and it has applied through the end.
        let records = audit::read_log(log.as_ref()).await.unwrap();
        let applied = positions(&db, partitions);
        let ends = log_ends(&records, partitions);
        if own_ticks(&records) > ticks_before && applied == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the ledger never caught up: positions {applied:?} of {ends:?}:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut child = guard.0.take().unwrap();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child).await;
    assert!(
        status.success(),
        "{name}: the ledger stopped with {status}:\n{}",
        log_text()
    );

    // The whole log, re-derived, against the ledger's tables.
    let records = audit::read_log(log.as_ref()).await.unwrap();
    assert_eq!(
        positions(&db, partitions),
        log_ends(&records, partitions),
        "{name}: the ledger applied the whole log"
    );
    let derived = audit::derive(&records).unwrap();
    let conn = db.connect().unwrap();
    let stored = audit::stored(&conn).unwrap();
    let problems = audit::compare(&derived, &stored);
    assert!(problems.is_empty(), "{name}: {problems:#?}");
    assert_eq!(stored.balances, derived.balances, "{name}: balances");
    let non_empty = |entries: &BTreeMap<String, Vec<audit::EntryKey>>| {
        entries
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        non_empty(&stored.entries),
        non_empty(&derived.entries),
        "{name}: entries, in order"
    );

    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for list in stored.entries.values() {
        for (kind, _, _) in list {
            *kinds.entry(kind.as_str()).or_default() += 1;
        }
    }
    let in_debt = stored.balances.values().filter(|b| **b < Usd::ZERO).count();
    println!(
        "{name}: {} records ({} redelivered duplicates) → entries by kind {kinds:?}; {in_debt} of {} accounts in debt",
        records.len(),
        generator.duplicates,
        stored.balances.len()
    );
    for kind in [
        "purchase",
        "usage",
        "refund",
        "goodwill_credit",
        "manual_debit",
        "expiry",
    ] {
        assert!(
            kinds.contains_key(kind),
            "{name}: the history produced no {kind} entry"
        );
    }
    assert!(generator.duplicates > 0 && in_debt > 0);

    // The CLI audit reads the same log through the configured backend.
    let output = tollgate(&config).arg("audit").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("audit OK"),
        "{name}: tollgate audit: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if let Backend::Kafka { log, .. } = &backend {
        log.close(Duration::from_secs(10)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_ledger_killed_at_random_moments_ends_exactly_where_the_log_says() {
    a_ledger_killed_at_random_moments_ends_exactly_where_the_log_says(LogKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_ledger_killed_at_random_moments_ends_exactly_where_the_log_says() {
    a_ledger_killed_at_random_moments_ends_exactly_where_the_log_says(LogKind::Kafka).await;
}
