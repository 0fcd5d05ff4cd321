//! Tenancy: access keys created, revoked and rotated through the control
//! plane (and seen by every instance on the store), per-key configurations
//! (allowed providers and models, pass-through), provider keys (BYOK) tried
//! before operator keys, secrets kept out of storage and logs, per-key rate
//! limits, runtime custom providers, and what the official SDKs make of the
//! refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_control::ConfigurationSpec;
use tollgate_core::control::{Configuration, ProviderKey, RateLimits};
use tollgate_core::{AccessKeyId, ApiSurface, CredentialSource, UsageEvent};
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;
use tollgate_mock_upstream::{Rule, DEFAULT_REPLY};

const PROMPT: &str = "hello tenancy";
/// How long a change may take to reach another instance before a test fails.
/// Generous on purpose (the tail runs every 100 ms): a deadline, not a speed claim.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers

fn spec(name: &str) -> ConfigurationSpec {
    ConfigurationSpec {
        name: name.into(),
        allow_passthrough_models: true,
        ..ConfigurationSpec::default()
    }
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

/// A configuration on the test account, and a fresh key assigned to it.
async fn key_with(
    gw: &TestGateway,
    spec: ConfigurationSpec,
) -> (Configuration, AccessKeyId, String) {
    let config = gw
        .control
        .create_configuration(&gw.account_id, spec)
        .await
        .unwrap();
    let (key, token) = gw
        .control
        .create_access_key(&gw.account_id, "tenancy-key", Some(config.id.clone()))
        .await
        .unwrap();
    (config, key.id, token)
}

async fn add_key(gw: &TestGateway, provider: &str, name: &str, secret: &str) -> ProviderKey {
    gw.control
        .add_provider_key(&gw.account_id, provider, name, secret)
        .await
        .unwrap()
}

fn base(gw: &TestGateway) -> String {
    gw.url("")
}

/// Send `body` in the given client shape (`chat`/`messages` bodies are built per shape).
async fn send(base: &str, token: &str, api: ApiSurface, model: &str) -> reqwest::Response {
    match api {
        ApiSurface::Openai => post_openai_to(base, token, &chat(model, PROMPT)).await,
        ApiSurface::Anthropic => post_anthropic_to(base, token, &messages(model, PROMPT)).await,
    }
}

/// The API keys the mock saw, in order.
fn keys_seen(gw: &TestGateway) -> Vec<String> {
    gw.mock
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap_or_default())
        .collect()
}

/// Assert the error body has the client API's shape, and return its message.
fn error_message(api: ApiSurface, body: &Value, openai_type: &str, openai_code: &str) -> String {
    match api {
        ApiSurface::Openai => {
            let error = body["error"]
                .as_object()
                .unwrap_or_else(|| panic!("not an OpenAI error body: {body}"));
            for field in ["message", "type", "param", "code"] {
                assert!(error.contains_key(field), "no `{field}` in {body}");
            }
            assert_eq!(error["type"], openai_type, "{body}");
            assert_eq!(error["code"], openai_code, "{body}");
            assert_eq!(error["param"], "model", "{body}");
            error["message"].as_str().unwrap().to_owned()
        }
        ApiSurface::Anthropic => {
            assert_eq!(body["type"], "error", "not an Anthropic error body: {body}");
            let error = body["error"].as_object().unwrap();
            assert!(error.contains_key("type") && error.contains_key("message"));
            error["message"].as_str().unwrap().to_owned()
        }
    }
}

fn anthropic_type_for(status: u16) -> &'static str {
    match status {
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        other => panic!("no Anthropic error type expected for {other}"),
    }
}

/// POST `body` (OpenAI shape) to `base` with `token` until `done` accepts the
/// answer's (status, body), or fail at the deadline. Returns how long it took
/// and the accepted answer.
async fn poll_until(
    what: &str,
    base: &str,
    token: &str,
    body: &Value,
    mut done: impl FnMut(u16, &Value) -> bool,
) -> (Duration, reqwest::header::HeaderMap, Value) {
    let started = Instant::now();
    let mut last = (0, Value::Null);
    while started.elapsed() < PROPAGATION_DEADLINE {
        let (status, headers, answer) = json_of(post_openai_to(base, token, body).await).await;
        if done(status, &answer) {
            return (started.elapsed(), headers, answer);
        }
        last = (status, answer);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{what}: not seen within {PROPAGATION_DEADLINE:?}; last answer {} {}",
        last.0, last.1
    );
}

fn retry_after_secs(headers: &reqwest::header::HeaderMap) -> u64 {
    let value = headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("a 429 without retry-after: {headers:?}"))
        .to_str()
        .unwrap();
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|e| panic!("retry-after `{value}` is not integer seconds: {e}"));
    assert!(secs > 0 && secs <= 120, "retry-after {secs}");
    secs
}

