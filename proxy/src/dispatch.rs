//! Request handling shared by both client APIs: authenticate, parse,
//! resolve candidates, try them in order with failover, and answer.

use crate::edge;
use crate::error::ProxyError;
use crate::failover::{Attempt, Failover, Outcome as AttemptOutcome};
use crate::gateway::{Caller, Candidate, Credential, Gateway};
use crate::meter::RequestMeter;
use crate::relay::Relay;
use crate::upstream::{self, UpstreamRequest, UpstreamStream};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::pricing::{cost_for, AppliedPlan};
use tollgate_core::{ApiSurface, CredentialSource, TokenCounts, Usd};
use tollgate_translate::{request as tr_request, response as tr_response, usage as tr_usage};

const ANTHROPIC_VERSION_DEFAULT: &str = "2023-06-01";
/// Used as Anthropic's required `max_tokens` when neither the request nor the catalog says.
const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

pub const HEADER_PROVIDER: &str = "x-tollgate-provider";
pub const HEADER_MODEL: &str = "x-tollgate-model";
pub const HEADER_EVENT_ID: &str = "x-tollgate-event-id";
pub const HEADER_ATTEMPTS: &str = "x-tollgate-attempts";
/// The request's cost in USD (exact decimals), on non-streamed responses;
/// streams carry it as `usage.tollgate_cost` when the client asked for usage.
pub const HEADER_COST_FEE: &str = "x-tollgate-cost-fee";
pub const HEADER_COST_UPSTREAM: &str = "x-tollgate-cost-upstream";
pub const HEADER_COST_TOTAL: &str = "x-tollgate-cost-total";

/// The access key, from the headers (`tollgate_core::secrets::request_token`).
pub fn extract_token(headers: &HeaderMap) -> Option<&str> {
    tollgate_core::secrets::request_token(headers)
}

/// Entry point for `/v1/chat/completions` (OpenAI) and `/v1/messages`
/// (Anthropic). The key is checked from the headers before any body byte is
/// read: a refused request's body is never buffered (the edge drains it).
pub async fn handle(gateway: Arc<Gateway>, api: ApiSurface, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let caller = match extract_token(&headers)
        .ok_or(ProxyError::MissingKey)
        .and_then(|token| gateway.authenticate(token))
    {
        Ok(caller) => caller,
        Err(err) => {
            // No account to attribute: counted in metrics, no usage event.
            let metrics = &gateway.metrics;
            metrics.errors.with_label_values(&[err.kind()]).inc();
            metrics
                .requests
                .with_label_values(&[api.as_str(), "4xx"])
                .inc();
            return err.into_response_for(api);
        }
    };
    let mut meter = RequestMeter::start(
        gateway.clone(),
        started,
        caller.account_id.clone(),
        caller.key_id.clone(),
        api,
    );
    meter.plan = caller.price_plan();
    let body = edge::read_body(body, gateway.config.server.max_body_bytes).await;
    match run(&gateway, &caller, api, &headers, body, &mut meter, started).await {
        Ok(Outcome::Complete(mut response)) => {
            add_trace_headers(&mut response, &meter);
            response
        }
        Ok(Outcome::Stream(start)) => {
            let StreamStart {
                candidate,
                first,
                rest,
                include_usage,
            } = start;
            let mut response = Response::new(Body::empty());
            add_trace_headers(&mut response, &meter);
            let relay = Relay::new(
                api,
                candidate.provider.spec.api,
                include_usage,
                first,
                rest,
                meter,
            );
            *response.body_mut() = Body::from_stream(relay);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Err(err) => {
            meter.finish(err.status().as_u16(), Some(err.kind()), false);
            let mut response = err.into_response_for(api);
            add_trace_headers(&mut response, &meter);
            response
        }
    }
}

fn add_trace_headers(response: &mut Response, meter: &RequestMeter) {
    // Names made at compile time: a `&str` name is parsed on every insert.
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    const EVENT_ID: HeaderName = HeaderName::from_static(HEADER_EVENT_ID);
    const PROVIDER: HeaderName = HeaderName::from_static(HEADER_PROVIDER);
    const MODEL: HeaderName = HeaderName::from_static(HEADER_MODEL);
    const ATTEMPTS: HeaderName = HeaderName::from_static(HEADER_ATTEMPTS);
    const COST_FEE: HeaderName = HeaderName::from_static(HEADER_COST_FEE);
    const COST_UPSTREAM: HeaderName = HeaderName::from_static(HEADER_COST_UPSTREAM);
    const COST_TOTAL: HeaderName = HeaderName::from_static(HEADER_COST_TOTAL);
    let headers = response.headers_mut();
    // Room for all of them at once rather than growing the map twice.
    headers.reserve(8);
    let mut id = uuid::Uuid::encode_buffer();
    let id = meter.event_id.0.hyphenated().encode_lower(&mut id);
    if let Ok(v) = HeaderValue::from_str(id) {
        // SDKs surface `x-request-id` as the request id (e.g. openai's `_request_id`).
        headers.insert(REQUEST_ID, v.clone());
        headers.insert(EVENT_ID, v);
    }
    if let Some(v) = meter.provider().and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(PROVIDER, v);
    }
    if let Some(v) = meter
        .model_served()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        headers.insert(MODEL, v);
    }
    if meter.attempts > 0 {
        headers.insert(ATTEMPTS, HeaderValue::from(meter.attempts));
    }
    if let Some(cost) = &meter.cost {
        for (name, amount) in [
            (COST_FEE, cost.fee),
            (COST_UPSTREAM, cost.upstream),
            (COST_TOTAL, cost.total()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&amount.to_string()) {
                headers.insert(name, v);
            }
        }
    }
}

