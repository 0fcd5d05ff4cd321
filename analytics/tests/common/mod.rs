//! Shared test support: the fixed contract dataset, an independent
//! reference computation of every query, store setup (SQLite file, the
//! shared ClickHouse server, a private ClickHouse server the outage test
//! can stop), and comparison with the stated percentile tolerance.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tollgate_analytics::model::{
    exact_quantile, CostTotals, LatencyPercentiles, TokenTotals, TtftPercentiles, LATENCY_LEVELS,
    TTFT_LEVELS,
};
use tollgate_analytics::{
    Bucket, ClickHouseConfig, ClickHouseStore, GroupBy, SqliteUsageStore, StatusClass, UsageGroup,
    UsageQuery, UsageRecord, UsageStore, WriteBatch,
};
use tollgate_core::{
    AccessKeyId, AccountId, ApiSurface, CredentialSource, Endpoint, Envelope, EventId, Prices,
    TokenCounts, UsageEvent, Usd,
};
use tollgate_eventlog::LogRecord;

pub fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------- dataset

fn prices(model: &str) -> Prices {
    match model {
        "gpt-4o-mini" => Prices {
            input: Usd(dec!(0.15)),
            cached_input: Usd(dec!(0.075)),
            cache_write_5m: Usd::ZERO,
            cache_write_1h: Usd::ZERO,
            output: Usd(dec!(0.60)),
        },
        "claude-sonnet-4-5" => Prices {
            input: Usd(dec!(3)),
            cached_input: Usd(dec!(0.30)),
            cache_write_5m: Usd(dec!(3.75)),
            cache_write_1h: Usd(dec!(6)),
            output: Usd(dec!(15)),
        },
        "llama-3.3-70b-versatile" => Prices {
            input: Usd(dec!(0.59)),
            cached_input: Usd(dec!(0.01875)),
            cache_write_5m: Usd::ZERO,
            cache_write_1h: Usd::ZERO,
            output: Usd(dec!(0.79)),
        },
        _ => Prices {
            input: Usd::ZERO,
            cached_input: Usd::ZERO,
            cache_write_5m: Usd::ZERO,
            cache_write_1h: Usd::ZERO,
            output: Usd::ZERO,
        },
    }
}

/// A usage event with the fields tests vary; the rest are plausible defaults.
#[allow(clippy::too_many_arguments)]
pub fn event(
    account: &str,
    key: &str,
    started_at: DateTime<Utc>,
    provider: Option<&str>,
    model: &str,
    credential: Option<CredentialSource>,
    status: u16,
    tokens: TokenCounts,
    latency_us: u64,
    ttft_us: Option<u64>,
) -> UsageEvent {
    UsageEvent {
        event_id: EventId::generate(),
        started_at,
        finished_at: started_at + Duration::microseconds(latency_us as i64),
        account_id: AccountId::from(account),
        access_key_id: AccessKeyId::from(key),
        client_api: ApiSurface::Openai,
        endpoint: Some(Endpoint::Chat),
        provider: provider.map(str::to_owned),
        model_requested: model.to_owned(),
        model_served: provider.map(|_| model.to_owned()),
        credential_source: credential,
        provider_key_id: None,
        streamed: ttft_us.is_some(),
        tokens,
        tokens_estimated: false,
        prices: prices(model),
        tool_calls: Vec::new(),
        end_user: None,
        tags: Default::default(),
        upstream_request_id: None,
        latency_us,
        ttft_us,
        upstream_latency_us: None,
        status,
        error_kind: match status {
            402 => Some("insufficient_credits".to_owned()),
            400.. => Some("upstream_failed".to_owned()),
            _ => None,
        },
        attempts: 1,
        client_disconnected: status == 499,
        plan: None,
        instance_id: None,
        instance_seq: None,
    }
}

pub const ACCT_A: &str = "acct_a";
pub const ACCT_B: &str = "acct_b";

/// `events` as a release before reasoning counts stored them.
pub fn without_reasoning(events: &[UsageEvent]) -> Vec<UsageEvent> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.tokens.reasoning = 0;
            e
        })
        .collect()
}

/// `events` as a release before endpoints were recorded wrote them: no
/// endpoint, read as the one backfilled from the client API (so the
/// embeddings and responses requests among them read as chat).
pub fn without_endpoint(events: &[UsageEvent]) -> Vec<UsageEvent> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.endpoint = None;
            e
        })
        .collect()
}

