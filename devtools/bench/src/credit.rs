//! Issue #16: a funded account under sustained concurrent load. A gateway
//! child whose bootstrap account holds $5.00 is driven by closed-loop
//! workers until the credit is spent; the 402s are counted before and after
//! the spend reached `balance − concurrency × one request's maximum cost`
//! (admission's rule: none may come before, docs/ledger.md).

use crate::load::{self, Target};
use http::StatusCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_core::pricing::cost_for;
use tollgate_core::{Catalog, CredentialSource, TokenCounts, Usd};

/// The request: gpt-4o (operator-priced) with a 40-word prompt, so $5.00
/// lasts some 30,000 requests.
pub const MODEL: &str = "gpt-4o";
pub const MAX_TOKENS: u64 = 16;

pub fn body() -> String {
    let prompt = vec!["a"; 40].join(" ");
    format!(
        r#"{{"model":"{MODEL}","max_tokens":{MAX_TOKENS},"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
    )
}

/// One request's maximum cost as admission computes it: body bytes as input
/// tokens, `max_tokens` as output, at the catalog's operator prices.
pub fn max_cost(body: &str) -> anyhow::Result<Usd> {
    let catalog = Catalog::builtin()?;
    let model = catalog
        .model(MODEL)
        .ok_or_else(|| anyhow::anyhow!("{MODEL} is not in the catalog"))?;
    let tokens = TokenCounts {
        input: body.len() as u64,
        output: MAX_TOKENS,
        ..TokenCounts::default()
    };
    Ok(cost_for(
        &tokens,
        &model.prices,
        Some(CredentialSource::Operator),
        None,
    )
    .total())
}

/// What the workers saw.
#[derive(Debug, Default)]
pub struct Spend {
    pub admitted: u64,
    /// Sum of the `x-tollgate-cost-total` of the 200s.
    pub spent: Usd,
    /// 402s while balance − spent was above the threshold (target 0).
    pub early_402: u64,
    /// 402s after.
    pub late_402: u64,
    /// Other answers (or failures on the wire).
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the start to the last 200.
    pub spending: Duration,
}

/// `concurrency` workers on persistent connections send `target`'s request
/// until nothing has been admitted for `quiet` (the credit is spent) or
/// `limit` passed.
pub async fn spend(
    target: &Target,
    concurrency: usize,
    (balance, threshold): (Usd, Usd),
    quiet: Duration,
    limit: Duration,
) -> anyhow::Result<Spend> {
    let host = target.host()?;
    let shared = Arc::new(Mutex::new(Spend::default()));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut sender = load::connect(target.addr, target.proto).await?;
        let (target, host, shared) = (target.clone(), host.clone(), shared.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let answer =
                    load::exchange(&mut sender, target.request(&host)?, load::Keep::Nothing).await;
                let now = Instant::now();
                let mut spend = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                match answer {
                    Ok(ex) if ex.status == StatusCode::OK => {
                        let cost = ex
                            .headers
                            .get("x-tollgate-cost-total")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<Usd>().ok())
                            .ok_or_else(|| anyhow::anyhow!("a 200 without a cost"))?;
                        spend.spent += cost;
                        spend.admitted += 1;
                        spend.spending = now - started;
                    }
                    Ok(ex) if ex.status == StatusCode::PAYMENT_REQUIRED => {
                        if balance - spend.spent > threshold {
                            spend.early_402 += 1;
                        } else {
                            spend.late_402 += 1;
                        }
                        if now - started > spend.spending + quiet {
                            return anyhow::Ok(());
                        }
                    }
                    Ok(ex) => {
                        spend.errors += 1;
                        spend
                            .first_error
                            .get_or_insert(format!("HTTP {}", ex.status));
                    }
                    Err(err) => {
                        spend.errors += 1;
                        spend.first_error.get_or_insert(err.to_string());
                        return Ok(());
                    }
                }
                if now - started > limit {
                    return Ok(());
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let spend = std::mem::take(&mut *shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(spend)
}
