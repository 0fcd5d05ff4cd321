//! Per-key rate limits (requests and tokens per minute), counted per
//! gateway instance: with N instances behind a load balancer a key can use
//! up to N times its limits. Token buckets refill continuously.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tollgate_core::control::RateLimits;
use tollgate_core::AccessKeyId;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Units available now; tokens may go negative (a request's size is
    /// known only after it ran), which then delays later requests.
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, per_minute: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * per_minute / 60.0).min(per_minute);
        self.updated = now;
    }

    /// Time until the level reaches `needed`.
    fn wait_for(&self, needed: f64, per_minute: f64) -> Duration {
        let missing = (needed - self.level).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / per_minute)
    }
}

#[derive(Default)]
struct KeyBuckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Which limit refused a request, and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: &'static str,
    pub retry_after_secs: u64,
}

#[derive(Default)]
pub struct RateLimiter {
    keys: Mutex<HashMap<AccessKeyId, KeyBuckets>>,
}

impl RateLimiter {
    /// Admit a request (taking one request unit) or say which limit refused it.
    pub fn admit(&self, key: &AccessKeyId, limits: RateLimits) -> Result<(), Limited> {
        self.admit_at(key, limits, Instant::now())
    }

    fn admit_at(&self, key: &AccessKeyId, limits: RateLimits, now: Instant) -> Result<(), Limited> {
        if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
            return Ok(());
        }
        let mut keys = self.keys.lock();
        let buckets = keys.entry(key.clone()).or_default();
        if let Some(tpm) = limits.tokens_per_minute.map(f64::from) {
            let bucket = buckets.tokens.get_or_insert_with(|| Bucket::full(tpm, now));
            bucket.refill(tpm, now);
            if bucket.level <= 0.0 {
                return Err(Limited {
                    limit: "tokens_per_minute",
                    retry_after_secs: retry_secs(bucket.wait_for(1.0, tpm)),
                });
            }
        }
        if let Some(rpm) = limits.requests_per_minute.map(f64::from) {
            let bucket = buckets
                .requests
                .get_or_insert_with(|| Bucket::full(rpm, now));
            bucket.refill(rpm, now);
            if bucket.level < 1.0 {
                return Err(Limited {
                    limit: "requests_per_minute",
                    retry_after_secs: retry_secs(bucket.wait_for(1.0, rpm)),
                });
            }
            bucket.level -= 1.0;
        }
        Ok(())
    }

    /// Charge the tokens a finished request used against its key's budget.
    pub fn record_tokens(&self, key: &AccessKeyId, limits: RateLimits, tokens: u64) {
        let Some(tpm) = limits.tokens_per_minute.map(f64::from) else {
            return;
        };
        let now = Instant::now();
        let mut keys = self.keys.lock();
        let buckets = keys.entry(key.clone()).or_default();
        let bucket = buckets.tokens.get_or_insert_with(|| Bucket::full(tpm, now));
        bucket.refill(tpm, now);
        bucket.level -= tokens as f64;
    }
}

fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> AccessKeyId {
        AccessKeyId::from("ak_test")
    }

    #[test]
    fn requests_per_minute_refuse_then_refill() {
        let limiter = RateLimiter::default();
        let limits = RateLimits {
            requests_per_minute: Some(2),
            tokens_per_minute: None,
        };
        let t0 = Instant::now();
        assert!(limiter.admit_at(&key(), limits, t0).is_ok());
        assert!(limiter.admit_at(&key(), limits, t0).is_ok());
        let refused = limiter.admit_at(&key(), limits, t0).unwrap_err();
        assert_eq!(refused.limit, "requests_per_minute");
        assert_eq!(refused.retry_after_secs, 30);
        assert!(limiter
            .admit_at(&key(), limits, t0 + Duration::from_secs(30))
            .is_ok());
        let other = AccessKeyId::from("ak_other");
        assert!(
            limiter.admit_at(&other, limits, t0).is_ok(),
            "keys are counted apart"
        );
    }

    #[test]
    fn tokens_per_minute_apply_after_usage_is_known() {
        let limiter = RateLimiter::default();
        let limits = RateLimits {
            requests_per_minute: None,
            tokens_per_minute: Some(600),
        };
        assert!(limiter.admit(&key(), limits).is_ok());
        limiter.record_tokens(&key(), limits, 900);
        let refused = limiter.admit(&key(), limits).unwrap_err();
        assert_eq!(refused.limit, "tokens_per_minute");
        assert!((30..=31).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(limiter.admit(&key(), RateLimits::default()).is_ok());
    }
}
