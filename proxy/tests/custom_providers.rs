//! Operator-defined upstreams (`custom_providers`): callable as `id:model`
//! and by a declared bare model id, and validated at startup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tollgate_core::ApiSurface;
use tollgate_mock_upstream::{MockUpstream, DEFAULT_REPLY};
use tollgate_proxy::config::CustomProviderConfig;
use tollgate_proxy::InitError;

const LOCAL_KEY: &str = "sk-local-box-1";

fn custom(
    id: &str,
    base_url: &str,
    api: ApiSurface,
    models: &[&str],
    keys: &[&str],
) -> CustomProviderConfig {
    CustomProviderConfig {
        id: id.into(),
        base_url: base_url.into(),
        api,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        api_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
    }
}

/// A gateway whose built-in providers point at `mock` too, plus custom ones.
async fn with_custom(
    providers: impl FnOnce(&MockUpstream) -> Vec<CustomProviderConfig>,
) -> TestGateway {
    let mock = MockUpstream::start().await.unwrap();
    let mut config = mock_config(&mock);
    config.custom_providers = providers(&mock);
    start_on(mock, config).await
}

fn config_problems(err: InitError) -> Vec<String> {
    match err {
        InitError::Config(problems) => problems,
        other => panic!("expected a config error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_compatible_custom_provider_is_callable_by_prefix_and_bare_model() {
    let gw = with_custom(|mock| {
        vec![custom(
            "local",
            &mock.base_url(),
            ApiSurface::Openai,
            &["llama-local-8b"],
            &[LOCAL_KEY],
        )]
    })
    .await;

    for model in [
        "local:llama-local-8b",
        "llama-local-8b",
        "local:undeclared-model",
    ] {
        let response = gw.post_openai(chat(model, "hello local box")).await;
        assert_eq!(header(&response, "x-tollgate-provider"), "local", "{model}");
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    }
    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 3);
    let models: Vec<&str> = requests
        .iter()
        .map(|r| r.body["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        ["llama-local-8b", "llama-local-8b", "undeclared-model"]
    );
    for request in &requests {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.api_key.as_deref(), Some(LOCAL_KEY));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {LOCAL_KEY}").as_str())
        );
    }

    let events = gw.wait_for_events(3).await;
    assert_eq!(events.len(), 3);
    for event in events {
        assert_eq!(event.provider.as_deref(), Some("local"));
        assert_eq!(event.status, 200);
        assert_eq!(event.tokens.output, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_compatible_custom_provider_is_callable_from_both_apis() {
    let gw = with_custom(|mock| {
        vec![custom(
            "claude-box",
            &format!("{}/", mock.base_url()),
            ApiSurface::Anthropic,
            &["box-sonnet"],
            &[LOCAL_KEY],
        )]
    })
    .await;

    let (status, _, body) =
        json_of(gw.post_anthropic(messages("box-sonnet", "hi there")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"][0]["text"], DEFAULT_REPLY);

    // An OpenAI-format request is translated for it.
    let (status, _, body) = json_of(
        gw.post_openai(chat("claude-box:box-sonnet", "hi there"))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);

    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.path, "/v1/messages", "trailing slash trimmed");
        assert_eq!(request.header("x-api-key"), Some(LOCAL_KEY));
        assert_eq!(request.body["model"], "box-sonnet");
        assert!(request.header("anthropic-version").is_some());
        assert!(request.body["max_tokens"].as_u64().is_some_and(|m| m > 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_provider_without_keys_is_called_without_credentials() {
    let gw = with_custom(|mock| {
        vec![custom(
            "open-box",
            &mock.base_url(),
            ApiSurface::Openai,
            &["tiny"],
            &[],
        )]
    })
    .await;
    let response = gw.post_openai(chat("open-box:tiny", "hi")).await;
    assert_eq!(response.status(), 200);
    let request = &gw.mock.requests()[0];
    assert_eq!(request.api_key, None);
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_provider_keys_fail_over_in_order() {
    let gw = with_custom(|mock| {
        vec![custom(
            "local",
            &mock.base_url(),
            ApiSurface::Openai,
            &["llama-local-8b"],
            &["sk-local-a", "sk-local-b"],
        )]
    })
    .await;
    gw.mock
        .add_rule(tollgate_mock_upstream::Rule::for_key("sk-local-a").fail(429));
    let response = gw.post_openai(chat("llama-local-8b", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let keys: Vec<_> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap())
        .collect();
    assert_eq!(keys, ["sk-local-a", "sk-local-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_custom_models_are_listed() {
    let gw = with_custom(|mock| {
        vec![custom(
            "local",
            &mock.base_url(),
            ApiSurface::Openai,
            &["llama-local-8b"],
            &[],
        )]
    })
    .await;
    let response = TestGateway::client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200);
    let listed = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "llama-local-8b")
        .cloned()
        .unwrap_or_else(|| panic!("custom model not listed: {body}"));
    assert_eq!(listed["owned_by"], "local");
}

fn config_with(custom_providers: Vec<CustomProviderConfig>) -> tollgate_proxy::ProxyConfig {
    tollgate_proxy::ProxyConfig {
        custom_providers,
        ..Default::default()
    }
}

#[tokio::test]
async fn gateway_refuses_plain_http_to_an_external_host() {
    let config = config_with(vec![custom(
        "remote",
        "http://example.com/v1",
        ApiSurface::Openai,
        &["m"],
        &[],
    )]);
    let problems = config_problems(try_gateway(config).await.err().expect("refused"));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("custom_providers[0].base_url") && p.contains("https")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn gateway_accepts_https_and_private_http_upstreams() {
    let config = config_with(vec![
        custom(
            "a",
            "https://llm.example.com/v1",
            ApiSurface::Openai,
            &[],
            &[],
        ),
        custom(
            "b",
            "http://10.0.0.7:8000/v1",
            ApiSurface::Anthropic,
            &[],
            &[],
        ),
        custom(
            "c",
            "http://localhost:11434/v1",
            ApiSurface::Openai,
            &[],
            &[],
        ),
    ]);
    assert!(try_gateway(config).await.is_ok());
}

#[tokio::test]
async fn gateway_refuses_a_custom_id_that_clashes_with_a_built_in_provider() {
    let config = config_with(vec![custom(
        "openai",
        "http://127.0.0.1:9/v1",
        ApiSurface::Openai,
        &["m"],
        &[],
    )]);
    let problems = config_problems(try_gateway(config).await.err().expect("refused"));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("custom_providers[0].id") && p.contains("openai")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn gateway_reports_every_custom_provider_problem_at_once() {
    let config = config_with(vec![
        custom(
            "ok",
            "https://llm.example.com/v1",
            ApiSurface::Openai,
            &[],
            &[],
        ),
        custom(
            "anthropic",
            "http://8.8.8.8/v1",
            ApiSurface::Anthropic,
            &[],
            &[],
        ),
        custom(
            "ok",
            "https://other.example.com/v1",
            ApiSurface::Openai,
            &[],
            &[],
        ),
    ]);
    let problems = config_problems(try_gateway(config).await.err().expect("refused"));
    for field in [
        "custom_providers[1].id",
        "custom_providers[1].base_url",
        "custom_providers[2].id",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(field)),
            "{field}: {problems:?}"
        );
    }
}
