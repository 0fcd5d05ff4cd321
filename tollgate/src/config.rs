//! Configuration: a TOML file overlaid by environment variables
//! `TOLLGATE__SECTION__KEY` (e.g. `TOLLGATE__SERVER__LISTEN=0.0.0.0:8080`).
//! Unknown keys are errors, so a typo never silently does nothing.

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate_proxy::config::{
    CustomProviderConfig, DeclaredPrices, ExactUsd, ProviderSettings, RoutingConfig, ServerConfig,
    UpstreamConfig,
};
use tollgate_proxy::ProxyConfig;
use tollgate_sqlite::Durability;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub routing: RoutingConfig,
    /// Settings per built-in provider id: `base_url` override, operator `api_keys`.
    pub providers: BTreeMap<String, ProviderSettings>,
    pub custom_providers: Vec<CustomProviderConfig>,
    /// Operator unit prices per `provider:model`, winning over the catalog
    /// (`[price_overrides."openai:gpt-4o"] input = "2.00"`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub price_overrides: BTreeMap<String, DeclaredPrices>,
    /// USD per call of a built-in Responses tool on the operator's
    /// credentials (`[builtin_tool_prices] web_search = "0.01"`); unpriced
    /// built-in tools go only on callers' own provider keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub builtin_tool_prices: BTreeMap<String, ExactUsd>,
    /// The upstream client (`[upstream]`): egress proxy, CA files, pool.
    pub upstream: UpstreamConfig,
    pub storage: StorageConfig,
    pub secrets: SecretsConfig,
    pub admin: AdminConfig,
    pub billing: tollgate_proxy::config::BillingConfig,
    /// How declared end users are stored (`[privacy] end_user = "keep" |
    /// "hash" | "drop"`, default `keep`).
    pub privacy: tollgate_proxy::config::PrivacyConfig,
    pub ledger: LedgerConfig,
    /// Alerts and their webhook deliveries (`[alerts]`), run by the ledger.
    pub alerts: AlertsConfig,
    pub eventlog: EventLogConfig,
    /// The usage store and sink (`[analytics]`: backend sqlite|clickhouse, …).
    pub analytics: tollgate_analytics::AnalyticsConfig,
    pub analytics_api: AnalyticsApiConfig,
    /// Used when `eventlog.backend = "kafka"`.
    pub kafka: tollgate_kafka::KafkaConfig,
    pub bootstrap: BootstrapConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// File holding the 32-byte master key (64 hex characters) that encrypts
    /// provider keys at rest. Default: `master.key` beside the storage file.
    /// `TOLLGATE_MASTER_KEY` takes precedence. A fresh install creates the
    /// file; later starts fail if it is missing.
    pub master_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API. Default true.
    pub enabled: bool,
    /// Its own listener, so it can stay private. Default 127.0.0.1:8081.
    pub listen: std::net::SocketAddr,
    /// File holding the admin token. Default: `admin.token` beside the storage
    /// file. `TOLLGATE_ADMIN_TOKEN` takes precedence. A fresh install creates it.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8081)),
            token_file: None,
        }
    }
}

