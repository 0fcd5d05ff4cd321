//! Gateway configuration sections. Defaults are documented on each field;
//! `validate` reports every problem at once, naming the field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tollgate_core::{ApiSurface, Prices, Usd};

/// The listener's limits. Every one is applied before the bytes it guards
/// are buffered; where the issue that set them gave no number, nginx's
/// default is used (README, "Limits").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gateway listens on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (413 beyond; a declared
    /// Content-Length over it is refused before any body byte is read). Default 10 MiB.
    pub max_body_bytes: usize,
    /// Largest request head (request line and header fields), bytes; 431
    /// beyond. Default 32 KiB (nginx: 4 buffers of 8 KiB).
    pub max_head_bytes: usize,
    /// Most header fields in a request head; 431 beyond. Default 100.
    pub max_headers: usize,
    /// A request head must arrive whole within this time; an idle
    /// keep-alive connection is closed after it too. Default 60 s (nginx
    /// `client_header_timeout`).
    pub head_timeout_ms: u64,
    /// A request body must arrive whole within this time after its head
    /// (408 beyond). Default 60 s (nginx `client_body_timeout`).
    pub body_timeout_ms: u64,
    /// A response the client does not read for this long (a full socket,
    /// or an HTTP/2 window it never opens) closes the connection.
    /// Default 60 s (nginx `send_timeout`).
    pub send_timeout_ms: u64,
    /// An HTTP/2 connection with no request in flight is closed after this
    /// long. Default 75 s (nginx `keepalive_timeout`).
    pub idle_timeout_ms: u64,
    /// Open client connections, process-wide (all listeners). Beyond it a
    /// connection gets one 503 and is closed. Default 8192.
    pub max_connections: usize,
    /// Requests in flight, process-wide, counting every HTTP/2 stream and
    /// every open streamed response; 503 with `retry-after` beyond. Default 8192.
    pub max_requests: usize,
    /// Request body bytes buffered at once, process-wide (HTTP/2 streams
    /// included); a body that would pass it gets 503 with `retry-after`.
    /// Default 256 MiB.
    pub max_buffered_body_bytes: usize,
    /// Concurrent streams one HTTP/2 connection may open. Default 128
    /// (nginx `http2_max_concurrent_streams`).
    pub h2_max_concurrent_streams: u32,
    /// On SIGTERM, in-flight requests may finish for this long; then
    /// streams are cut (and billed for what was sent). Default 30 s.
    pub shutdown_grace_ms: u64,
    /// Serve TLS on this listener (HTTP/2 and HTTP/1.1 by ALPN). Default: off.
    pub tls: Option<TlsConfig>,
}

/// Certificate chain and private key, PEM files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 10 * 1024 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            head_timeout_ms: 60_000,
            body_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            idle_timeout_ms: 75_000,
            max_connections: 8192,
            max_requests: 8192,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            h2_max_concurrent_streams: 128,
            shutdown_grace_ms: 30_000,
            tls: None,
        }
    }
}

