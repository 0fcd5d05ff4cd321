//! The control plane: validates admin operations, writes them as changes to
//! the control topic, and keeps every instance's view current by tailing it.

use crate::crypto::MasterKey;
use crate::state::ControlState;
use arc_swap::ArcSwap;
use chrono::Utc;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::control::{
    AccessKey, Account, Configuration, ConfigurationId, ControlChange, ControlKind, ControlObject,
    CustomProvider, PriceOverride, ProviderKey, ProviderKeyAttachment, RateLimits,
};
use tollgate_core::secrets::{display_prefix, generate_access_token, hash_access_token};
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, Envelope, EventBody, Prices, ProviderKeyId, Usd,
};
use tollgate_eventlog::topics;
use tollgate_eventlog::{EventLog, EventLogError, LogRecord};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("control log unavailable: {0}")]
    Log(#[from] EventLogError),
}

/// Provider ids known outside the control plane: the built-in catalog and
/// custom providers from the config file (which the admin API may not reuse).
#[derive(Clone, Debug, Default)]
pub struct ProviderIds {
    pub builtin: HashSet<String>,
    pub from_config: HashSet<String>,
}

/// What a configuration allows; the admin API's create/update body.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationSpec {
    /// Not blank (trimmed).
    #[schema(pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    pub allowed_providers: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default = "default_true")]
    pub allow_passthrough_models: bool,
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Tags recorded on every usage event of the keys assigned to this
    /// configuration; a request's `x-tollgate-tags` header overrides a
    /// default of the same key. Keys `[a-z0-9_.-]{1,64}`; values 1–128
    /// printable ASCII characters other than `,` and `=`, without
    /// surrounding spaces; at most 10. Client-declared labels: never secrets.
    #[serde(default)]
    pub default_tags: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

pub struct ControlPlane {
    log: Arc<dyn EventLog>,
    master: Arc<MasterKey>,
    providers: ProviderIds,
    state: ArcSwap<ControlState>,
    /// Serializes catch-up so changes apply exactly once, in order.
    apply: tokio::sync::Mutex<()>,
}

const READ_BATCH: usize = 1_000;

impl ControlPlane {
    /// Build the view by replaying the whole control topic.
    pub async fn open(
        log: Arc<dyn EventLog>,
        master: Arc<MasterKey>,
        providers: ProviderIds,
    ) -> Result<Arc<ControlPlane>, ControlError> {
        let plane = Arc::new(ControlPlane {
            log,
            master,
            providers,
            state: ArcSwap::from_pointee(ControlState::default()),
            apply: tokio::sync::Mutex::new(()),
        });
        plane.catch_up().await?;
        Ok(plane)
    }

    /// Pseudonymizes end users with a key derived from the master key (the
    /// same on every instance sharing it).
    pub fn end_user_hasher(&self) -> &crate::crypto::EndUserHasher {
        self.master.end_user_hasher()
    }

    pub fn snapshot(&self) -> Arc<ControlState> {
        self.state.load_full()
    }

    /// Apply every change appended since the last call. Returns how many.
    pub async fn catch_up(&self) -> Result<usize, ControlError> {
        let _guard = self.apply.lock().await;
        let mut state: Option<ControlState> = None;
        let mut applied = 0;
        loop {
            let from = state
                .as_ref()
                .map_or_else(|| self.state.load().next_offset, |s| s.next_offset);
            let records = self.log.read(topics::CONTROL, 0, from, READ_BATCH).await?;
            if records.is_empty() {
                break;
            }
            let next = state.get_or_insert_with(|| (**self.state.load()).clone());
            for record in &records {
                next.next_offset = record.offset + 1;
                match serde_json::from_slice::<Envelope>(&record.payload) {
                    Ok(Envelope {
                        body: EventBody::Control(change),
                        ..
                    }) => {
                        next.apply(&change, &self.master);
                        applied += 1;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(offset = record.offset, error = %err, "skipping unreadable control record");
                    }
                }
            }
            if records.len() < READ_BATCH {
                break;
            }
        }
        if let Some(next) = state {
            self.state.store(Arc::new(next));
        }
        Ok(applied)
    }

    /// Validate a change against the latest view, so a change made on
    /// another instance moments ago is not overwritten from a stale one.
    pub(crate) async fn refresh(&self) -> Result<(), ControlError> {
        self.catch_up().await.map(|_| ())
    }

