//! Failover's record: each upstream attempt of a request as a structured
//! value (candidate, credential, outcome, status, duration). The attempt
//! metric, the log line and the client's error all come from it.

use crate::error::ProxyError;
use crate::gateway::{Candidate, Credential};
use crate::metrics::Metrics;
use crate::upstream::{self, UpstreamClient, UpstreamRequest, UpstreamResponse};
use http::StatusCode;
use std::time::{Duration, Instant};
use tollgate_core::{CredentialSource, Escaped, ProviderKeyId};

/// How one attempt ended; its `as_str` is the metric's `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Timeout,
    ConnectError,
    Error,
    RateLimited,
    ServerError,
    CredentialRejected,
    /// The request itself was refused (4xx): returned as is, not retried.
    ClientError,
    StreamError,
    InvalidResponse,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Error => "error",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::CredentialRejected => "credential_rejected",
            Outcome::ClientError => "client_error",
            Outcome::StreamError => "stream_error",
            Outcome::InvalidResponse => "invalid_response",
        }
    }
}

/// One upstream attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    pub credential_source: CredentialSource,
    /// The caller's provider key, if one was used (operator keys have no id).
    pub provider_key_id: Option<ProviderKeyId>,
    pub outcome: Outcome,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    pub duration: Duration,
    /// What went wrong (the upstream's own words included): empty for `Ok`.
    pub detail: String,
    /// Whether the failure was a deadline passing (decides 504 over 502).
    pub timed_out: bool,
    started: Instant,
}

impl Attempt {
    pub fn start(candidate: &Candidate, credential: &Credential) -> Attempt {
        Attempt {
            provider: candidate.provider.spec.id.clone(),
            model: candidate.upstream_model.clone(),
            credential_source: credential.source,
            provider_key_id: credential.key_id.clone(),
            outcome: Outcome::Ok,
            status: None,
            duration: Duration::ZERO,
            detail: String::new(),
            timed_out: false,
            started: Instant::now(),
        }
    }

    /// The attempt ended with `outcome` (a timeout unless said otherwise).
    pub fn ended(mut self, outcome: Outcome, detail: impl Into<String>) -> Attempt {
        self.outcome = outcome;
        self.detail = detail.into();
        self.timed_out = outcome == Outcome::Timeout;
        self.duration = self.started.elapsed();
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Attempt {
        self.status = Some(status.as_u16());
        self
    }

    pub fn timed_out(mut self, timed_out: bool) -> Attempt {
        self.timed_out = timed_out;
        self
    }

    /// `provider/model: detail`, as the client's error names the failure.
    fn described(&self) -> String {
        format!("{}/{}: {}", self.provider, self.model, self.detail)
    }
}

/// Every attempt of one request, in order, and why failover stopped.
pub struct Failover {
    pub attempts: Vec<Attempt>,
    /// The last failure, attempt or not (a candidate passed over, the total
    /// deadline): what the client's error names.
    last: String,
    timed_out: bool,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            attempts: Vec::new(),
            last: String::from("no upstream was tried"),
            timed_out: false,
        }
    }
}

impl Failover {
    /// Send one attempt's request within `budget`. A timeout or a transport
    /// error ends the attempt, recorded, and gives `None`; a response of any
    /// status comes back with the attempt still open for its caller to end.
    pub async fn send(
        &mut self,
        metrics: &Metrics,
        client: &UpstreamClient,
        request: UpstreamRequest,
        budget: Duration,
        attempt: Attempt,
    ) -> Option<(UpstreamResponse, Attempt)> {
        match tokio::time::timeout(budget, client.request(request)).await {
            Err(_) => {
                let why = format!("no response within {} ms", budget.as_millis());
                self.record(metrics, attempt.ended(Outcome::Timeout, why));
                None
            }
            Ok(Err(err)) => {
                let outcome = if err.is_connect() {
                    Outcome::ConnectError
                } else {
                    Outcome::Error
                };
                let why = format!("{}: {}", outcome.as_str(), upstream::describe(&err));
                let attempt = attempt
                    .ended(outcome, why)
                    .timed_out(upstream::is_timeout(&err));
                self.record(metrics, attempt);
                None
            }
            Ok(Ok(response)) => Some((response, attempt)),
        }
    }

