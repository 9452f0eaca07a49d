//! Access tokens: EdDSA-signed JWTs whose public keys are served at
//! `/.well-known/jwks.json`. Signing keys live in the `keys` bucket, wrapped by the
//! master key, so every node signs with the same keys and they survive restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actors::domain::tenant::Scope;
use actors::store::seal::KeyRing;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The account id.
    pub sub: String,
    /// The tenant slug, or `_system` for a platform administrator.
    pub tenant: String,
    /// Always `access` for now; refresh and API tokens get their own types.
    pub typ: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// The session the token belongs to; the edge refuses it once the session
    /// is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
}

struct SigningPair {
    encoding: EncodingKey,
    decoding: DecodingKey,
    x: String,
    /// When a newer key took over signing (Unix seconds); `None` for the current key.
    retired_at: Option<i64>,
}

/// The signing keys as they are stored (wrapped) in the `keys` bucket: the
/// current key is the last one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredKeys {
    pub keys: Vec<StoredKey>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub kid: String,
    /// The Ed25519 seed, base64url.
    seed: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey({}, created {}, retired {:?})", self.kid, self.created_at, self.retired_at)
    }
}

impl StoredKey {
    fn generate(now: i64) -> Self {
        let seed = SigningKey::generate(&mut rand::rngs::OsRng).to_bytes();
        Self { kid: kid_of(&seed), seed: B64.encode(seed), created_at: now, retired_at: None }
    }

    fn seed(&self) -> anyhow::Result<[u8; 32]> {
        B64.decode(&self.seed)?
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("a stored signing key has the wrong length"))
    }
}

