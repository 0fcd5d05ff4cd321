//! The gateway's shared state: catalog, providers with their credentials,
//! the access-key cache, the HTTP client, the event log and metrics.

use crate::admission::Admission;
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use axum::http::HeaderValue;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tollgate_control::{ControlPlane, ControlState, ProviderIds};
use tollgate_core::control::{Configuration, ConfigurationId, CustomProvider, RateLimits};
use tollgate_core::pricing::AppliedPlan;
use tollgate_core::secrets::hash_access_token;
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, Catalog, CredentialSource, ModelSpec, Prices,
    ProviderKeyId, ProviderSpec,
};
use tollgate_eventlog::EventLog;

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
                let (name, value) = crate::api::upstream(api).auth_header(secret);
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
    /// The API endpoint (chat completions or messages) under it.
    pub endpoint: http::Uri,
    /// OpenAI's embeddings endpoint under it, when the provider offers one.
    pub embeddings_endpoint: Option<http::Uri>,
    /// OpenAI's Responses endpoint under it, when the provider serves one.
    pub responses_endpoint: Option<http::Uri>,
    /// The operator's credentials for this provider, in order.
    pub credentials: Vec<Arc<Credential>>,
}

impl ProviderRuntime {
    fn new(
        spec: ProviderSpec,
        base_url: &str,
        credentials: Vec<Arc<Credential>>,
    ) -> Result<Self, String> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let endpoint = crate::api::upstream(spec.api).endpoint(&base_url);
        // Parsed once: parsing a URL on every request shows up in profiles.
        let endpoint = endpoint
            .parse::<http::Uri>()
            .map_err(|e| format!("`{endpoint}` is not a valid URL: {e}"))?;
        let under_base = |offered: bool, path: &str| -> Result<Option<http::Uri>, String> {
            if !offered || spec.api != ApiSurface::Openai {
                return Ok(None);
            }
            let url = format!("{base_url}/{path}");
            let parsed = url.parse::<http::Uri>();
            Ok(Some(
                parsed.map_err(|e| format!("`{url}` is not a valid URL: {e}"))?,
            ))
        };
        let embeddings_endpoint = under_base(spec.embeddings, "embeddings")?;
        let responses_endpoint = under_base(spec.responses, "responses")?;
        Ok(ProviderRuntime {
            spec,
            base_url,
            endpoint,
            embeddings_endpoint,
            responses_endpoint,
            credentials,
        })
    }
}

/// The authenticated caller: its key, account and the control-plane
/// snapshot the request is evaluated against (one snapshot per request, so
/// a change mid-request never mixes two views).
#[derive(Clone, Debug)]
pub struct Caller {
    pub snapshot: Arc<ControlState>,
    pub key_id: AccessKeyId,
    pub account_id: AccountId,
    pub configuration_id: Option<ConfigurationId>,
}

impl Caller {
    pub fn configuration(&self) -> Option<&Configuration> {
        self.configuration_id
            .as_ref()
            .and_then(|id| self.snapshot.configurations.get(id))
    }

    pub fn rate_limits(&self) -> RateLimits {
        self.configuration()
            .map(|c| c.rate_limits)
            .unwrap_or_default()
    }

    /// The account's price plan as of this request (None: default terms).
    pub fn price_plan(&self) -> Option<AppliedPlan> {
        self.snapshot.price_plan_of(&self.account_id)
    }
}

/// One model to try: which provider, which upstream model id, which prices,
/// and the credentials to try it with, in order.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub provider: Arc<ProviderRuntime>,
    pub upstream_model: String,
    /// Zero for an unpriced model, which then keeps only the caller's own
    /// provider keys (billed the fee only).
    pub prices: Prices,
    pub max_output_tokens: Option<u32>,
    /// Whether the catalog (or a config custom provider) lists the model as
    /// an embedding model; `None` when it cannot tell (a model it does not
    /// list, a runtime custom provider's model).
    pub embedding: Option<bool>,
    pub credentials: Vec<Arc<Credential>>,
    /// The model has no price, so the operator's credentials (or calling a
    /// keyless custom upstream) were withheld: with no credentials left the
    /// candidate is refused as `UnpricedModel`, not `NoCredentials`.
    pub operator_withheld: bool,
}

