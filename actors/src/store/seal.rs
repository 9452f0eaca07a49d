//! Sealing secrets and personal fields before they enter the event log.
//!
//! NATS subscribers may read every event, so a password hash, an email or a name is
//! stored as a `Sealed` value: ChaCha20-Poly1305 under a data key, with the key's
//! name as associated data. Data keys live in the KV bucket `keys`, wrapped by the
//! node's master key. A tenant has one data key for secrets; each person has their
//! own key for personal fields, so deleting it erases that person from the log.
//!
//! A key ring caches unwrapped keys. A destroyed key must stop working on every
//! node, so each node follows the bucket's deletions and forgets what it cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
use tokio::sync::mpsc;

use crate::domain::ids::is_safe_token;
use crate::domain::tenant::Scope;

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
    /// The sealed value `v` holds, if it has a sealed value's exact shape (an
    /// object of the three strings `kid`, `n` and `c`, nothing else).
    pub fn from_json(v: &serde_json::Value) -> Option<Sealed> {
        let map = v.as_object()?;
        let field = |k: &str| map.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        (map.len() == 3).then_some(())?;
        Some(Sealed { kid: field("kid")?, n: field("n")?, c: field("c")? })
    }

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
    #[error("the key `{0}` was destroyed for good")]
    Shredded(String),
}

/// What a key destroyed for good holds in the `keys` bucket: a value no master
/// key unwraps, so that `key` refuses to create the key again.
const SHREDDED: &[u8] = b"shredded";

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

/// Unwrapped data keys held in memory. A destroyed key must not outlive its
/// destruction here: `forget` removes it, and a load that was reading the bucket
/// while a key was forgotten does not cache what it read, since that may be the
/// key just destroyed.
#[derive(Default)]
struct KeyCache {
    inner: RwLock<CachedKeys>,
}

#[derive(Default)]
struct CachedKeys {
    keys: HashMap<String, DataKey>,
    /// How many times anything was forgotten: a load compares it before and after.
    forgotten: u64,
}

impl KeyCache {
    fn get(&self, name: &str) -> Option<DataKey> {
        self.inner.read().expect("key cache lock").keys.get(name).cloned()
    }

    /// Taken by a load before it reads the bucket, and handed to `insert`.
    fn stamp(&self) -> u64 {
        self.inner.read().expect("key cache lock").forgotten
    }

    /// Caches a key read by a load that took `stamp` first, unless a key was
    /// forgotten since. Any forget counts, not only this name's: forgets are rare,
    /// and the next use reads the bucket again.
    fn insert(&self, name: &str, key: DataKey, stamp: u64) {
        let mut cached = self.inner.write().expect("key cache lock");
        if cached.forgotten == stamp {
            cached.keys.insert(name.to_owned(), key);
        }
    }

    fn forget(&self, name: &str) {
        let mut cached = self.inner.write().expect("key cache lock");
        cached.keys.remove(name);
        cached.forgotten += 1;
    }

