//! The account aggregate: one per person in a scope (a tenant, or the platform's
//! administrators). It holds the parsed input types, commands, events, state,
//! errors, `decide` and `evolve`.
//!
//! Personal fields and the password hash arrive here already sealed (see
//! `seal.rs`): the domain never sees them in clear and never needs to.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError, Reservation};
use crate::store::seal::Sealed;

/// An account's id: a UUID in its canonical lowercase hyphenated form (ids are
/// derived from command ids with UUID v5). It becomes a subject token, a key
/// name and a record id, so nothing else parses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        match uuid::Uuid::try_parse(raw) {
            Ok(u) if u.hyphenated().to_string() == raw => Ok(Self(raw.to_owned())),
            _ => Err(InputError::InvalidAccountId),
        }
    }

    /// The id of a new account: a UUID v5 of `seed`.
    pub fn derived(seed: &str) -> Self {
        Self(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string())
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

/// A first or last name: 1 to 100 characters, trimmed, no control characters.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let t = raw.trim();
        let n = t.chars().count();
        if n == 0 || n > 100 || t.chars().any(char::is_control) {
            return Err(InputError::InvalidName);
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Emails, passwords and names are personal data or secrets: their debug output is
// redacted, so they cannot reach a log by accident.
macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}

redacted_debug!(Email, Password, PersonName);

/// The state of one account, rebuilt from its events. Sealed fields stay sealed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub account_id: Option<String>,
    pub email_index: Option<String>,
    pub email: Option<Sealed>,
    pub password_hash: Option<Sealed>,
    pub firstname: Option<Sealed>,
    pub lastname: Option<Sealed>,
    pub owner: bool,
}

impl AccountState {
    pub fn is_registered(&self) -> bool {
        self.account_id.is_some()
    }
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Register(Registration),
    UpdateProfile { firstname: Sealed, lastname: Sealed },
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    /// An account was registered. `owner` marks the tenant's owner.
    AccountRegistered(AccountRegistered),
    /// The person changed their first or last name.
    ProfileUpdated(ProfileUpdated),
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileUpdated {
    pub firstname: Sealed,
    pub lastname: Sealed,
}

/// The claim that makes an email unique in its scope, on `evt.{scope}.email.{index}.EmailReserved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailReserved {
    pub account_id: String,
}

pub const EMAIL_CLAIM: &str = "email";
pub const EMAIL_RESERVED: &str = "EmailReserved";
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
    #[error(transparent)]
    Input(#[from] InputError),
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            AccountError::EmailTaken | AccountError::AlreadyRegistered | AccountError::Input(_) => "BAD_USER_INPUT",
            AccountError::NotFound => "NOT_FOUND",
        }
    }
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
                if state.is_registered() {
                    return Err(AccountError::AlreadyRegistered);
                }
                let claim = EmailReserved { account_id: r.account_id.clone() };
                Ok(Decision {
                    events: vec![AccountEvent::AccountRegistered(AccountRegistered {
                        account_id: r.account_id.clone(),
                        email_index: r.email_index.clone(),
                        email: r.email.clone(),
                        password_hash: r.password_hash.clone(),
                        firstname: r.firstname.clone(),
                        lastname: r.lastname.clone(),
                        owner: r.owner,
                    })],
                    reservations: vec![Reservation {
                        aggregate: EMAIL_CLAIM,
                        key: r.email_index.clone(),
                        event_type: EMAIL_RESERVED,
                        version: EMAIL_RESERVED_VERSION,
                        data: serde_json::to_value(claim).expect("a plain struct serialises"),
                    }],
                })
            }
            AccountCommand::UpdateProfile { firstname, lastname } => {
                if !state.is_registered() {
                    return Err(AccountError::NotFound);
                }
                Ok(Decision::events(vec![AccountEvent::ProfileUpdated(ProfileUpdated {
                    firstname: firstname.clone(),
                    lastname: lastname.clone(),
                })]))
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
            }
            AccountEvent::ProfileUpdated(e) => {
                state.firstname = Some(e.firstname.clone());
                state.lastname = Some(e.lastname.clone());
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        }
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
        })
    }

    #[test]
    fn registering_a_new_account_emits_account_registered() {
        check::<Account>(&[], AccountCommand::Register(registration()), Ok(vec![registered()]));
    }

    #[test]
    fn registering_claims_the_email_index_in_the_same_decision() {
        let d = Account::decide(&AccountState::default(), &AccountCommand::Register(registration())).unwrap();
        assert_eq!(d.reservations.len(), 1);
        assert_eq!(d.reservations[0].aggregate, "email");
        assert_eq!(d.reservations[0].key, "idx");
        assert_eq!(d.reservations[0].data["account_id"], "a1");
    }

    #[test]
    fn registering_the_same_account_twice_is_rejected() {
        check::<Account>(
            &[registered()],
            AccountCommand::Register(registration()),
            Err(AccountError::AlreadyRegistered),
        );
    }

    #[test]
    fn updating_the_profile_of_a_missing_account_is_not_found() {
        let cmd = AccountCommand::UpdateProfile { firstname: sealed("x"), lastname: sealed("y") };
        check::<Account>(&[], cmd, Err(AccountError::NotFound));
    }

    #[test]
    fn updating_the_profile_replaces_both_names() {
        let cmd = AccountCommand::UpdateProfile { firstname: sealed("grace"), lastname: sealed("hopper") };
        let expected =
            AccountEvent::ProfileUpdated(ProfileUpdated { firstname: sealed("grace"), lastname: sealed("hopper") });
        check::<Account>(&[registered()], cmd, Ok(vec![expected.clone()]));
        let state = crate::domain::aggregate::replay::<Account>(&[registered(), expected]);
        assert_eq!(state.firstname, Some(sealed("grace")));
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