impl ServerConfig {
    fn problems(&self, problems: &mut Vec<String>) {
        for (field, value) in [
            ("server.max_body_bytes", self.max_body_bytes as u64),
            ("server.max_headers", self.max_headers as u64),
            ("server.head_timeout_ms", self.head_timeout_ms),
            ("server.body_timeout_ms", self.body_timeout_ms),
            ("server.send_timeout_ms", self.send_timeout_ms),
            ("server.idle_timeout_ms", self.idle_timeout_ms),
            ("server.max_connections", self.max_connections as u64),
            ("server.max_requests", self.max_requests as u64),
            (
                "server.max_buffered_body_bytes",
                self.max_buffered_body_bytes as u64,
            ),
            (
                "server.h2_max_concurrent_streams",
                u64::from(self.h2_max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                problems.push(format!("{field}: must be greater than 0"));
            }
        }
        // hyper's smallest read buffer.
        if self.max_head_bytes < 8192 {
            problems.push("server.max_head_bytes: must be at least 8192".into());
        }
        if let Some(tls) = &self.tls {
            for (field, path) in [
                ("server.tls.cert_file", &tls.cert_file),
                ("server.tls.key_file", &tls.key_file),
            ] {
                if !path.is_file() {
                    problems.push(format!(
                        "{field}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Cap on the time spent across all failover attempts until response
    /// headers (streams then run as long as the upstream streams). Default 120 s.
    pub total_timeout_ms: u64,
    /// Per-attempt wait for upstream response headers before failing over. Default 60 s.
    pub attempt_timeout_ms: u64,
    /// TCP connect timeout per attempt. Default 5 s.
    pub connect_timeout_ms: u64,
    /// Per-attempt wait for a non-streamed upstream body, and the longest
    /// wait for the next piece of a body once it has started (a stream that
    /// stalls this long ends with an error event). Default 300 s.
    pub read_timeout_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            total_timeout_ms: 120_000,
            attempt_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
            read_timeout_ms: 300_000,
        }
    }
}

/// The upstream HTTP client (`[upstream]`): egress proxy, extra trust
/// roots, connection pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Egress proxy for every upstream, e.g. `http://user:pass@proxy:3128`
    /// (http only; HTTPS upstreams through a CONNECT tunnel, plain-http ones
    /// in absolute form). Wins over `HTTPS_PROXY`/`HTTP_PROXY` (and their
    /// lowercase forms), which apply when unset. Default unset.
    pub proxy_url: Option<String>,
    /// Hosts reached directly, not through the proxy: names (matching
    /// subdomains too), IPs, CIDR ranges, or `*`. Replaces `NO_PROXY` /
    /// `no_proxy`, which applies when unset. Default unset.
    pub no_proxy: Option<Vec<String>>,
    /// PEM files of extra CA certificates trusted for upstream TLS, added to
    /// the built-in webpki roots (private upstreams, TLS test mocks). Default none.
    pub ca_files: Vec<PathBuf>,
    /// Most idle keep-alive connections kept per upstream origin. Default 1024.
    pub pool_max_idle_per_host: usize,
    /// How long an idle upstream connection is kept for reuse. Default 90 s.
    pub pool_idle_timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            proxy_url: None,
            no_proxy: None,
            ca_files: Vec::new(),
            pool_max_idle_per_host: 1024,
            pool_idle_timeout_ms: 90_000,
        }
    }
}

impl UpstreamConfig {
    /// Every problem with the section, each naming its field (the CA files
    /// are read and parsed here, so a bad path is reported at startup).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(url) = &self.proxy_url {
            if let Err(why) = crate::upstream::parse_proxy_url(url) {
                problems.push(format!("upstream.proxy_url: {why}"));
            }
        }
        for (i, path) in self.ca_files.iter().enumerate() {
            if let Err(why) = crate::upstream::load_ca_file(path) {
                problems.push(format!("upstream.ca_files[{i}]: {why}"));
            }
        }
        if self.pool_idle_timeout_ms == 0 {
            problems.push("upstream.pool_idle_timeout_ms: must be greater than 0".into());
        }
        problems
    }
}

/// Operator settings for a built-in provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// Replace the catalog base URL (tests point this at mock upstreams).
    pub base_url: Option<String>,
    /// Operator-supplied upstream credentials, tried in order after any
    /// provider keys attached to the caller's configuration. Requests they
    /// answer are billed the upstream cost through credits.
    pub api_keys: Vec<String>,
}

