//! One-time proofs mailed to a person: a 6-digit code to type and a link token
//! to click. Both derive from a random secret that is sealed (under the
//! person's key) in the event that opens the challenge; neither the code nor the
//! token is ever stored, and shredding the person's key makes the secret
//! unreadable. The mail reactor opens the secret to write the mail, and the
//! account's handler opens it to check a proof, in constant time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::account::{AccountId, InputError};

type HmacSha256 = Hmac<Sha256>;

/// What a challenge proves; each purpose derives different codes and tokens
/// from its secret, so a proof of one purpose never passes for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
    /// An invitation to join a tenant; its token names the account id the
    /// invitation reserves.
    Invitation,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify-email",
            Purpose::ResetPassword => "reset-password",
            Purpose::Invitation => "invitation",
        }
    }
}

/// The random secret behind one challenge.
pub struct Secret([u8; 32]);

impl Secret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self(bytes)
    }

    /// The secret as opened from its event; `None` for anything but 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, purpose: Purpose, what: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(purpose.label().as_bytes());
        mac.update(b"\0");
        mac.update(what.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The 6-digit code of this challenge, with leading zeros.
    pub fn code(&self, purpose: Purpose) -> Code {
        let m = self.mac(purpose, "code");
        let n = u32::from_be_bytes([m[0], m[1], m[2], m[3]]) % 1_000_000;
        Code(format!("{n:06}"))
    }

    /// The link token of this challenge for `account`: the account's id, a
    /// dot, and a MAC of the account id under the secret (256 bits).
    pub fn link_token(&self, purpose: Purpose, account: &AccountId) -> LinkToken {
        LinkToken { account_id: account.clone(), mac: B64.encode(self.mac(purpose, account.as_str())) }
    }

    /// Whether `code` is this challenge's code, compared in constant time.
    pub fn accepts_code(&self, purpose: Purpose, code: &Code) -> bool {
        self.code(purpose).0.as_bytes().ct_eq(code.0.as_bytes()).into()
    }

    /// Whether `token` is this challenge's link token, compared in constant time.
    pub fn accepts_token(&self, purpose: Purpose, token: &LinkToken) -> bool {
        let expected = self.link_token(purpose, &token.account_id);
        expected.mac.as_bytes().ct_eq(token.mac.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A code as typed: exactly six ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let t = raw.trim();
        if t.len() == 6 && t.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(t.to_owned()))
        } else {
            Err(InputError::InvalidCode)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A link token as received: `{account id}.{43 base64url characters}`. It names
/// the account it is for, so it can be checked without a session.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken {
    account_id: AccountId,
    mac: String,
}

/// The length of a MAC of 32 bytes in unpadded base64url.
const MAC_CHARS: usize = 43;

impl LinkToken {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        // Bounded before any work: an account id is 36 characters.
        if raw.len() != 36 + 1 + MAC_CHARS {
            return Err(InputError::InvalidToken);
        }
        let (id, mac) = raw.split_once('.').ok_or(InputError::InvalidToken)?;
        let account_id = AccountId::parse(id).map_err(|_| InputError::InvalidToken)?;
        let decoded = B64.decode(mac).map_err(|_| InputError::InvalidToken)?;
        if decoded.len() != 32 || B64.encode(&decoded) != mac {
            return Err(InputError::InvalidToken);
        }
        Ok(Self { account_id, mac: mac.to_owned() })
    }

    pub fn account_id(&self) -> &AccountId {
        &self.account_id
    }

    pub fn expose(&self) -> String {
        format!("{}.{}", self.account_id, self.mac)
    }
}

redacted_debug!(Code, LinkToken);

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::derived("acme/account/c1")
    }

    #[test]
    fn a_secret_accepts_its_own_code_and_token_only() {
        let s = Secret::generate();
        let code = s.code(Purpose::VerifyEmail);
        assert_eq!(code.as_str().len(), 6);
        assert!(s.accepts_code(Purpose::VerifyEmail, &code));
        let token = s.link_token(Purpose::VerifyEmail, &account());
        let parsed = LinkToken::parse(&token.expose()).unwrap();
        assert!(s.accepts_token(Purpose::VerifyEmail, &parsed));
        // Another secret, another purpose or another account: refused.
        let other = Secret::generate();
        assert!(!other.accepts_token(Purpose::VerifyEmail, &parsed));
        assert!(!s.accepts_token(Purpose::ResetPassword, &parsed));
        let wrong = (code.as_str().parse::<u32>().unwrap() + 1) % 1_000_000;
        assert!(!s.accepts_code(Purpose::VerifyEmail, &Code::parse(&format!("{wrong:06}")).unwrap()));
        let elsewhere = s.link_token(Purpose::VerifyEmail, &AccountId::derived("acme/account/c2"));
        let moved = LinkToken::parse(&format!("{}.{}", account(), elsewhere.mac)).unwrap();
        assert!(!s.accepts_token(Purpose::VerifyEmail, &moved));
    }

    #[test]
    fn the_secret_round_trips_through_bytes() {
        let s = Secret::generate();
        let back = Secret::from_bytes(s.as_bytes()).unwrap();
        assert_eq!(back.code(Purpose::VerifyEmail), s.code(Purpose::VerifyEmail));
        assert!(Secret::from_bytes(&[1, 2, 3]).is_none());
    }

    #[test]
    fn codes_are_six_digits_only() {
        for bad in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", "12 456", "-12345"] {
            assert_eq!(Code::parse(bad), Err(InputError::InvalidCode), "{bad:?}");
        }
        assert!(Code::parse(" 012345 ").is_ok());
    }

    #[test]
    fn garbage_tokens_of_every_length_do_not_parse() {
        let good = Secret::generate().link_token(Purpose::VerifyEmail, &account()).expose();
        for n in 0..200 {
            let junk = "a".repeat(n);
            assert!(LinkToken::parse(&junk).is_err(), "{n}");
        }
        for bad in [
            good.replacen('.', "-", 1),
            good.replacen('.', "..", 1),
            format!("{}*", &good[..good.len() - 1]),
            good.to_uppercase(),
            format!("{}\r\n", &good[..good.len() - 2]),
        ] {
            assert!(LinkToken::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(LinkToken::parse(&good).is_ok());
    }

    #[test]
    fn secrets_codes_and_tokens_never_show_in_debug_output() {
        let s = Secret::generate();
        let code = s.code(Purpose::VerifyEmail);
        let token = s.link_token(Purpose::VerifyEmail, &account());
        let dbg = format!("{s:?} {code:?} {token:?}");
        assert!(!dbg.contains(code.as_str()) && !dbg.contains(&token.mac), "{dbg}");
    }
}
