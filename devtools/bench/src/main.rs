//! `tollgate-bench`: what the gateway costs on top of an upstream.
//!
//! Requests/s and p50/p99 latency straight to the mock upstream and through
//! the gateway (auth, metering and usage events on, embedded SQLite event
//! log), at two concurrencies, plain and streaming, over HTTP/1.1 and
//! HTTP/2, embeddings, and streamed Responses (`POST /v1/responses`, HTTP/1.1);
//! optionally through a peer gateway (Portkey's) on the same mock;
//! then a $5.00 account spent at full concurrency (its 402s before and after
//! admission's threshold, `credit.rs`); then the gateway's RSS with many
//! streams open. Prints figures next to targets; asserts nothing.
//!
//! Layout on the machine: the mock upstream runs in this process on its own
//! runtime thread, the load generator on another (the main thread); the
//! gateway runs in a child process (`tollgate-bench gateway-child`), built
//! as `tollgate serve` builds it, so its memory is measured alone.

mod budgets;
mod child;
mod cpu;
mod credit;
mod load;
mod peer;
mod report;
mod stats;

use anyhow::{bail, Context};
use bytes::Bytes;
use child::{ChildArgs, GatewayChild};
use clap::{Parser, Subcommand};
use cpu::Cpu;
use http::{HeaderName, HeaderValue};
use load::{LoadResult, OpenStreams, Proto, Target};
use peer::{PeerChild, PeerCommand};
use stats::{diff_ms, ms, Summary};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tollgate_mock_upstream::{MockOptions, MockUpstream};

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-bench",
    about = "Latency, throughput and memory of the Tollgate gateway against a mock upstream",
    long_about = "Measures requests/s and p50/p99 latency (full response and time to first byte) \
straight to an in-process mock upstream and through a Tollgate gateway child process (auth, \
metering and usage events on), at each concurrency, chat plain and streaming, embeddings and streamed \
Responses (POST /v1/responses, HTTP/1.1 only; a request is done when its stream ends, and a stream whose \
last event is not response.completed fails the run); then the gateway's RSS \
with many streams open. Prints figures next to targets; never fails on timing.\n\n\
Scenario names (for --scenario): ROUTE/KIND/cN, ROUTE direct, gateway, direct-h2, gateway-h2 (chat, stream, \
embeddings) or portkey (chat only), KIND chat, stream, embeddings or responses (direct and gateway only): \
e.g. direct/chat/c1, gateway/stream/c16, gateway/embeddings/c16, direct/responses/c1, gateway/responses/c16, \
direct-h2/chat/c16, gateway-h2/chat/c16, portkey/chat/c16; \
credit (a $5.00 account spent at the highest concurrency: 402s before the admission threshold, target 0), \
budgets (chat at c=16 without budgets and with 10 refusing budgets on the key's path, alternating rounds) and memory. \
One scenario quickly: --scenario direct/responses/c1 --duration-secs 1 --rounds 1."
)]
struct Cli {
    /// Measured seconds per scenario (after the warm-up), split over --rounds.
    #[arg(long, default_value_t = 3.0)]
    duration_secs: f64,
    /// Rounds per scenario: direct and gateway alternate round by round and
    /// their samples are pooled (first round after --warmup-ms, later ones
    /// after at most 100 ms).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Warm-up per scenario, milliseconds (requests started then are not measured).
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Run only the scenarios matching one of these (comma-separated); a
    /// filter matches when each of its `/`-parts is a part of the name, e.g.
    /// `c1`, `stream`, `gateway/chat`, `chat/c16`, `memory`. Default: all.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Concurrency levels (one persistent connection per concurrent worker).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    concurrency: Vec<usize>,
    /// Streams held open at once for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Seconds the streams are held open while RSS is sampled.
    #[arg(long, default_value_t = 3.0)]
    hold_secs: f64,
    /// Worker threads of the gateway's runtime (default: one per core, as `tollgate serve`).
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// The gateway's event log: `embedded` (SQLite) or `kafka` (librdkafka's
    /// mock cluster in this process). Compare two runs for Kafka on vs off.
    #[arg(long, default_value = "embedded")]
    eventlog: String,
    /// Pin the load generator's thread to these CPUs (a `taskset` list such
    /// as `0`). Default: the OS places it. On small VMs a cross-CPU wake-up
    /// can cost milliseconds, so where the OS puts each thread swings c=1
    /// latency by 3x from run to run; `--pin-load 0 --pin-mock 0` gives
    /// steady latency figures (everything then tends to share CPU 0).
    #[arg(long)]
    pin_load: Option<String>,
    /// Pin the mock upstream's thread to these CPUs. Default: the OS places it.
    #[arg(long)]
    pin_mock: Option<String>,
    /// Pin every thread of the gateway child to these CPUs. Default: not pinned.
    #[arg(long)]
    pin_gateway: Option<String>,
    /// Pause before opening the streams of the memory measurement, printing
    /// the gateway's pid (time to attach a profiler such as `heaptrack -p`).
    #[arg(long, default_value_t = 0.0)]
    memory_pause_secs: f64,
    /// Of the --concurrency levels, those also measured over HTTP/2
    /// (cleartext, prior knowledge; one connection carrying that many
    /// concurrent streams), straight to the mock and through the gateway.
    /// `0` measures none.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize])]
    h2_concurrency: Vec<usize>,
    /// Also measure Portkey's gateway (npm `@portkey-ai/gateway`) on the same
    /// mock, chat at each concurrency, alternating with Tollgate. `auto` (the
    /// flag alone) finds it in bench/peers/node_modules (bench/peers/install.sh
    /// puts it there) or else via `npx --no-install`; or give the path of its
    /// start-server.js, of a folder holding node_modules, or a command line
    /// (`--port=N --headless` are appended).
    #[arg(
        long,
        num_args = 0..=1,
        default_missing_value = "auto",
        value_name = "auto|PATH|COMMAND"
    )]
    peer_portkey: Option<String>,
    /// Load on the peer before its first measurement, seconds: Node's JIT
    /// needs a few thousand requests before it reaches its steady speed.
    #[arg(long, default_value_t = 3.0)]
    peer_warmup_secs: f64,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: run the gateway under test (used by the benchmark itself).
    #[command(hide = true)]
    GatewayChild(ChildArgs),
    /// Internal: the before/after table of `bench/compare.sh` (median over
    /// the printed outputs of alternating runs of two builds).
    #[command(hide = true)]
    CompareReport(report::ReportArgs),
}

// Targets printed next to the figures (never asserted).
const TARGET_ADDED_P50_MS: f64 = 0.1;
const TARGET_ADDED_P99_MS: f64 = 0.5;
const TARGET_ADDED_TTFB_MS: f64 = 0.2;
const TARGET_GATEWAY_RPS_C16: f64 = 20_000.0;
const TARGET_RSS_MIB: f64 = 50.0;
/// Issue #15: Tollgate's chat throughput at c=16 over Portkey's, same mock.
const TARGET_PEER_RATIO_C16: f64 = 10.0;

