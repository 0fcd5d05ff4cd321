//! The ledger as a pure state machine: the same inputs in the same order
//! always give the same entries and balances (time comes from the events,
//! never the wall clock). Persistence and deduplication live in `sqlite`.
//!
//! Invariants, checked on every entry: postings sum to zero; the customer's
//! posting equals the entry's balance change; an account's balance equals
//! its lots' remaining credit minus its debt.

use crate::input::UsageCharge;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tollgate_core::billing::{Adjustment, AdjustmentKind, Purchase, CREDIT_LIFETIME_DAYS};
use tollgate_core::budget::spend_day;
use tollgate_core::pricing::cost_with_tool_calls;
use tollgate_core::{AccountId, UsageEvent, Usd};

/// Ledger accounts of the chart, besides one `customer:<account id>` each.
pub mod chart {
    pub const CASH: &str = "cash";
    pub const FEE_REVENUE: &str = "revenue:processing_fee";
    pub const UPSTREAM_COST: &str = "payable:upstream_cost";
    /// A price plan's markup on upstream cost (debited for a discount).
    pub const UPSTREAM_MARKUP: &str = "revenue:upstream_markup";
    pub const EXPIRED_CREDIT: &str = "revenue:expired_credit";
    pub const GOODWILL: &str = "expense:goodwill";
    pub const MANUAL_DEBIT: &str = "revenue:manual_debit";

    pub fn customer(account: &str) -> String {
        format!("customer:{account}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotSource {
    Purchase,
    GoodwillCredit,
}

/// Credits from one purchase (or goodwill credit), burnt down by debits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub lot_id: String,
    pub account_id: AccountId,
    pub source: LotSource,
    pub purchased_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub amount: Usd,
    pub remaining: Usd,
    /// Set once the lot's remainder has been booked as expired.
    pub expired: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    pub lots: Vec<Lot>,
    /// Owed by the customer (≥ 0): what admitted requests cost beyond the lots.
    pub debt: Usd,
    /// The log partition the account's events arrive on (for ticks).
    pub partition: u32,
    /// Per gateway instance, the highest usage sequence number applied.
    pub applied: BTreeMap<String, u64>,
}

impl AccountState {
    pub fn balance(&self) -> Usd {
        self.lots
            .iter()
            .filter(|l| !l.expired)
            .map(|l| l.remaining)
            .sum::<Usd>()
            - self.debt
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Purchase,
    Usage,
    Expiry,
    Refund,
    GoodwillCredit,
    ManualDebit,
    /// An adjustment that could not apply (e.g. refund beyond the balance):
    /// recorded with no postings, so nothing happens silently.
    AdjustmentRejected,
}

impl EntryKind {
    /// Every kind (metrics start each at zero).
    pub const ALL: [EntryKind; 7] = [
        EntryKind::Purchase,
        EntryKind::Usage,
        EntryKind::Expiry,
        EntryKind::Refund,
        EntryKind::GoodwillCredit,
        EntryKind::ManualDebit,
        EntryKind::AdjustmentRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Purchase => "purchase",
            EntryKind::Usage => "usage",
            EntryKind::Expiry => "expiry",
            EntryKind::Refund => "refund",
            EntryKind::GoodwillCredit => "goodwill_credit",
            EntryKind::ManualDebit => "manual_debit",
            EntryKind::AdjustmentRejected => "adjustment_rejected",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One side of a double-entry posting: debits positive, credits negative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Posting {
    pub ledger_account: String,
    pub amount: Usd,
}

/// How an entry moved the customer's credit: from/to a lot, or debt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Allocation {
    /// None: the debt.
    pub lot_id: Option<String>,
    /// Signed change: negative consumes credit (or adds debt), positive adds
    /// credit (or settles debt).
    pub amount: Usd,
}

/// An immutable ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    pub account_id: AccountId,
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
    /// What caused it: usage event id, purchase id, adjustment id, or lot id (expiry).
    pub source_id: String,
    /// Change of the customer's balance (negative for debits).
    pub amount: Usd,
    pub fee: Usd,
    pub upstream: Usd,
    pub balance_after: Usd,
    pub postings: Vec<Posting>,
    pub allocations: Vec<Allocation>,
    pub memo: Option<String>,
}

/// All ledger state, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub accounts: HashMap<AccountId, AccountState>,
    /// Ledger time per partition: the latest event time seen there.
    pub clocks: HashMap<u32, DateTime<Utc>>,
    /// Usage debits per key and account per day of `started_at` (budgets).
    pub spend: crate::spend::Spend,
}

/// Lots expire exactly 365 days after purchase.
pub fn expiry_of(purchased_at: DateTime<Utc>) -> DateTime<Utc> {
    purchased_at + Duration::days(CREDIT_LIFETIME_DAYS)
}

impl Ledger {
    /// Move the partition's clock (never backwards) and return it.
    fn advance(&mut self, partition: u32, at: DateTime<Utc>) -> DateTime<Utc> {
        let clock = self.clocks.entry(partition).or_insert(at);
        if at > *clock {
            *clock = at;
        }
        *clock
    }

