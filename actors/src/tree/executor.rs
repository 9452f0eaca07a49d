//! Runs one command against one aggregate: load it (snapshot, then newer events),
//! `decide`, append the batch under the expected-sequence check, `evolve`. On a
//! conflict it reloads and decides again, a bounded number of times.

use crate::domain::aggregate::{Aggregate, Decision};
use crate::domain::tenant::Scope;
use crate::store::event_store::{
    EventStore, Stamp, StoreError, StoreErrorKind, Stored, aggregate_filter, batch_for, event_of,
};

/// An aggregate's state as of `version`, the stream sequence of its last event.
pub struct Loaded<A: Aggregate> {
    pub state: A::State,
    pub version: u64,
    /// Events applied since the last snapshot was written.
    pub since_snapshot: u64,
}

impl<A: Aggregate> Clone for Loaded<A> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), version: self.version, since_snapshot: self.since_snapshot }
    }
}

impl<A: Aggregate> std::fmt::Debug for Loaded<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("version", &self.version).finish_non_exhaustive()
    }
}

impl<A: Aggregate> Default for Loaded<A> {
    fn default() -> Self {
        Self { state: A::State::default(), version: 0, since_snapshot: 0 }
    }
}

pub fn snapshot_key<A: Aggregate>(scope: &Scope, id: &str) -> String {
    format!("{}.{}.{id}", scope.token(), A::NAME)
}

/// Loads an aggregate from its latest snapshot plus the events after it. A
/// point read of the aggregate's newest sequence comes first: an aggregate
/// with no events (every new record, message or registration) and one whose
/// snapshot is current need no read of the stream, whose ordered consumer
/// makes nats-server search the stream for the aggregate's subjects.
pub async fn load<A: Aggregate>(store: &EventStore, scope: &Scope, id: &str) -> Result<Loaded<A>, StoreError> {
    safe_id(id)?;
    let newest = store.last_seq_on(&aggregate_filter(scope, A::NAME, id)).await?;
    if newest == 0 {
        return Ok(Loaded::default());
    }
    let (version, state) = store.load_snapshot::<A::State>(&snapshot_key::<A>(scope, id)).await?.unwrap_or_default();
    let from = Loaded { state, version, since_snapshot: 0 };
    if version >= newest {
        return Ok(from);
    }
    fold(store, scope, id, from).await
}

/// Loads an aggregate with the same reads whatever it holds: the snapshot,
/// then the stream from it. Where reads must not tell whether an aggregate
/// exists (a login of an unknown email loads a decoy account that has no
/// events), `load`'s shortcut for an empty aggregate would tell it.
pub async fn load_uniform<A: Aggregate>(store: &EventStore, scope: &Scope, id: &str) -> Result<Loaded<A>, StoreError> {
    safe_id(id)?;
    let (version, state) = store.load_snapshot::<A::State>(&snapshot_key::<A>(scope, id)).await?.unwrap_or_default();
    fold(store, scope, id, Loaded { state, version, since_snapshot: 0 }).await
}

/// Brings a cached state up to date: one point read of the aggregate's newest
/// sequence, and a read of the newer events only if there are any. A load's
/// ordered consumer makes nats-server search the stream's blocks for the
/// aggregate's subjects, a cost that grows with the stream (during a login
/// flood it was half of nats-server's CPU; BENCHMARKS.md); a cached state that
/// is still current needs none of it.
pub async fn refresh<A: Aggregate>(
    store: &EventStore,
    scope: &Scope,
    id: &str,
    cached: Loaded<A>,
) -> Result<Loaded<A>, StoreError> {
    safe_id(id)?;
    if store.last_seq_on(&aggregate_filter(scope, A::NAME, id)).await? <= cached.version {
        return Ok(cached);
    }
    fold(store, scope, id, cached).await
}

/// An id becomes a subject token (and, in a filter, sits before a wildcard).
fn safe_id(id: &str) -> Result<(), StoreError> {
    if crate::domain::ids::is_safe_token(id) {
        Ok(())
    } else {
        Err(StoreError::new(StoreErrorKind::InvalidId, "unsafe aggregate id"))
    }
}

/// Loads an aggregate from its first event, ignoring any snapshot: what a load
/// costs without one, and a check that snapshot plus tail gives the same state.
pub async fn replay_all<A: Aggregate>(store: &EventStore, scope: &Scope, id: &str) -> Result<Loaded<A>, StoreError> {
    fold(store, scope, id, Loaded::default()).await
}

/// Applies the aggregate's events after `from.version` to `from`.
async fn fold<A: Aggregate>(
    store: &EventStore,
    scope: &Scope,
    id: &str,
    from: Loaded<A>,
) -> Result<Loaded<A>, StoreError> {
    let events = store.load(&aggregate_filter(scope, A::NAME, id), from.version).await?;
    apply_stored(from, &events)
}

