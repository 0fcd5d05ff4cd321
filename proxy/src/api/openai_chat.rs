//! OpenAI Chat Completions (`POST /v1/chat/completions`), as a client API
//! and as the wire API of the providers that speak it.

use super::answer::{self, TranslateAnswer, TranslateError};
use super::anthropic_messages;
use super::body::{self, ClientRequest};
use super::{ClientApi, StreamStart, UpstreamApi, DEFAULT_MAX_OUTPUT_TOKENS};
use crate::error::ProxyError;
use crate::gateway::Candidate;
use crate::meter::RequestMeter;
use crate::relay::{self, RelayEvents, RelayState};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use tollgate_core::{ApiSurface, Prices, TokenCounts};
use tollgate_translate::sse::{encode_event, SseEvent};
use tollgate_translate::stream::AnthropicToOpenAiStream;
use tollgate_translate::usage::{self as tr_usage, AnthropicStreamUsage};
use tollgate_translate::{request as tr_request, response as tr_response};

pub struct OpenAiChat;

impl ClientApi for OpenAiChat {
    fn surface(&self) -> ApiSurface {
        ApiSurface::Openai
    }

    fn event_endpoint(&self) -> tollgate_core::Endpoint {
        tollgate_core::Endpoint::Chat
    }

    fn path(&self) -> &'static str {
        "/v1/chat/completions"
    }

    fn named_by(&self, _headers: &HeaderMap) -> bool {
        // OpenAI's SDK sends no header of its own: its shape is the default.
        false
    }

    fn parse(&self, body: Bytes) -> Result<ClientRequest, ProxyError> {
        body::parse_chat_request(body, false, body::EndUserField::OpenAi)
    }

    fn error_body(&self, err: &ProxyError) -> Value {
        error_body(err)
    }

    fn error_headers(&self, _err: &ProxyError, status: StatusCode, headers: &mut HeaderMap) {
        if status == StatusCode::UNAUTHORIZED {
            headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
    }

    fn request_text(&self, request: &Value) -> String {
        tr_usage::openai_request_text(request)
    }

    fn upstream_body(
        &self,
        candidate: &Candidate,
        request: &ClientRequest,
    ) -> Result<Bytes, ProxyError> {
        match candidate.provider.spec.api {
            // Ask an OpenAI upstream for usage in the stream's last chunk;
            // the relay hides that chunk from clients that did not ask.
            ApiSurface::Openai => body::same_api_body(candidate, request, request.stream),
            ApiSurface::Anthropic => body::translated_body(
                &tr_request::openai_to_anthropic_request(
                    &body::request_value(request)?,
                    &candidate.upstream_model,
                    candidate
                        .max_output_tokens
                        .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
                )
                .map_err(|e| ProxyError::invalid(e.to_string()))?,
            ),
        }
    }

    fn upstream_headers(&self, upstream: ApiSurface, _client: &HeaderMap, out: &mut HeaderMap) {
        if upstream == ApiSurface::Anthropic {
            anthropic_messages::default_version(out);
        }
    }

    fn complete_response(
        &self,
        upstream: ApiSurface,
        bytes: Bytes,
        meter: &mut RequestMeter,
    ) -> Result<Response, String> {
        let translate: Option<TranslateAnswer> = match upstream {
            ApiSurface::Openai => None,
            ApiSurface::Anthropic => Some(&tr_response::anthropic_to_openai_response),
        };
        answer::complete_response(super::upstream(upstream), translate, bytes, meter)
    }

    fn upstream_error(&self, upstream: ApiSurface, status: StatusCode, bytes: Bytes) -> Response {
        let translate: Option<TranslateError> = match upstream {
            ApiSurface::Openai => None,
            ApiSurface::Anthropic => Some(tr_response::anthropic_error_to_openai),
        };
        answer::upstream_error(translate, status, bytes)
    }

    fn stream_body(&self, upstream: ApiSurface, stream: StreamStart, meter: RequestMeter) -> Body {
        match upstream {
            ApiSurface::Openai => {
                let events = Passthrough {
                    client_wants_usage: stream.include_usage,
                };
                relay::body(events, stream, meter)
            }
            ApiSurface::Anthropic => {
                let events = FromAnthropic {
                    translator: AnthropicToOpenAiStream::new(
                        &meter.model_requested,
                        stream.include_usage,
                    ),
                    usage: AnthropicStreamUsage::default(),
                };
                relay::body(events, stream, meter)
            }
        }
    }

    fn model_object(&self, id: &str, provider: &str, prices: Option<&Prices>) -> Value {
        json!({
            "id": id, "object": "model", "created": 0, "owned_by": provider,
            "prices": prices,
        })
    }

    fn model_list(&self, data: Vec<Value>, _first: Option<&str>, _last: Option<&str>) -> Value {
        json!({"object": "list", "data": data})
    }
}

