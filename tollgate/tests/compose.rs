//! The full stack's `docker-compose.yml`, checked without a container engine:
//! - `docker-compose config -q` (Debian's docker-compose 1.29) validates it;
//! - each Tollgate service's environment, as compose resolves it (with no
//!   variables of ours set, so the file's defaults apply), is fed — alone —
//!   to the binary's own `tollgate check-config`, which must accept it;
//! - the services run the Kafka event log and ClickHouse analytics, listen
//!   where their health checks, published ports and `dashboards/prometheus.yml`
//!   expect, keep their data on named volumes, and images are pinned;
//! - the Prometheus config passes `promtool check config`, and the
//!   Dockerfile is multi-stage and runs the binary as a non-root user.
//!
//! Fails — never skips — without docker-compose or promtool
//! (`./scripts/test` installs both).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A command in the repository root with none of our variables (TOLLGATE*,
/// provider keys, compose's own) inherited.
fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(repo());
    for (name, _) in std::env::vars() {
        if name.starts_with("TOLLGATE")
            || name.starts_with("COMPOSE_")
            || name.starts_with("DOCKER_")
            || name.starts_with("CLICKHOUSE_")
            || name.starts_with("GRAFANA_")
            || name.ends_with("_API_KEY")
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn run(mut cmd: Command, what: &str, hint: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); {hint}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const COMPOSE_HINT: &str =
    "install docker-compose (apt-get install docker-compose; ./scripts/test does)";

/// The compose file as docker-compose resolves it (interpolation, merge keys).
fn resolved() -> Value {
    let mut cmd = clean("docker-compose");
    cmd.args(["-f", "docker-compose.yml", "config"]);
    let out = run(cmd, "docker-compose config", COMPOSE_HINT);
    serde_yaml::from_slice(&out.stdout).unwrap()
}

fn services(config: &Value) -> &serde_yaml::Mapping {
    config["services"].as_mapping().unwrap()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("unexpected value {other:?}"),
    }
}

/// A service's environment as (name, value) pairs (map or list form).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = text(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment: {other:?}"),
    }
}

fn command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::Sequence(items) => items.iter().map(text).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => vec![],
    }
}

/// The Tollgate services: (name, role, environment).
fn tollgate_services(config: &Value) -> Vec<(String, String, BTreeMap<String, String>)> {
    services(config)
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(name, s)| {
            let role = command(s)
                .first()
                .cloned()
                .unwrap_or_else(|| panic!("{name:?} has no command"));
            (text(name), role, environment(s))
        })
        .collect()
}

/// `TOLLGATE_*` variables (single underscore) the binary reads.
const BINARY_VARS: &[&str] = &[
    "TOLLGATE_MASTER_KEY",
    "TOLLGATE_ADMIN_TOKEN",
    "TOLLGATE_ADMIN_URL",
    "TOLLGATE_CONFIG",
];

#[test]
fn compose_file_validates() {
    let mut cmd = clean("docker-compose");
    cmd.args(["-f", "docker-compose.yml", "config", "-q"]);
    run(cmd, "docker-compose config -q", COMPOSE_HINT);
}

#[test]
fn every_tollgate_service_environment_passes_check_config() {
    let config = resolved();
    let roles = tollgate_services(&config);
    let mut seen: Vec<&str> = roles.iter().map(|(_, r, _)| r.as_str()).collect();
    seen.sort_unstable();
    assert_eq!(seen, ["analytics", "ledger", "proxy"]);
    let source = [
        std::fs::read_to_string(repo().join("tollgate/src/app.rs")).unwrap(),
        std::fs::read_to_string(repo().join("tollgate/src/node.rs")).unwrap(),
        std::fs::read_to_string(repo().join("tollgate/src/admin_cli.rs")).unwrap(),
        std::fs::read_to_string(repo().join("tollgate/src/main.rs")).unwrap(),
    ]
    .concat();
    for (name, role, env) in &roles {
        // What the distributed deployment needs, by the config's own names.
        for (key, want) in [
            ("TOLLGATE__EVENTLOG__BACKEND", "kafka"),
            ("TOLLGATE__KAFKA__BROKERS", "[kafka:9092]"),
            ("TOLLGATE__KAFKA__CREATE_TOPICS", "true"),
            ("TOLLGATE__KAFKA__REPLICATION_FACTOR", "1"),
            ("TOLLGATE__ANALYTICS__BACKEND", "clickhouse"),
            (
                "TOLLGATE__ANALYTICS__CLICKHOUSE__URL",
                "http://clickhouse:8123",
            ),
            ("TOLLGATE__ANALYTICS__CLICKHOUSE__VALIDATION", "true"),
            ("TOLLGATE__ANALYTICS__CLICKHOUSE__COMPRESSION", "lz4"),
        ] {
            assert_eq!(
                env.get(key).map(String::as_str),
                Some(want),
                "{name}: {key}"
            );
        }
        for dir_setting in ["TOLLGATE__STORAGE__PATH", "TOLLGATE__KAFKA__SPOOL_PATH"] {
            assert!(
                env[dir_setting].starts_with("/var/lib/tollgate/"),
                "{name}: {dir_setting} must be on the data volume"
            );
        }
        let key = &env["TOLLGATE_MASTER_KEY"];
        assert!(
            key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: TOLLGATE_MASTER_KEY must be 64 hex characters"
        );
        assert!(!env["TOLLGATE_ADMIN_TOKEN"].is_empty(), "{name}");
        // Every other TOLLGATE_ variable is one the binary reads.
        for var in env
            .keys()
            .filter(|k| k.starts_with("TOLLGATE_") && !k.starts_with("TOLLGATE__"))
        {
            assert!(
                BINARY_VARS.contains(&var.as_str()) && source.contains(&format!("\"{var}\"")),
                "{name}: {var} is not read by the binary"
            );
        }

        // The binary's own check, with exactly this environment.
        let scratch = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .current_dir(scratch.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .arg("check-config");
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name} ({role}): check-config refuses the compose environment:\n{stdout}\n{stderr}"
        );
        assert!(stderr.contains("configuration OK"), "{name}: {stderr}");
        // Secrets never appear in what it prints.
        assert!(
            stdout.contains("password = \"<redacted>\""),
            "{name}: the ClickHouse password is not redacted:\n{stdout}"
        );
        for secret in [
            "TOLLGATE__ANALYTICS__CLICKHOUSE__PASSWORD",
            "TOLLGATE_MASTER_KEY",
            "TOLLGATE_ADMIN_TOKEN",
        ] {
            let value = &env[secret];
            assert!(
                !stdout.contains(value.as_str()),
                "{name}: check-config printed {secret}"
            );
        }
    }
}