    /// Record an attempt and count it in `tollgate_proxy_upstream_attempts_total`.
    pub fn record(&mut self, metrics: &Metrics, attempt: Attempt) {
        metrics
            .upstream_attempts
            .with_label_values(&[attempt.provider.as_str(), attempt.outcome.as_str()])
            .inc();
        if attempt.outcome != Outcome::Ok && attempt.outcome != Outcome::ClientError {
            self.last = attempt.described();
            self.timed_out = attempt.timed_out;
        }
        self.attempts.push(attempt);
    }

    /// A candidate passed over without an attempt (`why` names it).
    pub fn passed_over(&mut self, candidate: &Candidate, why: &ProxyError) {
        self.last = format!(
            "{}/{}: {why}",
            candidate.provider.spec.id, candidate.upstream_model
        );
    }

    /// The request's total deadline passed before another attempt.
    pub fn deadline_passed(&mut self, total_timeout_ms: u64) {
        self.last = format!("total timeout of {total_timeout_ms} ms reached");
        self.timed_out = true;
    }

    /// The error when every attempt failed: 504 if the last failure was a
    /// deadline, else 502, naming the last failure.
    pub fn into_error(self, attempts: u32) -> ProxyError {
        // Model names and upstream error texts are others' text: escaped.
        tracing::warn!(
            attempts,
            last_error = %Escaped(&self.last),
            tried = %Escaped(&self.summary()),
            "all upstream attempts failed"
        );
        if self.timed_out {
            ProxyError::UpstreamTimeout {
                attempts,
                last: self.last,
            }
        } else {
            ProxyError::UpstreamFailed {
                attempts,
                last: self.last,
            }
        }
    }

    /// One line per attempt for the log: `provider/model outcome status ms`.
    fn summary(&self) -> String {
        self.attempts
            .iter()
            .map(|a| {
                let status = a.status.map_or(String::from("-"), |s| s.to_string());
                format!(
                    "{}/{} {} {} {}ms",
                    a.provider,
                    a.model,
                    a.outcome.as_str(),
                    status,
                    a.duration.as_millis()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn attempt(provider: &str) -> Attempt {
        Attempt {
            provider: provider.into(),
            model: "m".into(),
            credential_source: CredentialSource::Operator,
            provider_key_id: None,
            outcome: Outcome::Ok,
            status: None,
            duration: Duration::ZERO,
            detail: String::new(),
            timed_out: false,
            started: Instant::now(),
        }
    }

    #[test]
    fn the_error_names_the_last_failure_and_is_a_timeout_only_if_that_was() {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let mut failover = Failover::default();
        failover.record(
            &metrics,
            attempt("a").ended(Outcome::Timeout, "no response"),
        );
        let late = attempt("b")
            .ended(Outcome::ServerError, "upstream answered 503")
            .with_status(StatusCode::SERVICE_UNAVAILABLE);
        failover.record(&metrics, late);
        assert_eq!(failover.attempts.len(), 2);
        assert_eq!(failover.attempts[1].status, Some(503));
        match failover.into_error(2) {
            ProxyError::UpstreamFailed { attempts, last } => {
                assert_eq!(attempts, 2);
                assert_eq!(last, "b/m: upstream answered 503");
            }
            other => panic!("{other:?}"),
        }
        let count = |provider: &str, outcome: &str| {
            metrics
                .upstream_attempts
                .with_label_values(&[provider, outcome])
                .get()
        };
        assert_eq!((count("a", "timeout"), count("b", "server_error")), (1, 1));

        let mut failover = Failover::default();
        failover.record(&metrics, attempt("a").ended(Outcome::ServerError, "503"));
        failover.deadline_passed(1_000);
        assert!(matches!(
            failover.into_error(1),
            ProxyError::UpstreamTimeout { last, .. } if last == "total timeout of 1000 ms reached"
        ));
    }

    #[test]
    fn a_success_or_client_error_is_recorded_without_becoming_the_failure() {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let mut failover = Failover::default();
        failover.record(&metrics, attempt("a").ended(Outcome::ClientError, ""));
        failover.record(&metrics, attempt("a").ended(Outcome::Ok, ""));
        assert_eq!(failover.attempts.len(), 2);
        assert!(matches!(
            failover.into_error(0),
            ProxyError::UpstreamFailed { last, .. } if last == "no upstream was tried"
        ));
    }
}
