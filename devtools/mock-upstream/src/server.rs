//! HTTP routing and the shared request pipeline of the three generation APIs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::embeddings::{EmbeddingRequest, UsageReport};
use crate::plan::{self, ReplyPlan, Usage};
use crate::rules::{Action, Rule, RuleSlot};
use crate::sse::FrameStream;
use crate::{anthropic, openai, responses, Inner, RecordedRequest};

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 << 20;

/// Fixed `created` timestamp so response bodies are fully deterministic.
pub(crate) const CREATED: u64 = 1_700_000_000;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Which provider API a request came in on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Api {
    /// OpenAI chat completions.
    OpenAi,
    Anthropic,
    /// OpenAI Responses (OpenAI's error shape and `x-request-id`).
    Responses,
}

/// Per-request values the renderers need.
pub(crate) struct Ctx<'a> {
    /// The request number `N` used in every id.
    pub(crate) n: u64,
    pub(crate) model: &'a str,
    /// OpenAI `stream_options.include_usage`.
    pub(crate) include_usage: bool,
    /// Responses: the request settings the Response object repeats.
    pub(crate) echo: Option<&'a responses::Echo>,
}

/// Rendered stream frames and where the content frames sit among them.
pub(crate) struct Frames {
    pub(crate) frames: Vec<Bytes>,
    pub(crate) content_start: usize,
    pub(crate) content_len: usize,
}

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses_api))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route(
            "/__mock/rules",
            post(add_rule).delete(clear_rules).get(list_rules),
        )
        .route(
            "/__mock/requests",
            get(list_requests).delete(clear_requests),
        )
        .route("/__mock/stats", get(stats))
        .fallback(not_found)
        .with_state(inner)
}

async fn chat_completions(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    handle(inner, Api::OpenAi, req).await
}

async fn messages(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    handle(inner, Api::Anthropic, req).await
}

async fn responses_api(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    handle(inner, Api::Responses, req).await
}

/// OpenAI embeddings: the shared request numbering, recording and rules,
/// its own rendering (`crate::embeddings`).
async fn embeddings(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let n = inner.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return error_response(Api::OpenAi, n, 413, "request body unreadable or too large");
    };
    let json = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let key = api_key(&parts.headers);
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let request = EmbeddingRequest::read(&json);
    // Invalid requests do not consume rule budgets.
    let rule = match request {
        Ok(_) => inner.pick_rule(key, json.get("model").and_then(Value::as_str)),
        Err(_) => None,
    };
    if inner.record {
        record(&inner, &parts, key, json, &bytes);
    }
    let request = match request {
        Ok(request) => request,
        Err(msg) => return error_response(Api::OpenAi, n, 400, msg),
    };
    let render = |usage| {
        let body = json_bytes(&request.response(&model, usage));
        base_response(Api::OpenAi, n, StatusCode::OK, Body::from(body), false)
    };
    let Some(slot) = rule else {
        return render(UsageReport::Honest);
    };
    match &slot.rule.action {
        Action::Fail { status, body } => fail_response(Api::OpenAi, n, *status, body.as_ref()),
        Action::Delay { before_headers } => {
            if !wait(&inner, *before_headers).await {
                return error_response(Api::OpenAi, n, 503, "mock upstream shutting down");
            }
            render(UsageReport::Honest)
        }
        Action::Reply {
            omit_usage,
            zero_usage,
            ..
        } => render(match (omit_usage, zero_usage) {
            (true, _) => UsageReport::Omitted,
            (false, true) => UsageReport::Zero,
            (false, false) => UsageReport::Honest,
        }),
        Action::Garbage => garbage(Api::OpenAi, n, false),
        Action::Events { body } => events(Api::OpenAi, n, body),
        Action::CutStream { .. } => {
            // Headers and half the JSON, then an aborted connection.
            let body = Bytes::from(json_bytes(&request.response(&model, UsageReport::Honest)));
            let half = body.len() / 2;
            let frames = vec![body.slice(..half), body.slice(half..)];
            let stream = FrameStream::new(frames, Duration::ZERO, Some(1), false, inner.clone());
            base_response(
                Api::OpenAi,
                n,
                StatusCode::OK,
                Body::from_stream(stream),
                false,
            )
        }
    }
}

