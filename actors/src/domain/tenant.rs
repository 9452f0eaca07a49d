//! Tenant identity (`TenantId`, `Scope`) and the tenant directory aggregate.
//!
//! A `TenantId` can only be built by `TenantId::parse`, so every subject, database
//! name and key built from one is safe: no dots, wildcards or unicode can reach NATS
//! or SurrealDB.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError};

/// A tenant slug: `[a-z0-9][a-z0-9-]{1,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("a tenant id must not be empty")]
    Empty,
    #[error("a tenant id has at most 63 characters")]
    TooLong,
    #[error("a tenant id has at least 2 characters")]
    TooShort,
    #[error("a tenant id may only hold lowercase letters, digits and '-', and must start with a letter or digit")]
    InvalidCharacter,
}

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, TenantIdError> {
        if raw.is_empty() {
            return Err(TenantIdError::Empty);
        }
        if raw.len() > 63 {
            return Err(TenantIdError::TooLong);
        }
        let bytes = raw.as_bytes();
        let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
        let rest_ok = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if !first_ok || !rest_ok {
            return Err(TenantIdError::InvalidCharacter);
        }
        if raw.len() < 2 {
            return Err(TenantIdError::TooShort);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        TenantId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an aggregate lives: the platform (administrators and the tenant directory)
/// or one tenant. The platform's token `_system` can never be a tenant slug, because
/// slugs cannot start with `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Platform,
    Tenant(TenantId),
}

pub const PLATFORM_TOKEN: &str = "_system";

impl Scope {
    /// The token used in subjects and key names.
    pub fn token(&self) -> &str {
        match self {
            Scope::Platform => PLATFORM_TOKEN,
            Scope::Tenant(t) => t.as_str(),
        }
    }

    pub fn parse_token(raw: &str) -> Result<Self, TenantIdError> {
        if raw == PLATFORM_TOKEN { Ok(Scope::Platform) } else { TenantId::parse(raw).map(Scope::Tenant) }
    }

    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Scope::Platform => None,
            Scope::Tenant(t) => Some(t),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.token())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Scope::parse_token(&raw).map_err(serde::de::Error::custom)
    }
}

/// The display name of a tenant: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, TenantError> {
        let trimmed = raw.trim();
        let len = trimmed.chars().count();
        if len == 0 || len > 100 || trimmed.chars().any(char::is_control) {
            return Err(TenantError::InvalidName);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a tenant is in its life. A deleted tenant's slug stays taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Active,
    /// Its members and tokens are refused until a platform administrator resumes it.
    Suspended,
    /// Its data key is destroyed and its read models are dropped; nothing comes back.
    Deleted,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }
}

/// The tenant directory aggregate: one instance per slug, in the platform scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantState {
    pub created: bool,
    pub name: Option<TenantName>,
    #[serde(default)]
    pub status: TenantStatus,
}

impl TenantState {
    /// Whether the tenant exists and is not deleted.
    pub fn exists(&self) -> bool {
        self.created && self.status != TenantStatus::Deleted
    }
}

