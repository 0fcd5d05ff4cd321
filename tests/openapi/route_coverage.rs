//! Shared by each API's route-coverage test (included with `#[path]`): the
//! (method, path) pairs a live server answers must be exactly the pairs its
//! OpenAPI document names. Served routes are found by probing every path
//! the router's source registers (`.route("…"`) and every documented path
//! with each method: axum answers a path it does not route with an empty
//! 404 and a method it does not route with 405; every handler answers
//! anything else (its refusals carry a JSON body).
#![allow(dead_code)]

use std::collections::BTreeSet;

pub const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// The (method, path) pairs a document names.
pub fn documented(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if item.get(*method).is_some() {
                pairs.insert(((*method).to_owned(), path.clone()));
            }
        }
    }
    pairs
}

/// The paths a source file registers with `.route("…"`, in OpenAPI's
/// syntax (axum's `{*rest}` is `{rest}`).
pub fn registered_paths(source: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let trimmed = rest.trim_start();
        if let Some(literal) = trimmed.strip_prefix('"') {
            if let Some(end) = literal.find('"') {
                paths.insert(literal[..end].replace("{*", "{"));
            }
        }
    }
    paths
}

/// A concrete URL path for a templated one: each `{name}` becomes `probe-name`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        out.push_str("probe-");
        out.push_str(&rest[open + 1..close]);
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// The (method, path) pairs the server at `base` routes, among `paths`.
pub async fn served(
    base: &str,
    paths: &BTreeSet<String>,
    token: &str,
) -> BTreeSet<(String, String)> {
    let client = reqwest::Client::new();
    let mut pairs = BTreeSet::new();
    for path in paths {
        for method in METHODS {
            let url = format!("{base}{}", concrete(path));
            let response = client
                .request(method.to_uppercase().parse().unwrap(), &url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            let unrouted = status == 405 || (status == 404 && body.is_empty());
            if !unrouted {
                pairs.insert(((*method).to_owned(), path.clone()));
            }
        }
    }
    pairs
}

/// Fails naming every pair served but undocumented and documented but not
/// served; refuses to pass on fewer than `at_least` routes either way.
pub async fn assert_routes_documented(
    base: &str,
    doc: &serde_json::Value,
    sources: &[&str],
    token: &str,
    at_least: usize,
) {
    let documented = documented(doc);
    let mut paths: BTreeSet<String> = sources.iter().flat_map(|s| registered_paths(s)).collect();
    assert!(
        !paths.is_empty(),
        "found no `.route(\"…\"` in the router's source"
    );
    paths.extend(documented.iter().map(|(_, p)| p.clone()));
    let served = served(base, &paths, token).await;
    assert!(
        served.len() >= at_least && documented.len() >= at_least,
        "expected at least {at_least} routes; served {}, documented {}",
        served.len(),
        documented.len()
    );
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in the document: {undocumented:?}\nin the document but not served: {unserved:?}"
    );
}