// Returned once per request and moved straight out: a box would only add
// an allocation to every stream.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Complete(Response),
    Stream(StreamStart),
}

struct StreamStart {
    candidate: Candidate,
    first: Bytes,
    rest: UpstreamStream,
    include_usage: bool,
}

/// What the gateway needs from the client's request body.
struct ClientRequest {
    /// The body as received: passed upstream untouched when nothing in it
    /// changes, and parsed further only for translation or a token estimate.
    raw: Bytes,
    /// Whether the body has a `models` key (which never goes upstream).
    has_fallbacks: bool,
    /// The output cap the client asked for, if any.
    max_tokens: Option<u64>,
    model: String,
    fallbacks: Vec<String>,
    stream: bool,
    include_usage: bool,
}

/// The request fields the gateway reads, borrowed from the body (a JSON
/// `null` included, as the text `null`); the rest is skipped by the parser,
/// not built, so a large prompt costs one scan.
#[derive(serde::Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    models: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

/// A member that is present, whatever its value (`null` too).
pub(crate) fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue as serde::Deserialize>::deserialize(deserializer).map(Some)
}

fn raw_u64(raw: Option<&RawValue>) -> Option<u64> {
    raw.and_then(|r| serde_json::from_str::<u64>(r.get()).ok())
}

fn parse_request(
    api: ApiSurface,
    body: Result<Bytes, ProxyError>,
) -> Result<ClientRequest, ProxyError> {
    let bytes = body?;
    // Only an object may go on to the typed parse (which would also accept
    // an array as a struct).
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => ProxyError::invalid("request body must be a JSON object"),
                Err(e) => ProxyError::invalid(format!("request body is not valid JSON: {e}")),
            },
        );
    }
    let fields: RequestFields = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::invalid(format!("request body is not valid JSON: {e}")))?;
    let model = match fields
        .model
        .map(|r| serde_json::from_str::<String>(r.get()))
    {
        Some(Ok(m)) if !m.is_empty() => m,
        _ => {
            return Err(ProxyError::invalid_param(
                "model",
                "`model` is required and must be a non-empty string",
            ))
        }
    };
    let bad_fallbacks =
        || ProxyError::invalid_param("models", "`models` must be an array of model names");
    let fallbacks = match fields.models.map(RawValue::get) {
        None | Some("null") => Vec::new(),
        Some(raw) => serde_json::from_str::<Vec<String>>(raw)
            .ok()
            .filter(|names| names.iter().all(|n| !n.is_empty()))
            .ok_or_else(bad_fallbacks)?,
    };
    if !fields.messages.is_some_and(|r| r.get().starts_with('[')) {
        return Err(ProxyError::invalid_param(
            "messages",
            "`messages` is required and must be an array",
        ));
    }
    let max_tokens_field = raw_u64(fields.max_tokens);
    if api == ApiSurface::Anthropic && max_tokens_field.is_none() {
        return Err(ProxyError::invalid_param(
            "max_tokens",
            "`max_tokens` is required and must be a positive integer",
        ));
    }
    let stream = match fields.stream.map(|r| r.get()) {
        None | Some("null") => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "stream",
                "`stream` must be a boolean",
            ))
        }
    };
    #[derive(serde::Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    let include_usage = fields
        .stream_options
        .and_then(|r| serde_json::from_str::<StreamOptions>(r.get()).ok())
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let max_tokens = raw_u64(fields.max_completion_tokens).or(max_tokens_field);
    Ok(ClientRequest {
        has_fallbacks: fields.models.is_some(),
        max_tokens,
        model,
        fallbacks,
        stream,
        include_usage,
        raw: bytes,
    })
}

