//! `tollgate-bench compare-report`: the before/after table of
//! `bench/compare.sh`. It reads what alternating runs of two builds printed
//! (the baseline's bench may predate this file, so the printed tables are
//! the interface, not a data file) and prints the median of each figure.

use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Label of the baseline build (e.g. its commit).
    #[arg(long)]
    baseline_name: String,
    /// Label of the current build.
    #[arg(long)]
    current_name: String,
    /// Printed outputs of the baseline's runs.
    #[arg(long, num_args = 1.., required = true)]
    baseline: Vec<PathBuf>,
    /// Printed outputs of the current build's runs.
    #[arg(long, num_args = 1.., required = true)]
    current: Vec<PathBuf>,
}

// Issue #15's targets (printed, never asserted).
const TARGET_ADDED_P50_C1_MS: f64 = 0.1;
const TARGET_PEER_RATIO_C16: f64 = 10.0;
/// 80 MB, in the MiB the bench prints.
const TARGET_RSS_MIB: f64 = 80e6 / 1_048_576.0;

/// What one run printed that the table uses.
#[derive(Debug, Default)]
struct Run {
    /// Scenario name → (req/s, p50 ms).
    rows: BTreeMap<String, (f64, Option<f64>)>,
    /// Memory measurement → max RSS during the hold, MiB.
    rss: BTreeMap<&'static str, f64>,
    /// Streams held open in the memory measurement.
    streams: Option<String>,
    /// "not measured" lines and non-release builds.
    notes: BTreeSet<String>,
}

const RSS_NO_ESTIMATE: &str = "no estimate yet";
const RSS_ESTIMATOR: &str = "estimator loaded";

fn parse(text: &str) -> Run {
    let mut run = Run::default();
    let mut in_latency = false;
    let mut memory: Option<&'static str> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(build) = line.strip_prefix("build        : ") {
            if build.trim() != "release" {
                run.notes.insert(format!("build: {}", build.trim()));
            }
        }
        if line.starts_with("Latency and throughput") {
            in_latency = true;
            continue;
        }
        if trimmed.is_empty() {
            in_latency = false;
        }
        if in_latency {
            parse_row(&mut run, trimmed);
        }
        if trimmed.contains(": not measured: ") {
            run.notes.insert(trimmed.to_owned());
        }
        if let Some(rest) = line.strip_prefix("Memory: gateway child RSS with ") {
            run.streams = rest.split_whitespace().next().map(str::to_owned);
            memory = if rest.contains("before any token estimate") {
                Some(RSS_NO_ESTIMATE)
            } else if rest.contains("token estimator loaded") {
                Some(RSS_ESTIMATOR)
            } else {
                None
            };
        }
        if let (Some(which), Some(rest)) = (memory, line.strip_prefix("RSS during, max of ")) {
            // "<n> samples  <MiB>  < target  verdict"
            if let Some(v) = rest.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                run.rss.insert(which, v);
            }
        }
    }
    run
}

/// A latency-table row: name, req/s, p50, … ("-" when no sample).
fn parse_row(run: &mut Run, line: &str) {
    let mut words = line.split_whitespace();
    let (Some(name), Some(rps)) = (words.next(), words.next()) else {
        return;
    };
    let Ok(rps) = rps.parse::<f64>() else {
        return; // header or rule
    };
    let p50 = words.next().and_then(|v| v.parse().ok());
    run.rows.insert(name.to_owned(), (rps, p50));
}

type Figure = Box<dyn Fn(&Run) -> Option<f64>>;
/// A target's text and its test on a value.
type Target = (String, fn(f64) -> bool);

/// A row of the table: how to read its figure from a run, and its target.
struct Metric {
    name: String,
    unit: &'static str,
    figure: Figure,
    /// Divide this side's median by the peer's median over every run of
    /// both builds: the peer is the same program in all of them, so its
    /// figure belongs to the machine, and a bench that predates the peer
    /// still gets a ratio.
    over_peer: Option<Figure>,
    target: Option<Target>,
    /// Signed figures (added latency) change by a difference, others by %.
    signed: bool,
}

fn rps(route: &str, scenario: &str) -> Figure {
    let key = format!("{route}/{scenario}");
    Box::new(move |r: &Run| r.rows.get(&key).map(|v| v.0))
}

fn p50(route: &str, scenario: &str) -> Figure {
    let key = format!("{route}/{scenario}");
    Box::new(move |r: &Run| r.rows.get(&key).and_then(|v| v.1))
}

fn added_p50(direct: &str, gateway: &str, scenario: &str) -> Figure {
    let (d, g) = (p50(direct, scenario), p50(gateway, scenario));
    Box::new(move |r: &Run| Some(g(r)? - d(r)?))
}

