//! Budgets (spending limits on an access key or an account over a period)
//! and each account's low-balance amount, as control-plane changes. The
//! ledger counts spend and raises alerts; the proxy refuses over-budget
//! requests; this module only validates and records the objects.
//!
//! A budget's period and scope (account, key) are fixed at creation: spend
//! is counted per (scope, period window), so changing either would make the
//! spend shown for the budget mean something else. Create a new budget
//! instead. A budget on a key that is later revoked stays (it never matches
//! a request again); there is no account or key deletion to cascade from.

use crate::plane::{non_empty, ControlError, ControlPlane};
use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use tollgate_core::budget::{Budget, BudgetId, BudgetPeriod, DEFAULT_SOFT_THRESHOLD_PERCENT};
use tollgate_core::control::{Account, ControlChange, ControlKind, ControlObject};
use tollgate_core::{AccessKeyId, AccountId, Usd};

/// Longest budget name, in characters.
pub const BUDGET_NAME_MAX_CHARS: usize = 200;
/// Amounts are limited to micro-dollars, the precision spend is kept in.
pub const AMOUNT_MAX_DECIMALS: u32 = 6;

/// Amounts must stay below this many dollars (1e12): a typo guard, and far
/// from `Decimal`'s range so spend sums never overflow.
fn amount_limit() -> Decimal {
    Decimal::from(1_000_000_000_000u64)
}

/// A new budget, as the admin API and CLI send it.
#[derive(Clone, Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBudget {
    /// The account whose spend (or whose key's spend) is limited.
    pub account_id: AccountId,
    /// Set: only this key's spend counts (an active key of `account_id`).
    /// Absent: the whole account's spend.
    #[serde(default)]
    pub access_key_id: Option<AccessKeyId>,
    /// Not blank, at most 200 characters.
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: String,
    /// The limit for one period, USD as a decimal string: more than 0, below
    /// 1e12, at most 6 decimal places.
    #[schema(example = "100.00")]
    pub amount: Usd,
    pub period: BudgetPeriod,
    /// Percent of `amount` (1–100) at which a threshold alert is raised.
    /// Default 80.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub soft_threshold_percent: Option<u8>,
    /// Whether reaching `amount` refuses requests (402 `budget_exceeded`);
    /// false: alerts only. Default true.
    #[serde(default)]
    pub refuse: Option<bool>,
}

/// A change to a budget: the fields given are replaced, the others kept.
/// Period and scope are fixed; naming them is refused.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetPatch {
    /// Not blank, at most 200 characters.
    #[serde(default)]
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: Option<String>,
    /// USD as a decimal string: more than 0, below 1e12, at most 6 decimal places.
    #[serde(default)]
    #[schema(example = "100.00")]
    pub amount: Option<Usd>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub soft_threshold_percent: Option<u8>,
    #[serde(default)]
    pub refuse: Option<bool>,
    /// Whether the body named a fixed field (so the refusal can say why,
    /// rather than serde's bare "unknown field").
    #[serde(
        default,
        rename = "period",
        deserialize_with = "named",
        skip_serializing
    )]
    #[schema(ignore)]
    pub names_period: bool,
    #[serde(
        default,
        rename = "account_id",
        deserialize_with = "named",
        skip_serializing
    )]
    #[schema(ignore)]
    pub names_account: bool,
    #[serde(
        default,
        rename = "access_key_id",
        deserialize_with = "named",
        skip_serializing
    )]
    #[schema(ignore)]
    pub names_key: bool,
}

/// True whenever the field is present, whatever its value (null included).
fn named<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// A budget amount or low-balance amount: exact, at most 6 decimal places,
/// below 1e12, and more than 0 (or, with `zero_allowed`, at least 0).
/// Returned normalized.
pub fn check_amount(field: &str, amount: Usd, zero_allowed: bool) -> Result<Usd, ControlError> {
    let value = amount.amount().normalize();
    let floor_ok = if zero_allowed {
        value >= Decimal::ZERO
    } else {
        value > Decimal::ZERO
    };
    if !floor_ok {
        let floor = if zero_allowed {
            "at least 0"
        } else {
            "more than 0"
        };
        return Err(ControlError::Invalid(format!(
            "{field}: `{value}` must be {floor}"
        )));
    }
    if value >= amount_limit() {
        return Err(ControlError::Invalid(format!(
            "{field}: `{value}` must be below 1000000000000"
        )));
    }
    if value.scale() > AMOUNT_MAX_DECIMALS {
        return Err(ControlError::Invalid(format!(
            "{field}: `{value}` has more than {AMOUNT_MAX_DECIMALS} decimal places"
        )));
    }
    Ok(Usd(value))
}

fn check_name(name: &str) -> Result<String, ControlError> {
    let name = non_empty("name", name)?;
    if name.chars().count() > BUDGET_NAME_MAX_CHARS {
        return Err(ControlError::Invalid(format!(
            "name: longer than {BUDGET_NAME_MAX_CHARS} characters"
        )));
    }
    Ok(name)
}

fn check_threshold(percent: u8) -> Result<u8, ControlError> {
    if (1..=100).contains(&percent) {
        Ok(percent)
    } else {
        Err(ControlError::Invalid(format!(
            "soft_threshold_percent: `{percent}` must be between 1 and 100"
        )))
    }
}

