//! The model catalog: providers (where and how to call them) and models
//! (aliases, limits, unit prices). The built-in catalog is `data/catalog.toml`.

use crate::money::Usd;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The wire API an upstream (or a client) speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiSurface {
    Openai,
    Anthropic,
}

impl ApiSurface {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiSurface::Openai => "openai",
            ApiSurface::Anthropic => "anthropic",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub id: String,
    pub name: String,
    /// Base URL including the API version path, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api: ApiSurface,
    /// Whether a default deployment supplies operator credentials for this
    /// provider (OpenAI and Anthropic). Informational: any provider the
    /// operator configures `api_keys` for gets operator credentials; for the
    /// others callers attach their own provider keys.
    #[serde(default)]
    pub operator_credentials: bool,
    /// True for providers defined by configuration rather than the built-in catalog.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub custom: bool,
    /// Whether the provider serves OpenAI's `POST /embeddings` under its base
    /// URL (only providers speaking the OpenAI wire API do).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embeddings: bool,
    /// Whether the provider serves OpenAI's Responses API (`POST /responses`)
    /// under its base URL: `/v1/responses` then passes through unchanged.
    /// Other providers get Responses requests translated to their chat API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub responses: bool,
}

/// Unit prices in USD per million tokens, one per token class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub input: Usd,
    #[serde(default)]
    pub cached_input: Usd,
    #[serde(default)]
    pub cache_write_5m: Usd,
    #[serde(default)]
    pub cache_write_1h: Usd,
    pub output: Usd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub provider: String,
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub context_window: u32,
    pub max_output_tokens: u32,
    pub prices: Prices,
    /// An embedding model: served on `/v1/embeddings` only, billed on input
    /// tokens (its output price is 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embedding: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("catalog model `{model}` names unknown provider `{provider}`")]
    UnknownProvider { model: String, provider: String },
    #[error("provider id `{0}` is defined twice")]
    DuplicateProvider(String),
    #[error("provider id `{0}` is invalid: use lowercase letters, digits, `-` and `_`")]
    InvalidProviderId(String),
    #[error(
        "embedding model `{model}` is on provider `{provider}`, which does not offer embeddings"
    )]
    EmbeddingsNotOffered { model: String, provider: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    providers: Vec<ProviderSpec>,
    #[serde(default)]
    models: Vec<ModelSpec>,
}

/// Providers and models, indexed for lookups on the request path.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    providers: Vec<ProviderSpec>,
    models: Vec<ModelSpec>,
    provider_index: HashMap<String, usize>,
    /// Bare model id or alias → first model in catalog order (its default provider).
    bare_index: HashMap<String, usize>,
    /// (provider, model id or alias) → model.
    qualified_index: HashMap<(String, String), usize>,
}

const BUILTIN: &str = include_str!("../data/catalog.toml");

impl Catalog {
    /// The catalog shipped with Tollgate.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Catalog::from_toml(BUILTIN)
    }

    pub fn from_toml(text: &str) -> Result<Catalog, CatalogError> {
        let file: CatalogFile = toml::from_str(text)?;
        let mut catalog = Catalog::default();
        for provider in file.providers {
            catalog.add_provider(provider)?;
        }
        for model in file.models {
            catalog.add_model(model)?;
        }
        Ok(catalog)
    }

    pub fn add_provider(&mut self, provider: ProviderSpec) -> Result<(), CatalogError> {
        if !valid_provider_id(&provider.id) {
            return Err(CatalogError::InvalidProviderId(provider.id));
        }
        if self.provider_index.contains_key(&provider.id) {
            return Err(CatalogError::DuplicateProvider(provider.id));
        }
        self.provider_index
            .insert(provider.id.clone(), self.providers.len());
        self.providers.push(provider);
        Ok(())
    }

    pub fn add_model(&mut self, model: ModelSpec) -> Result<(), CatalogError> {
        let Some(provider) = self.provider(&model.provider) else {
            return Err(CatalogError::UnknownProvider {
                model: model.id,
                provider: model.provider,
            });
        };
        if model.embedding && !provider.embeddings {
            return Err(CatalogError::EmbeddingsNotOffered {
                model: model.id,
                provider: model.provider,
            });
        }
        let index = self.models.len();
        for name in std::iter::once(&model.id).chain(model.aliases.iter()) {
            self.bare_index.entry(name.clone()).or_insert(index);
            self.qualified_index
                .entry((model.provider.clone(), name.clone()))
                .or_insert(index);
        }
        self.models.push(model);
        Ok(())
    }

    pub fn provider(&self, id: &str) -> Option<&ProviderSpec> {
        self.provider_index.get(id).map(|&i| &self.providers[i])
    }

    pub fn provider_mut(&mut self, id: &str) -> Option<&mut ProviderSpec> {
        self.provider_index
            .get(id)
            .copied()
            .map(move |i| &mut self.providers[i])
    }

    pub fn providers(&self) -> &[ProviderSpec] {
        &self.providers
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// A bare model id or alias → the catalog model (and so its default provider).
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.bare_index.get(name).map(|&i| &self.models[i])
    }

    /// A model id or alias within one provider.
    pub fn provider_model(&self, provider: &str, name: &str) -> Option<&ModelSpec> {
        self.qualified_index
            .get(&(provider.to_owned(), name.to_owned()))
            .map(|&i| &self.models[i])
    }
}

