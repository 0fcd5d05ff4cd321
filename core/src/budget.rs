//! Spend controls: budgets on an access key or an account, the alerts the
//! ledger raises, and the webhooks alerts are delivered to.
//!
//! Spend in a budget's period is a function of (key or account, period
//! window) alone — the usage debits whose usage started in the window — so
//! editing a budget never rewrites history and a replay gives the same
//! spend. Every period but `lifetime` is a union of whole UTC days.

use crate::ids::{AccessKeyId, AccountId};
use crate::money::Usd;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A budget's id (`bud_…`).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct BudgetId(pub String);

impl BudgetId {
    pub fn generate() -> Self {
        BudgetId(format!("bud_{}", uuid::Uuid::now_v7().simple()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BudgetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The window spend is counted over; every boundary is UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// 00:00 to 24:00 UTC.
    Day,
    /// ISO week: Monday 00:00 UTC to the next Monday.
    Week,
    /// Calendar month: the 1st 00:00 UTC to the next 1st.
    Month,
    /// From the budget's creation, never reset.
    Lifetime,
}

impl BudgetPeriod {
    pub const ALL: [BudgetPeriod; 4] = [
        BudgetPeriod::Day,
        BudgetPeriod::Week,
        BudgetPeriod::Month,
        BudgetPeriod::Lifetime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Lifetime => "lifetime",
        }
    }

    pub fn parse(text: &str) -> Option<BudgetPeriod> {
        BudgetPeriod::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The window containing `at`: its start, and its end (exclusive; the
    /// moment the budget resets), None for `lifetime`, whose window starts
    /// at `created_at`.
    pub fn window(
        self,
        created_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        let day = at.date_naive();
        match self {
            BudgetPeriod::Day => {
                let start = midnight(day);
                (start, Some(start + Duration::days(1)))
            }
            BudgetPeriod::Week => {
                let monday = day - Duration::days(i64::from(day.weekday().num_days_from_monday()));
                let start = midnight(monday);
                (start, Some(start + Duration::days(7)))
            }
            BudgetPeriod::Month => {
                let first = day.with_day(1).unwrap_or(day);
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                };
                (midnight(first), next.map(midnight))
            }
            BudgetPeriod::Lifetime => (created_at, None),
        }
    }
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The UTC day `at` falls on, as days since 1970-01-01: the unit spend is
/// kept in (every period but `lifetime` is a run of whole days).
pub fn spend_day(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

/// What a budget counts: one access key's spend, or a whole account's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SpendScope {
    AccessKey(AccessKeyId),
    Account(AccountId),
}

impl SpendScope {
    /// Stored form: `key:<id>` or `account:<id>`.
    pub fn key(&self) -> String {
        match self {
            SpendScope::AccessKey(id) => format!("key:{id}"),
            SpendScope::Account(id) => format!("account:{id}"),
        }
    }
}

/// Percent of the amount at which the soft-threshold alert is raised.
pub const DEFAULT_SOFT_THRESHOLD_PERCENT: u8 = 80;

/// A spending limit over a period on an access key or an account
/// (control-plane object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Budget {
    pub id: BudgetId,
    pub account_id: AccountId,
    /// Set: the budget counts this key's spend. None: the whole account's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<AccessKeyId>,
    pub name: String,
    /// The limit for one period, in USD.
    pub amount: Usd,
    pub period: BudgetPeriod,
    /// Percent of `amount` (1–100) at which a soft-threshold alert is raised.
    pub soft_threshold_percent: u8,
    /// Whether reaching `amount` refuses requests (402 `budget_exceeded`);
    /// false: alerts only.
    pub refuse: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Budget {
    pub fn scope(&self) -> SpendScope {
        match &self.access_key_id {
            Some(key) => SpendScope::AccessKey(key.clone()),
            None => SpendScope::Account(self.account_id.clone()),
        }
    }

    /// The period window containing `at`.
    pub fn window(&self, at: DateTime<Utc>) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        self.period.window(self.created_at, at)
    }

    /// The spend at which the soft-threshold alert is raised.
    pub fn soft_threshold(&self) -> Usd {
        Usd(
            self.amount.0 * rust_decimal::Decimal::from(self.soft_threshold_percent)
                / rust_decimal::Decimal::from(100u8),
        )
    }
}

/// One budget's spend in its current period, as the ledger published it
/// (carried by balance updates and shown at `GET /v1/credits/budgets`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetSpend {
    pub budget_id: BudgetId,
    pub period_start: DateTime<Utc>,
    /// When the period ends and spend starts again from zero; None: lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<DateTime<Utc>>,
    /// Usage debits (fee plus upstream, after the price plan) of usage
    /// started in the period.
    pub spent: Usd,
}

/// What an alert is about.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A budget's spend reached its soft threshold in a period.
    BudgetThreshold,
    /// A budget's spend reached its amount in a period.
    BudgetExceeded,
    /// An account's balance fell below its low-balance amount.
    LowBalance,
    /// A lot of credit expires within 30 days with credit left in it.
    CreditsExpiring,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::BudgetThreshold,
        AlertKind::BudgetExceeded,
        AlertKind::LowBalance,
        AlertKind::CreditsExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BudgetThreshold => "budget_threshold",
            AlertKind::BudgetExceeded => "budget_exceeded",
            AlertKind::LowBalance => "low_balance",
            AlertKind::CreditsExpiring => "credits_expiring",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// An alert's id: deterministic from what it is about — (object, period or
/// lot, kind) — so a replay or a standby ledger raises the same id again,
/// never a second alert.
pub fn alert_id(kind: AlertKind, object: &str, period_or_lot: &str) -> String {
    let mut hash = Sha256::new();
    for part in [kind.as_str(), object, period_or_lot] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("alrt_{}", &hex::encode(hash.finalize())[..32])
}

/// An alert as it travels on the log (topic `tollgate.alerts`, key = its
/// id) and in a webhook's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub alert_id: String,
    pub kind: AlertKind,
    pub account_id: AccountId,
    /// Ledger time when it was raised (from the log, not a clock).
    pub raised_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<AccessKeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<BudgetId>,
    /// Budget alerts: the period the spend was counted over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<DateTime<Utc>>,
    /// Budget alerts: the budget's amount; low balance: the low-balance
    /// amount; expiring credits: what is left in the lot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Usd>,
    /// Budget alerts: spend in the period when raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<Usd>,
    /// Low balance: the balance when raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Usd>,
    /// Expiring credits: the lot and when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A webhook alerts are delivered to (control-plane object). The signing
/// secret is shown once, at creation, and stored only encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// `whk_…`
    pub id: String,
    pub url: String,
    /// The kinds delivered to it; empty: every kind.
    #[serde(default)]
    pub kinds: Vec<AlertKind>,
    /// Authenticated ciphertext of the signing secret (like provider keys).
    pub secret_ciphertext: String,
    pub created_at: DateTime<Utc>,
}

impl Webhook {
    pub fn subscribes_to(&self, kind: AlertKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn windows_are_utc_days_iso_weeks_and_calendar_months() {
        let created = at("2026-01-15T10:00:00Z");
        let now = at("2026-12-31T23:59:59Z"); // a Thursday
        assert_eq!(
            BudgetPeriod::Day.window(created, now),
            (at("2026-12-31T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        assert_eq!(
            BudgetPeriod::Week.window(created, now),
            (at("2026-12-28T00:00:00Z"), Some(at("2027-01-04T00:00:00Z")))
        );
        assert_eq!(
            BudgetPeriod::Month.window(created, now),
            (at("2026-12-01T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        assert_eq!(
            BudgetPeriod::Month.window(created, at("2028-02-29T12:00:00Z")),
            (at("2028-02-01T00:00:00Z"), Some(at("2028-03-01T00:00:00Z")))
        );
        assert_eq!(BudgetPeriod::Lifetime.window(created, now), (created, None));
        // Monday belongs to its own week.
        assert_eq!(
            BudgetPeriod::Week
                .window(created, at("2026-12-07T00:00:00Z"))
                .0,
            at("2026-12-07T00:00:00Z")
        );
    }

    #[test]
    fn spend_days_count_from_the_epoch() {
        assert_eq!(spend_day(at("1970-01-01T23:59:59Z")), 0);
        assert_eq!(spend_day(at("1970-01-02T00:00:00Z")), 1);
        assert_eq!(spend_day(at("1969-12-31T23:59:59Z")), -1);
    }

    #[test]
    fn alert_ids_depend_only_on_what_the_alert_is_about() {
        let a = alert_id(AlertKind::BudgetThreshold, "bud_1", "2026-12-07T00:00:00Z");
        assert_eq!(
            a,
            alert_id(AlertKind::BudgetThreshold, "bud_1", "2026-12-07T00:00:00Z")
        );
        assert_ne!(
            a,
            alert_id(AlertKind::BudgetExceeded, "bud_1", "2026-12-07T00:00:00Z")
        );
        assert_ne!(
            a,
            alert_id(AlertKind::BudgetThreshold, "bud_1", "2026-12-08T00:00:00Z")
        );
        // Parts are length-prefixed: moving a character between them differs.
        assert_ne!(
            alert_id(AlertKind::LowBalance, "ab", "c"),
            alert_id(AlertKind::LowBalance, "a", "bc")
        );
        assert!(a.starts_with("alrt_") && a.len() == 37);
    }

    #[test]
    fn the_soft_threshold_is_a_percent_of_the_amount() {
        let budget = Budget {
            id: BudgetId("bud_1".into()),
            account_id: AccountId("acct_1".into()),
            access_key_id: None,
            name: "n".into(),
            amount: "1.00".parse().unwrap(),
            period: BudgetPeriod::Day,
            soft_threshold_percent: 80,
            refuse: true,
            created_at: at("2026-01-01T00:00:00Z"),
            updated_at: at("2026-01-01T00:00:00Z"),
        };
        assert_eq!(budget.soft_threshold(), "0.8".parse().unwrap());
    }
}
