//! Builders for ledger inputs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::str::FromStr;
use tollgate_core::billing::{Adjustment, AdjustmentKind, Purchase, Tick};
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, CredentialSource, Envelope, EventBody, EventId, Prices,
    TokenCounts, UsageEvent, Usd,
};

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn usd(text: &str) -> Usd {
    Usd(Decimal::from_str(text).unwrap())
}

pub fn purchase(account: &str, amount: &str, key: &str, when: &str) -> Purchase {
    Purchase {
        purchase_id: format!("pur_{account}_{key}"),
        account_id: AccountId::from(account),
        amount: usd(amount),
        idempotency_key: key.to_owned(),
        purchased_at: at(when),
    }
}

pub fn adjustment(
    account: &str,
    kind: AdjustmentKind,
    amount: &str,
    key: &str,
    when: &str,
) -> Adjustment {
    Adjustment {
        adjustment_id: format!("adj_{account}_{key}"),
        account_id: AccountId::from(account),
        kind,
        amount: usd(amount),
        reason: "test".into(),
        idempotency_key: key.to_owned(),
        at: at(when),
    }
}

/// A usage event: `input` uncached tokens at $3/M and `output` at $15/M.
pub fn usage(
    account: &str,
    input: u64,
    output: u64,
    source: CredentialSource,
    when: &str,
) -> UsageEvent {
    let t = at(when);
    UsageEvent {
        event_id: EventId::generate(),
        started_at: t,
        finished_at: t,
        account_id: AccountId::from(account),
        access_key_id: AccessKeyId::from("ak_test"),
        client_api: ApiSurface::Openai,
        endpoint: None,
        provider: Some("anthropic".into()),
        model_requested: "claude-sonnet-4-5".into(),
        model_served: Some("claude-sonnet-4-5".into()),
        credential_source: Some(source),
        provider_key_id: None,
        streamed: false,
        tokens: TokenCounts {
            input,
            output,
            ..TokenCounts::default()
        },
        tokens_estimated: false,
        prices: Prices {
            input: usd("3"),
            cached_input: usd("0.30"),
            cache_write_5m: usd("3.75"),
            cache_write_1h: usd("6"),
            output: usd("15"),
        },
        tool_calls: Vec::new(),
        end_user: None,
        tags: Default::default(),
        upstream_request_id: None,
        latency_us: 1000,
        ttft_us: None,
        upstream_latency_us: None,
        status: 200,
        error_kind: None,
        attempts: 1,
        client_disconnected: false,
        plan: None,
        instance_id: Some("gw_test".into()),
        instance_seq: Some(1),
    }
}

pub fn tick(when: &str) -> Tick {
    Tick { at: at(when) }
}

pub fn payload(body: EventBody) -> Vec<u8> {
    serde_json::to_vec(&Envelope::new(body)).unwrap()
}