/// `events` as a release before attribution was recorded: no end user,
/// no tags.
pub fn without_attribution(events: &[UsageEvent]) -> Vec<UsageEvent> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.end_user = None;
            e.tags.clear();
            e
        })
        .collect()
}

/// `events` as a release before reasoning counts, endpoints and attribution.
pub fn as_earlier_release(events: &[UsageEvent]) -> Vec<UsageEvent> {
    without_attribution(&without_endpoint(&without_reasoning(events)))
}

/// The end users of the dataset (one with a quote, to prove escaping).
pub const END_USERS: [&str; 3] = ["u_alice", "u_bob", "u_o'brien"];

/// Attribute an event to an end user and tags.
fn attributed(mut e: UsageEvent, end_user: Option<&str>, tags: &[(&str, &str)]) -> UsageEvent {
    e.end_user = end_user.map(str::to_owned);
    e.tags = tags
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    e
}

/// Set the endpoint (and the client API it implies) of an event.
fn served_by(mut e: UsageEvent, endpoint: Endpoint) -> UsageEvent {
    e.client_api = match endpoint {
        Endpoint::Messages => ApiSurface::Anthropic,
        _ => ApiSurface::Openai,
    };
    e.endpoint = Some(endpoint);
    e
}

/// The one fixed contract dataset: 240 generated requests of account A
/// (two keys, three providers, successes and 4xx/5xx — ten of them 402
/// `insufficient_credits` refusals — operator and BYOK, all four
/// endpoints, spanning a day and a month boundary) and 3 hand-written ones
/// of account B whose sums are checked as literals.
pub fn dataset() -> Vec<UsageEvent> {
    let base = t("2025-02-28T22:00:00Z");
    let mut events = Vec::new();
    for i in 0u64..240 {
        let started = base + Duration::milliseconds((i * 61_000 + (i * 137) % 1000) as i64);
        let key = if i % 3 == 0 { "ak_a2" } else { "ak_a1" };
        let (mut provider, mut model, mut credential) = match i % 4 {
            0 | 1 => (
                Some("openai"),
                "gpt-4o-mini",
                Some(if i % 5 == 0 {
                    CredentialSource::Byok
                } else {
                    CredentialSource::Operator
                }),
            ),
            2 => (
                Some("anthropic"),
                "claude-sonnet-4-5",
                Some(CredentialSource::Operator),
            ),
            _ => (
                Some("groq"),
                "llama-3.3-70b-versatile",
                Some(CredentialSource::Byok),
            ),
        };
        let mut status = 200;
        if i % 17 == 0 {
            provider = None;
            model = "no-such-model";
            credential = None;
            status = 404;
        } else if i % 11 == 0 {
            status = 429;
        } else if i % 13 == 0 {
            status = 502;
        } else if i % 19 == 0 {
            status = 499;
        } else if i % 23 == 0 {
            // Refused for want of credit before any upstream was tried.
            provider = None;
            credential = None;
            status = 402;
        }
        let anthropic = provider == Some("anthropic");
        let tokens = if status == 200 || status == 499 {
            TokenCounts {
                input: 100 + (i * 37) % 900,
                cached_input: (i % 3) * 50,
                cache_write_5m: if anthropic { (i % 2) * 20 } else { 0 },
                cache_write_1h: if anthropic && i % 7 == 0 { 10 } else { 0 },
                output: if status == 499 {
                    5
                } else {
                    20 + (i * 53) % 400
                },
                // OpenAI reports a reasoning part of output (never above 20).
                reasoning: if provider == Some("openai") && status == 200 {
                    (i % 3) * 7
                } else {
                    0
                },
            }
        } else {
            TokenCounts::default()
        };
        let latency = 200_000 + (i * 7_919) % 3_000_000;
        let ttft = (i % 2 == 0 && status == 200).then_some(50_000 + (i * 3_571) % 400_000);
        let endpoint = match i % 8 {
            2 | 3 => Endpoint::Messages,
            5 => Endpoint::Embeddings,
            7 => Endpoint::Responses,
            _ => Endpoint::Chat,
        };
        // Attribution on some rows: three end users and none; tags `team`
        // and `env` in different combinations, and none.
        let end_user = match i % 6 {
            0 | 3 => Some(END_USERS[0]),
            1 => Some(END_USERS[1]),
            4 => Some(END_USERS[2]),
            _ => None,
        };
        let tags: &[(&str, &str)] = match i % 7 {
            0..=2 => &[("team", "search")],
            3 | 4 => &[("env", "prod"), ("team", "ads")],
            5 => &[("env", "prod")],
            _ => &[],
        };
        events.push(attributed(
            served_by(
                event(
                    ACCT_A, key, started, provider, model, credential, status, tokens, latency,
                    ttft,
                ),
                endpoint,
            ),
            end_user,
            tags,
        ));
    }
    let b_tokens = TokenCounts {
        input: 1_000,
        cached_input: 2_000,
        cache_write_5m: 100,
        cache_write_1h: 10,
        output: 500,
        reasoning: 300,
    };
    events.push(attributed(
        served_by(
            event(
                ACCT_B,
                "ak_b1",
                t("2025-03-01T00:10:00Z"),
                Some("anthropic"),
                "claude-sonnet-4-5",
                Some(CredentialSource::Operator),
                200,
                b_tokens,
                1_000_000,
                Some(300_000),
            ),
            Endpoint::Messages,
        ),
        Some(END_USERS[0]),
        &[("team", "search")],
    ));
    events.push(event(
        ACCT_B,
        "ak_b1",
        t("2025-03-01T00:20:00Z"),
        Some("anthropic"),
        "claude-sonnet-4-5",
        Some(CredentialSource::Byok),
        200,
        b_tokens,
        2_000_000,
        None,
    ));
    events.push(served_by(
        event(
            ACCT_B,
            "ak_b1",
            t("2025-03-01T01:05:00Z"),
            Some("openai"),
            "gpt-4o-mini",
            Some(CredentialSource::Operator),
            500,
            TokenCounts::default(),
            500_000,
            None,
        ),
        Endpoint::Embeddings,
    ));
    // Log order is not time order around the edges (events are appended
    // when they finish): swap a few neighbours.
    for i in (5..events.len() - 3).step_by(29) {
        events.swap(i, i + 1);
    }
    events
}