impl UpstreamApi for OpenAiChat {
    fn endpoint(&self, base_url: &str) -> String {
        format!("{base_url}/chat/completions")
    }

    fn auth_header(&self, secret: &str) -> (&'static str, String) {
        ("authorization", format!("Bearer {secret}"))
    }

    fn usage(&self, usage: &Value) -> Option<TokenCounts> {
        tr_usage::openai_usage(usage)
    }

    fn response_text(&self, response: &Value) -> String {
        tr_usage::openai_response_text(response)
    }
}

/// The error body in OpenAI's shape (`{"error": {message, type, param, code}}`).
pub fn error_body(err: &ProxyError) -> Value {
    let (kind, code) = error_type_and_code(err);
    let param = match err {
        ProxyError::InvalidRequest { param, .. } => *param,
        ProxyError::ModelUnknown { .. }
        | ProxyError::ProviderUnknown { .. }
        | ProxyError::ModelNotAllowed { .. }
        | ProxyError::PassthroughNotAllowed { .. }
        | ProxyError::UnpricedModel { .. }
        | ProxyError::ProviderNotAllowed { .. } => Some("model"),
        _ => None,
    };
    let mut error = json!({"message": err.to_string(), "type": kind, "param": param, "code": code});
    if let (Some(details), Some(error)) = (err.details(), error.as_object_mut()) {
        error.extend(details);
    }
    json!({ "error": error })
}

fn error_type_and_code(err: &ProxyError) -> (&'static str, Option<&'static str>) {
    match err {
        ProxyError::MissingKey | ProxyError::InvalidKey => {
            ("invalid_request_error", Some("invalid_api_key"))
        }
        ProxyError::ModelUnknown { .. } | ProxyError::ProviderUnknown { .. } => {
            ("invalid_request_error", Some("model_not_found"))
        }
        ProxyError::BodyTooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
        ProxyError::BodyTimeout { .. } => ("invalid_request_error", Some("request_timeout")),
        ProxyError::Overloaded { .. } => ("server_error", Some("overloaded")),
        ProxyError::ProviderNotAllowed { .. } => ("permission_error", Some("provider_not_allowed")),
        ProxyError::ModelNotAllowed { .. } => ("permission_error", Some("model_not_allowed")),
        ProxyError::PassthroughNotAllowed { .. } => {
            ("permission_error", Some("passthrough_not_allowed"))
        }
        ProxyError::UnpricedModel { .. } => ("permission_error", Some("unpriced_model")),
        ProxyError::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded")),
        ProxyError::InsufficientCredits { .. } => {
            ("insufficient_credits", Some("insufficient_credits"))
        }
        ProxyError::BudgetExceeded(_) => ("budget_exceeded", Some("budget_exceeded")),
        ProxyError::InvalidRequest { .. } | ProxyError::NoCredentials { .. } => {
            ("invalid_request_error", None)
        }
        ProxyError::UpstreamFailed { .. } => ("api_error", Some("upstream_failed")),
        ProxyError::UpstreamTimeout { .. } => ("api_error", Some("upstream_timeout")),
        ProxyError::Internal(_) => ("api_error", None),
    }
}

/// An OpenAI stream chunk read from an upstream (`[DONE]` excepted):
/// metered, and its end or error noted. `None` when it is not JSON — never
/// forwarded, as it would break the client's parser.
pub(super) fn read_chunk(data: &str, relay: &mut RelayState) -> Option<Value> {
    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
        tracing::warn!("skipping an upstream stream event that is not JSON");
        return None;
    };
    if chunk.get("error").is_some() {
        relay.upstream_error = true;
    }
    let finished = chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices
                .iter()
                .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
        });
    if finished {
        relay.completed = true;
    }
    if let Some(usage) = tr_usage::openai_chunk_usage(&chunk) {
        relay.meter.reported = Some(usage);
    }
    let mut text = String::new();
    tr_usage::openai_chunk_text(&chunk, &mut text);
    relay.meter.output_text.push_str(&text);
    Some(chunk)
}

/// The stream's error event in OpenAI's shape.
fn stream_error_event() -> Bytes {
    let message = "the upstream stream ended with an error";
    encode_event(
        None,
        &json!({"error": {"message": message, "type": "api_error", "param": null, "code": "upstream_stream_error"}}).to_string(),
    )
}

/// Chunks written to the client, the usage chunk carrying the cost.
fn write_chunks(relay: &mut RelayState, chunks: Vec<Value>) {
    for mut chunk in chunks {
        if chunk.get("usage").is_some_and(Value::is_object) {
            relay.add_cost(&mut chunk);
        }
        let data = chunk.to_string();
        relay.out.extend_from_slice(&encode_event(None, &data));
    }
}