impl Candidate {
    /// Why this candidate cannot be tried (it has no credentials).
    pub fn unusable(&self) -> ProxyError {
        let provider = self.provider.spec.id.clone();
        if self.operator_withheld {
            ProxyError::UnpricedModel {
                model: format!("{provider}:{}", self.upstream_model),
                provider,
            }
        } else {
            ProxyError::NoCredentials { provider }
        }
    }
}

/// Where a model name led: the provider, the upstream id, the catalog (or
/// custom-provider) entry if any, and its prices if it has any.
struct Located {
    provider: Arc<ProviderRuntime>,
    upstream: String,
    spec: Option<ModelSpec>,
    prices: Option<Prices>,
}

pub struct Gateway {
    pub config: ProxyConfig,
    pub catalog: Catalog,
    /// Built-in and config-file providers with their operator credentials.
    pub providers: HashMap<String, Arc<ProviderRuntime>>,
    pub control: Arc<ControlPlane>,
    pub client: crate::upstream::UpstreamClient,
    pub events: Arc<dyn EventLog>,
    pub metrics: Metrics,
    pub limiter: RateLimiter,
    pub admission: Arc<Admission>,
    /// Identifies this gateway process in usage events (with a sequence
    /// number per event) so balance updates can say what they include.
    pub instance_id: String,
    /// Next usage-event sequence number (assigned at emission).
    pub next_seq: std::sync::atomic::AtomicU64,
    /// Next request number (credit reservation ids).
    pub next_request: std::sync::atomic::AtomicU64,
    /// Held while numbering an event and queueing it, so numbers follow log order.
    pub emit_order: Mutex<()>,
    /// When this instance last recorded each key's use on the control log.
    last_used_recorded: Mutex<HashMap<AccessKeyId, Instant>>,
    /// Config custom-provider models declared without prices, per provider:
    /// in the catalog (so they resolve and are listed) but not priced.
    unpriced: HashMap<String, HashSet<String>>,
    /// `[price_overrides]` by provider, then model.
    config_overrides: HashMap<String, HashMap<String, Prices>>,
}

/// Where a model's effective unit prices come from, in precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// An admin-API override (control plane).
    RuntimeOverride,
    /// `[price_overrides]` in the config file.
    ConfigOverride,
    /// A config custom provider's `[custom_providers.prices]`.
    Declared,
    Catalog,
    /// Unpriced: refused on the operator's credentials.
    None,
}

/// One model's effective prices, as the admin listing shows them.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelPrice {
    pub provider: String,
    pub model: String,
    pub prices: Option<Prices>,
    pub source: PriceSource,
}

