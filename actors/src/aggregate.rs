//! The shape every aggregate shares: a pure `decide` and `evolve`, plus the
//! given/when/then helper the domain tests use.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A domain rule said no. The code is the GraphQL `extensions.code` the edge shows;
/// the message is safe to show to the caller.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> &'static str;
}

/// A uniqueness claim appended in the same atomic batch as the events, on its own
/// subject, with an expected subject sequence of 0: the server refuses the whole
/// batch if the key is already claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The aggregate name of the claim subject, for example `email`.
    pub aggregate: &'static str,
    /// The claimed key. It must be a safe subject token (the caller hashes it).
    pub key: String,
    pub event_type: &'static str,
    pub data: serde_json::Value,
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

    fn decide(state: &Self::State, cmd: &Self::Command) -> Result<Decision<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
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