/// The dataset as stored rows at log positions (partition 0, offsets from 1).
pub fn rows(events: &[UsageEvent]) -> Vec<UsageRecord> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| UsageRecord::from_event(0, i as u64 + 1, e).unwrap())
        .collect()
}

pub fn log_record(event: &UsageEvent) -> LogRecord {
    LogRecord {
        topic: tollgate_eventlog::topics::ACCOUNT_EVENTS.to_owned(),
        key: event.account_id.to_string(),
        payload: serde_json::to_vec(&Envelope::usage(event.clone())).unwrap(),
    }
}

/// Write rows to a store directly, in batches, as the sink would.
pub async fn load(store: &dyn UsageStore, rows: &[UsageRecord], batch: usize) {
    for chunk in rows.chunks(batch) {
        let next = chunk.last().map(|r| r.log_offset + 1).unwrap_or(0);
        store
            .write(&WriteBatch {
                partition: 0,
                rows: chunk.into(),
                next_offset: next,
            })
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------- queries

pub fn q(start: &str, end: &str) -> UsageQuery {
    let mut query = UsageQuery::new(t(start), t(end));
    query.account_id = Some(AccountId::from(ACCT_A));
    query
}

pub const FULL_START: &str = "2025-02-28T00:00:00Z";
pub const FULL_END: &str = "2025-03-02T00:00:00Z";

/// Every contract query: groupings, buckets, each filter, both scopes.
pub fn contract_queries() -> Vec<(&'static str, UsageQuery)> {
    let full = || q(FULL_START, FULL_END);
    let mut cases = Vec::new();
    cases.push(("totals", full()));
    let mut c = full();
    c.group_by = vec![GroupBy::Model];
    c.bucket = Some(Bucket::Hour);
    cases.push(("by_model_hourly", c));
    let mut c = full();
    c.group_by = vec![GroupBy::Provider, GroupBy::Status];
    c.bucket = Some(Bucket::Day);
    cases.push(("by_provider_status_daily", c));
    let mut c = q("2025-02-28T22:30:15.250Z", "2025-03-01T01:17:42.900Z");
    c.group_by = vec![GroupBy::AccessKey];
    cases.push(("by_access_key_unaligned", c));
    let mut c = q("2025-02-28T23:00:00Z", "2025-03-01T01:00:00Z");
    c.group_by = vec![GroupBy::Provider];
    c.bucket = Some(Bucket::Minute);
    cases.push(("minute_buckets", c));
    let mut c = full();
    c.status_class = Some(StatusClass::ServerError);
    c.group_by = vec![GroupBy::Model];
    cases.push(("filter_5xx", c));
    let mut c = full();
    c.credential_source = Some(CredentialSource::Byok);
    c.group_by = vec![GroupBy::Provider];
    c.bucket = Some(Bucket::Hour);
    cases.push(("filter_byok_hourly", c));
    let mut c = full();
    c.provider = Some("anthropic".into());
    c.model = Some("claude-sonnet-4-5".into());
    c.access_key_id = Some("ak_a1".into());
    c.bucket = Some(Bucket::Day);
    cases.push(("filter_provider_model_key", c));
    let mut c = full();
    c.status_class = Some(StatusClass::ClientError);
    c.group_by = vec![
        GroupBy::Provider,
        GroupBy::Model,
        GroupBy::AccessKey,
        GroupBy::Status,
    ];
    cases.push(("filter_4xx_all_dims", c));
    let mut c = full();
    c.status_class = Some(StatusClass::Success);
    c.credential_source = Some(CredentialSource::Operator);
    c.group_by = vec![GroupBy::Status, GroupBy::Model];
    cases.push(("filter_2xx_operator", c));
    let mut c = full();
    c.account_id = None;
    c.group_by = vec![GroupBy::AccessKey];
    cases.push(("admin_all_accounts", c));
    let mut c = full();
    c.account_id = Some(AccountId::from(ACCT_B));
    cases.push(("account_b", c));
    cases.push((
        "empty_range",
        q("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"),
    ));
    let mut c = q("2025-02-28T23:00:00Z", "2025-03-01T02:00:00Z");
    c.group_by = vec![GroupBy::Model];
    cases.push(("hour_aligned_unbucketed", c));
    // The operator's views across accounts (the all-accounts rollups).
    let mut c = full();
    c.account_id = None;
    c.group_by = vec![GroupBy::Model];
    c.bucket = Some(Bucket::Hour);
    cases.push(("admin_by_model_hourly", c));
    // A status filter needs the all-accounts rollup that keeps status.
    let mut c = full();
    c.account_id = None;
    c.status_class = Some(StatusClass::ServerError);
    c.group_by = vec![GroupBy::Provider, GroupBy::Model];
    c.bucket = Some(Bucket::Hour);
    cases.push(("admin_hourly_5xx", c));
    let mut c = q("2025-02-28T23:58:00Z", "2025-03-01T00:07:00Z");
    c.account_id = None;
    c.group_by = vec![GroupBy::Provider, GroupBy::Status];
    c.bucket = Some(Bucket::Minute);
    cases.push(("admin_minutes", c));
    let mut c = full();
    c.account_id = None;
    c.credential_source = Some(CredentialSource::Operator);
    c.group_by = vec![GroupBy::Provider];
    c.bucket = Some(Bucket::Day);
    cases.push(("admin_daily_operator", c));
    let mut c = q("2025-02-28T22:17:30Z", "2025-03-01T00:00:00Z");
    c.account_id = None;
    c.group_by = vec![GroupBy::Model];
    cases.push(("admin_unaligned", c));
    // The serving endpoint: raw rows answer (no rollup keeps it), even
    // where the range is aligned to a rollup.
    let mut c = full();
    c.group_by = vec![GroupBy::Endpoint];
    c.bucket = Some(Bucket::Day);
    cases.push(("by_endpoint_daily", c));
    let mut c = full();
    c.endpoint = Some(Endpoint::Embeddings);
    c.group_by = vec![GroupBy::Provider];
    cases.push(("filter_embeddings", c));
    let mut c = full();
    c.account_id = None;
    c.endpoint = Some(Endpoint::Messages);
    c.group_by = vec![GroupBy::Model, GroupBy::Endpoint];
    c.bucket = Some(Bucket::Hour);
    cases.push(("admin_messages_hourly", c));
    let mut c = full();
    c.account_id = None;
    c.endpoint = Some(Endpoint::Responses);
    c.status_class = Some(StatusClass::Success);
    c.group_by = vec![GroupBy::Endpoint, GroupBy::AccessKey];
    cases.push(("admin_responses_2xx", c));
    // Attribution: raw rows answer (no rollup keeps end users or tags),
    // even where the range is aligned to a rollup.
    let mut c = full();
    c.group_by = vec![GroupBy::EndUser];
    cases.push(("by_end_user", c));
    let mut c = full();
    c.group_by = vec![GroupBy::Tag];
    c.group_tag = Some("team".into());
    c.bucket = Some(Bucket::Day);
    cases.push(("by_tag_team_daily", c));
    let mut c = full();
    c.end_user = Some(END_USERS[2].into());
    c.group_by = vec![GroupBy::Model];
    cases.push(("filter_end_user_quoted", c));
    let mut c = full();
    c.tag = Some(("env".into(), "prod".into()));
    c.group_by = vec![GroupBy::Tag, GroupBy::EndUser];
    c.group_tag = Some("team".into());
    cases.push(("filter_tag_by_other_tag_and_end_user", c));
    let mut c = full();
    c.account_id = None;
    c.tag = Some(("team".into(), "search".into()));
    c.group_by = vec![GroupBy::EndUser];
    c.bucket = Some(Bucket::Hour);
    cases.push(("admin_team_search_by_end_user_hourly", c));
    let mut c = full();
    c.account_id = None;
    c.end_user = Some(END_USERS[0].into());
    c.group_by = vec![GroupBy::Tag];
    c.group_tag = Some("no_such_key".into());
    cases.push(("admin_alice_by_absent_tag", c));
    cases
}

/// One expected group with the sorted values its percentiles come from.
pub struct Expected {
    pub group: UsageGroup,
    pub latency: Vec<u64>,
    pub ttft: Vec<u64>,
}

type Key = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<u16>,
    Option<&'static str>,
    Option<Option<String>>,
    Option<Option<String>>,
);

/// Independent reference: a plain loop over the events.
pub fn reference(events: &[UsageEvent], query: &UsageQuery) -> Vec<Expected> {
    let mut groups: BTreeMap<Key, (UsageGroup, Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for e in events {
        let ms = e.started_at.timestamp_millis();
        if ms < query.start.timestamp_millis() || ms >= query.end.timestamp_millis() {
            continue;
        }
        if let Some(a) = &query.account_id {
            if &e.account_id != a {
                continue;
            }
        }
        let provider = e.provider.clone().unwrap_or_default();
        let model = e
            .model_served
            .clone()
            .unwrap_or_else(|| e.model_requested.clone());
        if query
            .access_key_id
            .as_deref()
            .is_some_and(|k| k != e.access_key_id.as_str())
            || query.provider.as_deref().is_some_and(|p| p != provider)
            || query.model.as_deref().is_some_and(|m| m != model)
            || query
                .credential_source
                .is_some_and(|c| e.credential_source != Some(c))
            || query.endpoint.is_some_and(|x| x != e.served_endpoint())
            || query
                .end_user
                .as_ref()
                .is_some_and(|u| e.end_user.as_ref() != Some(u))
            || query
                .tag
                .as_ref()
                .is_some_and(|(k, v)| e.tags.get(k) != Some(v))
        {
            continue;
        }
        if let Some(class) = query.status_class {
            let (lo, hi) = class.range();
            if e.status < lo || e.status >= hi {
                continue;
            }
        }
        let key: Key = (
            query.bucket.map(|b| ms - ms.rem_euclid(b.millis())),
            query.groups(GroupBy::Provider).then(|| provider.clone()),
            query.groups(GroupBy::Model).then(|| model.clone()),
            query
                .groups(GroupBy::AccessKey)
                .then(|| e.access_key_id.to_string()),
            query.groups(GroupBy::Status).then_some(e.status),
            query
                .groups(GroupBy::Endpoint)
                .then(|| e.served_endpoint().as_str()),
            query.groups(GroupBy::EndUser).then(|| e.end_user.clone()),
            query.groups(GroupBy::Tag).then(|| {
                e.tags
                    .get(query.group_tag.as_deref().unwrap_or_default())
                    .cloned()
            }),
        );
        let entry = groups.entry(key.clone()).or_insert_with(|| {
            (
                UsageGroup {
                    bucket_start: key.0.map(|ms| Utc.timestamp_millis_opt(ms).unwrap()),
                    provider: key.1.clone(),
                    model: key.2.clone(),
                    access_key_id: key.3.clone(),
                    status: key.4,
                    endpoint: key.5.and_then(Endpoint::parse),
                    end_user: key.6.clone(),
                    tag: key.7.clone(),
                    ..UsageGroup::default()
                },
                Vec::new(),
                Vec::new(),
            )
        });
        let g = &mut entry.0;
        g.requests += 1;
        g.errors += u64::from(e.status >= 400);
        g.tokens.input += e.tokens.input;
        g.tokens.cached_input += e.tokens.cached_input;
        g.tokens.cache_write_5m += e.tokens.cache_write_5m;
        g.tokens.cache_write_1h += e.tokens.cache_write_1h;
        g.tokens.output += e.tokens.output;
        g.tokens.reasoning += e.tokens.reasoning;
        let cost = tollgate_core::pricing::cost_of(e);
        g.cost.fee += cost.fee.amount();
        g.cost.upstream += cost.upstream.amount();
        entry.1.push(e.latency_us);
        if let Some(ttft) = e.ttft_us {
            entry.2.push(ttft);
        }
    }
    let mut out: Vec<Expected> = groups
        .into_values()
        .map(|(mut group, mut latency, mut ttft)| {
            latency.sort_unstable();
            ttft.sort_unstable();
            let pct = |v: &[u64], l: f64| exact_quantile(v, l).map(|x| x as f64 / 1000.0);
            group.cost = CostTotals {
                fee: group.cost.fee.normalize(),
                upstream: group.cost.upstream.normalize(),
            };
            group.latency_ms = LatencyPercentiles {
                p50: pct(&latency, LATENCY_LEVELS[0]),
                p95: pct(&latency, LATENCY_LEVELS[1]),
                p99: pct(&latency, LATENCY_LEVELS[2]),
            };
            group.ttft_ms = TtftPercentiles {
                p50: pct(&ttft, TTFT_LEVELS[0]),
                p95: pct(&ttft, TTFT_LEVELS[1]),
            };
            Expected {
                group,
                latency,
                ttft,
            }
        })
        .collect();
    // The order every store promises (see `sort_groups`).
    out.sort_by(|a, b| {
        let key = |g: &UsageGroup| {
            (
                g.bucket_start,
                g.provider.clone(),
                g.model.clone(),
                g.access_key_id.clone(),
                g.status,
                g.endpoint.map(Endpoint::as_str),
                g.end_user.clone(),
                g.tag.clone(),
            )
        };
        key(&a.group).cmp(&key(&b.group))
    });
    out
}

/// How percentiles must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Percentiles {
    /// Raw rows: identical to the reference (same quantileExact definition).
    Exact,
    /// Merged t-digest states: within ±(1 + n/100) ranks of the exact
    /// value, i.e. between the sorted values at those ranks.
    RankTolerance,
}

fn check_percentile(
    what: &str,
    got: Option<f64>,
    want: Option<f64>,
    sorted: &[u64],
    level: f64,
    mode: Percentiles,
) {
    match mode {
        Percentiles::Exact => assert_eq!(got, want, "{what}"),
        Percentiles::RankTolerance => {
            assert_eq!(got.is_some(), want.is_some(), "{what}: presence");
            let Some(got) = got else { return };
            let n = sorted.len();
            let k = ((level * n as f64) as usize).min(n - 1);
            let slack = 1 + n / 100;
            let lo = sorted[k.saturating_sub(slack)] as f64 / 1000.0;
            let hi = sorted[(k + slack).min(n - 1)] as f64 / 1000.0;
            // Float32 states: allow a relative 1e-6 on top of the ranks.
            let eps = hi.abs() * 1e-6 + 1e-3;
            assert!(
                got >= lo - eps && got <= hi + eps,
                "{what}: {got} ms not within ranks [{lo}, {hi}] ms"
            );
        }
    }
}

/// Compare a store's answer with the reference: everything exact except
/// percentiles in `RankTolerance` mode.
pub fn assert_matches(case: &str, got: &[UsageGroup], want: &[Expected], mode: Percentiles) {
    assert_eq!(
        got.len(),
        want.len(),
        "{case}: group count; got {:#?}",
        got.iter()
            .map(|g| (
                g.bucket_start,
                &g.provider,
                &g.model,
                &g.access_key_id,
                g.status,
                g.endpoint,
                &g.end_user,
                &g.tag
            ))
            .collect::<Vec<_>>()
    );
    for (g, w) in got.iter().zip(want) {
        let e = &w.group;
        let what = format!(
            "{case} group {:?}/{:?}/{:?}/{:?}/{:?}/{:?}/{:?}/{:?}",
            e.bucket_start,
            e.provider,
            e.model,
            e.access_key_id,
            e.status,
            e.endpoint,
            e.end_user,
            e.tag
        );
        assert_eq!(
            (
                g.bucket_start,
                &g.provider,
                &g.model,
                &g.access_key_id,
                g.status,
                g.endpoint,
                &g.end_user,
                &g.tag
            ),
            (
                e.bucket_start,
                &e.provider,
                &e.model,
                &e.access_key_id,
                e.status,
                e.endpoint,
                &e.end_user,
                &e.tag
            ),
            "{what}: keys"
        );
        assert_eq!(g.requests, e.requests, "{what}: requests");
        assert_eq!(g.errors, e.errors, "{what}: errors");
        assert_eq!(g.tokens, e.tokens, "{what}: tokens");
        assert_eq!(
            g.cost.fee.to_string(),
            e.cost.fee.to_string(),
            "{what}: fee"
        );
        assert_eq!(
            g.cost.upstream.to_string(),
            e.cost.upstream.to_string(),
            "{what}: upstream"
        );
        for (i, (level, got, want)) in [
            (LATENCY_LEVELS[0], g.latency_ms.p50, e.latency_ms.p50),
            (LATENCY_LEVELS[1], g.latency_ms.p95, e.latency_ms.p95),
            (LATENCY_LEVELS[2], g.latency_ms.p99, e.latency_ms.p99),
        ]
        .into_iter()
        .enumerate()
        {
            check_percentile(
                &format!("{what}: latency[{i}]"),
                got,
                want,
                &w.latency,
                level,
                mode,
            );
        }
        for (i, (level, got, want)) in [
            (TTFT_LEVELS[0], g.ttft_ms.p50, e.ttft_ms.p50),
            (TTFT_LEVELS[1], g.ttft_ms.p95, e.ttft_ms.p95),
        ]
        .into_iter()
        .enumerate()
        {
            check_percentile(
                &format!("{what}: ttft[{i}]"),
                got,
                want,
                &w.ttft,
                level,
                mode,
            );
        }
    }
}

/// Literal expectations, computed by hand, for account B's three events.
pub fn assert_account_b_literals(got: &[UsageGroup]) {
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.requests, 3);
    assert_eq!(g.errors, 1);
    assert_eq!(
        g.tokens,
        TokenTotals {
            input: 2_000,
            cached_input: 4_000,
            cache_write_5m: 200,
            cache_write_1h: 20,
            output: 1_000,
            reasoning: 600,
        }
    );
    // 2 × 3,610 tokens × $0.05/M; upstream only for the operator request:
    // 1000×3 + 2000×0.30 + 100×3.75 + 10×6 + 500×15, per million. The
    // reasoning tokens are a part of output: they add nothing.
    assert_eq!(g.cost.fee.to_string(), "0.000361");
    assert_eq!(g.cost.upstream.to_string(), "0.011535");
    let json = serde_json::to_value(g).unwrap();
    assert_eq!(json["cost"]["fee"], "0.000361");
    assert_eq!(json["cost"]["upstream"], "0.011535");
    let _ = Decimal::ZERO;
}