/// Anthropic's token count: `{"input_tokens": words}`, the words the
/// messages endpoint would report as input for the same body. Rules apply
/// as on the API endpoints (fail, delay, garbage; `zero_usage` counts 0;
/// other reply overrides are ignored).
async fn count_tokens(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let n = inner.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return error_response(
            Api::Anthropic,
            n,
            413,
            "request body unreadable or too large",
        );
    };
    let parsed = serde_json::from_slice::<Value>(&bytes).ok();
    let invalid = match &parsed {
        Some(json) if json.is_object() => {
            if !parts.headers.contains_key(ANTHROPIC_VERSION) {
                Some("anthropic-version: header is required")
            } else if !json.get("messages").is_some_and(Value::is_array) {
                Some("messages: Field required")
            } else {
                None
            }
        }
        _ => Some("request body must be a JSON object"),
    };
    let json =
        parsed.unwrap_or_else(|| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let key = api_key(&parts.headers);
    let rule = if invalid.is_none() {
        inner.pick_rule(key, json.get("model").and_then(Value::as_str))
    } else {
        None
    };
    let words = plan::anthropic_prompt_words(&json);
    if inner.record {
        record(&inner, &parts, key, json, &bytes);
    }
    if let Some(msg) = invalid {
        return error_response(Api::Anthropic, n, 400, msg);
    }
    let count = |tokens: u64| {
        let body = json_bytes(&json!({ "input_tokens": tokens }));
        base_response(Api::Anthropic, n, StatusCode::OK, Body::from(body), false)
    };
    match rule.as_ref().map(|slot| &slot.rule.action) {
        None | Some(Action::CutStream { .. }) => count(words),
        Some(Action::Reply { zero_usage, .. }) => count(if *zero_usage { 0 } else { words }),
        Some(Action::Fail { status, body }) => {
            fail_response(Api::Anthropic, n, *status, body.as_ref())
        }
        Some(Action::Delay { before_headers }) => {
            if !wait(&inner, *before_headers).await {
                return error_response(Api::Anthropic, n, 503, "mock upstream shutting down");
            }
            count(words)
        }
        Some(Action::Garbage) => garbage(Api::Anthropic, n, false),
        Some(Action::Events { body }) => events(Api::Anthropic, n, body),
    }
}