impl Config {
    fn beside_storage(&self, name: &str) -> PathBuf {
        match self.storage.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
            _ => PathBuf::from(name),
        }
    }

    pub fn master_key_file(&self) -> PathBuf {
        self.secrets
            .master_key_file
            .clone()
            .unwrap_or_else(|| self.beside_storage("master.key"))
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.admin
            .token_file
            .clone()
            .unwrap_or_else(|| self.beside_storage("admin.token"))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The embedded database file (event log and state). Default `data/tollgate.db`.
    pub path: PathBuf,
    /// `normal` (survives a process crash; default) or `full` (fsync per commit).
    pub durability: Durability,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("data/tollgate.db"),
            durability: Durability::Normal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// On first start (no accounts yet), create an account and an access key
    /// and print the key once. Default true.
    pub enabled: bool,
    pub account_name: String,
    /// Credit granted to the bootstrap account (USD, decimal string; a
    /// goodwill credit that expires like any lot). Default "5.00"; "0" for none.
    pub starting_credit_usd: String,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            enabled: true,
            account_name: "default".into(),
            starting_credit_usd: "5.00".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Interval of the tick events that move ledger time (and so expiry)
    /// forward for accounts without traffic. Default 60000 ms.
    pub tick_interval_ms: u64,
    /// Where `tollgate ledger` (the ledger alone) serves the credits API,
    /// /healthz, /readyz and /metrics. Default 127.0.0.1:8082.
    pub listen: std::net::SocketAddr,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            tick_interval_ms: 60_000,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8082)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Low-balance amount of accounts that set none (USD, decimal string):
    /// a balance below it raises a `low_balance` alert. Default "1.00";
    /// "0" turns the alert off for those accounts.
    pub low_balance_usd: ExactUsd,
    /// Wait after a webhook delivery's first failed try, doubled after each
    /// next one. Default 1000 ms.
    pub webhook_retry_initial_ms: u64,
    /// Longest wait between two tries. Default 3600000 ms (1 h).
    pub webhook_retry_max_ms: u64,
    /// A delivery is given up (listed as failed) when its next try would be
    /// later than this after its first. Default 72 h.
    pub webhook_give_up_after_hours: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            low_balance_usd: ExactUsd(
                tollgate_ledger::alerts::AlertSettings::default().low_balance,
            ),
            webhook_retry_initial_ms: 1_000,
            webhook_retry_max_ms: 3_600_000,
            webhook_give_up_after_hours: 72,
        }
    }
}

impl AlertsConfig {
    pub fn evaluator_settings(&self) -> tollgate_ledger::alerts::AlertSettings {
        tollgate_ledger::alerts::AlertSettings {
            low_balance: self.low_balance_usd.0,
        }
    }

