//! What every actor of the tree shares, and how an infrastructure failure
//! becomes a command's reply.

use crate::command::CommandFailure;
use crate::hasher::Hasher;
use crate::store::event_store::EventStore;
use crate::store::seal::KeyRing;

/// What every actor in the tree shares.
#[derive(Clone, Debug)]
pub struct Deps {
    pub store: EventStore,
    pub keys: KeyRing,
    pub hasher: Hasher,
    /// Write a snapshot after this many events on one aggregate (0: never).
    pub snapshot_every: u64,
    /// How many aggregates of one kind a tenant's actor keeps in memory.
    pub cache_per_tenant: usize,
    pub accounts: AccountPolicy,
    /// The module versions this node serves, loaded once at start.
    pub modules: std::sync::Arc<crate::domain::manifest::Registry>,
}

/// The account lifecycle's limits, from the node's configuration.
#[derive(Clone, Debug)]
pub struct AccountPolicy {
    /// How long a verification code and link stay valid.
    pub verification_ttl_secs: i64,
    /// The least time between two verification mails for one account.
    pub resend_interval_secs: i64,
    /// How long a refresh token works unused; each refresh starts it again.
    pub refresh_ttl_secs: i64,
    /// Open sessions per account; a new one beyond it ends the least recently used.
    pub max_sessions: usize,
    /// How long a password reset link stays valid.
    pub reset_ttl_secs: i64,
    /// How long an invitation stays valid.
    pub invitation_ttl_secs: i64,
}

impl Default for AccountPolicy {
    fn default() -> Self {
        Self {
            verification_ttl_secs: 24 * 3600,
            resend_interval_secs: 60,
            refresh_ttl_secs: 30 * 86_400,
            max_sessions: 50,
            reset_ttl_secs: 1800,
            invitation_ttl_secs: 7 * 86_400,
        }
    }
}

/// Infrastructure failed while doing `what`: the detail goes to the log, the
/// caller gets nothing of it: `UNAVAILABLE` when the event log could not be
/// reached (a NATS server lost, a leader being elected: a retry under the same
/// command id is safe), else `INTERNAL`.
pub fn broken<E: std::fmt::Display + 'static>(what: &str, e: E) -> CommandFailure {
    tracing::error!(error = %e, "{what}");
    let unreachable = (&e as &dyn std::any::Any)
        .downcast_ref::<crate::store::event_store::StoreError>()
        .is_some_and(|e| e.kind() == crate::store::event_store::StoreErrorKind::Unavailable);
    if unreachable { CommandFailure::unavailable() } else { CommandFailure::internal() }
}