/// The API key from `Authorization: Bearer X`, else `x-api-key: X`.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|v| {
            // `get` instead of slicing: a short or non-ASCII header must not panic.
            let scheme = v.get(..7)?;
            scheme
                .eq_ignore_ascii_case("bearer ")
                .then(|| v.get(7..).unwrap_or("").trim())
        });
    bearer.or_else(|| {
        headers
            .get(X_API_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

async fn handle(inner: Arc<Inner>, api: Api, req: Request) -> Response {
    let n = inner.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return error_response(api, n, 413, "request body unreadable or too large");
    };
    let (json, is_json) = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => (v, true),
        Err(_) => (
            Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            false,
        ),
    };
    let key = api_key(&parts.headers);
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let stream = json.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = json
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let words = match api {
        Api::OpenAi => plan::openai_prompt_words(&json),
        Api::Anthropic => plan::anthropic_prompt_words(&json),
        Api::Responses => plan::responses_prompt_words(&json),
    };
    // Copied out before the body is recorded (which takes it).
    let echo = (api == Api::Responses).then(|| responses::Echo::read(&json));
    let invalid = invalid_reason(api, &parts.headers, &json, is_json);
    // Invalid requests do not consume rule budgets.
    let rule = if invalid.is_none() {
        inner.pick_rule(key, json.get("model").and_then(Value::as_str))
    } else {
        None
    };
    if inner.record {
        // Recorded before any delay so tests can observe requests still in flight.
        record(&inner, &parts, key, json, &bytes);
    }
    if let Some(msg) = invalid {
        return error_response(api, n, 400, msg);
    }
    let ctx = Ctx {
        n,
        model: &model,
        include_usage,
        echo: echo.as_ref(),
    };
    match rule {
        None => reply(
            &inner,
            api,
            &ctx,
            stream,
            &default_plan(&inner, words, None),
        ),
        Some(slot) => apply_rule(&inner, api, &ctx, stream, words, &slot).await,
    }
}

/// Why the request is refused as the real API would refuse it, if it is.
fn invalid_reason(
    api: Api,
    headers: &HeaderMap,
    json: &Value,
    is_json: bool,
) -> Option<&'static str> {
    if !is_json || !json.is_object() {
        Some("request body must be a JSON object")
    } else if api == Api::Anthropic && !headers.contains_key(ANTHROPIC_VERSION) {
        Some("anthropic-version: header is required")
    } else if api == Api::Anthropic && json.get("max_tokens").is_none_or(Value::is_null) {
        Some("max_tokens: Field required")
    } else {
        None
    }
}

fn record(
    inner: &Inner,
    parts: &axum::http::request::Parts,
    key: Option<&str>,
    body: Value,
    raw: &[u8],
) {
    let recorded = RecordedRequest {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        api_key: key.map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        raw_body: raw.to_vec(),
        version: format!("{:?}", parts.version),
    };
    inner.requests.lock().push(recorded);
}

/// The reply when no rule says otherwise: the default content, honest usage.
fn default_plan(inner: &Inner, words: u64, cut_after: Option<usize>) -> ReplyPlan {
    ReplyPlan {
        content: inner.default_content.clone(),
        usage: Usage {
            input: words,
            output: inner.default_content.completion_tokens(),
            ..Usage::default()
        },
        omit_usage: false,
        zero_usage: false,
        chunk_delay: inner.chunk_delay,
        cut_after,
    }
}

async fn apply_rule(
    inner: &Arc<Inner>,
    api: Api,
    ctx: &Ctx<'_>,
    stream: bool,
    words: u64,
    slot: &RuleSlot,
) -> Response {
    match &slot.rule.action {
        Action::Fail { status, body } => fail_response(api, ctx.n, *status, body.as_ref()),
        Action::Delay { before_headers } => {
            if !wait(inner, *before_headers).await {
                return error_response(api, ctx.n, 503, "mock upstream shutting down");
            }
            reply(inner, api, ctx, stream, &default_plan(inner, words, None))
        }
        Action::Reply {
            omit_usage,
            cached_tokens,
            cache_write_5m,
            cache_write_1h,
            reasoning_tokens,
            zero_usage,
            chunk_delay,
            ..
        } => {
            let content = slot
                .content
                .clone()
                .unwrap_or_else(|| inner.default_content.clone());
            let usage = if *zero_usage {
                Usage::default()
            } else {
                Usage {
                    input: words,
                    output: content.completion_tokens() + *reasoning_tokens,
                    cache_read: *cached_tokens,
                    cache_write_5m: *cache_write_5m,
                    cache_write_1h: *cache_write_1h,
                    reasoning: *reasoning_tokens,
                }
            };
            let plan = ReplyPlan {
                content,
                usage,
                omit_usage: *omit_usage,
                zero_usage: *zero_usage,
                chunk_delay: chunk_delay.unwrap_or(inner.chunk_delay),
                cut_after: None,
            };
            reply(inner, api, ctx, stream, &plan)
        }
        Action::Garbage => garbage(api, ctx.n, stream),
        Action::Events { body } => events(api, ctx.n, body),
        Action::CutStream { after_chunks } => reply(
            inner,
            api,
            ctx,
            stream,
            &default_plan(inner, words, Some(*after_chunks)),
        ),
    }
}