/// The client's body as a JSON value (for translation).
fn request_value(request: &ClientRequest) -> Result<Value, ProxyError> {
    serde_json::from_slice(&request.raw)
        .map_err(|e| ProxyError::invalid(format!("request body is not valid JSON: {e}")))
}

/// The body to send upstream for one candidate, translated if the provider
/// speaks the other API.
fn upstream_body(
    api: ApiSurface,
    candidate: &Candidate,
    request: &ClientRequest,
) -> Result<Bytes, ProxyError> {
    let value = match (api, candidate.provider.spec.api) {
        (ApiSurface::Openai, ApiSurface::Openai)
        | (ApiSurface::Anthropic, ApiSurface::Anthropic) => {
            // Ask an OpenAI upstream for usage in the stream's last chunk;
            // the relay hides that chunk from clients that did not ask.
            let stream_usage = api == ApiSurface::Openai && request.stream;
            if candidate.upstream_model == request.model && !request.has_fallbacks && !stream_usage
            {
                // Usual case: nothing changes, the bytes go as they came.
                return Ok(request.raw.clone());
            }
            let body: Members = serde_json::from_slice(&request.raw)
                .map_err(|e| ProxyError::invalid(format!("request body is not valid JSON: {e}")))?;
            let patched = Patched {
                body: &body.0,
                model: &candidate.upstream_model,
                stream_usage,
            };
            return serde_json::to_vec(&patched).map(Bytes::from).map_err(|e| {
                ProxyError::Internal(format!("upstream body did not serialize: {e}"))
            });
        }
        (ApiSurface::Openai, ApiSurface::Anthropic) => tr_request::openai_to_anthropic_request(
            &request_value(request)?,
            &candidate.upstream_model,
            candidate
                .max_output_tokens
                .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
        )
        .map_err(|e| ProxyError::invalid(e.to_string()))?,
        (ApiSurface::Anthropic, ApiSurface::Openai) => tr_request::anthropic_to_openai_request(
            &request_value(request)?,
            &candidate.upstream_model,
        )
        .map_err(|e| ProxyError::invalid(e.to_string()))?,
    };
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ProxyError::Internal(format!("upstream body did not serialize: {e}")))
}

/// A JSON object's members in their order, values left as raw text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The client's body with `model` replaced, `models` dropped and, for
/// OpenAI streams, usage requested — every other member copied as it came.
struct Patched<'a> {
    body: &'a [(Cow<'a, str>, &'a RawValue)],
    model: &'a str,
    stream_usage: bool,
}

impl serde::Serialize for Patched<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut options_written = false;
        for (key, value) in self.body {
            match key.as_ref() {
                "model" => map.serialize_entry(key, self.model)?,
                "models" => {}
                "stream_options" if self.stream_usage => {
                    options_written = true;
                    let mut options =
                        serde_json::from_str::<serde_json::Map<String, Value>>(value.get())
                            .unwrap_or_default();
                    options.insert("include_usage".into(), Value::Bool(true));
                    map.serialize_entry(key, &options)?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        if self.stream_usage && !options_written {
            map.serialize_entry(
                "stream_options",
                &serde_json::json!({"include_usage": true}),
            )?;
        }
        map.end()
    }
}

fn upstream_request(
    api: ApiSurface,
    headers: &HeaderMap,
    candidate: &Candidate,
    credential: &Credential,
    body: Bytes,
) -> UpstreamRequest {
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = candidate.provider.endpoint.clone();
    let upstream_headers = request.headers_mut();
    upstream_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = &credential.auth_header {
        upstream_headers.insert(*name, value.clone());
    }
    if candidate.provider.spec.api == ApiSurface::Anthropic {
        let version = match api {
            ApiSurface::Anthropic => headers
                .get("anthropic-version")
                .cloned()
                .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION_DEFAULT)),
            ApiSurface::Openai => HeaderValue::from_static(ANTHROPIC_VERSION_DEFAULT),
        };
        upstream_headers.insert("anthropic-version", version);
        if api == ApiSurface::Anthropic {
            if let Some(beta) = headers.get("anthropic-beta") {
                upstream_headers.insert("anthropic-beta", beta.clone());
            }
        }
    }
    request
}

