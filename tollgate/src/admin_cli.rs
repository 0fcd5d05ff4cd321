//! `tollgate admin …`: the admin API from the command line (over HTTP, so it
//! works against any deployment). Prints the API's JSON answers.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Read;

mod plans;
mod spend;
pub use plans::{PlanSpecArgs, PricePlansAction};
pub use spend::{BudgetAlertArgs, BudgetsAction, WebhooksAction};

#[derive(Args)]
pub struct AdminArgs {
    /// Admin API base URL. Default: http://<admin.listen> from the config.
    #[arg(long, env = "TOLLGATE_ADMIN_URL")]
    pub url: Option<String>,
    /// Admin token. Default: TOLLGATE_ADMIN_TOKEN, else the admin token file.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Accounts: the unit that owns keys and credits (and its low-balance alert amount).
    Accounts {
        #[command(subcommand)]
        action: AccountsAction,
    },
    /// Access keys: create (token shown once), list, revoke, assign a configuration.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Access-key configurations: allowed providers/models, pass-through, rate limits.
    Configs {
        #[command(subcommand)]
        action: ConfigsAction,
    },
    /// Provider keys (bring your own key): stored encrypted, never shown again.
    ProviderKeys {
        #[command(subcommand)]
        action: ProviderKeysAction,
    },
    /// Custom providers defined at runtime.
    CustomProviders {
        #[command(subcommand)]
        action: CustomProvidersAction,
    },
    /// Price plans: the processing fee and upstream multiplier accounts are billed on.
    PricePlans {
        #[command(subcommand)]
        action: PricePlansAction,
    },
    /// Price overrides set at runtime: per `provider:model` unit prices
    /// that win over the config file and the catalog.
    PriceOverrides {
        #[command(subcommand)]
        action: PriceOverridesAction,
    },
    /// Effective unit prices of every known model, and where each comes from.
    ModelPrices,
    /// Credits: balances, lots, entries; record purchases and adjustments.
    Credits {
        #[command(subcommand)]
        action: CreditsAction,
    },
    /// Budgets: spending limits per period on an account or an access key,
    /// with a threshold alert and (optionally) refusal at the limit.
    Budgets {
        #[command(subcommand)]
        action: BudgetsAction,
    },
    /// Webhooks alerts (budget threshold and exceeded, low balance, credits
    /// expiring) are delivered to; signing secret shown once.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksAction,
    },
}

#[derive(Subcommand)]
pub enum CreditsAction {
    Balance {
        #[arg(long)]
        account: String,
    },
    /// The account's budgets (its keys' included) with their spend in the
    /// current period, what is left and their state (ok, threshold, exceeded).
    Budgets {
        #[arg(long)]
        account: String,
    },
    Lots {
        #[arg(long)]
        account: String,
    },
    /// Ledger entries, oldest first (use --after with the returned cursor).
    Entries {
        #[arg(long)]
        account: String,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        after: Option<String>,
    },
    /// Record a purchase (minimum $5.00); a retry with the same key applies once.
    Purchase {
        #[arg(long)]
        account: String,
        /// USD, e.g. 25.00
        #[arg(long)]
        amount: String,
        #[arg(long)]
        idempotency_key: String,
    },
    /// Record a refund, goodwill credit or manual debit, with a reason.
    Adjust {
        #[arg(long)]
        account: String,
        /// refund, goodwill_credit or manual_debit
        #[arg(long)]
        kind: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        idempotency_key: String,
    },
}

#[derive(Subcommand)]
pub enum AccountsAction {
    List,
    Create {
        name: String,
    },
    /// Set the balance below which the account gets a low-balance alert.
    LowBalance {
        /// The account (acct_…).
        account: String,
        /// USD, e.g. 2.50 (at least 0, at most 6 decimal places), or
        /// `default` for the ledger's global default (`[alerts] low_balance_usd`).
        #[arg(allow_hyphen_values = true)]
        amount: String,
    },
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// List an account's keys (id, name, prefix, created, last used, revoked).
    List {
        #[arg(long)]
        account: String,
    },
    /// Create a key; its token is printed once.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
        /// Configuration id (cfg_…) to assign.
        #[arg(long)]
        configuration: Option<String>,
    },
    /// Revoke a key; every gateway refuses it within a second.
    Revoke { id: String },
    /// Assign a configuration to a key (`none` clears it).
    Assign {
        id: String,
        #[arg(long)]
        configuration: String,
    },
}

