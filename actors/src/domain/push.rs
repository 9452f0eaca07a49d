//! Push: messages a tenant's server side sends to its clients, and the event
//! types the tenant forwards to them. Both are events like any other change;
//! the push reactor (`node/src/outbound/push.rs`) turns them into messages on
//! `push.{tenant}.{topic}` in the NATS account of push clients.
//!
//! Each published message is an aggregate of its own (`push.{message id}`,
//! the id derived from the command's), so publishing never waits for another
//! publish; a tenant's forwarding choice is the one aggregate `push.settings`.
//! A payload is sealed under the tenant's key: the log's readers do not see
//! what only the tenant's clients should, and deleting the tenant erases it.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError};

/// The id of a tenant's forwarding settings.
pub const SETTINGS_ID: &str = "settings";
/// The first level of the topics forwarded events appear on
/// (`events/{EventType}`); no message may be published under it.
pub const EVENTS_LEVEL: &str = "events";
/// At most this many bytes of payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// At most this many event types forwarded.
pub const MAX_FORWARDED: usize = 100;
const MAX_TOPIC: usize = 200;
const MAX_LEVELS: usize = 16;
const MAX_LEVEL: usize = 64;

/// A topic as clients see it over MQTT: levels separated by `/`, each 1 to 64
/// of `A-Z a-z 0-9 _ -`, at most 16 levels and 200 characters. Over NATS the
/// levels are subject tokens (`push.acme.orders.42` for `orders/42`). Nothing
/// that means something to NATS or MQTT (`.`, `*`, `>`, `+`, `#`, spaces, an
/// empty level) gets through, so a topic never widens into a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(String);