    fn account(&mut self, account_id: &AccountId, partition: u32) -> &mut AccountState {
        let state = self.accounts.entry(account_id.clone()).or_default();
        state.partition = partition;
        state
    }

    /// Book the remainder of every lot of `account_id` expired at `now`.
    fn expire_account(&mut self, account_id: &AccountId, now: DateTime<Utc>, out: &mut Vec<Entry>) {
        let Some(state) = self.accounts.get_mut(account_id) else {
            return;
        };
        let mut due: Vec<usize> = (0..state.lots.len())
            .filter(|&i| !state.lots[i].expired && state.lots[i].expires_at <= now)
            .collect();
        due.sort_by(|&a, &b| {
            let (la, lb) = (&state.lots[a], &state.lots[b]);
            (la.expires_at, la.purchased_at, &la.lot_id).cmp(&(
                lb.expires_at,
                lb.purchased_at,
                &lb.lot_id,
            ))
        });
        for i in due {
            let lot = &mut state.lots[i];
            lot.expired = true;
            let remainder = lot.remaining;
            lot.remaining = Usd::ZERO;
            if remainder == Usd::ZERO {
                continue;
            }
            let lot_id = lot.lot_id.clone();
            let at = lot.expires_at;
            let balance_after = state.balance();
            out.push(entry(
                account_id,
                at,
                EntryKind::Expiry,
                lot_id.clone(),
                -remainder,
                Usd::ZERO,
                Usd::ZERO,
                balance_after,
                vec![
                    posting(&chart::customer(account_id.as_str()), remainder),
                    posting(chart::EXPIRED_CREDIT, -remainder),
                ],
                vec![Allocation {
                    lot_id: Some(lot_id),
                    amount: -remainder,
                }],
                None,
            ));
        }
    }

    /// A tick on `partition`: expire due lots of every account there.
    pub fn tick(&mut self, partition: u32, at: DateTime<Utc>, out: &mut Vec<Entry>) {
        let now = self.advance(partition, at);
        for account_id in self.due_at(partition, now) {
            self.expire_account(&account_id, now, out);
        }
    }

    /// The accounts a tick at `at` on `partition` would change (those with
    /// lots due by then), in the order it changes them.
    pub fn due_at_tick(&self, partition: u32, at: DateTime<Utc>) -> Vec<AccountId> {
        let now = self
            .clocks
            .get(&partition)
            .map_or(at, |clock| at.max(*clock));
        self.due_at(partition, now)
    }