/// Sleeps unless the server shuts down first; false on shutdown.
async fn wait(inner: &Inner, d: Duration) -> bool {
    let mut rx = inner.shutdown_rx.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = rx.wait_for(|down| *down) => false,
    }
}

fn request_id_header(api: Api) -> HeaderName {
    match api {
        Api::OpenAi | Api::Responses => X_REQUEST_ID,
        Api::Anthropic => REQUEST_ID,
    }
}

fn base_response(api: Api, n: u64, status: StatusCode, body: Body, stream: bool) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if stream {
        h.insert(CONTENT_TYPE, EVENT_STREAM);
        h.insert(CACHE_CONTROL, NO_CACHE);
    } else {
        h.insert(CONTENT_TYPE, JSON);
    }
    if let Ok(v) = HeaderValue::try_from(format!("req_mock_{n}")) {
        h.insert(request_id_header(api), v);
    }
    resp
}

fn reply(inner: &Arc<Inner>, api: Api, ctx: &Ctx<'_>, stream: bool, plan: &ReplyPlan) -> Response {
    if stream {
        let frames = match api {
            Api::OpenAi => openai::stream(ctx, plan),
            Api::Anthropic => anthropic::stream(ctx, plan),
            Api::Responses => responses::stream(ctx, plan),
        };
        let Ok(f) = frames else {
            return error_response(api, ctx.n, 500, "mock upstream failed to render");
        };
        // The cut lands after `after_chunks` content frames (or after all of them).
        let cut_at = plan
            .cut_after
            .map(|c| f.content_start + c.min(f.content_len));
        let body = FrameStream::new(f.frames, plan.chunk_delay, cut_at, true, inner.clone());
        return base_response(api, ctx.n, StatusCode::OK, Body::from_stream(body), true);
    }
    let body = match api {
        Api::OpenAi => openai::completion(ctx, plan),
        Api::Anthropic => anthropic::message(ctx, plan),
        Api::Responses => responses::response(ctx, plan),
    };
    let Ok(body) = body else {
        return error_response(api, ctx.n, 500, "mock upstream failed to render");
    };
    if plan.cut_after.is_some() {
        // Non-streaming cut: headers and half the JSON, then an aborted connection.
        let body = Bytes::from(body);
        let half = body.len() / 2;
        let frames = vec![body.slice(..half), body.slice(half..)];
        let stream = FrameStream::new(frames, Duration::ZERO, Some(1), false, inner.clone());
        return base_response(api, ctx.n, StatusCode::OK, Body::from_stream(stream), false);
    }
    base_response(api, ctx.n, StatusCode::OK, Body::from(body), false)
}

fn events(api: Api, n: u64, body: &str) -> Response {
    let body = Body::from(body.to_owned());
    base_response(api, n, StatusCode::OK, body, true)
}

fn garbage(api: Api, n: u64, stream: bool) -> Response {
    let body: &'static [u8] = match (api, stream) {
        (_, false) => b"<html>this is not JSON {\"oops\":",
        (Api::OpenAi, true) => b"data: {this is not json\n\n",
        (Api::Anthropic, true) => b"event: message_start\ndata: {this is not json\n\n",
        (Api::Responses, true) => b"event: response.created\ndata: {this is not json\n\n",
    };
    base_response(api, n, StatusCode::OK, Body::from(body), stream)
}

