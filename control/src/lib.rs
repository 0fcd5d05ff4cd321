//! The control plane: accounts, access keys, access-key configurations,
//! provider keys (encrypted at rest), runtime custom providers and price
//! plans, all kept
//! as changes on the control topic and materialized by every instance.

pub mod admin;
pub mod crypto;
pub mod plane;
pub mod plans;
pub mod state;

pub use crypto::{CryptoError, MasterKey};
pub use plane::{ConfigurationSpec, ControlError, ControlPlane, PriceSpec, ProviderIds};
pub use plans::PricePlanSpec;
pub use state::{ControlState, ProviderSecret};