#[test]
fn ports_health_checks_and_scrape_targets_agree() {
    let config = resolved();
    let all = services(&config);
    let prometheus = std::fs::read_to_string(repo().join("dashboards/prometheus.yml")).unwrap();
    let mut gateway_published = false;
    for (name, role, env) in tollgate_services(&config) {
        let listen_var = match role.as_str() {
            "proxy" => "TOLLGATE__SERVER__LISTEN",
            "ledger" => "TOLLGATE__LEDGER__LISTEN",
            "analytics" => "TOLLGATE__ANALYTICS_API__LISTEN",
            other => panic!("{name}: unexpected role {other}"),
        };
        let listen = env
            .get(listen_var)
            .unwrap_or_else(|| panic!("{name}: {listen_var} not set"));
        let port = listen
            .strip_prefix("0.0.0.0:")
            .unwrap_or_else(|| panic!("{name}: {listen_var}={listen} must listen on 0.0.0.0"));
        let service = &all[name.as_str()];
        let check = serde_yaml::to_string(&service["healthcheck"]["test"]).unwrap();
        assert!(
            check.contains(&format!("127.0.0.1:{port}/readyz")),
            "{name}: health check must probe /readyz on {port}: {check}"
        );
        assert!(
            prometheus.contains(&format!("\"{name}:{port}\"")),
            "dashboards/prometheus.yml does not scrape {name}:{port}"
        );
        let volumes = serde_yaml::to_string(&service["volumes"]).unwrap();
        assert!(
            volumes.contains(":/var/lib/tollgate"),
            "{name}: no data volume"
        );
        if role == "proxy" {
            let ports = serde_yaml::to_string(&service["ports"]).unwrap();
            gateway_published = ports.contains(&format!("published: {port}"))
                || ports.contains(&format!("{port}:{port}"));
        }
    }
    assert!(gateway_published, "the gateway port is not published");

    // Every service: a health check, a pinned image, its data on a named volume.
    let named: Vec<String> = config["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(text)
        .collect();
    for (name, service) in all {
        let name = text(name);
        assert!(
            service["healthcheck"]["test"].is_sequence(),
            "{name}: no health check"
        );
        let image = text(&service["image"]);
        if service["build"].is_null() {
            let (_, tag) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{name}: image {image} is not pinned"));
            assert!(
                tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
                "{name}: image {image} is not pinned to a version"
            );
        }
        let volumes: Vec<String> = service["volumes"]
            .as_sequence()
            .map(|v| v.iter().map(text).collect())
            .unwrap_or_default();
        assert!(
            volumes
                .iter()
                .any(|v| named.iter().any(|n| v.starts_with(&format!("{n}:")))),
            "{name}: no named volume for its data ({volumes:?})"
        );
    }
    // Kafka in KRaft mode; Grafana with the ClickHouse plugin and provisioning.
    let kafka = environment(&all["kafka"]);
    assert!(kafka["KAFKA_PROCESS_ROLES"].contains("controller"));
    let grafana = &all["grafana"];
    assert!(environment(grafana)["GF_INSTALL_PLUGINS"].contains("grafana-clickhouse-datasource"));
    let mounts = serde_yaml::to_string(&grafana["volumes"]).unwrap();
    assert!(mounts.contains("/etc/grafana/provisioning"), "{mounts}");
}

#[test]
fn prometheus_config_passes_promtool() {
    let mut cmd = clean("promtool");
    cmd.args(["check", "config", "dashboards/prometheus.yml"]);
    run(
        cmd,
        "promtool check config",
        "install promtool (apt-get install prometheus; ./scripts/test does)",
    );
}

#[test]
fn dockerfile_is_multi_stage_small_and_non_root() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].starts_with("FROM rust:") && froms[0].contains(" AS build"));
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    let runtime = text.split(froms[1]).nth(1).unwrap();
    assert!(runtime.contains("COPY --from=build"));
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(runtime.contains("ENTRYPOINT [\"tollgate\"]"));
    assert!(runtime.contains("curl"), "curl for the health checks");
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}
