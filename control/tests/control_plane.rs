#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/openapi/route_coverage.rs"]
mod route_coverage;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_control::admin::{router, AdminState};
use tollgate_control::{ConfigurationSpec, ControlPlane, MasterKey, ProviderIds};
use tollgate_core::secrets::hash_access_token;
use tollgate_core::ApiSurface;
use tollgate_eventlog::EventLog;
use tollgate_sqlite::{Database, Durability, SqliteEventLog, SqliteEventLogOptions};

const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn providers() -> ProviderIds {
    ProviderIds {
        builtin: ["openai", "anthropic", "groq"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        from_config: ["local"].iter().map(|s| s.to_string()).collect(),
    }
}

async fn plane_on(path: &std::path::Path) -> (Arc<ControlPlane>, Arc<SqliteEventLog>) {
    let db = Database::open(path, Durability::Normal).unwrap();
    let log = Arc::new(SqliteEventLog::open(&db, SqliteEventLogOptions::default()).unwrap());
    let plane = ControlPlane::open(
        log.clone() as Arc<dyn EventLog>,
        Arc::new(MasterKey::parse(MASTER).unwrap()),
        providers(),
    )
    .await
    .unwrap();
    (plane, log)
}

#[tokio::test]
async fn two_instances_on_one_store_see_each_others_changes_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (a, _log_a) = plane_on(&path).await;
    let (b, _log_b) = plane_on(&path).await;
    let _tail = b.spawn_tail(Duration::from_millis(100));

    let account = a.create_account("team").await.unwrap();
    let (key, token) = a.create_access_key(&account.id, "app", None).await.unwrap();
    let hash = hash_access_token(&token);

    let started = Instant::now();
    while b.snapshot().key_by_hash(&hash).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "instance b never saw the key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "new key visible on the other instance after {:?}",
        started.elapsed()
    );

    a.revoke_access_key(&key.id).await.unwrap();
    let started = Instant::now();
    while b.snapshot().key_by_hash(&hash).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "instance b never saw the revocation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "revocation visible on the other instance after {:?}",
        started.elapsed()
    );
    assert!(
        a.snapshot().key_by_hash(&hash).is_none(),
        "the writer sees its own change at once"
    );
}

#[tokio::test]
async fn state_survives_restart_by_replaying_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (token, config_id) = {
        let (a, log) = plane_on(&path).await;
        let account = a.create_account("team").await.unwrap();
        let config = a
            .create_configuration(
                &account.id,
                ConfigurationSpec {
                    name: "restricted".into(),
                    allowed_models: Some(vec!["gpt-4o-mini".into()]),
                    ..ConfigurationSpec::default()
                },
            )
            .await
            .unwrap();
        let pk = a
            .add_provider_key(&account.id, "openai", "mine", "sk-byok-1")
            .await
            .unwrap();
        a.attach_provider_key(&config.id, &pk.id).await.unwrap();
        let (_, token) = a
            .create_access_key(&account.id, "app", Some(config.id.clone()))
            .await
            .unwrap();
        log.flush().await.unwrap();
        (token, config.id)
    };
    let (b, _log) = plane_on(&path).await;
    let snapshot = b.snapshot();
    let key = snapshot.key_by_hash(&hash_access_token(&token)).unwrap();
    let config = snapshot.configuration_of(key).unwrap();
    assert_eq!(config.id, config_id);
    assert_eq!(
        config.allowed_models.as_deref(),
        Some(&["gpt-4o-mini".to_string()][..])
    );
    let attached = snapshot.attached_keys(config, "openai");
    assert_eq!(attached.len(), 1);
    assert_eq!(&*attached[0].1 .0, "sk-byok-1");
    assert!(snapshot.attached_keys(config, "anthropic").is_empty());
}

