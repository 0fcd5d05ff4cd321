//! The control plane: accounts, access keys, access-key configurations,
//! provider keys (encrypted at rest), runtime custom providers, price
//! plans, budgets and webhooks (signing secrets encrypted at rest), all kept
//! as changes on the control topic and materialized by every instance.

pub mod admin;
pub mod budgets;
pub mod crypto;
pub mod plane;
pub mod plans;
pub mod state;
pub mod webhooks;

pub use budgets::{BudgetPatch, NewBudget};
pub use crypto::{CryptoError, MasterKey};
pub use plane::{ConfigurationSpec, ControlError, ControlPlane, PriceSpec, ProviderIds};
pub use plans::PricePlanSpec;
pub use state::{ControlState, ProviderSecret};
pub use webhooks::{NewWebhook, WebhookPatch, WebhookWithSecret};