    fn due_at(&self, partition: u32, now: DateTime<Utc>) -> Vec<AccountId> {
        let mut due: Vec<AccountId> = self
            .accounts
            .iter()
            .filter(|(_, s)| {
                s.partition == partition && s.lots.iter().any(|l| !l.expired && l.expires_at <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due
    }

    /// Consume `amount` from lots (earliest expiry, then oldest first); the
    /// rest becomes debt. Returns the allocations.
    fn burn(state: &mut AccountState, amount: Usd) -> Vec<Allocation> {
        let mut allocations = Vec::new();
        let mut left = amount;
        let mut order: Vec<usize> = (0..state.lots.len())
            .filter(|&i| !state.lots[i].expired && state.lots[i].remaining > Usd::ZERO)
            .collect();
        order.sort_by(|&a, &b| {
            let (la, lb) = (&state.lots[a], &state.lots[b]);
            (la.expires_at, la.purchased_at, &la.lot_id).cmp(&(
                lb.expires_at,
                lb.purchased_at,
                &lb.lot_id,
            ))
        });
        for i in order {
            if left == Usd::ZERO {
                break;
            }
            let lot = &mut state.lots[i];
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            left -= take;
            allocations.push(Allocation {
                lot_id: Some(lot.lot_id.clone()),
                amount: -take,
            });
        }
        if left > Usd::ZERO {
            state.debt += left;
            allocations.push(Allocation {
                lot_id: None,
                amount: -left,
            });
        }
        allocations
    }

    /// Add a lot; any debt is settled from it first.
    fn add_lot(state: &mut AccountState, mut lot: Lot) -> Vec<Allocation> {
        let mut allocations = Vec::new();
        if state.debt > Usd::ZERO {
            let settle = state.debt.min(lot.amount);
            state.debt -= settle;
            lot.remaining = lot.amount - settle;
            allocations.push(Allocation {
                lot_id: None,
                amount: settle,
            });
        }
        allocations.push(Allocation {
            lot_id: Some(lot.lot_id.clone()),
            amount: lot.remaining,
        });
        state.lots.push(lot);
        allocations
    }

    pub fn apply_usage(&mut self, partition: u32, event: &UsageEvent, out: &mut Vec<Entry>) {
        self.apply_charge(partition, &UsageCharge::from(event), out);
    }

    /// Debit a usage event (read as just its billing fields).
    pub fn apply_charge(&mut self, partition: u32, event: &UsageCharge, out: &mut Vec<Entry>) {
        let now = self.advance(partition, event.finished_at);
        self.account(&event.account_id, partition);
        self.expire_account(&event.account_id, now, out);
        let state = self.account(&event.account_id, partition);
        if let (Some(instance), Some(seq)) = (&event.instance_id, event.instance_seq) {
            let mark = state.applied.entry(instance.clone()).or_insert(seq);
            if seq > *mark {
                *mark = seq;
            }
        }
        let cost = cost_with_tool_calls(
            &event.tokens,
            &event.prices,
            &event.tool_calls,
            event.credential_source,
            event.plan.as_ref(),
        );
        let total = cost.total();
        if total == Usd::ZERO {
            return; // a request with no tokens costs nothing
        }
        let allocations = Self::burn(state, total);
        let balance_after = state.balance();
        self.spend.add(
            &event.account_id,
            &event.access_key_id,
            spend_day(event.started_at),
            total,
        );
        let account = event.account_id.as_str();
        let mut postings = vec![
            posting(&chart::customer(account), total),
            posting(chart::FEE_REVENUE, -cost.fee),
        ];
        // What is owed upstream is the providers' price; the plan's markup
        // (or discount) is the operator's, on its own account.
        let owed_upstream = cost.upstream - cost.markup;
        if owed_upstream != Usd::ZERO {
            postings.push(posting(chart::UPSTREAM_COST, -owed_upstream));
        }
        if cost.markup != Usd::ZERO {
            postings.push(posting(chart::UPSTREAM_MARKUP, -cost.markup));
        }
        out.push(entry(
            &event.account_id,
            now,
            EntryKind::Usage,
            event.event_id.to_string(),
            -total,
            cost.fee,
            cost.upstream,
            balance_after,
            postings,
            allocations,
            None,
        ));
    }

    pub fn apply_purchase(&mut self, partition: u32, purchase: &Purchase, out: &mut Vec<Entry>) {
        let now = self.advance(partition, purchase.purchased_at);
        self.account(&purchase.account_id, partition);
        self.expire_account(&purchase.account_id, now, out);
        let lot = Lot {
            lot_id: purchase.purchase_id.clone(),
            account_id: purchase.account_id.clone(),
            source: LotSource::Purchase,
            purchased_at: purchase.purchased_at,
            expires_at: expiry_of(purchase.purchased_at),
            amount: purchase.amount,
            remaining: purchase.amount,
            expired: false,
        };
        let state = self.account(&purchase.account_id, partition);
        let allocations = Self::add_lot(state, lot);
        let balance_after = state.balance();
        out.push(entry(
            &purchase.account_id,
            now,
            EntryKind::Purchase,
            purchase.purchase_id.clone(),
            purchase.amount,
            Usd::ZERO,
            Usd::ZERO,
            balance_after,
            vec![
                posting(chart::CASH, purchase.amount),
                posting(
                    &chart::customer(purchase.account_id.as_str()),
                    -purchase.amount,
                ),
            ],
            allocations,
            None,
        ));
    }

    pub fn apply_adjustment(&mut self, partition: u32, adj: &Adjustment, out: &mut Vec<Entry>) {
        let now = self.advance(partition, adj.at);
        self.account(&adj.account_id, partition);
        self.expire_account(&adj.account_id, now, out);
        let customer = chart::customer(adj.account_id.as_str());
        let state = self.account(&adj.account_id, partition);
        let (kind, amount, postings, allocations) = match adj.kind {
            AdjustmentKind::GoodwillCredit => {
                let lot = Lot {
                    lot_id: adj.adjustment_id.clone(),
                    account_id: adj.account_id.clone(),
                    source: LotSource::GoodwillCredit,
                    purchased_at: adj.at,
                    expires_at: expiry_of(adj.at),
                    amount: adj.amount,
                    remaining: adj.amount,
                    expired: false,
                };
                let postings = vec![
                    posting(chart::GOODWILL, adj.amount),
                    posting(&customer, -adj.amount),
                ];
                let allocations = Self::add_lot(state, lot);
                (EntryKind::GoodwillCredit, adj.amount, postings, allocations)
            }
            AdjustmentKind::ManualDebit => {
                let postings = vec![
                    posting(&customer, adj.amount),
                    posting(chart::MANUAL_DEBIT, -adj.amount),
                ];
                let allocations = Self::burn(state, adj.amount);
                (EntryKind::ManualDebit, -adj.amount, postings, allocations)
            }
            AdjustmentKind::Refund => {
                let available: Usd = state
                    .lots
                    .iter()
                    .filter(|l| !l.expired)
                    .map(|l| l.remaining)
                    .sum();
                if adj.amount > available || state.debt > Usd::ZERO {
                    out.push(rejected_refund(adj, now, available, state.balance()));
                    return;
                }
                let postings = vec![
                    posting(&customer, adj.amount),
                    posting(chart::CASH, -adj.amount),
                ];
                let allocations = Self::burn(state, adj.amount);
                (EntryKind::Refund, -adj.amount, postings, allocations)
            }
        };
        let balance_after = state.balance();
        out.push(entry(
            &adj.account_id,
            now,
            kind,
            adj.adjustment_id.clone(),
            amount,
            Usd::ZERO,
            Usd::ZERO,
            balance_after,
            postings,
            allocations,
            Some(adj.reason.clone()),
        ));
    }
}

/// A refund larger than the unexpired credit (or while in debt) moves no
/// money; its entry says why.
fn rejected_refund(
    adj: &Adjustment,
    now: DateTime<Utc>,
    available: Usd,
    balance_after: Usd,
) -> Entry {
    entry(
        &adj.account_id,
        now,
        EntryKind::AdjustmentRejected,
        adj.adjustment_id.clone(),
        Usd::ZERO,
        Usd::ZERO,
        Usd::ZERO,
        balance_after,
        vec![],
        vec![],
        Some(format!(
            "refund of {} rejected: only {} of unexpired credit remains; reason given: {}",
            adj.amount, available, adj.reason
        )),
    )
}

/// The postings the ledger books for an entry of `kind` (debits positive),
/// a function of the entry's own fields: storage keeps them implicit when
/// an entry's postings are exactly these (see `sqlite::insert_entries`).
pub fn standard_postings(
    kind: EntryKind,
    account_id: &AccountId,
    amount: Usd,
    fee: Usd,
    upstream: Usd,
) -> Vec<Posting> {
    let customer = chart::customer(account_id.as_str());
    match kind {
        // amount = purchase; goodwill: the credit given.
        EntryKind::Purchase => vec![posting(chart::CASH, amount), posting(&customer, -amount)],
        EntryKind::GoodwillCredit => vec![
            posting(chart::GOODWILL, amount),
            posting(&customer, -amount),
        ],
        // amount = -(fee + upstream).
        EntryKind::Usage => {
            let mut postings = vec![
                posting(&customer, -amount),
                posting(chart::FEE_REVENUE, -fee),
            ];
            if upstream != Usd::ZERO {
                postings.push(posting(chart::UPSTREAM_COST, -upstream));
            }
            postings
        }
        // amount = -remainder / -debit / -refund.
        EntryKind::Expiry => vec![
            posting(&customer, -amount),
            posting(chart::EXPIRED_CREDIT, amount),
        ],
        EntryKind::ManualDebit => vec![
            posting(&customer, -amount),
            posting(chart::MANUAL_DEBIT, amount),
        ],
        EntryKind::Refund => vec![posting(&customer, -amount), posting(chart::CASH, amount)],
        EntryKind::AdjustmentRejected => vec![],
    }
}

/// Whether `e.postings` equal `standard_postings` of `e`'s fields, checked
/// in place (building them costs more than the comparison, once per entry).
pub fn has_standard_postings(e: &Entry) -> bool {
    let customer =
        |p: &Posting| p.ledger_account.strip_prefix("customer:") == Some(e.account_id.as_str());
    let named = |p: &Posting, name: &str| p.ledger_account == name;
    let (amount, fee, upstream) = (e.amount, e.fee, e.upstream);
    match (e.kind, e.postings.as_slice()) {
        (EntryKind::Purchase, [a, b]) => {
            named(a, chart::CASH) && a.amount == amount && customer(b) && b.amount == -amount
        }
        (EntryKind::GoodwillCredit, [a, b]) => {
            named(a, chart::GOODWILL) && a.amount == amount && customer(b) && b.amount == -amount
        }
        (EntryKind::Usage, [a, b, rest @ ..]) => {
            let upstream_matches = match rest {
                [] => upstream == Usd::ZERO,
                [c] => {
                    upstream != Usd::ZERO && named(c, chart::UPSTREAM_COST) && c.amount == -upstream
                }
                _ => false,
            };
            customer(a)
                && a.amount == -amount
                && named(b, chart::FEE_REVENUE)
                && b.amount == -fee
                && upstream_matches
        }
        (EntryKind::Expiry, [a, b]) => {
            customer(a)
                && a.amount == -amount
                && named(b, chart::EXPIRED_CREDIT)
                && b.amount == amount
        }
        (EntryKind::ManualDebit, [a, b]) => {
            customer(a)
                && a.amount == -amount
                && named(b, chart::MANUAL_DEBIT)
                && b.amount == amount
        }
        (EntryKind::Refund, [a, b]) => {
            customer(a) && a.amount == -amount && named(b, chart::CASH) && b.amount == amount
        }
        (EntryKind::AdjustmentRejected, []) => true,
        _ => false,
    }
}

fn posting(ledger_account: &str, amount: Usd) -> Posting {
    Posting {
        ledger_account: ledger_account.to_owned(),
        amount,
    }
}

#[allow(clippy::too_many_arguments)]
fn entry(
    account_id: &AccountId,
    at: DateTime<Utc>,
    kind: EntryKind,
    source_id: String,
    amount: Usd,
    fee: Usd,
    upstream: Usd,
    balance_after: Usd,
    postings: Vec<Posting>,
    allocations: Vec<Allocation>,
    memo: Option<String>,
) -> Entry {
    // Invariants: every posting set balances, and the customer's side is the
    // entry's balance change (debits positive, so it is the negation).
    debug_assert_eq!(postings.iter().map(|p| p.amount).sum::<Usd>(), Usd::ZERO);
    debug_assert!(
        postings.is_empty()
            || postings
                .iter()
                .filter(|p| p.ledger_account == chart::customer(account_id.as_str()))
                .map(|p| p.amount)
                .sum::<Usd>()
                == -amount
    );
    Entry {
        account_id: account_id.clone(),
        at,
        kind,
        source_id,
        amount,
        fee,
        upstream,
        balance_after,
        postings,
        allocations,
        memo,
    }
}