/// `(type, code)` of the default error body for a status.
fn error_kind(api: Api, status: u16) -> (&'static str, Option<&'static str>) {
    match api {
        Api::OpenAi | Api::Responses => match status {
            400 | 413 | 422 => ("invalid_request_error", None),
            401 => ("invalid_request_error", Some("invalid_api_key")),
            403 => ("permission_error", Some("permission_denied")),
            404 => ("invalid_request_error", Some("model_not_found")),
            429 => ("rate_limit_error", Some("rate_limit_exceeded")),
            500..=599 => ("server_error", Some("server_error")),
            _ => ("api_error", None),
        },
        Api::Anthropic => match status {
            400 | 422 => ("invalid_request_error", None),
            401 => ("authentication_error", None),
            403 => ("permission_error", None),
            404 => ("not_found_error", None),
            413 => ("request_too_large", None),
            429 => ("rate_limit_error", None),
            529 => ("overloaded_error", None),
            _ => ("api_error", None),
        },
    }
}

pub(crate) fn error_body(api: Api, status: u16, message: &str) -> Value {
    let (kind, code) = error_kind(api, status);
    match api {
        Api::OpenAi | Api::Responses => json!({
            "error": {"message": message, "type": kind, "param": null, "code": code}
        }),
        Api::Anthropic => json!({
            "type": "error",
            "error": {"type": kind, "message": message}
        }),
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    // Serializing a Value cannot fail (string keys only); an empty body is the fallback.
    serde_json::to_vec(v).unwrap_or_default()
}

fn error_response(api: Api, n: u64, status: u16, message: &str) -> Response {
    fail_response(api, n, status, Some(&error_body(api, status, message)))
}

fn fail_response(api: Api, n: u64, status: u16, body: Option<&Value>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = match body {
        Some(b) => json_bytes(b),
        None => json_bytes(&error_body(
            api,
            code.as_u16(),
            &format!("mock upstream: injected {} error", code.as_u16()),
        )),
    };
    base_response(api, n, code, Body::from(bytes), false)
}

async fn models() -> Response {
    const MODELS: &[u8] = br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1700000000,"owned_by":"mock"},{"id":"claude-sonnet-4-5","object":"model","created":1700000000,"owned_by":"mock"}]}"#;
    json_ok(StatusCode::OK, Body::from(MODELS))
}

fn json_ok(status: StatusCode, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

fn json_value(status: StatusCode, v: &Value) -> Response {
    json_ok(status, Body::from(json_bytes(v)))
}

async fn add_rule(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Rule>(&body) {
        Ok(rule) => {
            let count = inner.add_rule(rule);
            json_value(StatusCode::OK, &json!({ "rules": count }))
        }
        Err(e) => json_value(
            StatusCode::BAD_REQUEST,
            &json!({ "error": format!("invalid rule: {e}") }),
        ),
    }
}

async fn clear_rules(State(inner): State<Arc<Inner>>) -> StatusCode {
    inner.clear_rules();
    StatusCode::NO_CONTENT
}

async fn list_rules(State(inner): State<Arc<Inner>>) -> Response {
    let rules: Vec<Rule> = inner.rules.read().iter().map(|s| s.rule.clone()).collect();
    match serde_json::to_vec(&rules) {
        Ok(b) => json_ok(StatusCode::OK, Body::from(b)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn list_requests(State(inner): State<Arc<Inner>>) -> Response {
    let requests = inner.requests.lock().clone();
    match serde_json::to_vec(&requests) {
        Ok(b) => json_ok(StatusCode::OK, Body::from(b)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn clear_requests(State(inner): State<Arc<Inner>>) -> StatusCode {
    inner.requests.lock().clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(inner): State<Arc<Inner>>) -> Response {
    json_value(
        StatusCode::OK,
        &json!({
            "requests": inner.counter.load(Ordering::Relaxed),
            "cancelled_streams": inner.cancelled.load(Ordering::Relaxed),
        }),
    )
}

async fn not_found(uri: Uri) -> Response {
    json_value(
        StatusCode::NOT_FOUND,
        &json!({"error": {
            "message": format!("mock upstream: no route for {}", uri.path()),
            "type": "invalid_request_error",
            "param": null,
            "code": "unknown_url",
        }}),
    )
}
