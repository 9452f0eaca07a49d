//! The account aggregate: one per person in a scope (a tenant, or the platform's
//! administrators). It holds the parsed input types, commands, events, state,
//! errors, `decide` and `evolve`.
//!
//! Personal fields and the password hash arrive here already sealed (see
//! `seal.rs`): the domain never sees them in clear and never needs to.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::access::{invitation_accepted, member_removed};
use crate::domain::aggregate::{Aggregate, Decision, DomainError, Reservation};
use crate::store::seal::Sealed;
use subtle::ConstantTimeEq;

/// An account's id: a UUID in its canonical lowercase hyphenated form (ids are
/// derived from command ids with UUID v5). It becomes a subject token, a key
/// name and a record id, so nothing else parses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        crate::domain::ids::canonical_uuid(raw).map(Self).ok_or(InputError::InvalidAccountId)
    }

    /// The id of a new account: a UUID v5 of `seed`.
    pub fn derived(seed: &str) -> Self {
        Self(crate::domain::ids::derived_uuid(seed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address as typed, trimmed. Uniqueness uses `normalized()`.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("this is not a valid email address")]
    InvalidEmail,
    #[error("a password has 8 to 128 characters")]
    InvalidPasswordLength,
    #[error("a name has 1 to 100 characters and no control characters")]
    InvalidName,
    #[error("this is not an account id")]
    InvalidAccountId,
    #[error("a code has exactly 6 digits")]
    InvalidCode,
    #[error("this is not a token Canopy issued")]
    InvalidToken,
    #[error("supported locales are: en, de")]
    UnsupportedLocale,
    #[error("a user agent has 1 to 256 characters and no control characters")]
    InvalidUserAgent,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let s = raw.trim();
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InputError::InvalidEmail);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(InputError::InvalidEmail)?;
        let labels_ok = domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
        if local.is_empty() || local.len() > 64 || local.contains('@') || !domain.contains('.') || !labels_ok {
            return Err(InputError::InvalidEmail);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form that decides uniqueness: emails are unique per tenant regardless of case.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A password as typed: 8 to 128 characters (not bytes). It is never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let n = raw.chars().count();
        if !(8..=128).contains(&n) {
            return Err(InputError::InvalidPasswordLength);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The rule of short names (a person's, an access token's): trimmed, 1 to 100
/// characters, no control characters.
pub fn short_text(raw: &str) -> Result<String, InputError> {
    let t = raw.trim();
    let n = t.chars().count();
    if n == 0 || n > 100 || t.chars().any(char::is_control) {
        return Err(InputError::InvalidName);
    }
    Ok(t.to_owned())
}

/// A first or last name: 1 to 100 characters, trimmed, no control characters.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        short_text(raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The languages Canopy writes mails and messages in.
pub const SUPPORTED_LOCALES: [&str; 2] = ["en", "de"];

/// A supported locale: its primary language subtag, lowercase (`de-CH` → `de`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale(&'static str);

impl Default for Locale {
    fn default() -> Self {
        Self(SUPPORTED_LOCALES[0])
    }
}

impl Locale {
    /// A BCP 47 tag whose primary language Canopy supports.
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let t = raw;
        if t.is_empty() || t.len() > 35 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(InputError::UnsupportedLocale);
        }
        let primary = t.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase();
        SUPPORTED_LOCALES.iter().find(|l| **l == primary).map(|l| Self(l)).ok_or(InputError::UnsupportedLocale)
    }

    /// The best supported locale of an `Accept-Language` header (RFC 9110
    /// 12.5.4), by quality and then order; the default when none is supported.
    pub fn from_accept_language(header: &str) -> Self {
        let mut best: Option<(u16, Self)> = None;
        for item in header.split(',').take(32) {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or_default();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1000), |q| q.trim().parse::<f32>().ok().map(|q| (q.clamp(0.0, 1.0) * 1000.0) as u16));
            let (Some(q), Ok(locale)) = (q, Self::parse(tag.trim())) else { continue };
            if q > 0 && best.as_ref().is_none_or(|(b, _)| q > *b) {
                best = Some((q, locale));
            }
        }
        best.map(|(_, l)| l).unwrap_or_default()
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

// Emails, passwords and names are personal data or secrets: their debug output is
// redacted, so they cannot reach a log by accident.

redacted_debug!(Email, Password, PersonName);

/// The state of one account, rebuilt from its events. Sealed fields stay sealed.
/// Fields added later default, so older snapshots still load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountState {
    pub account_id: Option<String>,
    pub email_index: Option<String>,
    pub email: Option<Sealed>,
    pub password_hash: Option<Sealed>,
    pub firstname: Option<Sealed>,
    pub lastname: Option<Sealed>,
    pub owner: bool,
    pub email_verified: bool,
    /// The account's locale; `None` means the default.
    pub locale: Option<String>,
    /// The open email verification, if any: at most one at a time, the newest.
    pub verification: Option<PendingVerification>,
    /// The account's open sessions, by id. Revoked and idle-expired ones leave.
    pub sessions: BTreeMap<String, SessionState>,
    /// The open password reset, if any: the newest request only.
    pub password_reset: Option<PendingReset>,
    /// The person was erased: their key is destroyed and the account takes no command.
    pub erased: bool,
}

/// A password reset waiting for its link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingReset {
    pub challenge_id: String,
    /// The challenge's secret, sealed under the person's key.
    pub secret: Sealed,
    pub expires_at: i64,
}

/// An open session, as the log knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The keyed hash of the current refresh token.
    pub refresh_hash: String,
    /// Hashes of the tokens rotated away, newest last (at most `RETIRED_KEPT`).
    pub retired: Vec<String>,
    pub started_at: i64,
    pub last_used_at: i64,
    /// Past this (Unix seconds) the refresh token is refused.
    pub expires_at: i64,
}

/// How many rotated-away refresh token hashes a session remembers for reuse detection.
pub const RETIRED_KEPT: usize = 16;

/// An email verification waiting for its code or link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingVerification {
    pub challenge_id: String,
    pub purpose: VerificationPurpose,
    /// The address being verified (for a change, the new one), sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Sealed>,
    pub email_index: String,
    /// The challenge's secret, sealed under the person's key.
    pub secret: Sealed,
    pub requested_at: i64,
    pub expires_at: i64,
}