impl BudgetPatch {
    fn refuse_fixed_fields(&self) -> Result<(), ControlError> {
        for (named, field) in [
            (self.names_period, "period"),
            (self.names_account, "account_id"),
            (self.names_key, "access_key_id"),
        ] {
            if named {
                return Err(ControlError::Invalid(format!(
                    "{field}: a budget's period and scope cannot change; \
                     create a new budget (and delete this one) instead"
                )));
            }
        }
        Ok(())
    }
}

impl ControlPlane {
    pub fn budget(&self, id: &str) -> Result<Budget, ControlError> {
        self.snapshot()
            .budgets
            .get(&BudgetId(id.to_owned()))
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("budget {id}")))
    }

    /// Budgets in id (= creation) order, optionally only one account's
    /// and/or one key's.
    pub fn budgets(
        &self,
        account_id: Option<&AccountId>,
        access_key_id: Option<&AccessKeyId>,
    ) -> Vec<Budget> {
        self.snapshot()
            .budgets
            .values()
            .filter(|b| account_id.is_none_or(|a| &b.account_id == a))
            .filter(|b| access_key_id.is_none_or(|k| b.access_key_id.as_ref() == Some(k)))
            .cloned()
            .collect()
    }

    /// The scope a new budget names must exist: the account, and the key
    /// (active, of that account) when one is named. Both are body fields,
    /// so a missing one is a 400 naming the field, not a 404.
    fn check_budget_scope(
        &self,
        account_id: &AccountId,
        access_key_id: Option<&AccessKeyId>,
    ) -> Result<(), ControlError> {
        let snapshot = self.snapshot();
        if !snapshot.accounts.contains_key(account_id) {
            return Err(ControlError::Invalid(format!(
                "account_id: no account `{account_id}`"
            )));
        }
        let Some(key_id) = access_key_id else {
            return Ok(());
        };
        let key = snapshot.access_keys.get(key_id).ok_or_else(|| {
            ControlError::Invalid(format!("access_key_id: no access key `{key_id}`"))
        })?;
        if &key.account_id != account_id {
            return Err(ControlError::Invalid(format!(
                "access_key_id: `{key_id}` belongs to another account"
            )));
        }
        if key.revoked_at.is_some() {
            return Err(ControlError::Invalid(format!(
                "access_key_id: `{key_id}` is revoked"
            )));
        }
        Ok(())
    }

    pub async fn create_budget(&self, spec: &NewBudget) -> Result<Budget, ControlError> {
        self.refresh().await?;
        self.check_budget_scope(&spec.account_id, spec.access_key_id.as_ref())?;
        let now = Utc::now();
        let budget = Budget {
            id: BudgetId::generate(),
            account_id: spec.account_id.clone(),
            access_key_id: spec.access_key_id.clone(),
            name: check_name(&spec.name)?,
            amount: check_amount("amount", spec.amount, false)?,
            period: spec.period,
            soft_threshold_percent: check_threshold(
                spec.soft_threshold_percent
                    .unwrap_or(DEFAULT_SOFT_THRESHOLD_PERCENT),
            )?,
            refuse: spec.refuse.unwrap_or(true),
            created_at: now,
            updated_at: now,
        };
        self.upsert(ControlObject::Budget(budget.clone())).await?;
        Ok(budget)
    }

    /// A new amount or threshold applies to the current period's spend at
    /// once (spend is never rewritten, only compared anew).
    pub async fn update_budget(
        &self,
        id: &str,
        patch: &BudgetPatch,
    ) -> Result<Budget, ControlError> {
        self.refresh().await?;
        let mut budget = self.budget(id)?;
        patch.refuse_fixed_fields()?;
        if let Some(name) = &patch.name {
            budget.name = check_name(name)?;
        }
        if let Some(amount) = patch.amount {
            budget.amount = check_amount("amount", amount, false)?;
        }
        if let Some(percent) = patch.soft_threshold_percent {
            budget.soft_threshold_percent = check_threshold(percent)?;
        }
        if let Some(refuse) = patch.refuse {
            budget.refuse = refuse;
        }
        budget.updated_at = Utc::now();
        self.upsert(ControlObject::Budget(budget.clone())).await?;
        Ok(budget)
    }

    pub async fn delete_budget(&self, id: &str) -> Result<(), ControlError> {
        self.refresh().await?;
        self.budget(id)?;
        self.publish(ControlChange::Delete {
            kind: ControlKind::Budget,
            id: id.to_owned(),
        })
        .await
    }

    /// Set the balance below which `account_id` gets a low-balance alert
    /// (None: the ledger's global default).
    pub async fn set_low_balance(
        &self,
        account_id: &AccountId,
        amount: Option<Usd>,
    ) -> Result<Account, ControlError> {
        self.refresh().await?;
        let mut account = self.account(account_id)?;
        account.low_balance_usd = amount
            .map(|a| check_amount("amount", a, true))
            .transpose()?;
        self.upsert(ControlObject::Account(account.clone())).await?;
        Ok(account)
    }
}
