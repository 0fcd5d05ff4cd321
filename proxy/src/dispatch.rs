//! Request handling shared by every client API: authenticate, parse (the
//! API's own), resolve candidates, admit, try them in order with failover,
//! and answer through the API (`crate::api::ClientApi`).

use crate::admission::Refused;
use crate::api::{ClientApi, ClientRequest, StreamStart, DEFAULT_MAX_OUTPUT_TOKENS};
use crate::edge;
use crate::error::ProxyError;
use crate::failover::{Attempt, Failover, Outcome as AttemptOutcome};
use crate::gateway::{Caller, Candidate, Credential, Gateway};
use crate::meter::RequestMeter;
use crate::upstream::{self, UpstreamRequest, UpstreamResponse};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::pricing::{cost_for, AppliedPlan};
use tollgate_core::{ApiSurface, CredentialSource, TokenCounts, Usd};

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

/// Entry point for every client API's route (`routes::CLIENT_APIS`). The
/// key is checked from the headers before any body byte is
/// read: a refused request's body is never buffered (the edge drains it).
pub async fn handle(
    gateway: Arc<Gateway>,
    api: &'static dyn ClientApi,
    request: Request,
) -> Response {
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
                .with_label_values(&[api.surface().as_str(), "4xx"])
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
    // Tags come from the headers: refused ones are answered without
    // reading the body.
    let body = match request_tags(&headers, &caller) {
        Ok(tags) => {
            meter.tags = tags;
            edge::read_body(body, gateway.config.server.max_body_bytes).await
        }
        Err(err) => Err(err),
    };
    match run(&gateway, &caller, api, &headers, body, &mut meter, started).await {
        Ok(Outcome::Complete(mut response)) => {
            add_trace_headers(&mut response, &meter);
            response
        }
        Ok(Outcome::Stream { upstream, stream }) => {
            let mut response = Response::new(Body::empty());
            add_trace_headers(&mut response, &meter);
            *response.body_mut() = api.stream_body(upstream, stream, meter);
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
    Stream {
        /// The wire API of the provider that answered.
        upstream: ApiSurface,
        stream: StreamStart,
    },
}

async fn run(
    gateway: &Arc<Gateway>,
    caller: &Caller,
    api: &'static dyn ClientApi,
    headers: &HeaderMap,
    body: Result<Bytes, ProxyError>,
    meter: &mut RequestMeter,
    started: Instant,
) -> Result<Outcome, ProxyError> {
    let request = api.parse(body?)?;
    keep_request(meter, &request);
    let candidates = resolve_candidates(gateway, caller, api, &request)?;
    admit(gateway, caller, &candidates, &request, meter)?;
    let routing = &gateway.config.routing;
    let attempts = Attempts {
        gateway,
        api,
        headers,
        request: &request,
        meter,
        failover: Failover::default(),
        deadline: started + Duration::from_millis(routing.total_timeout_ms),
        attempt_timeout: Duration::from_millis(routing.attempt_timeout_ms),
        read_timeout: Duration::from_millis(routing.read_timeout_ms),
    };
    attempts.run(candidates).await
}

/// The request's `x-tollgate-tags` (all its lines, as one list) over the
/// caller's configuration's default tags; a refusal names the problem.
fn request_tags(
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<BTreeMap<String, String>, ProxyError> {
    use tollgate_core::attribution::{merge_tags, parse_tags_header, TAGS_HEADER};
    let mut lines = headers.get_all(TAGS_HEADER).iter();
    let declared = match (lines.next(), lines.next()) {
        (None, _) => Ok(Vec::new()),
        (Some(one), None) => parse_tags_header(one.as_bytes()),
        (Some(first), Some(second)) => {
            let mut joined = [first.as_bytes(), second.as_bytes()].join(&b","[..]);
            for more in lines {
                joined.push(b',');
                joined.extend_from_slice(more.as_bytes());
            }
            parse_tags_header(&joined)
        }
    }
    .map_err(|why| ProxyError::invalid(format!("{TAGS_HEADER}: {why}")))?;
    let defaults = caller.configuration().map(|c| &c.default_tags);
    if declared.is_empty() {
        return Ok(defaults.cloned().unwrap_or_default());
    }
    merge_tags(defaults, declared)
        .map_err(|why| ProxyError::invalid(format!("{TAGS_HEADER}: {why}")))
}

/// What the meter needs from the request for its event and a token estimate.
fn keep_request(meter: &mut RequestMeter, request: &ClientRequest) {
    meter.model_requested = request.model.clone();
    meter.set_end_user(request.end_user.as_deref());
    meter.streamed = request.stream;
    // A small body is usually a slice of the connection's read buffer: a
    // copy lets that buffer go while a long stream runs.
    meter.set_request(if request.raw.len() < 64 * 1024 {
        Bytes::copy_from_slice(&request.raw)
    } else {
        request.raw.clone()
    });
}

/// `model` then each of `models`, resolved; the same (provider, model) is
/// never tried twice.
pub(crate) fn resolve_candidates(
    gateway: &Gateway,
    caller: &Caller,
    api: &dyn ClientApi,
    request: &ClientRequest,
) -> Result<Vec<Candidate>, ProxyError> {
    let mut candidates = Vec::with_capacity(1 + request.fallbacks.len());
    let mut seen = HashSet::new();
    // What no price covers goes only on the caller's own provider keys.
    let unpriced = api.unpriced_features(gateway, request).err();
    for name in std::iter::once(&request.model).chain(request.fallbacks.iter()) {
        let mut candidate = gateway.resolve(name, caller)?;
        api.accepts(&candidate)?;
        if unpriced.is_some() {
            candidate
                .credentials
                .retain(|c| c.source == CredentialSource::Byok);
        }
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
        if let Some(why) = unpriced {
            return Err(why);
        }
        if let Some(first) = candidates.first() {
            return Err(first.unusable());
        }
    }
    Ok(candidates)
}

/// The key's rate limits, then a credit reservation for the request's most
/// cost, against the balance and the refusing budgets on its path.
fn admit(
    gateway: &Gateway,
    caller: &Caller,
    candidates: &[Candidate],
    request: &ClientRequest,
    meter: &mut RequestMeter,
) -> Result<(), ProxyError> {
    // Only a request that would go upstream uses the key's budget: one
    // refused before (bad body, unknown or not-allowed model) does not.
    let limits = caller.rate_limits();
    gateway
        .limiter
        .admit(&caller.key_id, limits)
        .map_err(|limited| ProxyError::RateLimited {
            limit: limited.limit,
            retry_after_secs: limited.retry_after_secs,
        })?;
    meter.rate_limits = limits;

    let max_cost = max_cost(candidates, request, meter.plan.as_ref());
    // The account's budgets and its keys': admission skips other keys'.
    let budgets = caller.snapshot.budgets_of(&caller.account_id);
    gateway
        .admission
        .admit(
            &caller.account_id,
            &caller.key_id,
            budgets,
            meter.request_seq,
            max_cost,
            chrono::Utc::now(),
        )
        .map_err(|refused| match refused {
            Refused::Credit(refused) => ProxyError::InsufficientCredits {
                available: refused.available.to_string(),
                balance: refused.balance.to_string(),
                reserved: refused.held.to_string(),
            },
            Refused::Budget(refused) => {
                gateway.metrics.budget_refusals.inc();
                ProxyError::BudgetExceeded(refused)
            }
        })?;
    meter.reserved = gateway.admission.enforce;
    Ok(())
}

/// One request's attempts: each candidate, each of its credentials, until
/// one answers or the total deadline passes.
struct Attempts<'a> {
    gateway: &'a Gateway,
    api: &'static dyn ClientApi,
    headers: &'a HeaderMap,
    request: &'a ClientRequest,
    meter: &'a mut RequestMeter,
    failover: Failover,
    deadline: Instant,
    attempt_timeout: Duration,
    read_timeout: Duration,
}

impl Attempts<'_> {
    async fn run(mut self, candidates: Vec<Candidate>) -> Result<Outcome, ProxyError> {
        let mut unusable: Option<ProxyError> = None;
        let mut untranslatable: Option<ProxyError> = None;
        'candidates: for candidate in candidates {
            if candidate.credentials.is_empty() {
                let why = candidate.unusable();
                self.failover.passed_over(&candidate, &why);
                unusable.get_or_insert(why);
                continue;
            }
            let body = match self.api.upstream_body(&candidate, self.request) {
                Ok(body) => body,
                // This candidate cannot take the request; a later one may.
                Err(err @ ProxyError::InvalidRequest { .. }) => {
                    self.failover.passed_over(&candidate, &err);
                    untranslatable.get_or_insert(err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            for credential in &candidate.credentials {
                let now = Instant::now();
                if now >= self.deadline {
                    let total_ms = self.gateway.config.routing.total_timeout_ms;
                    self.failover.deadline_passed(total_ms);
                    break 'candidates;
                }
                if let Some(outcome) = self.attempt(&candidate, credential, &body, now).await {
                    return Ok(outcome);
                }
            }
        }

        if self.meter.attempts == 0 {
            if let Some(err) = untranslatable {
                return Err(err);
            }
            if let Some(err) = unusable {
                return Err(err);
            }
        }
        Err(self.failover.into_error(self.meter.attempts))
    }

    /// One upstream call; `None` when it failed (recorded) and the next
    /// credential or candidate is tried.
    async fn attempt(
        &mut self,
        candidate: &Candidate,
        credential: &Credential,
        body: &Bytes,
        now: Instant,
    ) -> Option<Outcome> {
        let metrics = &self.gateway.metrics;
        if self.meter.attempts > 0 {
            metrics.failovers.inc();
        }
        self.meter.attempt(candidate, credential);
        let attempt = Attempt::start(candidate, credential);
        let budget = self.attempt_timeout.min(self.deadline - now);
        let request = upstream_request(self.api, self.headers, candidate, credential, body.clone());
        let (response, attempt) = self
            .failover
            .send(metrics, &self.gateway.client, request, budget, attempt)
            .await?;
        self.meter.upstream_responded();
        self.meter.upstream_request_id = upstream_request_id(response.headers());
        let status = response.status();
        if let Some(failed) = retryable_status(status) {
            self.failover.record(metrics, failed(attempt));
            return None;
        }
        let attempt = attempt.with_status(status);
        if !status.is_success() {
            return Some(self.rejected(attempt, candidate, response).await);
        }
        if self.request.stream {
            self.stream(attempt, candidate, response).await
        } else {
            self.complete(attempt, candidate, response).await
        }
    }

    /// Not retryable (the request itself is wrong): the upstream's answer,
    /// in the client's shape.
    async fn rejected(
        &mut self,
        attempt: Attempt,
        candidate: &Candidate,
        response: UpstreamResponse,
    ) -> Outcome {
        let status = response.status();
        let attempt = attempt.ended(AttemptOutcome::ClientError, "");
        self.failover.record(&self.gateway.metrics, attempt);
        let bytes = tokio::time::timeout(self.read_timeout, upstream::body_bytes(response))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        self.meter
            .finish(status.as_u16(), Some("upstream_rejected"), false);
        let answer = self
            .api
            .upstream_error(candidate.provider.spec.api, status, bytes);
        Outcome::Complete(answer)
    }

    /// A stream is committed when its first chunk arrives in time.
    async fn stream(
        &mut self,
        attempt: Attempt,
        candidate: &Candidate,
        response: UpstreamResponse,
    ) -> Option<Outcome> {
        let metrics = &self.gateway.metrics;
        let mut stream = upstream::body_stream(response);
        let remaining = self
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let first = tokio::time::timeout(self.attempt_timeout.min(remaining), stream.next()).await;
        let (why, timed_out) = match first {
            Ok(Some(Ok(first))) => {
                let attempt = attempt.ended(AttemptOutcome::Ok, "");
                self.failover.record(metrics, attempt);
                return Some(Outcome::Stream {
                    upstream: candidate.provider.spec.api,
                    stream: StreamStart {
                        first,
                        rest: stream,
                        include_usage: self.request.include_usage,
                    },
                });
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
            .timed_out(timed_out);
        self.failover.record(metrics, attempt);
        None
    }

    /// A non-streamed answer: read whole, metered, passed on or translated.
    async fn complete(
        &mut self,
        attempt: Attempt,
        candidate: &Candidate,
        response: UpstreamResponse,
    ) -> Option<Outcome> {
        let metrics = &self.gateway.metrics;
        let read = tokio::time::timeout(self.read_timeout, upstream::body_bytes(response)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(err)) => {
                let why = format!("body failed: {}", upstream::describe(&err));
                self.failover
                    .record(metrics, attempt.ended(AttemptOutcome::Error, why));
                return None;
            }
            Err(_) => {
                let attempt = attempt.ended(AttemptOutcome::Timeout, "body not received in time");
                self.failover.record(metrics, attempt);
                return None;
            }
        };
        let upstream_api = candidate.provider.spec.api;
        match self.api.complete_response(upstream_api, bytes, self.meter) {
            Ok(response) => {
                self.failover
                    .record(metrics, attempt.ended(AttemptOutcome::Ok, ""));
                // The cost headers need the count: made off the workers.
                self.meter.estimate_off_runtime(200).await;
                self.meter.finish(200, None, false);
                Some(Outcome::Complete(response))
            }
            Err(why) => {
                let attempt = attempt.ended(AttemptOutcome::InvalidResponse, why);
                self.failover.record(metrics, attempt);
                None
            }
        }
    }
}

fn upstream_request(
    api: &dyn ClientApi,
    headers: &HeaderMap,
    candidate: &Candidate,
    credential: &Credential,
    body: Bytes,
) -> UpstreamRequest {
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = api.endpoint(&candidate.provider).clone();
    let upstream_headers = request.headers_mut();
    upstream_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = &credential.auth_header {
        upstream_headers.insert(*name, value.clone());
    }
    api.upstream_headers(candidate.provider.spec.api, headers, upstream_headers);
    request
}

/// An upstream status worth trying another credential or candidate for:
/// 429, 5xx, and 401/403 (the credential Tollgate used was refused; the
/// upstream's body, which may echo part of the key, never reaches the
/// client as if its own Tollgate key were wrong).
pub(crate) fn retryable_status(status: StatusCode) -> Option<impl FnOnce(Attempt) -> Attempt> {
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

fn upstream_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}
