//! The proxy's one error enum, mapped once to a status and to the error
//! shape of the API the client spoke.

use crate::api::ClientApi;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_core::Escaped;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("missing access key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    MissingKey,
    #[error("invalid access key")]
    InvalidKey,
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("request body is larger than the {limit_bytes}-byte limit")]
    BodyTooLarge { limit_bytes: usize },
    #[error("unknown model `{model}`: not in the catalog; use `provider:model` for a model the catalog does not list")]
    ModelUnknown { model: String },
    #[error("unknown provider `{provider}` in model `{model}`")]
    ProviderUnknown { provider: String, model: String },
    #[error("provider `{provider}` has no credentials configured: it needs a provider key")]
    NoCredentials { provider: String },
    #[error("provider `{provider}` is not allowed by this access key's configuration")]
    ProviderNotAllowed { provider: String },
    #[error("model `{model}` is not allowed by this access key's configuration")]
    ModelNotAllowed { model: String },
    #[error("model `{model}` is not in the catalog and this access key's configuration does not allow pass-through models")]
    PassthroughNotAllowed { model: String },
    /// Every request the operator pays for is priced before it is sent; a
    /// model without a price may only use the caller's own provider keys.
    #[error("no price for {model} on the operator's credentials: attach your own `{provider}` provider key to this access key's configuration (billed the processing fee only), or ask the operator to declare a price for the model")]
    UnpricedModel { model: String, provider: String },
    #[error("insufficient credits: the account's available balance is {available}; its balance is {balance}, minus {reserved} held on this gateway for requests in flight and for finished requests not in that balance yet; buy credits to continue")]
    InsufficientCredits {
        available: String,
        balance: String,
        reserved: String,
    },
    /// A refusing budget has nothing left in its period. 402 rather than
    /// 429: SDKs retry 429 at once, and a budget comes back at its reset.
    #[error("{0}")]
    BudgetExceeded(Box<crate::admission::BudgetExceeded>),
    #[error("rate limit exceeded for this access key ({limit}); retry after {retry_after_secs} s")]
    RateLimited {
        limit: &'static str,
        retry_after_secs: u64,
    },
    #[error("all {attempts} upstream attempt(s) failed; last error: {last}")]
    UpstreamFailed { attempts: u32, last: String },
    #[error("upstream timed out after {attempts} attempt(s); last error: {last}")]
    UpstreamTimeout { attempts: u32, last: String },
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u64 },
    #[error("the gateway is at its limit of {limit}; retry after {retry_after_secs} s")]
    Overloaded {
        limit: &'static str,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(String),
}

impl ProxyError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ProxyError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        ProxyError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingKey | ProxyError::InvalidKey => StatusCode::UNAUTHORIZED,
            ProxyError::InvalidRequest { .. }
            | ProxyError::ProviderUnknown { .. }
            | ProxyError::NoCredentials { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ProviderNotAllowed { .. }
            | ProxyError::ModelNotAllowed { .. }
            | ProxyError::PassthroughNotAllowed { .. }
            | ProxyError::UnpricedModel { .. } => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::InsufficientCredits { .. } | ProxyError::BudgetExceeded(_) => {
                StatusCode::PAYMENT_REQUIRED
            }
            ProxyError::ModelUnknown { .. } => StatusCode::NOT_FOUND,
            ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Low-cardinality label for metrics and usage events.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::MissingKey => "missing_key",
            ProxyError::InvalidKey => "invalid_key",
            ProxyError::InvalidRequest { .. } => "invalid_request",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::ModelUnknown { .. } => "model_unknown",
            ProxyError::ProviderUnknown { .. } => "provider_unknown",
            ProxyError::NoCredentials { .. } => "no_credentials",
            ProxyError::ProviderNotAllowed { .. } => "provider_not_allowed",
            ProxyError::ModelNotAllowed { .. } => "model_not_allowed",
            ProxyError::PassthroughNotAllowed { .. } => "passthrough_not_allowed",
            ProxyError::UnpricedModel { .. } => "unpriced_model",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::InsufficientCredits { .. } => "insufficient_credits",
            ProxyError::BudgetExceeded(_) => "budget_exceeded",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// Machine-readable details to add to the error object, for the errors
    /// that have some (a budget refusal: which budget, its amount, what was
    /// spent and when it resets; amounts as exact decimal strings).
    pub fn details(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let ProxyError::BudgetExceeded(refusal) = self else {
            return None;
        };
        let scope = match refusal.scope {
            tollgate_core::budget::SpendScope::AccessKey(_) => "key",
            tollgate_core::budget::SpendScope::Account(_) => "account",
        };
        let details = serde_json::json!({
            "budget_id": refusal.budget_id.as_str(),
            "scope": scope,
            "amount": refusal.amount.to_string(),
            "period": refusal.period.as_str(),
            "spent": refusal.spent.to_string(),
            "resets_at": refusal.resets_at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        });
        match details {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The error response in the shape of the client's API.
    pub fn into_response_for(self, api: &dyn ClientApi) -> Response {
        if let ProxyError::Internal(detail) = &self {
            // Detail stays in the log; the client gets a generic message.
            tracing::error!(detail = %Escaped(detail), "internal error");
        }
        let status = self.status();
        let retry_after = match &self {
            ProxyError::RateLimited {
                retry_after_secs, ..
            }
            | ProxyError::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let mut response = (status, axum::Json(api.error_body(&self))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        api.error_headers(&self, status, response.headers_mut());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::anthropic_messages::AnthropicMessages;
    use crate::api::openai_chat::OpenAiChat;

    #[test]
    fn errors_take_the_clients_api_shape() {
        let err = ProxyError::ModelUnknown {
            model: "nope".into(),
        };
        let openai = OpenAiChat.error_body(&err);
        assert_eq!(openai["error"]["code"], "model_not_found");
        assert_eq!(openai["error"]["param"], "model");
        assert!(openai["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown model `nope`")));
        let anthropic = AnthropicMessages.error_body(&err);
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "not_found_error");
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn an_unpriced_model_is_refused_naming_the_model_and_the_rule() {
        let err = ProxyError::UnpricedModel {
            model: "openai:gpt-x".into(),
            provider: "openai".into(),
        };
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(err.kind(), "unpriced_model");
        let openai = OpenAiChat.error_body(&err);
        assert_eq!(openai["error"]["type"], "permission_error");
        assert_eq!(openai["error"]["code"], "unpriced_model");
        assert_eq!(openai["error"]["param"], "model");
        let message = openai["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("no price for openai:gpt-x on the operator's credentials"),
            "{message}"
        );
        let anthropic = AnthropicMessages.error_body(&err);
        assert_eq!(anthropic["error"]["type"], "permission_error");
    }

    #[test]
    fn the_credit_refusal_says_what_is_left() {
        let err = ProxyError::InsufficientCredits {
            available: "-0.2".into(),
            balance: "1".into(),
            reserved: "1.2".into(),
        };
        assert_eq!(err.status(), StatusCode::PAYMENT_REQUIRED);
        let message = err.to_string();
        assert!(
            message.contains("available balance is -0.2;")
                && message.contains("its balance is 1, minus 1.2 held"),
            "{message}"
        );
    }
}
