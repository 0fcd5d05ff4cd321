//! `tollgate` — run the gateway, check configuration, manage access keys.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tollgate::config::{Config, EventLogBackend, LogFormat};
use tollgate::{admin_cli, app};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Self-hostable AI gateway with billing and observability built in",
    long_about = "Tollgate accepts OpenAI (/v1/chat/completions, /v1/models) and Anthropic (/v1/messages) \
requests authenticated by Tollgate access keys, routes them to upstream providers with key and model \
failover, and records one metadata-only usage event per request.\n\n\
Configuration: a TOML file (--config, or ./tollgate.toml if present) overlaid by environment variables \
named TOLLGATE__SECTION__KEY, e.g. TOLLGATE__SERVER__LISTEN=0.0.0.0:8080. OPENAI_API_KEY and \
ANTHROPIC_API_KEY are used as operator credentials when the config sets none."
)]
struct Cli {
    /// Path to the TOML config file. Default: ./tollgate.toml if it exists, else built-in defaults.
    #[arg(long, short, env = "TOLLGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process on the embedded store (default deployment).
    #[command(
        long_about = "Run the gateway, with its usage-event log, in one process on the embedded \
store (one SQLite file, `storage.path`). On first start an account and an access key are created and the \
key is printed once.\n\nSettings come from the config file and TOLLGATE__SECTION__KEY environment \
variables (e.g. TOLLGATE__SERVER__LISTEN=0.0.0.0:8080); validate them with `tollgate check-config`. \
SIGTERM or Ctrl-C stops accepting requests and lets in-flight ones finish for `server.shutdown_grace_ms` \
(default 30 s); streams still open then are cut and billed for what was sent, and every usage event is made \
durable before the process exits. Set `[server.tls]` to serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN); every \
edge limit is a `[server]` key (README, \"Limits at the edge\")."
    )]
    Serve,
    /// Run only the gateway role (proxy + admin API) — the split-process
    /// deployment on Kafka runs one or more of these.
    Proxy,
    /// Run only the ledger role (credits): consumes usage, purchases and
    /// ticks, publishes balances, serves the credits API on `ledger.listen`.
    Ledger,
    /// Run only the analytics role: the usage sink (SQLite or ClickHouse)
    /// and the usage API on `analytics_api.listen`.
    Analytics,
    /// Apply the usage store's schema migrations (idempotent) and exit.
    Migrate,
    /// Validate the configuration (file + environment) and print it with secrets redacted.
    CheckConfig,
    /// Manage accounts, access keys, configurations, provider keys, custom
    /// providers and credits through the admin API.
    Admin(admin_cli::AdminArgs),
    /// Re-derive every account's balance and entries from the raw event log
    /// with an independent computation and compare with the ledger; exits
    /// non-zero on any difference.
    Audit,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tollgate: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config);
    match run(cli.command, config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How long the exit waits for blocking calls still running once a role has
/// stopped: by then everything durable is done, and what is left are reads
/// whose answers nobody waits for (a Kafka metadata request on a dead
/// connection is bounded only by its own timeout, a minute by default).
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Run a long-lived role on a multi-threaded runtime until it stops.
fn run_role(role: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(role);
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

/// `tollgate audit`: the ledger's tables against the configured event log.
async fn audit(config: &Config) -> anyhow::Result<Vec<String>> {
    let db = tollgate_sqlite::Database::open(&config.storage.path, config.storage.durability)?;
    let mut conn = db.connect()?;
    tollgate_ledger::sqlite::migrate(&mut conn)?;
    match config.eventlog.backend {
        EventLogBackend::Embedded => {
            let log = tollgate_sqlite::SqliteEventLog::open(&db, Default::default())?;
            Ok(tollgate_ledger::audit::audit(&log, &conn).await?)
        }
        EventLogBackend::Kafka => {
            // The audit only reads. A scratch spool of its own keeps it clear
            // of the configured spool, which a running process holds locked.
            let scratch =
                std::env::temp_dir().join(format!("tollgate-audit-{}", std::process::id()));
            let mut kafka = config.kafka.clone();
            kafka.spool_path = scratch.join("spool.db");
            let result = async {
                let log = tollgate_kafka::KafkaEventLog::connect(kafka)
                    .await
                    .context("connecting to Kafka")?;
                let problems = tollgate_ledger::audit::audit(&log, &conn).await;
                log.close(std::time::Duration::from_secs(5)).await?;
                anyhow::Ok(problems?)
            }
            .await;
            let _ = std::fs::remove_dir_all(&scratch);
            result
        }
    }
}

fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => run_role(app::serve(config, shutdown_signal())),
        Command::Proxy => run_role(app::run_only(config, app::Roles::PROXY, shutdown_signal())),
        Command::Analytics => run_role(app::run_only(
            config,
            app::Roles::ANALYTICS,
            shutdown_signal(),
        )),
        Command::Migrate => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(app::migrate(&config))?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Ledger => run_role(app::run_only(config, app::Roles::LEDGER, shutdown_signal())),
        Command::CheckConfig => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let gateway_check = runtime.block_on(async {
                // Build everything against a scratch store, so the check
                // validates the gateway without touching real state.
                let dir =
                    std::env::temp_dir().join(format!("tollgate-check-{}", std::process::id()));
                let mut probe = config.clone();
                probe.storage.path = dir.join("check.db");
                probe.secrets.master_key_file = Some(dir.join("master.key"));
                // Check the Kafka settings without needing a reachable broker.
                if probe.eventlog.backend == tollgate::config::EventLogBackend::Kafka {
                    probe.kafka.validate()?;
                    probe.eventlog.backend = tollgate::config::EventLogBackend::Embedded;
                }
                let result = app::check(&probe).await;
                let _ = std::fs::remove_dir_all(&dir);
                result
            });
            gateway_check?;
            print!("{}", config.redacted_toml());
            let unpriced = config.proxy().unpriced_models();
            for line in &unpriced {
                eprintln!("warning: {line}");
            }
            if unpriced.is_empty() {
                eprintln!("configuration OK");
            } else {
                eprintln!(
                    "configuration OK, with {} unpriced custom-provider model(s)",
                    unpriced.len()
                );
            }
            Ok(())
        }
        Command::Audit => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let problems = runtime.block_on(audit(&config))?;
            if problems.is_empty() {
                println!("audit OK: every balance and entry matches the event log");
                Ok(())
            } else {
                for problem in &problems {
                    println!("{problem}");
                }
                anyhow::bail!("audit found {} difference(s)", problems.len())
            }
        }
        Command::Admin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let url = args
                .url
                .clone()
                .unwrap_or_else(|| format!("http://{}", config.admin.listen));
            let token = match args.token.clone() {
                Some(token) => token,
                None => {
                    let file = config.admin_token_file();
                    std::fs::read_to_string(&file)
                        .with_context(|| {
                            format!(
                                "no admin token: pass --token, set TOLLGATE_ADMIN_TOKEN, or create {}",
                                file.display()
                            )
                        })?
                        .trim()
                        .to_owned()
                }
            };
            let answer = runtime.block_on(admin_cli::run(&url, &token, &args.command))?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}