    /// Keep this instance's view current; changes from any instance apply
    /// within `every` (plus a read).
    pub fn spawn_tail(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let plane = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(plane) = plane.upgrade() else { break };
                if let Err(err) = plane.catch_up().await {
                    tracing::warn!(error = %err, "control-plane catch-up failed; retrying");
                }
            }
        })
    }

    /// Append a change durably, then apply it here (read-your-writes).
    pub(crate) async fn publish(&self, change: ControlChange) -> Result<(), ControlError> {
        let key = match &change {
            ControlChange::Upsert { object } => object.object_id(),
            ControlChange::Delete { kind, id } => match kind {
                ControlKind::CustomProvider => format!("custom_provider:{id}"),
                ControlKind::PricePlan => format!("price_plan:{id}"),
                ControlKind::PriceOverride => format!("price_override:{id}"),
                _ => id.clone(),
            },
            ControlChange::KeyUsed { access_key_id, .. } => format!("last_used:{access_key_id}"),
        };
        let payload = serde_json::to_vec(&Envelope::control(change))
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        self.log
            .append(LogRecord {
                topic: topics::CONTROL.to_owned(),
                key,
                payload,
            })
            .await?;
        self.log.flush().await?;
        self.catch_up().await?;
        Ok(())
    }

    /// Record that a key was used (callers rate-limit this).
    pub async fn record_key_used(&self, id: &AccessKeyId) -> Result<(), ControlError> {
        self.publish(ControlChange::KeyUsed {
            access_key_id: id.clone(),
            at: Utc::now(),
        })
        .await
    }

    /// Encrypt a secret for storage on the control log (provider keys,
    /// webhook signing secrets).
    pub(crate) fn encrypt(&self, plaintext: &str) -> String {
        self.master.encrypt(plaintext)
    }

    pub(crate) async fn upsert(&self, object: ControlObject) -> Result<(), ControlError> {
        self.publish(ControlChange::Upsert { object }).await
    }

    pub(crate) fn account(&self, id: &AccountId) -> Result<Account, ControlError> {
        self.snapshot()
            .accounts
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("account {id}")))
    }

    pub fn known_provider(&self, id: &str) -> bool {
        self.providers.builtin.contains(id)
            || self.providers.from_config.contains(id)
            || self.snapshot().custom_providers.contains_key(id)
    }

    // ---- accounts -------------------------------------------------------

    pub async fn create_account(&self, name: &str) -> Result<Account, ControlError> {
        self.refresh().await?;
        let name = non_empty("name", name)?;
        let account = Account {
            id: AccountId::generate(),
            name,
            created_at: Utc::now(),
            price_plan_id: None,
            low_balance_usd: None,
        };
        self.upsert(ControlObject::Account(account.clone())).await?;
        Ok(account)
    }

    // ---- access keys ----------------------------------------------------

    /// Create a key; the token is returned here and never again.
    pub async fn create_access_key(
        &self,
        account_id: &AccountId,
        name: &str,
        configuration_id: Option<ConfigurationId>,
    ) -> Result<(AccessKey, String), ControlError> {
        self.refresh().await?;
        self.account(account_id)?;
        if let Some(cfg) = &configuration_id {
            self.owned_configuration(account_id, cfg)?;
        }
        let token = generate_access_token();
        let key = AccessKey {
            id: AccessKeyId::generate(),
            account_id: account_id.clone(),
            name: non_empty("name", name)?,
            token_prefix: display_prefix(&token),
            token_hash: hash_access_token(&token),
            created_at: Utc::now(),
            revoked_at: None,
            configuration_id,
        };
        self.upsert(ControlObject::AccessKey(key.clone())).await?;
        Ok((key, token))
    }

    fn key(&self, id: &AccessKeyId) -> Result<AccessKey, ControlError> {
        self.snapshot()
            .access_keys
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("access key {id}")))
    }

    pub async fn revoke_access_key(&self, id: &AccessKeyId) -> Result<AccessKey, ControlError> {
        self.refresh().await?;
        let mut key = self.key(id)?;
        if key.revoked_at.is_some() {
            return Err(ControlError::Conflict(format!(
                "access key {id} is already revoked"
            )));
        }
        key.revoked_at = Some(Utc::now());
        self.upsert(ControlObject::AccessKey(key.clone())).await?;
        Ok(key)
    }

    pub async fn assign_configuration(
        &self,
        id: &AccessKeyId,
        configuration_id: Option<ConfigurationId>,
    ) -> Result<AccessKey, ControlError> {
        self.refresh().await?;
        let mut key = self.key(id)?;
        if let Some(cfg) = &configuration_id {
            self.owned_configuration(&key.account_id, cfg)?;
        }
        key.configuration_id = configuration_id;
        self.upsert(ControlObject::AccessKey(key.clone())).await?;
        Ok(key)
    }

    // ---- configurations -------------------------------------------------

    fn owned_configuration(
        &self,
        account_id: &AccountId,
        id: &ConfigurationId,
    ) -> Result<Configuration, ControlError> {
        match self.snapshot().configurations.get(id) {
            Some(c) if &c.account_id == account_id => Ok(c.clone()),
            Some(_) => Err(ControlError::Invalid(format!(
                "configuration {id} belongs to another account"
            ))),
            None => Err(ControlError::NotFound(format!("configuration {id}"))),
        }
    }

    pub fn configuration(&self, id: &ConfigurationId) -> Result<Configuration, ControlError> {
        self.snapshot()
            .configurations
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("configuration {id}")))
    }

    fn check_spec(&self, spec: &ConfigurationSpec) -> Result<(), ControlError> {
        non_empty("name", &spec.name)?;
        tollgate_core::attribution::check_default_tags(&spec.default_tags)
            .map_err(|why| ControlError::Invalid(format!("default_tags: {why}")))?;
        if let Some(providers) = &spec.allowed_providers {
            for p in providers {
                if !self.known_provider(p) {
                    return Err(ControlError::Invalid(format!(
                        "allowed_providers: unknown provider `{p}`"
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn create_configuration(
        &self,
        account_id: &AccountId,
        spec: ConfigurationSpec,
    ) -> Result<Configuration, ControlError> {
        self.refresh().await?;
        self.account(account_id)?;
        self.check_spec(&spec)?;
        let config = Configuration {
            id: ConfigurationId::generate(),
            account_id: account_id.clone(),
            name: spec.name,
            allowed_providers: spec.allowed_providers,
            allowed_models: spec.allowed_models,
            allow_passthrough_models: spec.allow_passthrough_models,
            provider_keys: vec![],
            rate_limits: spec.rate_limits,
            default_tags: spec.default_tags,
            created_at: Utc::now(),
        };
        self.upsert(ControlObject::Configuration(config.clone()))
            .await?;
        Ok(config)
    }

    pub async fn update_configuration(
        &self,
        id: &ConfigurationId,
        spec: ConfigurationSpec,
    ) -> Result<Configuration, ControlError> {
        self.refresh().await?;
        let mut config = self.configuration(id)?;
        self.check_spec(&spec)?;
        config.name = spec.name;
        config.allowed_providers = spec.allowed_providers;
        config.allowed_models = spec.allowed_models;
        config.allow_passthrough_models = spec.allow_passthrough_models;
        config.rate_limits = spec.rate_limits;
        config.default_tags = spec.default_tags;
        self.upsert(ControlObject::Configuration(config.clone()))
            .await?;
        Ok(config)
    }

    pub async fn delete_configuration(&self, id: &ConfigurationId) -> Result<(), ControlError> {
        self.refresh().await?;
        self.configuration(id)?;
        let in_use = self
            .snapshot()
            .access_keys
            .values()
            .any(|k| k.revoked_at.is_none() && k.configuration_id.as_ref() == Some(id));
        if in_use {
            return Err(ControlError::Conflict(format!(
                "configuration {id} is assigned to an active access key"
            )));
        }
        self.publish(ControlChange::Delete {
            kind: ControlKind::Configuration,
            id: id.to_string(),
        })
        .await
    }

    pub async fn attach_provider_key(
        &self,
        id: &ConfigurationId,
        provider_key_id: &ProviderKeyId,
    ) -> Result<Configuration, ControlError> {
        self.refresh().await?;
        let mut config = self.configuration(id)?;
        let key = self.provider_key(provider_key_id)?;
        if key.account_id != config.account_id {
            return Err(ControlError::Invalid(format!(
                "provider key {provider_key_id} belongs to another account"
            )));
        }
        // Re-attaching moves the key to the front (most recent first).
        config
            .provider_keys
            .retain(|a| &a.provider_key_id != provider_key_id);
        config.provider_keys.push(ProviderKeyAttachment {
            provider_key_id: provider_key_id.clone(),
            attached_at: Utc::now(),
        });
        self.upsert(ControlObject::Configuration(config.clone()))
            .await?;
        Ok(config)
    }

    pub async fn detach_provider_key(
        &self,
        id: &ConfigurationId,
        provider_key_id: &ProviderKeyId,
    ) -> Result<Configuration, ControlError> {
        self.refresh().await?;
        let mut config = self.configuration(id)?;
        let before = config.provider_keys.len();
        config
            .provider_keys
            .retain(|a| &a.provider_key_id != provider_key_id);
        if config.provider_keys.len() == before {
            return Err(ControlError::NotFound(format!(
                "provider key {provider_key_id} attached to configuration {id}"
            )));
        }
        self.upsert(ControlObject::Configuration(config.clone()))
            .await?;
        Ok(config)
    }

    // ---- provider keys --------------------------------------------------

    fn provider_key(&self, id: &ProviderKeyId) -> Result<ProviderKey, ControlError> {
        self.snapshot()
            .provider_keys
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("provider key {id}")))
    }

    pub async fn add_provider_key(
        &self,
        account_id: &AccountId,
        provider: &str,
        name: &str,
        secret: &str,
    ) -> Result<ProviderKey, ControlError> {
        self.refresh().await?;
        self.account(account_id)?;
        if !self.known_provider(provider) {
            return Err(ControlError::Invalid(format!(
                "provider: unknown provider `{provider}`"
            )));
        }
        let secret = non_empty("secret", secret)?;
        let key = ProviderKey {
            id: ProviderKeyId::generate(),
            account_id: account_id.clone(),
            provider: provider.to_owned(),
            name: non_empty("name", name)?,
            secret_ciphertext: self.master.encrypt(&secret),
            created_at: Utc::now(),
            rotated_at: None,
        };
        self.upsert(ControlObject::ProviderKey(key.clone())).await?;
        Ok(key)
    }

    /// Replace a key's secret, keeping its id (and so its attachments).
    pub async fn rotate_provider_key(
        &self,
        id: &ProviderKeyId,
        secret: &str,
    ) -> Result<ProviderKey, ControlError> {
        self.refresh().await?;
        let mut key = self.provider_key(id)?;
        key.secret_ciphertext = self.master.encrypt(&non_empty("secret", secret)?);
        key.rotated_at = Some(Utc::now());
        self.upsert(ControlObject::ProviderKey(key.clone())).await?;
        Ok(key)
    }

    pub async fn delete_provider_key(&self, id: &ProviderKeyId) -> Result<(), ControlError> {
        self.refresh().await?;
        self.provider_key(id)?;
        // Detach everywhere first so no configuration points at nothing.
        let attached: Vec<ConfigurationId> = self
            .snapshot()
            .configurations
            .values()
            .filter(|c| c.provider_keys.iter().any(|a| &a.provider_key_id == id))
            .map(|c| c.id.clone())
            .collect();
        for cfg in attached {
            self.detach_provider_key(&cfg, id).await?;
        }
        self.publish(ControlChange::Delete {
            kind: ControlKind::ProviderKey,
            id: id.to_string(),
        })
        .await
    }

    // ---- custom providers -------------------------------------------------

    pub async fn create_custom_provider(
        &self,
        id: &str,
        base_url: &str,
        api: ApiSurface,
        models: Vec<String>,
        embedding_models: Vec<String>,
        responses: bool,
    ) -> Result<CustomProvider, ControlError> {
        self.refresh().await?;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(ControlError::Invalid(format!(
                "id: `{id}` must be lowercase letters, digits, `-` or `_`"
            )));
        }
        if self.providers.builtin.contains(id) {
            return Err(ControlError::Conflict(format!(
                "id: `{id}` is a built-in provider"
            )));
        }
        if self.providers.from_config.contains(id) {
            return Err(ControlError::Conflict(format!(
                "id: `{id}` is defined in the config file"
            )));
        }
        if self.snapshot().custom_providers.contains_key(id) {
            return Err(ControlError::Conflict(format!("id: `{id}` already exists")));
        }
        tollgate_core::catalog::check_upstream_url(base_url)
            .map_err(|why| ControlError::Invalid(format!("base_url: {why}")))?;
        check_model_ids("models", &models)?;
        check_model_ids("embedding_models", &embedding_models)?;
        // The same rules as a config-file custom provider's.
        if !embedding_models.is_empty() && api != ApiSurface::Openai {
            return Err(ControlError::Invalid(
                "embedding_models: only an `openai` api provider serves embeddings".into(),
            ));
        }
        if responses && api != ApiSurface::Openai {
            return Err(ControlError::Invalid(
                "responses: only an `openai` api provider serves the Responses API".into(),
            ));
        }
        if let Some(both) = models.iter().find(|m| embedding_models.contains(m)) {
            return Err(ControlError::Invalid(format!(
                "embedding_models: `{both}` is also in `models`; a model is one kind"
            )));
        }
        let provider = CustomProvider {
            id: id.to_owned(),
            base_url: base_url.to_owned(),
            api,
            models,
            embedding_models,
            responses,
            created_at: Utc::now(),
        };
        self.upsert(ControlObject::CustomProvider(provider.clone()))
            .await?;
        Ok(provider)
    }

    pub async fn delete_custom_provider(&self, id: &str) -> Result<(), ControlError> {
        self.refresh().await?;
        if !self.snapshot().custom_providers.contains_key(id) {
            return Err(ControlError::NotFound(format!("custom provider {id}")));
        }
        self.publish(ControlChange::Delete {
            kind: ControlKind::CustomProvider,
            id: id.to_owned(),
        })
        .await
    }
}

/// A price override as the admin API takes it: USD per million tokens as
/// decimal strings. `input` and `output` are required; a cache class left
/// out costs what `input` costs (as for prices declared in the config file).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub input: Usd,
    pub output: Usd,
    #[serde(default)]
    pub cached_input: Option<Usd>,
    #[serde(default)]
    pub cache_write_5m: Option<Usd>,
    #[serde(default)]
    pub cache_write_1h: Option<Usd>,
}

impl PriceSpec {
    /// Every class filled in; the first negative one is an error naming it.
    pub fn prices(&self) -> Result<Prices, ControlError> {
        let input = self.input;
        let prices = Prices {
            input,
            cached_input: self.cached_input.unwrap_or(input),
            cache_write_5m: self.cache_write_5m.unwrap_or(input),
            cache_write_1h: self.cache_write_1h.unwrap_or(input),
            output: self.output,
        };
        for (field, amount) in [
            ("input", prices.input),
            ("output", prices.output),
            ("cached_input", prices.cached_input),
            ("cache_write_5m", prices.cache_write_5m),
            ("cache_write_1h", prices.cache_write_1h),
        ] {
            if amount < Usd::ZERO {
                return Err(ControlError::Invalid(format!(
                    "{field}: `{amount}` is negative; prices must not be negative"
                )));
            }
        }
        Ok(prices)
    }
}

impl ControlPlane {
    // ---- price overrides -----------------------------------------------------

    /// Set (or replace) the runtime unit prices for `provider:model`. The
    /// model need not be in the catalog: an override prices a pass-through
    /// or custom model too.
    pub async fn set_price_override(
        &self,
        provider: &str,
        model: &str,
        spec: &PriceSpec,
    ) -> Result<PriceOverride, ControlError> {
        self.refresh().await?;
        if !self.known_provider(provider) {
            return Err(ControlError::Invalid(format!(
                "provider: unknown provider `{provider}`"
            )));
        }
        if model.trim().is_empty() || model.trim() != model {
            return Err(ControlError::Invalid(
                "model: must not be empty or start or end with spaces".into(),
            ));
        }
        let price = PriceOverride {
            provider: provider.to_owned(),
            model: model.to_owned(),
            prices: spec.prices()?,
            updated_at: Utc::now(),
        };
        self.upsert(ControlObject::PriceOverride(price.clone()))
            .await?;
        Ok(price)
    }

    /// Remove a runtime override: the model is priced by the config file or
    /// the catalog again (or not at all).
    pub async fn delete_price_override(
        &self,
        provider: &str,
        model: &str,
    ) -> Result<(), ControlError> {
        self.refresh().await?;
        if self.snapshot().price_override(provider, model).is_none() {
            return Err(ControlError::NotFound(format!(
                "price override {provider}:{model}"
            )));
        }
        self.publish(ControlChange::Delete {
            kind: ControlKind::PriceOverride,
            id: format!("{provider}:{model}"),
        })
        .await
    }
}

pub(crate) fn non_empty(field: &str, value: &str) -> Result<String, ControlError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(ControlError::Invalid(format!("{field}: must not be empty")))
    } else {
        Ok(trimmed.to_owned())
    }
}

/// A custom provider's model ids: each requestable and priceable (the rule
/// a price override's model follows) and listed once.
fn check_model_ids(field: &str, models: &[String]) -> Result<(), ControlError> {
    for (i, model) in models.iter().enumerate() {
        if model.trim().is_empty() || model.trim() != model {
            return Err(ControlError::Invalid(format!(
                "{field}[{i}]: must not be empty or start or end with spaces"
            )));
        }
        if models[..i].contains(model) {
            return Err(ControlError::Invalid(format!(
                "{field}[{i}]: `{model}` is listed twice"
            )));
        }
    }
    Ok(())
}
