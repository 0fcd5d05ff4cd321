//! OpenAI Responses (`POST /v1/responses`) as a client API. A provider that
//! serves the Responses API itself (`ProviderSpec::responses`) gets the
//! body as it came (`model` replaced, `models` dropped), so
//! `previous_response_id`, `store` and built-in tools work as they do there.
//! Every other provider gets it translated to its chat API and back:
//! Responses ⇄ Chat Completions for OpenAI-API providers, and through Chat
//! Completions to and from Messages for Anthropic-API ones. A field that
//! cannot be translated is refused naming it, never dropped.
//!
//! What a token price cannot cover goes only on the caller's own provider
//! keys (`unpriced_features`): `background` (usage arrives after the request
//! ends), and built-in tools (billed per call upstream) unless the operator
//! prices their calls (`builtin_tool_prices`) — then each call the answer
//! reports is billed at that price.

use super::answer::{self, TranslateAnswer};
use super::body::{self, ClientRequest};
use super::openai_chat::{self, OpenAiChat};
use super::{anthropic_messages, ClientApi, StreamStart, UpstreamApi, DEFAULT_MAX_OUTPUT_TOKENS};
use crate::config::ExactUsd;
use crate::error::ProxyError;
use crate::gateway::{Candidate, Gateway, ProviderRuntime};
use crate::meter::RequestMeter;
use crate::relay::{self, RelayEvents, RelayState};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use tollgate_core::{ApiSurface, Prices, TokenCounts, ToolCallCharge};
use tollgate_translate::responses::{
    chat_to_responses_response, responses_echo_request, responses_to_chat_request,
    ChatToResponsesStream,
};
use tollgate_translate::sse::{encode_event, SseEvent};
use tollgate_translate::stream::AnthropicToOpenAiStream;
use tollgate_translate::usage::{self as tr_usage, AnthropicStreamUsage};
use tollgate_translate::{request as tr_request, response as tr_response};

pub struct OpenAiResponses;

/// The built-in tools whose calls an operator may price, by price key.
pub const BUILT_IN_TOOLS: &[&str] = &[
    "web_search",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer",
    "mcp",
    "local_shell",
];

/// The price key of a request tool's `type`: `None` for the tools the
/// client runs itself (`function`, `custom`), which cost nothing per call;
/// `Some(None)` for a built-in tool the gateway cannot price.
fn tool_price_key(kind: &str) -> Option<Option<&'static str>> {
    match kind {
        "function" | "custom" => None,
        k if k.starts_with("web_search") => Some(Some("web_search")),
        k if k.starts_with("computer_use") => Some(Some("computer")),
        k => Some(BUILT_IN_TOOLS.iter().copied().find(|known| *known == k)),
    }
}

/// The price key of an output item reporting a built-in tool call.
fn call_price_key(item_type: &str) -> Option<&'static str> {
    let tool = item_type.strip_suffix("_call")?;
    BUILT_IN_TOOLS.iter().copied().find(|known| *known == tool)
}

/// The priced built-in tool calls among a response's `output` items.
fn tool_call_charges(
    output: impl IntoIterator<Item = impl AsRef<str>>,
    prices: &BTreeMap<String, ExactUsd>,
) -> Vec<ToolCallCharge> {
    let mut charges: Vec<ToolCallCharge> = Vec::new();
    for item_type in output {
        let Some(tool) = call_price_key(item_type.as_ref()) else {
            continue;
        };
        let Some(price) = prices.get(tool) else {
            continue;
        };
        match charges.iter_mut().find(|c| c.tool == tool) {
            Some(charge) => charge.calls += 1,
            None => charges.push(ToolCallCharge {
                tool: tool.to_owned(),
                calls: 1,
                price: price.0,
            }),
        }
    }
    charges
}

/// The `type` of each output item of a Responses answer, borrowed.
#[derive(serde::Deserialize)]
struct OutputProbe<'a> {
    #[serde(borrow, default)]
    output: Vec<ToolKind<'a>>,
}

/// The request fields the gateway reads, borrowed; `input` stays raw text.
#[derive(serde::Deserialize)]
struct ResponsesFields<'a> {
    #[serde(borrow, default, deserialize_with = "super::present")]
    model: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    models: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::present")]
    safety_identifier: Option<&'a RawValue>,
}

/// What the operator's credentials cannot carry, read only for them.
#[derive(serde::Deserialize)]
struct UnpricedFields<'a> {
    #[serde(borrow, default)]
    tools: Option<Vec<ToolKind<'a>>>,
    #[serde(default)]
    background: Option<bool>,
}

