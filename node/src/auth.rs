//! Access tokens: EdDSA-signed JWTs whose public keys are served at
//! `/.well-known/jwks.json`. Signing keys live in the `keys` bucket, wrapped by the
//! master key, so every node signs with the same keys and they survive restarts.

use std::collections::HashMap;

use actors::seal::KeyRing;
use actors::tenant::Scope;
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
}

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
        let signing = SigningKey::from_bytes(&seed);
        let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
        let public = signing.verifying_key().to_bytes();
        let x = B64.encode(public);
        let kid = Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect::<String>();
        let pair = SigningPair {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_components(&x)?,
            x,
        };
        Ok(Self { issuer, ttl_secs: ttl_secs as i64, current: kid.clone(), keys: HashMap::from([(kid, pair)]) })
    }

    pub fn issue(&self, scope: &Scope, account_id: &str) -> Result<(String, Claims), TokenError> {
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
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current.clone());
        let pair = &self.keys[&self.current];
        let token = jsonwebtoken::encode(&header, &claims, &pair.encoding).map_err(|_| TokenError::Invalid)?;
        Ok((token, claims))
    }

    /// Verifies signature, algorithm (EdDSA only, so `alg: none` and HMAC tricks
    /// fail), issuer, audience, expiry and type.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
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
        v.leeway = 5;
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
