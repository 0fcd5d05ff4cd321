//! Worked examples with exact expected amounts, through the engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tollgate_core::billing::AdjustmentKind;
use tollgate_core::pricing::AppliedPlan;
use tollgate_core::{AccountId, CredentialSource};
use tollgate_ledger::engine::{chart, Ledger};
use tollgate_ledger::{Entry, EntryKind};

fn balance(ledger: &Ledger, account: &str) -> String {
    ledger.accounts[&AccountId::from(account)]
        .balance()
        .to_string()
}

fn check_double_entry(entries: &[Entry]) {
    for e in entries {
        let sum: tollgate_core::Usd = e.postings.iter().map(|p| p.amount).sum();
        assert_eq!(
            sum,
            tollgate_core::Usd::ZERO,
            "entry {e:?} does not balance"
        );
        let customer: tollgate_core::Usd = e
            .postings
            .iter()
            .filter(|p| p.ledger_account == chart::customer(e.account_id.as_str()))
            .map(|p| p.amount)
            .sum();
        assert_eq!(
            customer, -e.amount,
            "customer posting equals the balance change"
        );
    }
}

#[test]
fn a_debit_spanning_two_lots_takes_the_earliest_expiring_first() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_a", "5", "p1", "2026-01-01T00:00:00Z"),
        &mut out,
    );
    ledger.apply_purchase(
        0,
        &purchase("acct_a", "10", "p2", "2026-02-01T00:00:00Z"),
        &mut out,
    );
    // 1,000,000 input tokens at $3/M + fee $0.05 = $3.05 each.
    let u1 = usage(
        "acct_a",
        1_000_000,
        0,
        CredentialSource::Operator,
        "2026-03-01T00:00:00Z",
    );
    let u2 = usage(
        "acct_a",
        1_000_000,
        0,
        CredentialSource::Operator,
        "2026-03-02T00:00:00Z",
    );
    ledger.apply_usage(0, &u1, &mut out);
    ledger.apply_usage(0, &u2, &mut out);
    let lots = &ledger.accounts[&AccountId::from("acct_a")].lots;
    assert_eq!(lots[0].remaining.to_string(), "0");
    assert_eq!(lots[1].remaining.to_string(), "8.9");
    assert_eq!(balance(&ledger, "acct_a"), "8.9");
    let second = out.last().unwrap();
    assert_eq!(second.kind, EntryKind::Usage);
    assert_eq!(second.source_id, u2.event_id.to_string());
    assert_eq!(second.amount.to_string(), "-3.05");
    assert_eq!(second.fee.to_string(), "0.05");
    assert_eq!(second.upstream.to_string(), "3");
    assert_eq!(
        second.allocations.len(),
        2,
        "spans two lots: {:?}",
        second.allocations
    );
    assert_eq!(second.allocations[0].amount.to_string(), "-1.95");
    assert_eq!(second.allocations[1].amount.to_string(), "-1.1");
    check_double_entry(&out);
}

#[test]
fn a_partly_used_lot_expires_exactly_365_days_after_purchase() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_e", "20", "p1", "2026-01-15T10:00:00Z"),
        &mut out,
    );
    ledger.apply_usage(
        0,
        &usage(
            "acct_e",
            1_000_000,
            100_000,
            CredentialSource::Operator,
            "2026-06-01T00:00:00Z",
        ),
        &mut out,
    );
    // 3.00 + 1.50 upstream + 0.055 fee
    assert_eq!(balance(&ledger, "acct_e"), "15.445");
    ledger.tick(0, at("2027-01-15T09:59:59Z"), &mut out);
    assert_eq!(
        balance(&ledger, "acct_e"),
        "15.445",
        "one second before expiry"
    );
    ledger.tick(0, at("2027-01-15T10:00:00Z"), &mut out);
    assert_eq!(balance(&ledger, "acct_e"), "0");
    let expiry = out.last().unwrap();
    assert_eq!(expiry.kind, EntryKind::Expiry);
    assert_eq!(expiry.amount.to_string(), "-15.445");
    assert_eq!(expiry.at, at("2027-01-15T10:00:00Z"));
    assert!(expiry
        .postings
        .iter()
        .any(|p| p.ledger_account == chart::EXPIRED_CREDIT));
    // Ticking again books nothing more.
    let before = out.len();
    ledger.tick(0, at("2027-02-01T00:00:00Z"), &mut out);
    assert_eq!(out.len(), before);
    check_double_entry(&out);
}

