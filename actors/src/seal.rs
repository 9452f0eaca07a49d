//! Sealing secrets and personal fields before they enter the event log.
//!
//! NATS subscribers may read every event, so a password hash, an email or a name is
//! stored as a `Sealed` value: ChaCha20-Poly1305 under a data key, with the key's
//! name as associated data. Data keys live in the KV bucket `keys`, wrapped by the
//! node's master key. A tenant has one data key for secrets; each person has their
//! own key for personal fields, so deleting it erases that person from the log.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::tenant::Scope;

/// A ciphertext as it appears in events: `kid` names the data key in the `keys`
/// bucket, `n` is the nonce and `c` the ciphertext with its tag (both base64url).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sealed {
    pub kid: String,
    pub n: String,
    pub c: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({})", self.kid)
    }
}

impl Sealed {
    #[cfg(test)]
    pub(crate) fn opaque_for_tests(tag: &str) -> Self {
        Self { kid: "test".into(), n: tag.into(), c: tag.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a sealed value could not be opened (wrong key or tampered data)")]
    Open,
    #[error("the key `{0}` does not exist (it may have been erased)")]
    MissingKey(String),
    #[error("the key store is unavailable: {0}")]
    Store(String),
    #[error("the master key must be 32 bytes, base64url encoded")]
    BadMasterKey,
}

/// 32 bytes of key material that never reach a log.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    fn seal_raw(&self, plaintext: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory input");
        (nonce.to_vec(), ct)
    }

    fn open_raw(&self, nonce: &[u8], ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if nonce.len() != 12 {
            return Err(SealError::Open);
        }
        self.cipher().decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| SealError::Open)
    }

    /// Seals `plaintext` under this key, recording `kid` as its name.
    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Sealed {
        let (n, c) = self.seal_raw(plaintext, kid.as_bytes());
        Sealed { kid: kid.to_owned(), n: B64.encode(n), c: B64.encode(c) }
    }

    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let n = B64.decode(&sealed.n).map_err(|_| SealError::Open)?;
        let c = B64.decode(&sealed.c).map_err(|_| SealError::Open)?;
        self.open_raw(&n, &c, sealed.kid.as_bytes())
    }

    /// A keyed hash, used as a blind index: equal inputs give equal outputs, but the
    /// output reveals nothing without the key.
    pub fn blind_index(&self, purpose: &str, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        out[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The node's master key: it wraps every data key and signing key in the `keys` bucket.
#[derive(Clone)]
pub struct MasterKey(DataKey);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        Self(DataKey::generate())
    }

    pub fn from_base64(s: &str) -> Result<Self, SealError> {
        let bytes = B64.decode(s.trim()).map_err(|_| SealError::BadMasterKey)?;
        DataKey::from_bytes(&bytes).map(Self).ok_or(SealError::BadMasterKey)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }

    fn wrap(&self, name: &str, secret: &[u8]) -> Vec<u8> {
        let (mut n, c) = self.0.seal_raw(secret, name.as_bytes());
        n.extend_from_slice(&c);
        n
    }

    fn unwrap(&self, name: &str, wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
        if wrapped.len() < 12 {
            return Err(SealError::Open);
        }
        let (n, c) = wrapped.split_at(12);
        self.0.open_raw(n, c, name.as_bytes())
    }
}

/// Data keys and other wrapped secrets, stored in the `keys` KV bucket and cached
/// unwrapped in memory.
#[derive(Clone)]
pub struct KeyRing {
    /// Shared: every tenant tree and every command task holds a clone of the key
    /// ring, and a `kv::Store` carries its stream's whole cached info.
    kv: Arc<kv::Store>,
    master: MasterKey,
    cache: Arc<RwLock<HashMap<String, DataKey>>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyRing")
    }
}

pub fn tenant_key_name(scope: &Scope) -> String {
    format!("data.{}", scope.token())
}

pub fn person_key_name(scope: &Scope, account_id: &str) -> String {
    format!("person.{}.{}", scope.token(), account_id)
}

impl KeyRing {
    pub fn new(kv: kv::Store, master: MasterKey) -> Self {
        Self { kv: Arc::new(kv), master, cache: Arc::default() }
    }