#[derive(serde::Deserialize)]
struct ToolKind<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
}

impl ClientApi for OpenAiResponses {
    fn surface(&self) -> ApiSurface {
        // The OpenAI API family: events tell the endpoint apart.
        ApiSurface::Openai
    }

    fn path(&self) -> &'static str {
        "/v1/responses"
    }

    fn event_endpoint(&self) -> tollgate_core::Endpoint {
        tollgate_core::Endpoint::Responses
    }

    fn named_by(&self, _headers: &HeaderMap) -> bool {
        false
    }

    fn parse(&self, body: Bytes) -> Result<ClientRequest, ProxyError> {
        parse_responses_request(body)
    }

    fn error_body(&self, err: &ProxyError) -> Value {
        // The Responses API answers errors in the same shape as chat.
        openai_chat::error_body(err)
    }

    fn error_headers(&self, err: &ProxyError, status: StatusCode, headers: &mut HeaderMap) {
        OpenAiChat.error_headers(err, status, headers);
    }

    fn request_text(&self, request: &Value) -> String {
        tr_usage::responses_request_text(request)
    }

    fn unpriced_features(
        &self,
        gateway: &Gateway,
        request: &ClientRequest,
    ) -> Result<(), ProxyError> {
        refuse_unpriced(request, &gateway.config.builtin_tool_prices)
    }

    fn endpoint<'p>(&self, provider: &'p ProviderRuntime) -> &'p http::Uri {
        provider
            .responses_endpoint
            .as_ref()
            .unwrap_or(&provider.endpoint)
    }

    fn upstream_body(
        &self,
        candidate: &Candidate,
        request: &ClientRequest,
    ) -> Result<Bytes, ProxyError> {
        if candidate.provider.responses_endpoint.is_some() {
            return body::same_api_body(candidate, request, false);
        }
        let mut value = body::request_value(request)?;
        if let Some(fields) = value.as_object_mut() {
            // The gateway's own field: never translated, never sent.
            fields.remove("models");
        }
        let chat = responses_to_chat_request(&value, &candidate.upstream_model)
            .map_err(|e| ProxyError::invalid(e.to_string()))?;
        match candidate.provider.spec.api {
            ApiSurface::Openai => body::translated_body(&chat),
            ApiSurface::Anthropic => {
                refuse_chat_only_fields(&chat)?;
                let max_tokens = candidate
                    .max_output_tokens
                    .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
                let messages = tr_request::openai_to_anthropic_request(
                    &chat,
                    &candidate.upstream_model,
                    max_tokens,
                )
                .map_err(|e| ProxyError::invalid(format!("translated to chat, {e}")))?;
                body::translated_body(&messages)
            }
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
        if speaks_responses(meter) {
            if !meter.builtin_tool_prices().is_empty() {
                if let Ok(probe) = serde_json::from_slice::<OutputProbe>(&bytes) {
                    let kinds = probe.output.iter().filter_map(|i| i.kind.as_deref());
                    meter.tool_calls = tool_call_charges(kinds, meter.builtin_tool_prices());
                }
            }
            return answer::complete_response(&OpenAiResponses, None, bytes, meter);
        }
        let request = client_request(meter);
        // The translation names the model the client asked for, from `request`.
        let to_responses = |chat: &Value, _model: &str| chat_to_responses_response(chat, &request);
        match upstream {
            ApiSurface::Openai => {
                let translate: TranslateAnswer = &to_responses;
                answer::complete_response(super::upstream(upstream), Some(translate), bytes, meter)
            }
            ApiSurface::Anthropic => {
                let via_chat = |message: &Value, model: &str| {
                    to_responses(
                        &tr_response::anthropic_to_openai_response(message, model),
                        model,
                    )
                };
                answer::complete_response(super::upstream(upstream), Some(&via_chat), bytes, meter)
            }
        }
    }

    fn upstream_error(&self, upstream: ApiSurface, status: StatusCode, bytes: Bytes) -> Response {
        // OpenAI-API upstreams (Responses or chat) answer errors in the
        // Responses API's shape already.
        OpenAiChat.upstream_error(upstream, status, bytes)
    }

    fn stream_body(&self, upstream: ApiSurface, stream: StreamStart, meter: RequestMeter) -> Body {
        if speaks_responses(&meter) {
            return relay::body(Passthrough, stream, meter);
        }
        let translator =
            ChatToResponsesStream::new(&meter.model_requested, &client_request(&meter));
        match upstream {
            ApiSurface::Openai => relay::body(FromChat { translator }, stream, meter),
            ApiSurface::Anthropic => {
                let events = FromAnthropic {
                    to_chat: AnthropicToOpenAiStream::new(&meter.model_requested, true),
                    translator,
                    usage: AnthropicStreamUsage::default(),
                };
                relay::body(events, stream, meter)
            }
        }
    }

    fn model_object(&self, id: &str, provider: &str, prices: Option<&Prices>) -> Value {
        OpenAiChat.model_object(id, provider, prices)
    }

    fn model_list(&self, data: Vec<Value>, first: Option<&str>, last: Option<&str>) -> Value {
        OpenAiChat.model_list(data, first, last)
    }
}

