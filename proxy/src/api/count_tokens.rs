//! Anthropic's token count (`POST /v1/messages/count_tokens`, also with the
//! `?beta=true` the beta client adds), a companion route of the Messages API
//! rather than a `ClientApi` of its own: nothing is generated, so nothing is
//! metered, billed or written to the event log.
//!
//! The shared steps are the messages route's: the key from the headers
//! before any body byte is read, the edge's body limits, model resolution
//! with the key's allowlists and the same credential rules (`models`
//! fallbacks included), then one request unit of the key's rate limit (no
//! token budget is taken: nothing is generated). A model on an
//! Anthropic-API provider is asked upstream, with failover over credentials
//! and candidates recorded like any attempt (`crate::failover`); a model on
//! an OpenAI-API provider is counted here with its tiktoken encoding, on an
//! estimate thread and bounded like an estimate, over the same text a
//! messages request's estimate counts. Every refusal is in Anthropic's
//! error shape; `tollgate_proxy_count_tokens_requests_total` counts each
//! request by provider and outcome.

use super::anthropic_messages::AnthropicMessages;
use super::body::{self, ClientRequest};
use super::ClientApi;
use crate::dispatch::{self, extract_token, HEADER_ATTEMPTS, HEADER_MODEL, HEADER_PROVIDER};
use crate::edge;
use crate::error::ProxyError;
use crate::failover::{Attempt, Failover, Outcome as AttemptOutcome};
use crate::gateway::{Caller, Candidate, Credential, Gateway};
use crate::tokenize::estimate_tokens;
use crate::upstream::{self, UpstreamRequest};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::ApiSurface;

/// The route, beside `/v1/messages`.
pub const PATH: &str = "/v1/messages/count_tokens";

/// The metric's `provider` label when no provider answered.
const NO_PROVIDER: &str = "none";

/// How a count_tokens request ended: the metric's `outcome` label.
#[derive(Clone, Copy)]
enum Outcome {
    /// An Anthropic-API provider counted.
    Upstream,
    /// Counted locally for an OpenAI-API model.
    Local,
    /// The provider refused the request itself (its 4xx passed on).
    UpstreamRejected,
    /// Every attempt failed (502/504).
    Failed,
    /// The gateway refused it (key, body, model, policy, rate limit).
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
            Outcome::Local => "local",
            Outcome::UpstreamRejected => "upstream_rejected",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// The answer and what the metric records of it.
struct Answered {
    provider: String,
    outcome: Outcome,
    response: Response,
}

/// The route's handler.
pub async fn handle(gateway: Arc<Gateway>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let beta = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "beta=true"));
    let answered = match extract_token(&parts.headers)
        .ok_or(ProxyError::MissingKey)
        .and_then(|token| gateway.authenticate(token))
    {
        Ok(caller) => {
            let body = edge::read_body(body, gateway.config.server.max_body_bytes).await;
            let count = Count {
                gateway: &gateway,
                headers: &parts.headers,
                beta,
                failover: Failover::default(),
                attempts: 0,
                deadline: started + Duration::from_millis(gateway.config.routing.total_timeout_ms),
            };
            count.run(&caller, body).await
        }
        Err(err) => refused(err),
    };
    gateway
        .metrics
        .count_tokens
        .with_label_values(&[answered.provider.as_str(), answered.outcome.as_str()])
        .inc();
    answered.response
}

fn refused(err: ProxyError) -> Answered {
    let outcome = match err {
        ProxyError::UpstreamFailed { .. } | ProxyError::UpstreamTimeout { .. } => Outcome::Failed,
        _ => Outcome::Refused,
    };
    Answered {
        provider: NO_PROVIDER.to_owned(),
        outcome,
        response: err.into_response_for(&AnthropicMessages),
    }
}

/// One count_tokens request after authentication.
struct Count<'a> {
    gateway: &'a Gateway,
    headers: &'a HeaderMap,
    beta: bool,
    failover: Failover,
    attempts: u32,
    deadline: Instant,
}

