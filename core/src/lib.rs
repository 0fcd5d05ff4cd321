//! Types shared by every Tollgate service: money, ids, the model catalog,
//! and the usage-event schema.

pub mod attribution;
pub mod billing;
pub mod budget;
pub mod catalog;
pub mod control;
pub mod escape;
pub mod event;
pub mod ids;
pub mod money;
pub mod openapi;
pub mod pricing;
pub mod secrets;
pub mod tokens;

pub use catalog::{ApiSurface, Catalog, CatalogError, ModelSpec, Prices, ProviderSpec};
pub use escape::Escaped;
pub use event::{
    check_envelope_version, CredentialSource, Endpoint, Envelope, EventBody, ToolCallCharge,
    UnsupportedVersion, UsageEnvelope, UsageEvent, ENVELOPE_VERSION,
};
pub use ids::{AccessKeyId, AccountId, EventId, ProviderKeyId};
pub use money::Usd;
pub use tokens::TokenCounts;