// ---------------------------------------------------------------- stores

pub fn sqlite_store() -> (
    tempfile::TempDir,
    tollgate_sqlite::Database,
    Arc<SqliteUsageStore>,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = tollgate_sqlite::Database::open(
        dir.path().join("tollgate.db"),
        tollgate_sqlite::Durability::Normal,
    )
    .unwrap();
    let store = Arc::new(SqliteUsageStore::open(&db).unwrap());
    (dir, db, store)
}

pub fn clickhouse_url() -> String {
    std::env::var("TOLLGATE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("tg_test_{tag}_{}_{nanos}", std::process::id())
}

pub fn clickhouse_config(url: &str, tag: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.to_owned(),
        database: unique(tag),
        request_timeout_ms: 10_000,
        ..ClickHouseConfig::default()
    }
}

/// A store on the shared ClickHouse server, in a fresh database. Fails
/// (never skips) when the server is not there.
pub async fn shared_clickhouse(tag: &str) -> Arc<ClickHouseStore> {
    let url = clickhouse_url();
    let store = Arc::new(ClickHouseStore::new(clickhouse_config(&url, tag)));
    if let Err(err) = store.ping().await {
        panic!(
            "ClickHouse is not answering at {url} ({err}). These tests need a real server: \
             run ./scripts/test (which installs and starts one), or start clickhouse-server \
             and set TOLLGATE_CLICKHOUSE_URL."
        );
    }
    store.migrate().await.unwrap();
    store
}

