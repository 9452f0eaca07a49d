//! Access tokens: EdDSA-signed JWTs whose public keys are served at
//! `/.well-known/jwks.json`. Signing keys live in the `keys` bucket, wrapped by the
//! master key, so every node signs with the same keys and they survive restarts.

use std::collections::HashMap;
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
}

pub struct Tokens {
    issuer: String,
    ttl_secs: i64,
    current: String,
    keys: HashMap<String, SigningPair>,
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

/// The name of the signing key in the `keys` bucket.
const PRIMARY: &str = "signing.primary";

impl Tokens {
    /// Loads the signing key from the key ring, creating it on first start.
    /// Expects `install_crypto` to have run (`Core::open` does it first).
    pub async fn load(keys: &KeyRing, issuer: String, ttl_secs: u64) -> anyhow::Result<Self> {
        let seed =
            keys.secret_or_create(PRIMARY, || SigningKey::generate(&mut rand::rngs::OsRng).to_bytes().to_vec()).await?;
        let seed: [u8; 32] =
            seed.as_slice().try_into().map_err(|_| anyhow::anyhow!("the stored signing key has the wrong length"))?;
        Self::from_seed(&seed, issuer, ttl_secs)
    }

    /// Tokens signed with the Ed25519 key of `seed`.
    fn from_seed(seed: &[u8; 32], issuer: String, ttl_secs: u64) -> anyhow::Result<Self> {
        let signing = SigningKey::from_bytes(seed);
        let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
        let public = signing.verifying_key().to_bytes();
        let x = B64.encode(public);
        let kid = Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect::<String>();
        let pair = SigningPair {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_components(&x)?,
            x,
        };
        Ok(Self {
            issuer,
            ttl_secs: ttl_secs as i64,
            current: kid.clone(),
            keys: HashMap::from([(kid, pair)]),
            verified: quick_cache::sync::Cache::new(VERIFIED_CAPACITY),
            full_checks: AtomicU64::new(0),
        })
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
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current.clone());
        let pair = &self.keys[&self.current];
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
        let pair = self.keys.get(&kid).ok_or(TokenError::Invalid)?;
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

    /// The public keys as a JWK Set (RFC 7517), for any JWT library.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
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
