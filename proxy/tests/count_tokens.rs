//! `POST /v1/messages/count_tokens` through the gateway: the official
//! Anthropic SDK (`client.messages.count_tokens` and the beta client's,
//! which adds `?beta=true`) against an Anthropic-API model (passed to the
//! mock upstream) and an OpenAI-API model (counted locally, as the estimator
//! counts the same messages request); failover over keys and models; every
//! refusal in Anthropic's shape; no usage event, the metric counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_control::ConfigurationSpec;
use tollgate_core::control::RateLimits;
use tollgate_mock_upstream::Rule;

const PATH: &str = "/v1/messages/count_tokens";
const METRIC: &str = "tollgate_proxy_count_tokens_requests_total";

/// Counts with the SDK: prints `{model: [plain, beta]}` for each model.
const SDK_SCRIPT: &str = r#"
import json, sys, anthropic
base, token = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base, api_key=token, max_retries=0)
system = "You are terse and exact."
messages = [
    {"role": "user", "content": "What is the weather in Paris today?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check that for you."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 degrees"},
    ]},
]
tools = [{"name": "get_weather", "description": "Current weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]
out = {}
for model in sys.argv[3:]:
    plain = client.messages.count_tokens(model=model, system=system, messages=messages, tools=tools)
    beta = client.beta.messages.count_tokens(model=model, system=system, messages=messages, tools=tools)
    out[model] = [plain.input_tokens, beta.input_tokens]
print(json.dumps(out))
"#;

async fn sdk_counts(gw: &TestGateway, models: &[&str]) -> Value {
    let mut args = vec![gw.url(""), gw.token.clone()];
    args.extend(models.iter().map(|m| (*m).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(SDK_SCRIPT)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(printed.trim()).unwrap_or_else(|e| {
        panic!(
            "SDK script failed ({e}): {printed} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn count(gw: &TestGateway, token: &str, body: &Value) -> reqwest::Response {
    TestGateway::client()
        .post(gw.url(PATH))
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "count these five words"}]})
}

fn metric(text: &str, provider: &str, outcome: &str) -> f64 {
    metric_sum(
        text,
        METRIC,
        &[("provider", provider), ("outcome", outcome)],
    )
}

/// An Anthropic error body of `kind`.
fn assert_anthropic_error(status: u16, body: &Value, expected: u16, kind: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_counts_on_both_apis_without_a_usage_event() {
    let gw = start().await;
    let counts = sdk_counts(&gw, &["claude-sonnet-4-5", "gpt-4o-mini"]).await;

    // Anthropic model: both calls went upstream, the beta one with its query.
    let upstream = gw.mock.requests();
    assert_eq!(upstream.len(), 2, "the OpenAI model never goes upstream");
    for (request, query) in upstream.iter().zip([None, Some("beta=true")]) {
        assert_eq!(request.path, PATH);
        assert_eq!(request.query.as_deref(), query);
        assert_eq!(request.api_key.as_deref(), Some(ANTHROPIC_KEY));
        assert!(request.header("anthropic-version").is_some());
    }
    let sent = upstream[0].body.clone();
    assert!(sent.get("max_tokens").is_none(), "{sent}");

    // Nothing generated: no usage event for any of the four.
    assert!(gw.usage_events().await.is_empty());
    let metrics = gw.metrics_text().await;
    assert_eq!(metric(&metrics, "anthropic", "upstream"), 2.0);
    assert_eq!(metric(&metrics, "openai", "local"), 2.0);
    assert_eq!(metric(&metrics, "none", "refused"), 0.0);

    // The same body as a messages request: the mock reports the same input
    // the Anthropic count said, and the estimator (the OpenAI model answering
    // without usage) counts what the local count said.
    let mut messages = sent.clone();
    messages["max_tokens"] = json!(64);
    let (status, _, answer) = json_of(gw.post_anthropic(messages.clone()).await).await;
    assert_eq!(status, 200, "{answer}");
    let claude = &counts["claude-sonnet-4-5"];
    assert_eq!(claude[0], answer["usage"]["input_tokens"]);
    assert_eq!(claude[1], claude[0]);

    gw.mock
        .add_rule(Rule::for_model("gpt-4o-mini").omit_usage().once());
    messages["model"] = json!("gpt-4o-mini");
    let response = gw.post_anthropic(messages).await;
    let id = header(&response, "x-tollgate-event-id");
    assert_eq!(response.status(), 200);
    let event = gw.event(&id).await;
    assert!(event.tokens_estimated);
    let gpt = &counts["gpt-4o-mini"];
    assert_eq!(gpt[0], json!(event.tokens.input), "{counts}");
    assert_eq!(gpt[1], gpt[0]);
    // Tool use, its result and the tool definition were counted too.
    assert!(gpt[0].as_u64().unwrap() > 40, "{counts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_over_keys_and_models() {
    let gw = start_with(|c| set_keys(c, "anthropic", &["sk-ant-a", "sk-ant-b"])).await;

    // The first key's 529 moves on to the second key.
    gw.mock.add_rule(Rule::for_key("sk-ant-a").once().fail(529));
    let response = count(&gw, &gw.token, &body("claude-sonnet-4-5")).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(header(&response, "x-tollgate-provider"), "anthropic");
    let (status, _, answer) = json_of(response).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"input_tokens": 4}));
    let keys: Vec<_> = gw.mock.requests().into_iter().map(|r| r.api_key).collect();
    assert_eq!(keys, [Some("sk-ant-a".into()), Some("sk-ant-b".into())]);

    // Every key of the first model failing: the fallback in `models` counts.
    gw.mock
        .add_rule(Rule::for_model("claude-sonnet-4-5").times(2).fail(500));
    let mut with_fallback = body("claude-sonnet-4-5");
    with_fallback["models"] = json!(["gpt-4o-mini"]);
    let response = count(&gw, &gw.token, &with_fallback).await;
    assert_eq!(header(&response, "x-tollgate-provider"), "openai");
    assert_eq!(header(&response, "x-tollgate-model"), "gpt-4o-mini");
    let (status, _, answer) = json_of(response).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["input_tokens"].as_u64().unwrap() > 0, "{answer}");
    // `models` never goes upstream.
    assert!(gw
        .mock
        .requests()
        .iter()
        .all(|r| r.body.get("models").is_none()));

    // Without a fallback: 502 naming the last failure, in Anthropic's shape.
    gw.mock
        .add_rule(Rule::for_model("claude-sonnet-4-5").times(2).fail(503));
    let (status, _, answer) =
        json_of(count(&gw, &gw.token, &body("claude-sonnet-4-5")).await).await;
    assert_anthropic_error(status, &answer, 502, "api_error");
    assert!(answer["error"]["message"].as_str().unwrap().contains("503"));

    // The upstream refusing the request itself: its answer, not retried.
    let refusal = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad block"}});
    gw.mock.add_rule(
        Rule::for_model("claude-sonnet-4-5")
            .once()
            .fail_with(400, refusal.clone()),
    );
    let before = gw.mock.requests().len();
    let (status, _, answer) =
        json_of(count(&gw, &gw.token, &body("claude-sonnet-4-5")).await).await;
    assert_eq!((status, answer), (400, refusal));
    assert_eq!(gw.mock.requests().len(), before + 1);

    let metrics = gw.metrics_text().await;
    assert_eq!(metric(&metrics, "anthropic", "upstream"), 1.0);
    assert_eq!(metric(&metrics, "openai", "local"), 1.0);
    assert_eq!(metric(&metrics, "none", "failed"), 1.0);
    assert_eq!(metric(&metrics, "anthropic", "upstream_rejected"), 1.0);
    let attempts = |outcome| {
        metric_sum(
            &metrics,
            "tollgate_proxy_upstream_attempts_total",
            &[("provider", "anthropic"), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("server_error"), 5.0);
    assert!(gw.usage_events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_a_504() {
    let gw = start_with(|c| {
        c.routing.attempt_timeout_ms = 300;
        c.routing.total_timeout_ms = 1_000;
    })
    .await;
    gw.mock
        .add_rule(Rule::for_model("claude-sonnet-4-5").delay(Duration::from_secs(5)));
    let (status, _, answer) =
        json_of(count(&gw, &gw.token, &body("claude-sonnet-4-5")).await).await;
    assert_anthropic_error(status, &answer, 504, "timeout_error");
    assert_eq!(metric(&gw.metrics_text().await, "none", "failed"), 1.0);
    assert!(gw.usage_events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_in_anthropics_shape_and_unbilled() {
    let gw = start_with(|c| c.server.max_body_bytes = 4_096).await;
    let bad = "tgk_not_a_key".to_owned();
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "wrong key",
            bad,
            body("gpt-4o-mini"),
            401,
            "authentication_error",
        ),
        (
            "no messages",
            gw.token.clone(),
            json!({"model": "gpt-4o-mini"}),
            400,
            "invalid_request_error",
        ),
        (
            "not an object",
            gw.token.clone(),
            json!([1]),
            400,
            "invalid_request_error",
        ),
        (
            "unknown model",
            gw.token.clone(),
            body("no-such-model"),
            404,
            "not_found_error",
        ),
        (
            "too large",
            gw.token.clone(),
            body(&"x".repeat(8_000)),
            413,
            "request_too_large",
        ),
    ];
    for (what, token, request, status, kind) in cases {
        let (got, _, answer) = json_of(count(&gw, &token, &request).await).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_anthropic_error(got, &answer, status, kind);
    }
    let no_key = TestGateway::client()
        .post(gw.url(PATH))
        .json(&body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, _, answer) = json_of(no_key).await;
    assert_anthropic_error(status, &answer, 401, "authentication_error");

    // The key's allowlist, and its request limit (one a minute).
    let spec = ConfigurationSpec {
        name: "one-model".into(),
        allowed_models: Some(vec!["gpt-4o-mini".into()]),
        allow_passthrough_models: true,
        rate_limits: RateLimits {
            requests_per_minute: Some(1),
            tokens_per_minute: None,
        },
        ..ConfigurationSpec::default()
    };
    let config = gw
        .control
        .create_configuration(&gw.account_id, spec)
        .await
        .unwrap();
    let (_, limited) = gw
        .control
        .create_access_key(&gw.account_id, "limited", Some(config.id))
        .await
        .unwrap();
    let (status, _, answer) = json_of(count(&gw, &limited, &body("claude-sonnet-4-5")).await).await;
    assert_anthropic_error(status, &answer, 403, "permission_error");
    let (status, _, answer) = json_of(count(&gw, &limited, &body("gpt-4o-mini")).await).await;
    assert_eq!(status, 200, "a refused model used no budget: {answer}");
    let response = count(&gw, &limited, &body("gpt-4o-mini")).await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, _, answer) = json_of(response).await;
    assert_anthropic_error(status, &answer, 429, "rate_limit_error");

    let metrics = gw.metrics_text().await;
    // The body over the limit was refused at the edge (its own metrics),
    // from its declared length, before the route.
    assert_eq!(metric(&metrics, "none", "refused"), 7.0);
    assert_eq!(metric(&metrics, "openai", "local"), 1.0);
    assert!(gw.mock.requests().is_empty());
    assert!(gw.usage_events().await.is_empty());
}
