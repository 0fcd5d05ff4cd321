//! `tollgate admin price-plans …`: the terms accounts are billed on.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Args)]
pub struct PlanSpecArgs {
    #[arg(long)]
    name: String,
    /// Processing fee in USD per million tokens, e.g. 0.08 (default 0.05).
    #[arg(long)]
    fee_per_mtok: Option<String>,
    /// Factor on the upstream cost of requests on the operator's
    /// credentials, e.g. 1.2 for a 20% markup, 0.9 for a discount (default 1).
    #[arg(long)]
    upstream_multiplier: Option<String>,
}

impl PlanSpecArgs {
    fn body(&self) -> Value {
        json!({
            "name": self.name,
            "fee_per_mtok": self.fee_per_mtok,
            "upstream_multiplier": self.upstream_multiplier,
        })
    }
}

#[derive(Subcommand)]
pub enum PricePlansAction {
    List,
    Get {
        id: String,
    },
    Create {
        #[command(flatten)]
        spec: PlanSpecArgs,
    },
    /// Replace a plan's terms; they apply to requests made from now on.
    Update {
        id: String,
        #[command(flatten)]
        spec: PlanSpecArgs,
    },
    /// Delete a plan no account is on.
    Delete {
        id: String,
    },
    /// Put an account on a plan (`none`: back to the default terms).
    Assign {
        #[arg(long)]
        account: String,
        plan: String,
    },
}

pub(super) fn request(action: &PricePlansAction) -> (Method, String, Option<Value>) {
    match action {
        PricePlansAction::List => (Method::GET, "/price-plans".into(), None),
        PricePlansAction::Get { id } => (Method::GET, format!("/price-plans/{id}"), None),
        PricePlansAction::Create { spec } => {
            (Method::POST, "/price-plans".into(), Some(spec.body()))
        }
        PricePlansAction::Update { id, spec } => {
            (Method::PUT, format!("/price-plans/{id}"), Some(spec.body()))
        }
        PricePlansAction::Delete { id } => (Method::DELETE, format!("/price-plans/{id}"), None),
        PricePlansAction::Assign { account, plan } => {
            let plan_id = (plan != "none").then_some(plan);
            (
                Method::PUT,
                format!("/accounts/{account}/price-plan"),
                Some(json!({ "plan_id": plan_id })),
            )
        }
    }
}
