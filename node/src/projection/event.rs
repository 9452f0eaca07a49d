//! What a projection gets for one event (its data in the current shape, its
//! scope, a way to open sealed fields) and what it returns: SurrealQL
//! statements, or why the event can never be applied.

use std::borrow::Cow;

use actors::domain::tenant::Scope;
use actors::store::event_store::Stored;
use actors::store::seal::{KeyRing, SealError, Sealed};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::read_model::{Statement, record_id};

/// The statements one aggregate kind's events become in the read models.
pub trait Projection: Sync {
    /// The aggregate (`envelope.aggregate`) whose events this projects.
    fn aggregate(&self) -> &'static str;
    /// The statements for `event`; none for an event type it does not show.
    fn statements<'a>(&'a self, event: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>>;
}

/// One event as a projection reads it.
pub struct Event<'a> {
    /// The tenant the event's subject names (checked against its envelope).
    pub scope: &'a Scope,
    pub stored: &'a Stored,
    /// Its data, upcast to its type's current shape (borrowed when it already is).
    pub data: Cow<'a, Value>,
    pub(super) keys: &'a KeyRing,
    /// The module versions this node knows (migrations run from their files).
    pub modules: &'a actors::domain::manifest::Registry,
}

/// What the read models show in place of a person's erased personal data.
pub const ERASED: &str = "[erased]";

/// Why the projector cannot apply an event.
#[derive(Debug, thiserror::Error)]
pub enum Unapplied {
    /// The event can never be applied as it is, so it is set aside. The reason
    /// names rules and fields, never a value from the event: it is written to
    /// the node's log and to the read model.
    #[error("{0}")]
    Refused(String),
    /// Something the projector needs is unavailable: the batch is tried again later.
    #[error(transparent)]
    Unavailable(anyhow::Error),
}

pub fn refused(reason: impl Into<String>) -> Unapplied {
    Unapplied::Refused(reason.into())
}

impl Event<'_> {
    pub fn event_type(&self) -> &str {
        &self.stored.envelope.event_type
    }

    pub fn aggregate_id(&self) -> &str {
        &self.stored.envelope.aggregate_id
    }

    /// A string field of the data.
    pub fn text(&self, k: &str) -> Result<String, Unapplied> {
        self.data
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| refused(format!("field `{k}` is missing or not a string")))
    }

    /// An integer field of the data.
    pub fn int(&self, k: &str) -> Result<i64, Unapplied> {
        self.data
            .get(k)
            .and_then(Value::as_i64)
            .ok_or_else(|| refused(format!("field `{k}` is missing or not an integer")))
    }

    /// A record id literal for a key from the log. Record ids are written as
    /// literals: `type::record(...)` made every statement a function call, a
    /// measurable share of the projector's cost; `record_id` only accepts
    /// subject-safe tokens, so nothing from the log reaches the query text
    /// unchecked.
    pub fn record(&self, table: &str, key: &str) -> Result<String, Unapplied> {
        record_id(table, key).ok_or_else(|| refused("unsafe id"))
    }

    /// Opens a personal field, which must be sealed under the person's own key
    /// `kid`: a value sealed under another key, even a real one copied from
    /// another event, is refused. A key that no longer exists means the person
    /// was erased.
    pub async fn open(&self, field: &str, kid: &str) -> Result<String, Unapplied> {
        let sealed: Sealed = self
            .data
            .get(field)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| refused(format!("field `{field}` is not a sealed value")))?;
        if sealed.kid != kid {
            return Err(refused(format!("field `{field}` is sealed under another key")));
        }
        let key = match self.keys.existing_key(kid).await {
            Ok(k) => k,
            Err(SealError::MissingKey(_) | SealError::Shredded(_)) => return Ok(ERASED.into()),
            // The bucket is unreachable, or this node's master key does not unwrap
            // the key: neither is the event's fault.
            Err(e) => return Err(Unapplied::Unavailable(e.into())),
        };
        key.open(&sealed)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| refused(format!("field `{field}` does not open with its key")))
    }

    /// A value that may be sealed, as the read model holds it: a plain value
    /// as it is, a sealed one opened with the key `kid` (and refused if sealed
    /// under any other), `None` when the key no longer exists (erased).
    pub async fn open_json(&self, field: &str, value: &Value, kid: &str) -> Result<Option<Value>, Unapplied> {
        let Some(sealed) = Sealed::from_json(value) else { return Ok(Some(value.clone())) };
        if sealed.kid != kid {
            return Err(refused(format!("field `{field}` is sealed under another key")));
        }
        let key = match self.keys.existing_key(kid).await {
            Ok(k) => k,
            Err(SealError::MissingKey(_) | SealError::Shredded(_)) => return Ok(None),
            Err(e) => return Err(Unapplied::Unavailable(e.into())),
        };
        key.open(&sealed)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .map(Some)
            .ok_or_else(|| refused(format!("field `{field}` does not open with its key")))
    }
}

/// A statement with its variables (an object).
pub fn statement(sql: String, vars: Value) -> Statement {
    Statement {
        sql,
        vars: match vars {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
    }
}
