//! Authenticated encryption of provider keys at rest (XChaCha20-Poly1305).
//! The 32-byte master key comes from `TOLLGATE_MASTER_KEY` or a key file.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use std::fmt;
use std::path::Path;

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 32 bytes, given as 64 hex characters or base64")]
    BadMasterKey,
    #[error("cannot read master key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("ciphertext is corrupt or was encrypted with another master key")]
    Decrypt,
}

pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parse 64 hex characters or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<MasterKey, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| CryptoError::BadMasterKey)?
        } else {
            B64.decode(text).map_err(|_| CryptoError::BadMasterKey)?
        };
        if bytes.len() != 32 {
            return Err(CryptoError::BadMasterKey);
        }
        let cipher =
            XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptoError::BadMasterKey)?;
        Ok(MasterKey { cipher })
    }

    pub fn from_file(path: &Path) -> Result<MasterKey, CryptoError> {
        let text = std::fs::read_to_string(path).map_err(|e| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        MasterKey::parse(&text)
    }

    /// A new random key, as 64 hex characters (for writing a key file).
    pub fn generate_hex() -> String {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce cannot fail for in-memory data.
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        B64.encode(out)
    }

    pub fn decrypt(&self, encoded: &str) -> Result<String, CryptoError> {
        let bytes = B64.decode(encoded).map_err(|_| CryptoError::Decrypt)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_detects_tampering() {
        let key = MasterKey::parse(&MasterKey::generate_hex()).unwrap();
        let sealed = key.encrypt("sk-secret-value");
        assert!(!sealed.contains("sk-secret-value"));
        assert_ne!(sealed, key.encrypt("sk-secret-value"), "nonces must differ");
        assert_eq!(key.decrypt(&sealed).unwrap(), "sk-secret-value");
        let mut raw = B64.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(key.decrypt(&B64.encode(raw)).is_err());
        let other = MasterKey::parse(&MasterKey::generate_hex()).unwrap();
        assert!(other.decrypt(&sealed).is_err());
    }

    #[test]
    fn rejects_bad_master_keys() {
        assert!(MasterKey::parse("short").is_err());
        assert!(MasterKey::parse(&"z".repeat(64)).is_err());
        assert!(MasterKey::parse(&B64.encode([7u8; 32])).is_ok());
    }
}