/// What the relay reads from an OpenAI stream chunk, borrowed from it.
#[derive(serde::Deserialize)]
struct ChunkProbe<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    /// Present at all (even `null`) marks an error chunk.
    #[serde(borrow, default, deserialize_with = "super::present")]
    error: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    delta: Option<DeltaProbe<'a>>,
}

#[derive(serde::Deserialize)]
struct DeltaProbe<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallProbe<'a>>>,
}

#[derive(serde::Deserialize)]
struct ToolCallProbe<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionProbe<'a>>,
}

#[derive(serde::Deserialize)]
struct FunctionProbe<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// OpenAI → OpenAI: forward events unchanged, except the usage-only chunk
/// the gateway asked for when the client did not.
struct Passthrough {
    client_wants_usage: bool,
}

impl RelayEvents for Passthrough {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        let data = event.data.trim();
        if data == "[DONE]" {
            relay.completed = true;
            relay.out.extend_from_slice(&event.raw);
            return;
        }
        if self.fast(&event, relay) {
            return;
        }
        let Some(chunk) = read_chunk(data, relay) else {
            return;
        };
        let has_usage = chunk.get("usage").is_some_and(Value::is_object);
        if self.client_wants_usage && has_usage {
            let mut chunk = chunk;
            relay.add_cost(&mut chunk);
            relay
                .out
                .extend_from_slice(&encode_event(None, &chunk.to_string()));
        } else if self.client_wants_usage || !tr_usage::is_usage_only_chunk(&chunk) {
            relay.out.extend_from_slice(&event.raw);
        }
    }

    fn finish(&mut self, _relay: &mut RelayState) {}

    fn error_event(&self) -> Bytes {
        stream_error_event()
    }
}

impl Passthrough {
    /// The usual stream: read the chunk's few fields the relay needs without
    /// building it as a JSON value. False when the chunk has an unexpected
    /// shape (the general path then handles it).
    fn fast(&self, event: &SseEvent, relay: &mut RelayState) -> bool {
        let Ok(chunk) = serde_json::from_str::<ChunkProbe>(event.data.trim()) else {
            return false;
        };
        if chunk.error.is_some() {
            relay.upstream_error = true;
        }
        let choices = chunk.choices.as_deref().unwrap_or_default();
        if choices.iter().any(|c| c.finish_reason.is_some()) {
            relay.completed = true;
        }
        let usage = chunk
            .usage
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
        if let Some(counts) = usage.as_ref().and_then(tr_usage::openai_usage) {
            relay.meter.reported = Some(counts);
        }
        meter_deltas(choices, &mut relay.meter);
        let has_usage = usage.as_ref().is_some_and(Value::is_object);
        if self.client_wants_usage && has_usage {
            // Once per stream: the usage chunk gets the request's cost.
            let Ok(mut full) = serde_json::from_str::<Value>(event.data.trim()) else {
                return false;
            };
            relay.add_cost(&mut full);
            relay
                .out
                .extend_from_slice(&encode_event(None, &full.to_string()));
        } else if self.client_wants_usage || !(has_usage && choices.is_empty()) {
            relay.out.extend_from_slice(&event.raw);
        }
        true
    }
}

/// The generated text of a chunk's deltas, kept for an output estimate.
fn meter_deltas(choices: &[ChoiceProbe], meter: &mut RequestMeter) {
    for delta in choices.iter().filter_map(|c| c.delta.as_ref()) {
        let text = &mut meter.output_text;
        for part in [&delta.content, &delta.refusal, &delta.reasoning_content]
            .into_iter()
            .flatten()
        {
            text.push_str(part);
        }
        for function in delta
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|call| call.function.as_ref())
        {
            for part in [&function.name, &function.arguments].into_iter().flatten() {
                text.push_str(part);
            }
        }
    }
}

/// Anthropic → OpenAI: each upstream event translated to chunks.
struct FromAnthropic {
    translator: AnthropicToOpenAiStream,
    usage: AnthropicStreamUsage,
}

impl RelayEvents for FromAnthropic {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        if let Some((event_type, data)) =
            anthropic_messages::read_event(&event, &mut self.usage, relay)
        {
            let chunks = self.translator.push(&event_type, &data);
            write_chunks(relay, chunks);
        }
    }

    fn finish(&mut self, relay: &mut RelayState) {
        let chunks = self.translator.finish();
        write_chunks(relay, chunks);
        relay.out.extend_from_slice(&encode_event(None, "[DONE]"));
    }

    fn error_event(&self) -> Bytes {
        stream_error_event()
    }

    fn partial_input(&self) -> Option<TokenCounts> {
        self.usage.counts()
    }
}