/// External upstreams must use https; plain http is allowed only for
/// loopback and private addresses, where traffic stays on a trusted network.
pub fn check_upstream_url(raw: &str) -> Result<(), String> {
    use std::net::IpAddr;
    fn is_private(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        }
    }
    let url = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a valid URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let local = match url.host() {
                Some(url::Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
                Some(url::Host::Domain(name)) => {
                    name == "localhost" || name.ends_with(".localhost")
                }
                None => false,
            };
            if local {
                Ok(())
            } else {
                Err(format!(
                    "`{raw}` uses plain http to a non-private host; use https (http is allowed only for loopback or private addresses)"
                ))
            }
        }
        other => Err(format!(
            "`{raw}`: scheme `{other}` is not supported; use https"
        )),
    }
}

fn valid_provider_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_every_required_provider() {
        let catalog = Catalog::builtin().unwrap_or_default();
        for id in [
            "openai",
            "anthropic",
            "google",
            "groq",
            "deepseek",
            "openrouter",
            "hyperbolic",
            "inceptionlabs",
            "inference-net",
        ] {
            let provider = catalog.provider(id);
            assert!(provider.is_some(), "missing provider {id}");
            assert!(
                catalog.models().iter().any(|m| m.provider == id),
                "provider {id} has no models"
            );
        }
        assert_eq!(
            catalog.provider("anthropic").map(|p| p.api),
            Some(ApiSurface::Anthropic)
        );
        assert!(catalog
            .provider("openai")
            .is_some_and(|p| p.operator_credentials));
        assert!(catalog
            .provider("groq")
            .is_some_and(|p| !p.operator_credentials));
    }

    #[test]
    fn aliases_resolve_to_their_model() {
        let catalog = Catalog::builtin().unwrap_or_default();
        let by_alias = catalog
            .model("claude-sonnet-4-5-20250929")
            .map(|m| m.id.clone());
        assert_eq!(by_alias.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            catalog
                .provider_model("openai", "gpt-4o")
                .map(|m| m.provider.as_str()),
            Some("openai")
        );
        assert!(catalog.provider_model("anthropic", "gpt-4o").is_none());
    }

    #[test]
    fn embedding_models_are_listed_on_providers_that_offer_embeddings() {
        let catalog = Catalog::builtin().unwrap_or_default();
        let small = catalog.model("text-embedding-3-small");
        assert!(small.is_some_and(|m| m.embedding && m.provider == "openai"));
        assert_eq!(
            small.map(|m| (m.prices.input.to_string(), m.prices.output.to_string())),
            Some(("0.02".to_owned(), "0".to_owned()))
        );
        assert!(catalog.model("gpt-4o").is_some_and(|m| !m.embedding));
        for provider in ["openai", "google"] {
            assert!(catalog.provider(provider).is_some_and(|p| p.embeddings));
        }
        assert!(catalog.provider("anthropic").is_some_and(|p| !p.embeddings));
        for model in catalog.models().iter().filter(|m| m.embedding) {
            assert_eq!(model.prices.output, Usd::ZERO, "{}", model.id);
        }
        let err = Catalog::from_toml(
            "[[providers]]\nid='a'\nname='A'\nbase_url='https://a'\napi='openai'\n\
             [[models]]\nprovider='a'\nid='e'\ncontext_window=1\nmax_output_tokens=0\n\
             prices={input='1',output='0'}\nembedding=true\n",
        );
        assert!(matches!(
            err,
            Err(CatalogError::EmbeddingsNotOffered { .. })
        ));
    }

    #[test]
    fn model_with_unknown_provider_is_rejected() {
        let err = Catalog::from_toml(
            "[[providers]]\nid='a'\nname='A'\nbase_url='https://a'\napi='openai'\n\
             [[models]]\nprovider='b'\nid='m'\ncontext_window=1\nmax_output_tokens=1\n\
             prices={input='1',output='1'}\n",
        );
        assert!(matches!(err, Err(CatalogError::UnknownProvider { .. })));
    }
}
