//! The revocation set the edge consults on every signed-in request: the ids of
//! sessions revoked recently enough that an access token of theirs could still
//! be unexpired. It is fed by the log alone: an ordered consumer on `EVENTS`
//! for `SessionRevoked`, started at the oldest revocation that still matters
//! (now less the access tokens' lifetime), so a restarted node knows every
//! revocation that can affect it before it serves.

use std::collections::HashMap;
use std::sync::RwLock;

use actors::store::event_store::Stored;
use async_nats::jetstream::consumer::DeliverPolicy;

use super::feed::{Feed, Marks};

/// The events that end a session.
const FILTER: &str = "evt.*.account.*.SessionRevoked";

pub struct Revocations {
    /// Revoked session ids, with when the revocation was read (Unix seconds).
    revoked: RwLock<HashMap<String, i64>>,
    marks: Marks,
    /// How long a revocation is kept: the access tokens' lifetime plus leeway.
    keep_secs: i64,
}

impl Revocations {
    pub fn new(token_ttl_secs: u64) -> Self {
        Self { revoked: RwLock::default(), marks: Marks::default(), keep_secs: token_ttl_secs as i64 + 60 }
    }

    pub fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked.read().expect("the revocation set's lock is never poisoned").contains_key(session_id)
    }
}

impl Feed for Revocations {
    const NAME: &'static str = "revocations";

    fn filter(&self) -> &'static str {
        FILTER
    }

    /// The oldest revocation that still matters: now less the access tokens'
    /// lifetime (each reconnection starts again from there).
    fn start(&self) -> DeliverPolicy {
        DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - time::Duration::seconds(self.keep_secs),
        }
    }

    fn apply(&self, stored: Stored) {
        let Some(sid) = stored.envelope.data.get("session_id").and_then(|v| v.as_str()) else {
            tracing::warn!(seq = stored.seq, "a SessionRevoked event without a session id");
            return;
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut set = self.revoked.write().expect("the revocation set's lock is never poisoned");
        // Entries older than any token they could affect leave as new ones come.
        set.retain(|_, at| *at + self.keep_secs >= now);
        set.insert(sid.to_owned(), now);
    }

    fn marks(&self) -> &Marks {
        &self.marks
    }
}
