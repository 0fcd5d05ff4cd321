//! A usage event's envelope written as JSON by hand: byte for byte what
//! serde_json writes for `UsageEnvelope` (the tests hold the two together),
//! but without serde's byte-by-byte escaping of the ~40 member names and of
//! values that need no escaping. Every request pays for this once.

use crate::catalog::Prices;
use crate::event::{UsageEnvelope, UsageEvent, ENVELOPE_VERSION};
use crate::money::Usd;
use crate::tokens::TokenCounts;
use chrono::{DateTime, SecondsFormat, Utc};
use std::io::Write;

impl UsageEnvelope<'_> {
    /// Append the envelope's JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let e: &UsageEvent = self.0;
        out.extend_from_slice(b"{\"v\":");
        push_u64(out, u64::from(ENVELOPE_VERSION));
        out.extend_from_slice(b",\"type\":\"usage\",\"data\":{\"event_id\":\"");
        let mut uuid = uuid::Uuid::encode_buffer();
        out.extend_from_slice(e.event_id.0.hyphenated().encode_lower(&mut uuid).as_bytes());
        out.extend_from_slice(b"\",\"started_at\":");
        push_time(out, &e.started_at);
        out.extend_from_slice(b",\"finished_at\":");
        push_time(out, &e.finished_at);
        out.extend_from_slice(b",\"account_id\":");
        push_str(out, e.account_id.as_str());
        out.extend_from_slice(b",\"access_key_id\":");
        push_str(out, e.access_key_id.as_str());
        out.extend_from_slice(b",\"client_api\":");
        push_str(out, e.client_api.as_str());
        out.extend_from_slice(b",\"provider\":");
        push_opt_str(out, e.provider.as_deref());
        out.extend_from_slice(b",\"model_requested\":");
        push_str(out, &e.model_requested);
        out.extend_from_slice(b",\"model_served\":");
        push_opt_str(out, e.model_served.as_deref());
        out.extend_from_slice(b",\"credential_source\":");
        push_opt_str(out, e.credential_source.map(|c| c.as_str()));
        out.extend_from_slice(b",\"provider_key_id\":");
        push_opt_str(out, e.provider_key_id.as_ref().map(|k| k.as_str()));
        out.extend_from_slice(b",\"streamed\":");
        push_bool(out, e.streamed);
        out.extend_from_slice(b",\"tokens\":");
        push_tokens(out, &e.tokens);
        out.extend_from_slice(b",\"tokens_estimated\":");
        push_bool(out, e.tokens_estimated);
        out.extend_from_slice(b",\"prices\":");
        push_prices(out, &e.prices);
        out.extend_from_slice(b",\"upstream_request_id\":");
        push_opt_str(out, e.upstream_request_id.as_deref());
        out.extend_from_slice(b",\"latency_us\":");
        push_u64(out, e.latency_us);
        out.extend_from_slice(b",\"ttft_us\":");
        push_opt_u64(out, e.ttft_us);
        out.extend_from_slice(b",\"upstream_latency_us\":");
        push_opt_u64(out, e.upstream_latency_us);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(e.status));
        out.extend_from_slice(b",\"error_kind\":");
        push_opt_str(out, e.error_kind.as_deref());
        out.extend_from_slice(b",\"attempts\":");
        push_u64(out, u64::from(e.attempts));
        out.extend_from_slice(b",\"client_disconnected\":");
        push_bool(out, e.client_disconnected);
        if let Some(plan) = &e.plan {
            // Only accounts on a plan pay for serde's path here.
            out.extend_from_slice(b",\"plan\":");
            let _ = serde_json::to_writer(&mut *out, plan);
        }
        out.extend_from_slice(b",\"instance_id\":");
        push_opt_str(out, e.instance_id.as_deref());
        out.extend_from_slice(b",\"instance_seq\":");
        push_opt_u64(out, e.instance_seq);
        out.extend_from_slice(b"}}");
    }
}

/// A JSON string. Text with nothing to escape (serde_json escapes only
/// control characters, `"` and `\`) is copied as is; anything else goes
/// through serde_json, so the bytes are the same either way.
fn push_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

fn push_opt_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => push_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// As chrono's serde writes a UTC time: RFC 3339 with 0, 3, 6 or 9
/// fraction digits and `Z`.
fn push_time(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    out.push(b'"');
    out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
    out.push(b'"');
}

/// As `Usd` serializes: the normalized decimal, as a string.
fn push_usd(out: &mut Vec<u8>, amount: Usd) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "\"{}\"", amount.0.normalize());
}

/// The five token classes, as both `TokenCounts` and `Prices` name their
/// members, each with what precedes its value.
const CLASS_KEYS: [&[u8]; 5] = [
    b"{\"input\":",
    b",\"cached_input\":",
    b",\"cache_write_5m\":",
    b",\"cache_write_1h\":",
    b",\"output\":",
];

