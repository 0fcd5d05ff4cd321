//! `tollgate admin budgets …`, `tollgate admin webhooks …` and
//! `tollgate admin accounts low-balance …`: spend controls.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

#[derive(Subcommand)]
pub enum BudgetsAction {
    /// Budgets in creation order, optionally one account's or one key's.
    List {
        /// Only this account's budgets (acct_…), its keys' included.
        #[arg(long)]
        account: Option<String>,
        /// Only the budgets on this access key (ak_…).
        #[arg(long)]
        key: Option<String>,
    },
    Get {
        /// The budget (bud_…).
        id: String,
    },
    /// Create a budget on an account, or on one of its access keys with --key.
    Create {
        /// The account (acct_…) whose spend is limited.
        #[arg(long)]
        account: String,
        /// Limit only this access key's spend (ak_…, an active key of the
        /// account). Default: the whole account's spend.
        #[arg(long)]
        key: Option<String>,
        /// A label, at most 200 characters.
        #[arg(long)]
        name: String,
        /// The limit per period in USD, e.g. 25.00 (more than 0, at most 6
        /// decimal places).
        #[arg(long)]
        amount: String,
        /// day, week (ISO, from Monday), month (calendar) or lifetime; all
        /// UTC. Fixed once created.
        #[arg(long, value_parser = ["day", "week", "month", "lifetime"])]
        period: String,
        #[command(flatten)]
        alerts: BudgetAlertArgs,
    },
    /// Change a budget's name, amount, threshold or refusal (period and
    /// scope are fixed: create a new budget to change them).
    Update {
        /// The budget (bud_…).
        id: String,
        /// A new label, at most 200 characters.
        #[arg(long)]
        name: Option<String>,
        /// A new limit per period in USD, e.g. 25.00.
        #[arg(long)]
        amount: Option<String>,
        #[command(flatten)]
        alerts: BudgetAlertArgs,
    },
    Delete {
        /// The budget (bud_…).
        id: String,
    },
}

#[derive(Args)]
pub struct BudgetAlertArgs {
    /// Percent of the amount (1–100) at which a threshold alert is raised.
    /// Default on create: 80.
    #[arg(long)]
    soft_threshold_percent: Option<u8>,
    /// true: refuse requests (402 budget_exceeded) once spend reaches the
    /// amount; false: alerts only. Default on create: true.
    #[arg(long)]
    refuse: Option<bool>,
}

#[derive(Subcommand)]
pub enum WebhooksAction {
    /// Webhooks (never their secrets).
    List,
    Get {
        /// The webhook (whk_…).
        id: String,
    },
    /// Create a webhook; its signing secret is printed once.
    Create {
        /// Where alerts are POSTed (http or https).
        #[arg(long)]
        url: String,
        /// An alert kind to deliver (repeat): budget_threshold,
        /// budget_exceeded, low_balance or credits_expiring. Default: all.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
    },
    /// Change a webhook's URL or alert kinds (the secret is kept).
    Update {
        /// The webhook (whk_…).
        id: String,
        /// A new URL (http or https).
        #[arg(long)]
        url: Option<String>,
        /// Deliver only these alert kinds (repeat); replaces the current ones.
        #[arg(long = "kind", value_name = "KIND", conflicts_with = "all_kinds")]
        kinds: Vec<String>,
        /// Deliver every alert kind.
        #[arg(long)]
        all_kinds: bool,
    },
    Delete {
        /// The webhook (whk_…).
        id: String,
    },
    /// Replace a webhook's signing secret; the new one is printed once.
    RotateSecret {
        /// The webhook (whk_…).
        id: String,
    },
    /// Deliveries of alerts to webhooks, newest first.
    Deliveries {
        /// Only deliveries in this state: pending (waiting for a try),
        /// delivered (acknowledged with a 2xx) or failed (given up after
        /// 72 h). Default: every state.
        #[arg(long)]
        state: Option<String>,
        /// Only this webhook's deliveries (whk_…).
        #[arg(long)]
        webhook: Option<String>,
        /// At most this many (1–1000). Default: 100.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Try a failed delivery again now (its 72 hours start over).
    RetryDelivery {
        /// The alert (alrt_…).
        alert_id: String,
        /// The webhook (whk_…).
        webhook_id: String,
    },
}

impl BudgetAlertArgs {
    fn fill(&self, body: &mut Map<String, Value>) {
        if let Some(percent) = self.soft_threshold_percent {
            body.insert("soft_threshold_percent".into(), json!(percent));
        }
        if let Some(refuse) = self.refuse {
            body.insert("refuse".into(), json!(refuse));
        }
    }
}

/// Only the fields given: the API keeps the others (PATCH) or defaults them.
fn present(fields: &[(&str, &Option<String>)]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| ((*name).to_owned(), json!(v))))
        .collect()
}

