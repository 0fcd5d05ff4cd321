//! Webhooks alerts are delivered to, as control-plane changes. Each has a
//! signing secret generated here from the OS CSPRNG, returned once (at
//! creation or rotation) and stored only encrypted with the master key,
//! like provider keys; the ledger decrypts it to sign deliveries.

use crate::plane::{ControlError, ControlPlane};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use rand::RngCore;
use serde::Deserialize;
use tollgate_core::budget::{AlertKind, Webhook};
use tollgate_core::control::{ControlChange, ControlKind, ControlObject};

/// Longest webhook URL, in bytes.
pub const WEBHOOK_URL_MAX_LEN: usize = 2048;
/// Every signing secret starts with this.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// A new webhook, as the admin API and CLI send it.
#[derive(Clone, Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where alerts are POSTed: http or https with a host, at most 2048 bytes.
    #[schema(example = "https://hooks.example.com/tollgate", max_length = 2048)]
    pub url: String,
    /// The alert kinds delivered to it; absent or empty: every kind.
    #[serde(default)]
    #[schema(value_type = Vec<AlertKind>)]
    pub kinds: Vec<String>,
}

/// A change to a webhook: the fields given are replaced, the others kept.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[serde(default)]
    #[schema(example = "https://hooks.example.com/tollgate", max_length = 2048)]
    pub url: Option<String>,
    /// Empty: every kind.
    #[serde(default)]
    #[schema(value_type = Option<Vec<AlertKind>>)]
    pub kinds: Option<Vec<String>>,
}

/// A webhook and its signing secret, which is in no other answer.
#[derive(Debug)]
pub struct WebhookWithSecret {
    pub webhook: Webhook,
    pub secret: String,
}

fn check_url(url: &str) -> Result<String, ControlError> {
    if url.len() > WEBHOOK_URL_MAX_LEN {
        return Err(ControlError::Invalid(format!(
            "url: longer than {WEBHOOK_URL_MAX_LEN} bytes"
        )));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| ControlError::Invalid(format!("url: not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ControlError::Invalid(format!(
            "url: scheme `{}` is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ControlError::Invalid("url: has no host".into()));
    }
    Ok(url.to_owned())
}

/// Known kinds, each once, in their canonical order; the first unknown one
/// is an error naming it.
fn check_kinds(kinds: &[String]) -> Result<Vec<AlertKind>, ControlError> {
    let mut parsed = Vec::with_capacity(kinds.len());
    for (i, text) in kinds.iter().enumerate() {
        let kind = AlertKind::parse(text).ok_or_else(|| {
            let known: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
            ControlError::Invalid(format!(
                "kinds[{i}]: unknown alert kind `{text}`; known: {}",
                known.join(", ")
            ))
        })?;
        parsed.push(kind);
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// `whsec_` and 32 bytes from the OS CSPRNG, base64url.
fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{WEBHOOK_SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

impl ControlPlane {
    pub fn webhook(&self, id: &str) -> Result<Webhook, ControlError> {
        self.snapshot()
            .webhooks
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("webhook {id}")))
    }

    pub async fn create_webhook(
        &self,
        spec: &NewWebhook,
    ) -> Result<WebhookWithSecret, ControlError> {
        self.refresh().await?;
        let url = check_url(&spec.url)?;
        let kinds = check_kinds(&spec.kinds)?;
        let secret = generate_secret();
        let webhook = Webhook {
            id: format!("whk_{}", uuid::Uuid::now_v7().simple()),
            url,
            kinds,
            secret_ciphertext: self.encrypt(&secret),
            created_at: Utc::now(),
        };
        self.upsert(ControlObject::Webhook(webhook.clone())).await?;
        Ok(WebhookWithSecret { webhook, secret })
    }

    pub async fn update_webhook(
        &self,
        id: &str,
        patch: &WebhookPatch,
    ) -> Result<Webhook, ControlError> {
        self.refresh().await?;
        let mut webhook = self.webhook(id)?;
        if let Some(url) = &patch.url {
            webhook.url = check_url(url)?;
        }
        if let Some(kinds) = &patch.kinds {
            webhook.kinds = check_kinds(kinds)?;
        }
        self.upsert(ControlObject::Webhook(webhook.clone())).await?;
        Ok(webhook)
    }

    /// A new secret, effective for deliveries from now on; the old one
    /// stops verifying at once.
    pub async fn rotate_webhook_secret(&self, id: &str) -> Result<WebhookWithSecret, ControlError> {
        self.refresh().await?;
        let mut webhook = self.webhook(id)?;
        let secret = generate_secret();
        webhook.secret_ciphertext = self.encrypt(&secret);
        self.upsert(ControlObject::Webhook(webhook.clone())).await?;
        Ok(WebhookWithSecret { webhook, secret })
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), ControlError> {
        self.refresh().await?;
        self.webhook(id)?;
        self.publish(ControlChange::Delete {
            kind: ControlKind::Webhook,
            id: id.to_owned(),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_long() {
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.starts_with(WEBHOOK_SECRET_PREFIX));
        assert_eq!(a.len(), WEBHOOK_SECRET_PREFIX.len() + 43);
        assert_ne!(a, b);
    }

    #[test]
    fn urls_need_http_or_https_and_a_host() {
        assert!(check_url("https://hooks.example.com/x?y=1").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok());
        for bad in [
            "ftp://example.com/",
            "not a url",
            "https://",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(WEBHOOK_URL_MAX_LEN));
        assert!(check_url(&long).unwrap_err().to_string().contains("2048"));
    }

    #[test]
    fn kinds_are_deduplicated_and_unknown_ones_named() {
        let kinds = check_kinds(&[
            "low_balance".into(),
            "budget_threshold".into(),
            "low_balance".into(),
        ])
        .unwrap();
        assert_eq!(
            kinds,
            vec![AlertKind::BudgetThreshold, AlertKind::LowBalance]
        );
        let err = check_kinds(&["low_balance".into(), "nope".into()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("kinds[1]: unknown alert kind `nope`"),
            "{err}"
        );
    }
}
