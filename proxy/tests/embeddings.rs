//! `POST /v1/embeddings`: passed to providers that offer embeddings, billed
//! on input tokens, refused in OpenAI's error shape, with failover,
//! estimates and no input text in any event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate_core::pricing::cost_for;
use tollgate_core::{ApiSurface, CredentialSource};
use tollgate_eventlog::EventLog;
use tollgate_mock_upstream::Rule;
use tollgate_proxy::config::CustomProviderConfig;
use tollgate_proxy::PriceSource;

const PATH: &str = "/v1/embeddings";

fn embed(model: &str, input: Value) -> Value {
    json!({"model": model, "input": input})
}

/// Status, then the OpenAI-shaped error (`type`, `code`, `param`, message).
async fn refusal(response: reqwest::Response, status: u16) -> Value {
    openai_refusal(response, status).await
}

/// Mock vector component `j` of input `i` with `tokens` prompt tokens.
fn component(i: u64, tokens: u64, j: u64) -> f64 {
    ((i + tokens + j) % 16) as f64 / 16.0 - 0.5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_and_base64_pass_through_and_bill_input_tokens() {
    let gw = start().await;
    // Single input, floats.
    let response = gw
        .post_json(
            PATH,
            &embed("text-embedding-3-small", json!("one two three")),
        )
        .await;
    assert_eq!(header(&response, "x-tollgate-provider"), "openai");
    let event_id = header(&response, "x-tollgate-event-id");
    let total = header(&response, "x-tollgate-cost-total");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let vector: Vec<f64> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    let expected: Vec<f64> = (0..8).map(|j| component(0, 3, j)).collect();
    assert_eq!(vector, expected);

    let requests = gw.mock.requests();
    assert_eq!(requests[0].path, "/v1/embeddings");
    assert_eq!(requests[0].api_key.as_deref(), Some(OPENAI_KEY));

    let event = gw.event(&event_id).await;
    assert_eq!(event.client_api, ApiSurface::Openai);
    assert_eq!(
        event.model_served.as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(event.status, 200);
    assert!(!event.tokens_estimated);
    assert_eq!((event.tokens.input, event.tokens.output), (3, 0));
    assert_eq!(event.prices.input, usd("0.02"));
    assert_eq!(event.prices.output, usd("0"));
    let cost = cost_for(
        &event.tokens,
        &event.prices,
        Some(CredentialSource::Operator),
        None,
    );
    assert_eq!(cost.upstream, usd("0.00000006"));
    assert_eq!(total, cost.total().to_string());

    // A batch in base64, with `dimensions`: passed on as sent.
    let mut batch = embed("text-embedding-3-large", json!(["a b", "c d e f"]));
    batch["encoding_format"] = json!("base64");
    batch["dimensions"] = json!(4);
    let response = gw.post_json(PATH, &batch).await;
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for item in data {
        assert!(item["embedding"].is_string(), "{item}");
    }
    let sent = &gw.mock.requests()[1].body;
    assert_eq!(sent["encoding_format"], "base64");
    assert_eq!(sent["dimensions"], 4);
    let event = gw.event(&event_id).await;
    assert_eq!((event.tokens.input, event.tokens.output), (6, 0));
    assert_eq!(event.prices.input, usd("0.13"));

    // Token-id input is accepted and counted by the upstream.
    let response = gw
        .post_json(
            PATH,
            &embed("text-embedding-ada-002", json!([[1, 2, 3], [4]])),
        )
        .await;
    let event_id = header(&response, "x-tollgate-event-id");
    assert_eq!(response.status(), 200);
    assert_eq!(gw.event(&event_id).await.tokens.input, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_usage_is_estimated_from_the_input_text() {
    let gw = start().await;
    gw.mock.add_rule(Rule::any().omit_usage());
    let response = gw
        .post_json(
            PATH,
            &embed("text-embedding-3-small", json!(["hello world", "again"])),
        )
        .await;
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("usage").is_none());
    let event = gw.event(&event_id).await;
    assert!(event.tokens_estimated);
    // "hello world\nagain": 4 tokens in cl100k and o200k.
    assert_eq!((event.tokens.input, event.tokens.output), (4, 0));

    // Zero input tokens reported for real input: not believed.
    gw.mock.clear_rules();
    gw.mock.add_rule(Rule::any().zero_usage());
    let response = gw
        .post_json(PATH, &embed("text-embedding-3-small", json!("hello world")))
        .await;
    let event_id = header(&response, "x-tollgate-event-id");
    assert_eq!(response.status(), 200);
    let event = gw.event(&event_id).await;
    assert!(event.tokens_estimated);
    assert_eq!(event.tokens.input, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_fallback_models_fail_over() {
    let gw = start_with(|c| set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2])).await;
    gw.mock
        .add_rule(Rule::for_key(OPENAI_KEY).times(1).fail(429));
    let response = gw
        .post_json(PATH, &embed("text-embedding-3-small", json!("a b")))
        .await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    assert_eq!(response.status(), 200);

    gw.mock
        .add_rule(Rule::for_model("text-embedding-3-small").fail(500));
    let mut request = embed("text-embedding-3-small", json!("a b c"));
    request["models"] = json!(["text-embedding-3-large"]);
    let response = gw.post_json(PATH, &request).await;
    assert_eq!(
        header(&response, "x-tollgate-model"),
        "text-embedding-3-large"
    );
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let event = gw.event(&event_id).await;
    assert_eq!(event.attempts, 3);
    assert_eq!(event.tokens.input, 3);
    assert_eq!(event.prices.input, usd("0.13"));
    // `models` never reaches the upstream.
    let last = gw.mock.requests().pop().unwrap();
    assert!(last.body.get("models").is_none(), "{}", last.body);
    assert_eq!(last.body["model"], "text-embedding-3-large");

    // Every candidate failing: 502 in OpenAI's shape.
    let response = gw
        .post_json(PATH, &embed("text-embedding-3-small", json!("x")))
        .await;
    let error = refusal(response, 502).await;
    assert_eq!(error["code"], "upstream_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kinds_of_model_are_refused_naming_the_model() {
    let gw = start().await;
    // A chat model on the embeddings route.
    let error = refusal(
        gw.post_json(PATH, &embed("gpt-4o-mini", json!("x"))).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "model");
    assert!(
        error["message"].as_str().unwrap().contains("gpt-4o-mini"),
        "{error}"
    );
    // A provider without embeddings.
    let error = refusal(
        gw.post_json(PATH, &embed("claude-haiku-4-5", json!("x")))
            .await,
        400,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("anthropic"),
        "{error}"
    );
    // An embedding model on the chat routes.
    let error = refusal(
        gw.post_openai(chat("text-embedding-3-small", "hi")).await,
        400,
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("text-embedding-3-small"),
        "{error}"
    );
    let response = gw
        .post_anthropic(messages("text-embedding-3-small", "hi"))
        .await;
    assert_eq!(response.status(), 400);
    // A bad body, an unknown model, no key.
    let error = refusal(
        gw.post_json(PATH, &json!({"model": "text-embedding-3-small"}))
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "input");
    let bad_format =
        json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"});
    let error = refusal(gw.post_json(PATH, &bad_format).await, 400).await;
    assert_eq!(error["param"], "encoding_format");
    let error = refusal(
        gw.post_json(PATH, &embed("no-such-model", json!("x")))
            .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
    let response = TestGateway::client()
        .post(gw.url(PATH))
        .json(&embed("text-embedding-3-small", json!("x")))
        .send()
        .await
        .unwrap();
    let error = refusal(response, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    // Nothing was sent upstream.
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_providers_declare_embedding_models_and_their_prices() {
    let mock = tollgate_mock_upstream::MockUpstream::start().await.unwrap();
    let mut config = mock_config(&mock);
    let mut prices = std::collections::BTreeMap::new();
    prices.insert("emb".to_owned(), declared("0.05", "0", None));
    prices.insert("chat".to_owned(), declared("1", "2", None));
    config.custom_providers.push(CustomProviderConfig {
        id: "local".into(),
        base_url: mock.base_url(),
        api: ApiSurface::Openai,
        models: vec!["chat".into()],
        embedding_models: vec!["emb".into(), "emb-unpriced".into()],
        responses: false,
        prices,
        api_keys: vec![],
    });
    let gw = start_on(mock, config).await;

    let response = gw
        .post_json(PATH, &embed("local:emb", json!("one two")))
        .await;
    let event_id = header(&response, "x-tollgate-event-id");
    assert_eq!(response.status(), 200);
    let event = gw.event(&event_id).await;
    assert_eq!(event.provider.as_deref(), Some("local"));
    assert_eq!(event.tokens.input, 2);
    assert_eq!(event.prices.input, usd("0.05"));
    assert_eq!(gw.mock.requests()[0].path, "/v1/embeddings");

    let error = refusal(
        gw.post_json(PATH, &embed("local:emb-unpriced", json!("x")))
            .await,
        403,
    )
    .await;
    assert_eq!(error["code"], "unpriced_model");
    let error = refusal(
        gw.post_json(PATH, &embed("local:chat", json!("x"))).await,
        400,
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("local:chat"));
    let error = refusal(gw.post_openai(chat("local:emb", "hi")).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("local:emb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_text_never_reaches_the_event_store() {
    const CANARY: &str = "EMBCANARY-5c1a";
    let gw = start().await;
    gw.mock
        .add_rule(Rule::for_model("text-embedding-3-large").fail_with(
            400,
            json!({"error": {"message": format!("bad {CANARY}"), "type": "invalid_request_error",
                "param": null, "code": null}}),
        ));
    gw.mock
        .add_rule(Rule::for_model("text-embedding-ada-002").omit_usage());
    let input = json!([format!("embed {CANARY} now"), CANARY]);
    let mut ids = Vec::new();
    for (model, status) in [
        ("text-embedding-3-small", 200),
        ("text-embedding-ada-002", 200),
        ("text-embedding-3-large", 400),
    ] {
        let response = gw.post_json(PATH, &embed(model, input.clone())).await;
        assert_eq!(response.status(), status, "{model}");
        ids.push(header(&response, "x-tollgate-event-id"));
    }
    let events = gw.wait_for_events(ids.len()).await;
    assert_eq!(events.len(), ids.len());
    assert!(events.iter().any(|e| e.tokens_estimated));
    let records = gw
        .events
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap();
    assert_eq!(records.len(), ids.len());
    for record in &records {
        let payload = String::from_utf8_lossy(&record.payload);
        assert!(payload.contains("text-embedding"), "{payload}");
        assert!(!payload.contains("EMBCANARY"), "input stored: {payload}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_balance_is_refused_with_402_in_openais_shape() {
    let gw = start_with(|c| c.billing.enforce = true).await;
    let response = gw
        .post_json(PATH, &embed("text-embedding-3-small", json!("x")))
        .await;
    let error = refusal(response, 402).await;
    assert_eq!(error["code"], "insufficient_credits");
    assert!(
        gw.mock.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rate_and_time_limits_refuse_in_openais_shape() {
    let gw = start_with(tight_limits).await;
    let embeddings = |model: &str, input: Value| embed(model, input);
    check_openai_limits(
        &gw,
        PATH,
        embeddings,
        "text-embedding-3-small",
        "text-embedding-3-large",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_edge_cap_get_503_in_openais_shape() {
    let gw = start_with(|c| c.server.max_requests = 1).await;
    let embeddings = |model: &str, input: Value| embed(model, input);
    check_openai_edge_cap(
        &gw,
        PATH,
        embeddings,
        "text-embedding-3-large",
        "text-embedding-3-small",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_custom_providers_serve_their_embedding_models() {
    let gw = start().await;
    gw.control
        .create_custom_provider(
            "runtime-box",
            &gw.mock.base_url(),
            ApiSurface::Openai,
            vec!["box-chat".into()],
            vec!["box-emb".into()],
            false,
        )
        .await
        .unwrap();

    // Listed among the gateway's prices, unpriced.
    let listed = |gw: &TestGateway| {
        gw.gateway
            .price_list(&gw.control.snapshot())
            .into_iter()
            .find(|p| p.provider == "runtime-box" && p.model == "box-emb")
            .map(|p| p.source)
    };
    assert_eq!(listed(&gw), Some(PriceSource::None));

    // Declared without prices: refused on the operator's side, nothing sent.
    for model in ["runtime-box:box-emb", "box-emb"] {
        let error = refusal(gw.post_json(PATH, &embed(model, json!("x"))).await, 403).await;
        assert_eq!(error["code"], "unpriced_model", "{model}: {error}");
    }
    assert!(gw.mock.requests().is_empty());

    // On an attached provider key, through the provider's `/embeddings`.
    let secret = "sk-runtime-box-emb-5a1f";
    let token = byok_token(&gw, "runtime-box", secret).await;
    let post = |model: &str| {
        TestGateway::client()
            .post(gw.url(PATH))
            .bearer_auth(&token)
            .json(&embed(model, json!("one two three")))
            .send()
    };
    for model in ["runtime-box:box-emb", "box-emb"] {
        gw.mock.clear_requests();
        let response = post(model).await.unwrap();
        assert_eq!(header(&response, "x-tollgate-provider"), "runtime-box");
        let event_id = header(&response, "x-tollgate-event-id");
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["usage"]["prompt_tokens"], 3);
        let sent = gw.mock.requests().pop().unwrap();
        assert_eq!(sent.path, "/v1/embeddings");
        assert_eq!(sent.api_key.as_deref(), Some(secret));
        assert_eq!(sent.body["model"], "box-emb");
        let event = gw.event(&event_id).await;
        assert_eq!(event.provider.as_deref(), Some("runtime-box"));
        assert_eq!(event.credential_source, Some(CredentialSource::Byok));
        assert_eq!((event.tokens.input, event.tokens.output), (3, 0));
    }

    // Each model keeps its kind: the chat model is no embedding model, and
    // the embedding model is refused on the chat routes, nothing sent.
    gw.mock.clear_requests();
    let error = refusal(post("runtime-box:box-chat").await.unwrap(), 400).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("runtime-box:box-chat"),
        "{error}"
    );
    for model in ["runtime-box:box-emb", "box-emb"] {
        let error = refusal(gw.post_openai(chat(model, "hi")).await, 400).await;
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("runtime-box:box-emb"), "{message}");
        assert!(message.contains("/v1/embeddings"), "{message}");
    }
    assert!(gw.mock.requests().is_empty());

    // A runtime price override makes it usable on the operator's side: a
    // keyless custom upstream called without credentials, billed at it.
    let spec: tollgate_control::PriceSpec =
        serde_json::from_value(json!({"input": "0.07", "output": "0"})).unwrap();
    gw.control
        .set_price_override("runtime-box", "box-emb", &spec)
        .await
        .unwrap();
    assert_eq!(listed(&gw), Some(PriceSource::RuntimeOverride));
    gw.mock.clear_requests();
    let response = gw
        .post_json(PATH, &embed("box-emb", json!("one two")))
        .await;
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let sent = gw.mock.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.api_key, None);
    let event = gw.event(&event_id).await;
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert_eq!(event.tokens.input, 2);
    assert_eq!(event.prices.input, usd("0.07"));
}