pub async fn drop_database(store: &ClickHouseStore) {
    let db = store.config().database.clone();
    let server = ClickHouseStore::new(ClickHouseConfig {
        database: "default".into(),
        ..store.config().clone()
    });
    let _ = server
        .execute(&format!("DROP DATABASE IF EXISTS `{db}`"))
        .await;
}

/// Poll `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------- a private ClickHouse server

/// A clickhouse-server of our own (own data dir and ports) that a test may
/// stop and start again.
pub struct OwnClickHouse {
    dir: PathBuf,
    pub http_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_binary() -> String {
    for candidate in ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"] {
        if Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    "clickhouse-server".to_owned()
}

impl OwnClickHouse {
    pub async fn start(dir: &Path) -> OwnClickHouse {
        let http_port = free_port();
        let tcp_port = free_port();
        let interserver = free_port();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            dir.join("users.xml"),
            "<?xml version=\"1.0\"?>\n<yandex>\n<profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>\n\
             <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
             <profile>default</profile><quota>default</quota></default></users>\n<quotas><default></default></quotas>\n</yandex>\n",
        )
        .unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n\
                 <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><size>50M</size><count>1</count></logger>\n\
                 <http_port>{http_port}</http_port><tcp_port>{tcp_port}</tcp_port><interserver_http_port>{interserver}</interserver_http_port>\n\
                 <listen_host>127.0.0.1</listen_host>\n\
                 <path>{d}/data/</path><tmp_path>{d}/data/tmp/</tmp_path>\n\
                 <user_files_path>{d}/data/user_files/</user_files_path><format_schema_path>{d}/data/format_schemas/</format_schema_path>\n\
                 <users_config>{d}/users.xml</users_config><default_profile>default</default_profile><default_database>default</default_database>\n\
                 <mark_cache_size>67108864</mark_cache_size><max_concurrent_queries>50</max_concurrent_queries>\n\
                 </yandex>\n"
            ),
        )
        .unwrap();
        let mut server = OwnClickHouse {
            dir: dir.to_path_buf(),
            http_port,
            child: None,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Start (again) on the same data dir and ports; waits for `SELECT 1`.
    pub async fn resume(&mut self) {
        let child = Command::new(server_binary())
            .arg(format!("--config-file={}", self.dir.join("config.xml").display()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start clickhouse-server ({e}); install it: apt-get install clickhouse-server")
            });
        self.child = Some(child);
        let probe = ClickHouseStore::new(ClickHouseConfig {
            url: self.url(),
            database: "default".into(),
            request_timeout_ms: 2_000,
            ..ClickHouseConfig::default()
        });
        let up = eventually(std::time::Duration::from_secs(60), || async {
            probe.ping().await.is_ok()
        })
        .await;
        assert!(
            up,
            "own clickhouse-server did not answer within 60 s; see {}",
            self.dir.join("server.err.log").display()
        );
    }

    /// Kill the server (SIGKILL: a crash, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------ log, sink, API

pub fn event_log(db: &tollgate_sqlite::Database) -> Arc<tollgate_sqlite::SqliteEventLog> {
    Arc::new(
        tollgate_sqlite::SqliteEventLog::open(
            db,
            tollgate_sqlite::SqliteEventLogOptions::default(),
        )
        .unwrap(),
    )
}

pub async fn append_all(log: &dyn tollgate_eventlog::EventLog, events: &[UsageEvent]) {
    for e in events {
        log.append(log_record(e)).await.unwrap();
    }
    log.flush().await.unwrap();
}

pub fn fast_sink_config() -> tollgate_analytics::SinkConfig {
    tollgate_analytics::SinkConfig {
        batch_max_rows: 100,
        batch_max_wait_ms: 200,
        retry_initial_ms: 50,
        retry_max_ms: 500,
    }
}

/// Tokens the test authorizer knows.
pub const TOKEN_A: &str = "tgk_test_account_a";
pub const TOKEN_B: &str = "tgk_test_account_b";
pub const ADMIN: &str = "admin-token-for-tests";

pub fn test_authorizer() -> Arc<dyn tollgate_analytics::Authorizer> {
    let keys: std::collections::HashMap<String, AccountId> = [
        (
            tollgate_core::secrets::hash_access_token(TOKEN_A),
            AccountId::from(ACCT_A),
        ),
        (
            tollgate_core::secrets::hash_access_token(TOKEN_B),
            AccountId::from(ACCT_B),
        ),
    ]
    .into_iter()
    .collect();
    Arc::new(tollgate_analytics::TokenAuthorizer::new(
        Some(ADMIN),
        move |hash: &str| keys.get(hash).cloned(),
    ))
}

/// Serve the usage API on a free loopback port; returns its base URL.
pub async fn serve(store: Arc<dyn UsageStore>) -> String {
    let app = tollgate_analytics::router(store, test_authorizer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// GET /v1/usage with `params`; returns (status, JSON body).
pub async fn get_usage(
    base: &str,
    token: Option<&str>,
    params: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("{base}/v1/usage")).query(params);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}
