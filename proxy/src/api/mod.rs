//! The client APIs. Each one is a module with one `ClientApi` impl — what
//! differs per API: request parsing and validation, the error body, usage
//! and text read from answers, translation to and from each upstream wire
//! API, the stream relay — plus its route in `crate::routes::CLIENT_APIS`.
//! Authentication, model resolution, admission, failover, metering and
//! events are shared (`crate::dispatch`, `crate::meter`).
//!
//! A provider speaks one wire API (`ProviderSpec::api`); the module of that
//! API also implements `UpstreamApi` (endpoint, credential header, usage and
//! text of its answers), found with `upstream`.

mod answer;
pub mod anthropic_messages;
mod body;
pub mod count_tokens;
pub mod openai_chat;
pub mod openai_embeddings;
pub mod openai_responses;

use body::present;
pub use body::ClientRequest;

use crate::error::ProxyError;
use crate::gateway::{Candidate, ProviderRuntime};
use crate::meter::RequestMeter;
use crate::upstream::UpstreamStream;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use tollgate_core::{ApiSurface, Prices, TokenCounts};

/// Used as Anthropic's required `max_tokens` when neither the request nor
/// the catalog says, and as the output cap of a request's most cost.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

/// What the gateway does differently for one client API. Implementations
/// are unit structs used as `&'static dyn ClientApi`: one table lookup per
/// call, nothing allocated.
pub trait ClientApi: Sync {
    /// The API's name in usage events and metrics labels.
    fn surface(&self) -> ApiSurface;
    /// The endpoint recorded in usage events.
    fn event_endpoint(&self) -> tollgate_core::Endpoint;
    /// The route the API is served on (`POST`).
    fn path(&self) -> &'static str;
    /// Whether the client's headers say it speaks this API on a path that
    /// does not (the model list, refusals at the edge).
    fn named_by(&self, headers: &HeaderMap) -> bool;

    /// Parse and validate the body (read once, fields borrowed).
    fn parse(&self, body: Bytes) -> Result<ClientRequest, ProxyError>;
    /// The error body in this API's shape.
    fn error_body(&self, err: &ProxyError) -> Value;
    /// Headers this API's clients expect on an error response.
    fn error_headers(&self, _err: &ProxyError, _status: StatusCode, _headers: &mut HeaderMap) {}
    /// The text of a request, for a token estimate of its input.
    fn request_text(&self, request: &Value) -> String;
    /// Input tokens a request gives as token ids rather than text: counted,
    /// not estimated, and added to the estimate of `request_text`.
    fn request_token_ids(&self, _request: &Value) -> u64 {
        0
    }

    /// Whether this API may send the request to `candidate` at all, checked
    /// when it is resolved (a refusal is the caller's mistake, like an
    /// unknown model). The chat APIs refuse a model the catalog lists as an
    /// embedding model.
    fn accepts(&self, candidate: &Candidate) -> Result<(), ProxyError> {
        if candidate.embedding == Some(true) {
            return Err(ProxyError::invalid_param(
                "model",
                format!(
                    "model `{}:{}` is an embedding model; call it through POST /v1/embeddings",
                    candidate.provider.spec.id, candidate.upstream_model
                ),
            ));
        }
        Ok(())
    }
    /// What in the request no price covers (a feature billed upstream in
    /// other units than tokens): `Err` names it, and the operator's
    /// credentials are withheld — only the caller's own provider keys may
    /// answer, and without any the error is the answer.
    fn unpriced_features(
        &self,
        _gateway: &crate::gateway::Gateway,
        _request: &ClientRequest,
    ) -> Result<(), ProxyError> {
        Ok(())
    }
    /// The upstream endpoint this API calls on `provider`.
    fn endpoint<'p>(&self, provider: &'p ProviderRuntime) -> &'p http::Uri {
        &provider.endpoint
    }

    /// The body sent to `candidate`'s upstream, translated when it speaks
    /// another API; an `InvalidRequest` error passes over that candidate.
    fn upstream_body(
        &self,
        candidate: &Candidate,
        request: &ClientRequest,
    ) -> Result<Bytes, ProxyError>;
    /// Headers passed from the client's request to an upstream speaking `upstream`.
    fn upstream_headers(&self, upstream: ApiSurface, client: &HeaderMap, out: &mut HeaderMap);
    /// A successful non-streamed upstream body → the client's response,
    /// metering its usage. An error (an unreadable body) is retryable.
    fn complete_response(
        &self,
        upstream: ApiSurface,
        bytes: Bytes,
        meter: &mut RequestMeter,
    ) -> Result<Response, String>;
    /// An upstream's non-retryable error, in this API's shape.
    fn upstream_error(&self, upstream: ApiSurface, status: StatusCode, bytes: Bytes) -> Response;
    /// The client's event stream, relayed from a committed upstream stream.
    fn stream_body(&self, upstream: ApiSurface, stream: StreamStart, meter: RequestMeter) -> Body;

    /// One entry of the model list in this API's shape.
    fn model_object(&self, id: &str, provider: &str, prices: Option<&Prices>) -> Value;
    /// The model list in this API's shape.
    fn model_list(&self, data: Vec<Value>, first: Option<&str>, last: Option<&str>) -> Value;
}

/// A wire API a provider speaks, as the gateway calls it.
pub trait UpstreamApi: Sync {
    /// The endpoint under the provider's base URL (without a trailing slash).
    fn endpoint(&self, base_url: &str) -> String;
    /// The credential header (name, value) for `secret`.
    fn auth_header(&self, secret: &str) -> (&'static str, String);
    /// Usage the upstream reported, from an answer's `usage` member.
    fn usage(&self, usage: &Value) -> Option<TokenCounts>;
    /// The generated text of an answer, for a token estimate of its output.
    fn response_text(&self, response: &Value) -> String;
}

/// The module of the wire API a provider speaks.
pub fn upstream(api: ApiSurface) -> &'static dyn UpstreamApi {
    match api {
        ApiSurface::Openai => &openai_chat::OpenAiChat,
        ApiSurface::Anthropic => &anthropic_messages::AnthropicMessages,
    }
}

/// A committed upstream stream: its first chunk and the rest.
pub struct StreamStart {
    pub first: Bytes,
    pub rest: UpstreamStream,
    pub include_usage: bool,
}