impl AccountState {
    /// Registered and not erased: an account that takes commands.
    pub fn is_registered(&self) -> bool {
        self.account_id.is_some() && !self.erased
    }
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Register(Box<Registration>),
    UpdateProfile {
        firstname: Sealed,
        lastname: Sealed,
        locale: Option<Locale>,
    },
    /// Mail a new verification for the address being verified (a resend).
    /// Refused within `min_interval_secs` of the previous one.
    RequestVerification {
        challenge: NewChallenge,
        min_interval_secs: i64,
    },
    /// The handler has checked a proof against the open challenge
    /// `challenge_id`; the domain checks it is still open and unexpired at `now`.
    /// For an email change, `claims` says where the new address's claim and
    /// the old one stand, so the change moves them in the same batch.
    ConfirmEmail {
        challenge_id: String,
        now: i64,
        claims: Option<ClaimMove>,
    },
    /// Open a session; beyond `max_sessions` the least recently used one is revoked.
    StartSession {
        session: NewSession,
        max_sessions: usize,
    },
    /// Rotate a session's refresh token: `presented` is the hash of the token
    /// given, `next` the hash of the new one. A token rotated away before
    /// revokes the session instead.
    RefreshSession {
        session_id: String,
        presented: String,
        next: String,
        at: i64,
        expires_at: i64,
    },
    RevokeSessions {
        which: WhichSessions,
        reason: RevokeReason,
    },
    /// Mail a password reset link (the handler found the account by its email).
    RequestPasswordReset {
        challenge: NewChallenge,
    },
    /// The handler checked a reset token against the open reset `challenge_id`;
    /// the domain checks it is still open at `now`, sets the password and ends
    /// every session.
    ResetPassword {
        challenge_id: String,
        password_hash: Sealed,
        now: i64,
    },
    /// The handler checked the current password; every session but `keep` ends.
    ChangePassword {
        password_hash: Sealed,
        keep: Option<String>,
    },
    /// Mail a verification to a new address; the address changes once verified.
    RequestEmailChange {
        challenge: NewChallenge,
        new_email: Sealed,
        new_index: String,
    },
    /// Erase the person: end every session, release the email's claim (at
    /// `claim_seq`, the sequence of the claim this account holds) and leave the
    /// tenant's access control as `membership` describes it.
    Erase {
        claim_seq: u64,
        membership: Membership,
    },
}

/// An account's place in its tenant's access control, read just before an
/// erasure: the erasure is refused for the last owner, and otherwise removes
/// the member's roles in the same batch, expecting the access history to be
/// exactly what was read (so a concurrent promotion or demotion conflicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The tenant's only owner (or, before the tenant had access control, its creator).
    pub last_owner: bool,
    /// The last sequence of the tenant's access history; `None` when access
    /// control was never established (nothing to remove, and establishing it
    /// later must find the history empty).
    pub access_seq: Option<u64>,
}

/// Where the claims an email change moves stand: the new address's claim may be
/// taken after `new_after` (0: never claimed; else its release), and the
/// account's current claim is at `old_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimMove {
    pub new_after: u64,
    pub old_seq: u64,
}

/// A session prepared outside the domain: ids, hashes and seals are ready.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session_id: String,
    pub refresh_hash: String,
    pub user_agent: Option<Sealed>,
    pub at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhichSessions {
    One(String),
    All,
    AllBut(String),
}

/// Why a session ended; in the event, for audit and for the person's own view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The person signed out of this session.
    Logout,
    /// The person signed out everywhere.
    LogoutEverywhere,
    /// The person ended one of their sessions from another.
    Revoked,
    /// A refresh token was presented after it had been rotated away: stolen or replayed.
    RefreshTokenReused,
    /// The account opened more sessions than it may keep; the least recently used left.
    SessionLimit,
    PasswordChanged,
    PasswordReset,
    AccountDeleted,
}

/// A challenge prepared outside the domain: a fresh id and sealed secret.
#[derive(Debug, Clone)]
pub struct NewChallenge {
    pub challenge_id: String,
    pub secret: Sealed,
    pub requested_at: i64,
    pub expires_at: i64,
}

/// Everything a registration needs, prepared outside the domain: the hash is
/// computed and the personal fields are sealed before `decide` runs.
#[derive(Debug, Clone)]
pub struct Registration {
    pub account_id: String,
    /// A keyed hash of the normalised email, safe to put in a subject.
    pub email_index: String,
    pub email: Sealed,
    pub password_hash: Sealed,
    pub firstname: Sealed,
    pub lastname: Sealed,
    pub owner: bool,
    pub locale: Locale,
    /// The verification mailed with the registration; `None` for an address
    /// whoever created the account vouches for (the platform's administrator,
    /// from the node's configuration).
    pub verification: Option<NewChallenge>,
    /// The sequence the email's claim must still be at: 0 for an address never
    /// claimed, the sequence of its release for one that was freed.
    pub email_claim_after: u64,
    /// The invitation this registration accepts: its acceptance lands in the
    /// same batch, expecting the access history to be where it was checked.
    pub invitation: Option<InvitationUse>,
}

/// An invitation accepted by a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationUse {
    pub invitation_id: String,
    pub role: String,
    pub access_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    /// An account was registered. `owner` marks the tenant's owner.
    AccountRegistered(AccountRegistered),
    /// The person changed their first or last name (and possibly their locale).
    ProfileUpdated(ProfileUpdated),
    /// A verification code and link were issued for an address; a mail follows.
    EmailVerificationRequested(EmailVerificationRequested),
    /// The person proved they read the address's mail.
    EmailVerified(EmailVerified),
    /// A sign-in opened a session.
    SessionStarted(SessionStarted),
    /// A session's refresh token was rotated.
    SessionRefreshed(SessionRefreshed),
    /// A session ended; its access tokens are refused from now on.
    SessionRevoked(SessionRevoked),
    /// A password reset link was issued; a mail follows.
    PasswordResetRequested(PasswordResetRequested),
    /// The password changed (by the person, or through a reset link).
    PasswordChanged(PasswordChanged),
    /// A verified new address replaced the old one.
    EmailChanged(EmailChanged),
    /// The person was erased (crypto-shredding): their key is destroyed after
    /// this event, so every personal field of theirs in the log stays sealed.
    AccountErased(AccountErased),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailChanged {
    pub email: Sealed,
    pub email_index: String,
    pub previous_email_index: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountErased {
    /// The released email claim's index.
    pub email_index: String,
}

/// The reset token derives from `secret` (sealed under the person's key);
/// `email` is the address to write to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PasswordResetRequested {
    pub challenge_id: String,
    pub email: Sealed,
    pub secret: Sealed,
    pub requested_at: i64,
    pub expires_at: i64,
}

