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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    Usage(Box<UsageEvent>),
    Control(crate::control::ControlChange),
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}
