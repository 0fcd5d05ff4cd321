//! The gateway under test runs in a child process (`tollgate-bench
//! gateway-child`), composed exactly as `tollgate serve` composes it
//! (`tollgate::app::serve_on`: node, roles, bootstrap key, key refresh, `serve`),
//! so its RSS is its own and its threads are not the load generator's.
//!
//! Protocol: the child prints `READY <addr> <token>` once serving; it
//! shuts down gracefully when its stdin closes, flushes the event log and
//! prints `EVENTS <n>` (usage events stored).

use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tollgate::app;
use tollgate::config::Config;
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;
use tollgate_proxy::config::ProviderSettings;

/// Credential the gateway presents to the mock (the mock accepts any).
const UPSTREAM_KEY: &str = "sk-bench-operator";

#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    /// Base URL of the upstream for both openai and anthropic (…/v1).
    #[arg(long)]
    upstream: String,
    /// Directory for the embedded SQLite store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Worker threads of the gateway's runtime (default: one per core, as `tollgate serve`).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Use the Kafka event log at these brokers (comma-separated) instead of
    /// the embedded one.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// The bootstrap account's credit (default: enough that admission never
    /// refuses during a run).
    #[arg(long, default_value = "1000")]
    starting_credit_usd: String,
}

fn child_config(
    upstream: &str,
    data_dir: &Path,
    kafka_brokers: Option<&str>,
    starting_credit_usd: &str,
) -> Config {
    let mut config = Config::default();
    if let Some(brokers) = kafka_brokers {
        config.eventlog.backend = tollgate::config::EventLogBackend::Kafka;
        config.kafka.brokers = brokers.split(',').map(str::to_owned).collect();
        config.kafka.spool_path = data_dir.join("kafka-spool.db");
    }
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.storage.path = data_dir.join("tollgate.db");
    config.log.level = "warn".into();
    config.admin.enabled = false;
    config.bootstrap.starting_credit_usd = starting_credit_usd.into();
    for provider in ["openai", "anthropic"] {
        config.providers.insert(
            provider.into(),
            ProviderSettings {
                base_url: Some(upstream.to_owned()),
                api_keys: vec![UPSTREAM_KEY.into()],
            },
        );
    }
    config
}

/// Entry point of `tollgate-bench gateway-child`.
pub fn run_child(args: ChildArgs) -> anyhow::Result<()> {
    let config = child_config(
        &args.upstream,
        &args.data_dir,
        args.kafka_brokers.as_deref(),
        &args.starting_credit_usd,
    );
    // As `tollgate serve` (text logs on stderr), at warn so the table stays readable;
    // the request path logs nothing below warn anyway.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log.level))
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(serve_child(config))
}

async fn serve_child(config: Config) -> anyhow::Result<()> {
    // Exactly `tollgate serve` (proxy, ledger, admission, control plane),
    // on a port chosen by the OS; address and bootstrap token go to stdout.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        // Parent closed our stdin (or died): shut down.
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    let storage = config.storage.clone();
    let eventlog = config.eventlog.clone();
    let kafka = config.kafka.clone();
    app::serve_on(
        config,
        listener,
        async {
            let _ = rx.await;
        },
        |addr, token| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "READY {addr} {}", token.unwrap_or("-"));
            let _ = out.flush();
        },
    )
    .await?;
    let stored = match eventlog.backend {
        tollgate::config::EventLogBackend::Embedded => {
            let db = tollgate_sqlite::Database::open(&storage.path, storage.durability)?;
            let events = tollgate_sqlite::SqliteEventLog::open(&db, Default::default())?;
            usage_events(&events).await?
        }
        tollgate::config::EventLogBackend::Kafka => {
            // Count what reached Kafka, through a reader with its own spool.
            let mut reader_config = kafka.clone();
            reader_config.spool_path = storage.path.with_file_name("count-spool.db");
            let log = tollgate_kafka::KafkaEventLog::connect(reader_config).await?;
            let count = usage_events(&log).await?;
            log.close(Duration::from_secs(5)).await?;
            count
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "EVENTS {stored}")?;
    out.flush()?;
    Ok(())
}

/// Usage events in the log (the log also holds control changes, ticks, …).
async fn usage_events(log: &dyn EventLog) -> anyhow::Result<u64> {
    let mut count = 0;
    for partition in 0..log.partitions(topics::ACCOUNT_EVENTS).await? {
        let mut from = 0;
        loop {
            let batch = log
                .read(topics::ACCOUNT_EVENTS, partition, from, 50_000)
                .await?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            count += count_usage(&batch);
        }
    }
    Ok(count)
}

fn count_usage(batch: &[tollgate_eventlog::StoredRecord]) -> u64 {
    {
        batch
            .iter()
            .filter(|r| {
                matches!(
                    serde_json::from_slice::<tollgate_core::Envelope>(&r.payload).map(|e| e.body),
                    Ok(tollgate_core::EventBody::Usage(_))
                )
            })
            .count() as u64
    }
}

/// The parent's handle on a running gateway child.
pub struct GatewayChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub addr: SocketAddr,
    pub token: String,
    dir: tempfile::TempDir,
}

impl GatewayChild {
    pub fn spawn(
        upstream: &str,
        worker_threads: Option<usize>,
        kafka_brokers: Option<&str>,
        starting_credit_usd: Option<&str>,
    ) -> anyhow::Result<GatewayChild> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("gateway-child")
            .arg("--upstream")
            .arg(upstream)
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(n) = worker_threads {
            command.arg("--worker-threads").arg(n.to_string());
        }
        if let Some(brokers) = kafka_brokers {
            command.arg("--kafka-brokers").arg(brokers);
        }
        if let Some(credit) = starting_credit_usd {
            command.arg("--starting-credit-usd").arg(credit);
        }
        let mut child = command.spawn().context("starting the gateway child")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("child has no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut handle = GatewayChild {
            child,
            stdin,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: String::new(),
            dir,
        };
        // The child also prints the bootstrap banner; wait for READY.
        let mut ready = handle.next_line(Duration::from_secs(30))?;
        while !ready.starts_with("READY ") {
            ready = handle.next_line(Duration::from_secs(30))?;
        }
        let mut words = ready.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("READY"), Some(addr), Some(token)) => {
                handle.addr = addr.parse()?;
                handle.token = token.to_owned();
            }
            _ => bail!("unexpected line from the gateway child: {ready}"),
        }
        Ok(handle)
    }

    fn next_line(&self, limit: Duration) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(limit)
            .map_err(|_| anyhow!("the gateway child said nothing within {limit:?}"))
    }

    /// The child's embedded store (`child_config`'s storage path).
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.db")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size and its high-water mark, in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        proc_memory_kib(self.pid())
    }

    pub fn threads(&self) -> Option<u64> {
        proc_status_field(self.pid(), "Threads:").ok()
    }

    /// Graceful stop; returns the number of usage events the child stored.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = None;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("EVENTS ") {
                        events = n.trim().parse().ok();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if events.is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        events.ok_or_else(|| anyhow!("the gateway child did not report its event count"))
    }
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn proc_status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

pub fn proc_memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    Ok((
        proc_status_field(pid, "VmRSS:")?,
        proc_status_field(pid, "VmHWM:")?,
    ))
}
