//! Ledger inputs and outputs that travel on the log besides usage:
//! credit purchases, adjustments, ledger ticks and balance updates.

use crate::ids::AccountId;
use crate::money::Usd;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Smallest purchase accepted.
pub const MINIMUM_PURCHASE_USD: &str = "5.00";
/// Credits expire this many days after their purchase.
pub const CREDIT_LIFETIME_DAYS: i64 = 365;

/// Credits bought: one lot, expiring 365 days after `purchased_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Purchase {
    pub purchase_id: String,
    pub account_id: AccountId,
    pub amount: Usd,
    /// A retried purchase with the same key (per account) is applied once.
    pub idempotency_key: String,
    pub purchased_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    /// Credits returned to the customer's payment method: leaves the balance.
    Refund,
    /// Credits given: a new lot, like a purchase.
    GoodwillCredit,
    /// A charge outside usage: burns lots like a debit.
    ManualDebit,
}

impl AdjustmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Refund => "refund",
            AdjustmentKind::GoodwillCredit => "goodwill_credit",
            AdjustmentKind::ManualDebit => "manual_debit",
        }
    }
}

/// A correction, always a new entry (entries are never edited).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Adjustment {
    pub adjustment_id: String,
    pub account_id: AccountId,
    pub kind: AdjustmentKind,
    pub amount: Usd,
    pub reason: String,
    pub idempotency_key: String,
    pub at: DateTime<Utc>,
}

/// Ledger time moves on: written into every partition at an interval so
/// expiry happens for accounts with no traffic, from the log, not a clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub at: DateTime<Utc>,
}

/// An account's balance as the ledger last computed it (balances topic,
/// key = account id). `applied` holds, per proxy instance, the highest
/// usage sequence number included, so a proxy can release reservations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceUpdate {
    pub account_id: AccountId,
    /// Lots remaining minus debt; negative means debt.
    pub balance: Usd,
    pub as_of: DateTime<Utc>,
    #[serde(default)]
    pub applied: BTreeMap<String, u64>,
    /// Each budget on the account or its keys: its current period (by
    /// ledger time) and the spend in it. Left out when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<crate::budget::BudgetSpend>,
}
