//! The usage API's OpenAPI document against the live router: every served
//! (method, path) is documented and every documented one is served; axum's
//! own refusals (bad query bytes) come back in the API's JSON error shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/openapi/route_coverage.rs"]
mod route_coverage;

use common::*;

#[tokio::test]
async fn every_served_route_is_documented_and_every_documented_route_served() {
    let (_dir, _db, store) = sqlite_store();
    let base = serve(store).await;
    let doc: serde_json::Value = reqwest::get(format!("{base}/v1/usage/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let source = include_str!("../src/api.rs");
    route_coverage::assert_routes_documented(&base, &doc, &[source], ADMIN, 2).await;
}

#[tokio::test]
async fn route_coverage_notices_a_route_missing_from_the_document() {
    let (_dir, _db, store) = sqlite_store();
    let base = serve(store).await;
    let mut doc = serde_json::to_value(tollgate_analytics::api::openapi_document()).unwrap();
    doc["paths"].as_object_mut().unwrap().remove("/v1/usage");
    let documented = route_coverage::documented(&doc);
    let paths = route_coverage::registered_paths(include_str!("../src/api.rs"));
    let served = route_coverage::served(&base, &paths, ADMIN).await;
    assert!(served.contains(&("get".to_owned(), "/v1/usage".to_owned())));
    assert!(!documented.contains(&("get".to_owned(), "/v1/usage".to_owned())));
}

#[tokio::test]
async fn malformed_queries_are_json_errors() {
    let (_dir, _db, store) = sqlite_store();
    let base = serve(store).await;
    let client = reqwest::Client::new();
    for query in [
        "start=%FF%FE&end=x",
        "start&&&=",
        "%",
        "start=2025-01-01T00:00:00Z&end=\u{0}",
    ] {
        let response = client
            .get(format!("{base}/v1/usage?{query}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{query}: {content_type}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request", "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
}
