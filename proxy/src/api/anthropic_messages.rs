//! Anthropic Messages (`POST /v1/messages`), as a client API and as the
//! wire API of the providers that speak it.

use super::answer::{self, TranslateAnswer, TranslateError};
use super::body::{self, ClientRequest};
use super::openai_chat;
use super::{ClientApi, StreamStart, UpstreamApi};
use crate::error::ProxyError;
use crate::gateway::Candidate;
use crate::meter::RequestMeter;
use crate::relay::{self, RelayEvents, RelayState};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tollgate_core::{ApiSurface, Prices, TokenCounts};
use tollgate_translate::sse::{encode_event, SseEvent};
use tollgate_translate::stream::OpenAiToAnthropicStream;
use tollgate_translate::usage::{self as tr_usage, AnthropicStreamUsage};
use tollgate_translate::{request as tr_request, response as tr_response};

const ANTHROPIC_VERSION_DEFAULT: &str = "2023-06-01";
const VERSION_HEADER: &str = "anthropic-version";

pub struct AnthropicMessages;

impl ClientApi for AnthropicMessages {
    fn surface(&self) -> ApiSurface {
        ApiSurface::Anthropic
    }

    fn event_endpoint(&self) -> tollgate_core::Endpoint {
        tollgate_core::Endpoint::Messages
    }

    fn path(&self) -> &'static str {
        "/v1/messages"
    }

    fn named_by(&self, headers: &HeaderMap) -> bool {
        // Anthropic's SDK sends its version header on every request.
        headers.contains_key(VERSION_HEADER)
    }

    fn parse(&self, body: Bytes) -> Result<ClientRequest, ProxyError> {
        body::parse_chat_request(body, true, body::EndUserField::Anthropic)
    }

    fn error_body(&self, err: &ProxyError) -> Value {
        let mut error = json!({"type": error_type(err), "message": err.to_string()});
        if let (Some(details), Some(error)) = (err.details(), error.as_object_mut()) {
            error.extend(details);
        }
        json!({"type": "error", "error": error})
    }

    fn request_text(&self, request: &Value) -> String {
        tr_usage::anthropic_request_text(request)
    }

    fn upstream_body(
        &self,
        candidate: &Candidate,
        request: &ClientRequest,
    ) -> Result<Bytes, ProxyError> {
        match candidate.provider.spec.api {
            ApiSurface::Anthropic => body::same_api_body(candidate, request, false),
            ApiSurface::Openai => body::translated_body(
                &tr_request::anthropic_to_openai_request(
                    &body::request_value(request)?,
                    &candidate.upstream_model,
                )
                .map_err(|e| ProxyError::invalid(e.to_string()))?,
            ),
        }
    }

    fn upstream_headers(&self, upstream: ApiSurface, client: &HeaderMap, out: &mut HeaderMap) {
        if upstream != ApiSurface::Anthropic {
            return;
        }
        match client.get(VERSION_HEADER) {
            Some(version) => {
                out.insert(VERSION_HEADER, version.clone());
            }
            None => default_version(out),
        }
        if let Some(beta) = client.get("anthropic-beta") {
            out.insert("anthropic-beta", beta.clone());
        }
    }

    fn complete_response(
        &self,
        upstream: ApiSurface,
        bytes: Bytes,
        meter: &mut RequestMeter,
    ) -> Result<Response, String> {
        let translate: Option<TranslateAnswer> = match upstream {
            ApiSurface::Anthropic => None,
            ApiSurface::Openai => Some(&tr_response::openai_to_anthropic_response),
        };
        answer::complete_response(super::upstream(upstream), translate, bytes, meter)
    }

    fn upstream_error(&self, upstream: ApiSurface, status: StatusCode, bytes: Bytes) -> Response {
        let translate: Option<TranslateError> = match upstream {
            ApiSurface::Anthropic => None,
            ApiSurface::Openai => Some(tr_response::openai_error_to_anthropic),
        };
        answer::upstream_error(translate, status, bytes)
    }

    fn stream_body(&self, upstream: ApiSurface, stream: StreamStart, meter: RequestMeter) -> Body {
        match upstream {
            ApiSurface::Anthropic => {
                let events = Passthrough {
                    usage: AnthropicStreamUsage::default(),
                };
                relay::body(events, stream, meter)
            }
            ApiSurface::Openai => {
                let events = FromOpenAi {
                    translator: OpenAiToAnthropicStream::new(&meter.model_requested),
                };
                relay::body(events, stream, meter)
            }
        }
    }

    fn model_object(&self, id: &str, _provider: &str, prices: Option<&Prices>) -> Value {
        json!({
            "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z",
            "prices": prices,
        })
    }

    fn model_list(&self, data: Vec<Value>, first: Option<&str>, last: Option<&str>) -> Value {
        json!({
            "data": data,
            "has_more": false,
            "first_id": first,
            "last_id": last,
        })
    }
}

impl UpstreamApi for AnthropicMessages {
    fn endpoint(&self, base_url: &str) -> String {
        format!("{base_url}/messages")
    }