/// An upstream defined by the operator: a self-hosted or private OpenAI- or
/// Anthropic-compatible API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomProviderConfig {
    pub id: String,
    /// Base URL including the version path, e.g. `http://127.0.0.1:11434/v1`.
    /// Must be https unless the host is a loopback or private address.
    pub base_url: String,
    pub api: ApiSurface,
    /// Model ids this provider serves; callable as `<id>:<model>` or bare.
    #[serde(default)]
    pub models: Vec<String>,
    /// Embedding model ids this provider serves on OpenAI's `POST
    /// /embeddings` (`api = "openai"` only), called through `/v1/embeddings`
    /// like `models`; priced in `prices` (input only: `output = "0"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embedding_models: Vec<String>,
    /// Whether the upstream serves OpenAI's Responses API (`POST
    /// /responses`; `api = "openai"` only): `/v1/responses` then passes
    /// through unchanged instead of being translated to chat completions.
    /// Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub responses: bool,
    /// Unit prices per model id (each must be in `models` or `embedding_models`). A request the
    /// operator pays for (its `api_keys`, or no key at all) needs one (or a
    /// price override): an unpriced model is refused unless the caller
    /// attached its own provider key. `"0"` is a price (a local model).
    /// Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, DeclaredPrices>,
    /// Credentials for the upstream, if it needs any; tried in order.
    #[serde(default)]
    pub api_keys: Vec<String>,
}

/// One custom model's unit prices: USD per million tokens, exact decimals
/// written as strings (`"0.15"`; a TOML number is refused, since floats are
/// not exact). The field names are the catalog's. `input` and `output` are
/// required; a cache class left out costs what `input` costs, so no token
/// class is free unless declared so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredPrices {
    pub input: ExactUsd,
    pub output: ExactUsd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<ExactUsd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m: Option<ExactUsd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<ExactUsd>,
}

impl DeclaredPrices {
    /// The catalog form, every class filled in.
    pub fn prices(&self) -> Prices {
        let input = self.input.0;
        Prices {
            input,
            cached_input: self.cached_input.map_or(input, |p| p.0),
            cache_write_5m: self.cache_write_5m.map_or(input, |p| p.0),
            cache_write_1h: self.cache_write_1h.map_or(input, |p| p.0),
            output: self.output.0,
        }
    }

    fn negative(&self) -> bool {
        let p = self.prices();
        [
            p.input,
            p.cached_input,
            p.cache_write_5m,
            p.cache_write_1h,
            p.output,
        ]
        .iter()
        .any(|&amount| amount < Usd::ZERO)
    }
}

/// An amount of USD read only from a string (`"0.15"`), never from a TOML
/// number, which would pass through a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ExactUsd(pub Usd);

impl<'de> Deserialize<'de> for ExactUsd {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.trim()
            .parse::<Usd>()
            .map(ExactUsd)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a decimal amount")))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Refuse requests (402) when the account's available credit is at or
    /// below zero. Default true; switch off for deployments that meter only.
    pub enforce: bool,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig { enforce: true }
    }
}

/// How personal data clients declare is stored (`[privacy]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// The end user a request names (`safety_identifier`/`user`,
    /// `metadata.user_id`) in usage events: `keep` as declared (default),
    /// `hash` as `h:` and HMAC-SHA256 hex under a key derived from the
    /// master key (the same on every instance), `drop` not at all.
    pub end_user: EndUserPolicy,
}

/// `[privacy] end_user`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndUserPolicy {
    /// Recorded as the client declared it.
    #[default]
    Keep,
    /// Recorded as `h:<HMAC-SHA256 hex>`, keyed from the master key.
    Hash,
    /// Not recorded.
    Drop,
}

/// Everything the proxy needs to know from configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub server: ServerConfig,
    pub routing: RoutingConfig,
    /// Per built-in provider settings, keyed by provider id.
    pub providers: BTreeMap<String, ProviderSettings>,
    pub custom_providers: Vec<CustomProviderConfig>,
    pub billing: BillingConfig,
    pub upstream: UpstreamConfig,
    /// Operator unit prices per `provider:model` (`[price_overrides."openai:gpt-4o"]`),
    /// as `DeclaredPrices`: they win over the catalog and declared
    /// custom-provider prices, and price a model that has none. Runtime
    /// overrides (admin API) win over these.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub price_overrides: BTreeMap<String, DeclaredPrices>,
    /// USD per call of a built-in tool a provider bills per call, by tool
    /// (`[builtin_tool_prices]`, e.g. `web_search = "0.01"`): a Responses
    /// request with a built-in tool priced here may use the operator's
    /// credentials, and each call the answer reports is billed at this
    /// price. Tools: `web_search` (also `web_search_preview`),
    /// `file_search`, `code_interpreter`, `image_generation`, `computer`
    /// (`computer_use_preview`), `mcp`, `local_shell`. Default: none, so
    /// built-in tools go only on the caller's own provider keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub builtin_tool_prices: BTreeMap<String, ExactUsd>,
    /// `[privacy]`: how declared end users are stored.
    pub privacy: PrivacyConfig,
}