fn plain(name: String, unit: &'static str, figure: Figure) -> Metric {
    Metric {
        name,
        unit,
        figure,
        over_peer: None,
        target: None,
        signed: false,
    }
}

/// The rows for one scenario (`chat/c16`): HTTP/1.1, HTTP/2, the peer.
fn scenario_metrics(s: &str) -> Vec<Metric> {
    let mut out = Vec::new();
    {
        let c1 = s.ends_with("/c1");
        let added_target = c1.then(|| {
            (
                format!("<= {TARGET_ADDED_P50_C1_MS} ms"),
                (|v| v <= TARGET_ADDED_P50_C1_MS) as fn(f64) -> bool,
            )
        });
        for (direct, gateway) in [("direct", "gateway"), ("direct-h2", "gateway-h2")] {
            out.push(plain(
                format!("{s} {direct} req/s"),
                "req/s",
                rps(direct, s),
            ));
            out.push(plain(
                format!("{s} {gateway} req/s"),
                "req/s",
                rps(gateway, s),
            ));
            out.push(plain(format!("{s} {direct} p50"), "ms", p50(direct, s)));
            out.push(plain(format!("{s} {gateway} p50"), "ms", p50(gateway, s)));
            out.push(Metric {
                name: format!("{s} {gateway} added p50"),
                unit: "ms",
                figure: added_p50(direct, gateway, s),
                over_peer: None,
                // The latency target is for HTTP/1.1 clients.
                target: if direct == "direct" {
                    added_target.clone()
                } else {
                    None
                },
                signed: true,
            });
        }
        out.push(plain(
            format!("{s} portkey req/s"),
            "req/s",
            rps("portkey", s),
        ));
        out.push(plain(format!("{s} portkey p50"), "ms", p50("portkey", s)));
        out.push(Metric {
            name: format!("{s} tollgate ÷ portkey req/s"),
            unit: "×",
            figure: rps("gateway", s),
            over_peer: Some(rps("portkey", s)),
            target: s.ends_with("/c16").then(|| {
                (
                    format!(">= {TARGET_PEER_RATIO_C16:.0}×"),
                    (|v| v >= TARGET_PEER_RATIO_C16) as fn(f64) -> bool,
                )
            }),
            signed: false,
        });
    }
    out
}

fn memory_metrics() -> Vec<Metric> {
    let mut out = Vec::new();
    for which in [RSS_NO_ESTIMATE, RSS_ESTIMATOR] {
        out.push(Metric {
            name: format!("RSS max, streams open, {which}"),
            unit: "MiB",
            figure: Box::new(move |r: &Run| r.rss.get(which).copied()),
            over_peer: None,
            target: Some((format!("<= {TARGET_RSS_MIB:.1} (80 MB)"), |v| {
                v <= TARGET_RSS_MIB
            })),
            signed: false,
        });
    }
    out
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn read_runs(paths: &[PathBuf]) -> anyhow::Result<Vec<Run>> {
    paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map(|t| parse(&t))
        })
        .collect()
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let base = read_runs(&args.baseline)?;
    let cur = read_runs(&args.current)?;
    // Scenarios in the order chat, stream; then by concurrency.
    let mut scenarios: Vec<String> = base
        .iter()
        .chain(&cur)
        .flat_map(|r| r.rows.keys())
        .filter_map(|k| k.split_once('/').map(|(_, s)| s.to_owned()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    scenarios.sort_by_key(|s| {
        let c: usize = s
            .rsplit_once("/c")
            .and_then(|(_, c)| c.parse().ok())
            .unwrap_or(0);
        (!s.starts_with("chat"), c)
    });
    let streams = cur
        .iter()
        .chain(&base)
        .find_map(|r| r.streams.clone())
        .unwrap_or_else(|| "?".into());
    println!();
    println!(
        "Before / after: median over {} baseline and {} current runs, run alternately \
         (baseline = {}, current = {})",
        base.len(),
        cur.len(),
        args.baseline_name,
        args.current_name
    );
    println!(
        "{:<44} {:>6} {:>11} {:>11} {:>9} {:>19}  {:>18}  verdict (base / cur)",
        "metric", "unit", "baseline", "current", "change", "± (base / cur)", "target"
    );
    println!("{}", "-".repeat(44 + 7 + 12 * 2 + 10 + 20 + 20 + 22));
    let metrics = scenarios
        .iter()
        .flat_map(|s| scenario_metrics(s))
        .chain(memory_metrics());
    for metric in metrics {
        print_metric(&metric, &base, &cur);
    }
    println!("±: half the range (max − min) of a build's runs, to tell a change from noise");
    println!(
        "tollgate ÷ portkey: each build's median gateway req/s over Portkey's median req/s in \
         all runs (Portkey is the same program in both)"
    );
    println!(
        "memory rows: gateway RSS with {streams} concurrent open streams (HTTP/1.1), max over the hold"
    );
    println!(
        "—: not measured by that build (its bench predates the scenario, or the scenario could \
         not run: see the notes)"
    );
    print_notes("baseline", &base);
    print_notes("current", &cur);
    Ok(())
}

/// Median and half the range (max − min) of one build's figures.
fn side(metric: &Metric, runs: &[Run], peer: Option<f64>) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = runs.iter().filter_map(&metric.figure).collect();
    if metric.over_peer.is_some() {
        let peer = peer?.max(1e-9);
        values.iter_mut().for_each(|v| *v /= peer);
    }
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    Some((median(values)?, (hi - lo) / 2.0))
}