#[test]
fn debt_is_recorded_and_settled_first_by_the_next_purchase() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_d", "5", "p1", "2026-01-01T00:00:00Z"),
        &mut out,
    );
    // $6.10 of usage against $5.00 of credit.
    ledger.apply_usage(
        0,
        &usage(
            "acct_d",
            2_000_000,
            0,
            CredentialSource::Operator,
            "2026-01-02T00:00:00Z",
        ),
        &mut out,
    );
    let state = &ledger.accounts[&AccountId::from("acct_d")];
    assert_eq!(state.debt.to_string(), "1.1");
    assert_eq!(balance(&ledger, "acct_d"), "-1.1");
    ledger.apply_purchase(
        0,
        &purchase("acct_d", "5", "p2", "2026-01-03T00:00:00Z"),
        &mut out,
    );
    let state = &ledger.accounts[&AccountId::from("acct_d")];
    assert_eq!(state.debt.to_string(), "0");
    assert_eq!(state.lots[1].remaining.to_string(), "3.9");
    assert_eq!(balance(&ledger, "acct_d"), "3.9");
    let settle = out.last().unwrap();
    assert_eq!(settle.allocations[0].lot_id, None, "debt settled first");
    assert_eq!(settle.allocations[0].amount.to_string(), "1.1");
    check_double_entry(&out);
}

#[test]
fn bring_your_own_key_pays_only_the_processing_fee() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_b", "5", "p1", "2026-01-01T00:00:00Z"),
        &mut out,
    );
    ledger.apply_usage(
        0,
        &usage(
            "acct_b",
            1_000,
            234,
            CredentialSource::Byok,
            "2026-01-02T00:00:00Z",
        ),
        &mut out,
    );
    let entry = out.last().unwrap();
    assert_eq!(entry.fee.to_string(), "0.0000617");
    assert_eq!(entry.upstream.to_string(), "0");
    assert_eq!(balance(&ledger, "acct_b"), "4.9999383");
    ledger.apply_usage(
        0,
        &usage(
            "acct_b",
            1_000,
            234,
            CredentialSource::Operator,
            "2026-01-02T00:00:01Z",
        ),
        &mut out,
    );
    // + 1000×3/M + 234×15/M = 0.003 + 0.00351
    assert_eq!(out.last().unwrap().upstream.to_string(), "0.00651");
    assert_eq!(balance(&ledger, "acct_b"), "4.9933666");
    // A request with no tokens costs nothing and books nothing.
    let before = out.len();
    ledger.apply_usage(
        0,
        &usage(
            "acct_b",
            0,
            0,
            CredentialSource::Operator,
            "2026-01-02T00:00:02Z",
        ),
        &mut out,
    );
    assert_eq!(out.len(), before);
    check_double_entry(&out);
}

#[test]
fn a_price_plan_sets_the_fee_and_books_its_markup_or_discount_as_its_own_revenue() {
    let plan = |fee: &str, multiplier: &str| AppliedPlan {
        plan_id: "plan_resale".into(),
        fee_per_mtok: usd(fee),
        upstream_multiplier: multiplier.parse().unwrap(),
    };
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_p", "5", "p1", "2026-01-01T00:00:00Z"),
        &mut out,
    );
    // 1000×3/M + 234×15/M = 0.00651 at cost; × 1.5 = 0.009765 billed.
    let mut marked_up = usage(
        "acct_p",
        1_000,
        234,
        CredentialSource::Operator,
        "2026-01-02T00:00:00Z",
    );
    marked_up.plan = Some(plan("0.10", "1.5"));
    ledger.apply_usage(0, &marked_up, &mut out);
    let entry = out.last().unwrap();
    // 1,234 tokens × $0.10/M
    assert_eq!(entry.fee.to_string(), "0.0001234");
    assert_eq!(entry.upstream.to_string(), "0.009765");
    assert_eq!(entry.amount.to_string(), "-0.0098884");
    let posted = |account: &str| {
        entry
            .postings
            .iter()
            .find(|p| p.ledger_account == account)
            .map(|p| p.amount.to_string())
    };
    assert_eq!(posted(chart::FEE_REVENUE).as_deref(), Some("-0.0001234"));
    assert_eq!(posted(chart::UPSTREAM_COST).as_deref(), Some("-0.00651"));
    assert_eq!(posted(chart::UPSTREAM_MARKUP).as_deref(), Some("-0.003255"));
    assert_eq!(balance(&ledger, "acct_p"), "4.9901116");

    // A discount: the markup account is debited.
    let mut discounted = usage(
        "acct_p",
        1_000,
        234,
        CredentialSource::Operator,
        "2026-01-02T00:00:01Z",
    );
    discounted.plan = Some(plan("0", "0.8"));
    ledger.apply_usage(0, &discounted, &mut out);
    let entry = out.last().unwrap();
    assert_eq!(entry.fee.to_string(), "0");
    assert_eq!(entry.upstream.to_string(), "0.005208");
    let markup = entry
        .postings
        .iter()
        .find(|p| p.ledger_account == chart::UPSTREAM_MARKUP)
        .unwrap();
    assert_eq!(markup.amount.to_string(), "0.001302");

    // Bring your own key on the same plan: the plan's fee, no upstream.
    let mut byok = usage(
        "acct_p",
        1_000,
        234,
        CredentialSource::Byok,
        "2026-01-02T00:00:02Z",
    );
    byok.plan = Some(plan("0.10", "1.5"));
    ledger.apply_usage(0, &byok, &mut out);
    let entry = out.last().unwrap();
    assert_eq!(entry.upstream.to_string(), "0");
    assert_eq!(entry.postings.len(), 2, "customer and fee only: {entry:?}");
    check_double_entry(&out);
}