impl ProxyConfig {
    /// Every configuration problem, each naming its field.
    pub fn problems(&self, known_providers: &[&str]) -> Vec<String> {
        let mut problems = Vec::new();
        self.server.problems(&mut problems);
        for (field, value) in [
            ("routing.total_timeout_ms", self.routing.total_timeout_ms),
            (
                "routing.attempt_timeout_ms",
                self.routing.attempt_timeout_ms,
            ),
            (
                "routing.connect_timeout_ms",
                self.routing.connect_timeout_ms,
            ),
            ("routing.read_timeout_ms", self.routing.read_timeout_ms),
        ] {
            if value == 0 {
                problems.push(format!("{field}: must be greater than 0"));
            }
        }
        problems.extend(self.upstream.problems());
        for (id, settings) in &self.providers {
            if !known_providers.contains(&id.as_str()) {
                problems.push(format!(
                    "providers.{id}: no built-in provider has this id (custom providers go in [[custom_providers]])"
                ));
            }
            if let Some(url) = &settings.base_url {
                if let Err(why) = check_upstream_url(url) {
                    problems.push(format!("providers.{id}.base_url: {why}"));
                }
            }
        }
        self.price_override_problems(known_providers, &mut problems);
        self.builtin_tool_price_problems(&mut problems);
        let mut seen = std::collections::HashSet::new();
        for (i, custom) in self.custom_providers.iter().enumerate() {
            let field = format!("custom_providers[{i}]");
            if known_providers.contains(&custom.id.as_str()) {
                problems.push(format!(
                    "{field}.id: `{}` is a built-in provider id",
                    custom.id
                ));
            }
            if !seen.insert(custom.id.clone()) {
                problems.push(format!("{field}.id: `{}` is defined twice", custom.id));
            }
            if custom.id.is_empty()
                || !custom
                    .id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "{field}.id: `{}` must be lowercase letters, digits, `-` or `_`",
                    custom.id
                ));
            }
            if let Err(why) = check_upstream_url(&custom.base_url) {
                problems.push(format!("{field}.base_url: {why}"));
            }
            if !custom.embedding_models.is_empty() && custom.api != ApiSurface::Openai {
                problems.push(format!(
                    "{field}.embedding_models: only an `api = \"openai\"` provider serves embeddings"
                ));
            }
            if custom.responses && custom.api != ApiSurface::Openai {
                problems.push(format!(
                    "{field}.responses: only an `api = \"openai\"` provider serves the Responses API"
                ));
            }
            if let Some(both) = custom
                .models
                .iter()
                .find(|m| custom.embedding_models.contains(m))
            {
                problems.push(format!(
                    "{field}.embedding_models: `{both}` is also in `models`; a model is one kind"
                ));
            }
            for (model, prices) in &custom.prices {
                if !custom.models.contains(model) && !custom.embedding_models.contains(model) {
                    problems.push(format!(
                        "{field}.prices.\"{model}\": `{model}` is not in this provider's `models` or `embedding_models`"
                    ));
                }
                if prices.negative() {
                    problems.push(format!(
                        "{field}.prices.\"{model}\": prices must not be negative"
                    ));
                }
            }
        }
        problems
    }

    /// `builtin_tool_prices`: known tools, prices not negative.
    fn builtin_tool_price_problems(&self, problems: &mut Vec<String>) {
        let known = crate::api::openai_responses::BUILT_IN_TOOLS;
        for (tool, price) in &self.builtin_tool_prices {
            let field = format!("builtin_tool_prices.{tool}");
            if !known.contains(&tool.as_str()) {
                problems.push(format!(
                    "{field}: unknown built-in tool (one of {})",
                    known.join(", ")
                ));
            }
            if price.0 < Usd::ZERO {
                problems.push(format!("{field}: a price must not be negative"));
            }
        }
    }

    /// `price_overrides` keys must be `provider:model` with a built-in or
    /// config custom provider (runtime ones take runtime overrides).
    fn price_override_problems(&self, known_providers: &[&str], problems: &mut Vec<String>) {
        for (key, prices) in &self.price_overrides {
            let field = format!("price_overrides.\"{key}\"");
            match key.split_once(':') {
                Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                    let known = known_providers.contains(&provider)
                        || self.custom_providers.iter().any(|c| c.id == provider);
                    if !known {
                        problems.push(format!(
                            "{field}: unknown provider `{provider}` (a built-in or [[custom_providers]] id)"
                        ));
                    }
                }
                _ => problems.push(format!(
                    "{field}: the key must be `provider:model`, e.g. \"openai:gpt-4o\""
                )),
            }
            if prices.negative() {
                problems.push(format!("{field}: prices must not be negative"));
            }
        }
    }

    /// One line per config custom-provider model without declared prices
    /// or a config price override:
    /// not an error (installs from before prices existed still start), but
    /// requests for it on the operator's credentials are refused.
    pub fn unpriced_models(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, custom) in self.custom_providers.iter().enumerate() {
            for model in custom.models.iter().chain(&custom.embedding_models) {
                let overridden = self
                    .price_overrides
                    .contains_key(&format!("{}:{model}", custom.id));
                if !custom.prices.contains_key(model) && !overridden {
                    lines.push(format!(
                        "custom_providers[{i}] `{id}`: model `{model}` has no price, so requests for \
                         {id}:{model} on the operator's credentials (its api_keys, or none) are refused; \
                         declare one under [custom_providers.prices], e.g. \"{model}\" = {{ input = \"0\", output = \"0\" }}, \
                         or override it under [price_overrides.\"{id}:{model}\"]",
                        id = custom.id
                    ));
                }
            }
        }
        lines
    }
}