#[tokio::test]
async fn provider_keys_are_encrypted_at_rest_and_rotation_keeps_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (a, log) = plane_on(&path).await;
    let account = a.create_account("team").await.unwrap();
    let config = a
        .create_configuration(
            &account.id,
            ConfigurationSpec {
                name: "c".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first = a
        .add_provider_key(&account.id, "openai", "older", "sk-RAW-SECRET-ONE")
        .await
        .unwrap();
    let second = a
        .add_provider_key(&account.id, "openai", "newer", "sk-RAW-SECRET-TWO")
        .await
        .unwrap();
    a.attach_provider_key(&config.id, &first.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    a.attach_provider_key(&config.id, &second.id).await.unwrap();

    let snapshot = a.snapshot();
    let config_now = snapshot.configurations.get(&config.id).unwrap();
    let order: Vec<_> = snapshot
        .attached_keys(config_now, "openai")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        order,
        vec![second.id.clone(), first.id.clone()],
        "most recently attached first"
    );

    let rotated = a
        .rotate_provider_key(&first.id, "sk-RAW-SECRET-THREE")
        .await
        .unwrap();
    assert_eq!(rotated.id, first.id);
    let snapshot = a.snapshot();
    let config_now = snapshot.configurations.get(&config.id).unwrap();
    let secrets: Vec<String> = snapshot
        .attached_keys(config_now, "openai")
        .into_iter()
        .map(|(_, s)| s.0.to_string())
        .collect();
    assert_eq!(secrets, vec!["sk-RAW-SECRET-TWO", "sk-RAW-SECRET-THREE"]);

    log.flush().await.unwrap();
    for file in [path.clone(), path.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for secret in ["RAW-SECRET-ONE", "RAW-SECRET-TWO", "RAW-SECRET-THREE"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {}",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn custom_provider_ids_are_unique_across_config_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _log) = plane_on(&dir.path().join("t.db")).await;
    let err = a
        .create_custom_provider(
            "local",
            "http://127.0.0.1:9/v1",
            ApiSurface::Openai,
            vec![],
            vec![],
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("config file"), "{err}");
    let err = a
        .create_custom_provider(
            "openai",
            "http://127.0.0.1:9/v1",
            ApiSurface::Openai,
            vec![],
            vec![],
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("built-in"), "{err}");
    let err = a
        .create_custom_provider(
            "remote",
            "http://example.com/v1",
            ApiSurface::Openai,
            vec![],
            vec![],
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    a.create_custom_provider(
        "vllm",
        "http://10.0.0.5:8000/v1",
        ApiSurface::Openai,
        vec!["m".into()],
        vec![],
        false,
    )
    .await
    .unwrap();
    assert!(a
        .create_custom_provider(
            "vllm",
            "http://10.0.0.5:8000/v1",
            ApiSurface::Openai,
            vec![],
            vec![],
            false
        )
        .await
        .is_err());
    assert!(a.known_provider("vllm"));
}

async fn admin_server() -> (String, Arc<ControlPlane>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (plane, _log) = plane_on(&dir.path().join("t.db")).await;
    let app = router(AdminState::new(plane.clone(), "admin-secret-token"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/admin/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, plane, dir)
}

#[tokio::test]
async fn admin_api_requires_the_admin_token() {
    let (url, _plane, _dir) = admin_server().await;
    let client = reqwest::Client::new();
    let none = client.get(format!("{url}/accounts")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unauthorized");
    let wrong = client
        .get(format!("{url}/accounts"))
        .bearer_auth("admin-secret-tokeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(format!("{url}/accounts"))
        .bearer_auth("admin-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let spec = client
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(spec.status(), 200, "the OpenAPI document is public");
}

#[tokio::test]
async fn admin_api_manages_keys_and_never_returns_secrets() {
    let (url, plane, _dir) = admin_server().await;
    let client = reqwest::Client::new();
    let auth = "admin-secret-token";
    let account: serde_json::Value = client
        .post(format!("{url}/accounts"))
        .bearer_auth(auth)
        .json(&serde_json::json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account_id = account["id"].as_str().unwrap();
    let created = client
        .post(format!("{url}/accounts/{account_id}/access-keys"))
        .bearer_auth(auth)
        .json(&serde_json::json!({"name": "backend"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("tgk_"));
    let listed = client
        .get(format!("{url}/accounts/{account_id}/access-keys"))
        .bearer_auth(auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(token), "listing must not return the token");
    assert!(!listed.contains(&hash_access_token(token)), "nor its hash");
    assert!(listed.contains(&token[..12]), "but shows its prefix");

    let pk = client
        .post(format!("{url}/accounts/{account_id}/provider-keys"))
        .bearer_auth(auth)
        .json(
            &serde_json::json!({"provider": "openai", "name": "prod", "secret": "sk-NEVER-SHOWN"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pk.status(), 201);
    let pk_text = pk.text().await.unwrap();
    assert!(!pk_text.contains("NEVER-SHOWN") && !pk_text.contains("ciphertext"));
    let listed = client
        .get(format!("{url}/accounts/{account_id}/provider-keys"))
        .bearer_auth(auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains("NEVER-SHOWN") && !listed.contains("ciphertext"));

    let bad = client
        .post(format!("{url}/accounts/{account_id}/provider-keys"))
        .bearer_auth(auth)
        .json(&serde_json::json!({"provider": "nope", "name": "x", "secret": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let missing = client
        .post(format!("{url}/accounts/acct_missing/access-keys"))
        .bearer_auth(auth)
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let malformed = client
        .post(format!("{url}/accounts"))
        .bearer_auth(auth)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let key_id = created["access_key"]["id"].as_str().unwrap();
    let revoked = client
        .post(format!("{url}/access-keys/{key_id}/revoke"))
        .bearer_auth(auth)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert!(plane
        .snapshot()
        .key_by_hash(&hash_access_token(token))
        .is_none());
    let again = client
        .post(format!("{url}/access-keys/{key_id}/revoke"))
        .bearer_auth(auth)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn openapi_document_lists_every_route_and_only_served_ones() {
    // The control plane's own router against its own document; the admin
    // listener's full composition (proxy and ledger parts merged) is
    // checked the same way in tollgate/tests/openapi.rs.
    let (url, _plane, _dir) = admin_server().await;
    let base = url.trim_end_matches("/admin/v1").to_owned();
    let doc: serde_json::Value = reqwest::get(format!("{url}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc,
        serde_json::to_value(tollgate_control::admin::openapi_document()).unwrap()
    );
    let sources = [
        include_str!("../src/admin.rs"),
        include_str!("../src/admin/plans.rs"),
        include_str!("../src/admin/budgets.rs"),
        include_str!("../src/admin/webhooks.rs"),
    ];
    route_coverage::assert_routes_documented(&base, &doc, &sources, "admin-secret-token", 43).await;
}

/// PUT a price override body; (status, JSON body).
async fn put_override(url: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!("{url}/price-overrides/{path}"))
        .bearer_auth("admin-secret-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn price_overrides_are_validated_naming_the_field_and_replay_after_restart() {
    let (url, plane, dir) = admin_server().await;
    let client = reqwest::Client::new();
    for (path, body, field) in [
        (
            "openai/gpt-4o",
            serde_json::json!({"input": 2.5, "output": "8"}),
            "input",
        ),
        (
            "openai/gpt-4o",
            serde_json::json!({"input": "2.5", "output": "8", "cached_input": "-0.1"}),
            "cached_input",
        ),
        (
            "openai/gpt-4o",
            serde_json::json!({"input": "2.5"}),
            "output",
        ),
        (
            "openai/gpt-4o",
            serde_json::json!({"input": "2.5", "output": "8", "cache_read": "1"}),
            "cache_read",
        ),
        (
            "nowhere/gpt-4o",
            serde_json::json!({"input": "2.5", "output": "8"}),
            "provider",
        ),
    ] {
        let (status, answer) = put_override(&url, path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    assert!(plane.snapshot().price_overrides.is_empty());

    // A model id with `/` and `:` (an OpenRouter-style id, an Ollama tag).
    let (status, stored) = put_override(
        &url,
        "local/meta-llama/llama-3.1%3A8b",
        serde_json::json!({"input": "0.20", "output": "0.60", "cache_write_1h": "0.4"}),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["provider"], "local");
    assert_eq!(stored["model"], "meta-llama/llama-3.1:8b");
    // Cache classes left out cost the input price; amounts are strings.
    assert_eq!(
        stored["prices"],
        serde_json::json!({"input": "0.2", "cached_input": "0.2", "cache_write_5m": "0.2",
                           "cache_write_1h": "0.4", "output": "0.6"})
    );
    let (status, _) = put_override(
        &url,
        "openai/gpt-4o",
        serde_json::json!({"input": "1", "output": "2"}),
    )
    .await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = client
        .get(format!("{url}/price-overrides"))
        .bearer_auth("admin-secret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let models: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["meta-llama/llama-3.1:8b", "gpt-4o"]);

    let delete = |path: &str| {
        client
            .delete(format!("{url}/price-overrides/{path}"))
            .bearer_auth("admin-secret-token")
            .send()
    };
    assert_eq!(delete("openai/gpt-4o").await.unwrap().status(), 204);
    assert_eq!(delete("openai/gpt-4o").await.unwrap().status(), 404);
    assert!(plane
        .snapshot()
        .price_override("openai", "gpt-4o")
        .is_none());

    // A restarted instance rebuilds the same overrides from the log.
    let (replayed, _log) = plane_on(&dir.path().join("t.db")).await;
    let snapshot = replayed.snapshot();
    let kept: Vec<_> = snapshot.price_override_list().collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].model, "meta-llama/llama-3.1:8b");
    assert_eq!(kept[0].prices.cache_write_1h.to_string(), "0.4");
}

/// POST a custom provider body; (status, JSON body).
async fn post_custom_provider(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/custom-providers"))
        .bearer_auth("admin-secret-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn custom_provider_embedding_models_are_validated_and_replay_after_restart() {
    let (url, plane, dir) = admin_server().await;
    let base = "http://10.0.0.5:8000/v1";
    for (body, field) in [
        (
            serde_json::json!({"id": "box", "base_url": base, "api": "anthropic",
                               "embedding_models": ["emb"]}),
            "embedding_models",
        ),
        (
            serde_json::json!({"id": "box", "base_url": base, "api": "openai",
                               "models": ["m", "emb"], "embedding_models": ["emb"]}),
            "embedding_models",
        ),
        (
            serde_json::json!({"id": "box", "base_url": base, "api": "openai",
                               "embedding_models": ["emb", " "]}),
            "embedding_models[1]",
        ),
        (
            serde_json::json!({"id": "box", "base_url": base, "api": "openai",
                               "embedding_models": ["emb", "emb"]}),
            "embedding_models[1]",
        ),
        (
            serde_json::json!({"id": "box", "base_url": base, "api": "openai",
                               "models": [""]}),
            "models[0]",
        ),
    ] {
        let (status, answer) = post_custom_provider(&url, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{body}: {message}");
    }
    assert!(plane.snapshot().custom_providers.is_empty());

    let (status, created) = post_custom_provider(
        &url,
        serde_json::json!({"id": "box", "base_url": base, "api": "openai",
                           "models": ["m"], "embedding_models": ["emb", "nomic:v1.5"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["embedding_models"],
        serde_json::json!(["emb", "nomic:v1.5"])
    );
    // A provider without embedding models leaves the field out.
    let (status, plain) = post_custom_provider(
        &url,
        serde_json::json!({"id": "chat-only", "base_url": base, "api": "anthropic",
                           "models": ["c"]}),
    )
    .await;
    assert_eq!(status, 201, "{plain}");
    assert!(plain.get("embedding_models").is_none(), "{plain}");

    // A restarted instance rebuilds both from the log.
    let (replayed, _log) = plane_on(&dir.path().join("t.db")).await;
    let snapshot = replayed.snapshot();
    assert_eq!(snapshot.custom_providers["box"].models, ["m"]);
    assert_eq!(
        snapshot.custom_providers["box"].embedding_models,
        ["emb", "nomic:v1.5"]
    );
    assert!(snapshot.custom_providers["chat-only"]
        .embedding_models
        .is_empty());
}

#[test]
fn a_custom_provider_recorded_before_embedding_models_decodes_unchanged() {
    use tollgate_core::control::{ControlChange, ControlObject};
    // The shape written before the field existed.
    let old = serde_json::json!({
        "op": "upsert",
        "object": {
            "kind": "custom_provider", "id": "box", "base_url": "http://10.0.0.5:8000/v1",
            "api": "openai", "models": ["m"], "created_at": "2026-01-02T03:04:05Z"
        }
    });
    let change: ControlChange = serde_json::from_value(old.clone()).unwrap();
    let ControlChange::Upsert { object } = &change else {
        panic!("not an upsert: {change:?}");
    };
    let ControlObject::CustomProvider(provider) = object else {
        panic!("not a custom provider: {object:?}");
    };
    assert_eq!(provider.models, ["m"]);
    assert!(provider.embedding_models.is_empty());
    // Written back, it is the same bytes' worth of JSON.
    assert_eq!(serde_json::to_value(&change).unwrap(), old);
}

#[tokio::test]
async fn configuration_default_tags_are_validated_and_shown_in_the_admin_api() {
    let (url, _plane, _dir) = admin_server().await;
    let client = reqwest::Client::new();
    let auth = "admin-secret-token";
    let account: serde_json::Value = client
        .post(format!("{url}/accounts"))
        .bearer_auth(auth)
        .json(&serde_json::json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account_id = account["id"].as_str().unwrap();
    let create = |body: serde_json::Value| {
        client
            .post(format!("{url}/accounts/{account_id}/configurations"))
            .bearer_auth(auth)
            .json(&body)
            .send()
    };
    for (tags, says) in [
        (serde_json::json!({"Team": "x"}), "key `Team` must match"),
        (serde_json::json!({"team": ""}), "empty value"),
        (serde_json::json!({"team": "a,b"}), "must not contain `,`"),
        (
            serde_json::json!({"team": "café"}),
            "outside printable ASCII",
        ),
    ] {
        let refused = create(serde_json::json!({"name": "c", "default_tags": tags}))
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{tags}");
        let body: serde_json::Value = refused.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("default_tags: ") && message.contains(says),
            "{message}"
        );
    }
    let eleven: serde_json::Map<String, serde_json::Value> = (0..11)
        .map(|i| (format!("k{i}"), serde_json::json!("v")))
        .collect();
    let refused = create(serde_json::json!({"name": "c", "default_tags": eleven}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    let created = create(serde_json::json!({"name": "c", "default_tags": {"team": "search"}}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    assert_eq!(
        created["default_tags"],
        serde_json::json!({"team": "search"})
    );
    let id = created["id"].as_str().unwrap();
    let updated: serde_json::Value = client
        .put(format!("{url}/configurations/{id}"))
        .bearer_auth(auth)
        .json(&serde_json::json!({"name": "c", "default_tags": {"env": "prod"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["default_tags"], serde_json::json!({"env": "prod"}));
    let got: serde_json::Value = client
        .get(format!("{url}/configurations/{id}"))
        .bearer_auth(auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["default_tags"], serde_json::json!({"env": "prod"}));

    // The generated document shows the field on the body and the object.
    let doc = serde_json::to_value(tollgate_control::admin::openapi_document()).unwrap();
    for schema in ["ConfigurationSpec", "Configuration"] {
        let field = &doc["components"]["schemas"][schema]["properties"]["default_tags"];
        assert_eq!(field["type"], "object", "{schema}: {field}");
    }
}
