//! The real binary: bootstrap writes the master key and admin token, the
//! `tollgate admin` CLI drives the admin API, a revoked key is refused, and a
//! restart without the master key fails clearly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_mock_upstream::MockUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, mock: &str) -> (std::path::PathBuf, u16, u16) {
    let port = free_port();
    let admin_port = free_port();
    let path = dir.join("tollgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [providers.openai]\nbase_url = \"{mock}\"\napi_keys = [\"sk-cli-operator\"]\n\
             [storage]\npath = \"{}\"\n",
            dir.join("data/tollgate.db").display()
        ),
    )
    .unwrap();
    (path, port, admin_port)
}

fn clean_command(config: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.arg("--config").arg(config);
    for (name, _) in std::env::vars() {
        if name.starts_with("TOLLGATE") || name.ends_with("_API_KEY") {
            command.env_remove(name);
        }
    }
    command
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `serve`; returns the server and the bootstrap token it printed.
fn start(config: &Path, port: u16) -> (Server, Option<String>) {
    let mut child = clean_command(config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(token) = line.split_whitespace().find(|w| w.starts_with("tgk_")) {
                let _ = tx.send(token.to_owned());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http_probe::get_ok(&format!("http://127.0.0.1:{port}/readyz"));
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = rx.recv_timeout(Duration::from_secs(1)).ok();
    (Server(child), token)
}

/// `tollgate admin …` with the given args; returns parsed JSON or the error text.
fn admin(config: &Path, args: &[&str], stdin: Option<&str>) -> Result<Value, String> {
    let mut child = clean_command(config)
        .arg("admin")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

mod http_probe {
    /// A tiny blocking GET over std (the tests avoid a second HTTP stack).
    pub fn get_ok(url: &str) -> bool {
        status_of("GET", url, None, None).is_some_and(|s| s == 200)
    }

    pub fn status_of(
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
        let mut stream = std::net::TcpStream::connect(host).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .ok()?;
        let body = body.unwrap_or("");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    }
}

fn chat_status(port: u16, token: &str) -> u16 {
    http_probe::status_of(
        "POST",
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        Some(token),
        Some(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#),
    )
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_manages_keys_on_a_running_gateway() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, port, _) = write_config(dir.path(), &mock.base_url());
    let config_for_thread = config.clone();
    tokio::task::spawn_blocking(move || {
        let config = config_for_thread;
        let (server, bootstrap) = start(&config, port);
        let bootstrap = bootstrap.expect("bootstrap token printed on first start");
        assert_eq!(chat_status(port, &bootstrap), 200);

        // Secrets written with owner-only permissions.
        for file in ["data/master.key", "data/admin.token"] {
            let path = config.parent().unwrap().join(file);
            let meta = std::fs::metadata(&path).unwrap_or_else(|_| panic!("{file} missing"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
            }
            let _ = meta;
        }

        let accounts = admin(&config, &["accounts", "list"], None).unwrap();
        assert_eq!(accounts["data"].as_array().unwrap().len(), 1);
        let account = admin(&config, &["accounts", "create", "team-b"], None).unwrap();
        let account_id = account["id"].as_str().unwrap().to_owned();
        let cfg = admin(
            &config,
            &[
                "configs",
                "create",
                "--account",
                &account_id,
                "--name",
                "only-anthropic",
                "--allow-provider",
                "anthropic",
                "--tag",
                "team=search",
                "--tag",
                "env=prod",
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            cfg["default_tags"],
            serde_json::json!({"team": "search", "env": "prod"})
        );
        let cfg_id = cfg["id"].as_str().unwrap().to_owned();
        let created = admin(
            &config,
            &[
                "keys",
                "create",
                "--account",
                &account_id,
                "--name",
                "svc",
                "--configuration",
                &cfg_id,
            ],
            None,
        )
        .unwrap();
        let token = created["token"].as_str().unwrap().to_owned();
        let key_id = created["access_key"]["id"].as_str().unwrap().to_owned();
        assert_eq!(
            chat_status(port, &token),
            403,
            "openai is not allowed for this key"
        );
        admin(
            &config,
            &["keys", "assign", &key_id, "--configuration", "none"],
            None,
        )
        .unwrap();
        assert_eq!(
            chat_status(port, &token),
            402,
            "a new account has no credits"
        );
        let too_small = admin(
            &config,
            &[
                "credits",
                "purchase",
                "--account",
                &account_id,
                "--amount",
                "4.99",
                "--idempotency-key",
                "buy-0",
            ],
            None,
        )
        .unwrap_err();
        assert!(too_small.contains("minimum purchase"), "{too_small}");
        for _ in 0..2 {
            // A retried purchase is applied once.
            admin(
                &config,
                &[
                    "credits",
                    "purchase",
                    "--account",
                    &account_id,
                    "--amount",
                    "5.00",
                    "--idempotency-key",
                    "buy-1",
                ],
                None,
            )
            .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while chat_status(port, &token) != 200 {
            assert!(Instant::now() < deadline, "credits never became available");
            std::thread::sleep(Duration::from_millis(50));
        }
        let lots = admin(
            &config,
            &["credits", "lots", "--account", &account_id],
            None,
        )
        .unwrap();
        assert_eq!(lots["data"].as_array().unwrap().len(), 1, "{lots}");
        assert_eq!(lots["data"][0]["amount"], "5");

        // Price plans: create, refuse bad terms, assign, update, unassign, delete.
        let plan = admin(
            &config,
            &[
                "price-plans",
                "create",
                "--name",
                "resale",
                "--fee-per-mtok",
                "0.08",
                "--upstream-multiplier",
                "1.2",
            ],
            None,
        )
        .unwrap();
        let plan_id = plan["id"].as_str().unwrap().to_owned();
        assert_eq!(plan["fee_per_mtok"], "0.08", "{plan}");
        assert_eq!(plan["upstream_multiplier"], "1.2", "{plan}");
        let bad = admin(
            &config,
            &["price-plans", "create", "--name", "x", "--fee-per-mtok=-1"],
            None,
        )
        .unwrap_err();
        assert!(bad.contains("fee_per_mtok"), "{bad}");
        let assigned = admin(
            &config,
            &["price-plans", "assign", "--account", &account_id, &plan_id],
            None,
        )
        .unwrap();
        assert_eq!(assigned["price_plan_id"], plan_id.as_str());
        let in_use = admin(&config, &["price-plans", "delete", &plan_id], None).unwrap_err();
        assert!(in_use.contains("assigned"), "{in_use}");
        let updated = admin(
            &config,
            &["price-plans", "update", &plan_id, "--name", "at-cost"],
            None,
        )
        .unwrap();
        assert_eq!(updated["fee_per_mtok"], "0.05", "defaults: {updated}");
        assert_eq!(updated["upstream_multiplier"], "1");
        let listed = admin(&config, &["price-plans", "list"], None).unwrap();
        assert_eq!(listed["data"][0]["name"], "at-cost");
        admin(
            &config,
            &["price-plans", "assign", "--account", &account_id, "none"],
            None,
        )
        .unwrap();
        admin(&config, &["price-plans", "delete", &plan_id], None).unwrap();
        let gone = admin(&config, &["price-plans", "get", &plan_id], None).unwrap_err();
        assert!(gone.contains("not found"), "{gone}");

        let pk = admin(
            &config,
            &[
                "provider-keys",
                "add",
                "--account",
                &account_id,
                "--provider",
                "openai",
                "--name",
                "mine",
            ],
            Some("sk-cli-byok-secret\n"),
        )
        .unwrap();
        assert!(!pk.to_string().contains("sk-cli-byok-secret"));
        let listed = admin(&config, &["keys", "list", "--account", &account_id], None).unwrap();
        assert!(!listed.to_string().contains(&token));

        // Runtime custom providers declare embedding models.
        let refused = admin(
            &config,
            &[
                "custom-providers",
                "create",
                "--id",
                "box",
                "--base-url",
                "http://10.0.0.5:8000/v1",
                "--api",
                "anthropic",
                "--embedding-model",
                "emb",
            ],
            None,
        )
        .unwrap_err();
        assert!(refused.contains("embedding_models"), "{refused}");
        let created = admin(
            &config,
            &[
                "custom-providers",
                "create",
                "--id",
                "box",
                "--base-url",
                "http://10.0.0.5:8000/v1",
                "--api",
                "openai",
                "--model",
                "chat",
                "--embedding-model",
                "emb",
                "--embedding-model",
                "emb-large",
            ],
            None,
        )
        .unwrap();
        assert_eq!(created["models"], serde_json::json!(["chat"]));
        assert_eq!(
            created["embedding_models"],
            serde_json::json!(["emb", "emb-large"])
        );
        let listed = admin(&config, &["custom-providers", "list"], None).unwrap();
        assert_eq!(
            listed["data"][0]["embedding_models"],
            serde_json::json!(["emb", "emb-large"]),
            "{listed}"
        );

        admin(&config, &["keys", "revoke", &key_id], None).unwrap();
        assert_eq!(chat_status(port, &token), 401);
        let again = admin(&config, &["keys", "revoke", &key_id], None).unwrap_err();
        assert!(again.contains("already revoked"), "{again}");

        let wrong = clean_command(&config)
            .args(["admin", "--token", "tga_wrong", "accounts", "list"])
            .output()
            .unwrap();
        assert!(!wrong.status.success());
        assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
        drop(server);
    })
    .await
    .unwrap();
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.api_key.as_deref() == Some("sk-cli-operator")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_the_master_key_fails_clearly() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, port, _) = write_config(dir.path(), &mock.base_url());
    let config_clone = config.clone();
    tokio::task::spawn_blocking(move || {
        let (server, token) = start(&config_clone, port);
        assert!(token.is_some());
        drop(server);
        std::fs::remove_file(config_clone.parent().unwrap().join("data/master.key")).unwrap();
        let output = clean_command(&config_clone).arg("serve").output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("no master key") && stderr.contains("TOLLGATE_MASTER_KEY"),
            "{stderr}"
        );
        // With the key given through the environment it starts again.
        let bad = clean_command(&config_clone)
            .arg("serve")
            .env("TOLLGATE_MASTER_KEY", "not-a-key")
            .output()
            .unwrap();
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("TOLLGATE_MASTER_KEY is invalid"));
    })
    .await
    .unwrap();
}

/// `admin` off the async runtime's workers (the CLI is a blocking child).
async fn admin_async(config: &Path, args: &[&str]) -> Result<Value, String> {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        admin(&config, &args, None)
    })
    .await
    .unwrap()
}

/// One gpt-4o-mini request on the operator's key: the upstream cost shown,
/// what it should be at `prices` for the tokens reported, the total shown
/// and the event id.
async fn priced_chat(port: u16, token: &str, prices: &tollgate_core::Prices) -> (String, String) {
    use tollgate_core::{pricing::cost_for, CredentialSource, TokenCounts, Usd};
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&serde_json::json!({"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": "what does this cost"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    let (upstream, total, event) = (
        header("x-tollgate-cost-upstream"),
        header("x-tollgate-cost-total"),
        header("x-tollgate-event-id"),
    );
    let body: Value = response.json().await.unwrap();
    let tokens = TokenCounts {
        input: body["usage"]["prompt_tokens"].as_u64().unwrap(),
        output: body["usage"]["completion_tokens"].as_u64().unwrap(),
        ..TokenCounts::default()
    };
    let expected = cost_for(&tokens, prices, Some(CredentialSource::Operator), None);
    assert!(expected.upstream > Usd::ZERO);
    assert_eq!(upstream.parse::<Usd>().unwrap(), expected.upstream);
    (total, event)
}

/// `model-prices`' entry for openai:gpt-4o-mini.
async fn mini_price(config: &Path) -> Value {
    let listed = admin_async(config, &["model-prices"]).await.unwrap();
    listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == "openai" && e["model"] == "gpt-4o-mini")
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_overrides_from_the_config_file_and_the_cli_are_what_the_ledger_debits() {
    use tollgate_core::{Prices, Usd};
    let usd = |s: &str| s.parse::<Usd>().unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, port, _) = write_config(dir.path(), &mock.base_url());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[price_overrides.\"openai:gpt-4o-mini\"]\n\
         input = \"3.25\"\noutput = \"13.5\"\ncached_input = \"0.5\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let checked = clean_command(&config).arg("check-config").output().unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let start_config = config.clone();
    let (server, bootstrap) = tokio::task::spawn_blocking(move || start(&start_config, port))
        .await
        .unwrap();
    let token = bootstrap.expect("bootstrap token printed on first start");
    let accounts = admin_async(&config, &["accounts", "list"]).await.unwrap();
    let account = accounts["data"][0]["id"].as_str().unwrap().to_owned();

    let from_config = Prices {
        input: usd("3.25"),
        cached_input: usd("0.5"),
        cache_write_5m: usd("3.25"),
        cache_write_1h: usd("3.25"),
        output: usd("13.5"),
    };
    let mut debits = vec![priced_chat(port, &token, &from_config).await];
    let listed = mini_price(&config).await;
    assert_eq!(listed["source"], "config_override");
    assert_eq!(listed["prices"]["output"], "13.5");

    // Runtime, through the CLI: wins over the config file's until deleted.
    let set = admin_async(
        &config,
        &[
            "price-overrides",
            "set",
            "openai:gpt-4o-mini",
            "--input",
            "0.001",
            "--output",
            "0.004",
            "--cache-write-1h",
            "0.003",
        ],
    )
    .await
    .unwrap();
    assert_eq!(set["prices"]["cached_input"], "0.001");
    let runtime = Prices {
        input: usd("0.001"),
        cached_input: usd("0.001"),
        cache_write_5m: usd("0.001"),
        cache_write_1h: usd("0.003"),
        output: usd("0.004"),
    };
    debits.push(priced_chat(port, &token, &runtime).await);
    assert_eq!(mini_price(&config).await["source"], "runtime_override");
    let list = admin_async(&config, &["price-overrides", "list"])
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    for (args, field) in [
        (["openai:gpt-4o-mini", "--input", "cheap"], "input"),
        (["nowhere:gpt-4o-mini", "--input", "1"], "provider"),
    ] {
        let mut argv = vec!["price-overrides", "set"];
        argv.extend(args);
        argv.extend(["--output", "1"]);
        let err = admin_async(&config, &argv).await.unwrap_err();
        assert!(err.contains("400") && err.contains(field), "{err}");
    }
    admin_async(
        &config,
        &["price-overrides", "delete", "openai:gpt-4o-mini"],
    )
    .await
    .unwrap();
    assert_eq!(mini_price(&config).await["source"], "config_override");
    debits.push(priced_chat(port, &token, &from_config).await);

    // The ledger debits exactly the totals shown.
    let deadline = Instant::now() + Duration::from_secs(45);
    for (total, event) in debits {
        loop {
            let entries = admin_async(&config, &["credits", "entries", "--account", &account])
                .await
                .unwrap();
            let entry = entries["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["source_id"] == event.as_str())
                .cloned();
            if let Some(entry) = entry {
                assert_eq!(
                    entry["amount"].as_str().unwrap().parse::<Usd>().unwrap(),
                    Usd::ZERO - total.parse::<Usd>().unwrap(),
                    "{entry}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "no ledger entry for {event}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(server);
}

/// `tollgate admin …` that succeeds; (parsed stdout, stderr).
fn admin_with_notes(config: &Path, args: &[&str]) -> (Value, String) {
    let output = clean_command(config)
        .arg("admin")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{args:?}: {stderr}");
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

/// Budgets, webhooks and the low-balance amount through the CLI against a
/// running gateway: flags become the API's fields, refusals name the
/// field, and a webhook's secret is printed once with a note saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_manages_budgets_webhooks_and_low_balance() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, port, _) = write_config(dir.path(), &mock.base_url());
    tokio::task::spawn_blocking(move || {
        let (server, _) = start(&config, port);
        let account = admin(&config, &["accounts", "create", "spend"], None).unwrap();
        let account_id = account["id"].as_str().unwrap().to_owned();
        let key = admin(
            &config,
            &["keys", "create", "--account", &account_id, "--name", "svc"],
            None,
        )
        .unwrap();
        let key_id = key["access_key"]["id"].as_str().unwrap().to_owned();
        budgets_through_the_cli(&config, &account_id, &key_id);
        webhooks_through_the_cli(&config);

        let low = admin(
            &config,
            &["accounts", "low-balance", &account_id, "2.50"],
            None,
        )
        .unwrap();
        assert_eq!(low["low_balance_usd"], "2.5", "{low}");
        let refused = admin(
            &config,
            &["accounts", "low-balance", &account_id, "-1"],
            None,
        )
        .unwrap_err();
        assert!(
            refused.contains("amount: `-1` must be at least 0"),
            "{refused}"
        );
        let back = admin(
            &config,
            &["accounts", "low-balance", &account_id, "default"],
            None,
        )
        .unwrap();
        assert!(back.get("low_balance_usd").is_none(), "{back}");
        statuses_and_deliveries_through_the_cli(&config, &account_id);
        drop(server);
    })
    .await
    .unwrap();
}

/// Budget status and webhook deliveries (none yet) read through the CLI.
fn statuses_and_deliveries_through_the_cli(config: &Path, account_id: &str) {
    let statuses = admin(
        config,
        &["credits", "budgets", "--account", account_id],
        None,
    )
    .unwrap();
    let budgets = statuses["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 1, "the account's budget is left: {statuses}");
    assert_eq!(
        (&budgets[0]["spent"], &budgets[0]["state"]),
        (&serde_json::json!("0"), &serde_json::json!("ok")),
        "{statuses}"
    );
    let failed = admin(
        config,
        &[
            "webhooks",
            "deliveries",
            "--state",
            "failed",
            "--limit",
            "10",
        ],
        None,
    )
    .unwrap();
    assert_eq!(failed["data"], serde_json::json!([]), "{failed}");
    let bad = admin(config, &["webhooks", "deliveries", "--state", "lost"], None).unwrap_err();
    assert!(bad.contains("400") && bad.contains("state"), "{bad}");
    let missing = admin(
        config,
        &["webhooks", "retry-delivery", "alrt_none", "whk_none"],
        None,
    )
    .unwrap_err();
    assert!(missing.contains("404"), "{missing}");
}

fn budgets_through_the_cli(config: &Path, account_id: &str, key_id: &str) {
    let on_key = admin(
        config,
        &[
            "budgets",
            "create",
            "--account",
            account_id,
            "--key",
            key_id,
            "--name",
            "daily",
            "--amount",
            "1.50",
            "--period",
            "day",
        ],
        None,
    )
    .unwrap();
    assert_eq!(on_key["access_key_id"], key_id, "{on_key}");
    assert_eq!(on_key["amount"], "1.5");
    assert_eq!(on_key["soft_threshold_percent"], 80);
    assert_eq!(on_key["refuse"], true);
    let on_account = admin(
        config,
        &[
            "budgets",
            "create",
            "--account",
            account_id,
            "--name",
            "month",
            "--amount",
            "100",
            "--period",
            "month",
            "--soft-threshold-percent",
            "50",
            "--refuse",
            "false",
        ],
        None,
    )
    .unwrap();
    assert!(on_account.get("access_key_id").is_none(), "{on_account}");
    assert_eq!(
        (&on_account["soft_threshold_percent"], &on_account["refuse"]),
        (&serde_json::json!(50), &serde_json::json!(false))
    );
    let refused = admin(
        config,
        &[
            "budgets",
            "create",
            "--account",
            account_id,
            "--name",
            "x",
            "--amount",
            "0.0000001",
            "--period",
            "week",
        ],
        None,
    )
    .unwrap_err();
    assert!(refused.contains("more than 6 decimal places"), "{refused}");

    let id = on_key["id"].as_str().unwrap();
    let updated = admin(
        config,
        &[
            "budgets", "update", id, "--amount", "3", "--refuse", "false",
        ],
        None,
    )
    .unwrap();
    assert_eq!(
        (&updated["amount"], &updated["refuse"], &updated["name"]),
        (
            &serde_json::json!("3"),
            &serde_json::json!(false),
            &serde_json::json!("daily")
        )
    );
    let listed = admin(config, &["budgets", "list", "--key", key_id], None).unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    let listed = admin(config, &["budgets", "list", "--account", account_id], None).unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(
        admin(config, &["budgets", "get", id], None).unwrap()["amount"],
        "3"
    );
    admin(config, &["budgets", "delete", id], None).unwrap();
    let gone = admin(config, &["budgets", "get", id], None).unwrap_err();
    assert!(gone.contains("404") && gone.contains("not found"), "{gone}");
}

fn webhooks_through_the_cli(config: &Path) {
    let (created, note) = admin_with_notes(
        config,
        &[
            "webhooks",
            "create",
            "--url",
            "https://hooks.example.com/t",
            "--kind",
            "low_balance",
            "--kind",
            "budget_exceeded",
        ],
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert!(note.contains("shown once"), "{note}");
    assert_eq!(
        created["kinds"],
        serde_json::json!(["budget_exceeded", "low_balance"])
    );
    let id = created["id"].as_str().unwrap();
    let refused = admin(
        config,
        &[
            "webhooks",
            "create",
            "--url",
            "https://x.example/",
            "--kind",
            "weather",
        ],
        None,
    )
    .unwrap_err();
    assert!(
        refused.contains("unknown alert kind `weather`"),
        "{refused}"
    );

    let updated = admin(config, &["webhooks", "update", id, "--all-kinds"], None).unwrap();
    assert_eq!(updated["kinds"], serde_json::json!([]), "{updated}");
    let (shown, quiet) = admin_with_notes(config, &["webhooks", "get", id]);
    let (listed, _) = admin_with_notes(config, &["webhooks", "list"]);
    for text in [updated.to_string(), shown.to_string(), listed.to_string()] {
        assert!(
            !text.contains(&secret) && !text.contains("secret"),
            "{text}"
        );
    }
    assert!(!quiet.contains("shown once"), "{quiet}");
    let (rotated, note) = admin_with_notes(config, &["webhooks", "rotate-secret", id]);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(note.contains("shown once"), "{note}");
    admin(config, &["webhooks", "delete", id], None).unwrap();
    let gone = admin(config, &["webhooks", "get", id], None).unwrap_err();
    assert!(gone.contains("404"), "{gone}");
}