fn print_metric(metric: &Metric, base: &[Run], cur: &[Run]) {
    let peer = metric
        .over_peer
        .as_ref()
        .and_then(|p| median(base.iter().chain(cur).filter_map(p).collect()));
    let (b, c) = (side(metric, base, peer), side(metric, cur, peer));
    if b.is_none() && c.is_none() {
        return;
    }
    let digits = match metric.unit {
        "req/s" => 0,
        "ms" => 3,
        _ => 1,
    };
    let show = |v: Option<(f64, f64)>| v.map_or("—".to_owned(), |(m, _)| format!("{m:.digits$}"));
    let spread =
        |v: Option<(f64, f64)>| v.map_or("—".to_owned(), |(_, h)| format!("±{h:.digits$}"));
    let (bm, cm) = (b.map(|v| v.0), c.map(|v| v.0));
    let change = match (bm, cm) {
        (Some(b), Some(c)) if metric.signed => format!("{:+.3}", c - b),
        (Some(b), Some(c)) if b.abs() > 1e-12 => format!("{:+.1}%", (c / b - 1.0) * 100.0),
        _ => String::new(),
    };
    let (target, verdicts) = match &metric.target {
        Some((text, ok)) => {
            let v = |x: Option<f64>| x.map_or("—", |x| if ok(x) { "met" } else { "MISSED" });
            (text.clone(), format!("{} / {}", v(bm), v(cm)))
        }
        None => (String::new(), String::new()),
    };
    println!(
        "{:<44} {:>6} {:>11} {:>11} {:>9} {:>19}  {:>18}  {}",
        metric.name,
        metric.unit,
        show(b),
        show(c),
        change,
        format!("{} / {}", spread(b), spread(c)),
        target,
        verdicts
    );
}

fn print_notes(label: &str, runs: &[Run]) {
    let notes: BTreeSet<&String> = runs.iter().flat_map(|r| &r.notes).collect();
    for note in notes {
        println!("{label} note: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
build        : release

Latency and throughput (3.0 s per scenario in 3 rounds, after 500 ms warm-up; ms)
scenario                    req/s       p50       p90
-----------------------------------------------------
direct/chat/c1               5000     0.190     0.250     0.300     1.000                         100       0
gateway/chat/c1              4000     0.250     0.300     0.400     1.000                         100       0
portkey/chat/c16              900        -
  gateway-h2: not measured: the gateway does not speak HTTP/2 (cleartext, prior knowledge): x

Memory: gateway child RSS with 1000 concurrent open streams, before any token estimate (mock: …)
RSS during, max of 30 samples                      45.5       < 50  met
Memory: gateway child RSS with 1000 concurrent open streams, token estimator loaded (mock: …)
RSS during, max of 30 samples                      52.0       < 50  MISSED
";

    #[test]
    fn parses_rows_memory_and_notes() {
        let run = parse(SAMPLE);
        assert_eq!(run.rows.get("direct/chat/c1"), Some(&(5000.0, Some(0.19))));
        assert_eq!(run.rows.get("portkey/chat/c16"), Some(&(900.0, None)));
        assert_eq!(run.rows.len(), 3);
        assert_eq!(run.rss.get(RSS_NO_ESTIMATE), Some(&45.5));
        assert_eq!(run.rss.get(RSS_ESTIMATOR), Some(&52.0));
        assert_eq!(run.streams.as_deref(), Some("1000"));
        assert_eq!(run.notes.len(), 1);
        let added = added_p50("direct", "gateway", "chat/c1")(&run).unwrap_or(f64::NAN);
        assert!((added - 0.06).abs() < 1e-9);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }
}