/// An object with one member per token class.
fn push_classes<T>(out: &mut Vec<u8>, values: [T; 5], push_value: fn(&mut Vec<u8>, T)) {
    for (key, value) in CLASS_KEYS.into_iter().zip(values) {
        out.extend_from_slice(key);
        push_value(out, value);
    }
    out.push(b'}');
}

fn push_tokens(out: &mut Vec<u8>, t: &TokenCounts) {
    let counts = [
        t.input,
        t.cached_input,
        t.cache_write_5m,
        t.cache_write_1h,
        t.output,
    ];
    push_classes(out, counts, push_u64);
}

fn push_prices(out: &mut Vec<u8>, p: &Prices) {
    let prices = [
        p.input,
        p.cached_input,
        p.cache_write_5m,
        p.cache_write_1h,
        p.output,
    ];
    push_classes(out, prices, push_usd);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::CredentialSource;
    use crate::ids::{AccessKeyId, AccountId, EventId, ProviderKeyId};
    use crate::ApiSurface;
    use chrono::TimeZone;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn usd(text: &str) -> Usd {
        Usd(Decimal::from_str(text).unwrap())
    }

    fn event() -> UsageEvent {
        UsageEvent {
            event_id: EventId::generate(),
            started_at: Utc.timestamp_opt(1_790_000_000, 783_829_496).unwrap(),
            finished_at: Utc.timestamp_opt(1_790_000_001, 0).unwrap(),
            account_id: AccountId::from("acct_a"),
            access_key_id: AccessKeyId::from("ak_a"),
            client_api: ApiSurface::Openai,
            provider: Some("openai".into()),
            model_requested: "gpt-4o-mini".into(),
            model_served: Some("gpt-4o-mini-2024-07-18".into()),
            credential_source: Some(CredentialSource::Operator),
            provider_key_id: Some(ProviderKeyId::from("pk_1")),
            streamed: true,
            tokens: TokenCounts {
                input: 5,
                cached_input: 7,
                cache_write_5m: 11,
                cache_write_1h: 13,
                output: u64::MAX,
            },
            tokens_estimated: false,
            prices: Prices {
                input: usd("0.15"),
                cached_input: usd("0.0750"),
                cache_write_5m: usd("0"),
                cache_write_1h: usd("3.000000000000000001"),
                output: usd("600"),
            },
            upstream_request_id: Some("req_1".into()),
            latency_us: 248,
            ttft_us: Some(12),
            upstream_latency_us: Some(245),
            status: 200,
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            plan: None,
            instance_id: Some("gw_1".into()),
            instance_seq: Some(8245),
        }
    }

    fn assert_same_as_serde(event: &UsageEvent) {
        let mut ours = Vec::new();
        UsageEnvelope(event).write_json(&mut ours);
        let serde = serde_json::to_vec(&UsageEnvelope(event)).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(serde).unwrap()
        );
    }

    #[test]
    fn written_exactly_as_serde_writes_it() {
        let full = event();
        assert_same_as_serde(&full);

        // Every optional member absent, and the other variants.
        let mut bare = event();
        bare.provider = None;
        bare.model_served = None;
        bare.credential_source = None;
        bare.provider_key_id = None;
        bare.upstream_request_id = None;
        bare.ttft_us = None;
        bare.upstream_latency_us = None;
        bare.error_kind = Some("upstream_timeout".into());
        bare.instance_id = None;
        bare.instance_seq = None;
        bare.client_api = ApiSurface::Anthropic;
        bare.streamed = false;
        bare.tokens_estimated = true;
        bare.client_disconnected = true;
        assert_same_as_serde(&bare);

        // On a price plan.
        let mut planned = event();
        planned.plan = Some(crate::pricing::AppliedPlan {
            plan_id: "plan_\"odd\"".into(),
            fee_per_mtok: usd("0.10"),
            upstream_multiplier: Decimal::from_str("1.250").unwrap(),
        });
        assert_same_as_serde(&planned);

        // Strings that need escaping, and some that only look as if.
        for text in [
            "quote \" inside",
            "back\\slash",
            "tab\tnew\nline\r",
            "\u{1}\u{1f}",
            "unit\u{1f}separator",
            "ünïcödé ✓ and \u{7f}",
            "/slash/ 'single'",
            "",
        ] {
            let mut odd = event();
            odd.model_requested = text.into();
            odd.upstream_request_id = Some(text.into());
            odd.account_id = AccountId::from(text);
            assert_same_as_serde(&odd);
        }

        // Fractions of a second written with 0, 3, 6 and 9 digits.
        for nanos in [0, 120_000_000, 120_450_000, 1, 999_999_999] {
            let mut timed = event();
            timed.started_at = Utc.timestamp_opt(1_790_000_000, nanos).unwrap();
            assert_same_as_serde(&timed);
        }

        // Prices at the edges of the decimal type.
        for price in [
            "0.000000000000000001",
            "79228162514264337593543950335",
            "-1.50",
        ] {
            let mut priced = event();
            priced.prices.output = usd(price);
            assert_same_as_serde(&priced);
        }
    }
}
