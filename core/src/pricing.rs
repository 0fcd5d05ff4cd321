//! The one pricing function: what a usage event costs. The proxy (to show
//! the client its cost) and the ledger (to debit it) both call this, so the
//! number a client sees is the number debited. Exact decimals, no rounding.

use crate::catalog::Prices;
use crate::event::{CredentialSource, ToolCallCharge, UsageEvent};
use crate::money::Usd;
use crate::tokens::TokenCounts;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Tollgate's processing fee: $0.05 per million tokens, on every token.
pub const PROCESSING_FEE_PER_MTOK: Usd = Usd(Decimal::from_parts(5, 0, 0, false, 2));

/// Plan terms are limited to this many decimal places, so that a cost
/// (catalog prices have at most 6) stays within the 18 places every store
/// keeps, and the analytics store's cost equals the ledger's to the digit.
pub const PLAN_TERM_MAX_DECIMALS: u32 = 6;
/// The largest upstream multiplier a plan may set.
pub const PLAN_MAX_MULTIPLIER: Decimal = Decimal::from_parts(100, 0, 0, false, 0);

/// The price plan in force for a request, copied into its usage event so
/// that a later change of plan never changes what the event costs. An event
/// without one (all events written before plans existed) was billed on the
/// default terms: the standard fee and the upstream cost as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppliedPlan {
    pub plan_id: String,
    /// Processing fee per million tokens, on every token.
    pub fee_per_mtok: Usd,
    /// Factor on the upstream cost of operator-credential requests (1 = at
    /// cost, above 1 a markup, below 1 a discount).
    #[serde(with = "rust_decimal::serde::str")]
    pub upstream_multiplier: Decimal,
}

/// Why plan terms are refused; the message names the term.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanTermsError {
    #[error("fee_per_mtok must be between 0 and 1000 with at most {PLAN_TERM_MAX_DECIMALS} decimal places, got {0}")]
    Fee(Decimal),
    #[error("upstream_multiplier must be between 0 and {PLAN_MAX_MULTIPLIER} with at most {PLAN_TERM_MAX_DECIMALS} decimal places, got {0}")]
    Multiplier(Decimal),
}

