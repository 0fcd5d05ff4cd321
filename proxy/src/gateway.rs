//! The gateway's shared state: catalog, providers with their credentials,
//! the access-key cache, the HTTP client, the event log and metrics.

use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::secrets::hash_access_token;
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, Catalog, CredentialSource, EventLog, ModelSpec, Prices,
    ProviderKeyId, ProviderSpec,
};
use tollgate_store::KeyStore;

/// An upstream credential. Its secret never appears in Debug output or logs.
pub struct Credential {
    pub source: CredentialSource,
    pub key_id: Option<ProviderKeyId>,
    /// Ready-made auth header (name, value) for the provider's API, if any.
    pub auth_header: Option<(&'static str, HeaderValue)>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.source)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Credential {
    fn new(
        api: ApiSurface,
        source: CredentialSource,
        secret: Option<&str>,
    ) -> Result<Self, String> {
        let auth_header = match secret {
            None => None,
            Some(secret) => {
                let (name, value) = match api {
                    ApiSurface::Openai => ("authorization", format!("Bearer {secret}")),
                    ApiSurface::Anthropic => ("x-api-key", secret.to_owned()),
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    "credential contains characters not allowed in a header".to_owned()
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(Credential {
            source,
            key_id: None,
            auth_header,
        })
    }
}

#[derive(Debug)]
pub struct ProviderRuntime {
    pub spec: ProviderSpec,
    /// Base URL with overrides applied, without a trailing slash.
    pub base_url: String,
    pub credentials: Vec<Credential>,
}

impl ProviderRuntime {
    pub fn endpoint_url(&self) -> String {
        match self.spec.api {
            ApiSurface::Openai => format!("{}/chat/completions", self.base_url),
            ApiSurface::Anthropic => format!("{}/messages", self.base_url),
        }
    }
}

/// What an authenticated access key resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthedKey {
    pub key_id: AccessKeyId,
    pub account_id: AccountId,
}

/// One model to try: which provider, which upstream model id, which prices.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub provider: Arc<ProviderRuntime>,
    pub upstream_model: String,
    pub prices: Prices,
    pub max_output_tokens: Option<u32>,
}

pub struct Gateway {
    pub config: ProxyConfig,
    pub catalog: Catalog,
    pub providers: HashMap<String, Arc<ProviderRuntime>>,
    pub keys: ArcSwap<HashMap<String, Arc<AuthedKey>>>,
    pub key_store: KeyStore,
    pub client: reqwest::Client,
    pub events: Arc<dyn EventLog>,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    #[error("cannot build HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot load access keys: {0}")]
    Keys(#[from] tollgate_store::StoreError),
}

impl Gateway {
    pub fn new(
        config: ProxyConfig,
        mut catalog: Catalog,
        key_store: KeyStore,
        events: Arc<dyn EventLog>,
    ) -> Result<Arc<Gateway>, InitError> {
        let builtin_ids: Vec<String> = catalog.providers().iter().map(|p| p.id.clone()).collect();
        let builtin_refs: Vec<&str> = builtin_ids.iter().map(String::as_str).collect();
        let mut problems = config.problems(&builtin_refs);

        for custom in &config.custom_providers {
            let spec = ProviderSpec {
                id: custom.id.clone(),
                name: custom.id.clone(),
                base_url: custom.base_url.clone(),
                api: custom.api,
                operator_credentials: true,
                custom: true,
            };
            if catalog.add_provider(spec).is_err() {
                continue; // already reported by `problems`
            }
            for model in &custom.models {
                let _ = catalog.add_model(ModelSpec {
                    provider: custom.id.clone(),
                    id: model.clone(),
                    aliases: vec![],
                    context_window: 0,
                    max_output_tokens: 0,
                    prices: Prices::default(),
                });
            }
        }

        let mut providers = HashMap::new();
        for spec in catalog.providers() {
            let (base_url, secrets): (String, Vec<String>) = match config.providers.get(&spec.id) {
                Some(settings) => (
                    settings
                        .base_url
                        .clone()
                        .unwrap_or_else(|| spec.base_url.clone()),
                    settings.api_keys.clone(),
                ),
                None => match config.custom_providers.iter().find(|c| c.id == spec.id) {
                    Some(custom) => (custom.base_url.clone(), custom.api_keys.clone()),
                    None => (spec.base_url.clone(), vec![]),
                },
            };
            let mut credentials = Vec::new();
            for (i, secret) in secrets.iter().enumerate() {
                // A key listed twice would be retried with the same model: keep the first.
                if secrets[..i].contains(secret) {
                    continue;
                }
                match Credential::new(spec.api, CredentialSource::Operator, Some(secret)) {
                    Ok(c) => credentials.push(c),
                    Err(why) => {
                        problems.push(format!("providers.{}.api_keys[{i}]: {why}", spec.id))
                    }
                }
            }
            // A custom upstream without keys is called without authentication.
            if spec.custom && credentials.is_empty() {
                if let Ok(c) = Credential::new(spec.api, CredentialSource::Operator, None) {
                    credentials.push(c);
                }
            }
            providers.insert(
                spec.id.clone(),
                Arc::new(ProviderRuntime {
                    spec: spec.clone(),
                    base_url: base_url.trim_end_matches('/').to_owned(),
                    credentials,
                }),
            );
        }
        if !problems.is_empty() {
            return Err(InitError::Config(problems));
        }

        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(config.routing.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| InitError::HttpClient(e.to_string()))?;

        let gateway = Arc::new(Gateway {
            config,
            catalog,
            providers,
            keys: ArcSwap::from_pointee(HashMap::new()),
            key_store,
            client,
            events,
            metrics: Metrics::new()?,
        });
        gateway.reload_keys()?;
        Ok(gateway)
    }

    /// Re-read active access keys into the in-memory cache.
    pub fn reload_keys(&self) -> Result<(), tollgate_store::StoreError> {
        let mut map = HashMap::new();
        for key in self.key_store.access_keys()? {
            if key.revoked_at.is_none() {
                map.insert(
                    key.token_hash.clone(),
                    Arc::new(AuthedKey {
                        key_id: key.id,
                        account_id: key.account_id,
                    }),
                );
            }
        }
        self.keys.store(Arc::new(map));
        Ok(())
    }

    /// Keeps the key cache fresh so revocations apply within `interval`.
    pub fn spawn_key_refresh(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let gateway = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(gateway) = gateway.upgrade() else {
                    break;
                };
                if let Err(err) = gateway.reload_keys() {
                    tracing::warn!(error = %err, "access key refresh failed; keeping the previous set");
                }
            }
        })
    }

