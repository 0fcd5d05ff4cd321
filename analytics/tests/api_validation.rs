//! Parameter validation: every bad parameter is a 400 naming it; missing or
//! unknown tokens are 401; the OpenAPI document is served, generated, and
//! names the parameters the API accepts; the JSON shape of a report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tollgate_analytics::api::{openapi_document, PARAMETERS};

const S: &str = "2025-02-28T00:00:00Z";
const E: &str = "2025-03-02T00:00:00Z";

#[tokio::test]
async fn bad_parameters_are_400s_naming_the_parameter() {
    let (_dir, _db, store) = sqlite_store();
    let base = serve(store).await;
    let long = "m".repeat(300);
    let long_key = format!("{}:x", "k".repeat(65));
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("end", E)], "start"),
        (vec![("start", S)], "end"),
        (vec![("start", "yesterday"), ("end", E)], "start"),
        (vec![("start", S), ("end", "2025-03-02")], "end"),
        (vec![("start", E), ("end", S)], "end"),
        (vec![("start", S), ("end", S)], "end"),
        (vec![("start", "1960-01-01T00:00:00Z"), ("end", E)], "start"),
        (vec![("start", S), ("end", E), ("bucket", "week")], "bucket"),
        (
            vec![
                ("start", "2024-01-01T00:00:00Z"),
                ("end", E),
                ("bucket", "minute"),
            ],
            "bucket",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "provider,region")],
            "group_by",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "model,model")],
            "group_by",
        ),
        (vec![("start", S), ("end", E), ("group_by", "")], "group_by"),
        (
            vec![("start", S), ("end", E), ("status_class", "3xx")],
            "status_class",
        ),
        (
            vec![("start", S), ("end", E), ("credential_source", "mine")],
            "credential_source",
        ),
        (
            vec![("start", S), ("end", E), ("endpoint", "completions")],
            "endpoint",
        ),
        (vec![("start", S), ("end", E), ("endpoint", "")], "endpoint"),
        (
            vec![("start", S), ("end", E), ("endpoint", "Chat")],
            "endpoint",
        ),
        (
            vec![
                ("start", S),
                ("end", E),
                ("endpoint", "chat"),
                ("endpoint", "messages"),
            ],
            "endpoint",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "endpoint,endpoint")],
            "group_by",
        ),
        (vec![("start", S), ("end", E), ("provider", "")], "provider"),
        (
            vec![("start", S), ("end", E), ("model", long.as_str())],
            "model",
        ),
        (
            vec![("start", S), ("end", E), ("access_key_id", "")],
            "access_key_id",
        ),
        (vec![("start", S), ("start", S), ("end", E)], "start"),
        // Attribution: a tag filter is `<key>:<value>`, a key 1 to 64 of
        // letters, digits, `_`, `-`, `.`; group_by takes one `tag:<key>`.
        (vec![("start", S), ("end", E), ("end_user", "")], "end_user"),
        (
            vec![("start", S), ("end", E), ("end_user", long.as_str())],
            "end_user",
        ),
        (vec![("start", S), ("end", E), ("tag", "team")], "tag"),
        (vec![("start", S), ("end", E), ("tag", ":search")], "tag"),
        (vec![("start", S), ("end", E), ("tag", "team:")], "tag"),
        (vec![("start", S), ("end", E), ("tag", "te am:x")], "tag"),
        (vec![("start", S), ("end", E), ("tag", "t'eam:x")], "tag"),
        (vec![("start", S), ("end", E), ("tag", "tëam:x")], "tag"),
        (
            vec![("start", S), ("end", E), ("tag", long_key.as_str())],
            "tag",
        ),
        (
            vec![("start", S), ("end", E), ("tag", "a:b"), ("tag", "c:d")],
            "tag",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "tag")],
            "group_by",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "tag:")],
            "group_by",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "tag:te am")],
            "group_by",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "tag:a:b")],
            "group_by",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "tag:team,tag:env")],
            "group_by",
        ),
        (
            vec![("start", S), ("end", E), ("group_by", "end_user,end_user")],
            "group_by",
        ),
    ];
    for (params, param) in cases {
        let (status, body) = get_usage(&base, Some(TOKEN_A), &params).await;
        assert_eq!(status, 400, "{params:?}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request", "{params:?}");
        assert_eq!(body["error"]["param"], param, "{params:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(param));
    }
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_A),
        &[("start", S), ("end", E), ("colour", "red")],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));
    // A good request with everything set is fine.
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_A),
        &[
            ("start", "2025-02-28T00:00:00.5+01:00"),
            ("end", E),
            (
                "group_by",
                "provider, model,access_key,status,endpoint,end_user,tag:team",
            ),
            ("bucket", "hour"),
            ("endpoint", "chat"),
            ("end_user", "u_alice"),
            ("tag", "env.name:prod:eu-1"),
            ("status_class", "2xx"),
            ("credential_source", "operator"),
            ("provider", "openai"),
            ("model", "gpt-4o-mini"),
            ("access_key_id", "ak_a1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["group_by"],
        serde_json::json!([
            "provider",
            "model",
            "access_key",
            "status",
            "endpoint",
            "end_user",
            "tag:team"
        ])
    );
}