/// Applies stored events (newer than `from.version`, in order) to `from`.
fn apply_stored<A: Aggregate>(mut from: Loaded<A>, events: &[Stored]) -> Result<Loaded<A>, StoreError> {
    from.since_snapshot += events.len() as u64;
    for stored in events {
        from.state = A::evolve(from.state, &event_of::<A>(&stored.envelope)?);
        from.version = stored.seq;
    }
    Ok(from)
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError<E: std::error::Error + 'static> {
    #[error("rejected: {0}")]
    Rejected(E),
    /// Someone else wrote first, after every retry (or a claim was already taken).
    #[error("conflict")]
    Conflict,
    /// The command's id was used before for a request with another digest.
    #[error("command id reused with a different request")]
    ReusedId,
    #[error("store: {0}")]
    Broken(StoreError),
}

pub struct Executed<A: Aggregate> {
    pub loaded: Loaded<A>,
    /// The stream sequence to wait for before reading one's own writes.
    pub seq: u64,
    /// The events this call appended (empty when the command was a retry).
    pub events: Vec<A::Event>,
    /// The command had been applied before (a retry with the same id and digest).
    pub replayed: bool,
}

/// After a duplicate append: the aggregate as the log has it now, and the first
/// stored event of the command `stamp` names. When the server said where the
/// duplicate landed (`seq`), that event is one point read beside a load; a
/// repeated batch is refused without its sequence, so then the whole history
/// is read once and serves for both.
async fn after_duplicate<A: Aggregate>(
    store: &EventStore,
    scope: &Scope,
    id: &str,
    stamp: &Stamp,
    seq: u64,
) -> Result<(Loaded<A>, Option<Stored>), StoreError> {
    let matches = |s: &Stored| s.envelope.command_id == stamp.command_id.as_str();
    if seq > 0
        && let Some(s) = store.get(seq).await?
        && matches(&s)
    {
        return Ok((load::<A>(store, scope, id).await?, Some(s)));
    }
    let history = store.load(&aggregate_filter(scope, A::NAME, id), 0).await?;
    let first = history.iter().find(|s| matches(s)).cloned();
    Ok((apply_stored(Loaded::default(), &history)?, first))
}

/// How often a conflicting command is decided again on fresh state.
const MAX_ATTEMPTS: usize = 3;

/// Decides and appends `cmd`. `loaded` is the cached state, if any. Decisions that
/// claim a unique key are not retried on conflict: the caller checks the claim.
pub async fn execute<A: Aggregate>(
    store: &EventStore,
    scope: &Scope,
    id: &str,
    mut loaded: Option<Loaded<A>>,
    stamp: &Stamp,
    cmd: &A::Command,
    snapshot_every: u64,
) -> Result<Executed<A>, ExecError<A::Error>> {
    for _ in 0..MAX_ATTEMPTS {
        let mut current = match loaded.take() {
            Some(l) => l,
            None => load::<A>(store, scope, id).await.map_err(ExecError::Broken)?,
        };
        let Decision { events, reservations } = A::decide(&current.state, cmd).map_err(ExecError::Rejected)?;
        if events.is_empty() {
            let seq = current.version;
            return Ok(Executed { loaded: current, seq, events, replayed: false });
        }
        let batch =
            batch_for::<A>(scope, id, current.version, stamp, &events, &reservations).map_err(ExecError::Broken)?;
        match store.append(&stamp.command_id, batch).await {
            Ok(appended) if appended.duplicate => {
                // The same command id was applied before: it is a retry only if the
                // request is the same; then report what it did, from the log.
                let (fresh, first) = after_duplicate::<A>(store, scope, id, stamp, appended.last_seq)
                    .await
                    .map_err(ExecError::Broken)?;
                if first.is_some_and(|f| f.envelope.request_digest != stamp.digest) {
                    return Err(ExecError::ReusedId);
                }
                let seq = appended.last_seq.max(fresh.version);
                return Ok(Executed { loaded: fresh, seq, events: Vec::new(), replayed: true });
            }
            Ok(appended) => {
                for e in &events {
                    current.state = A::evolve(current.state, e);
                }
                // A batch is stored contiguously, the aggregate's events first and the
                // claims after them.
                current.version = appended.last_seq - reservations.len() as u64;
                current.since_snapshot += events.len() as u64;
                if snapshot_every > 0 && current.since_snapshot >= snapshot_every {
                    match store.save_snapshot(&snapshot_key::<A>(scope, id), current.version, &current.state).await {
                        Ok(()) => current.since_snapshot = 0,
                        // A snapshot is only a cache; the log stays complete without it.
                        Err(e) => tracing::warn!(error = %e, "could not write snapshot"),
                    }
                }
                return Ok(Executed { loaded: current, seq: appended.last_seq, events, replayed: false });
            }
            Err(e) if e.kind() == StoreErrorKind::Conflict => {
                if !reservations.is_empty() || !A::DECIDE_AGAIN_ON_CONFLICT {
                    return Err(ExecError::Conflict);
                }
                tracing::debug!(aggregate = A::NAME, "append conflict, deciding again on fresh state");
            }
            Err(e) => return Err(ExecError::Broken(e)),
        }
    }
    Err(ExecError::Conflict)
}