/// Check a plan's terms (fee per million tokens, upstream multiplier).
pub fn check_plan_terms(fee_per_mtok: Usd, multiplier: Decimal) -> Result<(), PlanTermsError> {
    let fee = fee_per_mtok.amount();
    let fits = |d: Decimal, max: Decimal| {
        d >= Decimal::ZERO && d <= max && d.normalize().scale() <= PLAN_TERM_MAX_DECIMALS
    };
    if !fits(fee, Decimal::from(1000)) {
        return Err(PlanTermsError::Fee(fee));
    }
    if !fits(multiplier, PLAN_MAX_MULTIPLIER) {
        return Err(PlanTermsError::Multiplier(multiplier));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Processing fee on all tokens, at the plan's rate.
    pub fee: Usd,
    /// Upstream model cost as billed: the providers' prices × the plan's
    /// multiplier; zero unless the operator's credentials answered.
    pub upstream: Usd,
    /// The part of `upstream` above the providers' prices (negative for a
    /// discount): the operator's revenue, booked apart from what is owed
    /// upstream. Zero on the default terms.
    #[serde(default)]
    pub markup: Usd,
}

impl Cost {
    pub fn total(&self) -> Usd {
        self.fee + self.upstream
    }
}

/// The cost of one request, from the counts, unit prices and plan in its
/// event.
pub fn cost_of(event: &UsageEvent) -> Cost {
    cost_with_tool_calls(
        &event.tokens,
        &event.prices,
        &event.tool_calls,
        event.credential_source,
        event.plan.as_ref(),
    )
}

/// The cost of `tokens` at `prices` when `source`'s credentials answered,
/// on `plan`'s terms (None: the default terms).
pub fn cost_for(
    tokens: &TokenCounts,
    prices: &Prices,
    source: Option<CredentialSource>,
    plan: Option<&AppliedPlan>,
) -> Cost {
    cost_with_tool_calls(tokens, prices, &[], source, plan)
}

/// `cost_for` plus built-in tool calls billed per call: upstream cost like
/// tokens (so on the operator's credentials only, and under the plan's
/// multiplier); the processing fee stays on tokens alone.
pub fn cost_with_tool_calls(
    tokens: &TokenCounts,
    prices: &Prices,
    tool_calls: &[ToolCallCharge],
    source: Option<CredentialSource>,
    plan: Option<&AppliedPlan>,
) -> Cost {
    let fee_rate = plan.map_or(PROCESSING_FEE_PER_MTOK, |p| p.fee_per_mtok);
    let fee = fee_rate.per_million_tokens(tokens.total());
    let mut at_cost = provider_cost(tokens, prices, source);
    if source == Some(CredentialSource::Operator) {
        for charge in tool_calls {
            at_cost += charge.price * Decimal::from(charge.calls);
        }
    }
    let markup = match plan {
        Some(plan) if plan.upstream_multiplier != Decimal::ONE => {
            at_cost * (plan.upstream_multiplier - Decimal::ONE)
        }
        _ => Usd::ZERO,
    };
    Cost {
        fee,
        upstream: at_cost + markup,
        markup,
    }
}

/// What the providers charge for `tokens` on the operator's credentials.
fn provider_cost(tokens: &TokenCounts, prices: &Prices, source: Option<CredentialSource>) -> Usd {
    match source {
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
    }
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
            endpoint: None,
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
            tool_calls: Vec::new(),
            end_user: None,
            tags: Default::default(),
            upstream_request_id: None,
            latency_us: 1,
            ttft_us: None,
            upstream_latency_us: None,
            status: 200,
            error_kind: None,
            attempts: 1,
            client_disconnected: false,
            plan: None,
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
        reasoning: 0,
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
    fn reasoning_is_part_of_output_and_billed_once() {
        let with_reasoning = TokenCounts {
            reasoning: 300,
            ..TOKENS
        };
        assert_eq!(with_reasoning.total(), TOKENS.total());
        for source in [
            Some(CredentialSource::Operator),
            Some(CredentialSource::Byok),
        ] {
            let mut plain = event(source, TOKENS);
            let mut reasoned = event(source, with_reasoning);
            assert_eq!(cost_of(&reasoned), cost_of(&plain));
            plain.plan = Some(plan(dec!(0.10), dec!(1.25)));
            reasoned.plan = plain.plan.clone();
            assert_eq!(cost_of(&reasoned), cost_of(&plain));
        }
        // the same figures as without reasoning: 500 output tokens at $15/M, once
        let cost = cost_of(&event(Some(CredentialSource::Operator), with_reasoning));
        assert_eq!(cost.fee, Usd(dec!(0.0001805)));
        assert_eq!(cost.upstream, Usd(dec!(0.011535)));
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

    fn plan(fee: Decimal, multiplier: Decimal) -> AppliedPlan {
        AppliedPlan {
            plan_id: "plan_team".into(),
            fee_per_mtok: Usd(fee),
            upstream_multiplier: multiplier,
        }
    }

    #[test]
    fn a_plan_sets_the_fee_and_multiplies_only_operator_upstream_cost() {
        let mut marked_up = event(Some(CredentialSource::Operator), TOKENS);
        marked_up.plan = Some(plan(dec!(0.10), dec!(1.25)));
        let cost = cost_of(&marked_up);
        // 3,610 tokens × $0.10/M
        assert_eq!(cost.fee, Usd(dec!(0.000361)));
        // 0.011535 × 1.25, of which 0.011535 × 0.25 is markup
        assert_eq!(cost.upstream, Usd(dec!(0.01441875)));
        assert_eq!(cost.markup, Usd(dec!(0.00288375)));
        assert_eq!(cost.total(), Usd(dec!(0.01477975)));

        let mut discounted = event(Some(CredentialSource::Operator), TOKENS);
        discounted.plan = Some(plan(dec!(0), dec!(0.8)));
        let cost = cost_of(&discounted);
        assert_eq!(cost.fee, Usd::ZERO);
        assert_eq!(cost.upstream, Usd(dec!(0.009228)));
        assert_eq!(cost.markup, Usd(dec!(-0.002307)));

        let mut byok = event(Some(CredentialSource::Byok), TOKENS);
        byok.plan = Some(plan(dec!(0.10), dec!(3)));
        let cost = cost_of(&byok);
        assert_eq!(cost.upstream, Usd::ZERO, "BYOK is never marked up");
        assert_eq!(cost.markup, Usd::ZERO);
        assert_eq!(cost.fee, Usd(dec!(0.000361)));
    }

    #[test]
    fn the_default_plan_terms_cost_what_no_plan_costs() {
        let mut explicit = event(Some(CredentialSource::Operator), TOKENS);
        explicit.plan = Some(plan(dec!(0.05), dec!(1)));
        let without = event(Some(CredentialSource::Operator), TOKENS);
        assert_eq!(cost_of(&explicit), cost_of(&without));
        assert_eq!(cost_of(&without).markup, Usd::ZERO);
    }

    #[test]
    fn plan_terms_are_bounded_and_name_the_bad_term() {
        assert!(check_plan_terms(Usd(dec!(0.05)), dec!(1)).is_ok());
        assert!(check_plan_terms(Usd(dec!(0)), dec!(0)).is_ok());
        assert!(check_plan_terms(Usd(dec!(0.123456)), dec!(1.000001)).is_ok());
        let fee = check_plan_terms(Usd(dec!(-0.01)), dec!(1)).unwrap_err();
        assert!(fee.to_string().contains("fee_per_mtok"), "{fee}");
        assert!(check_plan_terms(Usd(dec!(0.1234567)), dec!(1)).is_err());
        let multiplier = check_plan_terms(Usd(dec!(0.05)), dec!(1.0000001)).unwrap_err();
        assert!(
            multiplier.to_string().contains("upstream_multiplier"),
            "{multiplier}"
        );
        assert!(check_plan_terms(Usd(dec!(0.05)), dec!(101)).is_err());
        assert!(check_plan_terms(Usd(dec!(0.05)), dec!(-1)).is_err());
    }

    #[test]
    fn tool_calls_add_to_the_upstream_cost_under_the_plan_and_never_to_the_fee() {
        let tokens = TokenCounts {
            input: 1_000_000,
            ..TokenCounts::default()
        };
        let prices = Prices {
            input: "1".parse::<Usd>().unwrap(),
            ..Prices::default()
        };
        let calls = [ToolCallCharge {
            tool: "web_search".into(),
            calls: 3,
            price: "0.01".parse::<Usd>().unwrap(),
        }];
        let operator = Some(CredentialSource::Operator);
        let cost = cost_with_tool_calls(&tokens, &prices, &calls, operator, None);
        assert_eq!(cost.upstream.to_string(), "1.03");
        assert_eq!(cost.fee.to_string(), "0.05");
        let plan = AppliedPlan {
            plan_id: "p".into(),
            fee_per_mtok: PROCESSING_FEE_PER_MTOK,
            upstream_multiplier: Decimal::new(2, 0),
        };
        let marked_up = cost_with_tool_calls(&tokens, &prices, &calls, operator, Some(&plan));
        assert_eq!(marked_up.upstream.to_string(), "2.06");
        assert_eq!(marked_up.markup.to_string(), "1.03");
        let byok =
            cost_with_tool_calls(&tokens, &prices, &calls, Some(CredentialSource::Byok), None);
        assert_eq!(byok.upstream, Usd::ZERO);
        assert_eq!(
            cost_for(&tokens, &prices, operator, None)
                .upstream
                .to_string(),
            "1"
        );
    }
}