/// The Responses API as a provider serves it (pass-through answers).
impl UpstreamApi for OpenAiResponses {
    fn endpoint(&self, base_url: &str) -> String {
        format!("{base_url}/responses")
    }

    fn auth_header(&self, secret: &str) -> (&'static str, String) {
        OpenAiChat.auth_header(secret)
    }

    fn usage(&self, usage: &Value) -> Option<TokenCounts> {
        tr_usage::openai_responses_usage(usage)
    }

    fn response_text(&self, response: &Value) -> String {
        tr_usage::responses_response_text(response)
    }
}

/// Whether the attempt that answered went to a provider serving the
/// Responses API itself (its answer passes through).
fn speaks_responses(meter: &RequestMeter) -> bool {
    meter
        .upstream_provider()
        .is_some_and(|p| p.responses_endpoint.is_some())
}

/// What translated answers echo of the client's request (`model`,
/// `instructions`, `tools`, sampling settings), as the Responses API does;
/// read without building the request's `input` again.
fn client_request(meter: &RequestMeter) -> Value {
    meter
        .request_body()
        .map_or(Value::Null, |raw| responses_echo_request(raw))
}

/// Refuses, on the operator's credentials, what a token price cannot
/// cover, naming the field.
fn refuse_unpriced(
    request: &ClientRequest,
    tool_prices: &BTreeMap<String, ExactUsd>,
) -> Result<(), ProxyError> {
    let Ok(fields) = serde_json::from_slice::<UnpricedFields>(&request.raw) else {
        // `parse` accepted the body; a field of an unexpected shape is the
        // upstream's to refuse.
        return Ok(());
    };
    if fields.background == Some(true) {
        return Err(ProxyError::invalid_param(
            "background",
            "`background: true` is refused on the operator's credentials: its usage arrives after the request ends, so it cannot be billed; attach your own provider key",
        ));
    }
    let tools = fields.tools.unwrap_or_default();
    let unpriced = tools.iter().enumerate().find_map(|(i, tool)| {
        let kind = tool.kind.as_deref()?;
        match tool_price_key(kind)? {
            Some(key) if tool_prices.contains_key(key) => None,
            _ => Some((i, kind)),
        }
    });
    if let Some((index, kind)) = unpriced {
        return Err(ProxyError::invalid_param(
            "tools",
            format!(
                "tools[{index}].type: built-in tool `{}` is billed per call upstream and the operator has not priced its calls ([builtin_tool_prices]); it is refused on the operator's credentials (attach your own provider key)",
                tollgate_core::Escaped(kind)
            ),
        ));
    }
    Ok(())
}

/// Chat fields the chat → messages translation leaves out, named as the
/// Responses fields they came from: refused, never dropped.
fn refuse_chat_only_fields(chat: &Value) -> Result<(), ProxyError> {
    for (chat_field, field, what) in [
        ("response_format", "text.format", "structured output"),
        ("reasoning_effort", "reasoning.effort", "a reasoning effort"),
    ] {
        if chat.get(chat_field).is_some_and(|v| !v.is_null()) {
            return Err(ProxyError::invalid(format!(
                "{field}: {what} cannot be translated to the Anthropic Messages API"
            )));
        }
    }
    Ok(())
}

