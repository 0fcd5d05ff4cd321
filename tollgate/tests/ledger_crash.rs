//! Crash safety of the ledger role: random ledger inputs (purchases, usage on
//! operator and own credentials, adjustments, ticks, redelivered duplicates)
//! are appended straight into the embedded event log of a store while
//! `tollgate ledger` runs on it as a child process and is SIGKILLed at random
//! moments and restarted, again and again. In the end the ledger's tables
//! must hold exactly what `audit::derive` computes from the whole log —
//! every balance and every entry, none lost, none twice — and `tollgate
//! audit` must agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration as Span, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tollgate_core::billing::{Adjustment, AdjustmentKind, Purchase, Tick};
use tollgate_core::eventlog::topics;
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, Catalog, CredentialSource, Envelope, EventBody, EventId,
    EventLog, LogRecord, Prices, TokenCounts, UsageEvent, Usd,
};
use tollgate_ledger::audit;
use tollgate_store::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const INITIAL_RECORDS: usize = 3_000;
const KILLS: usize = 7;
const FINAL_RECORDS: usize = 500;
const DEADLINE: Duration = Duration::from_secs(60);

/// Random ledger inputs on a timeline that starts tomorrow, so the ticks
/// the ledger role writes itself (at the wall clock) never move time.
struct Generator {
    rng: StdRng,
    now: DateTime<Utc>,
    accounts: Vec<String>,
    prices: Vec<Prices>,
    sent: Vec<Vec<u8>>,
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
        };
        self.seq += 1;
        UsageEvent {
            event_id: EventId::generate(),
            started_at: self.now - Span::seconds(2),
            finished_at: self.now,
            account_id: AccountId::from(account),
            access_key_id: AccessKeyId::from("ak_crash"),
            client_api: ApiSurface::Openai,
            provider: Some("openai".into()),
            model_requested: "gpt-4o".into(),
            model_served: Some("gpt-4o".into()),
            credential_source: source,
            provider_key_id: None,
            streamed: self.rng.gen_bool(0.5),
            tokens,
            tokens_estimated: false,
            prices,
            upstream_request_id: None,
            latency_us: 1_000,
            ttft_us: None,
            upstream_latency_us: None,
            status: if source.is_some() { 200 } else { 502 },
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            instance_id: Some(format!("gw_crash_{}", self.rng.gen_range(0..3))),
            instance_seq: Some(self.seq),
        }
    }

    fn next_payload(&mut self) -> Vec<u8> {
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
        let payload = serde_json::to_vec(&Envelope::new(body)).unwrap();
        self.sent.push(payload.clone());
        payload
    }

    async fn append(&mut self, log: &SqliteEventLog, n: usize) {
        for _ in 0..n {
            let payload = self.next_payload();
            log.append(LogRecord {
                topic: topics::ACCOUNT_EVENTS.to_owned(),
                key: "crash-test".to_owned(),
                payload,
            })
            .await
            .unwrap();
        }
        log.flush().await.unwrap();
    }
}

fn tollgate(config: &Path) -> Command {
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

/// The ledger's stored next offset on the account-events topic.
fn position(db: &Database) -> u64 {
    let conn = db.connect().unwrap();
    tollgate_ledger::store::position(&conn, topics::ACCOUNT_EVENTS, 0)
        .unwrap_or(None)
        .unwrap_or(0)
}

/// One past the last account-events record.
async fn log_end(log: &SqliteEventLog) -> u64 {
    audit::read_log(log)
        .await
        .unwrap()
        .last()
        .map_or(0, |r| r.offset + 1)
}

/// Ticks the ledger role wrote itself (key "tick").
async fn own_ticks(log: &SqliteEventLog) -> usize {
    audit::read_log(log)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.key == "tick")
        .count()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_killed_at_random_moments_ends_exactly_where_the_log_says() {
    let seed: u64 = std::env::var("TOLLGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (rerun with TOLLGATE_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("data/tollgate.db");
    let config = dir.path().join("tollgate.toml");
    // The ledger's own ticker: once at start, then not for an hour.
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n[ledger]\ntick_interval_ms = 3600000\n[log]\nlevel = \"warn\"\n",
            store.display()
        ),
    )
    .unwrap();
    let log_file = dir.path().join("ledger.log");

    let db = Database::open(&store, Durability::Normal).unwrap();
    let log = SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap();
    let mut generator = Generator::new(seed);
    generator.append(&log, INITIAL_RECORDS).await;

    let mut guard = Guard(None);
    let mut kills = Vec::new();
    for kill in 1..=KILLS {
        guard.0 = Some(start_ledger(&config, &log_file));
        // Keep appending while it runs, for a random 20-300 ms.
        let lifetime = Duration::from_millis(rng.gen_range(20..=300));
        let started = Instant::now();
        while started.elapsed() < lifetime {
            let n = rng.gen_range(20..200);
            generator.append(&log, n).await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1..15))).await;
        }
        let mut child = guard.0.take().unwrap();
        let exited_early = child.try_wait().unwrap();
        assert!(
            exited_early.is_none(),
            "the ledger exited on its own ({exited_early:?}):\n{}",
            std::fs::read_to_string(&log_file).unwrap_or_default()
        );
        signal(&child, "-KILL");
        let status = wait_exit(&mut child).await;
        assert!(!status.success());
        let at = position(&db);
        let end = log_end(&log).await;
        println!(
            "kill {kill}: SIGKILL after {} ms at stored position {at} of {end}",
            lifetime.as_millis()
        );
        kills.push((lifetime, at, end));
        // And more while it is down.
        let n = rng.gen_range(50..300);
        generator.append(&log, n).await;
    }
    assert!(kills.len() >= 5);
    let busy = kills.iter().filter(|(_, at, end)| at < end).count();
    println!(
        "{} kills, {busy} of them with records still to apply",
        kills.len()
    );

    // Last run: let it finish everything, then stop it properly.
    generator.append(&log, FINAL_RECORDS).await;
    let ticks_before = own_ticks(&log).await;
    guard.0 = Some(start_ledger(&config, &log_file));
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Its start tick is in the log, and it has applied through the end.
        if own_ticks(&log).await > ticks_before && position(&db) == log_end(&log).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never caught up: position {} of {}:\n{}",
            position(&db),
            log_end(&log).await,
            std::fs::read_to_string(&log_file).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut child = guard.0.take().unwrap();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child).await;
    assert!(
        status.success(),
        "the ledger stopped with {status}:\n{}",
        std::fs::read_to_string(&log_file).unwrap_or_default()
    );

    // The whole log, re-derived, against the ledger's tables.
    let records = audit::read_log(&log).await.unwrap();
    let end = records.last().unwrap().offset + 1;
    assert_eq!(position(&db), end, "the ledger applied the whole log");
    let derived = audit::derive(&records);
    let conn = db.connect().unwrap();
    let stored = audit::stored(&conn).unwrap();
    let problems = audit::compare(&derived, &stored);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(stored.balances, derived.balances, "balances");
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
        "entries, in order"
    );

    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for list in stored.entries.values() {
        for (kind, _, _) in list {
            *kinds.entry(kind.as_str()).or_default() += 1;
        }
    }
    let in_debt = stored.balances.values().filter(|b| **b < Usd::ZERO).count();
    println!(
        "{} records ({} redelivered duplicates) → entries by kind {kinds:?}; {in_debt} of {} accounts in debt",
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
            "the history produced no {kind} entry"
        );
    }
    assert!(generator.duplicates > 0 && in_debt > 0);

    let output = tollgate(&config).arg("audit").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("audit OK"),
        "tollgate audit: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
