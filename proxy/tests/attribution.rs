//! Attribution: the end user each client API declares and the
//! `x-tollgate-tags` header (over the access key configuration's default
//! tags) recorded in usage events; `[privacy] end_user` keep, hash, drop;
//! malformed tags refused in each API's error shape; neither in metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_eventlog::EventLog;
use tollgate_proxy::config::EndUserPolicy;

const TAGS: &str = "x-tollgate-tags";

/// The four client APIs: (path, a valid body, whether it is Anthropic's).
fn apis() -> [(&'static str, Value, bool); 4] {
    [
        ("/v1/chat/completions", chat("gpt-4o-mini", "hi"), false),
        ("/v1/messages", messages("claude-sonnet-4-5", "hi"), true),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi"}),
            false,
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hi"}),
            false,
        ),
    ]
}

/// POST `body` to `path` with `token` and extra headers (values as bytes).
async fn post(
    url: String,
    token: &str,
    body: &Value,
    headers: &[(&str, &[u8])],
) -> reqwest::Response {
    let mut request = TestGateway::client()
        .post(url)
        .bearer_auth(token)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    for (name, value) in headers {
        request = request.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    request.send().await.unwrap()
}

/// Send and return the event of a successful request.
async fn event_of(
    gw: &TestGateway,
    path: &str,
    token: &str,
    body: &Value,
    headers: &[(&str, &[u8])],
) -> tollgate_core::UsageEvent {
    let response = post(gw.url(path), token, body, headers).await;
    let event_id = header(&response, "x-tollgate-event-id");
    let (status, _, answer) = json_of(response).await;
    assert_eq!(status, 200, "{path}: {answer}");
    gw.event(&event_id).await
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A key whose configuration has default tags `team=core, env=prod`.
async fn tagged_key(gw: &TestGateway) -> String {
    key_under(
        gw,
        tollgate_control::ConfigurationSpec {
            name: "tagged".into(),
            default_tags: tags(&[("team", "core"), ("env", "prod")]),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_records_its_end_user_as_declared() {
    let gw = start().await;
    let token = gw.token.clone();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                   "safety_identifier": "sid-1", "user": "u-1"}),
            Some("sid-1"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                   "safety_identifier": "", "user": "u-\"2\"\n"}),
            Some("u-\"2\"\n"),
        ),
        ("/v1/chat/completions", chat("gpt-4o-mini", "hi"), None),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}],
                   "metadata": {"user_id": "anthropic-user"}, "user": "ignored"}),
            Some("anthropic-user"),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi", "user": "resp-user"}),
            Some("resp-user"),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi", "safety_identifier": "resp-sid", "user": "x"}),
            Some("resp-sid"),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hi", "user": "émbed-ü"}),
            Some("émbed-ü"),
        ),
    ];
    for (path, body, expected) in cases {
        let event = event_of(&gw, path, &token, &body, &[]).await;
        assert_eq!(event.end_user.as_deref(), expected, "{path}: {body}");
        assert!(event.tags.is_empty());
    }
    // The body still goes upstream as it came.
    let sent = gw.mock.requests().pop().unwrap();
    assert!(String::from_utf8_lossy(&sent.raw_body).contains("\"user\""));

    // Too long: refused naming the member, nothing sent upstream.
    let before = gw.mock.requests().len();
    let long = "u".repeat(257);
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [], "user": long}),
            "user",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "x", "safety_identifier": long}),
            "safety_identifier",
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [],
                   "metadata": {"user_id": long}}),
            "metadata.user_id",
        ),
    ] {
        let (status, _, answer) = json_of(post(gw.url(path), &token, &body, &[]).await).await;
        assert_eq!(status, 400, "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{param}` is longer than 256 bytes")),
            "{message}"
        );
    }
    assert_eq!(gw.mock.requests().len(), before);
    let ok = json!({"model": "gpt-4o-mini", "messages": [], "user": "u".repeat(256)});
    let event = event_of(&gw, "/v1/chat/completions", &token, &ok, &[]).await;
    assert_eq!(event.end_user.map(|u| u.len()), Some(256));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_end_users_match_across_instances_and_never_reach_the_log() {
    const CANARY: &str = "enduser-CANARY-4f2a9c@example.com";
    let gw = start_with(|c| c.privacy.end_user = EndUserPolicy::Hash).await;
    let other = gw.start_instance().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                      "user": CANARY});
    let first = event_of(&gw, "/v1/chat/completions", &gw.token, &body, &[]).await;
    let response = post(other.url("/v1/chat/completions"), &gw.token, &body, &[]).await;
    let second_id = header(&response, "x-tollgate-event-id");
    assert_eq!(response.status(), 200);
    let second = gw.event(&second_id).await;
    assert_eq!(
        second.instance_id.as_deref(),
        Some(other.gateway.instance_id.as_str())
    );

    let hash = first.end_user.clone().unwrap();
    assert!(hash.starts_with("h:") && hash.len() == 66, "{hash}");
    assert_eq!(second.end_user.as_deref(), Some(hash.as_str()));
    assert_eq!(hash, gw.control.end_user_hasher().hash(CANARY));
    // Another end user, another hash.
    let mut another = body.clone();
    another["user"] = json!("someone-else");
    let third = event_of(&gw, "/v1/chat/completions", &gw.token, &another, &[]).await;
    assert_ne!(third.end_user.as_deref(), Some(hash.as_str()));

    // The declared name is on no raw record of the event log.
    gw.events.flush().await.unwrap();
    let records = gw
        .events
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    for record in &records {
        let payload = String::from_utf8_lossy(&record.payload);
        assert!(
            !payload.contains("CANARY"),
            "plain end user stored: {payload}"
        );
    }
    assert!(String::from_utf8_lossy(&records[0].payload).contains(&hash));
    assert!(!gw.metrics_text().await.contains(&hash[2..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_end_users_are_not_recorded() {
    let gw = start_with(|c| c.privacy.end_user = EndUserPolicy::Drop).await;
    for (path, mut body, anthropic) in apis() {
        if anthropic {
            body["metadata"] = json!({"user_id": "dropped-user"});
        } else {
            body["user"] = json!("dropped-user");
        }
        let event = event_of(&gw, path, &gw.token, &body, &[]).await;
        assert_eq!(event.end_user, None, "{path}");
    }
    for record in gw
        .events
        .read(tollgate_eventlog::topics::ACCOUNT_EVENTS, 0, 0, 100_000)
        .await
        .unwrap()
    {
        let payload = String::from_utf8_lossy(&record.payload);
        assert!(!payload.contains("dropped-user"), "{payload}");
        assert!(!payload.contains("\"end_user\""), "{payload}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_tags_merge_over_the_configuration_defaults() {
    let gw = start().await;
    let token = tagged_key(&gw).await;
    let chat = chat("gpt-4o-mini", "hi");
    let path = "/v1/chat/completions";

    let event = event_of(&gw, path, &token, &chat, &[]).await;
    assert_eq!(event.tags, tags(&[("team", "core"), ("env", "prod")]));

    let header = b" team = search ,feature=autocomplete  ";
    let event = event_of(&gw, path, &token, &chat, &[(TAGS, header)]).await;
    assert_eq!(
        event.tags,
        tags(&[
            ("team", "search"),
            ("env", "prod"),
            ("feature", "autocomplete")
        ])
    );

    // Every API records them; a key without defaults has only the request's.
    for (path, body, _) in apis() {
        let event = event_of(&gw, path, &gw.token, &body, &[(TAGS, b"feature=x-1.2")]).await;
        assert_eq!(event.tags, tags(&[("feature", "x-1.2")]), "{path}");
    }
    // Two header lines count as one list.
    let event = event_of(
        &gw,
        path,
        &gw.token,
        &chat,
        &[(TAGS, b"a=1"), (TAGS, b"b=2")],
    )
    .await;
    assert_eq!(event.tags, tags(&[("a", "1"), ("b", "2")]));

    // 8 new keys over 2 defaults is 10; 9 new is 11, refused. Overriding a
    // default does not add one.
    let eight = (0..8)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let event = event_of(&gw, path, &token, &chat, &[(TAGS, eight.as_bytes())]).await;
    assert_eq!(event.tags.len(), 10);
    let override_too = format!("{eight},team=x");
    let event = event_of(&gw, path, &token, &chat, &[(TAGS, override_too.as_bytes())]).await;
    assert_eq!(event.tags.len(), 10);
    let nine = format!("{eight},k8=v");
    let response = post(gw.url(path), &token, &chat, &[(TAGS, nine.as_bytes())]).await;
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("x-tollgate-tags: 11 tags"), "{message}");
    assert!(message.contains("at most 10"), "{message}");

    // Neither tags nor their values become metric labels.
    let metrics = gw.metrics_text().await;
    for label in ["autocomplete", "x-1.2"] {
        assert!(!metrics.contains(label), "`{label}` in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tags_are_refused_in_each_apis_error_shape() {
    let gw = start().await;
    let bad: [(&[u8], &str); 9] = [
        (
            b"Team=search",
            "x-tollgate-tags: key `Team` must match [a-z0-9_.-]{1,64}",
        ),
        (b"team=a,b", "x-tollgate-tags: entry `b` is not `key=value`"),
        (
            b"team=a=b",
            "x-tollgate-tags: tag `team`: value must not contain `=`",
        ),
        (
            b"team=a,team=b",
            "x-tollgate-tags: key `team` is given more than once",
        ),
        (b"team=", "x-tollgate-tags: tag `team` has an empty value"),
        (b"team=a,,b=c", "x-tollgate-tags: empty entry"),
        (
            b"team=caf\xc3\xa9",
            "x-tollgate-tags: must be printable ASCII",
        ),
        (b"team=\xff\xfe", "x-tollgate-tags: must be printable ASCII"),
        (b"team=a\tb", "x-tollgate-tags: must be printable ASCII"),
    ];
    for (path, body, anthropic) in apis() {
        for (value, says) in &bad {
            let response = post(gw.url(path), &gw.token, &body, &[(TAGS, value)]).await;
            let event_id = header(&response, "x-tollgate-event-id");
            let (status, _, answer) = json_of(response).await;
            assert_eq!(status, 400, "{path} {value:?}: {answer}");
            let error = &answer["error"];
            assert_eq!(error["type"], "invalid_request_error", "{path}: {answer}");
            if anthropic {
                assert_eq!(answer["type"], "error", "{answer}");
            } else {
                assert!(error.get("code").is_some(), "{answer}");
            }
            let message = error["message"].as_str().unwrap();
            assert!(message.starts_with(says), "{path} {value:?}: {message}");
            // Metered as a refused request, without tags.
            let event = gw.event(&event_id).await;
            assert_eq!((event.status, event.tags.len()), (400, 0));
        }
    }
    assert!(gw.mock.requests().is_empty(), "nothing went upstream");

    // The key is checked first: a wrong key with bad tags is a 401.
    let (path, body, _) = &apis()[0];
    let response = post(gw.url(path), "tgk_wrong", body, &[(TAGS, b"Bad")]).await;
    assert_eq!(response.status(), 401);
}