/// Why a password changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PasswordChange {
    /// The person changed it, proving the old one.
    Changed,
    /// Through a reset link.
    Reset,
}

/// The new hash is sealed under the tenant's key, like the first one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PasswordChanged {
    pub password_hash: Sealed,
    pub how: PasswordChange,
}

/// Only the keyed hash of the refresh token is here, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionStarted {
    pub session_id: String,
    pub refresh_hash: String,
    /// The client's user agent, sealed under the person's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Sealed>,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds; the refresh token is refused after this unless rotated.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionRefreshed {
    pub session_id: String,
    pub refresh_hash: String,
    pub refreshed_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionRevoked {
    pub session_id: String,
    pub reason: RevokeReason,
}

/// Why an address is being verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationPurpose {
    /// The address the account registered with.
    Registration,
    /// A new address the account is changing to.
    EmailChange,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountRegistered {
    pub account_id: String,
    pub email_index: String,
    pub email: Sealed,
    pub password_hash: Sealed,
    pub firstname: Sealed,
    pub lastname: Sealed,
    pub owner: bool,
    /// The locale for mails and messages (absent in events written before locales).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The address needs no verification: whoever created the account vouched
    /// for it (the platform administrator from the configuration).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub email_verified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileUpdated {
    pub firstname: Sealed,
    pub lastname: Sealed,
    /// A new locale, when the person changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// The code and link token derive from `secret` (sealed under the person's
/// key), so neither is in the event; `email` is the address to write to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailVerificationRequested {
    pub challenge_id: String,
    pub purpose: VerificationPurpose,
    pub email: Sealed,
    pub email_index: String,
    pub secret: Sealed,
    /// Unix seconds.
    pub requested_at: i64,
    /// Unix seconds; the code and link are refused after this.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailVerified {
    pub challenge_id: String,
    pub email_index: String,
}

/// The claim that makes an email unique in its scope, on `evt.{scope}.email.{index}.EmailReserved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailReserved {
    pub account_id: String,
}

/// The end of a claim: the email is free again, on `evt.{scope}.email.{index}.EmailReleased`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailReleased {
    pub account_id: String,
}

