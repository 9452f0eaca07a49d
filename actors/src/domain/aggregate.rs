//! The shape every aggregate shares: a pure `decide` and `evolve`, plus the
//! given/when/then helper the domain tests use.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A domain rule said no. The code is the GraphQL `extensions.code` the edge shows;
/// the message is safe to show to the caller.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> &'static str;

    /// For `RATE_LIMITED`: after how many seconds a retry may succeed.
    fn retry_after_secs(&self) -> Option<u64> {
        None
    }
}

/// A claim event appended in the same atomic batch as the events, on its own
/// subject, with an expected last sequence on the claim's subjects: 0 to take a
/// key never claimed, the sequence of its last claim event otherwise (to take a
/// released key, or to release one's own). The server refuses the whole batch
/// if anything happened on the key since.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The aggregate name of the claim subject, for example `email`.
    pub aggregate: &'static str,
    /// The claimed key. It must be a safe subject token (the caller hashes it).
    pub key: String,
    pub event_type: &'static str,
    /// The schema version of the claim's event type.
    pub version: u32,
    pub data: serde_json::Value,
    /// The last sequence on the key's subjects this claim expects (0: none).
    pub expected_seq: u64,
}

/// Why a stored event's data could not be brought to its type's current shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error("{event_type} v{version} was written by a newer build (this one knows v{current})")]
    Newer { event_type: String, version: u32, current: u32 },
    #[error("no upcaster for {event_type} v{version}")]
    Missing { event_type: String, version: u32 },
    #[error("{event_type} v{version} does not have the fields its upcaster needs: {detail}")]
    Malformed { event_type: String, version: u32, detail: String },
}

/// What `decide` returns: the events for this aggregate and the claims that must
/// land with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<E> {
    pub events: Vec<E>,
    pub reservations: Vec<Reservation>,
}

impl<E> Decision<E> {
    pub fn events(events: Vec<E>) -> Self {
        Self { events, reservations: Vec::new() }
    }
}

pub trait Aggregate: Send + Sync + 'static {
    /// The aggregate's subject token, e.g. `account`.
    const NAME: &'static str;
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Command: Send + 'static;
    /// Serialised as `{"type": "...", "data": {...}}` (serde `tag`/`content`).
    type Event: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Error: DomainError;

    /// Whether `execute` may decide a command again on fresher state when its
    /// append lost to a concurrent writer. An aggregate whose commands carry
    /// results computed from the state they were read from (a record's values
    /// after a patch) says no: deciding such a command again would write a
    /// stale result over the other writer's change, so its caller reads again
    /// and computes the command anew.
    const DECIDE_AGAIN_ON_CONFLICT: bool = true;

    fn decide(state: &Self::State, cmd: &Self::Command) -> Result<Decision<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The current schema version of one event type. Each type has its own,
    /// so changing one event's shape bumps only that event's version; stored
    /// envelopes keep the version they were written with.
    fn event_version(_event_type: &str) -> u32 {
        1
    }

    /// Rewrites the `data` of `event_type` stored at `version` into the shape of
    /// `version + 1`. Called once per step from a stored version up to the
    /// current one, before the data is decoded, so `evolve` and the projections
    /// only ever see current shapes.
    fn upcast(event_type: &str, version: u32, _data: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
        Err(UpcastError::Missing { event_type: event_type.to_owned(), version })
    }
}

/// Brings `data`, stored as `event_type` at `version`, up to the type's
/// current version with `A::upcast`, one step at a time.
pub fn upcast_to_current<A: Aggregate>(
    event_type: &str,
    version: u32,
    mut data: serde_json::Value,
) -> Result<serde_json::Value, UpcastError> {
    let current = A::event_version(event_type);
    if version > current {
        return Err(UpcastError::Newer { event_type: event_type.to_owned(), version, current });
    }
    for step in version..current {
        data = A::upcast(event_type, step, data)?;
    }
    Ok(data)
}

/// Folds events into a state.
pub fn replay<A: Aggregate>(events: &[A::Event]) -> A::State {
    events.iter().fold(A::State::default(), A::evolve)
}

/// Given these past events, when this command arrives, then expect these events
/// (or this error).
#[cfg(test)]
pub(crate) fn check<A: Aggregate>(given: &[A::Event], when: A::Command, then: Result<Vec<A::Event>, A::Error>)
where
    A::Event: PartialEq + std::fmt::Debug,
    A::Error: PartialEq,
{
    let state = replay::<A>(given);
    let got = A::decide(&state, &when).map(|d| d.events);
    assert_eq!(got, then);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A test-only aggregate whose `Renamed` event changed shape twice (v1 had
    /// `name`, v2 split it into `first` and `last`, v3 added `title`) while
    /// `Created` stayed at v1.
    struct Person;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum PersonEvent {
        Created { id: String },
        Renamed { first: String, last: String, title: String },
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl DomainError for Never {
        fn code(&self) -> &'static str {
            "NEVER"
        }
    }

    impl Aggregate for Person {
        const NAME: &'static str = "person";
        type State = Vec<String>;
        type Command = ();
        type Event = PersonEvent;
        type Error = Never;

        fn decide(_: &Self::State, _: &()) -> Result<Decision<PersonEvent>, Never> {
            Ok(Decision::events(Vec::new()))
        }

        fn evolve(mut state: Self::State, event: &PersonEvent) -> Self::State {
            if let PersonEvent::Renamed { first, last, .. } = event {
                state.push(format!("{first} {last}"));
            }
            state
        }

        fn event_version(event_type: &str) -> u32 {
            if event_type == "Renamed" { 3 } else { 1 }
        }

        fn upcast(event_type: &str, version: u32, data: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
            let malformed = |detail: &str| UpcastError::Malformed {
                event_type: event_type.to_owned(),
                version,
                detail: detail.to_owned(),
            };
            match (event_type, version) {
                ("Renamed", 1) => {
                    let name = data["name"].as_str().ok_or_else(|| malformed("name"))?;
                    let (first, last) = name.split_once(' ').unwrap_or((name, ""));
                    Ok(serde_json::json!({ "first": first, "last": last }))
                }
                ("Renamed", 2) => {
                    let mut d = data;
                    d["title"] = serde_json::json!("");
                    Ok(d)
                }
                _ => Err(UpcastError::Missing { event_type: event_type.to_owned(), version }),
            }
        }
    }

    #[test]
    fn an_old_event_is_upcast_step_by_step_and_other_types_keep_their_version() {
        let v1 = serde_json::json!({ "name": "Ada Lovelace" });
        let current = upcast_to_current::<Person>("Renamed", 1, v1).unwrap();
        assert_eq!(current, serde_json::json!({ "first": "Ada", "last": "Lovelace", "title": "" }));
        // Created never changed: its v1 data is current as it is.
        let created = serde_json::json!({ "id": "p1" });
        assert_eq!(upcast_to_current::<Person>("Created", 1, created.clone()).unwrap(), created);
        assert_eq!(Person::event_version("Created"), 1);
    }

    #[test]
    fn a_newer_or_malformed_stored_event_is_an_error_not_a_guess() {
        let newer = upcast_to_current::<Person>("Renamed", 4, serde_json::json!({}));
        assert!(matches!(newer, Err(UpcastError::Newer { version: 4, current: 3, .. })));
        let broken = upcast_to_current::<Person>("Renamed", 1, serde_json::json!({ "nom": 1 }));
        assert!(matches!(broken, Err(UpcastError::Malformed { .. })));
    }
}
