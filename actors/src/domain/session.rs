//! Sessions: what a sign-in opens. A session has a short-lived access token
//! (a JWT the edge signs, naming the session) and an opaque refresh token that
//! rotates on every use. Only a keyed hash of a refresh token is stored; the
//! session's state keeps the hashes of the tokens it rotated away, so a stolen
//! token that is used after its owner refreshed is recognised and the whole
//! session is revoked (reuse detection, OAuth 2.0 Security BCP 4.14).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::domain::account::{AccountId, InputError};

/// A session's id: a random UUID (v4), canonical and lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn fresh() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, InputError> {
        crate::domain::ids::canonical_uuid(raw).map(Self).ok_or(InputError::InvalidToken)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A refresh token: `{account id}.{session id}.{32 random bytes, base64url}`.
/// It names its account and session so it can be routed without a lookup; the
/// random part is what proves possession.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    account_id: AccountId,
    session_id: SessionId,
    secret: String,
}

/// Characters of 32 bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;
/// Characters of a canonical UUID.
const UUID_CHARS: usize = 36;

impl RefreshToken {
    /// A new token for a session.
    pub fn generate(account_id: &AccountId, session_id: &SessionId) -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self { account_id: account_id.clone(), session_id: session_id.clone(), secret: B64.encode(bytes) }
    }

    pub fn parse(raw: &str) -> Result<Self, InputError> {
        // Bounded before any work.
        if raw.len() != UUID_CHARS + 1 + UUID_CHARS + 1 + SECRET_CHARS {
            return Err(InputError::InvalidToken);
        }
        let mut parts = raw.split('.');
        let (Some(account), Some(session), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InputError::InvalidToken);
        };
        let account_id = AccountId::parse(account).map_err(|_| InputError::InvalidToken)?;
        let session_id = SessionId::parse(session)?;
        let decoded = B64.decode(secret).map_err(|_| InputError::InvalidToken)?;
        if decoded.len() != 32 || B64.encode(&decoded) != secret {
            return Err(InputError::InvalidToken);
        }
        Ok(Self { account_id, session_id, secret: secret.to_owned() })
    }

    pub fn account_id(&self) -> &AccountId {
        &self.account_id
    }

    pub fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    /// The whole token, to hand to its holder once.
    pub fn expose(&self) -> String {
        format!("{}.{}.{}", self.account_id, self.session_id, self.secret)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefreshToken({}, <redacted>)", self.session_id)
    }
}

/// A user agent as the client sent it: at most 256 characters, control
/// characters dropped, never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct UserAgent(String);

impl UserAgent {
    pub fn from_header(raw: &str) -> Option<Self> {
        let clean: String = raw.chars().filter(|c| !c.is_control()).take(256).collect();
        let clean = clean.trim();
        (!clean.is_empty()).then(|| Self(clean.to_owned()))
    }

    /// A user agent already in its clean form (as commands carry it).
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        match Self::from_header(raw) {
            Some(ua) if ua.0 == raw => Ok(ua),
            _ => Err(InputError::InvalidUserAgent),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserAgent(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_round_trip_and_name_their_session() {
        let account = AccountId::derived("acme/account/c1");
        let session = SessionId::fresh();
        let t = RefreshToken::generate(&account, &session);
        let back = RefreshToken::parse(&t.expose()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.account_id(), &account);
        assert_eq!(back.session_id(), &session);
        assert_ne!(RefreshToken::generate(&account, &session), t, "the random part differs");
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn garbage_refresh_tokens_of_every_length_do_not_parse() {
        let good = RefreshToken::generate(&AccountId::derived("a"), &SessionId::fresh()).expose();
        for n in 0..300 {
            assert!(RefreshToken::parse(&"a".repeat(n)).is_err(), "{n}");
            assert!(RefreshToken::parse(&".".repeat(n)).is_err(), "{n}");
        }
        for bad in [good.to_uppercase(), good.replacen('.', "_", 1), format!("{}=", &good[..good.len() - 1])] {
            assert!(RefreshToken::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_agents_are_bounded_and_lose_control_characters() {
        assert_eq!(UserAgent::from_header("curl/8\r\nX-Evil: 1").unwrap().as_str(), "curl/8X-Evil: 1");
        assert_eq!(UserAgent::from_header(&"x".repeat(1000)).unwrap().as_str().len(), 256);
        assert!(UserAgent::from_header(" \r\n").is_none());
    }
}