impl Topic {
    pub fn parse(raw: &str) -> Result<Self, PushError> {
        let bad = |why: &str| Err(PushError::InvalidTopic(why.to_owned()));
        if raw.is_empty() {
            return bad("a topic is not empty");
        }
        if raw.len() > MAX_TOPIC {
            return bad("a topic is at most 200 characters");
        }
        let levels: Vec<&str> = raw.split('/').collect();
        if levels.len() > MAX_LEVELS {
            return bad("a topic has at most 16 levels");
        }
        for level in &levels {
            if level.is_empty() {
                return bad("a topic has no empty level (no leading, trailing or double `/`)");
            }
            if level.len() > MAX_LEVEL {
                return bad("a topic level is at most 64 characters");
            }
            if !level.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return bad("a topic level holds only A-Z, a-z, 0-9, `_` and `-` (no wildcards, dots or spaces)");
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// A topic a message may be published on: not under `events/`.
    pub fn for_message(raw: &str) -> Result<Self, PushError> {
        let topic = Self::parse(raw)?;
        if topic.0.split('/').next() == Some(EVENTS_LEVEL) {
            return Err(PushError::InvalidTopic("topics under `events/` are for forwarded events".to_owned()));
        }
        Ok(topic)
    }

    /// The topic where a forwarded event of `event_type` appears.
    pub fn for_event(event_type: &str) -> Result<Self, PushError> {
        Self::parse(&format!("{EVENTS_LEVEL}/{event_type}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's NATS subject tokens: `orders.42`.
    pub fn subject_tokens(&self) -> String {
        self.0.replace('/', ".")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessagePublished {
    /// Levels separated by `/`, as an MQTT client subscribes to it.
    pub topic: String,
    /// The payload sealed under the tenant's key (`{"kid", "n", "c"}`); open
    /// it is the UTF-8 text that was published.
    pub payload: serde_json::Value,
    /// Unix seconds.
    pub at: i64,
    /// Kept as the topic's retained message for MQTT clients that subscribe
    /// later (an empty payload clears it). Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ForwardingSet {
    /// The event types forwarded to `push.{tenant}.events.{type}`, sorted.
    pub types: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum PushEvent {
    /// A message for the tenant's push clients on `topic`.
    MessagePublished(MessagePublished),
    /// The tenant chose which of its event types its push clients receive.
    ForwardingSet(ForwardingSet),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushState {
    /// For a message: whether it was published.
    pub published: bool,
    /// For the settings: the event types forwarded.
    pub forwarded: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PushCommand {
    /// `payload` sealed by the caller; `size` is its length in clear.
    Publish { topic: Topic, payload: serde_json::Value, size: usize, at: i64, retain: bool },
    /// `known` are the event types that exist; `types` must be among them.
    SetForwarding { types: BTreeSet<String>, known: BTreeSet<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("the payload is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("at most 100 event types may be forwarded")]
    TooManyTypes,
    #[error("unknown event type {0}")]
    UnknownEventType(String),
    #[error("a message with this id was published")]
    Published,
}

impl DomainError for PushError {
    fn code(&self) -> &'static str {
        match self {
            PushError::Published => "CONFLICT",
            _ => "BAD_USER_INPUT",
        }
    }
}

pub struct Push;

impl Aggregate for Push {
    const NAME: &'static str = "push";
    type State = PushState;
    type Command = PushCommand;
    type Event = PushEvent;
    type Error = PushError;

    fn decide(state: &PushState, cmd: &PushCommand) -> Result<Decision<PushEvent>, PushError> {
        match cmd {
            PushCommand::Publish { topic, payload, size, at, retain } => {
                if *size > MAX_PAYLOAD {
                    return Err(PushError::PayloadTooLarge);
                }
                if state.published {
                    return Err(PushError::Published);
                }
                let published = MessagePublished {
                    topic: topic.as_str().to_owned(),
                    payload: payload.clone(),
                    at: *at,
                    retain: *retain,
                };
                Ok(Decision::events(vec![PushEvent::MessagePublished(published)]))
            }
            PushCommand::SetForwarding { types, known } => {
                if types.len() > MAX_FORWARDED {
                    return Err(PushError::TooManyTypes);
                }
                if let Some(unknown) = types.iter().find(|t| !known.contains(*t)) {
                    return Err(PushError::UnknownEventType(unknown.clone()));
                }
                if *types == state.forwarded {
                    return Ok(Decision::events(Vec::new()));
                }
                let set = ForwardingSet { types: types.iter().cloned().collect() };
                Ok(Decision::events(vec![PushEvent::ForwardingSet(set)]))
            }
        }
    }

    fn evolve(mut state: PushState, event: &PushEvent) -> PushState {
        match event {
            PushEvent::MessagePublished(_) => state.published = true,
            PushEvent::ForwardingSet(f) => state.forwarded = f.types.iter().cloned().collect(),
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::check;

    #[test]
    fn topics_are_levels_of_safe_characters_and_never_wildcards() {
        for good in ["orders", "orders/42", "a-b/c_d/E9", &["x"; 16].join("/")] {
            assert_eq!(Topic::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(Topic::parse("orders/42").unwrap().subject_tokens(), "orders.42");
        let long_level = "x".repeat(65);
        let long = ["abcdefghij"; 20].join("/");
        let deep = ["x"; 17].join("/");
        for bad in [
            "",
            "/",
            "orders/",
            "/orders",
            "a//b",
            "orders.42",
            "orders/*",
            "orders/>",
            "orders/+",
            "orders/#",
            "a b",
            "é",
            "a\nb",
            "a\0b",
            &long_level,
            &long,
            &deep,
        ] {
            assert!(matches!(Topic::parse(bad), Err(PushError::InvalidTopic(_))), "{bad:?}");
        }
        assert!(Topic::for_message("events/AccountRegistered").is_err());
        assert!(Topic::for_message("eventsx/1").is_ok());
        assert_eq!(Topic::for_event("AccountRegistered").unwrap().subject_tokens(), "events.AccountRegistered");
    }

    #[test]
    fn a_message_is_published_once_and_within_its_size() {
        let publish = |size| PushCommand::Publish {
            topic: Topic::parse("orders/42").unwrap(),
            payload: serde_json::json!({ "kid": "k" }),
            size,
            at: 7,
            retain: false,
        };
        let published = PushEvent::MessagePublished(MessagePublished {
            topic: "orders/42".into(),
            payload: serde_json::json!({ "kid": "k" }),
            at: 7,
            retain: false,
        });
        check::<Push>(&[], publish(MAX_PAYLOAD), Ok(vec![published.clone()]));
        check::<Push>(&[], publish(MAX_PAYLOAD + 1), Err(PushError::PayloadTooLarge));
        check::<Push>(&[published], publish(1), Err(PushError::Published));
    }

    #[test]
    fn forwarding_names_known_types_a_bounded_number_and_repeats_nothing() {
        let known: BTreeSet<String> = (0..200).map(|i| format!("T{i}")).collect();
        let set = |types: &[&str]| PushCommand::SetForwarding {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            known: known.clone(),
        };
        let chosen = PushEvent::ForwardingSet(ForwardingSet { types: vec!["T1".into(), "T2".into()] });
        check::<Push>(&[], set(&["T2", "T1"]), Ok(vec![chosen.clone()]));
        check::<Push>(&[chosen], set(&["T1", "T2"]), Ok(vec![]));
        check::<Push>(&[], set(&["T1", "Nope"]), Err(PushError::UnknownEventType("Nope".into())));
        let many: Vec<String> = (0..101).map(|i| format!("T{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        check::<Push>(&[], set(&many), Err(PushError::TooManyTypes));
    }
}
