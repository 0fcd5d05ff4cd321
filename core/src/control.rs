//! Control-plane objects: accounts, access keys, access-key configurations,
//! provider keys, runtime custom providers, price overrides and price
//! plans. Every change is a
//! `ControlChange` on the control topic (key = object id) carrying the whole
//! object, so a compacted topic keeps the latest state of each object and
//! every instance rebuilds the same view by replaying it.

use crate::catalog::{ApiSurface, Prices};
use crate::ids::{AccessKeyId, AccountId, ProviderKeyId};
use crate::money::Usd;
use crate::pricing::AppliedPlan;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An access-key configuration's id.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct ConfigurationId(pub String);

impl ConfigurationId {
    pub fn generate() -> Self {
        ConfigurationId(format!("cfg_{}", uuid::Uuid::now_v7().simple()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConfigurationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The price plan the account is billed on; None: the default terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_plan_id: Option<String>,
    /// A low-balance alert is raised when the balance falls below this;
    /// None: the ledger's global default (`[alerts] low_balance_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance_usd: Option<Usd>,
}

/// Terms an operator bills accounts on (internal teams, resale): the
/// processing fee and a factor on the upstream cost of requests answered
/// with the operator's credentials. A change applies to requests made
/// after it: each usage event carries the terms it was billed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PricePlan {
    pub id: String,
    pub name: String,
    pub fee_per_mtok: Usd,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "1.1")]
    pub upstream_multiplier: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PricePlan {
    /// The terms copied into a usage event.
    pub fn applied(&self) -> AppliedPlan {
        AppliedPlan {
            plan_id: self.id.clone(),
            fee_per_mtok: self.fee_per_mtok,
            upstream_multiplier: self.upstream_multiplier,
        }
    }
}

/// An access key as stored: the SHA-256 of its token, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub id: AccessKeyId,
    pub account_id: AccountId,
    pub name: String,
    /// The token's first characters, to tell keys apart in listings.
    pub token_prefix: String,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// None: the account's unrestricted defaults.
    #[serde(default)]
    pub configuration_id: Option<ConfigurationId>,
}

/// Per-key request and token budgets, counted per gateway instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

/// A provider key attached to a configuration; later attachments win.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderKeyAttachment {
    pub provider_key_id: ProviderKeyId,
    pub attached_at: DateTime<Utc>,
}

/// What the keys assigned to it may call, and with which provider keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Configuration {
    pub id: ConfigurationId,
    pub account_id: AccountId,
    pub name: String,
    /// None: every provider. Some: only these provider ids.
    #[serde(default)]
    pub allowed_providers: Option<Vec<String>>,
    /// None: every model. Some: only these (`model` or `provider:model`).
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Whether models the catalog does not list may be called as `provider:model`.
    #[serde(default = "default_true")]
    pub allow_passthrough_models: bool,
    #[serde(default)]
    pub provider_keys: Vec<ProviderKeyAttachment>,
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Tags recorded on the usage events of the keys assigned to this
    /// configuration, under the request's `x-tollgate-tags` (which win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_tags: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
}

fn default_true() -> bool {
    true
}

/// A bring-your-own upstream key. The secret is stored only encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderKey {
    pub id: ProviderKeyId,
    pub account_id: AccountId,
    pub provider: String,
    pub name: String,
    /// Authenticated ciphertext (base64 of nonce ‖ ciphertext ‖ tag).
    pub secret_ciphertext: String,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

/// A custom provider defined at runtime through the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomProvider {
    pub id: String,
    pub base_url: String,
    pub api: ApiSurface,
    #[serde(default)]
    pub models: Vec<String>,
    /// Served on `/v1/embeddings` (an `openai` provider only). Left out when
    /// empty, so changes recorded before it existed read back unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embedding_models: Vec<String>,
    /// Whether it serves OpenAI's Responses API (`POST /responses`; an
    /// `openai` provider only). Left out when false, for the same reason.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub responses: bool,
    pub created_at: DateTime<Utc>,
}

/// An operator's unit prices for one `provider:model`, set at runtime:
/// they win over the config file's overrides, declared custom-provider
/// prices and the catalog. Every token class is filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PriceOverride {
    pub provider: String,
    /// The model id as requested after the provider prefix (a catalog model
    /// may also be named by an alias).
    pub model: String,
    pub prices: Prices,
    pub updated_at: DateTime<Utc>,
}

impl PriceOverride {
    /// Its id in `ControlChange::Delete` (`provider:model`; provider ids
    /// never contain `:`, model ids may).
    pub fn id(&self) -> String {
        format!("{}:{}", self.provider, self.model)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlObject {
    Account(Account),
    AccessKey(AccessKey),
    Configuration(Configuration),
    ProviderKey(ProviderKey),
    CustomProvider(CustomProvider),
    PricePlan(PricePlan),
    PriceOverride(PriceOverride),
    Budget(crate::budget::Budget),
    Webhook(crate::budget::Webhook),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    Account,
    AccessKey,
    Configuration,
    ProviderKey,
    CustomProvider,
    PricePlan,
    PriceOverride,
    Budget,
    Webhook,
}

impl ControlObject {
    pub fn kind(&self) -> ControlKind {
        match self {
            ControlObject::Account(_) => ControlKind::Account,
            ControlObject::AccessKey(_) => ControlKind::AccessKey,
            ControlObject::Configuration(_) => ControlKind::Configuration,
            ControlObject::ProviderKey(_) => ControlKind::ProviderKey,
            ControlObject::CustomProvider(_) => ControlKind::CustomProvider,
            ControlObject::PricePlan(_) => ControlKind::PricePlan,
            ControlObject::PriceOverride(_) => ControlKind::PriceOverride,
            ControlObject::Budget(_) => ControlKind::Budget,
            ControlObject::Webhook(_) => ControlKind::Webhook,
        }
    }

    /// The record key on the control topic.
    pub fn object_id(&self) -> String {
        match self {
            ControlObject::Account(a) => a.id.to_string(),
            ControlObject::AccessKey(k) => k.id.to_string(),
            ControlObject::Configuration(c) => c.id.to_string(),
            ControlObject::ProviderKey(p) => p.id.to_string(),
            ControlObject::CustomProvider(c) => format!("custom_provider:{}", c.id),
            ControlObject::PricePlan(p) => format!("price_plan:{}", p.id),
            ControlObject::PriceOverride(o) => format!("price_override:{}", o.id()),
            ControlObject::Budget(b) => b.id.to_string(),
            ControlObject::Webhook(w) => w.id.clone(),
        }
    }
}

/// One control-plane change: the whole new object, or a deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlChange {
    Upsert {
        object: ControlObject,
    },
    Delete {
        kind: ControlKind,
        id: String,
    },
    /// An access key was used (recorded at most about once a minute per
    /// key and instance; record key `last_used:<key id>`).
    KeyUsed {
        access_key_id: AccessKeyId,
        at: DateTime<Utc>,
    },
}
