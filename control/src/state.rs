//! The materialized control-plane view: a pure function of the control
//! changes applied so far, in log order.

use crate::crypto::MasterKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tollgate_core::budget::{Budget, BudgetId, Webhook};
use tollgate_core::control::{
    AccessKey, Account, Configuration, ConfigurationId, ControlChange, ControlKind, ControlObject,
    CustomProvider, PriceOverride, PricePlan, ProviderKey,
};
use tollgate_core::pricing::AppliedPlan;
use tollgate_core::{AccessKeyId, AccountId, ProviderKeyId};

/// A decrypted provider key; Debug never shows it.
#[derive(Clone)]
pub struct ProviderSecret(pub Arc<str>);

impl std::fmt::Debug for ProviderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderSecret(<redacted>)")
    }
}

#[derive(Clone, Debug, Default)]
pub struct ControlState {
    pub accounts: BTreeMap<AccountId, Account>,
    pub access_keys: BTreeMap<AccessKeyId, AccessKey>,
    /// Token hash → key id, for active (unrevoked) keys only.
    keys_by_hash: HashMap<String, AccessKeyId>,
    pub configurations: BTreeMap<ConfigurationId, Configuration>,
    pub provider_keys: BTreeMap<ProviderKeyId, ProviderKey>,
    secrets: HashMap<ProviderKeyId, ProviderSecret>,
    pub custom_providers: BTreeMap<String, CustomProvider>,
    pub price_plans: BTreeMap<String, PricePlan>,
    pub last_used: HashMap<AccessKeyId, chrono::DateTime<chrono::Utc>>,
    /// Runtime price overrides by provider, then model (nested so a lookup
    /// on the request path allocates nothing).
    pub price_overrides: BTreeMap<String, BTreeMap<String, PriceOverride>>,
    pub budgets: BTreeMap<BudgetId, Budget>,
    /// Each account's budgets, its keys' included (in id order), so the
    /// request path finds them without scanning every budget.
    budgets_by_account: HashMap<AccountId, Vec<Budget>>,
    pub webhooks: BTreeMap<String, Webhook>,
    /// Decrypted webhook signing secrets, by webhook id.
    webhook_secrets: HashMap<String, ProviderSecret>,
    /// The next control-log offset to read.
    pub next_offset: u64,
}

impl ControlState {
    pub fn apply(&mut self, change: &ControlChange, master: &MasterKey) {
        match change {
            ControlChange::Upsert { object } => self.upsert(object.clone(), master),
            ControlChange::Delete { kind, id } => self.delete(*kind, id),
            ControlChange::KeyUsed { access_key_id, at } => {
                let entry = self.last_used.entry(access_key_id.clone()).or_insert(*at);
                if *at > *entry {
                    *entry = *at;
                }
            }
        }
    }

    fn upsert(&mut self, object: ControlObject, master: &MasterKey) {
        match object {
            ControlObject::Account(account) => {
                self.accounts.insert(account.id.clone(), account);
            }
            ControlObject::AccessKey(mut key) => {
                if let Some(old) = self.access_keys.get(&key.id) {
                    self.keys_by_hash.remove(&old.token_hash);
                    // Revocation is final: an upsert written from a view that
                    // had not seen it yet (another instance's) cannot undo it.
                    if key.revoked_at.is_none() {
                        key.revoked_at = old.revoked_at;
                    }
                }
                if key.revoked_at.is_none() {
                    self.keys_by_hash
                        .insert(key.token_hash.clone(), key.id.clone());
                }
                self.access_keys.insert(key.id.clone(), key);
            }
            ControlObject::Configuration(config) => {
                self.configurations.insert(config.id.clone(), config);
            }
            ControlObject::ProviderKey(key) => {
                match master.decrypt(&key.secret_ciphertext) {
                    Ok(secret) => {
                        self.secrets
                            .insert(key.id.clone(), ProviderSecret(Arc::from(secret)));
                    }
                    Err(err) => {
                        self.secrets.remove(&key.id);
                        tracing::error!(provider_key = %key.id, error = %err, "provider key cannot be decrypted; it will not be used");
                    }
                }
                self.provider_keys.insert(key.id.clone(), key);
            }
            ControlObject::CustomProvider(provider) => {
                self.custom_providers.insert(provider.id.clone(), provider);
            }
            ControlObject::PricePlan(plan) => {
                self.price_plans.insert(plan.id.clone(), plan);
            }
            ControlObject::PriceOverride(price) => {
                self.price_overrides
                    .entry(price.provider.clone())
                    .or_default()
                    .insert(price.model.clone(), price);
            }
            ControlObject::Budget(budget) => {
                let account = budget.account_id.clone();
                self.budgets.insert(budget.id.clone(), budget);
                self.index_budgets(&account);
            }
            ControlObject::Webhook(webhook) => {
                match master.decrypt(&webhook.secret_ciphertext) {
                    Ok(secret) => {
                        self.webhook_secrets
                            .insert(webhook.id.clone(), ProviderSecret(Arc::from(secret)));
                    }
                    Err(err) => {
                        self.webhook_secrets.remove(&webhook.id);
                        tracing::error!(webhook = %webhook.id, error = %err, "webhook secret cannot be decrypted; deliveries to it wait");
                    }
                }
                self.webhooks.insert(webhook.id.clone(), webhook);
            }
        }
    }

