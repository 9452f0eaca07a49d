//! Identifiers that become NATS subject tokens, header values and key names,
//! and the rule they all follow. Nothing here depends on the rest of the crate,
//! so every layer can use it.

use serde::{Deserialize, Serialize};

/// Aggregate ids and claim keys become subject tokens, so they are restricted to
/// characters that can never form a wildcard or a separator.
pub fn is_safe_token(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `raw` if it is a UUID in canonical form (lowercase, hyphenated): the shape
/// of every id that names an account, a role, a session or an access token.
pub fn canonical_uuid(raw: &str) -> Option<String> {
    match uuid::Uuid::try_parse(raw) {
        Ok(u) if u.hyphenated().to_string() == raw => Some(raw.to_owned()),
        _ => None,
    }
}

/// The canonical UUID v5 of `seed`: the id of something a command creates, the
/// same for a retry of the command.
pub fn derived_uuid(seed: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string()
}

/// A command's id: 1 to 64 ASCII letters, digits, `-` or `_`. It becomes part of
/// `Nats-Msg-Id` headers and of derived aggregate ids, so nothing else can pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a command id has 1 to 64 characters, each a letter, a digit, '-' or '_'")]
pub struct InvalidCommandId;

impl CommandId {
    pub fn parse(raw: &str) -> Result<Self, InvalidCommandId> {
        let ok =
            (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(Self(raw.to_owned())) } else { Err(InvalidCommandId) }
    }

    /// A fresh, unique id (UUID v7, 32 hex characters).
    pub fn fresh() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CommandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for CommandId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        CommandId::parse(&raw).map_err(serde::de::Error::custom)
    }
}
