//! The versioned event envelope and the usage event schema.
//!
//! Compatibility rule: fields are only ever added (with defaults), never
//! renamed, removed or re-typed; `v` is bumped when a reader must know.
//! Usage events are metadata only: no prompt or completion text, ever.

use crate::catalog::{ApiSurface, Prices};
use crate::ids::{AccessKeyId, AccountId, EventId, ProviderKeyId};
use crate::tokens::TokenCounts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const ENVELOPE_VERSION: u16 = 1;

/// What travels on the event log: `{"v":1,"type":"usage","data":{…}}`.
/// Readers skip kinds they do not know (`EventBody::Unknown`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Envelope {
    pub v: u16,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    Usage(Box<UsageEvent>),
    Control(crate::control::ControlChange),
    Purchase(crate::billing::Purchase),
    Adjustment(crate::billing::Adjustment),
    Tick(crate::billing::Tick),
    Balance(crate::billing::BalanceUpdate),
    /// A kind this reader does not know (written by a newer version): skipped.
    Unknown,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Raw {
            v: u16,
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            data: Option<Box<serde_json::value::RawValue>>,
        }
        fn parse<T: serde::de::DeserializeOwned, E: Error>(data: &str) -> Result<T, E> {
            serde_json::from_str(data).map_err(E::custom)
        }
        let raw = Raw::deserialize(deserializer)?;
        let data = raw.data.as_deref().map_or("null", |d| d.get());
        let body = match raw.kind.as_str() {
            "usage" => EventBody::Usage(parse(data)?),
            "control" => EventBody::Control(parse(data)?),
            "purchase" => EventBody::Purchase(parse(data)?),
            "adjustment" => EventBody::Adjustment(parse(data)?),
            "tick" => EventBody::Tick(parse(data)?),
            "balance" => EventBody::Balance(parse(data)?),
            _ => EventBody::Unknown,
        };
        Ok(Envelope { v: raw.v, body })
    }
}

impl Envelope {
    pub fn usage(event: UsageEvent) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            body: EventBody::Usage(Box::new(event)),
        }
    }

    pub fn control(change: crate::control::ControlChange) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            body: EventBody::Control(change),
        }
    }

    pub fn new(body: EventBody) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            body,
        }
    }
}

/// Whose credentials answered upstream; decides what is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// The operator's credentials: upstream cost is billed through credits.
    Operator,
    /// The customer's own provider key: only the processing fee is billed.
    Byok,
}

impl CredentialSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Operator => "operator",
            CredentialSource::Byok => "byok",
        }
    }
}

/// One request through the gateway, success or failure. Metadata only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub event_id: EventId,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub account_id: AccountId,
    pub access_key_id: AccessKeyId,
    /// The API the client spoke.
    pub client_api: ApiSurface,
    /// Provider that answered (or was last tried); None if none was tried.
    pub provider: Option<String>,
    pub model_requested: String,
    /// The upstream model id that answered (or was last tried).
    pub model_served: Option<String>,
    pub credential_source: Option<CredentialSource>,
    pub provider_key_id: Option<ProviderKeyId>,
    pub streamed: bool,
    pub tokens: TokenCounts,
    /// True when any count was estimated locally rather than reported upstream.
    pub tokens_estimated: bool,
    /// Unit prices copied from the catalog at request time.
    pub prices: Prices,
    pub upstream_request_id: Option<String>,
    pub latency_us: u64,
    /// Time until the first response byte was sent to the client.
    pub ttft_us: Option<u64>,
    /// Time spent waiting on upstreams (all attempts) until response headers.
    pub upstream_latency_us: Option<u64>,
    pub status: u16,
    /// Low-cardinality error kind, e.g. `upstream_timeout`, `model_unknown`.
    pub error_kind: Option<String>,
    pub attempts: u32,
    /// True when the client went away before the response completed.
    #[serde(default)]
    pub client_disconnected: bool,
    /// The gateway instance that metered the request, and its per-instance
    /// sequence number: balance updates report the highest applied, so the
    /// instance can release the request's credit reservation.
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub instance_seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unknown_event_kinds_are_skipped_not_errors() {
        let envelope: Envelope =
            serde_json::from_str(r#"{"v":1,"type":"from_the_future","data":{"x":1}}"#).unwrap();
        assert_eq!(envelope.body, EventBody::Unknown);
        let tick: Envelope =
            serde_json::from_str(r#"{"v":1,"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}}"#)
                .unwrap();
        assert!(matches!(tick.body, EventBody::Tick(_)));
    }
}