const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one sentence."}]}"#;
const EMBEDDINGS_BODY: &str =
    r#"{"model":"text-embedding-3-small","input":"Say hello in one sentence."}"#;
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one sentence."}],"stream":true}"#;
const RESPONSES_BODY: &str =
    r#"{"model":"gpt-4o-mini","input":"Say hello in one sentence.","stream":true}"#;
/// The last event of every streamed Responses answer.
const RESPONSES_FINAL_EVENT: &str = "response.completed";
const MOCK_KEY: &str = "sk-bench-direct";
/// Requests `sanity_check` sends through the gateway.
const SANITY_GATEWAY_PROBES: u64 = 3;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let result = match cli.command.take() {
        Some(Cmd::GatewayChild(args)) => child::run_child(args),
        Some(Cmd::CompareReport(args)) => report::run(&args),
        None => match cli.eventlog.as_str() {
            "embedded" => run(&cli),
            "kafka" => start_kafka_mock().and_then(|_mock| run(&cli)),
            other => Err(anyhow::anyhow!(
                "--eventlog must be embedded or kafka, not `{other}`"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Gateway,
    /// HTTP/2 (cleartext, prior knowledge) straight to the mock.
    DirectH2,
    /// HTTP/2 (cleartext, prior knowledge) to the gateway.
    GatewayH2,
    /// Portkey's gateway on the same mock (HTTP/1.1).
    Portkey,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Gateway => "gateway",
            Route::DirectH2 => "direct-h2",
            Route::GatewayH2 => "gateway-h2",
            Route::Portkey => "portkey",
        }
    }

    /// Requests on this route go through the Tollgate gateway child.
    fn via_gateway(self) -> bool {
        matches!(self, Route::Gateway | Route::GatewayH2)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Stream,
    Embeddings,
    /// `POST /v1/responses`, streamed.
    Responses,
}

impl Kind {
    /// The route and body of one request of this kind.
    fn request(self) -> (&'static str, &'static str) {
        match self {
            Kind::Chat => ("/v1/chat/completions", CHAT_BODY),
            Kind::Stream => ("/v1/chat/completions", STREAM_BODY),
            Kind::Embeddings => ("/v1/embeddings", EMBEDDINGS_BODY),
            Kind::Responses => ("/v1/responses", RESPONSES_BODY),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Stream => "stream",
            Kind::Embeddings => "embeddings",
            Kind::Responses => "responses",
        }
    }

    /// The answer is a stream (its time to first byte is reported).
    fn streamed(self) -> bool {
        matches!(self, Kind::Stream | Kind::Responses)
    }

    /// The event a streamed answer must end with to count as done.
    fn final_event(self) -> Option<&'static str> {
        (self == Kind::Responses).then_some(RESPONSES_FINAL_EVENT)
    }
}

const KINDS: [Kind; 4] = [Kind::Chat, Kind::Stream, Kind::Embeddings, Kind::Responses];

struct Row {
    route: Route,
    kind: Kind,
    concurrency: usize,
    result: LoadResult,
    total: Option<Summary>,
    ttfb: Option<Summary>,
    /// On-CPU time of each party over the scenario's runs (warm-ups included).
    cpu: Cpu,
    /// Wall time of the scenario's runs (warm-ups included).
    wall: Duration,
}

fn name(route: Route, kind: Kind, concurrency: usize) -> String {
    format!("{}/{}/c{concurrency}", route.label(), kind.label())
}

/// A filter selects a scenario when each of its `/`-separated parts is one of
/// the name's parts: `c1` selects `direct/chat/c1` but not `direct/chat/c16`.
fn selected(cli: &Cli, name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    cli.scenario.is_empty()
        || cli.scenario.iter().any(|filter| {
            filter
                .split('/')
                .filter(|p| !p.is_empty())
                .all(|p| parts.contains(&p))
        })
}

/// The routes measured at each (kind, concurrency), in the order they
/// alternate within a round.
struct Scenario {
    kind: Kind,
    concurrency: usize,
    routes: Vec<Route>,
}

fn plan(cli: &Cli) -> Vec<Scenario> {
    let mut out = Vec::new();
    for kind in KINDS {
        for &concurrency in &cli.concurrency {
            let mut routes = vec![Route::Direct, Route::Gateway];
            // Responses: HTTP/1.1 only (direct and gateway at each concurrency).
            if kind != Kind::Responses && cli.h2_concurrency.contains(&concurrency) {
                routes.extend([Route::DirectH2, Route::GatewayH2]);
            }
            // Chat only: Portkey's stream relay is not what the issue compares.
            if kind == Kind::Chat && cli.peer_portkey.is_some() {
                routes.push(Route::Portkey);
            }
            routes.retain(|&r| selected(cli, &name(r, kind, concurrency)));
            if !routes.is_empty() {
                out.push(Scenario {
                    kind,
                    concurrency,
                    routes,
                });
            }
        }
    }
    out
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if !(cli.duration_secs > 0.0 && cli.duration_secs <= 600.0) {
        bail!("--duration-secs must be in (0, 600]");
    }
    if cli.concurrency.iter().any(|&c| c == 0 || c > 4096) {
        bail!("--concurrency values must be in 1..=4096");
    }
    if !(1..=100).contains(&cli.rounds) {
        bail!("--rounds must be in 1..=100");
    }
    if !(1..=20_000).contains(&cli.streams) {
        bail!("--streams must be in 1..=20000");
    }
    let duration = Duration::from_secs_f64(cli.duration_secs);
    let warmup = Duration::from_millis(cli.warmup_ms);
    print_context(cli, duration, warmup);

    // The mock upstream: its own runtime with one worker thread.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mock-upstream")
        .enable_all()
        .build()?;
    // The load generator: its own runtime with one worker thread (connection
    // tasks keep running, and closing, between measurements).
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load-generator")
        .enable_all()
        .build()?;
    for (cpus, thread) in [
        (&cli.pin_load, "load-generator"),
        (&cli.pin_mock, "mock-upstream"),
    ] {
        if let Some(cpus) = cpus {
            if cpu::pin_own_threads(thread, cpus)? == 0 {
                bail!("no {thread} thread found to pin");
            }
        }
    }

    let scenarios = plan(cli);
    if !scenarios.is_empty() {
        load_phase(cli, &mock_rt, &load_rt, scenarios, duration, warmup)?;
    }
    if selected(cli, "credit") {
        credit_run(cli, &mock_rt, &load_rt)?;
    }
    if selected(cli, "budgets") {
        budgets_run(cli, &mock_rt, &load_rt, duration, warmup)?;
    }
    if selected(cli, "memory") {
        // Before any token estimate, then with the estimator loaded (as in
        // a gateway that has run a while): its encoding stays resident.
        memory(cli, &mock_rt, &load_rt, false)?;
        memory(cli, &mock_rt, &load_rt, true)?;
    }
    // Give the mock's tasks a moment to see its shutdown before the runtime goes.
    mock_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Throughput and latency scenarios: one mock, one gateway child (and the
/// peer, if asked) for all of them; then the tables.
fn load_phase(
    cli: &Cli,
    mock_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
    mut scenarios: Vec<Scenario>,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    let mock = mock_rt.block_on(MockUpstream::start_with(MockOptions {
        record: false,
        ..MockOptions::default()
    }))?;
    let gateway = spawn_gateway(cli, &mock.base_url())?;
    let wants_peer = scenarios.iter().any(|s| s.routes.contains(&Route::Portkey));
    let (peer, peer_error) = match cli.peer_portkey.as_deref().filter(|_| wants_peer) {
        Some(spec) => match start_peer(spec) {
            Ok(p) => (Some(p), None),
            Err(err) => (None, Some(format!("{err:#}"))),
        },
        None => (None, None),
    };
    let targets = Targets::new(mock.addr(), &gateway, peer.as_ref().map(|p| p.addr))?;
    load_rt.block_on(sanity_check(&targets))?;
    // Responses: probed only where measured (a gateway may predate the route).
    let responses_probes = load_rt.block_on(check_responses(&targets, &scenarios))?;
    // Optional routes that cannot run are reported, not fatal.
    let mut skipped = load_rt.block_on(check_optional(&targets, &scenarios, peer_error));
    if scenarios.iter().any(|s| s.routes.contains(&Route::Portkey)) {
        if let Err(err) = warm_peer(cli, load_rt, &targets) {
            skipped.push((Route::Portkey, format!("warming Portkey failed: {err:#}")));
        }
    }
    for s in &mut scenarios {
        s.routes
            .retain(|r| !skipped.iter().any(|(skip, _)| skip == r));
    }
    // A gateway that speaks HTTP/2 metered its probe too.
    let probes = SANITY_GATEWAY_PROBES
        + responses_probes
        + u64::from(
            scenarios
                .iter()
                .any(|s| s.routes.contains(&Route::GatewayH2)),
        );
    let (rss_start, _) = gateway.memory_kib()?;
    let parties = Parties {
        gateway: &gateway,
        peer: peer.as_ref(),
    };
    let rows = measure(
        cli, load_rt, &targets, &parties, &scenarios, duration, warmup,
    )?;
    let gateway_sent: u64 = rows
        .iter()
        .filter(|r| r.route.via_gateway())
        .map(|r| r.result.sent)
        .sum();
    let (rss_after, hwm_after) = gateway.memory_kib()?;
    let threads = gateway.threads();
    let peer_rss = peer.as_ref().map(PeerChild::rss_kib);
    let events = gateway.stop()?;
    drop(peer);
    print_latency_table(&rows, duration, warmup, cli.rounds);
    for (route, why) in &skipped {
        println!("  {}: not measured: {why}", route.label());
    }
    print_cpu_table(&rows);
    print_added_table(&rows);
    print_peer_table(&rows, peer_rss);
    let bad_streams = bad_streams(&rows);
    println!();
    println!(
        "Gateway child: RSS {:.1} MiB at start, {:.1} MiB after the load (peak {:.1} MiB), {} threads.",
        mib(rss_start),
        mib(rss_after),
        mib(hwm_after),
        threads.map_or("?".into(), |t| t.to_string()),
    );
    println!(
        "Usage events stored by the gateway: {events} for {gateway_sent} requests sent to it \
         + {probes} probes (metering {}).",
        if events == gateway_sent + probes {
            "complete: one event per request"
        } else if events >= gateway_sent {
            "on"
        } else {
            "INCOMPLETE"
        }
    );
    drop(mock);
    if let Some(why) = bad_streams {
        bail!("{why}");
    }
    Ok(())
}

/// Streams that did not end with their final event, per scenario: the run fails.
fn bad_streams(rows: &[Row]) -> Option<String> {
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.result.bad_streams > 0)
        .map(|r| {
            format!(
                "{}: {} of {} streams (first: {})",
                name(r.route, r.kind, r.concurrency),
                r.result.bad_streams,
                r.result.sent,
                r.result.first_bad_stream.as_deref().unwrap_or("-")
            )
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "FAILED: streams that did not end with their final event: {}",
            bad.join("; ")
        )
    })
}

fn warm_peer(
    cli: &Cli,
    load_rt: &tokio::runtime::Runtime,
    targets: &Targets,
) -> anyhow::Result<()> {
    let secs = cli.peer_warmup_secs.clamp(0.0, 600.0);
    if secs > 0.0 {
        eprint!("warming portkey (JIT) for {secs:.1} s, not measured ...");
        let warm = load_rt.block_on(load::closed_loop(
            targets.get(Route::Portkey, Kind::Chat)?,
            16,
            Duration::ZERO,
            Duration::from_secs_f64(secs),
        ))?;
        eprintln!(" {:>9.0} req/s", warm.throughput());
    }
    Ok(())
}

fn start_peer(spec: &str) -> anyhow::Result<PeerChild> {
    let command = PeerCommand::resolve(spec)?;
    eprintln!("starting peer: {} ...", command.describe());
    PeerChild::spawn(&command).with_context(|| format!("Portkey (`{}`)", command.describe()))
}

/// The processes whose CPU time each route's rows report.
struct Parties<'a> {
    gateway: &'a GatewayChild,
    peer: Option<&'a PeerChild>,
}