fn event_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-tollgate-event-id")
        .expect("x-tollgate-event-id")
        .to_str()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// 1. Access-key lifecycle across instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_at_once_where_revoked_and_soon_by_every_other_instance() {
    let gw = start().await;
    let other = gw.start_instance().await;
    let other_base = other.url("");

    let (key, token) = gw
        .control
        .create_access_key(&gw.account_id, "lifecycle", None)
        .await
        .unwrap();
    // Created on A: usable there at once (read-your-writes) ...
    let (status, _, body) = json_of(gw_post(&gw, &token).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    // ... and on B once its tail has read the change.
    let (appeared, _, _) = poll_until(
        "the new key on the other instance",
        &other_base,
        &token,
        &chat("gpt-4o-mini", PROMPT),
        |status, _| status == 200,
    )
    .await;
    println!("new key accepted by the other instance after {appeared:?}");

    let revoked = gw.control.revoke_access_key(&key.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    // The revoking instance refuses immediately, in both shapes.
    let (status, headers, body) = json_of(gw_post(&gw, &token).await).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(
        headers.get("www-authenticate").unwrap().to_str().unwrap(),
        "Bearer"
    );
    let (status, _, body) =
        json_of(post_anthropic_to(&base(&gw), &token, &messages("claude-haiku-4-5", PROMPT)).await)
            .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");

    // The other instance refuses it once the revocation reaches it.
    let (delay, _, body) = poll_until(
        "the revocation on the other instance",
        &other_base,
        &token,
        &chat("gpt-4o-mini", PROMPT),
        |status, _| status == 401,
    )
    .await;
    println!("revoked key refused by the other instance after {delay:?}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    // And it stays refused.
    let response = post_openai_to(&other_base, &token, &chat("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 401);

    // A refused key has no account to bill: no usage event for it.
    let before = gw.usage_events().await.len();
    let response = gw_post(&gw, &token).await;
    assert_eq!(response.status(), 401);
    assert!(header(&response, "x-tollgate-event-id").is_empty());
    other.events.flush().await.unwrap();
    assert_eq!(gw.usage_events().await.len(), before);
}

async fn gw_post(gw: &TestGateway, token: &str) -> reqwest::Response {
    post_openai_to(&base(gw), token, &chat("gpt-4o-mini", PROMPT)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_an_access_key_by_create_then_revoke_switches_every_instance_to_the_new_key() {
    let gw = start().await;
    let other = gw.start_instance().await;
    let other_base = other.url("");
    let (old, old_token) = gw
        .control
        .create_access_key(&gw.account_id, "app-v1", None)
        .await
        .unwrap();
    poll_until(
        "the old key on the other instance",
        &other_base,
        &old_token,
        &chat("gpt-4o-mini", PROMPT),
        |status, _| status == 200,
    )
    .await;

    let (new, new_token) = gw
        .control
        .create_access_key(&gw.account_id, "app-v2", None)
        .await
        .unwrap();
    gw.control.revoke_access_key(&old.id).await.unwrap();
    assert_ne!(old_token, new_token);

    // Where the rotation was made: new works, old refused, immediately.
    assert_eq!(gw_post(&gw, &new_token).await.status(), 200);
    assert_eq!(gw_post(&gw, &old_token).await.status(), 401);

    // Elsewhere: once the old key is refused, the new one works.
    let (delay, _, _) = poll_until(
        "the old key's revocation on the other instance",
        &other_base,
        &old_token,
        &chat("gpt-4o-mini", PROMPT),
        |status, _| status == 401,
    )
    .await;
    println!("rotation reached the other instance after {delay:?}");
    let response = post_openai_to(&other_base, &new_token, &chat("gpt-4o-mini", PROMPT)).await;
    let id = event_id(response.headers());
    assert_eq!(response.status(), 200);
    // The other instance bills the new key.
    let event = gw.event(&id).await;
    assert_eq!(event.access_key_id, new.id);
    assert_eq!(event.account_id, gw.account_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_survives_a_later_change_written_from_a_stale_view() {
    let gw = start().await;
    let config = gw
        .control
        .create_configuration(&gw.account_id, spec("late-assignment"))
        .await
        .unwrap();
    // Another instance whose view has the key and the configuration but
    // will not have read the revocation when it writes.
    let (stale, _stale_log) = gw.stale_control().await;
    assert!(stale.snapshot().access_keys.contains_key(&gw.key_id));

    gw.control.revoke_access_key(&gw.key_id).await.unwrap();
    assert_eq!(gw_post(&gw, &gw.token).await.status(), 401);
    // An admin assigns the (revoked) key a configuration through that instance.
    stale
        .assign_configuration(&gw.key_id, Some(config.id.clone()))
        .await
        .unwrap();

    // Give the revoking instance time to read that change: the key stays revoked.
    let started = Instant::now();
    let mut seen = false;
    while started.elapsed() < PROPAGATION_DEADLINE {
        let key = gw.control.snapshot().access_keys[&gw.key_id].clone();
        if key.configuration_id.as_ref() == Some(&config.id) {
            assert!(
                key.revoked_at.is_some(),
                "the revocation was undone: {key:?}"
            );
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "the assignment never reached the revoking instance");
    assert_eq!(gw_post(&gw, &gw.token).await.status(), 401);
    // The stale instance's own view, now current, agrees.
    let key = stale.snapshot().access_keys[&gw.key_id].clone();
    assert!(key.revoked_at.is_some(), "{key:?}");
}

// ---------------------------------------------------------------------------
// 2. Configuration refusals

struct Refusal {
    model: &'static str,
    fallbacks: &'static [&'static str],
    status: u16,
    kind: &'static str,
    openai_type: &'static str,
    /// Text the message must contain.
    mentions: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_their_status_and_message_in_both_shapes_and_reach_no_upstream() {
    let gw = start().await;
    let mut only_openai = spec("only-openai");
    only_openai.allowed_providers = strings(&["openai"]);
    let mut few_models = spec("few-models");
    few_models.allowed_models = strings(&["openai:gpt-4o-mini", "gpt-4o"]);
    let mut no_passthrough = spec("no-passthrough");
    no_passthrough.allow_passthrough_models = false;
    let (_, _, providers_token) = key_with(&gw, only_openai).await;
    let (_, _, models_token) = key_with(&gw, few_models).await;
    let (_, _, passthrough_token) = key_with(&gw, no_passthrough).await;

    let cases: Vec<(&str, Refusal)> = vec![
        (
            providers_token.as_str(),
            Refusal {
                model: "claude-haiku-4-5",
                fallbacks: &[],
                status: 403,
                kind: "provider_not_allowed",
                openai_type: "permission_error",
                mentions: &["`anthropic`", "not allowed"],
            },
        ),
        (
            providers_token.as_str(),
            Refusal {
                model: "anthropic:claude-sonnet-4-5",
                fallbacks: &[],
                status: 403,
                kind: "provider_not_allowed",
                openai_type: "permission_error",
                mentions: &["`anthropic`", "not allowed"],
            },
        ),
        (
            models_token.as_str(),
            Refusal {
                model: "gpt-4.1-mini",
                fallbacks: &[],
                status: 403,
                kind: "model_not_allowed",
                openai_type: "permission_error",
                mentions: &["`gpt-4.1-mini`", "not allowed"],
            },
        ),
        (
            models_token.as_str(),
            Refusal {
                // The first model is allowed; a fallback is not.
                model: "gpt-4o-mini",
                fallbacks: &["gpt-4o", "openai:o3"],
                status: 403,
                kind: "model_not_allowed",
                openai_type: "permission_error",
                mentions: &["`openai:o3`", "not allowed"],
            },
        ),
        (
            providers_token.as_str(),
            Refusal {
                // A fallback on a provider that is not allowed.
                model: "gpt-4o-mini",
                fallbacks: &["claude-haiku-4-5"],
                status: 403,
                kind: "provider_not_allowed",
                openai_type: "permission_error",
                mentions: &["`anthropic`", "not allowed"],
            },
        ),
        (
            passthrough_token.as_str(),
            Refusal {
                model: "openai:gpt-unlisted-preview",
                fallbacks: &[],
                status: 403,
                kind: "passthrough_not_allowed",
                openai_type: "permission_error",
                mentions: &["`openai:gpt-unlisted-preview`", "pass-through"],
            },
        ),
        (
            passthrough_token.as_str(),
            Refusal {
                model: "no-such-model-anywhere",
                fallbacks: &[],
                status: 404,
                kind: "model_unknown",
                openai_type: "invalid_request_error",
                mentions: &["`no-such-model-anywhere`", "unknown model"],
            },
        ),
        (
            models_token.as_str(),
            Refusal {
                model: "no-such-model-anywhere",
                fallbacks: &[],
                status: 404,
                kind: "model_unknown",
                openai_type: "invalid_request_error",
                mentions: &["`no-such-model-anywhere`", "unknown model"],
            },
        ),
    ];

    let mut sent = 0;
    for (token, case) in &cases {
        for api in [ApiSurface::Openai, ApiSurface::Anthropic] {
            let mut body = match api {
                ApiSurface::Openai => chat(case.model, PROMPT),
                ApiSurface::Anthropic => messages(case.model, PROMPT),
            };
            if !case.fallbacks.is_empty() {
                body["models"] = json!(case.fallbacks);
            }
            let response = match api {
                ApiSurface::Openai => post_openai_to(&base(&gw), token, &body).await,
                ApiSurface::Anthropic => post_anthropic_to(&base(&gw), token, &body).await,
            };
            sent += 1;
            let what = format!("{} via {}", case.model, api.as_str());
            let id = event_id(response.headers());
            let (status, _, body) = json_of(response).await;
            assert_eq!(status, case.status, "{what}: {body}");
            let openai_code = if case.kind == "model_unknown" {
                "model_not_found"
            } else {
                case.kind
            };
            let message = error_message(api, &body, case.openai_type, openai_code);
            if api == ApiSurface::Anthropic {
                assert_eq!(
                    body["error"]["type"],
                    anthropic_type_for(case.status),
                    "{what}: {body}"
                );
            }
            for text in case.mentions {
                assert!(
                    message.contains(text),
                    "{what}: `{text}` not in {message:?}"
                );
            }
            // One usage event per refusal, with its kind; no upstream attempt.
            let event = gw.event(&id).await;
            assert_eq!(event.status, case.status, "{what}");
            assert_eq!(event.error_kind.as_deref(), Some(case.kind), "{what}");
            assert_eq!(event.model_requested, case.model, "{what}");
            assert_eq!(event.attempts, 0, "{what}");
            assert_eq!(event.provider, None, "{what}");
            assert_eq!(event.credential_source, None, "{what}");
        }
    }
    assert!(
        gw.mock.requests().is_empty(),
        "a refused request reached the upstream: {:#?}",
        gw.mock.requests()
    );
    assert_eq!(gw.wait_for_events(sent).await.len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_models_may_be_listed_as_provider_model_bare_id_or_alias() {
    let gw = start().await;
    let mut allowed = spec("allowed-forms");
    allowed.allowed_models = strings(&[
        "openai:gpt-4o-mini",        // provider:model
        "gpt-4o",                    // bare id
        "gpt-4.1-2025-04-14",        // alias of gpt-4.1
        "claude-haiku-4-5-20251001", // alias of claude-haiku-4-5
    ]);
    let (_, _, token) = key_with(&gw, allowed).await;

    // Every name of an allowed model works, however the entry was written.
    let allowed_names = [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("openai:gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o", "gpt-4o"),
        ("openai:gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("openai:gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1", "gpt-4.1"),
        ("openai:gpt-4.1", "gpt-4.1"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-haiku-4-5", "claude-haiku-4-5"),
        ("anthropic:claude-haiku-4-5", "claude-haiku-4-5"),
    ];
    let mut failures = Vec::new();
    for (name, served) in allowed_names {
        for api in [ApiSurface::Openai, ApiSurface::Anthropic] {
            let response = send(&base(&gw), &token, api, name).await;
            let model = header(&response, "x-tollgate-model");
            let (status, _, body) = json_of(response).await;
            if status != 200 || model != served {
                failures.push(format!(
                    "{name} via {}: {status} (served {model:?}) {body}",
                    api.as_str()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "allowed model names refused:\n{}",
        failures.join("\n")
    );

    // Anything else is still refused.
    for name in ["gpt-4.1-mini", "claude-sonnet-4-5", "openai:gpt-unlisted"] {
        let response = send(&base(&gw), &token, ApiSurface::Openai, name).await;
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, 403, "{name}: {body}");
        assert_eq!(body["error"]["code"], "model_not_allowed", "{name}: {body}");
    }
}

// ---------------------------------------------------------------------------
// 3. Provider keys (BYOK) before operator keys

const BYOK_A: &str = "sk-byok-alpha-3c9f1e77d2";
const BYOK_B: &str = "sk-byok-bravo-8a41b0c6e5";
const BYOK_B_ROTATED: &str = "sk-byok-bravo-rotated-5d2e9a";

/// A key whose configuration has openai provider keys A then B attached.
async fn byok_setup(gw: &TestGateway) -> (Configuration, String, ProviderKey, ProviderKey) {
    let (config, _, token) = key_with(gw, spec("byok")).await;
    let a = add_key(gw, "openai", "team-a", BYOK_A).await;
    let b = add_key(gw, "openai", "team-b", BYOK_B).await;
    gw.control
        .attach_provider_key(&config.id, &a.id)
        .await
        .unwrap();
    gw.control
        .attach_provider_key(&config.id, &b.id)
        .await
        .unwrap();
    (config, token, a, b)
}

async fn byok_request(gw: &TestGateway, token: &str) -> (u16, UsageEvent) {
    let response = gw_post(gw, token).await;
    let id = event_id(response.headers());
    let (status, _, body) = json_of(response).await;
    if status == 200 {
        assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    }
    (status, gw.event(&id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_are_tried_most_recently_attached_first_before_operator_keys() {
    let gw = start().await;
    let (_, token, a, _b) = byok_setup(&gw).await;
    gw.mock.add_rule(Rule::for_key(BYOK_B).fail(429));

    let (status, event) = byok_request(&gw, &token).await;
    assert_eq!(status, 200);
    assert_eq!(keys_seen(&gw), [BYOK_B, BYOK_A]);
    assert_eq!(event.attempts, 2);
    assert_eq!(event.credential_source, Some(CredentialSource::Byok));
    assert_eq!(event.provider_key_id.as_ref(), Some(&a.id));
    assert_eq!(event.provider.as_deref(), Some("openai"));

    // A key's provider keys are only for that provider: anthropic uses the operator's.
    gw.mock.clear_requests();
    let response = post_openai_to(&base(&gw), &token, &chat("claude-haiku-4-5", PROMPT)).await;
    let id = event_id(response.headers());
    assert_eq!(response.status(), 200);
    assert_eq!(keys_seen(&gw), [ANTHROPIC_KEY]);
    let event = gw.event(&id).await;
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.provider_key_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_provider_key_fails_the_operator_key_answers() {
    let gw = start().await;
    let (_, token, _a, _b) = byok_setup(&gw).await;
    gw.mock.add_rule(Rule::for_key(BYOK_B).fail(429));
    gw.mock.add_rule(Rule::for_key(BYOK_A).fail(401));

    let (status, event) = byok_request(&gw, &token).await;
    assert_eq!(status, 200);
    assert_eq!(keys_seen(&gw), [BYOK_B, BYOK_A, OPENAI_KEY]);
    assert_eq!(event.attempts, 3);
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.provider_key_id, None);

    // Every credential failing: the last attempt's key is what the event records.
    gw.mock.clear_requests();
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).fail(503));
    let (status, event) = byok_request(&gw, &token).await;
    assert_eq!(status, 502);
    assert_eq!(keys_seen(&gw), [BYOK_B, BYOK_A, OPENAI_KEY]);
    assert_eq!(event.attempts, 3);
    assert_eq!(event.error_kind.as_deref(), Some("upstream_failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattaching_a_provider_key_moves_it_to_the_front() {
    let gw = start().await;
    let (config, token, a, b) = byok_setup(&gw).await;
    gw.control
        .attach_provider_key(&config.id, &a.id)
        .await
        .unwrap();
    gw.mock.add_rule(Rule::for_key(BYOK_A).fail(500));
    gw.mock.add_rule(Rule::for_key(BYOK_B).fail(429));
    let (status, event) = byok_request(&gw, &token).await;
    assert_eq!(status, 200);
    assert_eq!(keys_seen(&gw), [BYOK_A, BYOK_B, OPENAI_KEY]);
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));

    // Re-attach B: back in front; with rules cleared it answers alone.
    gw.control
        .attach_provider_key(&config.id, &b.id)
        .await
        .unwrap();
    gw.mock.clear_rules();
    gw.mock.clear_requests();
    let (status, event) = byok_request(&gw, &token).await;
    assert_eq!(status, 200);
    assert_eq!(keys_seen(&gw), [BYOK_B]);
    assert_eq!(event.provider_key_id.as_ref(), Some(&b.id));
    // The configuration lists each key once.
    let config = gw.control.configuration(&config.id).unwrap();
    assert_eq!(config.provider_keys.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_provider_key_keeps_its_id_and_the_new_secret_reaches_the_upstream() {
    let gw = start().await;
    let other = gw.start_instance().await;
    let (config, token, _a, b) = byok_setup(&gw).await;
    let (status, event) = byok_request(&gw, &token).await;
    assert_eq!(status, 200);
    assert_eq!(keys_seen(&gw), [BYOK_B]);
    assert_eq!(event.provider_key_id.as_ref(), Some(&b.id));

    // Rotate through the other instance's control plane (once its view has
    // the key): the rotation reaches this instance through the control topic.
    let started = Instant::now();
    while !other.control.snapshot().provider_keys.contains_key(&b.id) {
        assert!(
            started.elapsed() < PROPAGATION_DEADLINE,
            "the other instance never saw the provider key"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rotated = other
        .control
        .rotate_provider_key(&b.id, BYOK_B_ROTATED)
        .await
        .unwrap();
    assert_eq!(rotated.id, b.id);
    assert!(rotated.rotated_at.is_some());
    // The upstream now refuses the old secret (as a provider would after a rotation).
    gw.mock.add_rule(Rule::for_key(BYOK_B).fail(401));

    let started = Instant::now();
    loop {
        gw.mock.clear_requests();
        let (status, event) = byok_request(&gw, &token).await;
        assert_eq!(status, 200);
        if keys_seen(&gw).first().map(String::as_str) == Some(BYOK_B_ROTATED) {
            assert_eq!(keys_seen(&gw), [BYOK_B_ROTATED]);
            assert_eq!(event.provider_key_id.as_ref(), Some(&b.id));
            assert_eq!(event.credential_source, Some(CredentialSource::Byok));
            break;
        }
        assert!(
            started.elapsed() < PROPAGATION_DEADLINE,
            "the rotated secret never reached the upstream; keys seen: {:?}",
            keys_seen(&gw)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!(
        "provider key rotation applied after {:?}",
        started.elapsed()
    );
    // Still attached under the same id; the old secret is gone for good.
    let config = gw.control.configuration(&config.id).unwrap();
    assert!(config
        .provider_keys
        .iter()
        .any(|k| k.provider_key_id == b.id));
    gw.mock.clear_requests();
    byok_request(&gw, &token).await;
    assert_eq!(keys_seen(&gw), [BYOK_B_ROTATED]);
}

// ---------------------------------------------------------------------------
// 4. Secrets at rest and in logs

/// An in-memory log sink for one test's tracing subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn read_if_exists(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

// current_thread: every task of the gateway, the mock and the control-plane
// tail runs on this thread, so the thread's default subscriber sees them all.
#[tokio::test(flavor = "current_thread")]
async fn provider_key_secrets_never_reach_the_database_stored_events_or_logs() {
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = LogBuffer::default();
    let writer = logs.clone();
    // `set_default` (SubscriberInitExt) also routes `log` records (reqwest's)
    // into tracing, so they are checked too.
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();

    let gw = start().await;
    let (config, token, a, b) = byok_setup(&gw).await;
    let anthropic_secret = "sk-ant-byok-charlie-47e1f09b3a";
    let c = add_key(&gw, "anthropic", "team-c", anthropic_secret).await;
    gw.control
        .attach_provider_key(&config.id, &c.id)
        .await
        .unwrap();
    let secrets = [BYOK_A, BYOK_B, BYOK_B_ROTATED, anthropic_secret];

    // Successes, a failover, a refused credential, a total failure, streams,
    // both client shapes, and a rotation.
    gw.mock.add_rule(Rule::for_key(BYOK_B).times(1).fail(429));
    gw.mock.add_rule(Rule::for_key(BYOK_A).times(1).fail(401));
    assert_eq!(gw_post(&gw, &token).await.status(), 200);
    assert_eq!(gw_post(&gw, &token).await.status(), 200);
    gw.mock.add_rule(Rule::for_model("always-fails").fail(500));
    let response = post_openai_to(&base(&gw), &token, &chat("openai:always-fails", PROMPT)).await;
    assert_eq!(response.status(), 502);
    let response =
        post_anthropic_to(&base(&gw), &token, &messages("claude-haiku-4-5", PROMPT)).await;
    assert_eq!(response.status(), 200);
    let response =
        post_anthropic_to(&base(&gw), &token, &messages_stream("gpt-4o-mini", PROMPT)).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let response =
        post_openai_to(&base(&gw), &token, &chat_stream("claude-haiku-4-5", PROMPT)).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    gw.control
        .rotate_provider_key(&b.id, BYOK_B_ROTATED)
        .await
        .unwrap();
    assert_eq!(gw_post(&gw, &token).await.status(), 200);
    let seen: Vec<String> = keys_seen(&gw);
    for secret in secrets {
        assert!(
            seen.iter().any(|k| k == secret),
            "{secret} was never used upstream, so the check below would prove nothing: {seen:?}"
        );
    }

    // Stored events (usage and control) never hold a secret.
    gw.events.flush().await.unwrap();
    let mut records = 0;
    for topic in [topics::ACCOUNT_EVENTS, topics::CONTROL] {
        for record in gw.events.read(topic, 0, 0, 100_000).await.unwrap() {
            records += 1;
            for secret in secrets {
                assert!(
                    !contains(&record.payload, secret.as_bytes()),
                    "{topic} record {} holds a provider key secret: {}",
                    record.offset,
                    String::from_utf8_lossy(&record.payload)
                );
            }
        }
    }
    assert!(records > 10, "only {records} records stored");

    // Nor do the database files.
    let wal = gw.db_path.with_extension("db-wal");
    let mut files = read_if_exists(&gw.db_path);
    files.extend(read_if_exists(&wal));
    assert!(
        contains(&files, a.id.to_string().as_bytes()),
        "the provider key's id is not in {} or its WAL: reading the wrong files?",
        gw.db_path.display()
    );
    for secret in secrets {
        assert!(
            !contains(&files, secret.as_bytes()),
            "{secret} is stored in plain text in the database"
        );
    }

    // Nor does the log output.
    let text = logs.text();
    assert!(
        text.contains("all upstream attempts failed"),
        "the log capture did not work (expected the failover warning):\n{text}"
    );
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{secret} appears in the logs:\n{text}"
        );
    }
    println!("checked {} bytes of log output", text.len());
}

// ---------------------------------------------------------------------------
// 5. Rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_refuse_with_429_and_retry_after_in_both_shapes() {
    let gw = start().await;
    let mut limited = spec("two-a-minute");
    limited.rate_limits = RateLimits {
        requests_per_minute: Some(2),
        tokens_per_minute: None,
    };
    let (config, _, _) = key_with(&gw, limited).await;

    for api in [ApiSurface::Openai, ApiSurface::Anthropic] {
        let (_, token) = gw
            .control
            .create_access_key(&gw.account_id, "limited", Some(config.id.clone()))
            .await
            .unwrap();
        for i in 0..2 {
            let response = send(&base(&gw), &token, api, "gpt-4o-mini").await;
            assert_eq!(response.status(), 200, "request {i} via {}", api.as_str());
        }
        let response = send(&base(&gw), &token, api, "gpt-4o-mini").await;
        let id = event_id(response.headers());
        let (status, headers, body) = json_of(response).await;
        assert_eq!(status, 429, "{body}");
        retry_after_secs(&headers);
        let message = match api {
            ApiSurface::Openai => {
                assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
                body["error"]["message"].as_str().unwrap().to_owned()
            }
            ApiSurface::Anthropic => {
                assert_eq!(body["type"], "error", "{body}");
                assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
                body["error"]["message"].as_str().unwrap().to_owned()
            }
        };
        assert!(message.contains("requests_per_minute"), "{message}");
        let event = gw.event(&id).await;
        assert_eq!(event.status, 429);
        assert_eq!(event.error_kind.as_deref(), Some("rate_limited"));
        assert_eq!(event.attempts, 0);
    }
    // Only the admitted requests went upstream.
    assert_eq!(gw.mock.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_refuse_the_request_after_one_that_used_them_up() {
    let gw = start().await;
    let mut limited = spec("few-tokens");
    limited.rate_limits = RateLimits {
        requests_per_minute: None,
        tokens_per_minute: Some(20),
    };
    let (config, _, token) = key_with(&gw, limited).await;
    // 30 prompt words: the mock reports 30 input + 5 output tokens.
    let long_prompt = vec!["word"; 30].join(" ");
    let response = post_openai_to(&base(&gw), &token, &chat("gpt-4o-mini", &long_prompt)).await;
    let id = event_id(response.headers());
    assert_eq!(response.status(), 200);
    let event = gw.event(&id).await;
    assert!(event.tokens.total() > 20, "{:?}", event.tokens);

    for api in [ApiSurface::Openai, ApiSurface::Anthropic] {
        let response = send(&base(&gw), &token, api, "gpt-4o-mini").await;
        let (status, headers, body) = json_of(response).await;
        assert_eq!(status, 429, "via {}: {body}", api.as_str());
        retry_after_secs(&headers);
        let message = match api {
            ApiSurface::Openai => body["error"]["message"].as_str().unwrap().to_owned(),
            ApiSurface::Anthropic => {
                assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
                body["error"]["message"].as_str().unwrap().to_owned()
            }
        };
        assert!(message.contains("tokens_per_minute"), "{message}");
    }

    // Another key of the same account, even on the same configuration, has
    // its own budget; so does a key without a configuration.
    let (_, other_token) = gw
        .control
        .create_access_key(&gw.account_id, "sibling", Some(config.id.clone()))
        .await
        .unwrap();
    assert_eq!(gw_post(&gw, &other_token).await.status(), 200);
    assert_eq!(gw_post(&gw, &gw.token).await.status(), 200);
    assert_eq!(gw.mock.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_key_leaves_the_accounts_other_keys_alone() {
    let gw = start().await;
    let mut limited = spec("one-a-minute");
    limited.rate_limits = RateLimits {
        requests_per_minute: Some(1),
        tokens_per_minute: None,
    };
    let (config, _, token) = key_with(&gw, limited).await;
    let (_, sibling) = gw
        .control
        .create_access_key(&gw.account_id, "sibling", Some(config.id.clone()))
        .await
        .unwrap();
    assert_eq!(gw_post(&gw, &token).await.status(), 200);
    assert_eq!(gw_post(&gw, &token).await.status(), 429);
    assert_eq!(gw_post(&gw, &sibling).await.status(), 200);
    assert_eq!(gw_post(&gw, &sibling).await.status(), 429);
    // The account's unrestricted key is not limited at all.
    for _ in 0..5 {
        assert_eq!(gw_post(&gw, &gw.token).await.status(), 200);
    }
}

// ---------------------------------------------------------------------------
// 6. Runtime custom providers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_provider_created_at_runtime_becomes_callable_with_its_provider_key() {
    let gw = start().await;
    let other = gw.start_instance().await;
    let (config, _, token) = key_with(&gw, spec("custom")).await;
    let secret = "sk-runtime-box-key-61c0d2";

    // Unknown before it is created.
    let response = post_openai_to(&base(&gw), &token, &chat("runtime-box:box-model", PROMPT)).await;
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown provider `runtime-box`"),
        "{body}"
    );

    // Created through the other instance's control plane while this one runs.
    let provider = other
        .control
        .create_custom_provider(
            "runtime-box",
            &gw.mock.base_url(),
            ApiSurface::Openai,
            vec!["box-model".into()],
            vec![],
            false,
        )
        .await
        .unwrap();
    assert!(provider.base_url.starts_with("http://127.0.0.1:"));
    let key = other
        .control
        .add_provider_key(&gw.account_id, "runtime-box", "box", secret)
        .await
        .unwrap();
    other
        .control
        .attach_provider_key(&config.id, &key.id)
        .await
        .unwrap();

    gw.mock.clear_requests();
    let (delay, headers, body) = poll_until(
        "the runtime custom provider with its key",
        &base(&gw),
        &token,
        &chat("runtime-box:box-model", PROMPT),
        |status, _| {
            status == 200
                && gw
                    .mock
                    .requests()
                    .last()
                    .is_some_and(|r| r.api_key.as_deref() == Some(secret))
        },
    )
    .await;
    println!("runtime custom provider callable after {delay:?}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(
        headers
            .get("x-tollgate-provider")
            .unwrap()
            .to_str()
            .unwrap(),
        "runtime-box"
    );
    let last = gw.mock.requests().pop().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.body["model"], "box-model");
    let event = gw.event(&event_id(&headers)).await;
    assert_eq!(event.provider.as_deref(), Some("runtime-box"));
    assert_eq!(event.credential_source, Some(CredentialSource::Byok));
    assert_eq!(event.provider_key_id.as_ref(), Some(&key.id));

    // Its declared model is callable by its bare id too, from the Anthropic shape.
    gw.mock.clear_requests();
    let response = post_anthropic_to(&base(&gw), &token, &messages("box-model", PROMPT)).await;
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys_seen(&gw), [secret]);

    // Without a provider key the operator would pay, and a runtime custom
    // provider declares no prices: refused as unpriced, nothing sent.
    gw.mock.clear_requests();
    for api in [ApiSurface::Openai, ApiSurface::Anthropic] {
        let response = send(&base(&gw), &gw.token, api, "runtime-box:box-model").await;
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, 403, "{body}");
        let message = error_message(api, &body, "permission_error", "unpriced_model");
        assert!(
            message.contains("no price for runtime-box:box-model on the operator's credentials"),
            "{message}"
        );
    }
    assert!(gw.mock.requests().is_empty());
}

// ---------------------------------------------------------------------------
// The official SDKs' view of the refusals

const SDK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/python/sdk_refusals.py"
);
const SDK_DEADLINE: Duration = Duration::from_secs(120);

fn python() -> String {
    std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fail (never skip) with instructions when Python or an SDK is missing.
fn require_python_sdks(python: &str) {
    let install = "install them with `python3 -m pip install -r tests/python/requirements.txt` \
                   (./scripts/test does this)";
    let output = std::process::Command::new(python)
        .args(["-c", "import openai, anthropic"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs `{python}` (Python 3) with the official openai and anthropic \
                 SDKs, but it cannot be run: {e}; {install}"
            )
        });
    assert!(
        output.status.success(),
        "this test needs the official `openai` and `anthropic` Python SDKs; `{python}` cannot \
         import them; {install}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_raise_permission_denied_and_rate_limit_errors() {
    let python = python();
    require_python_sdks(&python);
    let gw = start().await;
    let mut restricted = spec("anthropic-only");
    restricted.allowed_providers = strings(&["anthropic"]);
    restricted.rate_limits = RateLimits {
        requests_per_minute: Some(1),
        tokens_per_minute: None,
    };
    let (_, key_id, token) = key_with(&gw, restricted).await;

    let out_dir = tempfile::tempdir().unwrap();
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = std::process::Command::new(&python)
        .arg(SDK_SCRIPT)
        .env("TOLLGATE_BASE_URL", base(&gw))
        .env("TOLLGATE_RESTRICTED_KEY", &token)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python} {SDK_SCRIPT}`: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SDK_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    println!("{output}");
    let status =
        status.unwrap_or_else(|| panic!("sdk_refusals.py ran over {SDK_DEADLINE:?}\n{output}"));
    assert!(
        status.success(),
        "sdk_refusals.py failed ({status})\n{output}"
    );

    // What the script did, as the gateway recorded it: two refusals, one
    // success, two rate-limited requests; only the success went upstream.
    let events: Vec<UsageEvent> = gw
        .wait_for_events(5)
        .await
        .into_iter()
        .filter(|e| e.access_key_id == key_id)
        .collect();
    let outcomes: Vec<(u16, Option<&str>)> = events
        .iter()
        .map(|e| (e.status, e.error_kind.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (403, Some("provider_not_allowed")),
            (403, Some("provider_not_allowed")),
            (200, None),
            (429, Some("rate_limited")),
            (429, Some("rate_limited")),
        ],
        "{output}"
    );
    assert_eq!(gw.mock.requests().len(), 1);
}