    pub fn authenticate(&self, token: &str) -> Result<Arc<AuthedKey>, ProxyError> {
        self.keys
            .load()
            .get(&hash_access_token(token))
            .cloned()
            .ok_or(ProxyError::InvalidKey)
    }

    /// Resolve a model name: `provider:model` prefix first, then the catalog
    /// (id or alias → default provider). Non-catalog models need the prefix.
    pub fn resolve(&self, name: &str) -> Result<Candidate, ProxyError> {
        if name.is_empty() {
            return Err(ProxyError::invalid_param(
                "model",
                "`model` must not be empty",
            ));
        }
        if let Some((prefix, rest)) = name.split_once(':') {
            if let Some(provider) = self.providers.get(prefix) {
                if rest.is_empty() {
                    return Err(ProxyError::invalid_param(
                        "model",
                        format!("model `{name}` names a provider but no model"),
                    ));
                }
                let spec = self.catalog.provider_model(prefix, rest);
                return Ok(self.candidate(provider.clone(), rest, spec));
            }
            if self.catalog.model(name).is_none() {
                return Err(ProxyError::ProviderUnknown {
                    provider: prefix.to_owned(),
                    model: name.to_owned(),
                });
            }
        }
        let spec = self
            .catalog
            .model(name)
            .ok_or_else(|| ProxyError::ModelUnknown {
                model: name.to_owned(),
            })?;
        let provider =
            self.providers.get(&spec.provider).cloned().ok_or_else(|| {
                ProxyError::Internal(format!("provider {} missing", spec.provider))
            })?;
        Ok(self.candidate(provider, name, Some(spec)))
    }

    fn candidate(
        &self,
        provider: Arc<ProviderRuntime>,
        name: &str,
        spec: Option<&ModelSpec>,
    ) -> Candidate {
        Candidate {
            provider,
            upstream_model: spec
                .map(|s| s.id.clone())
                .unwrap_or_else(|| name.to_owned()),
            prices: spec.map(|s| s.prices).unwrap_or_default(),
            max_output_tokens: spec.map(|s| s.max_output_tokens).filter(|&m| m > 0),
        }
    }
}
