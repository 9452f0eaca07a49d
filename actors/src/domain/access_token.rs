//! API access tokens: secrets for machines, with scopes taken from the
//! permission catalog. A secret is `cnp_{token id, 32 hex}_{32 random bytes,
//! base64url}`: the prefix makes a leaked token recognisable to secret
//! scanners, the id finds the token without a search, and the random part (256
//! bits) is what proves possession. Only its SHA-256 is kept (sealed in the
//! log); a hash without a key is enough for a secret of that much randomness.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

use crate::domain::account::{InputError, short_text};

/// What every secret starts with.
pub const PREFIX: &str = "cnp_";
/// Characters of 32 bytes in unpadded base64url.
const RANDOM_CHARS: usize = 43;
/// Characters of a UUID without hyphens.
const ID_CHARS: usize = 32;
/// The length of every secret.
pub const SECRET_LEN: usize = PREFIX.len() + ID_CHARS + 1 + RANDOM_CHARS;

/// A token's id: a UUID, canonical and lowercase, derived from the command that
/// created the token (a retry gets the same one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(String);

impl TokenId {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        crate::domain::ids::canonical_uuid(raw).map(Self).ok_or(InputError::InvalidToken)
    }

    pub fn derived(seed: &str) -> Self {
        Self(crate::domain::ids::derived_uuid(seed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn simple(&self) -> String {
        self.0.replace('-', "")
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token's secret as its holder has it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret {
    id: TokenId,
    random: String,
}

redacted_debug!(TokenSecret);

impl TokenSecret {
    pub fn generate(id: &TokenId) -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self { id: id.clone(), random: B64.encode(bytes) }
    }

    /// Parses a presented secret: the prefix, the exact length, a lowercase hex
    /// id and canonical base64url, or `InvalidToken`, before any lookup.
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        if raw.len() != SECRET_LEN || !raw.is_ascii() {
            return Err(InputError::InvalidToken);
        }
        let rest = raw.strip_prefix(PREFIX).ok_or(InputError::InvalidToken)?;
        let (hex, tail) = rest.split_at(ID_CHARS);
        let random = tail.strip_prefix('_').ok_or(InputError::InvalidToken)?;
        if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(InputError::InvalidToken);
        }
        let uuid = uuid::Uuid::try_parse(hex).map_err(|_| InputError::InvalidToken)?;
        let decoded = B64.decode(random).map_err(|_| InputError::InvalidToken)?;
        if decoded.len() != 32 || B64.encode(&decoded) != random {
            return Err(InputError::InvalidToken);
        }
        Ok(Self { id: TokenId(uuid.hyphenated().to_string()), random: random.to_owned() })
    }

    /// Whether `raw` looks meant as an access token (it has the prefix), so the
    /// edge reads it as one rather than as a JWT.
    pub fn is_meant(raw: &str) -> bool {
        raw.starts_with(PREFIX)
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The whole secret, to hand to its holder once.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}_{}", self.id.simple(), self.random)
    }

    /// What is kept of it: the SHA-256 of the whole secret, in hex.
    pub fn hash(&self) -> String {
        Sha256::digest(self.expose().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `hash` (as `hash` makes it) is this secret's, in constant time.
    pub fn matches(&self, hash: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.hash().as_bytes().ct_eq(hash.as_bytes()))
    }
}

/// A token's name: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        short_text(raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_and_only_its_own_hash_matches() {
        let id = TokenId::derived("t1");
        let s = TokenSecret::generate(&id);
        let raw = s.expose();
        assert!(raw.starts_with("cnp_") && raw.len() == SECRET_LEN, "{raw}");
        let parsed = TokenSecret::parse(&raw).unwrap();
        assert_eq!(parsed.id(), &id);
        assert!(parsed.matches(&s.hash()));
        assert!(!TokenSecret::generate(&id).matches(&s.hash()));
        assert_eq!(format!("{s:?}"), "TokenSecret(<redacted>)");
    }

    #[test]
    fn bad_prefixes_lengths_and_encodings_are_refused() {
        let raw = TokenSecret::generate(&TokenId::derived("t1")).expose();
        let mut bad = vec![
            String::new(),
            raw[..raw.len() - 1].to_owned(),
            format!("{raw}A"),
            raw.replacen("cnp_", "cnx_", 1),
            raw.replacen("cnp_", "CNP_", 1),
            raw.to_uppercase(),
        ];
        // A non-canonical base64url ending, a character outside the alphabet, a non-hex id.
        let mut chars: Vec<char> = raw.chars().collect();
        chars[SECRET_LEN - 1] = '/';
        bad.push(chars.iter().collect());
        let mut chars: Vec<char> = raw.chars().collect();
        chars[5] = 'g';
        bad.push(chars.iter().collect());
        let mut chars: Vec<char> = raw.chars().collect();
        chars[PREFIX.len() + ID_CHARS] = '.';
        bad.push(chars.iter().collect());
        bad.push(format!("cnp_{}", "é".repeat(SECRET_LEN / 2 - 2)));
        for b in bad {
            assert!(TokenSecret::parse(&b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(TokenName::parse(" ci deploy ").is_ok());
        for bad in ["", "   ", "a\nb", &"x".repeat(101)] {
            assert!(TokenName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