#[derive(Debug, Clone)]
pub enum TenantCommand {
    /// `restored_from`: the backup a restore clones the tenant from.
    Create {
        slug: TenantId,
        name: TenantName,
        owner_account_id: String,
        restored_from: Option<String>,
    },
    Rename {
        name: TenantName,
    },
    Suspend,
    Resume,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum TenantEvent {
    /// A tenant was created with its first owner account.
    TenantCreated(TenantCreated),
    /// The tenant's display name changed.
    TenantRenamed(TenantRenamed),
    /// A platform administrator suspended the tenant: its members and tokens are
    /// refused, and nothing of it is lost.
    TenantSuspended(TenantSuspended),
    /// A platform administrator lifted the suspension.
    TenantResumed(TenantResumed),
    /// The tenant was deleted: its data key is destroyed, so everything sealed
    /// under it (and under its persons' keys) can no longer be read, and its slug
    /// is never given out again.
    TenantDeleted(TenantDeleted),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantCreated {
    pub slug: TenantId,
    pub name: TenantName,
    pub owner_account_id: String,
    /// The backup the tenant was restored from (a clone of another tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantRenamed {
    pub name: TenantName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantSuspended {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantResumed {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantDeleted {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("a tenant with this slug already exists")]
    AlreadyExists,
    #[error("a tenant name has 1 to 100 characters and no control characters")]
    InvalidName,
    #[error("unknown tenant")]
    NotFound,
    #[error("this tenant is suspended")]
    Suspended,
    #[error("this tenant is already suspended")]
    AlreadySuspended,
    #[error("this tenant is not suspended")]
    NotSuspended,
}

impl DomainError for TenantError {
    fn code(&self) -> &'static str {
        match self {
            TenantError::AlreadyExists | TenantError::InvalidName => "BAD_USER_INPUT",
            TenantError::NotFound => "NOT_FOUND",
            TenantError::Suspended => "FORBIDDEN",
            TenantError::AlreadySuspended | TenantError::NotSuspended => "CONFLICT",
        }
    }
}

pub struct Tenant;

impl Aggregate for Tenant {
    const NAME: &'static str = "tenant";
    type State = TenantState;
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;

    fn decide(state: &TenantState, cmd: &TenantCommand) -> Result<Decision<TenantEvent>, TenantError> {
        if let TenantCommand::Create { slug, name, owner_account_id, restored_from } = cmd {
            // A deleted tenant's slug stays taken.
            if state.created {
                return Err(TenantError::AlreadyExists);
            }
            return Ok(Decision::events(vec![TenantEvent::TenantCreated(TenantCreated {
                slug: slug.clone(),
                name: name.clone(),
                owner_account_id: owner_account_id.clone(),
                restored_from: restored_from.clone(),
            })]));
        }
        if !state.exists() {
            return Err(TenantError::NotFound);
        }
        let event = match cmd {
            TenantCommand::Create { .. } => unreachable!("handled above"),
            TenantCommand::Rename { name } => {
                if state.status == TenantStatus::Suspended {
                    return Err(TenantError::Suspended);
                }
                if state.name.as_ref() == Some(name) {
                    return Ok(Decision::events(Vec::new()));
                }
                TenantEvent::TenantRenamed(TenantRenamed { name: name.clone() })
            }
            TenantCommand::Suspend if state.status == TenantStatus::Suspended => {
                return Err(TenantError::AlreadySuspended);
            }
            TenantCommand::Suspend => TenantEvent::TenantSuspended(TenantSuspended {}),
            TenantCommand::Resume if state.status != TenantStatus::Suspended => {
                return Err(TenantError::NotSuspended);
            }
            TenantCommand::Resume => TenantEvent::TenantResumed(TenantResumed {}),
            TenantCommand::Delete => TenantEvent::TenantDeleted(TenantDeleted {}),
        };
        Ok(Decision::events(vec![event]))
    }

    fn evolve(mut state: TenantState, event: &TenantEvent) -> TenantState {
        match event {
            TenantEvent::TenantCreated(e) => {
                state.created = true;
                state.name = Some(e.name.clone());
            }
            TenantEvent::TenantRenamed(e) => state.name = Some(e.name.clone()),
            TenantEvent::TenantSuspended(_) => state.status = TenantStatus::Suspended,
            TenantEvent::TenantResumed(_) => state.status = TenantStatus::Active,
            TenantEvent::TenantDeleted(_) => state.status = TenantStatus::Deleted,
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::check;

    #[test]
    fn valid_slugs_parse() {
        for ok in ["acme", "a1", "acme-corp", "0day", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn hostile_slugs_are_rejected_with_a_reason() {
        let cases = [
            ("", TenantIdError::Empty),
            ("a", TenantIdError::TooShort),
            (&"a".repeat(64) as &str, TenantIdError::TooLong),
            ("acme.corp", TenantIdError::InvalidCharacter),
            ("acme*", TenantIdError::InvalidCharacter),
            ("acme>", TenantIdError::InvalidCharacter),
            ("ac me", TenantIdError::InvalidCharacter),
            ("äcme", TenantIdError::InvalidCharacter),
            ("Acme", TenantIdError::InvalidCharacter),
            ("-acme", TenantIdError::InvalidCharacter),
            ("_system", TenantIdError::InvalidCharacter),
        ];
        for (raw, expected) in cases {
            assert_eq!(TenantId::parse(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn the_platform_token_is_never_a_tenant() {
        assert_eq!(Scope::parse_token("_system"), Ok(Scope::Platform));
        assert!(TenantId::parse(PLATFORM_TOKEN).is_err());
    }

    #[test]
    fn creating_a_new_tenant_emits_tenant_created() {
        let slug = TenantId::parse("acme").unwrap();
        let name = TenantName::parse("Acme").unwrap();
        let cmd = TenantCommand::Create {
            slug: slug.clone(),
            name: name.clone(),
            owner_account_id: "a1".into(),
            restored_from: None,
        };
        check::<Tenant>(
            &[],
            cmd,
            Ok(vec![TenantEvent::TenantCreated(TenantCreated {
                slug,
                name,
                owner_account_id: "a1".into(),
                restored_from: None,
            })]),
        );
    }

    #[test]
    fn creating_an_existing_tenant_is_rejected() {
        let slug = TenantId::parse("acme").unwrap();
        let name = TenantName::parse("Acme").unwrap();
        let created = TenantEvent::TenantCreated(TenantCreated {
            slug: slug.clone(),
            name: name.clone(),
            owner_account_id: "a1".into(),
            restored_from: None,
        });
        let cmd = TenantCommand::Create { slug, name, owner_account_id: "a2".into(), restored_from: None };
        check::<Tenant>(&[created], cmd, Err(TenantError::AlreadyExists));
    }

    fn created(slug: &str) -> TenantEvent {
        TenantEvent::TenantCreated(TenantCreated {
            slug: TenantId::parse(slug).unwrap(),
            name: TenantName::parse("Acme").unwrap(),
            owner_account_id: "a1".into(),
            restored_from: None,
        })
    }

    #[test]
    fn a_tenant_is_renamed_suspended_resumed_and_deleted_in_order() {
        let other = TenantName::parse("Acme Corp").unwrap();
        let renamed = TenantEvent::TenantRenamed(TenantRenamed { name: other.clone() });
        check::<Tenant>(&[created("acme")], TenantCommand::Rename { name: other.clone() }, Ok(vec![renamed.clone()]));
        // The same name again changes nothing.
        check::<Tenant>(&[created("acme"), renamed.clone()], TenantCommand::Rename { name: other.clone() }, Ok(vec![]));
        let suspended = TenantEvent::TenantSuspended(TenantSuspended {});
        check::<Tenant>(&[created("acme")], TenantCommand::Suspend, Ok(vec![suspended.clone()]));
        let history = [created("acme"), suspended.clone()];
        check::<Tenant>(&history, TenantCommand::Suspend, Err(TenantError::AlreadySuspended));
        check::<Tenant>(&history, TenantCommand::Rename { name: other.clone() }, Err(TenantError::Suspended));
        check::<Tenant>(&history, TenantCommand::Resume, Ok(vec![TenantEvent::TenantResumed(TenantResumed {})]));
        check::<Tenant>(&[created("acme")], TenantCommand::Resume, Err(TenantError::NotSuspended));
        // A suspended tenant can still be deleted.
        check::<Tenant>(&history, TenantCommand::Delete, Ok(vec![TenantEvent::TenantDeleted(TenantDeleted {})]));
    }

    #[test]
    fn a_deleted_or_missing_tenant_takes_no_command_and_keeps_its_slug() {
        let deleted = [created("acme"), TenantEvent::TenantDeleted(TenantDeleted {})];
        let name = TenantName::parse("Again").unwrap();
        for cmd in [
            TenantCommand::Rename { name: name.clone() },
            TenantCommand::Suspend,
            TenantCommand::Resume,
            TenantCommand::Delete,
        ] {
            check::<Tenant>(&deleted, cmd.clone(), Err(TenantError::NotFound));
            check::<Tenant>(&[], cmd, Err(TenantError::NotFound));
        }
        let again = TenantCommand::Create {
            slug: TenantId::parse("acme").unwrap(),
            name,
            owner_account_id: "a2".into(),
            restored_from: None,
        };
        check::<Tenant>(&deleted, again, Err(TenantError::AlreadyExists));
    }

    #[test]
    fn tenant_names_are_trimmed_and_bounded() {
        assert_eq!(TenantName::parse("  Acme ").unwrap().as_str(), "Acme");
        assert_eq!(TenantName::parse(""), Err(TenantError::InvalidName));
        assert_eq!(TenantName::parse(&"x".repeat(101)), Err(TenantError::InvalidName));
        assert_eq!(TenantName::parse("a\u{0}b"), Err(TenantError::InvalidName));
    }
}