/// Parse and validate a Responses body: `model` (and optional `models`),
/// `input` as a string or a list of items, `stream` and
/// `max_output_tokens` when present.
fn parse_responses_request(bytes: Bytes) -> Result<ClientRequest, ProxyError> {
    let fields: ResponsesFields = body::object_fields(&bytes)?;
    let (model, fallbacks) = body::model_and_fallbacks(fields.model, fields.models)?;
    let input_ok = fields
        .input
        .is_some_and(|r| r.get().starts_with('"') || r.get().starts_with('['));
    if !input_ok {
        return Err(ProxyError::invalid_param(
            "input",
            "`input` is required: a string or an array of input items",
        ));
    }
    let stream = match fields.stream.map(RawValue::get) {
        None | Some("null" | "false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ))
        }
    };
    let max_tokens = match fields.max_output_tokens.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) => Some(serde_json::from_str::<u64>(raw).map_err(|_| {
            ProxyError::invalid_param(
                "max_output_tokens",
                "`max_output_tokens` must be a positive integer",
            )
        })?),
    };
    let end_user = body::openai_end_user(fields.safety_identifier, fields.user)?;
    Ok(ClientRequest {
        end_user,
        has_fallbacks: fields.models.is_some(),
        max_tokens,
        model,
        fallbacks,
        stream,
        // Responses streams always end with their usage.
        include_usage: false,
        raw: bytes,
    })
}

/// The stream's error event in the Responses API's shape.
fn stream_error_event() -> Bytes {
    encode_event(
        Some("error"),
        &json!({
            "type": "error",
            "code": "upstream_stream_error",
            "message": "the upstream stream ended with an error",
            "param": null,
            "sequence_number": 0,
        })
        .to_string(),
    )
}

/// The response a closing event carries gets the request's cost next to
/// its usage (once per stream).
fn add_cost(relay: &RelayState, data: &mut Value) {
    if let Some(response) = data.get_mut("response") {
        relay.add_cost(response);
    }
}

/// Translated events written to the client.
fn write_events(relay: &mut RelayState, events: Vec<(&'static str, Value)>) {
    for (name, mut data) in events {
        if matches!(name, "response.completed" | "response.incomplete") {
            add_cost(relay, &mut data);
        }
        relay
            .out
            .extend_from_slice(&encode_event(Some(name), &data.to_string()));
    }
}

/// What the relay reads from a Responses stream event, borrowed from it.
#[derive(serde::Deserialize)]
struct EventProbe<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
}

/// Responses → Responses: events pass unchanged; the closing one is read
/// for usage and gets the cost.
struct Passthrough;

impl RelayEvents for Passthrough {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        let data = event.data.trim();
        let Ok(probe) = serde_json::from_str::<EventProbe>(data) else {
            tracing::warn!("skipping an upstream stream event that is not JSON");
            return;
        };
        let kind = probe.kind.as_deref().unwrap_or_default();
        match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta" => {
                if let Some(delta) = &probe.delta {
                    relay.meter.output_text.push_str(delta);
                }
                relay.out.extend_from_slice(&event.raw);
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let Ok(mut value) = serde_json::from_str::<Value>(data) else {
                    return;
                };
                if let Some(counts) = tr_usage::responses_event_usage(&value) {
                    relay.meter.reported = Some(counts);
                }
                if !relay.meter.builtin_tool_prices().is_empty() {
                    let output = value["response"]["output"].as_array().map(|items| {
                        items
                            .iter()
                            .filter_map(|i| i["type"].as_str().map(str::to_owned))
                            .collect::<Vec<_>>()
                    });
                    let prices = relay.meter.builtin_tool_prices();
                    relay.meter.tool_calls = tool_call_charges(output.unwrap_or_default(), prices);
                }
                if kind == "response.failed" {
                    relay.upstream_error = true;
                    relay.out.extend_from_slice(&event.raw);
                    return;
                }
                relay.completed = true;
                add_cost(relay, &mut value);
                relay
                    .out
                    .extend_from_slice(&encode_event(Some(kind), &value.to_string()));
            }
            "error" => {
                relay.upstream_error = true;
                relay.out.extend_from_slice(&event.raw);
            }
            _ => relay.out.extend_from_slice(&event.raw),
        }
    }

    fn finish(&mut self, _relay: &mut RelayState) {}

    fn error_event(&self) -> Bytes {
        stream_error_event()
    }
}

/// Chat Completions → Responses: each upstream chunk translated to events.
struct FromChat {
    translator: ChatToResponsesStream,
}

