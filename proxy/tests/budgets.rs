//! Budget enforcement (issue #19): a refusing budget on the key or the
//! account is admitted against like the balance — published spend in the
//! budget's current period, plus this instance's reservations in flight and
//! finished costs the ledger has not published yet — and refuses with 402
//! `budget_exceeded` in the shape of the client's API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::{DateTime, Duration as Days, Utc};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::budget::{Budget, BudgetId, BudgetPeriod, BudgetSpend};
use tollgate_core::control::{ControlChange, ControlObject};
use tollgate_core::{AccessKeyId, Envelope, Usd};
use tollgate_eventlog::{topics, EventLog, LogRecord};
use tollgate_mock_upstream::Rule;

/// Enforcement on, with a balance that never refuses: only budgets do.
async fn start_enforcing() -> TestGateway {
    let gw = start_with(|c| c.billing.enforce = true).await;
    gw.gateway.admission.apply(&published(&gw, &[], None));
    gw
}

fn budget(gw: &TestGateway, id: &str, key: Option<&AccessKeyId>, amount: &str) -> Budget {
    let created = "2026-01-01T00:00:00Z".parse().unwrap();
    Budget {
        id: BudgetId(id.into()),
        account_id: gw.account_id.clone(),
        access_key_id: key.cloned(),
        name: format!("{id} name"),
        amount: usd(amount),
        period: BudgetPeriod::Day,
        soft_threshold_percent: 80,
        refuse: true,
        created_at: created,
        updated_at: created,
    }
}

/// Upsert the budget through the control topic, as the admin API does,
/// and wait until this gateway's control plane has it.
async fn upsert(gw: &TestGateway, budget: &Budget) {
    let change = ControlChange::Upsert {
        object: ControlObject::Budget(budget.clone()),
    };
    let record = LogRecord {
        topic: topics::CONTROL.to_owned(),
        key: budget.id.to_string(),
        payload: serde_json::to_vec(&Envelope::control(change)).unwrap(),
    };
    gw.events.append(record).await.unwrap();
    gw.events.flush().await.unwrap();
    gw.control.catch_up().await.unwrap();
    assert!(gw
        .control
        .snapshot()
        .budgets_of(&gw.account_id)
        .contains(budget));
}

/// Today's window of a day budget (by this machine's clock, as the gateway's).
fn today() -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    (start, start + Days::days(1))
}

fn spend(id: &str, period_start: DateTime<Utc>, spent: &str) -> BudgetSpend {
    BudgetSpend {
        budget_id: BudgetId(id.into()),
        period_start,
        resets_at: Some(period_start + Days::days(1)),
        spent: usd(spent),
    }
}

/// A balance update ($100) with these budget spends, covering this
/// instance's events up to `applied`.
fn published(gw: &TestGateway, spends: &[BudgetSpend], applied: Option<u64>) -> BalanceUpdate {
    BalanceUpdate {
        account_id: gw.account_id.clone(),
        balance: usd("100"),
        as_of: Utc::now(),
        applied: applied
            .map(|seq| (gw.gateway.instance_id.clone(), seq))
            .into_iter()
            .collect(),
        budgets: spends.to_vec(),
    }
}

async fn another_key(gw: &TestGateway) -> (AccessKeyId, String) {
    let (key, token) = gw
        .control
        .create_access_key(&gw.account_id, "other", None)
        .await
        .unwrap();
    (key.id, token)
}

/// Status 402, then the body.
async fn refused(response: reqwest::Response) -> Value {
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 402, "{body}");
    body
}