impl Parties<'_> {
    fn pids(&self, route: Route) -> Vec<u32> {
        match (route, self.peer) {
            (Route::Portkey, Some(peer)) => peer.pids(),
            _ => vec![self.gateway.pid()],
        }
    }
}

/// Every scenario's routes alternate round by round, so all see the same
/// machine (thread placement on the cores drifts over seconds).
fn measure(
    cli: &Cli,
    load_rt: &tokio::runtime::Runtime,
    targets: &Targets,
    parties: &Parties<'_>,
    scenarios: &[Scenario],
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    let rounds = cli.rounds.max(1);
    let per_round = duration.div_f64(rounds as f64);
    for scenario in scenarios {
        let (kind, concurrency) = (scenario.kind, scenario.concurrency);
        let first = rows.len();
        for &route in &scenario.routes {
            rows.push(Row {
                route,
                kind,
                concurrency,
                result: LoadResult::default(),
                total: None,
                ttfb: None,
                cpu: Cpu::default(),
                wall: Duration::ZERO,
            });
        }
        for round in 0..rounds {
            let round_warmup = if round == 0 {
                warmup
            } else {
                warmup.min(Duration::from_millis(100))
            };
            for (i, &route) in scenario.routes.iter().enumerate() {
                let label = name(route, kind, concurrency);
                eprint!("running {label:<22} round {}/{rounds} ...", round + 1);
                let target = targets.get(route, kind)?;
                let pids = parties.pids(route);
                let before = Cpu::snapshot(&pids);
                let wall = Instant::now();
                let result = load_rt.block_on(load::closed_loop(
                    target,
                    concurrency,
                    round_warmup,
                    per_round,
                ))?;
                let wall = wall.elapsed();
                let cpu = Cpu::snapshot(&pids).since(&before);
                eprintln!(" {:>9.0} req/s", result.throughput());
                let row = &mut rows[first + i];
                row.result.merge(result);
                row.cpu.add(&cpu);
                row.wall += wall;
            }
        }
        for row in &mut rows[first..] {
            row.total = Summary::of(&mut row.result.latencies);
            row.ttfb = Summary::of(&mut row.result.ttfbs);
        }
    }
    Ok(rows)
}