fn upstream_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}

async fn run(
    gateway: &Arc<Gateway>,
    caller: &Caller,
    api: ApiSurface,
    headers: &HeaderMap,
    body: Result<Bytes, ProxyError>,
    meter: &mut RequestMeter,
    started: Instant,
) -> Result<Outcome, ProxyError> {
    let routing = &gateway.config.routing;
    let request = parse_request(api, body)?;
    meter.model_requested = request.model.clone();
    meter.streamed = request.stream;
    // A small body is usually a slice of the connection's read buffer: a
    // copy lets that buffer go while a long stream runs.
    meter.set_request(if request.raw.len() < 64 * 1024 {
        Bytes::copy_from_slice(&request.raw)
    } else {
        request.raw.clone()
    });

    let mut candidates = Vec::with_capacity(1 + request.fallbacks.len());
    let mut seen = HashSet::new();
    for name in std::iter::once(&request.model).chain(request.fallbacks.iter()) {
        let candidate = gateway.resolve(name, caller)?;
        // The same (provider, model) is never tried twice.
        if seen.insert((
            candidate.provider.spec.id.clone(),
            candidate.upstream_model.clone(),
        )) {
            candidates.push(candidate);
        }
    }

    // A model without credentials (none configured, or an unpriced model
    // whose operator credentials were withheld) is skipped like a failed
    // attempt, so a fallback in `models` can still answer; when no candidate
    // has any, the first one's reason is the answer, before the request uses
    // any rate-limit budget or credit.
    if candidates.iter().all(|c| c.credentials.is_empty()) {
        if let Some(first) = candidates.first() {
            return Err(first.unusable());
        }
    }

    // Only a request that would go upstream uses the key's budget: one
    // refused above (bad body, unknown or not-allowed model) does not.
    let limits = caller.rate_limits();
    gateway
        .limiter
        .admit(&caller.key_id, limits)
        .map_err(|limited| ProxyError::RateLimited {
            limit: limited.limit,
            retry_after_secs: limited.retry_after_secs,
        })?;
    meter.rate_limits = limits;

    let max_cost = max_cost(&candidates, &request, meter.plan.as_ref());
    gateway
        .admission
        .admit(&caller.account_id, meter.request_seq, max_cost)
        .map_err(|refused| ProxyError::InsufficientCredits {
            available: refused.available.to_string(),
            balance: refused.balance.to_string(),
            reserved: refused.held.to_string(),
        })?;
    meter.reserved = gateway.admission.enforce;

    let deadline = started + Duration::from_millis(routing.total_timeout_ms);
    let attempt_timeout = Duration::from_millis(routing.attempt_timeout_ms);
    let read_timeout = Duration::from_millis(routing.read_timeout_ms);
    let metrics = &gateway.metrics;
    let mut failover = Failover::default();
    let mut unusable: Option<ProxyError> = None;
    let mut untranslatable: Option<ProxyError> = None;

    'candidates: for candidate in candidates {
        if candidate.credentials.is_empty() {
            let why = candidate.unusable();
            failover.passed_over(&candidate, &why);
            unusable.get_or_insert(why);
            continue;
        }
        let body = match upstream_body(api, &candidate, &request) {
            Ok(body) => body,
            // This candidate cannot take the request; a later one may.
            Err(err @ ProxyError::InvalidRequest { .. }) => {
                failover.passed_over(&candidate, &err);
                untranslatable.get_or_insert(err);
                continue;
            }
            Err(err) => return Err(err),
        };
        for credential in &candidate.credentials {
            let now = Instant::now();
            if now >= deadline {
                failover.deadline_passed(routing.total_timeout_ms);
                break 'candidates;
            }
            if meter.attempts > 0 {
                metrics.failovers.inc();
            }
            meter.attempt(&candidate, credential);
            let attempt = Attempt::start(&candidate, credential);
            let budget = attempt_timeout.min(deadline - now);
            let send = gateway.client.request(upstream_request(
                api,
                headers,
                &candidate,
                credential,
                body.clone(),
            ));
            let response = match tokio::time::timeout(budget, send).await {
                Err(_) => {
                    let why = format!("no response within {} ms", budget.as_millis());
                    failover.record(metrics, attempt.ended(AttemptOutcome::Timeout, why));
                    continue;
                }
                Ok(Err(err)) => {
                    let outcome = if err.is_connect() {
                        AttemptOutcome::ConnectError
                    } else {
                        AttemptOutcome::Error
                    };
                    let why = format!("{}: {}", outcome.as_str(), upstream::describe(&err));
                    let attempt = attempt
                        .ended(outcome, why)
                        .timed_out(upstream::is_timeout(&err));
                    failover.record(metrics, attempt);
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            meter.upstream_responded();
            meter.upstream_request_id = upstream_request_id(response.headers());
            let status = response.status();
            if let Some(failed) = retryable_status(status) {
                failover.record(metrics, failed(attempt));
                continue;
            }
            if !status.is_success() {
                // Not retryable (the request itself is wrong): return it as is.
                let attempt = attempt
                    .ended(AttemptOutcome::ClientError, "")
                    .with_status(status);
                failover.record(metrics, attempt);
                let bytes = tokio::time::timeout(read_timeout, upstream::body_bytes(response))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                meter.finish(status.as_u16(), Some("upstream_rejected"), false);
                return Ok(Outcome::Complete(upstream_error_response(
                    api,
                    candidate.provider.spec.api,
                    status,
                    bytes,
                )));
            }
            if request.stream {
                let mut stream = upstream::body_stream(response);
                let remaining = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                let first =
                    tokio::time::timeout(attempt_timeout.min(remaining), stream.next()).await;
                let (why, timed_out) = match first {
                    Ok(Some(Ok(first))) => {
                        failover.record(
                            metrics,
                            attempt.ended(AttemptOutcome::Ok, "").with_status(status),
                        );
                        return Ok(Outcome::Stream(StreamStart {
                            candidate,
                            first,
                            rest: stream,
                            include_usage: request.include_usage,
                        }));
                    }
                    Ok(Some(Err(err))) => (
                        format!(
                            "stream failed before its first byte: {}",
                            upstream::describe(&err)
                        ),
                        false,
                    ),
                    Ok(None) => ("stream ended before its first byte".to_owned(), false),
                    Err(_) => ("no stream data in time".to_owned(), true),
                };
                let attempt = attempt
                    .ended(AttemptOutcome::StreamError, why)
                    .with_status(status)
                    .timed_out(timed_out);
                failover.record(metrics, attempt);
                continue;
            }
            let bytes =
                match tokio::time::timeout(read_timeout, upstream::body_bytes(response)).await {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(err)) => {
                        let why = format!("body failed: {}", upstream::describe(&err));
                        failover.record(
                            metrics,
                            attempt
                                .ended(AttemptOutcome::Error, why)
                                .with_status(status),
                        );
                        continue;
                    }
                    Err(_) => {
                        let attempt = attempt
                            .ended(AttemptOutcome::Timeout, "body not received in time")
                            .with_status(status);
                        failover.record(metrics, attempt);
                        continue;
                    }
                };
            match complete_response(api, &candidate, bytes, meter) {
                Ok(response) => {
                    failover.record(
                        metrics,
                        attempt.ended(AttemptOutcome::Ok, "").with_status(status),
                    );
                    // The cost headers need the count: made off the workers.
                    meter.estimate_off_runtime(200).await;
                    meter.finish(200, None, false);
                    return Ok(Outcome::Complete(response));
                }
                Err(why) => {
                    let attempt = attempt
                        .ended(AttemptOutcome::InvalidResponse, why)
                        .with_status(status);
                    failover.record(metrics, attempt);
                }
            }
        }
    }

    if meter.attempts == 0 {
        if let Some(err) = untranslatable {
            return Err(err);
        }
        if let Some(err) = unusable {
            return Err(err);
        }
    }
    Err(failover.into_error(meter.attempts))
}