impl Count<'_> {
    async fn run(mut self, caller: &Caller, body: Result<Bytes, ProxyError>) -> Answered {
        let answered = self.answer(caller, body).await;
        let attempts = self.attempts;
        let mut answered = answered.unwrap_or_else(refused);
        if attempts > 0 {
            answered
                .response
                .headers_mut()
                .insert(HEADER_ATTEMPTS, HeaderValue::from(attempts));
        }
        answered
    }

    async fn answer(
        &mut self,
        caller: &Caller,
        body: Result<Bytes, ProxyError>,
    ) -> Result<Answered, ProxyError> {
        // Anthropic's count_tokens takes no `max_tokens`.
        let request = body::parse_chat_request(body?, false, body::EndUserField::Anthropic)?;
        let candidates =
            dispatch::resolve_candidates(self.gateway, caller, &AnthropicMessages, &request)?;
        // One request unit; no token budget is taken, since nothing is generated.
        self.gateway
            .limiter
            .admit(&caller.key_id, caller.rate_limits())
            .map_err(|limited| ProxyError::RateLimited {
                limit: limited.limit,
                retry_after_secs: limited.retry_after_secs,
            })?;

        let mut unusable: Option<ProxyError> = None;
        'candidates: for candidate in candidates {
            if candidate.credentials.is_empty() {
                let why = candidate.unusable();
                self.failover.passed_over(&candidate, &why);
                unusable.get_or_insert(why);
                continue;
            }
            if candidate.provider.spec.api == ApiSurface::Openai {
                return count_locally(&candidate, &request).await;
            }
            let body = body::same_api_body(&candidate, &request, false)?;
            let endpoint = endpoint(&candidate, self.beta)?;
            for credential in &candidate.credentials {
                let now = Instant::now();
                if now >= self.deadline {
                    let total_ms = self.gateway.config.routing.total_timeout_ms;
                    self.failover.deadline_passed(total_ms);
                    break 'candidates;
                }
                let call = Call {
                    candidate: &candidate,
                    credential,
                    endpoint: &endpoint,
                    body: &body,
                };
                if let Some(answered) = self.attempt(call, now).await {
                    return Ok(answered);
                }
            }
        }
        if self.attempts == 0 {
            if let Some(err) = unusable {
                return Err(err);
            }
        }
        let failover = std::mem::take(&mut self.failover);
        Err(failover.into_error(self.attempts))
    }

    /// One upstream call; `None` when it failed (recorded) and the next
    /// credential or candidate is tried.
    async fn attempt(&mut self, call: Call<'_>, now: Instant) -> Option<Answered> {
        let gateway = self.gateway;
        let metrics = &gateway.metrics;
        let routing = &gateway.config.routing;
        if self.attempts > 0 {
            metrics.failovers.inc();
        }
        self.attempts += 1;
        let attempt = Attempt::start(call.candidate, call.credential);
        let budget = Duration::from_millis(routing.attempt_timeout_ms).min(self.deadline - now);
        let (response, attempt) = self
            .failover
            .send(
                metrics,
                &gateway.client,
                call.request(self.headers),
                budget,
                attempt,
            )
            .await?;
        let status = response.status();
        if let Some(failed) = dispatch::retryable_status(status) {
            self.failover.record(metrics, failed(attempt));
            return None;
        }
        let attempt = attempt.with_status(status);
        let read_timeout = Duration::from_millis(routing.read_timeout_ms);
        let read = tokio::time::timeout(read_timeout, upstream::body_bytes(response)).await;
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
        let provider = call.candidate.provider.spec.id.clone();
        if !status.is_success() {
            let attempt = attempt.ended(AttemptOutcome::ClientError, "");
            self.failover.record(metrics, attempt);
            let answer = AnthropicMessages.upstream_error(ApiSurface::Anthropic, status, bytes);
            return Some(Answered {
                provider,
                outcome: Outcome::UpstreamRejected,
                response: with_served(answer, call.candidate),
            });
        }
        if input_tokens(&bytes).is_none() {
            let why = "the answer has no `input_tokens` count";
            let attempt = attempt.ended(AttemptOutcome::InvalidResponse, why);
            self.failover.record(metrics, attempt);
            return None;
        }
        self.failover
            .record(metrics, attempt.ended(AttemptOutcome::Ok, ""));
        // Passed on as it came: fields a newer API version adds reach the client.
        let mut response = Response::new(Body::from(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Some(Answered {
            provider,
            outcome: Outcome::Upstream,
            response: with_served(response, call.candidate),
        })
    }
}

/// One upstream call's inputs.
struct Call<'a> {
    candidate: &'a Candidate,
    credential: &'a Credential,
    endpoint: &'a http::Uri,
    body: &'a Bytes,
}

