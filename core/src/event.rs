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

/// The envelope version this build writes and the newest it reads. 2: usage
/// events may carry the price plan they were billed on.
pub const ENVELOPE_VERSION: u16 = 2;

/// A record written by a newer Tollgate than this one. Billing readers (the
/// ledger, analytics, `tollgate audit`) stop at it rather than skip fields
/// they do not know: the remedy is to upgrade them (ledger, analytics, then
/// proxies; README, "Upgrading").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event envelope version {found} is newer than this build reads (up to {ENVELOPE_VERSION}); upgrade it (order: ledger, analytics, then proxies)")]
pub struct UnsupportedVersion {
    pub found: u16,
}

/// Whether this build can read envelope version `v` in full.
pub fn check_envelope_version(v: u16) -> Result<(), UnsupportedVersion> {
    if v > ENVELOPE_VERSION {
        Err(UnsupportedVersion { found: v })
    } else {
        Ok(())
    }
}

/// What travels on the event log: `{"v":2,"type":"usage","data":{…}}`.
/// Readers skip kinds they do not know (`EventBody::Unknown`); a version
/// newer than `ENVELOPE_VERSION` reads as `Unknown` too, its data unparsed,
/// and billing readers refuse it (`Envelope::check_version`).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub v: u16,
    /// Written as the envelope's `type` and `data` members.
    pub body: EventBody,
}

/// By hand rather than `#[serde(flatten)]`, which routes every member
/// through serde's generic map path: a usage event is serialized on the
/// request path, so that cost is paid per request. Same bytes either way.
impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        fn with_data<S: SerializeStruct, T: Serialize + ?Sized>(
            mut envelope: S,
            kind: &'static str,
            data: &T,
        ) -> Result<S::Ok, S::Error> {
            envelope.serialize_field("type", kind)?;
            envelope.serialize_field("data", data)?;
            envelope.end()
        }
        let members = if matches!(self.body, EventBody::Unknown) {
            2
        } else {
            3
        };
        let mut envelope = serializer.serialize_struct("Envelope", members)?;
        envelope.serialize_field("v", &self.v)?;
        match &self.body {
            EventBody::Usage(data) => with_data(envelope, "usage", data),
            EventBody::Control(data) => with_data(envelope, "control", data),
            EventBody::Purchase(data) => with_data(envelope, "purchase", data),
            EventBody::Adjustment(data) => with_data(envelope, "adjustment", data),
            EventBody::Tick(data) => with_data(envelope, "tick", data),
            EventBody::Balance(data) => with_data(envelope, "balance", data),
            EventBody::Alert(data) => with_data(envelope, "alert", data),
            EventBody::Unknown => {
                envelope.serialize_field("type", "unknown")?;
                envelope.end()
            }
        }
    }
}

/// A usage event's envelope, borrowed: written exactly as
/// `Envelope::usage(event)` would be, without moving the event into one.
pub struct UsageEnvelope<'a>(pub &'a UsageEvent);

impl Serialize for UsageEnvelope<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut envelope = serializer.serialize_struct("Envelope", 3)?;
        envelope.serialize_field("v", &ENVELOPE_VERSION)?;
        envelope.serialize_field("type", "usage")?;
        envelope.serialize_field("data", self.0)?;
        envelope.end()
    }
}

impl UsageEnvelope<'_> {
    /// Append the envelope's JSON to `out`: what the proxy writes to the
    /// log for every request.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }
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
    /// Raised by the ledger (topic `tollgate.alerts`).
    Alert(crate::budget::Alert),
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
        if check_envelope_version(raw.v).is_err() {
            // Its data may not parse as this build's types.
            return Ok(Envelope {
                v: raw.v,
                body: EventBody::Unknown,
            });
        }
        let data = raw.data.as_deref().map_or("null", |d| d.get());
        let body = match raw.kind.as_str() {
            "usage" => EventBody::Usage(parse(data)?),
            "control" => EventBody::Control(parse(data)?),
            "purchase" => EventBody::Purchase(parse(data)?),
            "adjustment" => EventBody::Adjustment(parse(data)?),
            "tick" => EventBody::Tick(parse(data)?),
            "balance" => EventBody::Balance(parse(data)?),
            "alert" => EventBody::Alert(parse(data)?),
            _ => EventBody::Unknown,
        };
        Ok(Envelope { v: raw.v, body })
    }
}

