//! Spend for budgets: per scope (an access key, an account) per UTC day of
//! `started_at`, the sum of the usage debits (exactly the usage entries'
//! amounts, negated). Both the key and its account get every debit; manual
//! debits, expiries and refunds are not spend.
//!
//! Day, week and month spends are sums of whole days. A lifetime budget
//! counts from its creation instant: the whole days after its creation day
//! from here, plus the part of the creation day after `created_at`, which
//! the service computes from the stored usage entries (they keep the key and
//! `started_at`) — see `LedgerService` and docs/ledger.md.

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use tollgate_core::budget::{spend_day, Budget, BudgetPeriod, BudgetSpend, SpendScope};
use tollgate_core::{AccessKeyId, AccountId, Usd};

/// Spend of one scope by day (days since 1970-01-01, UTC).
pub type Days = BTreeMap<i64, Usd>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    pub keys: HashMap<AccessKeyId, Days>,
    pub accounts: HashMap<AccountId, Days>,
}

fn add_to<K: Eq + Hash + Clone>(map: &mut HashMap<K, Days>, id: &K, day: i64, amount: Usd) {
    // get_mut first: no id is cloned once the scope is known.
    let days = match map.get_mut(id) {
        Some(days) => days,
        None => map.entry(id.clone()).or_default(),
    };
    *days.entry(day).or_insert(Usd::ZERO) += amount;
}

impl Spend {
    /// Count a usage debit of `amount` (positive) started on `day`.
    pub fn add(&mut self, account: &AccountId, key: &AccessKeyId, day: i64, amount: Usd) {
        add_to(&mut self.keys, key, day, amount);
        add_to(&mut self.accounts, account, day, amount);
    }

    pub fn days(&self, scope: &SpendScope) -> Option<&Days> {
        match scope {
            SpendScope::AccessKey(id) => self.keys.get(id),
            SpendScope::Account(id) => self.accounts.get(id),
        }
    }

    /// One stored row: the spend of `scope` on `day` (zero when none).
    pub fn row(&self, scope: &SpendScope, day: i64) -> Usd {
        self.days(scope)
            .and_then(|d| d.get(&day))
            .copied()
            .unwrap_or(Usd::ZERO)
    }

    /// Set a row (loading from storage).
    pub fn set(&mut self, scope: SpendScope, day: i64, spent: Usd) {
        let days = match scope {
            SpendScope::AccessKey(id) => self.keys.entry(id).or_default(),
            SpendScope::Account(id) => self.accounts.entry(id).or_default(),
        };
        days.insert(day, spent);
    }

    /// Spend of `scope` on days in `from..to` (`to` None: no end).
    pub fn between(&self, scope: &SpendScope, from: i64, to: Option<i64>) -> Usd {
        let Some(days) = self.days(scope) else {
            return Usd::ZERO;
        };
        match to {
            Some(to) if to <= from => Usd::ZERO,
            Some(to) => days.range(from..to).map(|(_, v)| *v).sum(),
            None => days.range(from..).map(|(_, v)| *v).sum(),
        }
    }

    /// Every row as (scope key, day, spent), sorted: storage and audit shape.
    pub fn rows(&self) -> BTreeMap<(String, i64), Usd> {
        let mut out = BTreeMap::new();
        for (id, days) in &self.keys {
            let scope = SpendScope::AccessKey(id.clone()).key();
            for (day, spent) in days {
                out.insert((scope.clone(), *day), *spent);
            }
        }
        for (id, days) in &self.accounts {
            let scope = SpendScope::Account(id.clone()).key();
            for (day, spent) in days {
                out.insert((scope.clone(), *day), *spent);
            }
        }
        out
    }

    /// A budget's period containing `at` and the spend in it.
    /// `creation_day_part` gives, for a lifetime budget, the spend of its
    /// creation day from `created_at` on (asked only for lifetime budgets).
    pub fn budget_spend<E>(
        &self,
        budget: &Budget,
        at: DateTime<Utc>,
        creation_day_part: impl FnOnce(&Budget) -> Result<Usd, E>,
    ) -> Result<BudgetSpend, E> {
        let (period_start, resets_at) = budget.window(at);
        let scope = budget.scope();
        let spent = match (budget.period, resets_at) {
            (BudgetPeriod::Lifetime, _) | (_, None) => {
                let created_day = spend_day(budget.created_at);
                self.between(&scope, created_day + 1, None) + creation_day_part(budget)?
            }
            (_, Some(end)) => self.between(&scope, spend_day(period_start), Some(spend_day(end))),
        };
        Ok(BudgetSpend {
            budget_id: budget.id.clone(),
            period_start,
            resets_at,
            spent,
        })
    }
}

/// A usage entry's key and start (stored with it; `entry` is its index
/// in the batch's entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageOrigin {
    pub entry: usize,
    pub account_id: AccountId,
    pub access_key_id: AccessKeyId,
    pub started_at: DateTime<Utc>,
    /// The debit (positive).
    pub spent: Usd,
}

/// Parse a stored scope key (`key:<id>`, `account:<id>`).
pub fn parse_scope(text: &str) -> Option<SpendScope> {
    if let Some(id) = text.strip_prefix("key:") {
        Some(SpendScope::AccessKey(AccessKeyId(id.to_owned())))
    } else {
        text.strip_prefix("account:")
            .map(|id| SpendScope::Account(AccountId(id.to_owned())))
    }
}