    pub fn webhook_settings(&self) -> tollgate_ledger::webhooks::WebhookSettings {
        let ms = std::time::Duration::from_millis;
        tollgate_ledger::webhooks::WebhookSettings {
            retry_initial: ms(self.webhook_retry_initial_ms.max(1)),
            retry_max: ms(self.webhook_retry_max_ms.max(1)),
            give_up_after: std::time::Duration::from_secs(
                self.webhook_give_up_after_hours.saturating_mul(3600),
            ),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsApiConfig {
    /// Where `tollgate analytics` (the analytics role alone) serves the usage
    /// API, /healthz, /readyz and /metrics. Default 127.0.0.1:8083.
    pub listen: std::net::SocketAddr,
}

impl Default for AnalyticsApiConfig {
    fn default() -> Self {
        AnalyticsApiConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8083)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLogBackend {
    /// The SQLite file at `storage.path` (one process, no servers).
    #[default]
    Embedded,
    /// Kafka (`[kafka]`), for separate proxy/ledger processes at scale.
    Kafka,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventLogConfig {
    /// `embedded` (default) or `kafka`.
    pub backend: EventLogBackend,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `tollgate_proxy=debug`; `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Conventional provider key variables, honoured when the config sets no keys.
const CONVENTIONAL_KEY_VARS: &[(&str, &str)] = &[
    ("openai", "OPENAI_API_KEY"),
    ("anthropic", "ANTHROPIC_API_KEY"),
];

impl Config {
    /// Defaults ← file (if given or `tollgate.toml` exists) ← `TOLLGATE__*` env.
    pub fn load(path: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        Self::load_from(path, std::env::vars())
    }

    /// As `load`, with the environment given explicitly (tests, config checks).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Box<figment::Error>> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(path) => {
                if !path.exists() {
                    return Err(Box::new(figment::Error::from(format!(
                        "config file {} does not exist",
                        path.display()
                    ))));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => {
                if Path::new("tollgate.toml").exists() {
                    figment = figment.merge(Toml::file("tollgate.toml"));
                }
            }
        }
        let mut overlay = figment::value::Dict::new();
        for (name, value) in &env {
            if let Some(rest) = name.strip_prefix("TOLLGATE__") {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                insert_path(&mut overlay, &path, parse_env_value(value));
            }
        }
        figment = figment.merge(EnvOverlay(overlay));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        for (provider, var) in CONVENTIONAL_KEY_VARS {
            if let Some((_, key)) = env.iter().find(|(n, v)| n == var && !v.is_empty()) {
                let settings = config.providers.entry((*provider).to_owned()).or_default();
                if settings.api_keys.is_empty() {
                    settings.api_keys.push(key.clone());
                }
            }
        }
        Ok(config)
    }

    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            server: self.server.clone(),
            routing: self.routing.clone(),
            providers: self.providers.clone(),
            custom_providers: self.custom_providers.clone(),
            billing: self.billing.clone(),
            upstream: self.upstream.clone(),
            price_overrides: self.price_overrides.clone(),
            builtin_tool_prices: self.builtin_tool_prices.clone(),
            privacy: self.privacy.clone(),
        }
    }

    /// The config as TOML with every secret replaced, for `check-config`.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        for settings in copy.providers.values_mut() {
            for key in &mut settings.api_keys {
                *key = "<redacted>".into();
            }
        }
        for custom in &mut copy.custom_providers {
            for key in &mut custom.api_keys {
                *key = "<redacted>".into();
            }
        }
        if let Some(url) = &mut copy.upstream.proxy_url {
            // Proxy credentials ride in the URL's user info.
            if let Some((user_info, host)) = url.rsplit_once('@') {
                let scheme = user_info.split_once("://").map_or("", |(s, _)| s);
                let sep = if scheme.is_empty() { "" } else { "://" };
                *url = format!("{scheme}{sep}<redacted>@{host}");
            }
        }
        if let Some(password) = &mut copy.analytics.clickhouse.password {
            *password = "<redacted>".into();
        }
        toml::to_string_pretty(&copy).unwrap_or_default()
    }
}

/// `TOLLGATE__*` variables as a figment provider, so errors name their source.
struct EnvOverlay(figment::value::Dict);

impl figment::Provider for EnvOverlay {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("TOLLGATE__* environment variable").interpolater(
            |_profile, keys| format!("TOLLGATE__{}", keys.join("__").to_ascii_uppercase()),
        )
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::Value;
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| Value::from(figment::value::Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// Env values are TOML-ish: `8080`, `true`, `[a, b]`; anything else is a string.
fn parse_env_value(raw: &str) -> figment::value::Value {
    raw.parse::<figment::value::Value>()
        .unwrap_or_else(|_| figment::value::Value::from(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = Config::default();
        let text = toml::to_string(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn env_overrides_file_and_conventional_keys_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[providers.groq]\napi_keys = [\"gk\"]\n",
        )
        .unwrap();
        let config = Config::load_from(
            Some(&file),
            env(&[
                ("TOLLGATE__SERVER__LISTEN", "0.0.0.0:7000"),
                ("TOLLGATE__ROUTING__TOTAL_TIMEOUT_MS", "5000"),
                (
                    "TOLLGATE__PROVIDERS__OPENAI__BASE_URL",
                    "http://127.0.0.1:1/v1",
                ),
                ("TOLLGATE__PROVIDERS__ANTHROPIC__API_KEYS", "[a1, a2]"),
                ("OPENAI_API_KEY", "sk-env"),
                ("ANTHROPIC_API_KEY", "ignored-because-config-sets-keys"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.routing.total_timeout_ms, 5000);
        assert_eq!(config.providers["openai"].api_keys, vec!["sk-env"]);
        assert_eq!(
            config.providers["openai"].base_url.as_deref(),
            Some("http://127.0.0.1:1/v1")
        );
        assert_eq!(config.providers["anthropic"].api_keys, vec!["a1", "a2"]);
        assert_eq!(config.providers["groq"].api_keys, vec!["gk"]);
        assert!(!config.redacted_toml().contains("sk-env"));
        let config = Config::load_from(
            None,
            env(&[("TOLLGATE__ANALYTICS__CLICKHOUSE__PASSWORD", "ch-secret")]),
        )
        .unwrap();
        assert_eq!(
            config.analytics.clickhouse.password.as_deref(),
            Some("ch-secret")
        );
        assert!(!config.redacted_toml().contains("ch-secret"));
    }

    #[test]
    fn upstream_section_round_trips_and_takes_env_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[upstream]\nproxy_url = \"http://user:pw-Zq9@proxy.internal:3128\"\n\
             no_proxy = [\"internal.example\", \"10.0.0.0/8\"]\nca_files = [\"/etc/ca/a.pem\"]\n",
        )
        .unwrap();
        let config = Config::load_from(
            Some(&file),
            env(&[
                ("TOLLGATE__UPSTREAM__POOL_MAX_IDLE_PER_HOST", "16"),
                ("TOLLGATE__UPSTREAM__POOL_IDLE_TIMEOUT_MS", "5000"),
            ]),
        )
        .unwrap();
        let upstream = &config.upstream;
        assert_eq!(
            upstream.proxy_url.as_deref(),
            Some("http://user:pw-Zq9@proxy.internal:3128")
        );
        assert_eq!(
            upstream.no_proxy,
            Some(vec!["internal.example".to_owned(), "10.0.0.0/8".to_owned()])
        );
        assert_eq!(upstream.ca_files, vec![PathBuf::from("/etc/ca/a.pem")]);
        assert_eq!(upstream.pool_max_idle_per_host, 16);
        assert_eq!(upstream.pool_idle_timeout_ms, 5000);
        assert_eq!(config.proxy().upstream, *upstream);
        let back: Config = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        let redacted = config.redacted_toml();
        assert!(!redacted.contains("pw-Zq9"), "{redacted}");
        assert!(
            redacted.contains("http://<redacted>@proxy.internal:3128"),
            "{redacted}"
        );
        let defaults = Config::default().upstream;
        assert_eq!(
            (
                defaults.pool_max_idle_per_host,
                defaults.pool_idle_timeout_ms
            ),
            (1024, 90_000)
        );
        assert!(defaults.proxy_url.is_none() && defaults.no_proxy.is_none());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_field() {
        let err = Config::load_from(None, env(&[("TOLLGATE__SERVER__LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err =
            Config::load_from(None, env(&[("TOLLGATE__SERVER__LISTEN", "nope")])).unwrap_err();
        assert!(
            err.to_string().contains("TOLLGATE__SERVER__LISTEN"),
            "{err}"
        );
    }

    #[test]
    fn alerts_section_defaults_and_exact_amounts() {
        let config = Config::load_from(None, env(&[])).unwrap();
        let settings = config.alerts.webhook_settings();
        assert_eq!(settings.retry_initial.as_millis(), 1_000);
        assert_eq!(settings.retry_max.as_secs(), 3_600);
        assert_eq!(settings.give_up_after.as_secs(), 72 * 3_600);
        assert_eq!(config.alerts.low_balance_usd.0.to_string(), "1");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[alerts]\nlow_balance_usd = \"2.50\"\nwebhook_retry_initial_ms = 20\n",
        )
        .unwrap();
        let config = Config::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(
            config.alerts.evaluator_settings().low_balance,
            "2.50".parse().unwrap()
        );
        assert_eq!(
            config.alerts.webhook_settings().retry_initial.as_millis(),
            20
        );
        std::fs::write(&file, "[alerts]\nlow_balance_usd = 2.5\n").unwrap();
        assert!(
            Config::load_from(Some(&file), env(&[])).is_err(),
            "a float is refused"
        );
    }

    #[test]
    fn privacy_end_user_is_keep_by_default_and_takes_hash_or_drop() {
        use tollgate_proxy::config::EndUserPolicy;
        let config = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(config.proxy().privacy.end_user, EndUserPolicy::Keep);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[privacy]\nend_user = \"hash\"\n").unwrap();
        let config = Config::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(config.proxy().privacy.end_user, EndUserPolicy::Hash);
        let config =
            Config::load_from(Some(&file), env(&[("TOLLGATE__PRIVACY__END_USER", "drop")]))
                .unwrap();
        assert_eq!(config.proxy().privacy.end_user, EndUserPolicy::Drop);
        let err =
            Config::load_from(None, env(&[("TOLLGATE__PRIVACY__END_USER", "plain")])).unwrap_err();
        assert!(
            err.to_string().contains("TOLLGATE__PRIVACY__END_USER"),
            "{err}"
        );
    }
}
