//! The command protocol on `cmd.{scope}.{aggregate}`: what the edge sends and what
//! the tenant tree answers. Requests carry parsed types, so a malformed command is
//! refused when it is decoded, before any actor sees it.

use serde::{Deserialize, Serialize};

use crate::account::{Email, Password, PersonName};
use crate::tenant::{Scope, TenantId, TenantName};

pub fn command_subject(scope: &Scope, aggregate: &str) -> String {
    format!("cmd.{}.{aggregate}", scope.token())
}

/// The subject the command router listens on.
pub const COMMAND_WILDCARD: &str = "cmd.*.*";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnvelope<R> {
    /// Chosen by the caller; a retry with the same id is applied once.
    pub command_id: String,
    pub request: R,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountRequest {
    Register { email: Email, password: Password, firstname: PersonName, lastname: PersonName },
    Login { email: Email, password: Password },
    UpdateProfile { account_id: String, firstname: PersonName, lastname: PersonName },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountReply {
    Registered { account_id: String, seq: u64 },
    LoggedIn { account_id: String, owner: bool },
    Updated { seq: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TenantRequest {
    Create { slug: TenantId, name: TenantName, owner_email: Email, owner_password: Password },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TenantReply {
    Created { slug: TenantId, owner_account_id: String, seq: u64 },
}

/// Why a command did not succeed. `code` is the GraphQL `extensions.code`; the
/// message is safe to show to the caller and never holds internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandFailure {
    pub code: String,
    pub message: String,
}

impl CommandFailure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }

    pub fn rejected(e: &impl crate::aggregate::DomainError) -> Self {
        Self::new(e.code(), e.to_string())
    }

    pub fn conflict() -> Self {
        Self::new("CONFLICT", "another change to the same data happened at the same time; retry the request")
    }

    /// Infrastructure failed. The detail goes to the log, never to the caller.
    pub fn internal() -> Self {
        Self::new("INTERNAL", "internal error; the request was not applied or may be retried safely")
    }

    pub fn unknown_tenant() -> Self {
        Self::new("NOT_FOUND", "unknown tenant")
    }

    pub fn invalid_credentials() -> Self {
        Self::new("UNAUTHENTICATED", "invalid email or password")
    }
}

/// What goes back on the reply subject.
pub type CommandResult<T> = Result<T, CommandFailure>;

// Parsed input types travel inside commands: serialise them as plain strings and
// parse them again on the way in, so the receiving side holds parsed values too.
macro_rules! string_wire {
    ($t:ty, $expose:ident) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.$expose())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                <$t>::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_wire!(Email, as_str);
string_wire!(Password, expose);
string_wire!(PersonName, as_str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_with_an_invalid_email_does_not_decode() {
        let raw = r#"{"command_id":"c1","request":{"kind":"login","email":"nope","password":"12345678"}}"#;
        assert!(serde_json::from_str::<CommandEnvelope<AccountRequest>>(raw).is_err());
    }

    #[test]
    fn commands_round_trip_through_json() {
        let cmd = CommandEnvelope {
            command_id: "c1".into(),
            request: AccountRequest::Login {
                email: Email::parse("a@b.co").unwrap(),
                password: Password::parse("12345678").unwrap(),
            },
        };
        let json = serde_json::to_string(&cmd).unwrap();
        let back: CommandEnvelope<AccountRequest> = serde_json::from_str(&json).unwrap();
        assert!(matches!(back.request, AccountRequest::Login { .. }));
    }

    #[test]
    fn subjects_use_the_scope_token() {
        assert_eq!(command_subject(&Scope::Platform, "tenant"), "cmd._system.tenant");
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        assert_eq!(command_subject(&acme, "account"), "cmd.acme.account");
    }
}