    fn index_budgets(&mut self, account: &AccountId) {
        let of_account: Vec<Budget> = self
            .budgets
            .values()
            .filter(|b| &b.account_id == account)
            .cloned()
            .collect();
        if of_account.is_empty() {
            self.budgets_by_account.remove(account);
        } else {
            self.budgets_by_account.insert(account.clone(), of_account);
        }
    }

    /// The budgets on `account` and on its keys.
    pub fn budgets_of(&self, account: &AccountId) -> &[Budget] {
        self.budgets_by_account
            .get(account)
            .map_or(&[], Vec::as_slice)
    }

    /// A webhook's decrypted signing secret.
    pub fn webhook_secret(&self, id: &str) -> Option<&ProviderSecret> {
        self.webhook_secrets.get(id)
    }

    fn delete(&mut self, kind: ControlKind, id: &str) {
        match kind {
            ControlKind::Account => {
                self.accounts.remove(&AccountId(id.to_owned()));
            }
            ControlKind::AccessKey => {
                if let Some(old) = self.access_keys.remove(&AccessKeyId(id.to_owned())) {
                    self.keys_by_hash.remove(&old.token_hash);
                }
            }
            ControlKind::Configuration => {
                self.configurations.remove(&ConfigurationId(id.to_owned()));
            }
            ControlKind::ProviderKey => {
                let id = ProviderKeyId(id.to_owned());
                self.provider_keys.remove(&id);
                self.secrets.remove(&id);
            }
            ControlKind::CustomProvider => {
                self.custom_providers.remove(id);
            }
            ControlKind::PricePlan => {
                self.price_plans.remove(id);
            }
            ControlKind::PriceOverride => {
                if let Some((provider, model)) = id.split_once(':') {
                    if let Some(models) = self.price_overrides.get_mut(provider) {
                        models.remove(model);
                        if models.is_empty() {
                            self.price_overrides.remove(provider);
                        }
                    }
                }
            }
            ControlKind::Budget => {
                if let Some(old) = self.budgets.remove(&BudgetId(id.to_owned())) {
                    self.index_budgets(&old.account_id);
                }
            }
            ControlKind::Webhook => {
                self.webhooks.remove(id);
                self.webhook_secrets.remove(id);
            }
        }
    }

    /// The runtime price override for `provider:model`, if any.
    pub fn price_override(&self, provider: &str, model: &str) -> Option<&PriceOverride> {
        self.price_overrides.get(provider)?.get(model)
    }

    /// Every runtime price override, by provider then model.
    pub fn price_override_list(&self) -> impl Iterator<Item = &PriceOverride> {
        self.price_overrides.values().flat_map(BTreeMap::values)
    }

    /// The active key whose token hashes to `token_hash`.
    pub fn key_by_hash(&self, token_hash: &str) -> Option<&AccessKey> {
        self.keys_by_hash
            .get(token_hash)
            .and_then(|id| self.access_keys.get(id))
    }

    /// The terms `account` is billed on now; None: the default terms (no
    /// plan assigned, or, should its plan be gone, which deletion refuses).
    pub fn price_plan_of(&self, account: &AccountId) -> Option<AppliedPlan> {
        let plan_id = self.accounts.get(account)?.price_plan_id.as_ref()?;
        self.price_plans.get(plan_id).map(PricePlan::applied)
    }

    pub fn configuration_of(&self, key: &AccessKey) -> Option<&Configuration> {
        key.configuration_id
            .as_ref()
            .and_then(|id| self.configurations.get(id))
    }

    /// Provider keys attached to `config` for `provider`, most recently
    /// attached first, with their decrypted secrets.
    pub fn attached_keys(
        &self,
        config: &Configuration,
        provider: &str,
    ) -> Vec<(ProviderKeyId, ProviderSecret)> {
        let mut attachments: Vec<_> = config
            .provider_keys
            .iter()
            .filter(|a| {
                self.provider_keys
                    .get(&a.provider_key_id)
                    .is_some_and(|k| k.provider == provider)
            })
            .collect();
        attachments.sort_by_key(|a| std::cmp::Reverse(a.attached_at));
        attachments
            .into_iter()
            .filter_map(|a| {
                self.secrets
                    .get(&a.provider_key_id)
                    .map(|s| (a.provider_key_id.clone(), s.clone()))
            })
            .collect()
    }
}