/// Wait until this instance holds a finished cost against the key's budgets.
async fn until_unconfirmed(gw: &TestGateway, key: &AccessKeyId) -> Usd {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = gw.gateway.admission.budget_held(&gw.account_id, Some(key));
        if let Some(held) = held.filter(|h| h.unconfirmed > Usd::ZERO) {
            return held.unconfirmed;
        }
        assert!(Instant::now() < deadline, "the event is emitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_key_budget_refuses_402_budget_exceeded_in_each_apis_shape() {
    let gw = start_enforcing().await;
    let daily = budget(&gw, "bud_daily", Some(&gw.key_id), "1.00");
    upsert(&gw, &daily).await;
    let (start, resets) = today();
    gw.gateway.admission.apply(&published(
        &gw,
        &[spend("bud_daily", start, "0.99995")],
        None,
    ));
    // 0.00005 left: admitted; it costs 0.0000528 (gpt-4o, 1 + 5 tokens),
    // held once it ends…
    assert_eq!(gw.post_openai(chat("gpt-4o", "hi")).await.status(), 200);
    let held = until_unconfirmed(&gw, &gw.key_id).await;
    assert_eq!(held, usd("0.0000528"));
    // …so nothing is left: the next is refused, naming the budget.
    let resets = resets.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let message = format!(
        "budget exceeded: budget `bud_daily name` (bud_daily) on access key {} allows $1 per day; \
         $1.0000028 is spent in this period (as the ledger recorded it, plus this gateway's \
         requests in flight or not yet recorded); resets: {resets}",
        gw.key_id
    );
    let body = refused(gw.post_openai(chat("gpt-4o", "hi")).await).await;
    let openai = json!({"error": {
        "message": message,
        "type": "budget_exceeded",
        "code": "budget_exceeded",
        "param": null,
        "budget_id": "bud_daily",
        "scope": "key",
        "amount": "1",
        "period": "day",
        "spent": "1.0000028",
        "resets_at": resets,
    }});
    assert_eq!(body, openai);
    // Embeddings and Responses answer in the same shape.
    let embeddings = json!({"model": "text-embedding-3-small", "input": "hi"});
    let body = refused(gw.post_json("/v1/embeddings", &embeddings).await).await;
    assert_eq!(body, openai);
    let responses = json!({"model": "gpt-4o", "input": "hi"});
    let body = refused(gw.post_json("/v1/responses", &responses).await).await;
    assert_eq!(body, openai);
    let body = refused(gw.post_anthropic(messages("claude-haiku-4-5", "hi")).await).await;
    assert_eq!(
        body,
        json!({"type": "error", "error": {
            "type": "billing_error",
            "message": message,
            "budget_id": "bud_daily",
            "scope": "key",
            "amount": "1",
            "period": "day",
            "spent": "1.0000028",
            "resets_at": resets,
        }})
    );
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_sum(&metrics, "tollgate_proxy_budget_refusals_total", &[]),
        4.0
    );

    // Another key of the account has no budget: admitted.
    let (_, other) = another_key(&gw).await;
    let response = post_openai_to(&gw.url(""), &other, &chat("gpt-4o", "hi")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_cost_counts_until_an_update_covers_its_sequence() {
    let gw = start_enforcing().await;
    upsert(&gw, &budget(&gw, "bud_daily", Some(&gw.key_id), "1.00")).await;
    let (start, _) = today();
    let at_published = |applied| published(&gw, &[spend("bud_daily", start, "0.99995")], applied);
    gw.gateway.admission.apply(&at_published(None));
    assert_eq!(gw.post_openai(chat("gpt-4o", "hi")).await.status(), 200);
    until_unconfirmed(&gw, &gw.key_id).await;
    let seq = gw.wait_for_events(1).await[0].instance_seq.unwrap();
    // An update that has not applied it keeps it counted…
    if seq > 0 {
        gw.gateway.admission.apply(&at_published(Some(seq - 1)));
    }
    refused(gw.post_openai(chat("gpt-4o", "hi")).await).await;
    // …one that has releases it (the ledger's spend would include it; this
    // one pretends it did not, to show the cost is no longer held here).
    gw.gateway.admission.apply(&at_published(Some(seq)));
    assert_eq!(gw.post_openai(chat("gpt-4o", "hi")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_budget_refuses_every_key_and_an_alerting_one_none() {
    let gw = start_enforcing().await;
    let (other_id, other) = another_key(&gw).await;
    let mut account = budget(&gw, "bud_account", None, "5");
    account.refuse = false;
    upsert(&gw, &account).await;
    let (start, resets) = today();
    gw.gateway
        .admission
        .apply(&published(&gw, &[spend("bud_account", start, "7")], None));
    // Alerts only: past its amount, still admitted.
    assert_eq!(gw.post_openai(chat("gpt-4o", "hi")).await.status(), 200);
    account.refuse = true;
    upsert(&gw, &account).await;
    for token in [&gw.token, &other] {
        let body = refused(post_openai_to(&gw.url(""), token, &chat("gpt-4o", "hi")).await).await;
        let error = &body["error"];
        assert_eq!(error["scope"], "account", "{body}");
        assert_eq!(error["budget_id"], "bud_account", "{body}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "budget `bud_account name` (bud_account) on account {} allows $5 per day",
                gw.account_id
            )),
            "{message}"
        );
    }
    // A key budget with room does not lift the account's refusal.
    upsert(&gw, &budget(&gw, "bud_other", Some(&other_id), "1000")).await;
    let body = refused(post_openai_to(&gw.url(""), &other, &chat("gpt-4o", "hi")).await).await;
    assert_eq!(body["error"]["budget_id"], "bud_account");
    // The reset time is the window's end.
    let resets = resets.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(body["error"]["resets_at"], resets.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_of_a_period_the_clock_has_passed_counts_as_zero() {
    let gw = start_enforcing().await;
    upsert(&gw, &budget(&gw, "bud_daily", Some(&gw.key_id), "1.00")).await;
    let (start, _) = today();
    gw.gateway
        .admission
        .apply(&published(&gw, &[spend("bud_daily", start, "1.00")], None));
    refused(gw.post_openai(chat("gpt-4o", "hi")).await).await;
    // Yesterday's period (an update from before the boundary): its reset
    // is behind the clock, so its spend is not today's.
    let yesterday = start - Days::days(1);
    gw.gateway.admission.apply(&published(
        &gw,
        &[spend("bud_daily", yesterday, "1.00")],
        None,
    ));
    assert_eq!(gw.post_openai(chat("gpt-4o", "hi")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_hold_the_budget_until_they_end() {
    let gw = start_enforcing().await;
    upsert(&gw, &budget(&gw, "bud_daily", Some(&gw.key_id), "1.00")).await;
    let (start, _) = today();
    gw.gateway
        .admission
        .apply(&published(&gw, &[spend("bud_daily", start, "0.99")], None));
    gw.mock
        .add_rule(Rule::for_model("gpt-4o").delay(Duration::from_millis(1_500)));
    // Each slow stream's maximum (16,384 output tokens of gpt-4o, $0.16)
    // is capped at half of the 0.01 left: two fit, the third does not.
    let slow = || {
        let gw = &gw;
        async move { gw.post_openai(chat_stream("gpt-4o", "hi")).await }
    };
    let (first, second, third) = tokio::join!(slow(), slow(), async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.mock.request_count() < 2 {
            assert!(Instant::now() < deadline, "both streams reach the upstream");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gw.post_openai(chat("gpt-4o-mini", "hi")).await
    });
    let body = refused(third).await;
    assert_eq!(body["error"]["spent"], "1", "{body}");
    for response in [first, second] {
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    // Ended: each holds its actual cost only, far below its maximum.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .gateway
        .admission
        .budget_held(&gw.account_id, Some(&gw.key_id))
        .is_some_and(|held| held.reserved > Usd::ZERO)
    {
        assert!(Instant::now() < deadline, "the streams' reservations end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.post_openai(chat("gpt-4o-mini", "hi")).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enforcement_off_budgets_are_not_enforced() {
    let gw = start().await;
    assert!(!gw.gateway.admission.enforce);
    upsert(&gw, &budget(&gw, "bud_daily", Some(&gw.key_id), "0")).await;
    assert_eq!(gw.post_openai(chat("gpt-4o", "hi")).await.status(), 200);
}