#[test]
fn adjustments_are_new_entries_and_an_impossible_refund_is_rejected_visibly() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_j", "10", "p1", "2026-01-01T00:00:00Z"),
        &mut out,
    );
    ledger.apply_adjustment(
        0,
        &adjustment(
            "acct_j",
            AdjustmentKind::GoodwillCredit,
            "2.5",
            "g1",
            "2026-01-02T00:00:00Z",
        ),
        &mut out,
    );
    ledger.apply_adjustment(
        0,
        &adjustment(
            "acct_j",
            AdjustmentKind::ManualDebit,
            "1.25",
            "m1",
            "2026-01-03T00:00:00Z",
        ),
        &mut out,
    );
    ledger.apply_adjustment(
        0,
        &adjustment(
            "acct_j",
            AdjustmentKind::Refund,
            "4",
            "r1",
            "2026-01-04T00:00:00Z",
        ),
        &mut out,
    );
    assert_eq!(balance(&ledger, "acct_j"), "7.25");
    ledger.apply_adjustment(
        0,
        &adjustment(
            "acct_j",
            AdjustmentKind::Refund,
            "100",
            "r2",
            "2026-01-05T00:00:00Z",
        ),
        &mut out,
    );
    let rejected = out.last().unwrap();
    assert_eq!(rejected.kind, EntryKind::AdjustmentRejected);
    assert!(rejected.postings.is_empty());
    assert!(rejected.memo.as_deref().unwrap_or("").contains("rejected"));
    assert_eq!(balance(&ledger, "acct_j"), "7.25");
    let kinds: Vec<EntryKind> = out.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EntryKind::Purchase,
            EntryKind::GoodwillCredit,
            EntryKind::ManualDebit,
            EntryKind::Refund,
            EntryKind::AdjustmentRejected
        ]
    );
    check_double_entry(&out);
}

#[test]
fn priced_built_in_tool_calls_are_debited_per_call_on_the_operators_credentials() {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    ledger.apply_purchase(
        0,
        &purchase("acct_t", "5", "t1", "2026-01-01T00:00:00Z"),
        &mut out,
    );
    let searches = || {
        vec![tollgate_core::ToolCallCharge {
            tool: "web_search".into(),
            calls: 2,
            price: usd("0.01"),
        }]
    };
    // 1000×3/M + 234×15/M = 0.00651, plus 2 calls × $0.01.
    let mut operator = usage(
        "acct_t",
        1_000,
        234,
        CredentialSource::Operator,
        "2026-01-02T00:00:00Z",
    );
    operator.tool_calls = searches();
    ledger.apply_usage(0, &operator, &mut out);
    let entry = out.last().unwrap();
    assert_eq!(entry.fee.to_string(), "0.0000617");
    assert_eq!(entry.upstream.to_string(), "0.02651");
    assert_eq!(balance(&ledger, "acct_t"), "4.9734283");
    // On the caller's own key the provider bills the calls: only the fee.
    let mut byok = usage(
        "acct_t",
        1_000,
        234,
        CredentialSource::Byok,
        "2026-01-02T00:00:01Z",
    );
    byok.tool_calls = searches();
    ledger.apply_usage(0, &byok, &mut out);
    assert_eq!(out.last().unwrap().upstream.to_string(), "0");
    assert_eq!(balance(&ledger, "acct_t"), "4.9733666");
}