/// External upstreams must use https (http only for loopback/private hosts);
/// one definition, shared with the control plane's runtime custom providers.
pub use tollgate_core::catalog::check_upstream_url;

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn http_only_for_local_upstreams() {
        assert!(check_upstream_url("https://api.example.com/v1").is_ok());
        assert!(check_upstream_url("http://127.0.0.1:11434/v1").is_ok());
        assert!(check_upstream_url("http://localhost:8000/v1").is_ok());
        assert!(check_upstream_url("http://10.1.2.3/v1").is_ok());
        assert!(check_upstream_url("http://192.168.0.9/v1").is_ok());
        assert!(check_upstream_url("http://[::1]:9000/v1").is_ok());
        assert!(check_upstream_url("http://api.example.com/v1").is_err());
        assert!(check_upstream_url("http://8.8.8.8/v1").is_err());
        assert!(check_upstream_url("ftp://x/v1").is_err());
        assert!(check_upstream_url("not a url").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let config = ProxyConfig {
            custom_providers: vec![
                CustomProviderConfig {
                    id: "openai".into(),
                    base_url: "http://example.com/v1".into(),
                    api: ApiSurface::Openai,
                    models: vec![],
                    embedding_models: vec![],
                    responses: false,
                    prices: BTreeMap::new(),
                    api_keys: vec![],
                },
                CustomProviderConfig {
                    id: "Bad Id".into(),
                    base_url: "https://ok/v1".into(),
                    api: ApiSurface::Openai,
                    models: vec![],
                    embedding_models: vec![],
                    responses: false,
                    prices: BTreeMap::new(),
                    api_keys: vec![],
                },
            ],
            ..ProxyConfig::default()
        };
        let problems = config.problems(&["openai"]);
        assert!(problems
            .iter()
            .any(|p| p.starts_with("custom_providers[0].id")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("custom_providers[0].base_url")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("custom_providers[1].id")));
        assert_eq!(problems.len(), 3);
    }

    #[test]
    fn embedding_models_need_the_openai_api_one_kind_and_may_be_priced() {
        let custom = |api, models: &[&str], embedding: &[&str], priced: &str| {
            let text = format!(
                "id = \"e\"\nbase_url = \"http://127.0.0.1/v1\"\napi = \"{api}\"\n\
                 models = {models:?}\nembedding_models = {embedding:?}\n\
                 [prices]\n{priced} = {{ input = \"0.1\", output = \"0\" }}\n"
            );
            let provider = parse_custom(&text).map_err(|e| e.to_string())?;
            Ok::<_, String>(
                ProxyConfig {
                    custom_providers: vec![provider],
                    ..ProxyConfig::default()
                }
                .problems(&[]),
            )
        };
        assert_eq!(custom("openai", &["c"], &["emb"], "emb"), Ok(vec![]));
        let anthropic = custom("anthropic", &[], &["emb"], "emb").unwrap_or_default();
        assert!(
            anthropic.iter().any(|p| p.contains("embedding_models")),
            "{anthropic:?}"
        );
        let both = custom("openai", &["m"], &["m"], "m").unwrap_or_default();
        assert!(both.iter().any(|p| p.contains("one kind")), "{both:?}");
        let stray = custom("openai", &[], &["emb"], "other").unwrap_or_default();
        assert!(stray.iter().any(|p| p.contains("`other`")), "{stray:?}");
        // An unpriced embedding model is named like an unpriced chat model.
        let text = "id = \"e\"\nbase_url = \"http://127.0.0.1/v1\"\napi = \"openai\"\n\
                    embedding_models = [\"emb\"]\n";
        let config = ProxyConfig {
            custom_providers: parse_custom(text).into_iter().collect(),
            ..ProxyConfig::default()
        };
        let unpriced = config.unpriced_models();
        assert_eq!(unpriced.len(), 1, "{unpriced:?}");
        assert!(unpriced[0].contains("model `emb`"), "{unpriced:?}");
    }

    fn parse_custom(text: &str) -> Result<CustomProviderConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn declared_prices_are_exact_strings_with_cache_classes_at_the_input_price() {
        let custom = parse_custom(
            "id = \"local\"\nbase_url = \"http://127.0.0.1:11434/v1\"\napi = \"openai\"\n\
             models = [\"llama3.2\", \"qwen\", \"free\"]\n\
             [prices]\n\
             \"llama3.2\" = { input = \"0.1\", output = \"0.40\", cached_input = \"0.01875\" }\n\
             \"free\" = { input = \"0\", output = \"0\" }\n",
        )
        .map_err(|e| e.to_string());
        let Ok(custom) = custom else {
            panic!("{custom:?}");
        };
        let usd = |s: &str| s.parse::<Usd>().unwrap_or_default();
        let llama = custom.prices.get("llama3.2").map(DeclaredPrices::prices);
        assert_eq!(
            llama,
            Some(Prices {
                input: usd("0.1"),
                cached_input: usd("0.01875"),
                cache_write_5m: usd("0.1"),
                cache_write_1h: usd("0.1"),
                output: usd("0.4"),
            })
        );
        assert_eq!(
            custom.prices.get("free").map(DeclaredPrices::prices),
            Some(Prices::default())
        );
        let config = ProxyConfig {
            custom_providers: vec![custom.clone()],
            ..ProxyConfig::default()
        };
        assert!(config.problems(&[]).is_empty());
        let unpriced = config.unpriced_models();
        assert_eq!(unpriced.len(), 1, "{unpriced:?}");
        assert!(unpriced[0].contains("`qwen`") && unpriced[0].contains("local:qwen"));
        // Round trip, as check-config prints it.
        let text = toml::to_string(&custom).unwrap_or_default();
        assert_eq!(parse_custom(&text).ok(), Some(custom));
    }

    #[test]
    fn floats_unknown_fields_stray_and_negative_prices_are_refused() {
        let base = "id = \"local\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi = \"openai\"\n\
                    models = [\"m\"]\n";
        for bad in [
            "[prices]\nm = { input = 0.1, output = \"1\" }\n",
            "[prices]\nm = { input = \"0.1\", output = \"1\", input_per_mtok = \"1\" }\n",
            "[prices]\nm = { input = \"0.1\" }\n",
            "[prices]\nm = { input = \"lots\", output = \"1\" }\n",
        ] {
            assert!(parse_custom(&format!("{base}{bad}")).is_err(), "{bad}");
        }
        let custom = parse_custom(&format!(
            "{base}[prices]\nm = {{ input = \"-1\", output = \"1\" }}\n\
             other = {{ input = \"1\", output = \"1\" }}\n"
        ))
        .map_err(|e| e.to_string());
        let Ok(custom) = custom else {
            panic!("{custom:?}");
        };
        let config = ProxyConfig {
            custom_providers: vec![custom],
            ..ProxyConfig::default()
        };
        let problems = config.problems(&[]);
        assert!(
            problems.iter().any(
                |p| p.starts_with("custom_providers[0].prices.\"m\"") && p.contains("negative")
            ),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("custom_providers[0].prices.\"other\"")),
            "{problems:?}"
        );
    }

    #[test]
    fn builtin_tool_prices_are_exact_strings_for_known_tools() {
        let parse = |text: &str| toml::from_str::<ProxyConfig>(text).map_err(|e| e.to_string());
        let Ok(good) = parse("[builtin_tool_prices]\nweb_search = \"0.01\"\n") else {
            panic!("a price per call parses");
        };
        assert_eq!(
            good.builtin_tool_prices
                .get("web_search")
                .map(|p| p.0.to_string()),
            Some("0.01".to_owned())
        );
        assert!(good.problems(&["openai"]).is_empty());
        assert!(parse("[builtin_tool_prices]\nweb_search = 0.01\n").is_err());
        let Ok(bad) = parse("[builtin_tool_prices]\nweb_serch = \"0.01\"\nmcp = \"-1\"\n") else {
            panic!("parses; the problems name it");
        };
        let problems = bad.problems(&["openai"]).join("\n");
        assert!(
            problems.contains("builtin_tool_prices.web_serch: unknown built-in tool"),
            "{problems}"
        );
        assert!(
            problems.contains("builtin_tool_prices.mcp: a price must not be negative"),
            "{problems}"
        );
    }

    #[test]
    fn price_overrides_parse_from_strings_and_name_their_key_when_wrong() {
        let parse = |text: &str| toml::from_str::<ProxyConfig>(text).map_err(|e| e.to_string());
        let good = parse(
            "[price_overrides.\"openai:gpt-4o\"]\ninput = \"2.00\"\noutput = \"8\"\n\
             cache_write_5m = \"2.5\"\n",
        );
        let Ok(good) = good else {
            panic!("{good:?}");
        };
        let prices = good
            .price_overrides
            .get("openai:gpt-4o")
            .map(DeclaredPrices::prices);
        let usd = |s: &str| s.parse::<Usd>().unwrap_or_default();
        assert_eq!(
            prices,
            Some(Prices {
                input: usd("2"),
                cached_input: usd("2"),
                cache_write_5m: usd("2.5"),
                cache_write_1h: usd("2"),
                output: usd("8"),
            })
        );
        assert!(good.problems(&["openai"]).is_empty());
        for (bad, why) in [
            (
                "[price_overrides.\"openai:gpt-4o\"]\ninput = 2.0\noutput = \"8\"\n",
                "expected a string",
            ),
            (
                "[price_overrides.\"openai:gpt-4o\"]\ninput = \"2\"\n",
                "missing field `output`",
            ),
        ] {
            let err = parse(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
