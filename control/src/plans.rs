//! Price plans: the terms accounts are billed on (processing fee per
//! million tokens, multiplier on operator-paid upstream cost), and their
//! assignment to accounts. Both are control-plane changes; the proxy copies
//! the plan in force into each usage event, so the ledger never looks one up.

use crate::plane::{non_empty, ControlError, ControlPlane};
use chrono::Utc;
use rust_decimal::Decimal;
use serde::Deserialize;
use tollgate_core::control::{Account, ControlChange, ControlKind, ControlObject, PricePlan};
use tollgate_core::pricing::{check_plan_terms, PROCESSING_FEE_PER_MTOK};
use tollgate_core::{AccountId, Usd};

/// A plan's terms as the admin API and CLI send them. Amounts are decimal
/// strings; a term left out takes the default (fee $0.05, multiplier 1).
#[derive(Clone, Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PricePlanSpec {
    /// Not blank (trimmed).
    #[schema(pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    pub fee_per_mtok: Option<Usd>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "1.1")]
    pub upstream_multiplier: Option<Decimal>,
}

impl PricePlanSpec {
    fn terms(&self) -> Result<(Usd, Decimal), ControlError> {
        let fee = self.fee_per_mtok.unwrap_or(PROCESSING_FEE_PER_MTOK);
        let multiplier = self.upstream_multiplier.unwrap_or(Decimal::ONE);
        check_plan_terms(fee, multiplier).map_err(|e| ControlError::Invalid(e.to_string()))?;
        Ok((Usd(fee.amount().normalize()), multiplier.normalize()))
    }
}

impl ControlPlane {
    pub fn price_plan(&self, id: &str) -> Result<PricePlan, ControlError> {
        self.snapshot()
            .price_plans
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("price plan {id}")))
    }

    pub async fn create_price_plan(&self, spec: &PricePlanSpec) -> Result<PricePlan, ControlError> {
        self.refresh().await?;
        let name = non_empty("name", &spec.name)?;
        let (fee_per_mtok, upstream_multiplier) = spec.terms()?;
        let now = Utc::now();
        let plan = PricePlan {
            id: format!("plan_{}", uuid::Uuid::now_v7().simple()),
            name,
            fee_per_mtok,
            upstream_multiplier,
            created_at: now,
            updated_at: now,
        };
        self.upsert(ControlObject::PricePlan(plan.clone())).await?;
        Ok(plan)
    }

    /// New terms apply to requests made from now on; earlier usage events
    /// keep the terms they carry.
    pub async fn update_price_plan(
        &self,
        id: &str,
        spec: &PricePlanSpec,
    ) -> Result<PricePlan, ControlError> {
        self.refresh().await?;
        let mut plan = self.price_plan(id)?;
        plan.name = non_empty("name", &spec.name)?;
        (plan.fee_per_mtok, plan.upstream_multiplier) = spec.terms()?;
        plan.updated_at = Utc::now();
        self.upsert(ControlObject::PricePlan(plan.clone())).await?;
        Ok(plan)
    }

    /// Refused while an account is on the plan: its requests would silently
    /// fall back to the default terms.
    pub async fn delete_price_plan(&self, id: &str) -> Result<(), ControlError> {
        self.refresh().await?;
        self.price_plan(id)?;
        let on_plan: Vec<String> = self
            .snapshot()
            .accounts
            .values()
            .filter(|a| a.price_plan_id.as_deref() == Some(id))
            .map(|a| a.id.to_string())
            .collect();
        if !on_plan.is_empty() {
            return Err(ControlError::Conflict(format!(
                "price plan {id} is assigned to account(s) {}; assign them another plan first",
                on_plan.join(", ")
            )));
        }
        self.publish(ControlChange::Delete {
            kind: ControlKind::PricePlan,
            id: id.to_owned(),
        })
        .await
    }

    /// Put `account_id` on `plan_id` (None: back to the default terms).
    pub async fn assign_price_plan(
        &self,
        account_id: &AccountId,
        plan_id: Option<&str>,
    ) -> Result<Account, ControlError> {
        self.refresh().await?;
        let mut account = self.account(account_id)?;
        if let Some(plan_id) = plan_id {
            self.price_plan(plan_id)?;
        }
        account.price_plan_id = plan_id.map(str::to_owned);
        self.upsert(ControlObject::Account(account.clone())).await?;
        Ok(account)
    }
}
