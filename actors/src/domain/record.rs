//! A module's record: one aggregate per record (`record.{id}`), whatever its
//! module and table. Its values arrive validated against the module version's
//! manifest (`domain/manifest.rs`), so `decide` only keeps the rules of a
//! record's life: it is created once, changed and deleted while it lives, an
//! upgrade rewrites it into the next major version's shape, and a temporary
//! seed's record is removed by a deseed only while no user has touched it.
//!
//! Unique fields are claims on `unique.{hash}` subjects (a keyed hash of the
//! module, subscription generation, table, field and value), appended in the
//! record's batch like an email's claim: `ValueClaimed` takes a value,
//! `ValueReleased` frees it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError, Reservation};
use crate::domain::manifest::Values;

/// The subject token of record aggregates.
pub const RECORD: &str = "record";
/// The subject token of unique-value claims.
pub const UNIQUE_CLAIM: &str = "unique";
pub const VALUE_CLAIMED: &str = "ValueClaimed";
pub const VALUE_RELEASED: &str = "ValueReleased";

/// Who made a record or its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A member or access token, through the record APIs.
    User,
    /// The module version's main seeds.
    MainSeed,
    /// The module version's temporary seeds (removed again by a deseed).
    TempSeed,
}

/// The data of a unique value's claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ValueClaim {
    /// The record that holds (or held) the value.
    pub record_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordCreated {
    pub module: String,
    /// The major version of the module whose shape `values` has.
    pub major: u32,
    /// The subscription the record belongs to: a module subscribed again after
    /// an unsubscription starts a new generation, and older records stay behind.
    pub generation: u64,
    pub table: String,
    /// The field values, canonical (see the module manifest format); absent
    /// fields have no value.
    pub values: Values,
    pub origin: Origin,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordUpdated {
    pub module: String,
    pub table: String,
    /// Every field's value after the change.
    pub values: Values,
    pub by: Origin,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordDeleted {
    pub module: String,
    pub table: String,
    pub by: Origin,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordTransformed {
    pub module: String,
    pub table: String,
    /// The major version whose shape `values` now has.
    pub major: u32,
    pub values: Values,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum RecordEvent {
    /// A record was created in a module's table.
    RecordCreated(RecordCreated),
    /// A record's values changed.
    RecordUpdated(RecordUpdated),
    /// A record was deleted.
    RecordDeleted(RecordDeleted),
    /// A module upgrade rewrote the record into the new major version's shape.
    RecordTransformed(RecordTransformed),
}

/// A live or deleted record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub module: String,
    pub major: u32,
    pub generation: u64,
    pub table: String,
    pub values: Values,
    pub origin: Origin,
    /// A user changed the record after a seed made it.
    pub user_changed: bool,
    pub deleted: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordState {
    pub record: Option<Record>,
}

impl RecordState {
    /// The record, if it exists and is not deleted.
    pub fn live(&self) -> Option<&Record> {
        self.record.as_ref().filter(|r| !r.deleted)
    }
}

/// A change to a unique value's claim that must land with the record's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimChange {
    /// The claim's key (a keyed hash; a safe subject token).
    pub key: String,
    /// Take the value (`true`) or release it.
    pub take: bool,
    /// The last sequence on the claim's subject this change expects (0: none).
    pub expected_seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordCommand {
    Create {
        module: String,
        major: u32,
        generation: u64,
        table: String,
        values: Values,
        origin: Origin,
        at: String,
        claims: Vec<ClaimChange>,
    },
    /// `values` are the record's values after the change, validated against
    /// version `major`: a record an upgrade has moved to another version since
    /// is not found by it.
    Update {
        major: u32,
        values: Values,
        by: Origin,
        at: String,
        claims: Vec<ClaimChange>,
    },
    /// Deletes the record if it is still at version `major`.
    Delete {
        major: u32,
        by: Origin,
        at: String,
        claims: Vec<ClaimChange>,
    },
    Transform {
        major: u32,
        values: Values,
        at: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a record with this id exists")]
    Exists,
    #[error("no such record")]
    NotFound,
    #[error("the record was changed by a user and is kept")]
    ChangedByUser,
}

impl DomainError for RecordError {
    fn code(&self) -> &'static str {
        match self {
            RecordError::Exists => "CONFLICT",
            RecordError::NotFound => "NOT_FOUND",
            RecordError::ChangedByUser => "BAD_USER_INPUT",
        }
    }
}

pub struct RecordAggregate;

impl RecordAggregate {
    /// The claim events of `changes`, for the batch of `record_id`'s events.
    pub fn claims(record_id: &str, changes: &[ClaimChange]) -> Vec<Reservation> {
        changes
            .iter()
            .map(|c| Reservation {
                aggregate: UNIQUE_CLAIM,
                key: c.key.clone(),
                event_type: if c.take { VALUE_CLAIMED } else { VALUE_RELEASED },
                version: 1,
                data: serde_json::to_value(ValueClaim { record_id: record_id.to_owned() })
                    .expect("a plain struct serialises"),
                expected_seq: c.expected_seq,
            })
            .collect()
    }
}

impl RecordEvent {
    /// This event as a write on record `record_id` in another aggregate's
    /// batch (a seeding, deseeding or upgrade), expecting the record's last
    /// sequence `expected_seq` (0: a new record).
    pub fn as_write(&self, record_id: &str, expected_seq: u64) -> Reservation {
        let event_type = match self {
            RecordEvent::RecordCreated(_) => "RecordCreated",
            RecordEvent::RecordUpdated(_) => "RecordUpdated",
            RecordEvent::RecordDeleted(_) => "RecordDeleted",
            RecordEvent::RecordTransformed(_) => "RecordTransformed",
        };
        let tagged = serde_json::to_value(self).expect("a plain enum serialises");
        Reservation {
            aggregate: RECORD,
            key: record_id.to_owned(),
            event_type,
            version: 1,
            data: tagged["data"].clone(),
            expected_seq,
        }
    }
}

/// `decide` needs the record's id for its claims; commands carry it through
/// this pair, and `RecordAggregate::decide` takes the id from `RecordCommand`s
/// wrapped in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForRecord {
    pub id: String,
    pub command: RecordCommand,
}

impl Aggregate for RecordAggregate {
    const NAME: &'static str = RECORD;
    // Updates carry the whole values, patched onto the state the record actor read.
    const DECIDE_AGAIN_ON_CONFLICT: bool = false;
    type State = RecordState;
    type Command = ForRecord;
    type Event = RecordEvent;
    type Error = RecordError;

    fn decide(state: &RecordState, cmd: &ForRecord) -> Result<Decision<RecordEvent>, RecordError> {
        let ForRecord { id, command } = cmd;
        let (events, claims) = match command {
            RecordCommand::Create { module, major, generation, table, values, origin, at, claims } => {
                if state.record.is_some() {
                    return Err(RecordError::Exists);
                }
                let created = RecordCreated {
                    module: module.clone(),
                    major: *major,
                    generation: *generation,
                    table: table.clone(),
                    values: values.clone(),
                    origin: *origin,
                    at: at.clone(),
                };
                (vec![RecordEvent::RecordCreated(created)], claims)
            }
            RecordCommand::Update { major, values, by, at, claims } => {
                let live = state.live().filter(|r| r.major == *major).ok_or(RecordError::NotFound)?;
                if &live.values == values {
                    return Ok(Decision::events(Vec::new()));
                }
                let updated = RecordUpdated {
                    module: live.module.clone(),
                    table: live.table.clone(),
                    values: values.clone(),
                    by: *by,
                    at: at.clone(),
                };
                (vec![RecordEvent::RecordUpdated(updated)], claims)
            }
            RecordCommand::Delete { major, by, at, claims } => {
                let live = state.live().filter(|r| r.major == *major).ok_or(RecordError::NotFound)?;
                if *by == Origin::TempSeed && (live.origin != Origin::TempSeed || live.user_changed) {
                    return Err(RecordError::ChangedByUser);
                }
                let deleted =
                    RecordDeleted { module: live.module.clone(), table: live.table.clone(), by: *by, at: at.clone() };
                (vec![RecordEvent::RecordDeleted(deleted)], claims)
            }
            RecordCommand::Transform { major, values, at } => {
                let live = state.live().ok_or(RecordError::NotFound)?;
                if live.major >= *major {
                    return Ok(Decision::events(Vec::new()));
                }
                let transformed = RecordTransformed {
                    module: live.module.clone(),
                    table: live.table.clone(),
                    major: *major,
                    values: values.clone(),
                    at: at.clone(),
                };
                return Ok(Decision::events(vec![RecordEvent::RecordTransformed(transformed)]));
            }
        };
        Ok(Decision { events, reservations: Self::claims(id, claims) })
    }

    fn evolve(mut state: RecordState, event: &RecordEvent) -> RecordState {
        match event {
            RecordEvent::RecordCreated(c) => {
                state.record = Some(Record {
                    module: c.module.clone(),
                    major: c.major,
                    generation: c.generation,
                    table: c.table.clone(),
                    values: c.values.clone(),
                    origin: c.origin,
                    user_changed: false,
                    deleted: false,
                    created_at: c.at.clone(),
                    updated_at: c.at.clone(),
                });
            }
            RecordEvent::RecordUpdated(u) => {
                if let Some(r) = state.record.as_mut() {
                    r.values = u.values.clone();
                    r.user_changed |= u.by == Origin::User;
                    r.updated_at = u.at.clone();
                }
            }
            RecordEvent::RecordDeleted(d) => {
                if let Some(r) = state.record.as_mut() {
                    r.deleted = true;
                    r.updated_at = d.at.clone();
                }
            }
            RecordEvent::RecordTransformed(t) => {
                if let Some(r) = state.record.as_mut() {
                    r.major = t.major;
                    r.values = t.values.clone();
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::check;

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), serde_json::json!(v))).collect()
    }

    fn created(origin: Origin) -> RecordEvent {
        RecordEvent::RecordCreated(RecordCreated {
            module: "contacts".into(),
            major: 1,
            generation: 1,
            table: "contact".into(),
            values: values(&[("name", "Ada")]),
            origin,
            at: "2026-12-05T10:00:00Z".into(),
        })
    }

    fn cmd(command: RecordCommand) -> ForRecord {
        ForRecord { id: "r1".into(), command }
    }

    #[test]
    fn a_record_is_created_once() {
        let create = RecordCommand::Create {
            module: "contacts".into(),
            major: 1,
            generation: 1,
            table: "contact".into(),
            values: values(&[("name", "Ada")]),
            origin: Origin::User,
            at: "2026-12-05T10:00:00Z".into(),
            claims: Vec::new(),
        };
        check::<RecordAggregate>(&[], cmd(create.clone()), Ok(vec![created(Origin::User)]));
        check::<RecordAggregate>(&[created(Origin::User)], cmd(create), Err(RecordError::Exists));
    }

    #[test]
    fn an_update_that_changes_nothing_appends_nothing_and_a_deleted_record_is_not_found() {
        let same = RecordCommand::Update {
            major: 1,
            values: values(&[("name", "Ada")]),
            by: Origin::User,
            at: "t".into(),
            claims: Vec::new(),
        };
        check::<RecordAggregate>(&[created(Origin::User)], cmd(same.clone()), Ok(vec![]));
        let deleted = RecordEvent::RecordDeleted(RecordDeleted {
            module: "contacts".into(),
            table: "contact".into(),
            by: Origin::User,
            at: "t".into(),
        });
        check::<RecordAggregate>(&[created(Origin::User), deleted], cmd(same), Err(RecordError::NotFound));
    }

    #[test]
    fn a_deseed_removes_only_untouched_temporary_records() {
        let deseed = RecordCommand::Delete { major: 1, by: Origin::TempSeed, at: "t".into(), claims: Vec::new() };
        let removed = RecordEvent::RecordDeleted(RecordDeleted {
            module: "contacts".into(),
            table: "contact".into(),
            by: Origin::TempSeed,
            at: "t".into(),
        });
        check::<RecordAggregate>(&[created(Origin::TempSeed)], cmd(deseed.clone()), Ok(vec![removed]));
        let touched = RecordEvent::RecordUpdated(RecordUpdated {
            module: "contacts".into(),
            table: "contact".into(),
            values: values(&[("name", "Ada L.")]),
            by: Origin::User,
            at: "t".into(),
        });
        check::<RecordAggregate>(
            &[created(Origin::TempSeed), touched],
            cmd(deseed.clone()),
            Err(RecordError::ChangedByUser),
        );
        check::<RecordAggregate>(&[created(Origin::User)], cmd(deseed), Err(RecordError::ChangedByUser));
    }

    #[test]
    fn a_transform_moves_a_record_forward_once() {
        let to_v2 = RecordCommand::Transform { major: 2, values: values(&[("first_name", "Ada")]), at: "t".into() };
        let transformed = RecordEvent::RecordTransformed(RecordTransformed {
            module: "contacts".into(),
            table: "contact".into(),
            major: 2,
            values: values(&[("first_name", "Ada")]),
            at: "t".into(),
        });
        check::<RecordAggregate>(&[created(Origin::User)], cmd(to_v2.clone()), Ok(vec![transformed.clone()]));
        check::<RecordAggregate>(&[created(Origin::User), transformed], cmd(to_v2), Ok(vec![]));
    }

    #[test]
    fn a_change_made_for_one_version_does_not_find_a_record_an_upgrade_moved_on() {
        let moved = RecordEvent::RecordTransformed(RecordTransformed {
            module: "contacts".into(),
            table: "contact".into(),
            major: 2,
            values: values(&[("first_name", "Ada")]),
            at: "t".into(),
        });
        let history = [created(Origin::User), moved];
        let update = |major| RecordCommand::Update {
            major,
            values: values(&[("name", "Ada L.")]),
            by: Origin::User,
            at: "t".into(),
            claims: Vec::new(),
        };
        let delete = |major| RecordCommand::Delete { major, by: Origin::User, at: "t".into(), claims: Vec::new() };
        check::<RecordAggregate>(&history, cmd(update(1)), Err(RecordError::NotFound));
        check::<RecordAggregate>(&history, cmd(delete(1)), Err(RecordError::NotFound));
        let updated = RecordEvent::RecordUpdated(RecordUpdated {
            module: "contacts".into(),
            table: "contact".into(),
            values: values(&[("name", "Ada L.")]),
            by: Origin::User,
            at: "t".into(),
        });
        check::<RecordAggregate>(&history, cmd(update(2)), Ok(vec![updated]));
    }
}