impl RelayEvents for FromChat {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        let data = event.data.trim();
        if data == "[DONE]" {
            relay.completed = true;
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

/// Messages → Chat Completions → Responses.
struct FromAnthropic {
    to_chat: AnthropicToOpenAiStream,
    translator: ChatToResponsesStream,
    usage: AnthropicStreamUsage,
}

impl RelayEvents for FromAnthropic {
    fn event(&mut self, event: SseEvent, relay: &mut RelayState) {
        if let Some((event_type, data)) =
            anthropic_messages::read_event(&event, &mut self.usage, relay)
        {
            for chunk in self.to_chat.push(&event_type, &data) {
                let events = self.translator.push(&chunk);
                write_events(relay, events);
            }
        }
    }

    fn finish(&mut self, relay: &mut RelayState) {
        for chunk in self.to_chat.finish() {
            let events = self.translator.push(&chunk);
            write_events(relay, events);
        }
        let events = self.translator.finish();
        write_events(relay, events);
    }

    fn error_event(&self) -> Bytes {
        stream_error_event()
    }

    fn partial_input(&self) -> Option<TokenCounts> {
        self.usage.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Result<ClientRequest, ProxyError> {
        parse_responses_request(Bytes::from(body.to_owned()))
    }

    #[test]
    fn string_and_item_inputs_are_accepted() {
        for input in [r#""hi""#, r#"[{"role":"user","content":"hi"}]"#] {
            let body =
                format!(r#"{{"model":"m","input":{input},"stream":true,"max_output_tokens":7}}"#);
            let read = parsed(&body).map(|r| (r.stream, r.max_tokens, r.model));
            assert_eq!(read.ok(), Some((true, Some(7), "m".to_owned())), "{input}");
        }
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_field() {
        for (body, param) in [
            (r#"{"input":"x"}"#, Some("model")),
            (r#"{"model":"m"}"#, Some("input")),
            (r#"{"model":"m","input":5}"#, Some("input")),
            (
                r#"{"model":"m","input":"x","stream":"yes"}"#,
                Some("stream"),
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":-1}"#,
                Some("max_output_tokens"),
            ),
            (r#"{"model":"m","input":"x","models":"n"}"#, Some("models")),
            ("[1]", None),
            ("{nope", None),
        ] {
            let refused = match parsed(body) {
                Err(ProxyError::InvalidRequest { param, .. }) => Some(param),
                _ => None,
            };
            assert_eq!(refused, Some(param), "{body}");
        }
    }

    #[test]
    fn built_in_tools_and_background_are_named_when_refused() {
        let refusal = |body: &str| match parsed(body).map(|r| refuse_unpriced(&r, &BTreeMap::new()))
        {
            Ok(Err(ProxyError::InvalidRequest { param, message })) => Some((param, message)),
            _ => None,
        };
        let tools = r#"{"model":"m","input":"x","tools":[{"type":"function","name":"f"},{"type":"web_search"}]}"#;
        let (param, message) = refusal(tools).unwrap_or_default();
        assert_eq!(param, Some("tools"));
        assert!(
            message.contains("tools[1].type") && message.contains("web_search"),
            "{message}"
        );
        let background = r#"{"model":"m","input":"x","background":true}"#;
        assert_eq!(refusal(background).map(|r| r.0), Some(Some("background")));
        let fine = r#"{"model":"m","input":"x","background":false,"tools":[{"type":"function","name":"f"}]}"#;
        assert_eq!(refusal(fine), None);
    }

    #[test]
    fn built_in_calls_are_counted_per_priced_tool() {
        assert_eq!(tool_price_key("function"), None);
        assert_eq!(tool_price_key("custom"), None);
        assert_eq!(
            tool_price_key("web_search_preview_2025_03_11"),
            Some(Some("web_search"))
        );
        assert_eq!(
            tool_price_key("computer_use_preview"),
            Some(Some("computer"))
        );
        assert_eq!(tool_price_key("file_search"), Some(Some("file_search")));
        assert_eq!(tool_price_key("something_new"), Some(None));
        let prices: BTreeMap<String, ExactUsd> = [
            (
                "web_search".to_owned(),
                ExactUsd("0.01".parse().unwrap_or_default()),
            ),
            (
                "mcp".to_owned(),
                ExactUsd("0.002".parse().unwrap_or_default()),
            ),
        ]
        .into();
        let output = [
            "web_search_call",
            "message",
            "function_call",
            "web_search_call",
            "mcp_call",
            "file_search_call",
            "reasoning",
        ];
        let charges = tool_call_charges(output, &prices);
        let counted: Vec<(&str, u64)> =
            charges.iter().map(|c| (c.tool.as_str(), c.calls)).collect();
        assert_eq!(counted, [("web_search", 2), ("mcp", 1)]);
    }
}