fn spawn_gateway(cli: &Cli, upstream: &str) -> anyhow::Result<GatewayChild> {
    spawn_gateway_with(cli, upstream, None)
}

/// A gateway child whose bootstrap account holds `starting_credit_usd`
/// (default: enough never to be refused).
fn spawn_gateway_with(
    cli: &Cli,
    upstream: &str,
    starting_credit_usd: Option<&str>,
) -> anyhow::Result<GatewayChild> {
    let gateway = GatewayChild::spawn(
        upstream,
        cli.gateway_threads,
        kafka_brokers(),
        starting_credit_usd,
    )?;
    if let Some(cpus) = &cli.pin_gateway {
        cpu::pin(gateway.pid(), cpus, true)?;
    }
    Ok(gateway)
}

struct Targets {
    targets: Vec<(Route, Kind, Target)>,
}

impl Targets {
    fn new(
        mock: SocketAddr,
        gateway: &GatewayChild,
        peer: Option<SocketAddr>,
    ) -> anyhow::Result<Targets> {
        let direct_auth = HeaderValue::from_str(&format!("Bearer {MOCK_KEY}"))?;
        let gateway_auth = HeaderValue::from_str(&format!("Bearer {}", gateway.token))?;
        let t =
            |addr, auth: &HeaderValue, (path, body): (&'static str, &'static str), proto| Target {
                addr,
                path,
                authorization: auth.clone(),
                extra_headers: Vec::new(),
                body: Bytes::from_static(body.as_bytes()),
                proto,
                final_event: None,
            };
        let mut targets = Vec::new();
        for kind in KINDS {
            let body = kind.request();
            targets.extend([
                (
                    Route::Direct,
                    kind,
                    t(mock, &direct_auth, body, Proto::Http1),
                ),
                (
                    Route::Gateway,
                    kind,
                    t(gateway.addr, &gateway_auth, body, Proto::Http1),
                ),
                (
                    Route::DirectH2,
                    kind,
                    t(mock, &direct_auth, body, Proto::H2),
                ),
                (
                    Route::GatewayH2,
                    kind,
                    t(gateway.addr, &gateway_auth, body, Proto::H2),
                ),
            ]);
            if let Some(peer) = peer {
                // Portkey forwards the client's key to the provider (the mock
                // accepts any) and reaches the mock as a custom OpenAI host.
                let mut target = t(peer, &direct_auth, body, Proto::Http1);
                target.extra_headers = vec![
                    (
                        HeaderName::from_static("x-portkey-provider"),
                        HeaderValue::from_static("openai"),
                    ),
                    (
                        HeaderName::from_static("x-portkey-custom-host"),
                        HeaderValue::from_str(&format!("http://{mock}/v1"))?,
                    ),
                ];
                targets.push((Route::Portkey, kind, target));
            }
        }
        for (_, kind, target) in &mut targets {
            target.final_event = kind.final_event();
        }
        Ok(Targets { targets })
    }

    fn get(&self, route: Route, kind: Kind) -> anyhow::Result<&Target> {
        self.targets
            .iter()
            .find(|(r, k, _)| *r == route && *k == kind)
            .map(|(_, _, t)| t)
            .ok_or_else(|| anyhow::anyhow!("no target for {}", route.label()))
    }
}

/// One chat exchange: 200 with an OpenAI chat completion body.
async fn check_chat(label: &str, target: &Target) -> anyhow::Result<()> {
    let ex = load::probe(target).await?;
    if !ex.status.is_success() {
        bail!(
            "{label}: HTTP {}: {}",
            ex.status,
            String::from_utf8_lossy(&ex.body)
        );
    }
    let body: serde_json::Value =
        serde_json::from_slice(&ex.body).context("response is not JSON")?;
    if body.pointer("/choices/0/message/content").is_none() {
        bail!("{label}: unexpected body {body}");
    }
    Ok(())
}

/// One exchange each way before measuring: both answer 200 with the
/// expected shape, and the gateway metered the request.
async fn sanity_check(targets: &Targets) -> anyhow::Result<()> {
    check_chat("direct chat", targets.get(Route::Direct, Kind::Chat)?).await?;
    check_chat("gateway chat", targets.get(Route::Gateway, Kind::Chat)?).await?;
    let ex = load::probe(targets.get(Route::Gateway, Kind::Stream)?).await?;
    let text = String::from_utf8_lossy(&ex.body);
    if !ex.status.is_success() || !text.contains("data: [DONE]") {
        bail!("gateway stream: HTTP {}: {text}", ex.status);
    }
    if !ex.headers.contains_key("x-tollgate-event-id") {
        bail!("gateway stream: no x-tollgate-event-id header");
    }
    for (label, route) in [("direct", Route::Direct), ("gateway", Route::Gateway)] {
        let ex = load::probe(targets.get(route, Kind::Embeddings)?).await?;
        let body: serde_json::Value = serde_json::from_slice(&ex.body).unwrap_or_default();
        if !ex.status.is_success() || body.pointer("/data/0/embedding").is_none() {
            bail!(
                "{label} embeddings: HTTP {}: {}",
                ex.status,
                String::from_utf8_lossy(&ex.body)
            );
        }
    }
    Ok(())
}

/// One streamed Responses exchange on each route the plan measures it on:
/// 200 and a stream ending with `response.completed`. Returns the probes
/// sent through the gateway (each is metered).
async fn check_responses(targets: &Targets, scenarios: &[Scenario]) -> anyhow::Result<u64> {
    let mut gateway_probes = 0;
    for route in [Route::Direct, Route::Gateway] {
        let planned = scenarios
            .iter()
            .any(|s| s.kind == Kind::Responses && s.routes.contains(&route));
        if !planned {
            continue;
        }
        let ex = load::probe(targets.get(route, Kind::Responses)?).await?;
        gateway_probes += u64::from(route.via_gateway());
        let label = route.label();
        if !ex.status.is_success() {
            bail!(
                "{label} responses: POST /v1/responses answered HTTP {}: {}",
                ex.status,
                String::from_utf8_lossy(&ex.body)
            );
        }
        if let Some(why) = load::check_final_event(&ex.body, RESPONSES_FINAL_EVENT) {
            bail!("{label} responses: {why}");
        }
    }
    Ok(gateway_probes)
}