#[derive(Args)]
pub struct ConfigSpecArgs {
    #[arg(long)]
    name: String,
    /// Allow only these providers (repeat the flag). Default: all.
    #[arg(long = "allow-provider")]
    allow_provider: Vec<String>,
    /// Allow only these models, `model` or `provider:model` (repeat). Default: all.
    #[arg(long = "allow-model")]
    allow_model: Vec<String>,
    /// Refuse models the catalog does not list, even with a provider prefix.
    #[arg(long)]
    no_passthrough: bool,
    /// Requests per minute per key (per gateway instance).
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute per key (per gateway instance).
    #[arg(long)]
    tpm: Option<u32>,
    /// A default tag `key=value` recorded on the keys' usage events (repeat;
    /// a request's `x-tollgate-tags` header overrides it). Client-declared
    /// labels: never put secrets in them.
    #[arg(long = "tag", value_parser = parse_tag)]
    tag: Vec<(String, String)>,
}

/// `key=value` (checked by the server).
fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

impl ConfigSpecArgs {
    fn body(&self) -> Value {
        let list = |v: &Vec<String>| if v.is_empty() { Value::Null } else { json!(v) };
        json!({
            "name": self.name,
            "allowed_providers": list(&self.allow_provider),
            "allowed_models": list(&self.allow_model),
            "allow_passthrough_models": !self.no_passthrough,
            "rate_limits": {"requests_per_minute": self.rpm, "tokens_per_minute": self.tpm},
            "default_tags": self
                .tag
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect::<serde_json::Map<String, Value>>(),
        })
    }
}

#[derive(Subcommand)]
pub enum ConfigsAction {
    List {
        #[arg(long)]
        account: String,
    },
    Get {
        id: String,
    },
    Create {
        #[arg(long)]
        account: String,
        #[command(flatten)]
        spec: ConfigSpecArgs,
    },
    /// Replace a configuration's rules (attached provider keys are kept).
    Update {
        id: String,
        #[command(flatten)]
        spec: ConfigSpecArgs,
    },
    Delete {
        id: String,
    },
    /// Attach a provider key; the most recently attached is tried first.
    Attach {
        id: String,
        #[arg(long)]
        provider_key: String,
    },
    Detach {
        id: String,
        #[arg(long)]
        provider_key: String,
    },
}

