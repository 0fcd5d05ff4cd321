//! The one pricing function: what a usage event costs. The proxy (to show
//! the client its cost) and the ledger (to debit it) both call this, so the
//! number a client sees is the number debited. Exact decimals, no rounding.

use crate::catalog::Prices;
use crate::event::{CredentialSource, UsageEvent};
use crate::money::Usd;
use crate::tokens::TokenCounts;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Tollgate's processing fee: $0.05 per million tokens, on every token.
pub const PROCESSING_FEE_PER_MTOK: Usd = Usd(Decimal::from_parts(5, 0, 0, false, 2));

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Processing fee on all tokens.
    pub fee: Usd,
    /// Upstream model cost; zero unless the operator's credentials answered.
    pub upstream: Usd,
}

impl Cost {
    pub fn total(&self) -> Usd {
        self.fee + self.upstream
    }
}

/// The cost of one request, from the counts and unit prices in its event.
pub fn cost_of(event: &UsageEvent) -> Cost {
    cost_for(&event.tokens, &event.prices, event.credential_source)
}

/// The cost of `tokens` at `prices` when `source`'s credentials answered.
pub fn cost_for(tokens: &TokenCounts, prices: &Prices, source: Option<CredentialSource>) -> Cost {
    let fee = PROCESSING_FEE_PER_MTOK.per_million_tokens(tokens.total());
    let upstream = match source {
        Some(CredentialSource::Operator) => {
            prices.input.per_million_tokens(tokens.input)
                + prices.cached_input.per_million_tokens(tokens.cached_input)
                + prices
                    .cache_write_5m
                    .per_million_tokens(tokens.cache_write_5m)
                + prices
                    .cache_write_1h
                    .per_million_tokens(tokens.cache_write_1h)
                + prices.output.per_million_tokens(tokens.output)
        }
        Some(CredentialSource::Byok) | None => Usd::ZERO,
    };
    Cost { fee, upstream }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::catalog::{ApiSurface, Prices};
    use crate::ids::{AccessKeyId, AccountId, EventId};
    use crate::tokens::TokenCounts;
    use rust_decimal_macros::dec;

    fn event(source: Option<CredentialSource>, tokens: TokenCounts) -> UsageEvent {
        let now = chrono::Utc::now();
        UsageEvent {
            event_id: EventId::generate(),
            started_at: now,
            finished_at: now,
            account_id: AccountId::from("acct_a"),
            access_key_id: AccessKeyId::from("ak_a"),
            client_api: ApiSurface::Openai,
            provider: Some("anthropic".into()),
            model_requested: "claude-sonnet-4-5".into(),
            model_served: Some("claude-sonnet-4-5".into()),
            credential_source: source,
            provider_key_id: None,
            streamed: false,
            tokens,
            tokens_estimated: false,
            prices: Prices {
                input: Usd(dec!(3)),
                cached_input: Usd(dec!(0.30)),
                cache_write_5m: Usd(dec!(3.75)),
                cache_write_1h: Usd(dec!(6)),
                output: Usd(dec!(15)),
            },
            upstream_request_id: None,
            latency_us: 1,
            ttft_us: None,
            upstream_latency_us: None,
            status: 200,
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            instance_id: None,
            instance_seq: None,
        }
    }

    const TOKENS: TokenCounts = TokenCounts {
        input: 1_000,
        cached_input: 2_000,
        cache_write_5m: 100,
        cache_write_1h: 10,
        output: 500,
    };

    #[test]
    fn operator_credentials_pay_fee_and_each_class_at_its_price() {
        let cost = cost_of(&event(Some(CredentialSource::Operator), TOKENS));
        // 3,610 tokens × $0.05/M
        assert_eq!(cost.fee, Usd(dec!(0.0001805)));
        // 1000×3 + 2000×0.30 + 100×3.75 + 10×6 + 500×15, per million
        assert_eq!(cost.upstream, Usd(dec!(0.011535)));
        assert_eq!(cost.total(), Usd(dec!(0.0117155)));
    }

    #[test]
    fn byok_pays_only_the_fee_and_no_tokens_cost_nothing() {
        let cost = cost_of(&event(Some(CredentialSource::Byok), TOKENS));
        assert_eq!(cost.fee, Usd(dec!(0.0001805)));
        assert_eq!(cost.upstream, Usd::ZERO);
        let free = cost_of(&event(
            Some(CredentialSource::Operator),
            TokenCounts::default(),
        ));
        assert_eq!(free.total(), Usd::ZERO);
        assert_eq!(PROCESSING_FEE_PER_MTOK, Usd(dec!(0.05)));
    }
}