/// An upstream status worth trying another credential or candidate for:
/// 429, 5xx, and 401/403 (the credential Tollgate used was refused; the
/// upstream's body, which may echo part of the key, never reaches the
/// client as if its own Tollgate key were wrong).
fn retryable_status(status: StatusCode) -> Option<impl FnOnce(Attempt) -> Attempt> {
    let (outcome, why) = if status == StatusCode::TOO_MANY_REQUESTS {
        (
            AttemptOutcome::RateLimited,
            format!("upstream answered {}", status.as_u16()),
        )
    } else if status.is_server_error() {
        (
            AttemptOutcome::ServerError,
            format!("upstream answered {}", status.as_u16()),
        )
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        (
            AttemptOutcome::CredentialRejected,
            format!("upstream refused the credential ({})", status.as_u16()),
        )
    } else {
        return None;
    };
    Some(move |attempt: Attempt| {
        attempt
            .ended(outcome, why)
            .with_status(status)
            .timed_out(false)
    })
}

/// The most a request can cost on any of its candidates: every body byte
/// as an input token plus the output cap, at operator prices.
fn max_cost(candidates: &[Candidate], request: &ClientRequest, plan: Option<&AppliedPlan>) -> Usd {
    candidates
        .iter()
        .map(|candidate| {
            let output = request
                .max_tokens
                .or(candidate.max_output_tokens.map(u64::from))
                .unwrap_or(u64::from(DEFAULT_MAX_OUTPUT_TOKENS));
            let tokens = TokenCounts {
                input: request.raw.len() as u64,
                output,
                ..TokenCounts::default()
            };
            cost_for(
                &tokens,
                &candidate.prices,
                Some(CredentialSource::Operator),
                plan,
            )
            .total()
        })
        .max()
        .unwrap_or(Usd::ZERO)
}