impl Envelope {
    /// Refuse an envelope written by a newer build (see `UnsupportedVersion`).
    pub fn check_version(&self) -> Result<(), UnsupportedVersion> {
        check_envelope_version(self.v)
    }

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

/// The gateway endpoint that served a request (recorded in usage events):
/// `chat` (`POST /v1/chat/completions`), `messages` (`POST /v1/messages`),
/// `responses` (`POST /v1/responses`), `embeddings` (`POST /v1/embeddings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Chat,
    Messages,
    Responses,
    Embeddings,
}

impl Endpoint {
    /// Every endpoint, in declaration order.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Chat,
        Endpoint::Messages,
        Endpoint::Responses,
        Endpoint::Embeddings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
        }
    }

    pub fn parse(text: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The endpoint an event written before events recorded one is taken
    /// to have: the chat endpoint of the API the client spoke (`openai` →
    /// `chat`, `anthropic` → `messages`). Embeddings requests of those
    /// releases (client API `openai`) therefore read as `chat`.
    pub fn backfilled(client_api: ApiSurface) -> Endpoint {
        match client_api {
            ApiSurface::Openai => Endpoint::Chat,
            ApiSurface::Anthropic => Endpoint::Messages,
        }
    }
}

/// The calls of one built-in tool a provider bills per call (web search,
/// file search…), at the operator's price per call, in a usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallCharge {
    /// The tool's price key, e.g. `web_search` (see the proxy's
    /// `builtin_tool_prices`).
    pub tool: String,
    pub calls: u64,
    /// USD per call.
    pub price: crate::money::Usd,
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
    /// The endpoint that served the request. Always written by this
    /// release; absent on events written before it (and then not written
    /// back), which read as `Endpoint::backfilled(client_api)` — use
    /// `served_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
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
    /// Built-in tool calls billed per call, at the prices in force then;
    /// absent when none (and on events written before they existed, which
    /// therefore replay to the same balances).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallCharge>,
    /// The end user the client says the request was made for (OpenAI's
    /// `safety_identifier`, else `user`; Anthropic's `metadata.user_id`), as
    /// the gateway's `[privacy] end_user` setting stores it: as declared, as
    /// a keyed hash, or not at all. A label the client declares, not an
    /// identity the gateway checked. Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    /// Labels from the request's `x-tollgate-tags` header over the access
    /// key configuration's default tags. Absent when none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
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
    /// The account's price plan when the request was made; absent when the
    /// account has none (the default terms), and on events written before
    /// plans existed, which therefore replay to the same balances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::pricing::AppliedPlan>,
    /// The gateway instance that metered the request, and its per-instance
    /// sequence number: balance updates report the highest applied, so the
    /// instance can release the request's credit reservation.
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub instance_seq: Option<u64>,
}