pub const EMAIL_CLAIM: &str = "email";
pub const EMAIL_RESERVED: &str = "EmailReserved";
pub const EMAIL_RELEASED: &str = "EmailReleased";
/// The schema version of `EmailReleased`'s data.
pub const EMAIL_RELEASED_VERSION: u32 = 1;
/// The schema version of `EmailReserved`'s data.
pub const EMAIL_RESERVED_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("this account is already registered")]
    AlreadyRegistered,
    #[error("no such account")]
    NotFound,
    #[error("this email address is already verified")]
    AlreadyVerified,
    /// One answer for a wrong, used and expired proof: which one it was is
    /// nobody's business but the log's.
    #[error("this code or link is wrong, already used or expired")]
    InvalidProof,
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooSoon { retry_after_secs: u64 },
    /// One answer for an unknown, expired, revoked or forged refresh token.
    #[error("the refresh token is not valid; sign in again")]
    InvalidRefreshToken,
    #[error("this is already the account's address")]
    SameEmail,
    #[error("the last owner of a tenant cannot be deleted; make someone else owner first")]
    LastOwner,
    #[error("no such session")]
    SessionNotFound,
    #[error(transparent)]
    Input(#[from] InputError),
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            AccountError::LastOwner => "CONFLICT",
            AccountError::EmailTaken
            | AccountError::SameEmail
            | AccountError::AlreadyRegistered
            | AccountError::AlreadyVerified
            | AccountError::InvalidProof
            | AccountError::Input(_) => "BAD_USER_INPUT",
            AccountError::NotFound | AccountError::SessionNotFound => "NOT_FOUND",
            AccountError::TooSoon { .. } => "RATE_LIMITED",
            AccountError::InvalidRefreshToken => "UNAUTHENTICATED",
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AccountError::TooSoon { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

fn revoked(session_id: &str, reason: RevokeReason) -> AccountEvent {
    AccountEvent::SessionRevoked(SessionRevoked { session_id: session_id.to_owned(), reason })
}

/// Compares two token hashes in constant time.
fn same_hash(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn verification_requested(
    c: &NewChallenge,
    purpose: VerificationPurpose,
    email: &Sealed,
    email_index: &str,
) -> AccountEvent {
    AccountEvent::EmailVerificationRequested(EmailVerificationRequested {
        challenge_id: c.challenge_id.clone(),
        purpose,
        email: email.clone(),
        email_index: email_index.to_owned(),
        secret: c.secret.clone(),
        requested_at: c.requested_at,
        expires_at: c.expires_at,
    })
}

pub struct Account;

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn decide(state: &AccountState, cmd: &AccountCommand) -> Result<Decision<AccountEvent>, AccountError> {
        match cmd {
            AccountCommand::Register(r) => {
                if state.account_id.is_some() {
                    return Err(AccountError::AlreadyRegistered);
                }
                let claim = EmailReserved { account_id: r.account_id.clone() };
                let mut events = vec![AccountEvent::AccountRegistered(AccountRegistered {
                    account_id: r.account_id.clone(),
                    email_index: r.email_index.clone(),
                    email: r.email.clone(),
                    password_hash: r.password_hash.clone(),
                    firstname: r.firstname.clone(),
                    lastname: r.lastname.clone(),
                    owner: r.owner,
                    locale: Some(r.locale.as_str().to_owned()),
                    email_verified: r.verification.is_none(),
                })];
                if let Some(challenge) = &r.verification {
                    events.push(verification_requested(
                        challenge,
                        VerificationPurpose::Registration,
                        &r.email,
                        &r.email_index,
                    ));
                }
                let mut reservations = vec![Reservation {
                    aggregate: EMAIL_CLAIM,
                    key: r.email_index.clone(),
                    event_type: EMAIL_RESERVED,
                    version: EMAIL_RESERVED_VERSION,
                    data: serde_json::to_value(claim).expect("a plain struct serialises"),
                    expected_seq: r.email_claim_after,
                }];
                if let Some(used) = &r.invitation {
                    reservations.push(invitation_accepted(
                        &used.invitation_id,
                        &r.account_id,
                        &used.role,
                        used.access_seq,
                    ));
                }
                Ok(Decision { events, reservations })
            }
            AccountCommand::UpdateProfile { firstname, lastname, locale } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                Ok(Decision::events(vec![AccountEvent::ProfileUpdated(ProfileUpdated {
                    firstname: firstname.clone(),
                    lastname: lastname.clone(),
                    locale: locale.as_ref().map(|l| l.as_str().to_owned()),
                })]))
            }
            AccountCommand::RequestVerification { challenge, min_interval_secs } => {
                let (Some(email), Some(index)) = (&state.email, &state.email_index) else {
                    return Err(AccountError::NotFound);
                };
                if state.email_verified && state.verification.is_none() {
                    return Err(AccountError::AlreadyVerified);
                }
                if let Some(open) = &state.verification {
                    let wait = open.requested_at + min_interval_secs - challenge.requested_at;
                    if wait > 0 {
                        return Err(AccountError::TooSoon { retry_after_secs: wait as u64 });
                    }
                }
                Ok(Decision::events(vec![verification_requested(
                    challenge,
                    VerificationPurpose::Registration,
                    email,
                    index,
                )]))
            }
            AccountCommand::ConfirmEmail { challenge_id, now, claims } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                let open = match &state.verification {
                    Some(open) if &open.challenge_id == challenge_id && *now <= open.expires_at => open,
                    _ => return Err(AccountError::InvalidProof),
                };
                let verified = AccountEvent::EmailVerified(EmailVerified {
                    challenge_id: open.challenge_id.clone(),
                    email_index: open.email_index.clone(),
                });
                if open.purpose == VerificationPurpose::Registration {
                    return Ok(Decision::events(vec![verified]));
                }
                // An email change: the new claim and the old one's release go in
                // the same batch as the change, or nothing does.
                let (Some(moved), Some(new_email), Some(account_id), Some(old_index)) =
                    (claims, &open.email, &state.account_id, &state.email_index)
                else {
                    return Err(AccountError::InvalidProof);
                };
                let claim = |event_type, version, key: &str, expected_seq| Reservation {
                    aggregate: EMAIL_CLAIM,
                    key: key.to_owned(),
                    event_type,
                    version,
                    data: serde_json::json!({ "account_id": account_id }),
                    expected_seq,
                };
                Ok(Decision {
                    events: vec![
                        verified,
                        AccountEvent::EmailChanged(EmailChanged {
                            email: new_email.clone(),
                            email_index: open.email_index.clone(),
                            previous_email_index: old_index.clone(),
                        }),
                    ],
                    reservations: vec![
                        claim(EMAIL_RESERVED, EMAIL_RESERVED_VERSION, &open.email_index, moved.new_after),
                        claim(EMAIL_RELEASED, EMAIL_RELEASED_VERSION, old_index, moved.old_seq),
                    ],
                })
            }
            AccountCommand::RequestEmailChange { challenge, new_email, new_index } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                if state.email_index.as_ref() == Some(new_index) {
                    return Err(AccountError::SameEmail);
                }
                Ok(Decision::events(vec![verification_requested(
                    challenge,
                    VerificationPurpose::EmailChange,
                    new_email,
                    new_index,
                )]))
            }
            AccountCommand::Erase { claim_seq, membership } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                if membership.last_owner {
                    return Err(AccountError::LastOwner);
                }
                let (Some(account_id), Some(index)) = (&state.account_id, &state.email_index) else {
                    return Err(AccountError::NotFound);
                };
                let mut events: Vec<AccountEvent> =
                    state.sessions.keys().map(|id| revoked(id, RevokeReason::AccountDeleted)).collect();
                events.push(AccountEvent::AccountErased(AccountErased { email_index: index.clone() }));
                Ok(Decision {
                    events,
                    reservations: [Reservation {
                        aggregate: EMAIL_CLAIM,
                        key: index.clone(),
                        event_type: EMAIL_RELEASED,
                        version: EMAIL_RELEASED_VERSION,
                        data: serde_json::json!({ "account_id": account_id }),
                        expected_seq: *claim_seq,
                    }]
                    .into_iter()
                    .chain(membership.access_seq.map(|seq| member_removed(account_id.as_str(), seq)))
                    .collect(),
                })
            }
            AccountCommand::StartSession { session, max_sessions } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                let mut events = Vec::new();
                // Make room: the least recently used sessions leave first.
                let mut open: Vec<(&String, &SessionState)> =
                    state.sessions.iter().filter(|(_, s)| s.expires_at >= session.at).collect();
                open.sort_by_key(|(id, s)| (s.last_used_at, (*id).clone()));
                let excess = (open.len() + 1).saturating_sub((*max_sessions).max(1));
                for (id, _) in open.into_iter().take(excess) {
                    events.push(revoked(id, RevokeReason::SessionLimit));
                }
                events.push(AccountEvent::SessionStarted(SessionStarted {
                    session_id: session.session_id.clone(),
                    refresh_hash: session.refresh_hash.clone(),
                    user_agent: session.user_agent.clone(),
                    started_at: session.at,
                    expires_at: session.expires_at,
                }));
                Ok(Decision::events(events))
            }
            AccountCommand::RefreshSession { session_id, presented, next, at, expires_at } => {
                let Some(s) = state.sessions.get(session_id) else {
                    return Err(AccountError::InvalidRefreshToken);
                };
                if same_hash(&s.refresh_hash, presented) {
                    if *at > s.expires_at {
                        return Err(AccountError::InvalidRefreshToken);
                    }
                    return Ok(Decision::events(vec![AccountEvent::SessionRefreshed(SessionRefreshed {
                        session_id: session_id.clone(),
                        refresh_hash: next.clone(),
                        refreshed_at: *at,
                        expires_at: *expires_at,
                    })]));
                }
                // A token this session rotated away: whoever holds it is not (only)
                // the session's owner. End the session for both.
                if s.retired.iter().any(|h| same_hash(h, presented)) {
                    return Ok(Decision::events(vec![revoked(session_id, RevokeReason::RefreshTokenReused)]));
                }
                Err(AccountError::InvalidRefreshToken)
            }
            AccountCommand::RequestPasswordReset { challenge } => {
                let Some(email) = &state.email else { return Err(AccountError::NotFound) };
                Ok(Decision::events(vec![AccountEvent::PasswordResetRequested(PasswordResetRequested {
                    challenge_id: challenge.challenge_id.clone(),
                    email: email.clone(),
                    secret: challenge.secret.clone(),
                    requested_at: challenge.requested_at,
                    expires_at: challenge.expires_at,
                })]))
            }
            AccountCommand::ResetPassword { challenge_id, password_hash, now } => {
                match &state.password_reset {
                    Some(open) if &open.challenge_id == challenge_id && *now <= open.expires_at => {}
                    _ => return Err(AccountError::InvalidProof),
                }
                let mut events = vec![AccountEvent::PasswordChanged(PasswordChanged {
                    password_hash: password_hash.clone(),
                    how: PasswordChange::Reset,
                })];
                events.extend(state.sessions.keys().map(|id| revoked(id, RevokeReason::PasswordReset)));
                Ok(Decision::events(events))
            }
            AccountCommand::ChangePassword { password_hash, keep } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                let mut events = vec![AccountEvent::PasswordChanged(PasswordChanged {
                    password_hash: password_hash.clone(),
                    how: PasswordChange::Changed,
                })];
                events.extend(
                    state
                        .sessions
                        .keys()
                        .filter(|id| Some(*id) != keep.as_ref())
                        .map(|id| revoked(id, RevokeReason::PasswordChanged)),
                );
                Ok(Decision::events(events))
            }
            AccountCommand::RevokeSessions { which, reason } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                let ids: Vec<&String> = match which {
                    WhichSessions::One(id) => {
                        vec![state.sessions.get_key_value(id).ok_or(AccountError::SessionNotFound)?.0]
                    }
                    WhichSessions::All => state.sessions.keys().collect(),
                    WhichSessions::AllBut(keep) => state.sessions.keys().filter(|id| *id != keep).collect(),
                };
                Ok(Decision::events(ids.into_iter().map(|id| revoked(id, *reason)).collect()))
            }
        }
    }

    fn evolve(mut state: AccountState, event: &AccountEvent) -> AccountState {
        match event {
            AccountEvent::AccountRegistered(e) => {
                state.account_id = Some(e.account_id.clone());
                state.email_index = Some(e.email_index.clone());
                state.email = Some(e.email.clone());
                state.password_hash = Some(e.password_hash.clone());
                state.firstname = Some(e.firstname.clone());
                state.lastname = Some(e.lastname.clone());
                state.owner = e.owner;
                state.locale = e.locale.clone();
                state.email_verified = e.email_verified;
            }
            AccountEvent::ProfileUpdated(e) => {
                state.firstname = Some(e.firstname.clone());
                state.lastname = Some(e.lastname.clone());
                if e.locale.is_some() {
                    state.locale = e.locale.clone();
                }
            }
            AccountEvent::EmailVerificationRequested(e) => {
                state.verification = Some(PendingVerification {
                    challenge_id: e.challenge_id.clone(),
                    purpose: e.purpose,
                    email: Some(e.email.clone()),
                    email_index: e.email_index.clone(),
                    secret: e.secret.clone(),
                    requested_at: e.requested_at,
                    expires_at: e.expires_at,
                });
            }
            AccountEvent::EmailVerified(e) => {
                if state.verification.as_ref().is_some_and(|v| v.challenge_id == e.challenge_id) {
                    state.verification = None;
                }
                // A change's verification proves the new address; `EmailChanged`
                // follows in the same batch and makes it the account's.
                if state.email_index.as_deref() == Some(e.email_index.as_str()) {
                    state.email_verified = true;
                }
            }
            AccountEvent::EmailChanged(e) => {
                state.email = Some(e.email.clone());
                state.email_index = Some(e.email_index.clone());
                state.email_verified = true;
            }
            AccountEvent::AccountErased(_) => {
                state.erased = true;
                state.email = None;
                state.firstname = None;
                state.lastname = None;
                state.password_hash = None;
                state.verification = None;
                state.password_reset = None;
                state.sessions.clear();
            }
            AccountEvent::SessionStarted(e) => {
                // Sessions idle past their expiry leave when another starts, so the
                // map stays bounded by the sessions in use.
                state.sessions.retain(|_, s| s.expires_at >= e.started_at);
                state.sessions.insert(
                    e.session_id.clone(),
                    SessionState {
                        refresh_hash: e.refresh_hash.clone(),
                        retired: Vec::new(),
                        started_at: e.started_at,
                        last_used_at: e.started_at,
                        expires_at: e.expires_at,
                    },
                );
            }
            AccountEvent::SessionRefreshed(e) => {
                if let Some(s) = state.sessions.get_mut(&e.session_id) {
                    let old = std::mem::replace(&mut s.refresh_hash, e.refresh_hash.clone());
                    s.retired.push(old);
                    if s.retired.len() > RETIRED_KEPT {
                        s.retired.remove(0);
                    }
                    s.last_used_at = e.refreshed_at;
                    s.expires_at = e.expires_at;
                }
            }
            AccountEvent::SessionRevoked(e) => {
                state.sessions.remove(&e.session_id);
            }
            AccountEvent::PasswordResetRequested(e) => {
                state.password_reset = Some(PendingReset {
                    challenge_id: e.challenge_id.clone(),
                    secret: e.secret.clone(),
                    expires_at: e.expires_at,
                });
            }
            AccountEvent::PasswordChanged(e) => {
                state.password_hash = Some(e.password_hash.clone());
                // A reset link is single-use, and a changed password ends any other.
                state.password_reset = None;
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::access::ACCESS_ID;
    use crate::domain::aggregate::check;

    fn sealed(tag: &str) -> Sealed {
        Sealed::opaque_for_tests(tag)
    }

    fn registration() -> Registration {
        Registration {
            account_id: "a1".into(),
            email_index: "idx".into(),
            email: sealed("email"),
            password_hash: sealed("hash"),
            firstname: sealed("ada"),
            lastname: sealed("lovelace"),
            owner: false,
            locale: Locale::parse("de").unwrap(),
            verification: Some(challenge("ch1", 100)),
            email_claim_after: 0,
            invitation: None,
        }
    }

    fn challenge(id: &str, at: i64) -> NewChallenge {
        NewChallenge { challenge_id: id.into(), secret: sealed(id), requested_at: at, expires_at: at + 1000 }
    }

    fn requested(id: &str, at: i64) -> AccountEvent {
        AccountEvent::EmailVerificationRequested(EmailVerificationRequested {
            challenge_id: id.into(),
            purpose: VerificationPurpose::Registration,
            email: sealed("email"),
            email_index: "idx".into(),
            secret: sealed(id),
            requested_at: at,
            expires_at: at + 1000,
        })
    }

    fn registered() -> AccountEvent {
        let r = registration();
        AccountEvent::AccountRegistered(AccountRegistered {
            account_id: r.account_id,
            email_index: r.email_index,
            email: r.email,
            password_hash: r.password_hash,
            firstname: r.firstname,
            lastname: r.lastname,
            owner: false,
            locale: Some("de".into()),
            email_verified: false,
        })
    }

    #[test]
    fn registering_a_new_account_emits_account_registered() {
        check::<Account>(
            &[],
            AccountCommand::Register(Box::new(registration())),
            Ok(vec![registered(), requested("ch1", 100)]),
        );
    }

    #[test]
    fn registering_claims_the_email_index_in_the_same_decision() {
        let d = Account::decide(&AccountState::default(), &AccountCommand::Register(Box::new(registration()))).unwrap();
        assert_eq!(d.reservations.len(), 1);
        assert_eq!(d.reservations[0].aggregate, "email");
        assert_eq!(d.reservations[0].key, "idx");
        assert_eq!(d.reservations[0].data["account_id"], "a1");
    }

    #[test]
    fn registering_the_same_account_twice_is_rejected() {
        check::<Account>(
            &[registered()],
            AccountCommand::Register(Box::new(registration())),
            Err(AccountError::AlreadyRegistered),
        );
    }

    #[test]
    fn updating_the_profile_of_a_missing_account_is_not_found() {
        let cmd = AccountCommand::UpdateProfile { firstname: sealed("x"), lastname: sealed("y"), locale: None };
        check::<Account>(&[], cmd, Err(AccountError::NotFound));
    }

    #[test]
    fn updating_the_profile_replaces_both_names() {
        let cmd = AccountCommand::UpdateProfile {
            firstname: sealed("grace"),
            lastname: sealed("hopper"),
            locale: Some(Locale::parse("en").unwrap()),
        };
        let expected = AccountEvent::ProfileUpdated(ProfileUpdated {
            firstname: sealed("grace"),
            lastname: sealed("hopper"),
            locale: Some("en".into()),
        });
        check::<Account>(&[registered()], cmd, Ok(vec![expected.clone()]));
        let state = crate::domain::aggregate::replay::<Account>(&[registered(), expected]);
        assert_eq!(state.firstname, Some(sealed("grace")));
        assert_eq!(state.locale.as_deref(), Some("en"));
    }

    #[test]
    fn a_registration_opens_a_verification_and_confirming_it_verifies_the_email() {
        let state = crate::domain::aggregate::replay::<Account>(&[registered(), requested("ch1", 100)]);
        assert!(!state.email_verified);
        assert_eq!(state.verification.as_ref().map(|v| v.challenge_id.as_str()), Some("ch1"));
        let verified =
            AccountEvent::EmailVerified(EmailVerified { challenge_id: "ch1".into(), email_index: "idx".into() });
        check::<Account>(
            &[registered(), requested("ch1", 100)],
            AccountCommand::ConfirmEmail { challenge_id: "ch1".into(), now: 1100, claims: None },
            Ok(vec![verified.clone()]),
        );
        let state = crate::domain::aggregate::replay::<Account>(&[registered(), requested("ch1", 100), verified]);
        assert!(state.email_verified && state.verification.is_none());
    }

    #[test]
    fn a_used_superseded_or_expired_challenge_is_refused() {
        let history = [registered(), requested("ch1", 100)];
        // Expired: one second past `expires_at`.
        let late = AccountCommand::ConfirmEmail { challenge_id: "ch1".into(), now: 1101, claims: None };
        check::<Account>(&history, late, Err(AccountError::InvalidProof));
        // Superseded by a resend: only the newest challenge counts.
        let resent = [registered(), requested("ch1", 100), requested("ch2", 200)];
        let old = AccountCommand::ConfirmEmail { challenge_id: "ch1".into(), now: 300, claims: None };
        check::<Account>(&resent, old, Err(AccountError::InvalidProof));
        // Used: after verification nothing is open.
        let used = [
            registered(),
            requested("ch1", 100),
            AccountEvent::EmailVerified(EmailVerified { challenge_id: "ch1".into(), email_index: "idx".into() }),
        ];
        let again = AccountCommand::ConfirmEmail { challenge_id: "ch1".into(), now: 300, claims: None };
        check::<Account>(&used, again, Err(AccountError::InvalidProof));
    }

    #[test]
    fn a_resend_waits_for_the_interval_and_stops_once_verified() {
        let history = [registered(), requested("ch1", 100)];
        let soon = AccountCommand::RequestVerification { challenge: challenge("ch2", 130), min_interval_secs: 60 };
        check::<Account>(&history, soon, Err(AccountError::TooSoon { retry_after_secs: 30 }));
        let later = AccountCommand::RequestVerification { challenge: challenge("ch2", 160), min_interval_secs: 60 };
        check::<Account>(&history, later, Ok(vec![requested("ch2", 160)]));
        let verified = [
            registered(),
            requested("ch1", 100),
            AccountEvent::EmailVerified(EmailVerified { challenge_id: "ch1".into(), email_index: "idx".into() }),
        ];
        let resend = AccountCommand::RequestVerification { challenge: challenge("ch2", 500), min_interval_secs: 60 };
        check::<Account>(&verified, resend, Err(AccountError::AlreadyVerified));
        assert_eq!(AccountError::TooSoon { retry_after_secs: 30 }.retry_after_secs(), Some(30));
        assert_eq!(AccountError::TooSoon { retry_after_secs: 30 }.code(), "RATE_LIMITED");
    }

    fn started(id: &str, hash: &str, at: i64) -> AccountEvent {
        AccountEvent::SessionStarted(SessionStarted {
            session_id: id.into(),
            refresh_hash: hash.into(),
            user_agent: None,
            started_at: at,
            expires_at: at + 1000,
        })
    }

    fn refresh(id: &str, presented: &str, next: &str, at: i64) -> AccountCommand {
        AccountCommand::RefreshSession {
            session_id: id.into(),
            presented: presented.into(),
            next: next.into(),
            at,
            expires_at: at + 1000,
        }
    }

    #[test]
    fn a_refresh_rotates_the_token_and_a_rotated_token_revokes_the_session() {
        let history = vec![registered(), started("s1", "h1", 10)];
        let rotated = AccountEvent::SessionRefreshed(SessionRefreshed {
            session_id: "s1".into(),
            refresh_hash: "h2".into(),
            refreshed_at: 20,
            expires_at: 1020,
        });
        check::<Account>(&history, refresh("s1", "h1", "h2", 20), Ok(vec![rotated.clone()]));
        let after = [history.clone(), vec![rotated]].concat();
        // The old token again: reuse, the session ends.
        check::<Account>(
            &after,
            refresh("s1", "h1", "h3", 30),
            Ok(vec![revoked("s1", RevokeReason::RefreshTokenReused)]),
        );
        // A token the session never had: refused, nothing happens.
        check::<Account>(&after, refresh("s1", "forged", "h3", 30), Err(AccountError::InvalidRefreshToken));
        // Past its expiry the current token is refused too.
        check::<Account>(&after, refresh("s1", "h2", "h3", 1021), Err(AccountError::InvalidRefreshToken));
        // After a revocation, even the current token is refused.
        let ended = [after.clone(), vec![revoked("s1", RevokeReason::Logout)]].concat();
        check::<Account>(&ended, refresh("s1", "h2", "h3", 40), Err(AccountError::InvalidRefreshToken));
    }

    #[test]
    fn starting_a_session_beyond_the_limit_revokes_the_least_recently_used() {
        let history = vec![registered(), started("s1", "h1", 10), started("s2", "h2", 20)];
        let new = NewSession {
            session_id: "s3".into(),
            refresh_hash: "h3".into(),
            user_agent: None,
            at: 30,
            expires_at: 1030,
        };
        check::<Account>(
            &history,
            AccountCommand::StartSession { session: new, max_sessions: 2 },
            Ok(vec![revoked("s1", RevokeReason::SessionLimit), started("s3", "h3", 30)]),
        );
    }

    #[test]
    fn revoking_sessions_picks_one_all_or_all_but_the_current() {
        let history = vec![registered(), started("s1", "h1", 10), started("s2", "h2", 20)];
        let all = AccountCommand::RevokeSessions { which: WhichSessions::All, reason: RevokeReason::LogoutEverywhere };
        check::<Account>(
            &history,
            all,
            Ok(vec![revoked("s1", RevokeReason::LogoutEverywhere), revoked("s2", RevokeReason::LogoutEverywhere)]),
        );
        let others = AccountCommand::RevokeSessions {
            which: WhichSessions::AllBut("s2".into()),
            reason: RevokeReason::PasswordChanged,
        };
        check::<Account>(&history, others, Ok(vec![revoked("s1", RevokeReason::PasswordChanged)]));
        let missing =
            AccountCommand::RevokeSessions { which: WhichSessions::One("s9".into()), reason: RevokeReason::Revoked };
        check::<Account>(&history, missing, Err(AccountError::SessionNotFound));
    }

    fn reset_requested(id: &str, at: i64) -> AccountEvent {
        AccountEvent::PasswordResetRequested(PasswordResetRequested {
            challenge_id: id.into(),
            email: sealed("email"),
            secret: sealed(id),
            requested_at: at,
            expires_at: at + 1800,
        })
    }

    #[test]
    fn a_reset_sets_the_password_ends_every_session_and_is_single_use() {
        let history = vec![registered(), started("s1", "h1", 10), started("s2", "h2", 20), reset_requested("r1", 30)];
        let reset = AccountCommand::ResetPassword { challenge_id: "r1".into(), password_hash: sealed("new"), now: 40 };
        let changed =
            AccountEvent::PasswordChanged(PasswordChanged { password_hash: sealed("new"), how: PasswordChange::Reset });
        let expected = vec![
            changed.clone(),
            revoked("s1", RevokeReason::PasswordReset),
            revoked("s2", RevokeReason::PasswordReset),
        ];
        check::<Account>(&history, reset.clone(), Ok(expected.clone()));
        let after = [history.clone(), expected].concat();
        check::<Account>(&after, reset, Err(AccountError::InvalidProof));
        let state = crate::domain::aggregate::replay::<Account>(&after);
        assert_eq!(state.password_hash, Some(sealed("new")));
        assert!(state.sessions.is_empty());
        // Expired: past 30 minutes.
        let late = AccountCommand::ResetPassword { challenge_id: "r1".into(), password_hash: sealed("x"), now: 1831 };
        check::<Account>(&history, late, Err(AccountError::InvalidProof));
        // Superseded by a newer request.
        let newer = [history.clone(), vec![reset_requested("r2", 50)]].concat();
        let old = AccountCommand::ResetPassword { challenge_id: "r1".into(), password_hash: sealed("x"), now: 60 };
        check::<Account>(&newer, old, Err(AccountError::InvalidProof));
    }

    #[test]
    fn a_password_change_keeps_the_current_session_only() {
        let history = vec![registered(), started("s1", "h1", 10), started("s2", "h2", 20)];
        let cmd = AccountCommand::ChangePassword { password_hash: sealed("new"), keep: Some("s2".into()) };
        check::<Account>(
            &history,
            cmd,
            Ok(vec![
                AccountEvent::PasswordChanged(PasswordChanged {
                    password_hash: sealed("new"),
                    how: PasswordChange::Changed,
                }),
                revoked("s1", RevokeReason::PasswordChanged),
            ]),
        );
    }

    fn change_requested(id: &str, at: i64) -> AccountEvent {
        AccountEvent::EmailVerificationRequested(EmailVerificationRequested {
            challenge_id: id.into(),
            purpose: VerificationPurpose::EmailChange,
            email: sealed("new-email"),
            email_index: "new-idx".into(),
            secret: sealed(id),
            requested_at: at,
            expires_at: at + 1000,
        })
    }

    #[test]
    fn a_verified_email_change_moves_the_claim_in_the_same_batch() {
        let verified_first =
            AccountEvent::EmailVerified(EmailVerified { challenge_id: "ch1".into(), email_index: "idx".into() });
        let history = vec![registered(), requested("ch1", 100), verified_first, change_requested("ch2", 200)];
        let state = crate::domain::aggregate::replay::<Account>(&history);
        assert_eq!(state.email_index.as_deref(), Some("idx"), "the address changes only once verified");
        let moved = ClaimMove { new_after: 0, old_seq: 7 };
        let cmd = AccountCommand::ConfirmEmail { challenge_id: "ch2".into(), now: 300, claims: Some(moved) };
        let d = Account::decide(&state, &cmd).unwrap();
        assert_eq!(
            d.events,
            vec![
                AccountEvent::EmailVerified(EmailVerified {
                    challenge_id: "ch2".into(),
                    email_index: "new-idx".into()
                }),
                AccountEvent::EmailChanged(EmailChanged {
                    email: sealed("new-email"),
                    email_index: "new-idx".into(),
                    previous_email_index: "idx".into(),
                }),
            ]
        );
        let claims: Vec<_> = d.reservations.iter().map(|r| (r.event_type, r.key.as_str(), r.expected_seq)).collect();
        assert_eq!(claims, [(EMAIL_RESERVED, "new-idx", 0), (EMAIL_RELEASED, "idx", 7)]);
        // Without the claims' positions the change cannot be decided.
        let blind = AccountCommand::ConfirmEmail { challenge_id: "ch2".into(), now: 300, claims: None };
        check::<Account>(&history, blind, Err(AccountError::InvalidProof));
        let same = AccountCommand::RequestEmailChange {
            challenge: challenge("ch3", 400),
            new_email: sealed("e"),
            new_index: "idx".into(),
        };
        check::<Account>(&history, same, Err(AccountError::SameEmail));
    }

    #[test]
    fn erasing_ends_sessions_releases_the_email_and_spares_the_last_owner() {
        let history = vec![registered(), started("s1", "h1", 10)];
        let member = Membership { last_owner: false, access_seq: Some(9) };
        let d = Account::decide(
            &crate::domain::aggregate::replay::<Account>(&history),
            &AccountCommand::Erase { claim_seq: 3, membership: member },
        )
        .unwrap();
        assert_eq!(
            d.events,
            vec![
                revoked("s1", RevokeReason::AccountDeleted),
                AccountEvent::AccountErased(AccountErased { email_index: "idx".into() })
            ]
        );
        let claims: Vec<_> = d.reservations.iter().map(|r| (r.event_type, r.key.as_str(), r.expected_seq)).collect();
        assert_eq!(claims, [(EMAIL_RELEASED, "idx", 3), ("MemberRemoved", ACCESS_ID, 9)]);
        let erased = [history.clone(), d.events].concat();
        let state = crate::domain::aggregate::replay::<Account>(&erased);
        assert!(!state.is_registered() && state.email.is_none() && state.password_hash.is_none());
        check::<Account>(
            &erased,
            AccountCommand::Erase { claim_seq: 3, membership: member },
            Err(AccountError::NotFound),
        );
        let last = Membership { last_owner: true, access_seq: Some(9) };
        check::<Account>(
            &history,
            AccountCommand::Erase { claim_seq: 3, membership: last },
            Err(AccountError::LastOwner),
        );
        // Without access control there is nothing to remove.
        let before_roles = Membership { last_owner: false, access_seq: None };
        let d = Account::decide(
            &crate::domain::aggregate::replay::<Account>(&history),
            &AccountCommand::Erase { claim_seq: 3, membership: before_roles },
        )
        .unwrap();
        assert_eq!(d.reservations.len(), 1);
    }

    #[test]
    fn locales_parse_to_a_supported_language_and_accept_language_picks_the_best() {
        assert_eq!(Locale::parse("de-CH").unwrap().as_str(), "de");
        assert_eq!(Locale::parse("EN_us").unwrap().as_str(), "en");
        for bad in ["", "fr", "d", "de\r\n", "de;q=1", &"x".repeat(40)] {
            assert_eq!(Locale::parse(bad), Err(InputError::UnsupportedLocale), "{bad:?}");
        }
        assert_eq!(Locale::from_accept_language("fr-CH, de;q=0.9, en;q=0.8").as_str(), "de");
        assert_eq!(Locale::from_accept_language("en;q=0.5, de;q=0.7").as_str(), "de");
        assert_eq!(Locale::from_accept_language("de;q=0, fr").as_str(), "en");
        assert_eq!(Locale::from_accept_language("garbage;;;,,,").as_str(), "en");
    }

    #[test]
    fn account_ids_are_canonical_uuids_only() {
        let id = AccountId::derived("acme/account/c1");
        assert_eq!(AccountId::parse(id.as_str()), Ok(id.clone()));
        for bad in ["", "a1", "*", "evt.>", &id.as_str().to_uppercase(), &id.as_str().replace('-', "")] {
            assert_eq!(AccountId::parse(bad), Err(InputError::InvalidAccountId), "{bad:?}");
        }
    }

    #[test]
    fn emails_are_trimmed_and_compared_without_case() {
        let e = Email::parse("  Ada@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "Ada@Example.COM");
        assert_eq!(e.normalized(), "ada@example.com");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@exa mple.com",
            "ada@@example.com",
            "ada@-x.com",
            &long_local,
        ] {
            assert_eq!(Email::parse(bad), Err(InputError::InvalidEmail), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_between_8_and_128_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"é".repeat(128)).is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let p = Password::parse("hunter2hunter2").unwrap();
        let e = Email::parse("ada@example.com").unwrap();
        let dbg = format!("{p:?} {e:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("ada@"), "{dbg}");
    }
}
