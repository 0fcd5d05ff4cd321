//! Authenticated encryption of provider keys at rest (XChaCha20-Poly1305).
//! The 32-byte master key comes from `TOLLGATE_MASTER_KEY` or a key file.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt::{self, Write};
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
    end_users: EndUserHasher,
}

type HmacSha256 = Hmac<Sha256>;

/// What the end-user key is derived with: HMAC-SHA256(master key, this).
const END_USER_KEY_LABEL: &[u8] = b"tollgate end-user v1";

/// Pseudonymizes end users (`[privacy] end_user = "hash"`): HMAC-SHA256
/// keyed by a key derived from the master key, so every instance sharing
/// the master key gives the same hash, and without it the hash cannot be
/// recomputed from a guessed name. The key never leaves this type.
#[derive(Clone)]
pub struct EndUserHasher {
    key: [u8; 32],
}

impl fmt::Debug for EndUserHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndUserHasher(<redacted>)")
    }
}

impl EndUserHasher {
    /// The key derived from the master key's 32 bytes.
    fn derive(master: &[u8]) -> EndUserHasher {
        EndUserHasher {
            key: hmac(master, END_USER_KEY_LABEL),
        }
    }

    /// `h:` and the 64 hex digits of HMAC-SHA256(derived key, end user).
    pub fn hash(&self, end_user: &str) -> String {
        let mac = hmac(&self.key, end_user.as_bytes());
        let mut out = String::with_capacity(2 + 64);
        out.push_str("h:");
        for b in mac {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().into()
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
        Ok(MasterKey {
            cipher,
            end_users: EndUserHasher::derive(&bytes),
        })
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

    /// The end-user pseudonymizer derived from this key.
    pub fn end_user_hasher(&self) -> &EndUserHasher {
        &self.end_users
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
    fn end_user_hashes_are_keyed_by_the_master_key() {
        // RFC 4231 test case 2: the HMAC-SHA256 used is the standard one.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let text = MasterKey::generate_hex();
        let (a, b) = (
            MasterKey::parse(&text).unwrap(),
            MasterKey::parse(&text).unwrap(),
        );
        let hash = a.end_user_hasher().hash("user-42");
        assert_eq!(hash, b.end_user_hasher().hash("user-42"));
        assert!(hash.starts_with("h:") && hash.len() == 66, "{hash}");
        assert!(!hash.contains("user-42"));
        assert_ne!(hash, a.end_user_hasher().hash("user-43"));
        let other = MasterKey::parse(&MasterKey::generate_hex()).unwrap();
        assert_ne!(hash, other.end_user_hasher().hash("user-42"));
        // Not keyed by the master key itself.
        let master = (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<u8>>();
        assert_ne!(hash, format!("h:{}", hex(&hmac(&master, b"user-42"))));
        assert!(!format!("{:?}", a.end_user_hasher()).contains(&text[..8]));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rejects_bad_master_keys() {
        assert!(MasterKey::parse("short").is_err());
        assert!(MasterKey::parse(&"z".repeat(64)).is_err());
        assert!(MasterKey::parse(&B64.encode([7u8; 32])).is_ok());
    }
}