impl UsageEvent {
    /// The endpoint that served the request: the recorded one, else (an
    /// event written before endpoints were recorded) the one backfilled
    /// from `client_api`.
    pub fn served_endpoint(&self) -> Endpoint {
        self.endpoint
            .unwrap_or_else(|| Endpoint::backfilled(self.client_api))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// The hand-written `Serialize` writes exactly what the derived,
    /// flattened one wrote (records already on logs keep their meaning).
    #[test]
    fn envelopes_serialize_as_the_flattened_derive_did() {
        #[derive(Serialize)]
        struct Flattened<'a> {
            v: u16,
            #[serde(flatten)]
            body: &'a EventBody,
        }
        let bodies: Vec<EventBody> = vec![
            serde_json::from_str::<Envelope>(r#"{"v":1,"type":"tick","data":{"at":"2026-01-01T00:00:00Z"}}"#)
                .unwrap()
                .body,
            serde_json::from_str::<Envelope>(
                r#"{"v":1,"type":"usage","data":{"event_id":"01a21644-97c7-7350-b67a-809c3674713c","started_at":"2026-11-26T05:12:03.783829496Z","finished_at":"2026-11-26T05:12:03.784072216Z","account_id":"acct_a","access_key_id":"ak_a","client_api":"openai","provider":"openai","model_requested":"gpt-4o-mini","model_served":"gpt-4o-mini","credential_source":"operator","provider_key_id":null,"streamed":false,"tokens":{"input":5,"cached_input":0,"cache_write_5m":0,"cache_write_1h":0,"output":610},"tokens_estimated":false,"prices":{"input":"0.15","cached_input":"0.075","cache_write_5m":"0","cache_write_1h":"0","output":"0.6"},"upstream_request_id":"req_\\\"q\\\"","latency_us":248,"ttft_us":null,"upstream_latency_us":245,"status":200,"error_kind":null,"attempts":1,"client_disconnected":false,"instance_id":"gw_1","instance_seq":8245}}"#,
            )
            .unwrap()
            .body,
            EventBody::Unknown,
        ];
        assert!(matches!(bodies[1], EventBody::Usage(_)));
        for body in bodies {
            let flattened = serde_json::to_string(&Flattened { v: 1, body: &body }).unwrap();
            let envelope = serde_json::to_string(&Envelope { v: 1, body }).unwrap();
            assert_eq!(envelope, flattened);
        }
    }

    /// Usage envelopes as the hand-written writer of earlier releases wrote
    /// them: four from a running gateway, the rest covering escapes, time
    /// fractions, decimal edges and a plan; the last three as this release
    /// writes them, with the serving endpoint. Read back and written again,
    /// they come out byte for byte the same: the lines without an endpoint
    /// get none written back, and read as the one backfilled from their
    /// client API.
    #[test]
    fn usage_events_on_disk_are_written_again_byte_for_byte() {
        let lines = include_str!("../tests/fixtures/usage-envelopes.jsonl");
        let mut seen = 0;
        let mut with_endpoint = Vec::new();
        for line in lines.lines() {
            let envelope: Envelope = serde_json::from_str(line).unwrap();
            let EventBody::Usage(event) = envelope.body else {
                panic!("not a usage event: {line}");
            };
            match event.endpoint {
                Some(endpoint) => with_endpoint.push(endpoint),
                None => assert_eq!(
                    event.served_endpoint(),
                    match event.client_api {
                        ApiSurface::Openai => Endpoint::Chat,
                        ApiSurface::Anthropic => Endpoint::Messages,
                    },
                    "{line}"
                ),
            }
            let mut written = Vec::new();
            UsageEnvelope(&event).write_json(&mut written);
            assert_eq!(String::from_utf8(written).unwrap(), line);
            let whole = serde_json::to_string(&Envelope::usage(*event)).unwrap();
            assert_eq!(whole, line);
            seen += 1;
        }
        assert_eq!(seen, 27);
        assert_eq!(
            with_endpoint,
            [
                Endpoint::Embeddings,
                Endpoint::Responses,
                Endpoint::Messages,
                Endpoint::Responses
            ]
        );
    }

    #[test]
    fn endpoints_are_written_as_their_names() {
        for endpoint in Endpoint::ALL {
            let json = serde_json::to_string(&endpoint).unwrap();
            assert_eq!(json, format!("\"{}\"", endpoint.as_str()));
            assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), endpoint);
            assert_eq!(Endpoint::parse(endpoint.as_str()), Some(endpoint));
        }
        assert_eq!(Endpoint::parse("completions"), None);
        assert_eq!(Endpoint::backfilled(ApiSurface::Openai), Endpoint::Chat);
        assert_eq!(
            Endpoint::backfilled(ApiSurface::Anthropic),
            Endpoint::Messages
        );
    }

    #[test]
    fn a_newer_envelope_version_is_flagged_and_its_data_left_unparsed() {
        let newer: Envelope = serde_json::from_str(
            r#"{"v":3,"type":"usage","data":{"tokens":"a shape this build does not know"}}"#,
        )
        .unwrap();
        assert_eq!(newer.body, EventBody::Unknown);
        let refused = newer.check_version().unwrap_err();
        assert_eq!(refused.found, 3);
        assert!(refused.to_string().contains("upgrade"), "{refused}");
        for v in 1..=ENVELOPE_VERSION {
            assert!(check_envelope_version(v).is_ok());
        }
    }

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
