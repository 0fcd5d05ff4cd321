//! Reading account-events records for the ledger in one pass over the JSON,
//! and of a usage event only the fields billing needs; the others are
//! skipped unparsed. Decoding whole usage events through the generic
//! `Envelope` (which scans `data` once as raw JSON, then parses it) was the
//! largest part of the ledger's per-event cost.
//!
//! A record is unreadable here exactly when its envelope is, or when the
//! fields the ledger reads are missing or malformed; fields it does not read
//! are not validated. `tollgate audit` decodes the full `Envelope`, so a
//! usage record that only the ledger could read would show up there.

use crate::LedgerError;
use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use tollgate_core::billing::{Adjustment, Purchase, Tick};
use tollgate_core::check_envelope_version;
use tollgate_core::pricing::AppliedPlan;
use tollgate_core::{
    AccessKeyId, AccountId, CredentialSource, EventId, Prices, TokenCounts, ToolCallCharge,
    UsageEvent,
};

/// What one account-events record asks of the ledger.
// Usage is the common case and inputs are decoded and applied one at a
// time: boxing it would allocate once per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum LedgerInput {
    Usage(UsageCharge),
    Purchase(Purchase),
    Adjustment(Adjustment),
    Tick(Tick),
    /// Any other kind (control, balance, unknown): nothing to apply.
    Other,
    /// Written by a newer build (envelope version above ours): the ledger
    /// stops here rather than bill it without the fields it does not know.
    Unsupported(tollgate_core::UnsupportedVersion),
}

/// The fields of a usage event that billing reads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct UsageCharge {
    pub event_id: EventId,
    /// When the usage started: the day its spend counts in (budgets).
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub account_id: AccountId,
    /// The key that made the request: its budgets count the debit too.
    pub access_key_id: AccessKeyId,
    pub credential_source: Option<CredentialSource>,
    pub tokens: TokenCounts,
    pub prices: Prices,
    /// Built-in tool calls billed per call (none on older events).
    #[serde(default)]
    pub tool_calls: Vec<ToolCallCharge>,
    /// The price plan the event was billed on (None: default terms).
    #[serde(default)]
    pub plan: Option<AppliedPlan>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub instance_seq: Option<u64>,
}

impl From<&UsageEvent> for UsageCharge {
    fn from(event: &UsageEvent) -> UsageCharge {
        UsageCharge {
            event_id: event.event_id,
            started_at: event.started_at,
            finished_at: event.finished_at,
            account_id: event.account_id.clone(),
            access_key_id: event.access_key_id.clone(),
            credential_source: event.credential_source,
            tokens: event.tokens,
            prices: event.prices,
            tool_calls: event.tool_calls.clone(),
            plan: event.plan.clone(),
            instance_id: event.instance_id.clone(),
            instance_seq: event.instance_seq,
        }
    }
}