impl Call<'_> {
    fn request(&self, client: &HeaderMap) -> UpstreamRequest {
        let mut request = http::Request::new(self.body.clone());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.endpoint.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some((name, value)) = &self.credential.auth_header {
            headers.insert(*name, value.clone());
        }
        // The version and beta headers, as the messages route passes them.
        AnthropicMessages.upstream_headers(ApiSurface::Anthropic, client, headers);
        request
    }
}

/// The provider's count_tokens endpoint, with `?beta=true` when the client sent it.
fn endpoint(candidate: &Candidate, beta: bool) -> Result<http::Uri, ProxyError> {
    let query = if beta { "?beta=true" } else { "" };
    let url = format!(
        "{}/messages/count_tokens{query}",
        candidate.provider.base_url
    );
    url.parse()
        .map_err(|e| ProxyError::Internal(format!("`{url}` is not a valid URL: {e}")))
}

/// An upstream's count, if its answer is one.
fn input_tokens(bytes: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Counted {
        input_tokens: u64,
    }
    serde_json::from_slice::<Counted>(bytes)
        .ok()
        .map(|c| c.input_tokens)
}

/// The request's tokens for an OpenAI-API model: the text a messages
/// request's estimate counts (`request_text`), with the model's encoding,
/// bounded as an estimate is (`estimate_tokens`), on an estimate thread.
async fn count_locally(
    candidate: &Candidate,
    request: &ClientRequest,
) -> Result<Answered, ProxyError> {
    let raw = request.raw.clone();
    let model = candidate.upstream_model.clone();
    let tokens = crate::estimate::run(move || {
        let value = serde_json::from_slice::<Value>(&raw).ok()?;
        Some(estimate_tokens(
            &model,
            &AnthropicMessages.request_text(&value),
        ))
    })
    .await
    .flatten()
    .ok_or_else(|| ProxyError::Internal("the local token count did not run".to_owned()))?;
    Ok(Answered {
        provider: candidate.provider.spec.id.clone(),
        outcome: Outcome::Local,
        response: with_served(counted(tokens), candidate),
    })
}

/// Anthropic's answer: `{"input_tokens": n}`.
fn counted(tokens: u64) -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "input_tokens": tokens })),
    )
        .into_response()
}

/// The provider and model that answered, as the messages route names them.
fn with_served(mut response: Response, candidate: &Candidate) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&candidate.provider.spec.id) {
        headers.insert(HEADER_PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&candidate.upstream_model) {
        headers.insert(HEADER_MODEL, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_answer_counts_only_with_an_integer_input_tokens() {
        assert_eq!(input_tokens(br#"{"input_tokens": 12}"#), Some(12));
        assert_eq!(input_tokens(br#"{"input_tokens": "12"}"#), None);
        assert_eq!(input_tokens(br#"{"tokens": 12}"#), None);
        assert_eq!(input_tokens(b"<html>"), None);
    }

    /// The edge's refusals (413 from a declared length, 408, 503) take
    /// their shape from the path: this route's are Anthropic's even
    /// without the SDK's version header.
    #[test]
    fn edge_refusals_on_the_route_are_in_anthropics_shape() {
        let shape = crate::edge::error_shape(PATH, &HeaderMap::new());
        assert_eq!(shape.surface(), ApiSurface::Anthropic);
    }
}