    fn auth_header(&self, secret: &str) -> (&'static str, String) {
        ("x-api-key", secret.to_owned())
    }

    fn usage(&self, usage: &Value) -> Option<TokenCounts> {
        tr_usage::anthropic_usage(usage)
    }

    fn response_text(&self, response: &Value) -> String {
        tr_usage::anthropic_response_text(response)
    }
}

/// The API version an Anthropic upstream is called with when the client
/// did not name one (or speaks another API).
pub(super) fn default_version(out: &mut HeaderMap) {
    out.insert(
        VERSION_HEADER,
        HeaderValue::from_static(ANTHROPIC_VERSION_DEFAULT),
    );
}

fn error_type(err: &ProxyError) -> &'static str {
    match err {
        ProxyError::MissingKey | ProxyError::InvalidKey => "authentication_error",
        ProxyError::ModelUnknown { .. } => "not_found_error",
        ProxyError::BodyTooLarge { .. } => "request_too_large",
        ProxyError::BodyTimeout { .. } => "invalid_request_error",
        ProxyError::Overloaded { .. } => "overloaded_error",
        ProxyError::ProviderNotAllowed { .. }
        | ProxyError::ModelNotAllowed { .. }
        | ProxyError::PassthroughNotAllowed { .. }
        | ProxyError::UnpricedModel { .. } => "permission_error",
        ProxyError::RateLimited { .. } => "rate_limit_error",
        ProxyError::InsufficientCredits { .. } | ProxyError::BudgetExceeded(_) => "billing_error",
        ProxyError::InvalidRequest { .. }
        | ProxyError::ProviderUnknown { .. }
        | ProxyError::NoCredentials { .. } => "invalid_request_error",
        ProxyError::UpstreamTimeout { .. } => "timeout_error",
        ProxyError::UpstreamFailed { .. } | ProxyError::Internal(_) => "api_error",
    }
}

/// An Anthropic stream event read from an upstream: its type and data,
/// metered, and its end or error noted. `None` when it is not JSON (never
/// forwarded).
pub(super) fn read_event(
    event: &SseEvent,
    usage: &mut AnthropicStreamUsage,
    relay: &mut RelayState,
) -> Option<(String, Value)> {
    let parsed = serde_json::from_str::<Value>(&event.data).ok();
    let event_type = event
        .event
        .clone()
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("type"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let Some(data) = parsed else {
        tracing::warn!("skipping an upstream stream event that is not JSON");
        return None;
    };
    match event_type.as_str() {
        "message_stop" => relay.completed = true,
        "error" => relay.upstream_error = true,
        _ => {}
    }
    usage.observe(&event_type, &data);
    let mut text = String::new();
    tr_usage::anthropic_event_text(&event_type, &data, &mut text);
    relay.meter.output_text.push_str(&text);
    if event_type == "message_delta" && data.get("usage").is_some() {
        // message_delta carries the final cumulative counts.
        relay.meter.reported = usage.counts();
    }
    Some((event_type, data))
}

/// The stream's error event in Anthropic's shape.
fn stream_error_event() -> Bytes {
    let message = "the upstream stream ended with an error";
    encode_event(
        Some("error"),
        &json!({"type": "error", "error": {"type": "api_error", "message": message}}).to_string(),
    )
}

/// Events written to the client, `message_delta` carrying the cost.
fn write_events(relay: &mut RelayState, events: Vec<(&'static str, Value)>) {
    for (name, mut data) in events {
        if name == "message_delta" {
            relay.add_cost(&mut data);
        }
        relay
            .out
            .extend_from_slice(&encode_event(Some(name), &data.to_string()));
    }
}

/// Anthropic → Anthropic: events forwarded as they came, the final
/// `message_delta` carrying the cost.
struct Passthrough {
    usage: AnthropicStreamUsage,
}

impl RelayEvents for Passthrough {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        let Some((event_type, mut data)) = read_event(&event, &mut self.usage, relay) else {
            return;
        };
        if event_type == "message_delta" && data.get("usage").is_some() {
            relay.add_cost(&mut data);
            relay
                .out
                .extend_from_slice(&encode_event(Some("message_delta"), &data.to_string()));
        } else {
            relay.out.extend_from_slice(&event.raw);
        }
    }

    fn finish(&mut self, _relay: &mut RelayState) {}

    fn error_event(&self) -> Bytes {
        stream_error_event()
    }

    fn partial_input(&self) -> Option<TokenCounts> {
        self.usage.counts()
    }
}

/// OpenAI → Anthropic: each upstream chunk translated to events.
struct FromOpenAi {
    translator: OpenAiToAnthropicStream,
}

impl RelayEvents for FromOpenAi {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        let data = event.data.trim();
        if data == "[DONE]" {
            relay.completed = true;
            self.finish(relay);
            return;
        }
        if let Some(chunk) = openai_chat::read_chunk(data, relay) {
            let events = self.translator.push(&chunk);
            write_events(relay, events);
        }
    }

    fn finish(&mut self, relay: &mut RelayState) {
        let events = self.translator.finish();
        write_events(relay, events);
    }

    fn error_event(&self) -> Bytes {
        stream_error_event()
    }
}