/// `end_user` and `tag` filter, `group_by=end_user` and `group_by=tag:<key>`
/// group; a group's key is the end user or the tag's value, null for
/// requests without one. (The contract suite runs the same queries on
/// ClickHouse and checks that the groups add up to the totals.)
#[tokio::test]
async fn attribution_filters_and_groups() {
    let (_dir, _db, store) = sqlite_store();
    load(&*store, &rows(&dataset()), 100).await;
    let base = serve(store).await;
    // Account B: its first request is u_alice's, tagged team=search.
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[("start", S), ("end", E), ("group_by", "tag:team,end_user")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["group_by"],
        serde_json::json!(["tag:team", "end_user"])
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{body}");
    assert!(data[0]["end_user"].is_null() && data[0]["tag"].is_null());
    assert!(data[0].as_object().unwrap().contains_key("end_user"));
    assert!(data[0].as_object().unwrap().contains_key("tag"));
    assert_eq!(data[0]["requests"], 2);
    assert_eq!(data[1]["end_user"], "u_alice");
    assert_eq!(data[1]["tag"], "search");
    assert_eq!(data[1]["requests"], 1);
    assert_eq!(data[1]["cost"]["upstream"], "0.011535");
    assert!(data[1].get("model").is_none());
    for (param, value) in [("end_user", "u_alice"), ("tag", "team:search")] {
        let (status, body) = get_usage(
            &base,
            Some(TOKEN_B),
            &[("start", S), ("end", E), (param, value)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["requests"], 1, "{param}");
        assert!(data[0].get("end_user").is_none(), "filtered, not grouped");
        assert!(data[0].get("tag").is_none(), "filtered, not grouped");
    }
    for (param, value) in [
        ("end_user", "u_bob"),
        ("tag", "team:ads"),
        ("tag", "team:search:x"),
        ("tag", "no_such:search"),
    ] {
        let (status, body) = get_usage(
            &base,
            Some(TOKEN_B),
            &[("start", S), ("end", E), (param, value)],
        )
        .await;
        assert_eq!((status, &body["data"]), (200, &serde_json::json!([])));
    }
    // The end user with a quote, across accounts (admin).
    let (status, body) = get_usage(
        &base,
        Some(ADMIN),
        &[
            ("start", S),
            ("end", E),
            ("end_user", "u_o'brien"),
            ("group_by", "end_user"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["end_user"], "u_o'brien");
    assert_eq!(data[0]["requests"], 40); // i % 6 == 4 of 240
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[("start", S), ("end", E), ("tag", "te am:x")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "`tag`'s key must be 1 to 64 letters, digits, `_`, `-` or `.`"
    );
}

/// `endpoint` filters and `group_by=endpoint` groups, on the embedded
/// store here (the contract suite runs the same queries on ClickHouse);
/// each group names its endpoint.
#[tokio::test]
async fn endpoint_filters_and_groups() {
    let (_dir, _db, store) = sqlite_store();
    load(&*store, &rows(&dataset()), 100).await;
    let base = serve(store).await;
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[("start", S), ("end", E), ("group_by", "endpoint")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["group_by"], serde_json::json!(["endpoint"]));
    let data = body["data"].as_array().unwrap();
    let got: Vec<(&str, u64)> = data
        .iter()
        .map(|g| {
            (
                g["endpoint"].as_str().unwrap(),
                g["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    // Account B: one chat, one messages, one embeddings request (by name).
    assert_eq!(got, [("chat", 1), ("embeddings", 1), ("messages", 1)]);
    assert!(data[0].get("model").is_none());
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[("start", S), ("end", E), ("endpoint", "messages")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["requests"], 1);
    assert_eq!(data[0]["cost"]["upstream"], "0.011535");
    assert!(data[0].get("endpoint").is_none(), "filtered, not grouped");
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[("start", S), ("end", E), ("endpoint", "responses")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], serde_json::json!([]));
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[("start", S), ("end", E), ("endpoint", "completions")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "`endpoint` must be one of chat, messages, responses, embeddings"
    );
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let (_dir, _db, store) = sqlite_store();
    let base = serve(store).await;
    let params = [("start", S), ("end", E)];
    let (status, body) = get_usage(&base, None, &params).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let (status, _) = get_usage(&base, Some("tgk_unknown"), &params).await;
    assert_eq!(status, 401);
    let (status, _) = get_usage(&base, Some(ADMIN), &params).await;
    assert_eq!(status, 200);
    // Validation happens after authentication: no parameter leaks to strangers.
    let (status, _) = get_usage(&base, None, &[("bucket", "week")]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn report_json_has_exact_money_strings_and_percentiles() {
    let (_dir, _db, store) = sqlite_store();
    load(&*store, &rows(&dataset()), 100).await;
    let base = serve(store).await;
    let (status, body) = get_usage(
        &base,
        Some(TOKEN_B),
        &[
            ("start", S),
            ("end", E),
            ("bucket", "day"),
            ("group_by", "model"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "usage_report");
    assert_eq!(body["account_id"], ACCT_B);
    assert_eq!(body["bucket"], "day");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let claude = &data[0];
    assert_eq!(claude["bucket_start"], "2025-03-01T00:00:00Z");
    assert_eq!(claude["model"], "claude-sonnet-4-5");
    assert!(claude.get("provider").is_none(), "not grouped, not shown");
    assert_eq!(claude["requests"], 2);
    assert_eq!(claude["errors"], 0);
    assert_eq!(claude["tokens"]["cache_write_1h"], 20);
    assert_eq!(claude["cost"]["fee"], "0.000361");
    assert_eq!(claude["cost"]["upstream"], "0.011535");
    // p50 of [1000, 2000] ms is the value at index ⌊0.5·2⌋ = 1.
    assert_eq!(claude["latency_ms"]["p50"], 2000.0);
    assert_eq!(claude["ttft_ms"]["p50"], 300.0);
    let gpt = &data[1];
    assert_eq!(
        (gpt["requests"].as_u64(), gpt["errors"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(gpt["cost"]["fee"], "0");
    assert!(gpt["ttft_ms"]["p50"].is_null());
}

#[tokio::test]
async fn openapi_document_is_served_and_complete() {
    let (_dir, _db, store) = sqlite_store();
    let base = serve(store).await;
    let served: serde_json::Value = reqwest::get(format!("{base}/v1/usage/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, serde_json::to_value(openapi_document()).unwrap());
    let documented: Vec<&str> = served["paths"]["/v1/usage"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut accepted = PARAMETERS.to_vec();
    accepted.sort_unstable();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort_unstable();
    assert_eq!(documented_sorted, accepted);
    // The endpoint filter and grouping, as enums.
    let params = served["paths"]["/v1/usage"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let endpoint = params.iter().find(|p| p["name"] == "endpoint").unwrap();
    assert_eq!(
        endpoint["schema"]["enum"],
        serde_json::json!(["chat", "messages", "responses", "embeddings"])
    );
    let tag = params.iter().find(|p| p["name"] == "tag").unwrap();
    assert_eq!(tag["schema"]["pattern"], "^[A-Za-z0-9_.-]{1,64}:.{1,256}$");
    let group_by = params.iter().find(|p| p["name"] == "group_by").unwrap();
    assert!(group_by["description"]
        .as_str()
        .unwrap()
        .contains("tag:<key>"));
    let schemas = &served["components"]["schemas"];
    for field in ["end_user", "tag"] {
        let schema = &schemas["UsageGroup"]["properties"][field];
        assert!(
            schema["type"]
                .as_array()
                .is_some_and(|t| t.contains(&serde_json::json!("null"))),
            "{field}: {schema}"
        );
    }
    assert_eq!(
        schemas["UsageReport"]["properties"]["group_by"]["items"]["type"],
        "string"
    );
    assert_eq!(
        schemas["Endpoint"]["enum"],
        serde_json::json!(["chat", "messages", "responses", "embeddings"])
    );
}
