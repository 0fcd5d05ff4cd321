//! Operator price overrides: `[price_overrides]` in the config and runtime
//! overrides through the admin API win over the catalog (cost headers, the
//! usage event's prices, `/v1/models`, `/admin/v1/model-prices`), price
//! models that have none, and reach every instance on the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_control::admin::{AdminAuth, AdminState};
use tollgate_core::pricing::cost_for;
use tollgate_core::{ApiSurface, Catalog, CredentialSource, Prices, Usd};
use tollgate_proxy::config::{CustomProviderConfig, DeclaredPrices};

const ADMIN_TOKEN: &str = "tga_price_override_suite";
/// Generous: a loaded 2-core machine must not fail on timing.
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);

fn catalog_prices(provider: &str, model: &str) -> Prices {
    Catalog::builtin()
        .unwrap()
        .provider_model(provider, model)
        .unwrap()
        .prices
}

/// The admin listener as `tollgate serve` mounts it: the control plane's
/// routes and the gateway's price listing, for the gateway `gw`.
async fn serve_admin(gw: &TestGateway) -> String {
    let state = AdminState::new(gw.control.clone(), ADMIN_TOKEN);
    let app = tollgate_control::admin::router(state).merge(tollgate_proxy::admin_router(
        gw.gateway.clone(),
        AdminAuth::new(ADMIN_TOKEN),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/admin/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

async fn admin(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = TestGateway::client()
        .request(method, url)
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put_override(admin_url: &str, path: &str, body: Value) -> Value {
    let (status, stored) = admin(
        reqwest::Method::PUT,
        &format!("{admin_url}/price-overrides/{path}"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    stored
}

async fn delete_override(admin_url: &str, path: &str) {
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &format!("{admin_url}/price-overrides/{path}"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
}

/// `/admin/v1/model-prices`' entry for `provider:model`.
async fn listed_price(admin_url: &str, provider: &str, model: &str) -> Value {
    let (status, body) = admin(
        reqwest::Method::GET,
        &format!("{admin_url}/model-prices"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let entries: Vec<&Value> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["provider"] == provider && e["model"] == model)
        .collect();
    assert_eq!(entries.len(), 1, "{provider}:{model} in {body}");
    entries[0].clone()
}

/// `/v1/models/{name}` on `base`, as the caller `token` sees it.
async fn model_prices(base: &str, token: &str, name: &str) -> Value {
    let response = TestGateway::client()
        .get(format!("{base}/v1/models/{name}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    body["prices"].clone()
}

fn prices_json(prices: &Prices) -> Value {
    serde_json::to_value(prices).unwrap()
}

/// Send `model` to `base`; assert it was billed at `prices` on the
/// operator's credentials: the cost headers, and the usage event's prices
/// and cost, computed from the tokens the event records.
async fn assert_billed_at(gw: &TestGateway, base: &str, model: &str, prices: &Prices) {
    let response = post_openai_to(base, &gw.token, &chat(model, "price me")).await;
    let upstream = header(&response, "x-tollgate-cost-upstream");
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 200, "{model}: {body}");
    let event = gw.event(&event_id).await;
    assert_eq!(
        event.prices, *prices,
        "{model}: the event records the prices applied"
    );
    assert_eq!(event.credential_source, Some(CredentialSource::Operator));
    assert!(event.tokens.input > 0 && event.tokens.output > 0);
    let expected = cost_for(
        &event.tokens,
        prices,
        Some(CredentialSource::Operator),
        None,
    );
    assert_eq!(usd(&upstream), expected.upstream, "{model}");
    assert!(expected.upstream > Usd::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_override_wins_over_the_catalog_and_a_runtime_one_over_both() {
    let gw = start_with(|config| {
        config.price_overrides.insert(
            "openai:gpt-4o-mini".into(),
            declared("3.25", "13.5", Some("0.5")),
        );
        // Keyed by an alias: applies to the model it names.
        config
            .price_overrides
            .insert("openai:gpt-4o-2024-08-06".into(), declared("7", "21", None));
        config.custom_providers.push(CustomProviderConfig {
            id: "local".into(),
            base_url: config.providers["openai"].base_url.clone().unwrap(),
            api: ApiSurface::Openai,
            models: vec!["undeclared".into()],
            embedding_models: vec![],
            responses: false,
            prices: Default::default(),
            api_keys: vec![],
        });
        config
            .price_overrides
            .insert("local:undeclared".into(), declared("0.2", "0.6", None));
    })
    .await;
    assert!(
        gw.gateway.config.unpriced_models().is_empty(),
        "the override prices the custom model"
    );
    let admin_url = serve_admin(&gw).await;
    let base = gw.url("");

    let overridden = Prices {
        input: usd("3.25"),
        cached_input: usd("0.5"),
        cache_write_5m: usd("3.25"),
        cache_write_1h: usd("3.25"),
        output: usd("13.5"),
    };
    assert_ne!(overridden, catalog_prices("openai", "gpt-4o-mini"));
    for model in [
        "gpt-4o-mini",
        "openai:gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    ] {
        assert_billed_at(&gw, &base, model, &overridden).await;
    }
    let by_alias = DeclaredPrices::prices(&declared("7", "21", None));
    assert_billed_at(&gw, &base, "gpt-4o", &by_alias).await;
    assert_billed_at(
        &gw,
        &base,
        "local:undeclared",
        &declared("0.2", "0.6", None).prices(),
    )
    .await;
    // A model without an override keeps the catalog's prices.
    let catalog = catalog_prices("openai", "gpt-4.1");
    assert_billed_at(&gw, &base, "gpt-4.1", &catalog).await;

    // Both listings show the effective prices.
    assert_eq!(
        model_prices(&base, &gw.token, "gpt-4o-mini").await,
        prices_json(&overridden)
    );
    assert_eq!(
        model_prices(&base, &gw.token, "gpt-4.1").await,
        prices_json(&catalog)
    );
    let entry = listed_price(&admin_url, "openai", "gpt-4o-mini").await;
    assert_eq!(entry["source"], "config_override");
    assert_eq!(entry["prices"], prices_json(&overridden));
    assert_eq!(
        listed_price(&admin_url, "openai", "gpt-4o").await["source"],
        "config_override"
    );
    assert_eq!(
        listed_price(&admin_url, "openai", "gpt-4.1").await["source"],
        "catalog"
    );
    assert_eq!(
        listed_price(&admin_url, "local", "undeclared").await["source"],
        "config_override"
    );

    // A runtime override wins over the config's; deleting it restores it.
    let runtime = Prices {
        input: usd("0.001"),
        cached_input: usd("0.0005"),
        cache_write_5m: usd("0.002"),
        cache_write_1h: usd("0.003"),
        output: usd("0.004"),
    };
    put_override(&admin_url, "openai/gpt-4o-mini", prices_json(&runtime)).await;
    assert_billed_at(&gw, &base, "gpt-4o-mini", &runtime).await;
    let entry = listed_price(&admin_url, "openai", "gpt-4o-mini").await;
    assert_eq!(entry["source"], "runtime_override");
    assert_eq!(entry["prices"], prices_json(&runtime));
    delete_override(&admin_url, "openai/gpt-4o-mini").await;
    assert_billed_at(&gw, &base, "gpt-4o-mini", &overridden).await;
    assert_eq!(
        listed_price(&admin_url, "openai", "gpt-4o-mini").await["source"],
        "config_override"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_override_reaches_every_instance_within_a_second_and_deleting_it_restores_the_catalog(
) {
    let gw = start().await;
    let other = gw.start_instance().await;
    let admin_url = serve_admin(&gw).await;
    let catalog = catalog_prices("openai", "gpt-4o");
    let runtime = Prices {
        input: usd("1.10"),
        cached_input: usd("0.55"),
        cache_write_5m: usd("1.375"),
        cache_write_1h: usd("2.2"),
        output: usd("4.40"),
    };
    assert_ne!(runtime, catalog);
    assert_eq!(
        model_prices(&other.url(""), &gw.token, "gpt-4o").await,
        prices_json(&catalog)
    );

    // Set on the first instance; poll the second's served model list.
    let started = Instant::now();
    put_override(&admin_url, "openai/gpt-4o", prices_json(&runtime)).await;
    loop {
        if model_prices(&other.url(""), &gw.token, "gpt-4o").await == prices_json(&runtime) {
            break;
        }
        assert!(
            started.elapsed() < PROPAGATION_BOUND,
            "the override never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "price override visible on the other instance after {:?}",
        started.elapsed()
    );
    assert_billed_at(&gw, &other.url(""), "gpt-4o", &runtime).await;
    assert_billed_at(&gw, &gw.url(""), "gpt-4o", &runtime).await;

    let started = Instant::now();
    delete_override(&admin_url, "openai/gpt-4o").await;
    loop {
        if model_prices(&other.url(""), &gw.token, "gpt-4o").await == prices_json(&catalog) {
            break;
        }
        assert!(
            started.elapsed() < PROPAGATION_BOUND,
            "the deletion never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "price override deletion visible on the other instance after {:?}",
        started.elapsed()
    );
    assert_billed_at(&gw, &other.url(""), "gpt-4o", &catalog).await;
    assert_eq!(
        listed_price(&admin_url, "openai", "gpt-4o").await["source"],
        "catalog"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_makes_an_unpriced_passthrough_or_runtime_custom_model_usable_on_operator_keys()
{
    let gw = start().await;
    let admin_url = serve_admin(&gw).await;
    gw.control
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
    for model in [
        "openai:some-unlisted-model",
        "runtime-box:box-model",
        "box-model",
    ] {
        let (status, _, body) = json_of(gw.post_openai(chat(model, "hi")).await).await;
        assert_eq!(status, 403, "{model}: {body}");
        assert_eq!(body["error"]["code"], "unpriced_model", "{body}");
    }
    assert!(
        gw.mock.requests().is_empty(),
        "no refusal reached an upstream"
    );
    let entry = listed_price(&admin_url, "runtime-box", "box-model").await;
    assert_eq!(entry["source"], "none");
    assert_eq!(entry["prices"], Value::Null);

    put_override(
        &admin_url,
        "openai/some-unlisted-model",
        json!({"input": "0.5", "output": "1.5"}),
    )
    .await;
    put_override(
        &admin_url,
        "runtime-box/box-model",
        json!({"input": "0.25", "output": "0.75", "cached_input": "0.025"}),
    )
    .await;
    let unlisted = declared("0.5", "1.5", None).prices();
    assert_billed_at(&gw, &gw.url(""), "openai:some-unlisted-model", &unlisted).await;
    let boxed = declared("0.25", "0.75", Some("0.025")).prices();
    assert_billed_at(&gw, &gw.url(""), "runtime-box:box-model", &boxed).await;
    assert_billed_at(&gw, &gw.url(""), "box-model", &boxed).await;
    let requests = gw.mock.requests();
    assert_eq!(requests[0].body["model"], "some-unlisted-model");
    assert_eq!(requests[0].api_key.as_deref(), Some(OPENAI_KEY));

    // The listing names the pass-through model too, with its source.
    let entry = listed_price(&admin_url, "openai", "some-unlisted-model").await;
    assert_eq!(entry["source"], "runtime_override");
    assert_eq!(entry["prices"], prices_json(&unlisted));
    assert_eq!(
        listed_price(&admin_url, "runtime-box", "box-model").await["prices"],
        prices_json(&boxed)
    );

    // Deleted: unpriced again.
    delete_override(&admin_url, "openai/some-unlisted-model").await;
    let (status, _, body) = json_of(
        gw.post_openai(chat("openai:some-unlisted-model", "hi"))
            .await,
    )
    .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_overrides_are_validated_naming_the_key() {
    let mock = tollgate_mock_upstream::MockUpstream::start().await.unwrap();
    let mut config = mock_config(&mock);
    for (key, prices) in [
        ("nowhere:gpt-4o", declared("1", "2", None)),
        ("gpt-4o", declared("1", "2", None)),
        ("openai:gpt-4o", declared("-1", "2", None)),
    ] {
        config.price_overrides.insert(key.into(), prices);
    }
    let problems = match try_gateway(config).await {
        Err(tollgate_proxy::InitError::Config(problems)) => problems,
        other => panic!("expected config problems, got {:?}", other.err()),
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    for (key, why) in [
        ("nowhere:gpt-4o", "unknown provider `nowhere`"),
        ("gpt-4o", "provider:model"),
        ("openai:gpt-4o", "negative"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("price_overrides.\"{key}\"")) && p.contains(why)),
            "{key}: {problems:?}"
        );
    }
}