/// Probe the optional routes the plan uses (HTTP/2, the peer); returns
/// those that cannot be measured, with why. Gateway HTTP/2 probes are not
/// in `SANITY_GATEWAY_PROBES`: a gateway that speaks it meters one more.
async fn check_optional(
    targets: &Targets,
    scenarios: &[Scenario],
    peer_error: Option<String>,
) -> Vec<(Route, String)> {
    let used = |route| scenarios.iter().any(|s| s.routes.contains(&route));
    let mut skipped = Vec::new();
    for (route, what) in [
        (Route::DirectH2, "the mock upstream"),
        (Route::GatewayH2, "the gateway"),
    ] {
        if !used(route) {
            continue;
        }
        let probe = match targets.get(route, Kind::Chat) {
            Ok(target) => check_chat(route.label(), target).await,
            Err(err) => Err(err),
        };
        if let Err(err) = probe {
            skipped.push((
                route,
                format!(
                    "{what} does not speak HTTP/2 (cleartext, prior knowledge): {}",
                    one_line(&format!("{err:#}"))
                ),
            ));
        }
    }
    if used(Route::Portkey) {
        let probe = match (peer_error, targets.get(Route::Portkey, Kind::Chat)) {
            (Some(why), _) => Err(why),
            (None, Ok(target)) => check_chat("portkey chat", target)
                .await
                .map_err(|e| format!("{e:#}")),
            (None, Err(err)) => Err(format!("{err:#}")),
        };
        if let Err(why) = probe {
            skipped.push((
                Route::Portkey,
                format!("Portkey failed: {}", one_line(&why)),
            ));
        }
    }
    skipped
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_context(cli: &Cli, duration: Duration, warmup: Duration) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let profile = if cfg!(debug_assertions) {
        "DEBUG build: figures are meaningless, use `cargo run --release -p tollgate-bench`"
    } else {
        "release"
    };
    println!("Tollgate gateway benchmark");
    println!("==========================");
    println!("machine      : {cores} cores ({cpu}), {mem} RAM, Linux {kernel}");
    println!("build        : {profile}");
    println!(
        "layout       : mock upstream = 1 runtime thread in the bench process; load generator = \
         1 runtime thread; gateway = child process, {} runtime workers + event-log \
         writer thread; all share the {cores} cores",
        cli.gateway_threads
            .map_or(format!("{cores} (default)"), |n| n.to_string())
    );
    let pin = |p: Option<&str>| p.map_or("any CPU".to_owned(), |c| format!("CPU {c}"));
    println!(
        "pinning      : load generator {}, mock {}, gateway {} (see --pin-* in --help)",
        pin(cli.pin_load.as_deref()),
        pin(cli.pin_mock.as_deref()),
        pin(cli.pin_gateway.as_deref())
    );
    println!(
        "gateway      : built as `tollgate serve` does (tollgate::app::serve_on): access-key auth \
         (bootstrap key), metering, usage events into the {} event log, control plane tailed \
         every {} ms, ledger and credit admission on",
        match kafka_brokers() {
            Some(_) => "Kafka (librdkafka mock cluster; local spool first)",
            None => "embedded SQLite (WAL, durability=normal, temp dir)",
        },
        tollgate::app::CONTROL_TAIL_INTERVAL.as_millis()
    );
    print_client_context(cli);
    println!(
        "per scenario : {:.1} s measured in {} rounds (the routes alternating), first after \
         {} ms warm-up; concurrency {:?}; percentiles from every sample (nearest rank)",
        duration.as_secs_f64(),
        cli.rounds,
        warmup.as_millis(),
        cli.concurrency
    );
    println!(
        "requests     : POST /v1/chat/completions {CHAT_BODY} (streaming adds \"stream\":true); \
         POST /v1/embeddings {EMBEDDINGS_BODY}; POST /v1/responses {RESPONSES_BODY} (done when \
         the stream ends; it must end with {RESPONSES_FINAL_EVENT})"
    );
    println!(
        "mock reply   : {:?} ({} words; a stream is role chunk + one chunk per word + finish + usage + [DONE]; \
         a Responses stream is created, in_progress, item and part added, one delta per word, text, part \
         and item done, completed with usage)",
        tollgate_mock_upstream::DEFAULT_REPLY,
        tollgate_mock_upstream::DEFAULT_REPLY.split_whitespace().count()
    );
    println!();
}

fn print_client_context(cli: &Cli) {
    println!(
        "client       : hyper http1, one persistent keep-alive connection per worker, TCP_NODELAY, \
         closed loop; latency = send → last body byte, TTFB = send → first body byte"
    );
    let h2: Vec<usize> = cli
        .concurrency
        .iter()
        .copied()
        .filter(|c| cli.h2_concurrency.contains(c))
        .collect();
    if h2.is_empty() {
        println!("http/2       : not measured (--h2-concurrency)");
    } else {
        println!(
            "http/2       : direct-h2 and gateway-h2 at concurrency {h2:?}: hyper http2, cleartext \
             with prior knowledge, ONE connection carrying all the workers' concurrent streams"
        );
    }
    match &cli.peer_portkey {
        Some(spec) => println!(
            "peer         : Portkey's gateway (npm @portkey-ai/gateway, `{spec}`), Node.js child \
             process, default settings, on the same mock as a custom OpenAI host \
             (x-portkey-provider: openai, x-portkey-custom-host); chat only, http1 as above; \
             {:.1} s of unmeasured load first (JIT warm-up)",
            cli.peer_warmup_secs
        ),
        None => println!("peer         : not measured (--peer-portkey)"),
    }
}

fn print_latency_table(rows: &[Row], duration: Duration, warmup: Duration, rounds: usize) {
    println!();
    println!(
        "Latency and throughput ({:.1} s per scenario in {rounds} rounds, after {} ms warm-up; ms)",
        duration.as_secs_f64(),
        warmup.as_millis()
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7}",
        "scenario",
        "req/s",
        "p50",
        "p90",
        "p99",
        "max",
        "ttfb p50",
        "ttfb p99",
        "samples",
        "errors"
    );
    let _ = writeln!(out, "{}", "-".repeat(22 + 11 + 10 * 4 + 11 * 2 + 10 + 8));
    for row in rows {
        let (p50, p90, p99, max) = row.total.map_or_else(
            || ("-".into(), "-".into(), "-".into(), "-".into()),
            |s| (ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max)),
        );
        let (t50, t99) = match row.ttfb.filter(|_| row.kind.streamed()) {
            Some(t) => (ms(t.p50), ms(t.p99)),
            None => ("".into(), "".into()),
        };
        let _ = writeln!(
            out,
            "{:<22} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7}",
            name(row.route, row.kind, row.concurrency),
            row.result.throughput(),
            p50,
            p90,
            p99,
            max,
            t50,
            t99,
            row.result.latencies.len(),
            row.result.errors
        );
    }
    print!("{out}");
    for row in rows {
        if let Some(why) = &row.result.first_error {
            println!(
                "  {}: first error: {why}",
                name(row.route, row.kind, row.concurrency)
            );
        }
    }
}

