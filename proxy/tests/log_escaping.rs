//! Log lines never carry a client's or an upstream's control characters:
//! a model name with a newline and an ESC byte cannot forge a log line,
//! in the text format or in the JSON one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tollgate_core::ApiSurface;
use tollgate_mock_upstream::Rule;
use tollgate_proxy::config::{CustomProviderConfig, DeclaredPrices, ExactUsd};
use tracing_subscriber::layer::SubscriberExt;

/// A log writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_with_control_characters_cannot_forge_log_lines() {
    // Both formats the binary offers, as layers of one (process-wide) subscriber.
    let (text_log, json_log) = (Captured::default(), Captured::default());
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(text_log.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(json_log.clone()),
        );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // A priced custom model whose name forges a line (an unpriced one is
    // refused before any upstream attempt, so nothing would be logged).
    let forged = "gpt-4o\n2026-12-07T00:00:00.000000Z  INFO tollgate: forged line\x1b[2J";
    let gw = start_with(|c| {
        let base_url = c.providers["openai"].base_url.clone().unwrap();
        let zero = ExactUsd("0".parse().unwrap());
        c.custom_providers.push(CustomProviderConfig {
            id: "forge".into(),
            base_url,
            api: ApiSurface::Openai,
            models: vec![forged.into()],
            embedding_models: vec![],
            responses: false,
            prices: [(
                forged.to_owned(),
                DeclaredPrices {
                    input: zero,
                    output: zero,
                    cached_input: None,
                    cache_write_5m: None,
                    cache_write_1h: None,
                },
            )]
            .into(),
            api_keys: vec![OPENAI_KEY.into()],
        });
    })
    .await;
    gw.mock.add_rule(Rule::any().fail(500));
    let response = gw.post_openai(chat(&format!("forge:{forged}"), "hi")).await;
    assert_eq!(response.status(), 502);

    // The WARN line is there, once, with the model name escaped.
    let text = text_log.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("all upstream attempts failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        warnings[0]
            .contains(r"gpt-4o\n2026-12-07T00:00:00.000000Z  INFO tollgate: forged line\u{1b}[2J"),
        "{}",
        warnings[0]
    );
    assert!(!text.contains('\x1b'), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-12-07T00:00:00")),
        "{text}"
    );

    // The JSON log: one object per line, the field holding the escaped text.
    let json = json_log.text();
    let mut found = false;
    for line in json.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let last_error = entry["fields"]["last_error"].as_str().unwrap_or_default();
        if entry["fields"]["message"] == "all upstream attempts failed" {
            assert_eq!(entry["level"], "WARN");
            assert!(last_error.contains(r"gpt-4o\n2026"), "{last_error}");
            assert!(!last_error.chars().any(char::is_control), "{last_error:?}");
            found = true;
        }
    }
    assert!(found, "{json}");
    assert!(!json.contains('\x1b'));
}
