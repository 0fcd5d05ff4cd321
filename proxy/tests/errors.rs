//! Errors, each in the shape of the API the client spoke: OpenAI
//! `{"error":{message,type,param,code}}` on /v1/chat/completions, Anthropic
//! `{"type":"error","error":{type,message}}` on /v1/messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate_mock_upstream::{Rule, DEFAULT_REPLY};

/// Asserts the OpenAI error shape and status; returns the `error` object.
async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    let (got, headers, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{headers:?}"
    );
    let error = body["error"].clone();
    let object = error
        .as_object()
        .unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    for field in ["message", "type", "param", "code"] {
        assert!(object.contains_key(field), "missing {field}: {body}");
    }
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    error
}

/// Asserts the Anthropic error shape and status; returns the `error` object.
async fn anthropic_error(response: reqwest::Response, status: u16) -> Value {
    let (got, _, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["type"], "error", "not an Anthropic error: {body}");
    let error = body["error"].clone();
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error
}

async fn post_raw(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = TestGateway::client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("x-api-key", token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_is_401_in_both_shapes() {
    let gw = start().await;
    let body = chat("gpt-4o-mini", "hi").to_string();
    let response = post_raw(&gw, "/v1/chat/completions", None, &body).await;
    assert_eq!(header(&response, "www-authenticate"), "Bearer");
    let error = openai_error(response, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    assert!(error["message"].as_str().unwrap().contains("missing"));

    let body = messages("claude-haiku-4-5", "hi").to_string();
    let error = anthropic_error(post_raw(&gw, "/v1/messages", None, &body).await, 401).await;
    assert_eq!(error["type"], "authentication_error");

    // An empty bearer token is a missing key too.
    let response = TestGateway::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer ")
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    openai_error(response, 401).await;
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_key_is_401_in_both_shapes() {
    let gw = start().await;
    let response = TestGateway::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tgk_this_key_does_not_exist")
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    let error = openai_error(response, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    assert_eq!(error["type"], "invalid_request_error");

    let body = messages("claude-haiku-4-5", "hi").to_string();
    let response = post_raw(
        &gw,
        "/v1/messages",
        Some("tgk_this_key_does_not_exist"),
        &body,
    )
    .await;
    let error = anthropic_error(response, 401).await;
    assert_eq!(error["type"], "authentication_error");
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_in_both_shapes() {
    let gw = start().await;
    let token = gw.token.clone();
    for bad in [
        "{\"model\": \"gpt-4o-mini\", ",
        "not json at all",
        "[1, 2]",
        "",
    ] {
        let response = post_raw(&gw, "/v1/chat/completions", Some(&token), bad).await;
        let error = openai_error(response, 400).await;
        assert_eq!(error["type"], "invalid_request_error");
        let response = post_raw(&gw, "/v1/messages", Some(&token), bad).await;
        let error = anthropic_error(response, 400).await;
        assert_eq!(error["type"], "invalid_request_error");
    }
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_is_400_in_both_shapes() {
    let gw = start().await;
    let request = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10});
    let error = openai_error(gw.post_openai(request.clone()).await, 400).await;
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("model"));
    let error = anthropic_error(gw.post_anthropic(request).await, 400).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("model"));

    let empty = json!({"model": "", "messages": [], "max_tokens": 10});
    openai_error(gw.post_openai(empty.clone()).await, 400).await;
    anthropic_error(gw.post_anthropic(empty).await, 400).await;
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_messages_is_400_in_both_shapes() {
    let gw = start().await;
    let request = json!({"model": "gpt-4o-mini", "max_tokens": 10});
    let error = openai_error(gw.post_openai(request.clone()).await, 400).await;
    assert_eq!(error["param"], "messages");
    anthropic_error(gw.post_anthropic(request).await, 400).await;
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_is_404_saying_the_model_is_unknown() {
    let gw = start().await;
    let error = openai_error(gw.post_openai(chat("gpt-9-ultra", "hi")).await, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("unknown model"), "{message}");
    assert!(message.contains("gpt-9-ultra"), "{message}");

    let error = anthropic_error(
        gw.post_anthropic(messages("claude-opus-99", "hi")).await,
        404,
    )
    .await;
    assert_eq!(error["type"], "not_found_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("unknown model"), "{message}");
    assert!(message.contains("claude-opus-99"), "{message}");

    // An unknown fallback is reported too, before anything is tried.
    let mut request = chat("gpt-4o-mini", "hi");
    request["models"] = json!(["no-such-model"]);
    let error = openai_error(gw.post_openai(request).await, 404).await;
    assert!(error["message"].as_str().unwrap().contains("no-such-model"));
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_catalog_model_needs_a_provider_prefix() {
    let gw = start().await;
    let error = openai_error(gw.post_openai(chat("my-finetune-v7", "hi")).await, 404).await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("provider:model"));
    anthropic_error(
        gw.post_anthropic(messages("my-finetune-v7", "hi")).await,
        404,
    )
    .await;
    assert!(gw.mock.requests().is_empty());

    // With the prefix it reaches the upstream under its own name (on the
    // caller's own provider key: it has no price for the operator's).
    let token = byok_token(&gw, "openai", "sk-own-openai-finetune").await;
    let response = post_openai_to(&gw.url(""), &token, &chat("openai:my-finetune-v7", "hi")).await;
    assert_eq!(header(&response, "x-tollgate-model"), "my-finetune-v7");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    let (status, _, body) = json_of(
        post_anthropic_to(
            &gw.url(""),
            &token,
            &messages("openai:my-finetune-v7", "hi"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 2);
    for request in requests {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.body["model"], "my-finetune-v7");
    }
}

/// Streamed or not, in the shape `api` spoke: the request for `model`.
fn unlisted_request(model: &str, anthropic: bool, stream: bool) -> Value {
    match (anthropic, stream) {
        (false, false) => chat(model, "hi"),
        (false, true) => chat_stream(model, "hi"),
        (true, false) => messages(model, "hi"),
        (true, true) => messages_stream(model, "hi"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_model_on_operator_credentials_is_403_unpriced_in_both_shapes_streamed_or_not()
{
    let gw = start().await;
    for stream in [false, true] {
        let model = "openai:some-unlisted-model";
        let response = gw.post_openai(unlisted_request(model, false, stream)).await;
        let error = openai_error(response, 403).await;
        assert_eq!(error["type"], "permission_error", "{error}");
        assert_eq!(error["code"], "unpriced_model", "{error}");
        assert_eq!(error["param"], "model", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message
                .contains("no price for openai:some-unlisted-model on the operator's credentials"),
            "{message}"
        );
        assert!(
            message.contains("provider key"),
            "says what to do: {message}"
        );

        let model = "anthropic:claude-unlisted-model";
        let response = gw
            .post_anthropic(unlisted_request(model, true, stream))
            .await;
        let error = anthropic_error(response, 403).await;
        assert_eq!(error["type"], "permission_error", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(
                "no price for anthropic:claude-unlisted-model on the operator's credentials"
            ),
            "{message}"
        );
    }
    assert!(
        gw.mock.requests().is_empty(),
        "an unpriced model never reaches the upstream on the operator's key"
    );
    let events = gw.wait_for_events(4).await;
    assert_eq!(events.len(), 4);
    for event in events {
        assert_eq!(event.status, 403);
        assert_eq!(event.error_kind.as_deref(), Some("unpriced_model"));
        assert_eq!(event.attempts, 0);
        assert_eq!(event.credential_source, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_model_on_a_provider_key_is_answered_and_billed_the_fee_only() {
    let gw = start().await;
    let openai_token = byok_token(&gw, "openai", "sk-own-openai-1f3").await;
    let anthropic_token = byok_token(&gw, "anthropic", "sk-ant-own-9c2").await;
    let cases = [
        (&openai_token, "openai:some-unlisted-model", false),
        (&anthropic_token, "anthropic:claude-unlisted-model", true),
    ];
    for (token, model, anthropic) in cases {
        for stream in [false, true] {
            let body = unlisted_request(model, anthropic, stream);
            let response = if anthropic {
                post_anthropic_to(&gw.url(""), token, &body).await
            } else {
                post_openai_to(&gw.url(""), token, &body).await
            };
            assert_eq!(response.status(), 200, "{model} stream={stream}");
            if !stream {
                assert_eq!(header(&response, "x-tollgate-cost-upstream"), "0");
                assert_eq!(
                    header(&response, "x-tollgate-cost-total"),
                    header(&response, "x-tollgate-cost-fee")
                );
            }
            let event_id = header(&response, "x-tollgate-event-id");
            response.text().await.unwrap();
            let event = gw.event(&event_id).await;
            assert_eq!(event.status, 200, "{model}");
            assert_eq!(
                event.credential_source,
                Some(tollgate_core::CredentialSource::Byok),
                "{model}"
            );
            assert!(event.provider_key_id.is_some());
            let cost = tollgate_core::pricing::cost_of(&event);
            assert_eq!(cost.upstream, tollgate_core::Usd::ZERO);
            assert!(cost.fee > tollgate_core::Usd::ZERO);
        }
    }
    let keys: Vec<_> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.api_key.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "sk-own-openai-1f3",
            "sk-own-openai-1f3",
            "sk-ant-own-9c2",
            "sk-ant-own-9c2"
        ],
        "only the caller's own keys were used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpriced_candidate_is_skipped_for_a_priced_fallback() {
    let gw = start().await;
    let mut request = chat("openai:some-unlisted-model", "hi");
    request["models"] = json!(["gpt-4o-mini"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-model"), "gpt-4o-mini");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let requests = gw.mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["model"], "gpt-4o-mini");

    // A priced first choice is answered as usual; the unpriced fallback is not needed.
    let mut request = messages("claude-haiku-4-5", "hi");
    request["models"] = json!(["anthropic:claude-unlisted-model"]);
    let (status, _, body) = json_of(gw.post_anthropic(request).await).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_credits_say_the_available_amount_and_the_balance() {
    let gw = start_with(|c| c.billing.enforce = true).await;
    let balance = |amount: &str| tollgate_core::billing::BalanceUpdate {
        account_id: gw.account_id.clone(),
        balance: amount.parse().unwrap(),
        as_of: chrono::Utc::now(),
        applied: Default::default(),
        budgets: Vec::new(),
    };
    // Less than one request costs (gpt-4o, 1 + 5 tokens: $0.0000528).
    gw.gateway.admission.apply(&balance("0.00005"));
    // Admitted: when it ends its actual cost is held…
    let response = gw.post_openai(chat("gpt-4o", "hi")).await;
    assert_eq!(response.status(), 200);
    // (held from when its usage event is emitted, just after the response)
    let emitted = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw
        .gateway
        .admission
        .credit(&gw.account_id)
        .is_none_or(|c| c.unconfirmed == tollgate_core::Usd::ZERO)
    {
        assert!(std::time::Instant::now() < emitted, "the event is emitted");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // …and, with no ledger to release it, leaves less than nothing.
    let error = openai_error(gw.post_openai(chat("gpt-4o", "hi")).await, 402).await;
    assert_eq!(error["code"], "insufficient_credits");
    let message = error["message"].as_str().unwrap().to_owned();
    let number_after = |label: &str| -> tollgate_core::Usd {
        let rest = message
            .split(label)
            .nth(1)
            .unwrap_or_else(|| panic!("{message}"));
        rest.split([';', ',', ' '])
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {message}"))
    };
    let available = number_after("available balance is ");
    let shown_balance = number_after("its balance is ");
    let reserved = number_after("minus ");
    assert_eq!(shown_balance, "0.00005".parse().unwrap(), "{message}");
    assert!(available < tollgate_core::Usd::ZERO, "{message}");
    // What is held is that request's actual cost, not its maximum.
    assert_eq!(reserved, "0.0000528".parse().unwrap(), "{message}");
    assert_eq!(available, shown_balance - reserved, "{message}");

    let error = anthropic_error(
        gw.post_anthropic(messages("claude-haiku-4-5", "hi")).await,
        402,
    )
    .await;
    assert_eq!(error["type"], "billing_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("available balance is {available};"))
            && message.contains("its balance is 0.00005,"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_provider_prefix_is_400_in_both_shapes() {
    let gw = start().await;
    let error = openai_error(gw.post_openai(chat("nosuch:some-model", "hi")).await, 400).await;
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("nosuch"));
    let error = anthropic_error(
        gw.post_anthropic(messages("nosuch:some-model", "hi")).await,
        400,
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("nosuch"));
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_in_both_shapes() {
    let gw = start_with(|c| c.server.max_body_bytes = 2_048).await;
    let big = "word ".repeat(2_000);
    let error = openai_error(gw.post_openai(chat("gpt-4o-mini", &big)).await, 413).await;
    assert_eq!(error["code"], "request_too_large");
    assert!(error["message"].as_str().unwrap().contains("2048"));
    let error = anthropic_error(
        gw.post_anthropic(messages("claude-haiku-4-5", &big)).await,
        413,
    )
    .await;
    assert_eq!(error["type"], "request_too_large");
    assert!(gw.mock.requests().is_empty());

    // A body under the limit still works.
    let response = gw.post_openai(chat("gpt-4o-mini", "small")).await;
    assert_eq!(response.status(), 200);

    // The same through the router (an instance served without the gateway
    // shortcut): the router's body limit gives the same answers.
    let routed = gw.start_instance().await;
    let base = format!("http://{}", routed.addr);
    let response = post_openai_to(&base, &gw.token, &chat("gpt-4o-mini", &big)).await;
    let error = openai_error(response, 413).await;
    assert_eq!(error["code"], "request_too_large");
    assert!(error["message"].as_str().unwrap().contains("2048"));
    let response = post_anthropic_to(&base, &gw.token, &messages("claude-haiku-4-5", &big)).await;
    assert_eq!(
        anthropic_error(response, 413).await["type"],
        "request_too_large"
    );
    assert_eq!(
        gw.mock.requests().len(),
        1,
        "only the small request went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_garbage_on_every_candidate_is_502_in_both_shapes() {
    let gw = start_with(|c| set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2])).await;
    gw.mock.add_rule(Rule::any().garbage());
    let mut request = chat("gpt-4o-mini", "hi");
    request["models"] = json!(["claude-haiku-4-5"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    let error = openai_error(response, 502).await;
    assert_eq!(error["type"], "api_error");
    assert_eq!(error["code"], "upstream_failed");
    // Garbage is never passed on to the client.
    assert!(!error["message"].as_str().unwrap().contains("<html>"));

    let error = anthropic_error(
        gw.post_anthropic(messages("claude-haiku-4-5", "hi")).await,
        502,
    )
    .await;
    assert_eq!(error["type"], "api_error");
    assert_eq!(gw.mock.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_one_key_fails_over_to_the_next() {
    let gw = start_with(|c| set_keys(c, "openai", &[OPENAI_KEY, OPENAI_KEY_2])).await;
    gw.mock.add_rule(Rule::for_key(OPENAI_KEY).garbage());
    let response = gw.post_openai(chat("gpt-4o-mini", "hi")).await;
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_credentials_is_400_naming_the_provider() {
    let gw = start().await;
    let error = openai_error(
        gw.post_openai(chat("groq:llama-3.3-70b-versatile", "hi"))
            .await,
        400,
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("groq"), "{message}");
    assert!(message.contains("credentials"), "{message}");

    // The bare catalog id resolves to groq too.
    let error = anthropic_error(
        gw.post_anthropic(messages("llama-3.3-70b-versatile", "hi"))
            .await,
        400,
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("groq"));
    assert!(gw.mock.requests().is_empty());

    let events = gw.wait_for_events(2).await;
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event.status, 400);
        assert_eq!(event.error_kind.as_deref(), Some("no_credentials"));
        assert_eq!(event.attempts, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_credentials_is_skipped_when_a_fallback_has_them() {
    let gw = start().await;
    let mut request = chat("groq:llama-3.3-70b-versatile", "hi");
    request["models"] = json!(["gpt-4o-mini"]);
    let response = gw.post_openai(request).await;
    assert_eq!(header(&response, "x-tollgate-provider"), "openai");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_request_without_max_tokens_is_400() {
    let gw = start().await;
    let request = json!({
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "hi"}],
    });
    let error = anthropic_error(gw.post_anthropic(request).await, 400).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("max_tokens"));
    let mut zero = messages("claude-haiku-4-5", "hi");
    zero["max_tokens"] = json!("lots");
    anthropic_error(gw.post_anthropic(zero).await, 400).await;
    assert!(gw.mock.requests().is_empty());
}