fn print_cpu_table(rows: &[Row]) {
    println!();
    println!(
        "CPU time per request (µs on CPU, warm-ups included) and cores busy (of {}); \
         for portkey rows the gateway column is Portkey's processes",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>11}",
        "scenario",
        "load gen",
        "mock",
        "gateway",
        "gw workers",
        "gw eventlog",
        "total",
        "cores busy"
    );
    println!("{}", "-".repeat(22 + 10 * 3 + 12 * 2 + 10 + 12));
    for row in rows {
        let sent = row.result.sent.max(1) as f64;
        let us = |ns: u64| ns as f64 / 1e3 / sent;
        // Direct rows: the gateway is idle, its figure would be noise.
        let shown = |ns: u64, tollgate_only: bool| {
            if row.route.via_gateway() || (row.route == Route::Portkey && !tollgate_only) {
                format!("{:.1}", us(ns))
            } else {
                "-".into()
            }
        };
        println!(
            "{:<22} {:>9.1} {:>9.1} {:>9} {:>11} {:>11} {:>9.1} {:>11.2}",
            name(row.route, row.kind, row.concurrency),
            us(row.cpu.load_generator),
            us(row.cpu.mock),
            shown(row.cpu.gateway(), false),
            shown(row.cpu.gateway_workers, true),
            shown(row.cpu.gateway_event_log, true),
            us(row.cpu.total()),
            row.cpu.total() as f64 / row.wall.as_nanos().max(1) as f64,
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// One line of a targets table: metric, value, target, verdict.
type Line = (String, String, String, &'static str);

fn line(metric: String, value: String, target: Option<(String, bool)>) -> Line {
    match target {
        Some((target, ok)) => (metric, value, target, verdict(ok)),
        None => (metric, value, String::new(), ""),
    }
}

fn find_row(rows: &[Row], route: Route, kind: Kind, c: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.route == route && r.kind == kind && r.concurrency == c)
}

fn print_added_table(rows: &[Row]) {
    let mut lines = Vec::new();
    let mut concurrencies: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    for (direct, gateway, prefix) in [
        (Route::Direct, Route::Gateway, ""),
        (Route::DirectH2, Route::GatewayH2, "h2 "),
    ] {
        for kind in KINDS {
            for &c in &concurrencies {
                if let (Some(d), Some(g)) = (
                    find_row(rows, direct, kind, c),
                    find_row(rows, gateway, kind, c),
                ) {
                    let label = format!("{prefix}{}", name(gateway, kind, c));
                    let label = label.replacen(&format!("{}/", gateway.label()), "", 1);
                    // The targets are for chat over HTTP/1.1, as clients mostly speak it.
                    let targets = prefix.is_empty() && matches!(kind, Kind::Chat | Kind::Stream);
                    added_lines(&mut lines, d, g, &label, targets);
                }
            }
        }
    }
    print_lines(
        "Added by the gateway (gateway − direct; targets are printed, not asserted)",
        lines,
    );
}

fn added_lines(lines: &mut Vec<Line>, d: &Row, g: &Row, label: &str, targets: bool) {
    let (Some(dt), Some(gt)) = (d.total, g.total) else {
        return;
    };
    let c1 = targets && g.concurrency == 1;
    let when = |ok: bool, target: String| c1.then_some((target, ok));
    let p50 = diff_ms(gt.p50, dt.p50);
    let p99 = diff_ms(gt.p99, dt.p99);
    lines.push(line(
        format!("{label}: added p50"),
        format!("{p50:+.3} ms"),
        when(
            p50 <= TARGET_ADDED_P50_MS,
            format!("<= {TARGET_ADDED_P50_MS} ms"),
        ),
    ));
    lines.push(line(
        format!("{label}: added p99"),
        format!("{p99:+.3} ms"),
        when(
            p99 < TARGET_ADDED_P99_MS,
            format!("< {TARGET_ADDED_P99_MS} ms"),
        ),
    ));
    if let (true, Some(dt), Some(gt)) = (g.kind.streamed(), d.ttfb, g.ttfb) {
        let t50 = diff_ms(gt.p50, dt.p50);
        let t99 = diff_ms(gt.p99, dt.p99);
        lines.push(line(
            format!("{label}: added TTFB p50"),
            format!("{t50:+.3} ms"),
            when(
                t50 < TARGET_ADDED_TTFB_MS,
                format!("< {TARGET_ADDED_TTFB_MS} ms"),
            ),
        ));
        lines.push(line(
            format!("{label}: added TTFB p99"),
            format!("{t99:+.3} ms"),
            None,
        ));
    }
    let ratio = g.result.throughput() / d.result.throughput().max(1e-9);
    let rps_target = targets && g.kind == Kind::Chat && g.concurrency == 16;
    lines.push(line(
        format!("{label}: gateway req/s"),
        format!(
            "{:.0} ({:.0}% of direct)",
            g.result.throughput(),
            ratio * 100.0
        ),
        rps_target.then(|| {
            (
                format!(">= {TARGET_GATEWAY_RPS_C16:.0}"),
                g.result.throughput() >= TARGET_GATEWAY_RPS_C16,
            )
        }),
    ));
}

/// Tollgate beside Portkey on the same mock, chat, at each concurrency.
fn print_peer_table(rows: &[Row], peer_rss_kib: Option<u64>) {
    let mut lines = Vec::new();
    for peer in rows.iter().filter(|r| r.route == Route::Portkey) {
        let c = peer.concurrency;
        let label = format!("chat/c{c}");
        let (Some(pt), Some(gateway)) = (peer.total, find_row(rows, Route::Gateway, Kind::Chat, c))
        else {
            continue;
        };
        let (g_rps, p_rps) = (gateway.result.throughput(), peer.result.throughput());
        lines.push(line(
            format!("{label}: portkey req/s, p50"),
            format!("{p_rps:.0}, {} ms", ms(pt.p50)),
            None,
        ));
        if let Some(gt) = gateway.total {
            lines.push(line(
                format!("{label}: tollgate req/s, p50"),
                format!("{g_rps:.0}, {} ms", ms(gt.p50)),
                None,
            ));
        }
        let ratio = g_rps / p_rps.max(1e-9);
        lines.push(line(
            format!("{label}: tollgate ÷ portkey req/s"),
            format!("{ratio:.1}×"),
            (c == 16).then(|| {
                (
                    format!(">= {TARGET_PEER_RATIO_C16:.0}×"),
                    ratio >= TARGET_PEER_RATIO_C16,
                )
            }),
        ));
        if let Some(dt) = find_row(rows, Route::Direct, Kind::Chat, c).and_then(|d| d.total) {
            lines.push(line(
                format!("{label}: portkey added p50"),
                format!("{:+.3} ms", diff_ms(pt.p50, dt.p50)),
                None,
            ));
        }
    }
    if let (false, Some(kib)) = (lines.is_empty(), peer_rss_kib) {
        lines.push(line(
            "portkey RSS after the load".into(),
            format!("{:.1} MiB", mib(kib)),
            None,
        ));
    }
    print_lines(
        "Peer gateway on the same mock (Portkey, Node.js; chat over HTTP/1.1)",
        lines,
    );
}

fn print_lines(title: &str, lines: Vec<Line>) {
    if lines.is_empty() {
        return;
    }
    println!();
    println!("{title}");
    println!(
        "{:<36} {:>28}  {:>10}  verdict",
        "metric", "value", "target"
    );
    println!("{}", "-".repeat(36 + 1 + 28 + 2 + 10 + 2 + 7));
    for (metric, value, target, verdict) in lines {
        println!("{metric:<36} {value:>28}  {target:>10}  {verdict}");
    }
}

/// Issue #16: a $5.00 account spent at the highest --concurrency through a
/// fresh gateway child; prints the throughput and the 402s before and after
/// the spend reached the admission rule's threshold.
fn credit_run(
    cli: &Cli,
    mock_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let concurrency = cli.concurrency.iter().copied().max().unwrap_or(16);
    let balance: tollgate_core::Usd = "5.00".parse()?;
    let body = credit::body();
    let max_cost = credit::max_cost(&body)?;
    let threshold = max_cost * rust_decimal::Decimal::from(concurrency as u64);
    let mock = mock_rt.block_on(MockUpstream::start_with(MockOptions {
        record: false,
        ..MockOptions::default()
    }))?;
    let gateway = spawn_gateway_with(cli, &mock.base_url(), Some("5.00"))?;
    let target = Target {
        addr: gateway.addr,
        path: "/v1/chat/completions",
        authorization: HeaderValue::from_str(&format!("Bearer {}", gateway.token))?,
        extra_headers: Vec::new(),
        body: Bytes::from(body),
        proto: Proto::Http1,
        final_event: None,
    };
    eprint!("running credit/$5.00/c{concurrency} ...");
    let spend = load_rt.block_on(credit::spend(
        &target,
        concurrency,
        (balance, threshold),
        Duration::from_secs(2),
        Duration::from_secs(120),
    ))?;
    eprintln!(" done");
    let events = gateway.stop()?;
    drop(mock);
    let rps = spend.admitted as f64 / spend.spending.as_secs_f64().max(1e-9);
    println!();
    println!("== credit: a $5.00 account at c={concurrency} (issue #16; gpt-4o, one request's maximum cost {max_cost})");
    println!(
        "throughput   : {rps:.0} req/s admitted ({} in {:.2} s, until the credit was spent); {events} usage events stored",
        spend.admitted,
        spend.spending.as_secs_f64()
    );
    println!(
        "402 before   : {} while balance − spend > {concurrency} × maximum = {threshold}   (target 0: {})",
        spend.early_402,
        verdict(spend.early_402 == 0)
    );
    println!(
        "402 after    : {}; spent {} of {balance} (client view; overshoot {})",
        spend.late_402,
        spend.spent,
        (spend.spent - balance).max(tollgate_core::Usd::ZERO)
    );
    if spend.errors > 0 {
        println!(
            "errors       : {} (first: {})",
            spend.errors,
            spend.first_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Issue #19: chat at c=16 through two gateway children on one mock, one
/// without budgets and one with `budgets::BUDGETS` refusing budgets on the
/// key's path (never reached), in alternating rounds; prints both req/s.
fn budgets_run(
    cli: &Cli,
    mock_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    const CONCURRENCY: usize = 16;
    if kafka_brokers().is_some() {
        println!("== budgets: skipped (writes budgets into the embedded store; run without --eventlog kafka)");
        return Ok(());
    }
    let mock = mock_rt.block_on(MockUpstream::start_with(MockOptions {
        record: false,
        ..MockOptions::default()
    }))?;
    let plain = spawn_gateway(cli, &mock.base_url())?;
    let budgeted = spawn_gateway(cli, &mock.base_url())?;
    let chat = |gateway: &GatewayChild| {
        Targets::new(mock.addr(), gateway, None)
            .and_then(|t| t.get(Route::Gateway, Kind::Chat).cloned())
    };
    let targets = [chat(&plain)?, chat(&budgeted)?];
    let store = load_rt.block_on(budgets::Store::open(&budgeted))?;
    load_rt.block_on(store.install(&targets[1]))?;
    let labels = ["without budgets", "with 10 budgets"];
    let mut results = [LoadResult::default(), LoadResult::default()];
    let rounds = cli.rounds.max(1);
    let per_round = duration.div_f64(rounds as f64);
    for round in 0..rounds {
        let round_warmup = if round == 0 {
            warmup
        } else {
            warmup.min(Duration::from_millis(100))
        };
        // Who goes first alternates too, so neither always runs on a machine
        // the other just warmed (or left busy).
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let target = &targets[i];
            eprint!(
                "running budgets/{}/c{CONCURRENCY} round {}/{rounds} ...",
                labels[i],
                round + 1
            );
            let result = load_rt.block_on(load::closed_loop(
                target,
                CONCURRENCY,
                round_warmup,
                per_round,
            ))?;
            eprintln!(" {:>9.0} req/s", result.throughput());
            results[i].merge(result);
        }
    }
    drop((plain, budgeted, mock));
    println!();
    println!(
        "== budgets: chat at c={CONCURRENCY}, {rounds} alternating rounds (issue #19; 5 key + 5 account budgets, all refusing, never reached; enforcement on)"
    );
    for (label, result) in labels.iter().zip(&mut results) {
        let summary = Summary::of(&mut result.latencies);
        let p50 = summary.map_or_else(|| "-".to_owned(), |s| ms(s.p50));
        println!(
            "{label:<16}: {:>9.0} req/s   p50 {p50} ms   errors {}",
            result.throughput(),
            result.errors
        );
    }
    let ratio = results[1].throughput() / results[0].throughput().max(1e-9);
    println!("with ÷ without : {ratio:.3}");
    Ok(())
}

/// RSS of a fresh gateway child, idle and with `--streams` streams open
/// (mock: one chunk per 100 ms, a reply long enough to outlast the hold).
fn memory(
    cli: &Cli,
    mock_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
    estimator_loaded: bool,
) -> anyhow::Result<()> {
    let n = cli.streams;
    let hold = Duration::from_secs_f64(cli.hold_secs.clamp(0.5, 120.0));
    let chunk_delay = Duration::from_millis(100);
    // Long enough to outlast ramp-up + hold with margin.
    let words = ((hold.as_secs_f64() + 60.0) / chunk_delay.as_secs_f64()) as usize;
    let reply = vec!["token"; words].join(" ");
    let mock = mock_rt.block_on(MockUpstream::start_with(MockOptions {
        record: false,
        reply,
        chunk_delay,
        ..MockOptions::default()
    }))?;
    let gateway = spawn_gateway(cli, &mock.base_url())?;
    let targets = Targets::new(mock.addr(), &gateway, None)?;
    let label = if estimator_loaded {
        "estimator-loaded"
    } else {
        "no-estimate-yet"
    };
    eprint!("running memory/{n}-streams/{label} ...");
    let (rss_fresh, _) = gateway.memory_kib()?;
    // Warm the gateway's pools and allocator a little with short requests.
    let warm = load_rt.block_on(load::closed_loop(
        targets.get(Route::Gateway, Kind::Chat)?,
        16,
        Duration::ZERO,
        Duration::from_millis(500),
    ))?;
    if estimator_loaded {
        // One stream the client leaves mid-way: the gateway estimates its
        // tokens, which loads the model's token encoding for good.
        load_rt.block_on(async {
            let stream = OpenStreams::open(targets.get(Route::Gateway, Kind::Stream)?, 1).await?;
            stream.wait_all_open(1, Duration::from_secs(10)).await?;
            let _ = stream.close().await;
            anyhow::Ok(())
        })?;
        std::thread::sleep(Duration::from_millis(1_500));
    } else {
        std::thread::sleep(Duration::from_millis(200));
    }
    if cli.memory_pause_secs > 0.0 {
        eprintln!(
            " gateway pid {}: pausing {:.1} s ...",
            gateway.pid(),
            cli.memory_pause_secs
        );
        std::thread::sleep(Duration::from_secs_f64(cli.memory_pause_secs.min(600.0)));
    }
    let (rss_idle, _) = gateway.memory_kib()?;

    let started = Instant::now();
    let (open_took, samples, open_during, close) = load_rt.block_on(async {
        let streams = OpenStreams::open(targets.get(Route::Gateway, Kind::Stream)?, n).await?;
        let opened = streams.wait_all_open(n, Duration::from_secs(60)).await;
        let open_took = started.elapsed();
        let mut samples = Vec::new();
        if opened.is_ok() {
            let until = Instant::now() + hold;
            while Instant::now() < until {
                samples.push(gateway.memory_kib()?.0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let open_during = streams.open_now();
        let close = streams.close().await;
        opened?;
        anyhow::Ok((open_took, samples, open_during, close))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, hwm) = gateway.memory_kib()?;
    let threads = gateway.threads();
    eprintln!(" done");
    let events = gateway.stop()?;
    drop(mock);

    print_memory(&MemoryFigures {
        n,
        estimator_loaded,
        words,
        chunk_delay,
        warm_sent: warm.sent,
        rss_fresh,
        rss_idle,
        samples,
        rss_after,
        hwm,
        open_took,
        open_during,
        threads,
        events,
        close,
    });
    Ok(())
}

/// What `memory` measured, for `print_memory`.
struct MemoryFigures {
    n: usize,
    estimator_loaded: bool,
    words: usize,
    chunk_delay: Duration,
    warm_sent: u64,
    rss_fresh: u64,
    rss_idle: u64,
    /// RSS every 100 ms while the streams were held open, KiB.
    samples: Vec<u64>,
    rss_after: u64,
    hwm: u64,
    open_took: Duration,
    open_during: usize,
    threads: Option<u64>,
    events: u64,
    /// Streams that failed, and the first failure.
    close: (usize, Option<String>),
}

fn print_memory(m: &MemoryFigures) {
    let MemoryFigures {
        n,
        estimator_loaded,
        words,
        chunk_delay,
        rss_fresh,
        rss_idle,
        rss_after,
        hwm,
        events,
        ..
    } = *m;
    let samples = &m.samples;
    let during_max = samples.iter().copied().max().unwrap_or(0);
    let during_avg = if samples.is_empty() {
        0
    } else {
        samples.iter().sum::<u64>() / samples.len() as u64
    };
    println!();
    println!(
        "Memory: gateway child RSS with {n} concurrent open streams, {} (mock: 1 chunk / {} ms, \
         {words}-word reply; {n} client connections + {n} upstream connections)",
        if estimator_loaded {
            "token estimator loaded"
        } else {
            "before any token estimate"
        },
        chunk_delay.as_millis()
    );
    println!("{:<44} {:>10}  {:>10}  verdict", "measure", "MiB", "target");
    println!("{}", "-".repeat(44 + 1 + 10 + 2 + 10 + 2 + 7));
    println!("{:<44} {:>10.1}", "RSS fresh (after start)", mib(rss_fresh));
    println!(
        "{:<44} {:>10.1}",
        format!("RSS idle (after {} warm-up requests)", m.warm_sent),
        mib(rss_idle)
    );
    println!(
        "{:<44} {:>10.1}  {:>10}  {}",
        format!("RSS during, max of {} samples", samples.len()),
        mib(during_max),
        format!("< {TARGET_RSS_MIB:.0}"),
        verdict(mib(during_max) < TARGET_RSS_MIB)
    );
    println!("{:<44} {:>10.1}", "RSS during, mean", mib(during_avg));
    println!(
        "{:<44} {:>10.1}",
        "RSS after the streams closed",
        mib(rss_after)
    );
    println!("{:<44} {:>10.1}", "peak RSS (VmHWM)", mib(hwm));
    println!(
        "per open stream: {:.1} KiB ((during max − idle) / {n}); all {n} open after {:.2} s; {} \
         still open at the end of the hold; gateway threads {}; usage events stored {events}",
        during_max.saturating_sub(rss_idle) as f64 / n as f64,
        m.open_took.as_secs_f64(),
        m.open_during,
        m.threads.map_or("?".into(), |t| t.to_string()),
    );
    if estimator_loaded {
        println!(
            "note: before the idle figure, one stream was left mid-way, so the gateway loaded the \
             token encoding it estimates with (as a gateway that has run a while has); every \
             figure from the idle one on includes it"
        );
    } else {
        println!(
            "note: no token estimate has run yet, so the token encoding is not loaded; closing the \
             streams mid-way loads it, so the figures after the close include it"
        );
    }
    if m.close.0 > 0 {
        println!(
            "  {} streams failed; first: {}",
            m.close.0,
            m.close.1.as_deref().unwrap_or_default()
        );
    }
}

/// With `--eventlog kafka`: the bootstrap servers of librdkafka's mock
/// cluster, which lives in this process (in `main`) for the whole run.
static KAFKA_BROKERS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn kafka_brokers() -> Option<&'static str> {
    KAFKA_BROKERS.get().map(String::as_str)
}

type MockKafka = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock cluster holding Tollgate's topics; the gateway child produces to
/// it over TCP.
fn start_kafka_mock() -> anyhow::Result<MockKafka> {
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    mock.create_topic("tollgate.account-events", 12, 1)?;
    mock.create_topic("tollgate.control", 1, 1)?;
    mock.create_topic("tollgate.balances", 12, 1)?;
    mock.create_topic("tollgate.alerts", 12, 1)?;
    let _ = KAFKA_BROKERS.set(mock.bootstrap_servers());
    Ok(mock)
}