#[derive(Subcommand)]
pub enum ProviderKeysAction {
    List {
        #[arg(long)]
        account: String,
    },
    /// Store a provider key; the secret is read from standard input.
    Add {
        #[arg(long)]
        account: String,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        name: String,
    },
    /// Replace a key's secret (read from standard input), keeping its id.
    Rotate {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum CustomProvidersAction {
    List,
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        base_url: String,
        /// `openai` or `anthropic`.
        #[arg(long)]
        api: String,
        /// A model id it serves (repeat).
        #[arg(long = "model")]
        models: Vec<String>,
        /// An embedding model id it serves on `/v1/embeddings` (repeat;
        /// `--api openai` only).
        #[arg(long = "embedding-model")]
        embedding_models: Vec<String>,
        /// It serves OpenAI's Responses API (`POST /responses`) itself:
        /// `/v1/responses` passes through instead of being translated to
        /// chat completions (`--api openai` only).
        #[arg(long)]
        responses: bool,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum PriceOverridesAction {
    List,
    /// Set (or replace) the prices of `provider:model`, USD per million
    /// tokens as decimals (e.g. 2.50); cache classes default to --input.
    Set {
        /// `provider:model`, e.g. openai:gpt-4o
        model: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        cached_input: Option<String>,
        #[arg(long = "cache-write-5m")]
        cache_write_5m: Option<String>,
        #[arg(long = "cache-write-1h")]
        cache_write_1h: Option<String>,
    },
    /// Remove an override: the config file's or the catalog's prices apply again.
    Delete {
        /// `provider:model`
        model: String,
    },
}

/// `provider:model` as the override's URL path (`provider/model`), each
/// part percent-encoded; `/` inside the model stays (the route takes the rest).
fn override_path(qualified: &str) -> anyhow::Result<String> {
    let Some((provider, model)) = qualified.split_once(':') else {
        bail!("`{qualified}`: name the model as provider:model, e.g. openai:gpt-4o");
    };
    let encode = |text: &str, keep_slash: bool| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                    char::from(b).to_string()
                }
                b'/' if keep_slash => "/".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    Ok(format!(
        "/price-overrides/{}/{}",
        encode(provider, false),
        encode(model, true)
    ))
}

fn price_overrides_request(action: &PriceOverridesAction) -> anyhow::Result<Request> {
    use reqwest::Method;
    Ok(match action {
        PriceOverridesAction::List => (Method::GET, "/price-overrides".into(), None),
        PriceOverridesAction::Set {
            model,
            input,
            output,
            cached_input,
            cache_write_5m,
            cache_write_1h,
        } => (
            Method::PUT,
            override_path(model)?,
            Some(json!({
                "input": input,
                "output": output,
                "cached_input": cached_input,
                "cache_write_5m": cache_write_5m,
                "cache_write_1h": cache_write_1h,
            })),
        ),
        PriceOverridesAction::Delete { model } => (Method::DELETE, override_path(model)?, None),
    })
}

fn read_secret() -> anyhow::Result<String> {
    eprintln!("reading the secret from standard input…");
    let mut secret = String::new();
    std::io::stdin()
        .read_to_string(&mut secret)
        .context("reading the secret")?;
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        bail!("no secret on standard input");
    }
    Ok(secret)
}

/// An admin API call: method, path under `/admin/v1`, JSON body.
type Request = (reqwest::Method, String, Option<Value>);

/// (method, path, body) for one command.
fn request(command: &AdminCommand) -> anyhow::Result<Request> {
    use reqwest::Method;
    Ok(match command {
        AdminCommand::Accounts { action } => accounts_request(action),
        AdminCommand::Keys { action } => keys_request(action),
        AdminCommand::Configs { action } => configs_request(action),
        AdminCommand::ProviderKeys { action } => provider_keys_request(action)?,
        AdminCommand::Credits { action } => credits_request(action),
        AdminCommand::CustomProviders { action } => custom_providers_request(action),
        AdminCommand::PricePlans { action } => plans::request(action),
        AdminCommand::PriceOverrides { action } => price_overrides_request(action)?,
        AdminCommand::ModelPrices => (Method::GET, "/model-prices".into(), None),
        AdminCommand::Budgets { action } => spend::budgets_request(action),
        AdminCommand::Webhooks { action } => spend::webhooks_request(action),
    })
}

/// `tollgate admin accounts …`.
fn accounts_request(action: &AccountsAction) -> Request {
    use reqwest::Method;
    match action {
        AccountsAction::List => (Method::GET, "/accounts".into(), None),
        AccountsAction::Create { name } => (
            Method::POST,
            "/accounts".into(),
            Some(json!({"name": name})),
        ),
        AccountsAction::LowBalance { account, amount } => {
            spend::low_balance_request(account, amount)
        }
    }
}

/// `tollgate admin keys …`.
fn keys_request(action: &KeysAction) -> Request {
    use reqwest::Method;
    match action {
        KeysAction::List { account } => (
            Method::GET,
            format!("/accounts/{account}/access-keys"),
            None,
        ),
        KeysAction::Create {
            account,
            name,
            configuration,
        } => (
            Method::POST,
            format!("/accounts/{account}/access-keys"),
            Some(json!({"name": name, "configuration_id": configuration})),
        ),
        KeysAction::Revoke { id } => (Method::POST, format!("/access-keys/{id}/revoke"), None),
        KeysAction::Assign { id, configuration } => {
            let value = if configuration == "none" {
                Value::Null
            } else {
                json!(configuration)
            };
            (
                Method::PUT,
                format!("/access-keys/{id}/configuration"),
                Some(json!({"configuration_id": value})),
            )
        }
    }
}

/// `tollgate admin configs …`.
fn configs_request(action: &ConfigsAction) -> Request {
    use reqwest::Method;
    match action {
        ConfigsAction::List { account } => (
            Method::GET,
            format!("/accounts/{account}/configurations"),
            None,
        ),
        ConfigsAction::Get { id } => (Method::GET, format!("/configurations/{id}"), None),
        ConfigsAction::Create { account, spec } => (
            Method::POST,
            format!("/accounts/{account}/configurations"),
            Some(spec.body()),
        ),
        ConfigsAction::Update { id, spec } => (
            Method::PUT,
            format!("/configurations/{id}"),
            Some(spec.body()),
        ),
        ConfigsAction::Delete { id } => (Method::DELETE, format!("/configurations/{id}"), None),
        ConfigsAction::Attach { id, provider_key } => (
            Method::POST,
            format!("/configurations/{id}/provider-keys"),
            Some(json!({"provider_key_id": provider_key})),
        ),
        ConfigsAction::Detach { id, provider_key } => (
            Method::DELETE,
            format!("/configurations/{id}/provider-keys/{provider_key}"),
            None,
        ),
    }
}

/// `tollgate admin provider-keys …`.
fn provider_keys_request(action: &ProviderKeysAction) -> anyhow::Result<Request> {
    use reqwest::Method;
    Ok(match action {
        ProviderKeysAction::List { account } => (
            Method::GET,
            format!("/accounts/{account}/provider-keys"),
            None,
        ),
        ProviderKeysAction::Add {
            account,
            provider,
            name,
        } => (
            Method::POST,
            format!("/accounts/{account}/provider-keys"),
            Some(json!({"provider": provider, "name": name, "secret": read_secret()?})),
        ),
        ProviderKeysAction::Rotate { id } => (
            Method::PUT,
            format!("/provider-keys/{id}/secret"),
            Some(json!({"secret": read_secret()?})),
        ),
        ProviderKeysAction::Delete { id } => (Method::DELETE, format!("/provider-keys/{id}"), None),
    })
}

/// `tollgate admin credits …`.
fn credits_request(action: &CreditsAction) -> Request {
    use reqwest::Method;
    match action {
        CreditsAction::Balance { account } => (
            Method::GET,
            format!("/accounts/{account}/credits/balance"),
            None,
        ),
        CreditsAction::Budgets { account } => (
            Method::GET,
            format!("/accounts/{account}/credits/budgets"),
            None,
        ),
        CreditsAction::Lots { account } => (
            Method::GET,
            format!("/accounts/{account}/credits/lots"),
            None,
        ),
        CreditsAction::Entries {
            account,
            kind,
            after,
        } => {
            let query = query_string(&[("kind", kind), ("after", after)]);
            (
                Method::GET,
                format!("/accounts/{account}/credits/entries{query}"),
                None,
            )
        }
        CreditsAction::Purchase {
            account,
            amount,
            idempotency_key,
        } => (
            Method::POST,
            format!("/accounts/{account}/purchases"),
            Some(json!({"amount": amount, "idempotency_key": idempotency_key})),
        ),
        CreditsAction::Adjust {
            account,
            kind,
            amount,
            reason,
            idempotency_key,
        } => (
            Method::POST,
            format!("/accounts/{account}/adjustments"),
            Some(
                json!({"kind": kind, "amount": amount, "reason": reason, "idempotency_key": idempotency_key}),
            ),
        ),
    }
}

/// `?name=value&…` of the parameters given; empty when none is.
fn query_string(params: &[(&str, &Option<String>)]) -> String {
    let given: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect();
    if given.is_empty() {
        String::new()
    } else {
        format!("?{}", given.join("&"))
    }
}

/// `tollgate admin custom-providers …`.
fn custom_providers_request(action: &CustomProvidersAction) -> Request {
    use reqwest::Method;
    match action {
        CustomProvidersAction::List => (Method::GET, "/custom-providers".into(), None),
        CustomProvidersAction::Create {
            id,
            base_url,
            api,
            models,
            embedding_models,
            responses,
        } => (
            Method::POST,
            "/custom-providers".into(),
            Some(json!({
                "id": id,
                "base_url": base_url,
                "api": api,
                "models": models,
                "embedding_models": embedding_models,
                "responses": responses,
            })),
        ),
        CustomProvidersAction::Delete { id } => {
            (Method::DELETE, format!("/custom-providers/{id}"), None)
        }
    }
}

/// Run one admin command; a non-2xx answer is an error carrying its message.
pub async fn run(base_url: &str, token: &str, command: &AdminCommand) -> anyhow::Result<Value> {
    let (method, path, body) = request(command)?;
    let url = format!("{}/admin/v1{path}", base_url.trim_end_matches('/'));
    let mut builder = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token);
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = builder
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {base_url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value: Value = if text.is_empty() {
        json!({"status": status.as_u16()})
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        bail!("admin API answered {}: {message}", status.as_u16());
    }
    if let AdminCommand::Webhooks { action } = command {
        if let Some(note) = spend::note(action) {
            eprintln!("{note}");
        }
    }
    Ok(value)
}