    fn forget_all(&self) {
        let mut cached = self.inner.write().expect("key cache lock");
        cached.keys.clear();
        cached.forgotten += 1;
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
    cache: Arc<KeyCache>,
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

/// The scope and account id a person's key belongs to: the inverse of
/// `person_key_name`, and `None` for a name that is not a person's key.
pub fn person_of_key(name: &str) -> Option<(Scope, String)> {
    let (token, account_id) = name.strip_prefix("person.")?.split_once('.')?;
    let scope = Scope::parse_token(token).ok()?;
    is_safe_token(account_id).then(|| (scope, account_id.to_owned()))
}

/// How many times `shred` reads and writes a key that others change meanwhile.
const SHRED_ATTEMPTS: usize = 16;

/// How long the watch on destroyed keys waits before it starts again after an error.
const WATCH_RETRY: Duration = Duration::from_secs(1);

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
            Some(bytes) if bytes.as_ref() == SHREDDED => Err(SealError::Shredded(name.to_owned())),
            Some(bytes) => self.master.unwrap(name, &bytes).map(Some),
        }
    }

    /// Reads and unwraps a secret with its revision in the bucket, for a later
    /// `replace_secret`.
    pub async fn secret_with_revision(&self, name: &str) -> Result<Option<(Vec<u8>, u64)>, SealError> {
        let entry = self.kv.entry(name).await.map_err(|e| SealError::Store(e.to_string()))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some((self.master.unwrap(name, &e.value)?, e.revision))),
            _ => Ok(None),
        }
    }

    /// Writes a new value of a secret if it is still at `revision` (0: if it does
    /// not exist yet). `Ok(false)`: another writer came first; read it again.
    pub async fn replace_secret(&self, name: &str, secret: &[u8], revision: u64) -> Result<bool, SealError> {
        let wrapped = self.master.wrap(name, secret);
        let written = if revision == 0 {
            self.kv.create(name, wrapped.into()).await.map(|_| ()).map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => None,
                _ => Some(e.to_string()),
            })
        } else {
            self.kv.update(name, wrapped.into(), revision).await.map(|_| ()).map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => None,
                _ => Some(e.to_string()),
            })
        };
        match written {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(SealError::Store(e)),
        }
    }

    /// Waits until the secret `name` changes (or the watch fails), for readers
    /// that keep a copy of it.
    pub async fn changed(&self, name: &str) -> Result<(), SealError> {
        use futures::StreamExt;
        let mut watch = self.kv.watch(name).await.map_err(|e| SealError::Store(e.to_string()))?;
        match watch.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(SealError::Store(e.to_string())),
            None => Err(SealError::Store("the watch ended".into())),
        }
    }

    /// The data key called `name`, created on first use.
    pub async fn key(&self, name: &str) -> Result<DataKey, SealError> {
        if let Some(k) = self.cache.get(name) {
            return Ok(k);
        }
        let stamp = self.cache.stamp();
        let bytes = self.secret_or_create(name, || DataKey::generate().as_bytes().to_vec()).await?;
        let key = DataKey::from_bytes(&bytes).ok_or(SealError::Open)?;
        self.cache.insert(name, key.clone(), stamp);
        Ok(key)
    }

    /// The data key called `name`, only if it exists (used to open, never to create).
    pub async fn existing_key(&self, name: &str) -> Result<DataKey, SealError> {
        if let Some(k) = self.cache.get(name) {
            return Ok(k);
        }
        let stamp = self.cache.stamp();
        let bytes = self.secret(name).await?.ok_or_else(|| SealError::MissingKey(name.to_owned()))?;
        let key = DataKey::from_bytes(&bytes).ok_or(SealError::Open)?;
        self.cache.insert(name, key.clone(), stamp);
        Ok(key)
    }

    /// Destroys a key: purges it from the `keys` bucket (every revision) and forgets
    /// it here. Whatever was sealed under it can no longer be opened, which for a
    /// person's key erases their personal data from the log. Other nodes forget it
    /// through `forget_destroyed`.
    pub async fn destroy(&self, name: &str) -> Result<(), SealError> {
        // Purged before it is forgotten: a load that starts after the forget
        // finds nothing in the bucket.
        self.kv.purge(name).await.map_err(|e| SealError::Store(e.to_string()))?;
        self.cache.forget(name);
        Ok(())
    }

    /// Destroys a key as `destroy` does, then leaves a marker in its place, so
    /// that `key` never makes a new one under the same name: for a deleted
    /// tenant's data key, which nothing may seal under again.
    ///
    /// Several nodes shred a deleted tenant's key at once (each one's tenant
    /// feed does): a live key is purged, and the marker is written expecting
    /// the revision of the purge (or deletion) it follows, so whoever loses a
    /// race reads the winner's marker and stops; nobody purges a marker or
    /// another's purge again, so the racers cannot keep undoing each other.
    pub async fn shred(&self, name: &str) -> Result<(), SealError> {
        let store = |e: &dyn fmt::Display| SealError::Store(e.to_string());
        for _ in 0..SHRED_ATTEMPTS {
            let written = match self.kv.entry(name).await.map_err(|e| store(&e))? {
                Some(e) if e.operation == kv::Operation::Put && e.value.as_ref() == SHREDDED => return Ok(()),
                Some(e) if e.operation == kv::Operation::Put => {
                    // A live key (or one created again in between): destroyed first.
                    self.destroy(name).await?;
                    continue;
                }
                Some(e) => self.kv.update(name, SHREDDED.into(), e.revision).await.is_ok(),
                None => self.kv.create(name, SHREDDED.into()).await.is_ok(),
            };
            if written {
                self.cache.forget(name);
                return Ok(());
            }
        }
        Err(SealError::Store(format!("{name} kept changing while it was shredded")))
    }

    /// Whether `name` was shredded (`shred`).
    pub async fn is_shredded(&self, name: &str) -> Result<bool, SealError> {
        match self.secret(name).await {
            Err(SealError::Shredded(_)) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of the keys that start with `prefix` (which ends in `.`).
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, SealError> {
        crate::store::bucket_keys(&self.kv, &format!("{prefix}>")).await.map_err(SealError::Store)
    }

    /// A secret as the bucket holds it, wrapped under the master key and its
    /// name (`None` if it does not exist; a shredded one is an error): what a
    /// backup carries, never the secret itself.
    pub async fn wrapped(&self, name: &str) -> Result<Option<Vec<u8>>, SealError> {
        let entry = self.kv.get(name).await.map_err(|e| SealError::Store(e.to_string()))?;
        match entry {
            Some(bytes) if bytes.as_ref() == SHREDDED => Err(SealError::Shredded(name.to_owned())),
            other => Ok(other.map(|b| b.to_vec())),
        }
    }

    /// Unwraps a secret `wrapped` under `was` (from a backup) with this node's
    /// master key: a backup taken under another master key does not open.
    pub fn unwrap_as(&self, was: &str, wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
        self.master.unwrap(was, wrapped)
    }

    /// Stores `secret` as a new key called `name`; an existing key is an error
    /// (a restore never overwrites).
    pub async fn create(&self, name: &str, secret: &[u8]) -> Result<(), SealError> {
        let wrapped = self.master.wrap(name, secret);
        match self.kv.create(name, wrapped.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // The same secret from an earlier try of the same restore is fine.
                match self.secret(name).await? {
                    Some(existing) if existing == secret => Ok(()),
                    _ => Err(SealError::Store(format!("the key {name} exists already"))),
                }
            }
            Err(e) => Err(SealError::Store(e.to_string())),
        }
    }

    /// Destroys every key whose name starts with `prefix` (which ends in `.`):
    /// the persons' keys of a deleted tenant.
    pub async fn destroy_all(&self, prefix: &str) -> Result<usize, SealError> {
        let names = crate::store::bucket_keys(&self.kv, &format!("{prefix}>")).await.map_err(SealError::Store)?;
        for name in &names {
            self.destroy(name).await?;
        }
        Ok(names.len())
    }

    /// Follows the `keys` bucket for as long as the future is polled (its owner
    /// drops it to stop): each deleted or purged key leaves the cache this ring
    /// shares with its clones, then its name is sent on `destroyed`, which is
    /// unbounded so that forgetting never waits for the receiver. The watch
    /// starts from each key's last entry, so keys destroyed while this node was
    /// down are sent too; a node's read model may have copied their data before.
    /// After an error the watch starts again, and the cache is emptied each time
    /// it starts, since a key destroyed while nothing watched is otherwise unknown.
    pub async fn forget_destroyed(&self, destroyed: mpsc::UnboundedSender<String>) {
        loop {
            if let Err(e) = self.watch_destroyed(&destroyed).await {
                tracing::warn!(error = %e, "the watch on destroyed keys stopped; starting it again");
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    async fn watch_destroyed(&self, destroyed: &mpsc::UnboundedSender<String>) -> Result<(), SealError> {
        use futures::StreamExt;
        let store = |e: &dyn fmt::Display| SealError::Store(e.to_string());
        let mut watch = self.kv.watch_with_history(">").await.map_err(|e| store(&e))?;
        // Emptied once the watch is in place, so no deletion falls between the two.
        self.cache.forget_all();
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| store(&e))?;
            if matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge) {
                self.cache.forget(&entry.key);
                // A receiver that has stopped listening does not stop the forgetting.
                let _ = destroyed.send(entry.key);
            }
        }
        Err(SealError::Store("the watch on the keys bucket ended".into()))
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
    fn a_forgotten_key_is_no_longer_served_from_the_cache() {
        let cache = KeyCache::default();
        let key = DataKey::generate();
        cache.insert("person.acme.a1", key.clone(), cache.stamp());
        cache.insert("person.acme.a2", DataKey::generate(), cache.stamp());
        assert_eq!(cache.get("person.acme.a1").map(|k| *k.as_bytes()), Some(*key.as_bytes()));
        cache.forget("person.acme.a1");
        assert!(cache.get("person.acme.a1").is_none());
        assert!(cache.get("person.acme.a2").is_some(), "only the destroyed key is forgotten");
        cache.forget_all();
        assert!(cache.get("person.acme.a2").is_none());
    }

    #[test]
    fn a_load_that_overlapped_a_forget_does_not_cache_what_it_read() {
        let cache = KeyCache::default();
        // A load takes its stamp and reads the bucket; meanwhile the key is
        // destroyed and forgotten. What the load read must not enter the cache.
        let stamp = cache.stamp();
        cache.forget("person.acme.a1");
        cache.insert("person.acme.a1", DataKey::generate(), stamp);
        assert!(cache.get("person.acme.a1").is_none());
        // A load that starts after the forget caches as usual.
        cache.insert("person.acme.a1", DataKey::generate(), cache.stamp());
        assert!(cache.get("person.acme.a1").is_some());
    }

    #[test]
    fn a_person_key_name_names_its_scope_and_account() {
        let acme = Scope::parse_token("acme").unwrap();
        assert_eq!(person_of_key(&person_key_name(&acme, "a1-b2")), Some((acme, "a1-b2".to_owned())));
        assert_eq!(person_of_key(&person_key_name(&Scope::Platform, "a1")), Some((Scope::Platform, "a1".to_owned())));
        for other in ["data.acme", "person.acme", "person.Acme.a1", "person.acme.a1.b", "person.acme.", "signing.x"] {
            assert_eq!(person_of_key(other), None, "{other:?}");
        }
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
