//! Operator-defined upstreams (`custom_providers`): callable as `id:model`
//! and by a declared bare model id, and validated at startup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::collections::BTreeMap;
use tollgate_core::pricing::cost_for;
use tollgate_core::{ApiSurface, CredentialSource, Prices, Usd};
use tollgate_mock_upstream::{MockUpstream, DEFAULT_REPLY};
use tollgate_proxy::config::{CustomProviderConfig, DeclaredPrices, ExactUsd};
use tollgate_proxy::InitError;

const LOCAL_KEY: &str = "sk-local-box-1";

/// A custom provider whose every model is declared at a small non-zero price.
fn custom(
    id: &str,
    base_url: &str,
    api: ApiSurface,
    models: &[&str],
    keys: &[&str],
) -> CustomProviderConfig {
    let mut provider = custom_unpriced(id, base_url, api, models, keys);
    provider.prices = models
        .iter()
        .map(|m| ((*m).to_owned(), declared("0.15", "0.6", None)))
        .collect();
    provider
}

/// A custom provider that declares no prices.
fn custom_unpriced(
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
        embedding_models: vec![],
        responses: false,
        prices: BTreeMap::new(),
        api_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
    }
}

/// Assert a 403 `unpriced_model` refusal in the OpenAI shape naming `model`.
async fn assert_unpriced(response: reqwest::Response, model: &str) {
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 403, "{model}: {body}");
    assert_eq!(body["error"]["code"], "unpriced_model", "{body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "no price for {model} on the operator's credentials"
        )),
        "{message}"
    );
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

    for model in ["local:llama-local-8b", "llama-local-8b"] {
        let response = gw.post_openai(chat(model, "hello local box")).await;
        assert_eq!(header(&response, "x-tollgate-provider"), "local", "{model}");
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    }
    // A model it does not declare has no price: not on the operator's keys…
    let refused = gw
        .post_openai(chat("local:undeclared-model", "hello local box"))
        .await;
    assert_unpriced(refused, "local:undeclared-model").await;
    assert_eq!(
        gw.mock.requests().len(),
        2,
        "the refusal reached no upstream"
    );
    // …but with the caller's own key for it, it goes up under its own name.
    let byok = "sk-local-own-7d1";
    let token = byok_token(&gw, "local", byok).await;
    let response = post_openai_to(
        &gw.url(""),
        &token,
        &chat("local:undeclared-model", "hello local box"),
    )
    .await;
    assert_eq!(header(&response, "x-tollgate-cost-upstream"), "0");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");

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
    for (request, key) in requests.iter().zip([LOCAL_KEY, LOCAL_KEY, byok]) {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.api_key.as_deref(), Some(key));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {key}").as_str())
        );
    }

    let events = gw.wait_for_events(4).await;
    assert_eq!(events.len(), 4);
    for event in events.iter().filter(|e| e.status == 200) {
        assert_eq!(event.provider.as_deref(), Some("local"));
        assert_eq!(event.tokens.output, 5);
    }
    assert_eq!(events.iter().filter(|e| e.status == 200).count(), 3);
    let refusal = events.iter().find(|e| e.status == 403).unwrap();
    assert_eq!(refusal.error_kind.as_deref(), Some("unpriced_model"));
    assert_eq!(refusal.attempts, 0);
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
        let mut free = custom_unpriced(
            "open-box",
            &mock.base_url(),
            ApiSurface::Openai,
            &["tiny", "unpriced"],
            &[],
        );
        // A local model the operator declares free: an explicit zero.
        free.prices
            .insert("tiny".into(), declared("0", "0", Some("0")));
        vec![free]
    })
    .await;
    let response = gw.post_openai(chat("open-box:tiny", "hi")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-cost-upstream"), "0");
    let fee = header(&response, "x-tollgate-cost-fee");
    assert!(usd(&fee) > Usd::ZERO, "the processing fee is still billed");
    assert_eq!(header(&response, "x-tollgate-cost-total"), fee);
    let request = &gw.mock.requests()[0];
    assert_eq!(request.api_key, None);
    assert_eq!(request.header("authorization"), None);
    let event = gw.only_event().await;
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.prices, Prices::default());

    // Calling a keyless upstream is operator-paid too: an undeclared price is refused.
    assert_unpriced(
        gw.post_openai(chat("open-box:unpriced", "hi")).await,
        "open-box:unpriced",
    )
    .await;
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_prices_are_billed_exactly_like_catalog_prices() {
    let declared_prices = DeclaredPrices {
        input: ExactUsd(usd("1.25")),
        output: ExactUsd(usd("10.000000007")),
        cached_input: Some(ExactUsd(usd("0.125"))),
        cache_write_5m: Some(ExactUsd(usd("1.5625"))),
        cache_write_1h: None,
    };
    let want = Prices {
        input: usd("1.25"),
        cached_input: usd("0.125"),
        cache_write_5m: usd("1.5625"),
        // Left out: billed at the input price.
        cache_write_1h: usd("1.25"),
        output: usd("10.000000007"),
    };
    let expected = declared_prices.clone();
    let gw = with_custom(move |mock| {
        let mut priced = custom_unpriced(
            "priced-box",
            &mock.base_url(),
            ApiSurface::Openai,
            &["exact-model"],
            &[LOCAL_KEY],
        );
        priced.prices.insert("exact-model".into(), expected);
        vec![priced]
    })
    .await;
    for (model, stream) in [("priced-box:exact-model", false), ("exact-model", true)] {
        gw.mock.clear_requests();
        let response = if stream {
            let mut body = chat_stream(model, "what does this cost");
            body["stream_options"] = serde_json::json!({"include_usage": true});
            gw.post_openai(body).await
        } else {
            gw.post_openai(chat(model, "what does this cost")).await
        };
        assert_eq!(response.status(), 200, "{model}");
        let event_id = header(&response, "x-tollgate-event-id");
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let event = gw.event(&event_id).await;
        assert_eq!(
            event.prices, want,
            "{model}: the usage event carries the declared prices"
        );
        assert_eq!(event.credential_source, Some(CredentialSource::Operator));
        let cost = cost_for(&event.tokens, &want, Some(CredentialSource::Operator), None);
        // By hand: 1.25 per million input tokens, 10.000000007 per million output.
        let by_hand = usd("1.25").per_million_tokens(event.tokens.input)
            + usd("10.000000007").per_million_tokens(event.tokens.output);
        assert_eq!(cost.upstream, by_hand, "{model}");
        assert!(cost.upstream > Usd::ZERO);
        if stream {
            let chunks = openai_chunks(&text);
            let usage = chunks
                .iter()
                .find_map(|c| c.get("usage").filter(|u| u.is_object()))
                .unwrap_or_else(|| panic!("no usage chunk: {text}"));
            assert_eq!(
                usage["tollgate_cost"]["upstream"].as_str().map(usd),
                Some(cost.upstream),
                "{usage}"
            );
        } else {
            for (name, amount) in [
                ("x-tollgate-cost-upstream", cost.upstream),
                ("x-tollgate-cost-fee", cost.fee),
                ("x-tollgate-cost-total", cost.total()),
            ] {
                let shown = headers[name].to_str().unwrap();
                assert_eq!(usd(shown), amount, "{model}: {name}");
                assert_eq!(shown, amount.to_string(), "{model}: {name} is exact");
            }
        }
    }
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