/// A successful non-streamed upstream body → the client's response. Errors
/// (unparseable body) are retryable: nothing reached the client yet.
fn complete_response(
    api: ApiSurface,
    candidate: &Candidate,
    bytes: Bytes,
    meter: &mut RequestMeter,
) -> Result<Response, String> {
    let provider_api = candidate.provider.spec.api;
    if api == provider_api {
        // Usual case: read only `usage` (the rest is skipped, not built) and
        // pass the body through untouched.
        #[derive(serde::Deserialize)]
        struct UsageProbe {
            usage: Option<Value>,
        }
        let probe: UsageProbe = serde_json::from_slice(&bytes)
            .map_err(|_| "upstream returned a body that is not a JSON object".to_owned())?;
        let reported = probe.usage.as_ref().and_then(|u| match provider_api {
            ApiSurface::Openai => tr_usage::openai_usage(u),
            ApiSurface::Anthropic => tr_usage::anthropic_usage(u),
        });
        if let Some(reported) = reported.filter(|r| !r.is_zero()) {
            meter.reported = Some(reported);
            return Ok(json_response(bytes));
        }
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| "upstream returned a body that is not JSON".to_owned())?;
    if !value.is_object() {
        return Err("upstream returned a JSON body that is not an object".into());
    }
    let reported = match provider_api {
        ApiSurface::Openai => value.get("usage").and_then(tr_usage::openai_usage),
        ApiSurface::Anthropic => value.get("usage").and_then(tr_usage::anthropic_usage),
    };
    if reported.is_none_or(|r| r.is_zero()) {
        let mut text = crate::tokenize::TextWindow::output();
        text.push_str(&match provider_api {
            ApiSurface::Openai => tr_usage::openai_response_text(&value),
            ApiSurface::Anthropic => tr_usage::anthropic_response_text(&value),
        });
        meter.output_text = text;
    }
    meter.reported = reported;
    let body = if api == provider_api {
        bytes
    } else {
        let client_model = meter.model_requested.clone();
        let translated = match provider_api {
            ApiSurface::Anthropic => {
                tr_response::anthropic_to_openai_response(&value, &client_model)
            }
            ApiSurface::Openai => tr_response::openai_to_anthropic_response(&value, &client_model),
        };
        Bytes::from(serde_json::to_vec(&translated).map_err(|e| e.to_string())?)
    };
    Ok(json_response(body))
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An upstream's non-retryable error, in the client's API shape.
fn upstream_error_response(
    client: ApiSurface,
    provider: ApiSurface,
    status: StatusCode,
    bytes: Bytes,
) -> Response {
    if client == provider {
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let value = serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| {
        Value::String(String::from_utf8_lossy(&bytes).chars().take(2000).collect())
    });
    let translated = match provider {
        ApiSurface::Anthropic => tr_response::anthropic_error_to_openai(status.as_u16(), &value),
        ApiSurface::Openai => tr_response::openai_error_to_anthropic(status.as_u16(), &value),
    };
    (status, axum::Json(translated)).into_response()
}