impl LedgerInput {
    /// Decode one record's payload (`{"v":2,"type":…,"data":{…}}`).
    pub fn decode(payload: &[u8]) -> Result<LedgerInput, LedgerError> {
        // UTF-8 checked once for the whole payload: reading from a `str`,
        // serde_json does not check each string again.
        let text = std::str::from_utf8(payload)
            .map_err(|e| LedgerError::Corrupt(format!("unreadable record: {e}")))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let input = de
            .deserialize_map(EnvelopeVisitor)
            .and_then(|input| de.end().map(|()| input))
            .map_err(|e| LedgerError::Corrupt(format!("unreadable record: {e}")))?;
        Ok(input)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    V,
    Type,
    Data,
    #[serde(other)]
    Other,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Usage,
    Purchase,
    Adjustment,
    Tick,
    #[serde(other)]
    Other,
}

fn parse_data<E: de::Error>(kind: Kind, data: &str) -> Result<LedgerInput, E> {
    fn parse<T: serde::de::DeserializeOwned, E: de::Error>(data: &str) -> Result<T, E> {
        serde_json::from_str(data).map_err(E::custom)
    }
    Ok(match kind {
        Kind::Usage => LedgerInput::Usage(parse(data)?),
        Kind::Purchase => LedgerInput::Purchase(parse(data)?),
        Kind::Adjustment => LedgerInput::Adjustment(parse(data)?),
        Kind::Tick => LedgerInput::Tick(parse(data)?),
        Kind::Other => LedgerInput::Other,
    })
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = LedgerInput;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LedgerInput, A::Error> {
        let mut version: Option<u16> = None;
        let mut kind: Option<Kind> = None;
        // `data` parsed as soon as it arrives when `type` came first (as
        // every writer orders them); otherwise kept raw until the end.
        let mut parsed: Option<LedgerInput> = None;
        let mut raw: Option<Box<serde_json::value::RawValue>> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::V => {
                    if version.is_some() {
                        return Err(de::Error::duplicate_field("v"));
                    }
                    version = Some(map.next_value()?);
                }
                Field::Type => {
                    if kind.is_some() {
                        return Err(de::Error::duplicate_field("type"));
                    }
                    kind = Some(map.next_value()?);
                }
                Field::Data => {
                    if parsed.is_some() || raw.is_some() {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    // A newer version's data may not parse as our types.
                    let newer = version.is_some_and(|v| check_envelope_version(v).is_err());
                    let kind = if newer { Some(Kind::Other) } else { kind };
                    parsed = Some(match kind {
                        Some(Kind::Usage) => LedgerInput::Usage(map.next_value()?),
                        Some(Kind::Purchase) => LedgerInput::Purchase(map.next_value()?),
                        Some(Kind::Adjustment) => LedgerInput::Adjustment(map.next_value()?),
                        Some(Kind::Tick) => LedgerInput::Tick(map.next_value()?),
                        Some(Kind::Other) => {
                            map.next_value::<IgnoredAny>()?;
                            LedgerInput::Other
                        }
                        None => {
                            raw = Some(map.next_value()?);
                            continue;
                        }
                    });
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let version = version.ok_or_else(|| de::Error::missing_field("v"))?;
        if let Err(newer) = check_envelope_version(version) {
            return Ok(LedgerInput::Unsupported(newer));
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        match (parsed, raw) {
            (Some(input), _) => Ok(input),
            (None, Some(raw)) => parse_data(kind, raw.get()),
            // No data: only a kind the ledger ignores reads as something.
            (None, None) => parse_data(kind, "null"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tollgate_core::{Envelope, EventBody};

    const USAGE: &str = r#"{"event_id":"0190a5b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b","started_at":"2026-03-01T10:00:00Z","finished_at":"2026-03-01T10:00:02.5Z","account_id":"acct_a","access_key_id":"ak_a","client_api":"openai","provider":"openai","model_requested":"gpt-4o","model_served":"gpt-4o","credential_source":"operator","provider_key_id":null,"streamed":true,"tokens":{"input":1200,"cached_input":300,"cache_write_5m":0,"cache_write_1h":0,"output":450},"tokens_estimated":false,"prices":{"input":"2.5","cached_input":"1.25","cache_write_5m":"0","cache_write_1h":"0","output":"10"},"upstream_request_id":"req_1","latency_us":1000,"ttft_us":null,"upstream_latency_us":null,"status":200,"error_kind":null,"attempts":1,"client_disconnected":false,"instance_id":"gw_1","instance_seq":7}"#;

    fn full(payload: &str) -> Option<EventBody> {
        serde_json::from_str::<Envelope>(payload)
            .ok()
            .map(|e| e.body)
    }

    #[test]
    fn usage_reads_what_the_full_envelope_reads() {
        let with_tool_calls = USAGE.replace(
            r#""upstream_request_id""#,
            r#""tool_calls":[{"tool":"web_search","calls":2,"price":"0.01"}],"upstream_request_id""#,
        );
        for payload in [
            format!(r#"{{"v":1,"type":"usage","data":{with_tool_calls}}}"#),
            format!(r#"{{"v":1,"type":"usage","data":{USAGE}}}"#),
            // `data` before `type`: parsed after the loop.
            format!(r#"{{"data":{USAGE},"type":"usage","v":1}}"#),
        ] {
            let Some(EventBody::Usage(event)) = full(&payload) else {
                panic!("the full envelope reads it")
            };
            let LedgerInput::Usage(charge) = LedgerInput::decode(payload.as_bytes()).unwrap()
            else {
                panic!("a usage input")
            };
            assert_eq!(charge, UsageCharge::from(event.as_ref()));
        }
    }

    #[test]
    fn other_kinds_and_ledger_kinds_decode_like_the_envelope() {
        let tick = r#"{"v":1,"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}}"#;
        assert!(matches!(
            LedgerInput::decode(tick.as_bytes()).unwrap(),
            LedgerInput::Tick(_)
        ));
        let purchase = r#"{"v":1,"type":"purchase","data":{"purchase_id":"pur_1","account_id":"acct_a","amount":"5.00","idempotency_key":"k","purchased_at":"2026-01-01T00:00:00Z"}}"#;
        let Some(EventBody::Purchase(expected)) = full(purchase) else {
            panic!("the full envelope reads the purchase")
        };
        assert_eq!(
            LedgerInput::decode(purchase.as_bytes()).unwrap(),
            LedgerInput::Purchase(expected)
        );
        for ignored in [
            r#"{"v":1,"type":"from_the_future","data":{"x":1}}"#,
            r#"{"v":1,"type":"from_the_future"}"#,
            r#"{"v":1,"type":"balance","data":{"anything":[1,2]}}"#,
        ] {
            assert_eq!(
                LedgerInput::decode(ignored.as_bytes()).unwrap(),
                LedgerInput::Other
            );
        }
    }

    #[test]
    fn a_newer_envelope_version_is_refused_whatever_its_data() {
        for newer in [
            format!(r#"{{"v":3,"type":"usage","data":{USAGE}}}"#),
            r#"{"v":3,"type":"usage","data":{"tokens":"a shape we do not know"}}"#.to_owned(),
            r#"{"v":9,"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}}"#.to_owned(),
        ] {
            let LedgerInput::Unsupported(refused) = LedgerInput::decode(newer.as_bytes()).unwrap()
            else {
                panic!("refused: {newer}")
            };
            assert!(refused.found >= 3);
        }
        // Both versions this build writes or wrote read in full.
        for v in [1, 2] {
            let payload = format!(r#"{{"v":{v},"type":"usage","data":{USAGE}}}"#);
            assert!(matches!(
                LedgerInput::decode(payload.as_bytes()).unwrap(),
                LedgerInput::Usage(_)
            ));
        }
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        for bad in [
            "",
            "not json",
            "[1,2]",
            r#"{"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}}"#,
            r#"{"v":1,"data":{"at":"2026-01-01T00:00:00Z"}}"#,
            r#"{"v":1,"type":"tick"}"#,
            r#"{"v":1,"type":"usage","data":{"event_id":"nope"}}"#,
            r#"{"v":1,"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}} trailing"#,
            r#"{"v":1,"v":1,"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}}"#,
        ] {
            assert!(LedgerInput::decode(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                !matches!(
                    full(bad),
                    Some(EventBody::Usage(_) | EventBody::Tick(_) | EventBody::Purchase(_))
                ),
                "the full envelope rejects {bad} too"
            );
        }
    }
}