    /// Reads a wrapped secret, or creates it with `generate` if it does not exist yet.
    /// Two nodes racing to create it agree: the KV `create` lets only one win.
    pub async fn secret_or_create(&self, name: &str, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, SealError> {
        if let Some(bytes) = self.secret(name).await? {
            return Ok(bytes);
        }
        let secret = generate();
        let wrapped = self.master.wrap(name, &secret);
        match self.kv.create(name, wrapped.into()).await {
            Ok(_) => Ok(secret),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                self.secret(name).await?.ok_or_else(|| SealError::MissingKey(name.to_owned()))
            }
            Err(e) => Err(SealError::Store(e.to_string())),
        }
    }

    /// Reads and unwraps a secret, if it exists.
    pub async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, SealError> {
        let entry = self.kv.get(name).await.map_err(|e| SealError::Store(e.to_string()))?;
        match entry {
            None => Ok(None),
            Some(bytes) => self.master.unwrap(name, &bytes).map(Some),
        }
    }

    /// Lists the names of stored secrets that start with `prefix`.
    pub async fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>, SealError> {
        use futures::TryStreamExt;
        let keys = self.kv.keys().await.map_err(|e| SealError::Store(e.to_string()))?;
        let all: Vec<String> = keys.try_collect().await.map_err(|e| SealError::Store(e.to_string()))?;
        Ok(all.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }

    /// The data key called `name`, created on first use.
    pub async fn key(&self, name: &str) -> Result<DataKey, SealError> {
        if let Some(k) = self.cache.read().expect("key cache lock").get(name) {
            return Ok(k.clone());
        }
        let bytes = self.secret_or_create(name, || DataKey::generate().as_bytes().to_vec()).await?;
        let key = DataKey::from_bytes(&bytes).ok_or(SealError::Open)?;
        self.cache.write().expect("key cache lock").insert(name.to_owned(), key.clone());
        Ok(key)
    }

    /// The data key called `name`, only if it exists (used to open, never to create).
    pub async fn existing_key(&self, name: &str) -> Result<DataKey, SealError> {
        if let Some(k) = self.cache.read().expect("key cache lock").get(name) {
            return Ok(k.clone());
        }
        let bytes = self.secret(name).await?.ok_or_else(|| SealError::MissingKey(name.to_owned()))?;
        let key = DataKey::from_bytes(&bytes).ok_or(SealError::Open)?;
        self.cache.write().expect("key cache lock").insert(name.to_owned(), key.clone());
        Ok(key)
    }

    /// Opens a sealed value with the key it names.
    pub async fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        self.existing_key(&sealed.kid).await?.open(sealed)
    }

    pub async fn open_string(&self, sealed: &Sealed) -> Result<String, SealError> {
        String::from_utf8(self.open(sealed).await?).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let k = DataKey::generate();
        let s = k.seal("data.acme", b"secret");
        assert_eq!(k.open(&s).unwrap(), b"secret");
        assert!(DataKey::generate().open(&s).is_err());
        assert!(!s.c.contains("secret"));
    }

    #[test]
    fn a_sealed_value_moved_to_another_key_name_does_not_open() {
        let k = DataKey::generate();
        let mut s = k.seal("person.acme.a1", b"ada");
        s.kid = "person.acme.a2".into();
        assert!(k.open(&s).is_err());
    }

    #[test]
    fn blind_indexes_are_stable_per_key() {
        let k = DataKey::generate();
        assert_eq!(k.blind_index("email", "a@b.co"), k.blind_index("email", "a@b.co"));
        assert_ne!(k.blind_index("email", "a@b.co"), DataKey::generate().blind_index("email", "a@b.co"));
        assert_eq!(k.blind_index("email", "a@b.co").len(), 32);
    }

    #[test]
    fn wrapped_keys_unwrap_under_their_own_name() {
        let m = MasterKey::generate();
        let w = m.wrap("data.acme", b"0123");
        assert_eq!(m.unwrap("data.acme", &w).unwrap(), b"0123");
        assert!(m.unwrap("data.other", &w).is_err());
        let again = MasterKey::from_base64(&m.to_base64()).unwrap();
        assert_eq!(again.unwrap("data.acme", &w).unwrap(), b"0123");
    }
}