pub(super) fn budgets_request(action: &BudgetsAction) -> super::Request {
    match action {
        BudgetsAction::List { account, key } => {
            let query: Vec<String> = [("account_id", account), ("access_key_id", key)]
                .into_iter()
                .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
                .collect();
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            (Method::GET, format!("/budgets{query}"), None)
        }
        BudgetsAction::Get { id } => (Method::GET, format!("/budgets/{id}"), None),
        BudgetsAction::Create {
            account,
            key,
            name,
            amount,
            period,
            alerts,
        } => {
            let mut body = present(&[("access_key_id", key)]);
            body.insert("account_id".into(), json!(account));
            body.insert("name".into(), json!(name));
            body.insert("amount".into(), json!(amount));
            body.insert("period".into(), json!(period));
            alerts.fill(&mut body);
            (Method::POST, "/budgets".into(), Some(Value::Object(body)))
        }
        BudgetsAction::Update {
            id,
            name,
            amount,
            alerts,
        } => {
            let mut body = present(&[("name", name), ("amount", amount)]);
            alerts.fill(&mut body);
            (
                Method::PATCH,
                format!("/budgets/{id}"),
                Some(Value::Object(body)),
            )
        }
        BudgetsAction::Delete { id } => (Method::DELETE, format!("/budgets/{id}"), None),
    }
}

pub(super) fn webhooks_request(action: &WebhooksAction) -> super::Request {
    match action {
        WebhooksAction::List => (Method::GET, "/webhooks".into(), None),
        WebhooksAction::Get { id } => (Method::GET, format!("/webhooks/{id}"), None),
        WebhooksAction::Create { url, kinds } => (
            Method::POST,
            "/webhooks".into(),
            Some(json!({"url": url, "kinds": kinds})),
        ),
        WebhooksAction::Update {
            id,
            url,
            kinds,
            all_kinds,
        } => {
            let mut body = present(&[("url", url)]);
            if *all_kinds || !kinds.is_empty() {
                body.insert("kinds".into(), json!(kinds));
            }
            (
                Method::PATCH,
                format!("/webhooks/{id}"),
                Some(Value::Object(body)),
            )
        }
        WebhooksAction::Delete { id } => (Method::DELETE, format!("/webhooks/{id}"), None),
        WebhooksAction::RotateSecret { id } => {
            (Method::POST, format!("/webhooks/{id}/rotate-secret"), None)
        }
        WebhooksAction::Deliveries {
            state,
            webhook,
            limit,
        } => {
            let limit = limit.map(|n| n.to_string());
            let query = super::query_string(&[
                ("state", state),
                ("webhook_id", webhook),
                ("limit", &limit),
            ]);
            (Method::GET, format!("/webhook-deliveries{query}"), None)
        }
        WebhooksAction::RetryDelivery {
            alert_id,
            webhook_id,
        } => (
            Method::POST,
            format!("/webhook-deliveries/{alert_id}/{webhook_id}/retry"),
            None,
        ),
    }
}

/// `accounts low-balance <account> <amount|default>`.
pub(super) fn low_balance_request(account: &str, amount: &str) -> super::Request {
    let amount = (amount != "default").then_some(amount);
    (
        Method::PUT,
        format!("/accounts/{account}/low-balance"),
        Some(json!({ "amount": amount })),
    )
}

/// What to tell the operator beside a command's answer (on stderr, so the
/// JSON on stdout stays parseable).
pub(super) fn note(action: &WebhooksAction) -> Option<&'static str> {
    matches!(
        action,
        WebhooksAction::Create { .. } | WebhooksAction::RotateSecret { .. }
    )
    .then_some(
        "The webhook's signing secret (`secret`) is shown once, now: store it where the \
         receiver can verify signatures with it. It cannot be shown again; \
         `tollgate admin webhooks rotate-secret` replaces it.",
    )
}