/// A key's id: the first 8 bytes of the SHA-256 of its public key, in hex.
fn kid_of(seed: &[u8; 32]) -> String {
    let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
    Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys a node signs and verifies with, as of one read of the bucket.
struct SigningRing {
    current: String,
    keys: HashMap<String, SigningPair>,
}

pub struct Tokens {
    issuer: String,
    ttl_secs: i64,
    ring: std::sync::RwLock<Arc<SigningRing>>,
    /// Tokens that passed every check, by the SHA-256 of their whole text. A
    /// client sends the same token with every request, and its Ed25519
    /// signature check was the largest single cost of a request at the edge
    /// (≈ 8 % of the workers' CPU in the bench's mutations). A hit still checks
    /// the time window; any other byte string hashes elsewhere and takes the full
    /// check, so a forged or altered token can never match.
    verified: quick_cache::sync::Cache<[u8; 32], Claims>,
    /// Full verifications (signature and claims) done, for the tests.
    full_checks: AtomicU64,
}

/// Verified tokens remembered; beyond this the least useful are forgotten.
const VERIFIED_CAPACITY: usize = 16_384;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: i64 = 5;

/// Picks jsonwebtoken's RustCrypto backend for the whole process. SurrealDB enables
/// the aws-lc backend of the same crate, and with both compiled in jsonwebtoken
/// refuses to guess; this must run before any token is signed or verified.
pub fn install_crypto() {
    // Err means a provider is already installed (a second node in one process).
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// The name of the signing keys in the `keys` bucket.
pub const SIGNING_KEYS: &str = "signing.keys";
/// Where the single signing key of earlier versions lives; it becomes the first
/// entry of `SIGNING_KEYS`.
const LEGACY_PRIMARY: &str = "signing.primary";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Reads the signing keys with their revision, creating the first one (or
/// adopting the single key of earlier versions) when there are none.
async fn stored_keys(keys: &KeyRing) -> anyhow::Result<(StoredKeys, u64)> {
    loop {
        if let Some((bytes, revision)) = keys.secret_with_revision(SIGNING_KEYS).await? {
            return Ok((serde_json::from_slice(&bytes)?, revision));
        }
        let first = match keys.secret(LEGACY_PRIMARY).await? {
            Some(seed) => {
                let seed: [u8; 32] = seed
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("the stored signing key has the wrong length"))?;
                StoredKey { kid: kid_of(&seed), seed: B64.encode(seed), created_at: now(), retired_at: None }
            }
            None => StoredKey::generate(now()),
        };
        let initial = StoredKeys { keys: vec![first] };
        // Two nodes racing here agree: only one creation wins, the other reads it.
        keys.replace_secret(SIGNING_KEYS, &serde_json::to_vec(&initial)?, 0).await?;
    }
}

/// Starts signing with a new key. The previous one is kept, retired, until the
/// last token it signed has expired (`token_ttl_secs` plus leeway after its
/// retirement), so nobody is signed out. Keys past that are dropped. Safe to run
/// on several nodes at once: the bucket's revision check lets one write win, and
/// the others retry on what it wrote. Returns the new key's id.
pub async fn rotate_signing_key(keys: &KeyRing, token_ttl_secs: u64) -> anyhow::Result<String> {
    loop {
        let (mut stored, revision) = stored_keys(keys).await?;
        let at = now();
        stored.keys.retain(|k| k.retired_at.is_none_or(|r| r + token_ttl_secs as i64 + LEEWAY_SECS >= at));
        for k in &mut stored.keys {
            k.retired_at.get_or_insert(at);
        }
        let new = StoredKey::generate(at);
        let kid = new.kid.clone();
        stored.keys.push(new);
        if keys.replace_secret(SIGNING_KEYS, &serde_json::to_vec(&stored)?, revision).await? {
            tracing::info!(kid = %kid, "signing with a new key; the previous one verifies until its tokens expire");
            return Ok(kid);
        }
    }
}

/// Rotates the signing key when the current one is older than `period_secs`.
/// Returns the new key's id if it rotated.
pub async fn rotate_if_due(keys: &KeyRing, token_ttl_secs: u64, period_secs: u64) -> anyhow::Result<Option<String>> {
    let (stored, _) = stored_keys(keys).await?;
    let due = stored.keys.last().is_none_or(|k| k.created_at + period_secs as i64 <= now());
    if due { rotate_signing_key(keys, token_ttl_secs).await.map(Some) } else { Ok(None) }
}

impl Tokens {
    /// Loads the signing keys from the key ring, creating the first on first start.
    /// Expects `install_crypto` to have run (`Core::open` does it first).
    pub async fn load(keys: &KeyRing, issuer: String, ttl_secs: u64) -> anyhow::Result<Self> {
        let (stored, _) = stored_keys(keys).await?;
        Self::with_keys(&stored, issuer, ttl_secs)
    }

    fn with_keys(stored: &StoredKeys, issuer: String, ttl_secs: u64) -> anyhow::Result<Self> {
        Ok(Self {
            issuer,
            ttl_secs: ttl_secs as i64,
            ring: std::sync::RwLock::new(Arc::new(Self::ring(stored)?)),
            verified: quick_cache::sync::Cache::new(VERIFIED_CAPACITY),
            full_checks: AtomicU64::new(0),
        })
    }

    /// Reads the signing keys again (after a rotation anywhere).
    pub async fn reload(&self, keys: &KeyRing) -> anyhow::Result<()> {
        let (stored, _) = stored_keys(keys).await?;
        let ring = Arc::new(Self::ring(&stored)?);
        *self.ring.write().expect("the signing ring's lock is never poisoned") = ring;
        Ok(())
    }

    /// Follows rotations until the future is dropped: each change of the stored
    /// keys, and once a minute in case a change was missed, reloads them.
    pub async fn follow_rotations(&self, keys: &KeyRing) {
        loop {
            tokio::select! {
                r = keys.changed(SIGNING_KEYS) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "watching the signing keys");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
                () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            }
            if let Err(e) = self.reload(keys).await {
                tracing::warn!(error = %e, "reloading the signing keys");
            }
        }
    }

    fn ring(stored: &StoredKeys) -> anyhow::Result<SigningRing> {
        let current = stored.keys.last().ok_or_else(|| anyhow::anyhow!("no signing key is stored"))?.kid.clone();
        let mut keys = HashMap::new();
        for k in &stored.keys {
            keys.insert(k.kid.clone(), Self::pair(&k.seed()?, k.retired_at)?);
        }
        Ok(SigningRing { current, keys })
    }

    fn pair(seed: &[u8; 32], retired_at: Option<i64>) -> anyhow::Result<SigningPair> {
        let signing = SigningKey::from_bytes(seed);
        let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
        let x = B64.encode(signing.verifying_key().to_bytes());
        Ok(SigningPair {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_components(&x)?,
            x,
            retired_at,
        })
    }

    /// Tokens signed with the Ed25519 key of `seed` alone.
    #[cfg(test)]
    fn from_seed(seed: &[u8; 32], issuer: String, ttl_secs: u64) -> anyhow::Result<Self> {
        let stored = StoredKeys {
            keys: vec![StoredKey { kid: kid_of(seed), seed: B64.encode(seed), created_at: 0, retired_at: None }],
        };
        Self::with_keys(&stored, issuer, ttl_secs)
    }

    fn current_ring(&self) -> Arc<SigningRing> {
        self.ring.read().expect("the signing ring's lock is never poisoned").clone()
    }

    /// Whether a retired key may still verify at `now`: until the last token it
    /// could have signed has expired.
    fn usable(&self, pair: &SigningPair, now: i64) -> bool {
        pair.retired_at.is_none_or(|r| now <= r + self.ttl_secs + LEEWAY_SECS)
    }

    pub fn issue(
        &self,
        scope: &Scope,
        account_id: &str,
        session_id: Option<&str>,
    ) -> Result<(String, Claims), TokenError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.issuer.clone(),
            sub: account_id.to_owned(),
            tenant: scope.token().to_owned(),
            typ: "access".into(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::now_v7().to_string(),
            sid: session_id.map(str::to_owned),
        };
        let ring = self.current_ring();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.current.clone());
        let pair = &ring.keys[&ring.current];
        let token = jsonwebtoken::encode(&header, &claims, &pair.encoding).map_err(|_| TokenError::Invalid)?;
        Ok((token, claims))
    }

    /// Verifies signature, algorithm (EdDSA only, so `alg: none` and HMAC tricks
    /// fail), issuer, audience, expiry and type. A token verified before is
    /// recognised by its hash and only its time window is checked again.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, time::OffsetDateTime::now_utc().unix_timestamp())
    }

    fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let claims = match self.verified.get(&digest) {
            Some(claims) => claims,
            None => {
                let claims = self.check(token)?;
                self.verified.insert(digest, claims.clone());
                claims
            }
        };
        if now > claims.exp + LEEWAY_SECS {
            self.verified.remove(&digest);
            return Err(TokenError::Expired);
        }
        if now + LEEWAY_SECS < claims.nbf {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    /// Full verifications done since the node started.
    #[cfg(test)]
    fn full_checks(&self) -> u64 {
        self.full_checks.load(Ordering::Relaxed)
    }

    fn check(&self, token: &str) -> Result<Claims, TokenError> {
        self.full_checks.fetch_add(1, Ordering::Relaxed);
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let ring = self.current_ring();
        let pair = ring.keys.get(&kid).filter(|p| self.usable(p, now())).ok_or(TokenError::Invalid)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY_SECS as u64;
        let data = jsonwebtoken::decode::<Claims>(token, &pair.decoding, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        if data.claims.typ != "access" {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }

    /// The public keys as a JWK Set (RFC 7517), for any JWT library: the current
    /// key and every retired one whose tokens may still be unexpired.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.current_ring();
        let at = now();
        let keys: Vec<_> = ring
            .keys
            .iter()
            .filter(|(_, p)| self.usable(p, at))
            .map(|(kid, p)| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": p.x,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::domain::tenant::TenantId;

    fn tokens(seed: u8) -> Tokens {
        install_crypto();
        Tokens::from_seed(&[seed; 32], "https://canopy.test".into(), 60).unwrap()
    }

    /// The same token, with one character of its signature changed.
    fn altered(token: &str) -> String {
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut sig: Vec<char> = sig.chars().collect();
        sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", sig.into_iter().collect::<String>())
    }

    #[test]
    fn a_token_seen_before_skips_the_signature_check_but_not_its_expiry() {
        let t = tokens(7);
        let scope = Scope::Tenant(TenantId::parse("acme").unwrap());
        let (token, claims) = t.issue(&scope, "a1", None).unwrap();
        assert_eq!(t.verify(&token).unwrap(), claims);
        assert_eq!(t.verify(&token).unwrap(), claims);
        assert_eq!(t.full_checks(), 1, "the second request reused the first verification");
        // Past its expiry (and the leeway) the remembered token is refused too.
        assert_eq!(t.verify_at(&token, claims.exp + LEEWAY_SECS + 1), Err(TokenError::Expired));
        assert_eq!(t.verify_at(&token, claims.exp + LEEWAY_SECS + 1), Err(TokenError::Expired));
    }

    #[test]
    fn an_altered_or_foreign_token_never_matches_a_remembered_one() {
        let t = tokens(7);
        let scope = Scope::Tenant(TenantId::parse("acme").unwrap());
        let (token, _) = t.issue(&scope, "a1", None).unwrap();
        t.verify(&token).unwrap();
        assert_eq!(t.verify(&altered(&token)), Err(TokenError::Invalid));
        // Same claims shape, signed by another key: refused, and not remembered.
        let (foreign, _) = tokens(8).issue(&scope, "a1", None).unwrap();
        assert_eq!(t.verify(&foreign), Err(TokenError::Invalid));
        assert_eq!(t.verify(&foreign), Err(TokenError::Invalid));
        assert_eq!(t.full_checks(), 4, "failures are checked in full every time");
    }
}