/// Keys' last use is recorded at most this often per key and instance.
const LAST_USED_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    #[error("cannot build HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Gateway {
    /// Provider ids the control plane must know: built-in and config-file ones.
    pub fn provider_ids(catalog: &Catalog, config: &ProxyConfig) -> ProviderIds {
        ProviderIds {
            builtin: catalog.providers().iter().map(|p| p.id.clone()).collect(),
            from_config: config
                .custom_providers
                .iter()
                .map(|c| c.id.clone())
                .collect(),
        }
    }

    pub fn new(
        config: ProxyConfig,
        mut catalog: Catalog,
        control: Arc<ControlPlane>,
        events: Arc<dyn EventLog>,
        metrics: &prometheus::Registry,
    ) -> Result<Arc<Gateway>, InitError> {
        let builtin_ids: Vec<String> = catalog.providers().iter().map(|p| p.id.clone()).collect();
        let builtin_refs: Vec<&str> = builtin_ids.iter().map(String::as_str).collect();
        let mut problems = config.problems(&builtin_refs);
        let mut unpriced: HashMap<String, HashSet<String>> = HashMap::new();

        for custom in &config.custom_providers {
            let spec = ProviderSpec {
                id: custom.id.clone(),
                name: custom.id.clone(),
                base_url: custom.base_url.clone(),
                api: custom.api,
                operator_credentials: true,
                custom: true,
                embeddings: !custom.embedding_models.is_empty(),
                responses: custom.responses,
            };
            if catalog.add_provider(spec).is_err() {
                continue; // already reported by `problems`
            }
            let models = custom.models.iter().map(|m| (m, false));
            let embedding_models = custom.embedding_models.iter().map(|m| (m, true));
            for (model, embedding) in models.chain(embedding_models) {
                let prices = custom.prices.get(model).map(|p| p.prices());
                if prices.is_none() {
                    unpriced
                        .entry(custom.id.clone())
                        .or_default()
                        .insert(model.clone());
                }
                let mut spec = custom_model(&custom.id, model, prices);
                spec.embedding = embedding;
                let _ = catalog.add_model(spec);
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
                    Ok(c) => credentials.push(Arc::new(c)),
                    Err(why) => {
                        problems.push(format!("providers.{}.api_keys[{i}]: {why}", spec.id))
                    }
                }
            }
            match ProviderRuntime::new(spec.clone(), &base_url, credentials) {
                Ok(runtime) => {
                    providers.insert(spec.id.clone(), Arc::new(runtime));
                }
                Err(why) => problems.push(format!("providers.{}.base_url: {why}", spec.id)),
            }
        }
        if !problems.is_empty() {
            return Err(InitError::Config(problems));
        }

        let client = crate::upstream::client(&config.routing, &config.upstream)
            .map_err(InitError::HttpClient)?;

        let instance_id = format!("gw_{}", uuid::Uuid::now_v7().simple());
        let metrics = Metrics::new(metrics)?;
        let admission = Arc::new(
            Admission::new(config.billing.enforce, instance_id.clone())
                .timing_round_trips(metrics.ledger_round_trip.clone()),
        );
        Ok(Arc::new(Gateway {
            config_overrides: config_overrides(&config),
            admission,
            config,
            catalog,
            providers,
            control,
            client,
            events,
            metrics,
            limiter: RateLimiter::default(),
            instance_id,
            next_seq: std::sync::atomic::AtomicU64::new(1),
            next_request: std::sync::atomic::AtomicU64::new(1),
            emit_order: Mutex::new(()),
            last_used_recorded: Mutex::new(HashMap::new()),
            unpriced,
        }))
    }

    /// Look the token up in this instance's control-plane view (memory only).
    pub fn authenticate(&self, token: &str) -> Result<Caller, ProxyError> {
        let snapshot = self.control.snapshot();
        let key = snapshot
            .key_by_hash(&hash_access_token(token))
            .ok_or(ProxyError::InvalidKey)?;
        let caller = Caller {
            key_id: key.id.clone(),
            account_id: key.account_id.clone(),
            configuration_id: key.configuration_id.clone(),
            snapshot: snapshot.clone(),
        };
        self.note_key_used(&caller.key_id);
        Ok(caller)
    }

    /// Record a key's use on the control log, at most once a minute per key.
    fn note_key_used(&self, key_id: &AccessKeyId) {
        let now = Instant::now();
        {
            let mut recorded = self.last_used_recorded.lock();
            match recorded.get(key_id) {
                Some(at) if now.duration_since(*at) < LAST_USED_INTERVAL => return,
                _ => {
                    recorded.insert(key_id.clone(), now);
                }
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let control = self.control.clone();
        let key_id = key_id.clone();
        runtime.spawn(async move {
            if let Err(err) = control.record_key_used(&key_id).await {
                tracing::warn!(error = %err, "could not record an access key's last use");
            }
        });
    }

    /// Resolve a model name for `caller`: `provider:model` prefix first, then
    /// the catalog (id or alias → default provider), then runtime custom
    /// providers' declared models; then apply the caller's configuration.
    pub fn resolve(&self, name: &str, caller: &Caller) -> Result<Candidate, ProxyError> {
        if name.is_empty() {
            return Err(ProxyError::invalid_param(
                "model",
                "`model` must not be empty",
            ));
        }
        let Located {
            provider,
            upstream,
            spec,
            prices,
        } = self.locate(name, &caller.snapshot)?;
        self.check_policy(name, &provider, &upstream, spec.is_some(), caller)?;
        let (credentials, operator_withheld) =
            self.credentials_for(&provider, caller, prices.is_some());
        Ok(Candidate {
            // A model the catalog (or a runtime custom provider) does not
            // declare is of unknown kind.
            embedding: spec.as_ref().map(|s| s.embedding),
            upstream_model: spec.as_ref().map_or(upstream, |s| s.id.clone()),
            prices: prices.unwrap_or_default(),
            max_output_tokens: spec
                .as_ref()
                .map(|s| s.max_output_tokens)
                .filter(|&m| m > 0),
            provider,
            credentials,
            operator_withheld,
        })
    }

    /// A catalog entry's own prices (declared ones for a config custom
    /// provider's model): none for a custom model declared without them.
    fn catalog_prices(&self, spec: &ModelSpec) -> Option<(Prices, PriceSource)> {
        let unpriced = self
            .unpriced
            .get(&spec.provider)
            .is_some_and(|models| models.contains(&spec.id));
        let custom = self
            .catalog
            .provider(&spec.provider)
            .is_some_and(|p| p.custom);
        let source = if custom {
            PriceSource::Declared
        } else {
            PriceSource::Catalog
        };
        (!unpriced).then_some((spec.prices, source))
    }

    /// The unit prices a request for `provider`'s `requested` model is
    /// billed at: a runtime override, else a config override (either keyed
    /// by the catalog id, the requested name or an alias, in that order),
    /// else the catalog's or declared prices (`spec`: the catalog entry,
    /// None for a model the catalog does not list).
    pub fn effective_prices(
        &self,
        snapshot: &ControlState,
        provider: &str,
        requested: &str,
        spec: Option<&ModelSpec>,
    ) -> (Option<Prices>, PriceSource) {
        let mut names: Vec<&str> = Vec::with_capacity(2);
        names.extend(spec.map(|s| s.id.as_str()));
        names.push(requested);
        names.extend(
            spec.iter()
                .flat_map(|s| s.aliases.iter().map(String::as_str)),
        );
        if let Some(found) = names
            .iter()
            .find_map(|m| snapshot.price_override(provider, m))
        {
            return (Some(found.prices), PriceSource::RuntimeOverride);
        }
        if let Some(models) = self.config_overrides.get(provider) {
            if let Some(prices) = names.iter().find_map(|m| models.get(*m)) {
                return (Some(*prices), PriceSource::ConfigOverride);
            }
        }
        match spec.and_then(|s| self.catalog_prices(s)) {
            Some((prices, source)) => (Some(prices), source),
            None => (None, PriceSource::None),
        }
    }

    /// Effective prices of every model this gateway knows: the catalog
    /// (config custom providers included), runtime custom providers' models,
    /// then overridden models listed nowhere else (pass-through).
    pub fn price_list(&self, snapshot: &ControlState) -> Vec<ModelPrice> {
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut list = Vec::new();
        let mut add = |provider: &str, model: &str, spec: Option<&ModelSpec>| {
            let (prices, source) = self.effective_prices(snapshot, provider, model, spec);
            list.push(ModelPrice {
                provider: provider.to_owned(),
                model: model.to_owned(),
                prices,
                source,
            });
        };
        for spec in self.catalog.models() {
            add(&spec.provider, &spec.id, Some(spec));
            for name in std::iter::once(&spec.id).chain(&spec.aliases) {
                seen.insert((&spec.provider, name));
            }
        }
        for custom in snapshot.custom_providers.values() {
            for model in custom.models.iter().chain(&custom.embedding_models) {
                if seen.insert((&custom.id, model)) {
                    add(&custom.id, model, None);
                }
            }
        }
        let runtime = snapshot
            .price_override_list()
            .map(|o| (o.provider.as_str(), o.model.as_str()));
        let configured = self.config_overrides.iter().flat_map(|(provider, models)| {
            models.keys().map(move |m| (provider.as_str(), m.as_str()))
        });
        let mut passthrough: Vec<_> = runtime
            .chain(configured)
            .filter(|key| !seen.contains(key))
            .collect();
        passthrough.sort_unstable();
        passthrough.dedup();
        for (provider, model) in passthrough {
            add(provider, model, None);
        }
        list
    }

    /// Which provider serves `name`, under which upstream id, its catalog
    /// entry if it has one, and its prices if it has any (a model the
    /// catalog does not list, or a runtime custom provider's, has none).
    fn locate(&self, name: &str, snapshot: &ControlState) -> Result<Located, ProxyError> {
        if let Some((prefix, rest)) = name.split_once(':') {
            let provider = self
                .providers
                .get(prefix)
                .cloned()
                .or_else(|| runtime_provider(snapshot, prefix));
            if let Some(provider) = provider {
                if rest.is_empty() {
                    return Err(ProxyError::invalid_param(
                        "model",
                        format!("model `{name}` names a provider but no model"),
                    ));
                }
                let listed = self.catalog.provider_model(prefix, rest);
                let (prices, _) = self.effective_prices(snapshot, prefix, rest, listed);
                let spec = listed.cloned().or_else(|| {
                    snapshot
                        .custom_providers
                        .get(prefix)
                        .and_then(|c| runtime_model(c, rest))
                });
                return Ok(Located {
                    provider,
                    upstream: rest.to_owned(),
                    spec,
                    prices,
                });
            }
            if self.catalog.model(name).is_none() {
                return Err(ProxyError::ProviderUnknown {
                    provider: prefix.to_owned(),
                    model: name.to_owned(),
                });
            }
        }
        if let Some(spec) = self.catalog.model(name) {
            let provider = self.providers.get(&spec.provider).cloned().ok_or_else(|| {
                ProxyError::Internal(format!("provider {} missing", spec.provider))
            })?;
            let (prices, _) = self.effective_prices(snapshot, &spec.provider, name, Some(spec));
            return Ok(Located {
                provider,
                upstream: name.to_owned(),
                spec: Some(spec.clone()),
                prices,
            });
        }
        for custom in snapshot.custom_providers.values() {
            if let Some(spec) = runtime_model(custom, name) {
                if let Some(provider) = runtime_provider(snapshot, &custom.id) {
                    // Runtime custom providers declare no prices: only an
                    // override prices their models.
                    let (prices, _) = self.effective_prices(snapshot, &custom.id, name, None);
                    return Ok(Located {
                        provider,
                        upstream: name.to_owned(),
                        spec: Some(spec),
                        prices,
                    });
                }
            }
        }
        Err(ProxyError::ModelUnknown {
            model: name.to_owned(),
        })
    }

    /// The caller's configuration decides: provider allowed? model allowed?
    /// non-catalog pass-through allowed?
    fn check_policy(
        &self,
        name: &str,
        provider: &ProviderRuntime,
        upstream: &str,
        in_catalog: bool,
        caller: &Caller,
    ) -> Result<(), ProxyError> {
        let Some(config) = caller.configuration() else {
            return Ok(());
        };
        let provider_id = provider.spec.id.as_str();
        if let Some(allowed) = &config.allowed_providers {
            if !allowed.iter().any(|p| p == provider_id) {
                return Err(ProxyError::ProviderNotAllowed {
                    provider: provider_id.to_owned(),
                });
            }
        }
        if !in_catalog && !config.allow_passthrough_models {
            return Err(ProxyError::PassthroughNotAllowed {
                model: name.to_owned(),
            });
        }
        if let Some(allowed) = &config.allowed_models {
            let canonical = self
                .catalog
                .provider_model(provider_id, upstream)
                .map(|m| m.id.as_str())
                .unwrap_or(upstream);
            let qualified = format!("{provider_id}:{canonical}");
            // An entry may also name the model by an alias, bare or qualified.
            let alias_here = |entry: &str| {
                self.catalog
                    .provider_model(provider_id, entry)
                    .is_some_and(|m| m.id == canonical)
            };
            let permitted = allowed.iter().any(|m| {
                m == name
                    || m == canonical
                    || *m == qualified
                    || alias_here(m)
                    || m.strip_prefix(provider_id)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(alias_here)
            });
            if !permitted {
                return Err(ProxyError::ModelNotAllowed {
                    model: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Attached provider keys (most recently attached first), then the
    /// operator's credentials; a custom upstream with neither is called
    /// without authentication. The operator pays for the last two, so they
    /// need a price: when `priced` is false they are withheld, and the
    /// second value says whether there were any to withhold.
    fn credentials_for(
        &self,
        provider: &ProviderRuntime,
        caller: &Caller,
        priced: bool,
    ) -> (Vec<Arc<Credential>>, bool) {
        let mut credentials = Vec::new();
        if let Some(config) = caller.configuration() {
            for (key_id, secret) in caller.snapshot.attached_keys(config, &provider.spec.id) {
                match Credential::new(provider.spec.api, CredentialSource::Byok, Some(&secret.0)) {
                    Ok(mut c) => {
                        c.key_id = Some(key_id);
                        credentials.push(Arc::new(c));
                    }
                    Err(why) => {
                        tracing::warn!(provider_key = %key_id, reason = %why, "skipping an unusable provider key")
                    }
                }
            }
        }
        if !priced {
            let withheld = !provider.credentials.is_empty() || provider.spec.custom;
            return (credentials, withheld);
        }
        credentials.extend(provider.credentials.iter().cloned());
        if credentials.is_empty() && provider.spec.custom {
            if let Ok(c) = Credential::new(provider.spec.api, CredentialSource::Operator, None) {
                credentials.push(Arc::new(c));
            }
        }
        (credentials, false)
    }
}

/// `[price_overrides]` by provider, then model (keys were validated by
/// `ProxyConfig::problems`).
fn config_overrides(config: &ProxyConfig) -> HashMap<String, HashMap<String, Prices>> {
    let mut overrides: HashMap<String, HashMap<String, Prices>> = HashMap::new();
    for (key, declared) in &config.price_overrides {
        if let Some((provider, model)) = key.split_once(':') {
            overrides
                .entry(provider.to_owned())
                .or_default()
                .insert(model.to_owned(), declared.prices());
        }
    }
    overrides
}

/// A custom provider's model; `prices` as declared (zero when undeclared,
/// which `Gateway::unpriced` records).
fn custom_model(provider: &str, model: &str, prices: Option<Prices>) -> ModelSpec {
    ModelSpec {
        provider: provider.to_owned(),
        id: model.to_owned(),
        aliases: vec![],
        context_window: 0,
        max_output_tokens: 0,
        prices: prices.unwrap_or_default(),
        embedding: false,
    }
}

/// A runtime custom provider's declared model (chat or embedding), unpriced.
fn runtime_model(custom: &CustomProvider, model: &str) -> Option<ModelSpec> {
    let embedding = if custom.models.iter().any(|m| m == model) {
        false
    } else if custom.embedding_models.iter().any(|m| m == model) {
        true
    } else {
        return None;
    };
    let mut spec = custom_model(&custom.id, model, None);
    spec.embedding = embedding;
    Some(spec)
}

/// A custom provider defined through the admin API, as a runtime provider.
fn runtime_provider(snapshot: &ControlState, id: &str) -> Option<Arc<ProviderRuntime>> {
    let custom = snapshot.custom_providers.get(id)?;
    let spec = ProviderSpec {
        id: custom.id.clone(),
        name: custom.id.clone(),
        base_url: custom.base_url.clone(),
        api: custom.api,
        operator_credentials: false,
        custom: true,
        // Like a config-file custom provider: embedding models give it an
        // `/embeddings` endpoint.
        embeddings: !custom.embedding_models.is_empty(),
        responses: custom.responses,
    };
    ProviderRuntime::new(spec, &custom.base_url, vec![])
        .map(Arc::new)
        .ok()
}
