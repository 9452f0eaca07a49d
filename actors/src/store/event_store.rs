//! The event store: the only code that knows JetStream subjects, headers and the
//! `EVENTS` stream. Appends are atomic batches guarded by expected subject
//! sequences and deduplicated by `Nats-Msg-Id`; loads read one aggregate's subjects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::aggregate::{Aggregate, Reservation, upcast_to_current};
use crate::domain::ids::{CommandId, is_safe_token};
use crate::domain::tenant::Scope;
use crate::store::seal::Sealed;

pub const STREAM: &str = "EVENTS";
pub const SNAPSHOTS: &str = "snapshots";
pub const KEYS: &str = "keys";
/// The header that names the subject filter the expected sequence applies to.
pub const EXPECTED_SUBJECT_HEADER: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
/// How long the server remembers a `Nats-Msg-Id`: retries inside it are applied once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);

/// One event as it is stored: the envelope every NATS subscriber can decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// A unique id for this event (UUID v7).
    pub id: String,
    /// The event type, also the last subject token.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The tenant slug, or `_system` for the platform.
    pub tenant: String,
    pub aggregate: String,
    pub aggregate_id: String,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    /// The id of the command that produced the event.
    pub command_id: String,
    /// A keyed digest (HMAC-SHA256 under the tenant's data key, 32 hex
    /// characters) of the command's principal and request without its secrets:
    /// a later command with the same id and another digest is refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_digest: String,
    /// The version of this event type's `data` shape when it was written. Each
    /// type has its own; readers upcast older versions (see `Aggregate::upcast`).
    pub schema_version: u32,
    /// Who asked for the command: absent for anonymous requests (registration,
    /// sign-in, resets, accepting an invitation) and for what the system does
    /// by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<EventActor>,
    /// Where the command came from: `{"address": ..., "user_agent": ...}` as
    /// JSON, sealed under the acting account's person key (so erasing the
    /// person erases it), or under the tenant's key for tokens and anonymous
    /// requests. Absent for commands that did not come through the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Sealed>,
    pub data: serde_json::Value,
}

/// Who caused an event: an account of `tenant` (`_system` for a platform
/// administrator), or an access token of `tenant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventActor {
    pub kind: ActorKind,
    pub id: String,
    pub tenant: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Account,
    Token,
}

/// An envelope together with its place in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub envelope: Envelope,
}

pub fn event_subject(scope: &Scope, aggregate: &str, id: &str, event_type: &str) -> String {
    format!("evt.{}.{aggregate}.{id}.{event_type}", scope.token())
}

pub fn aggregate_filter(scope: &Scope, aggregate: &str, id: &str) -> String {
    format!("evt.{}.{aggregate}.{id}.*", scope.token())
}

/// Every event of a scope.
pub fn scope_filter(scope: &Scope) -> String {
    format!("evt.{}.>", scope.token())
}

/// Every event of every aggregate of one kind in a scope.
pub fn kind_filter(scope: &Scope, aggregate: &str) -> String {
    format!("evt.{}.{aggregate}.*.*", scope.token())
}

/// The tokens of a subject of the event log, `evt.{tenant}.{aggregate}.{id}.{EventType}`,
/// as stored: nothing in them is parsed or checked beyond the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSubject<'a> {
    pub tenant: &'a str,
    pub aggregate: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
}

impl<'a> EventSubject<'a> {
    /// Splits an event subject into its tokens; `None` for a subject of any other shape.
    pub fn parse(subject: &'a str) -> Option<Self> {
        let mut tokens = subject.split('.');
        let (Some("evt"), Some(tenant), Some(aggregate), Some(aggregate_id), Some(event_type), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return None;
        };
        Some(Self { tenant, aggregate, aggregate_id, event_type })
    }

    /// Whether an envelope names the tenant, aggregate, id and type of the subject it
    /// was stored on. Anyone allowed to publish on `evt.>` chooses both, so a reader
    /// that trusts one must check the other: the subject is what NATS permissions and
    /// the append's expected-sequence checks apply to.
    pub fn agrees_with(&self, envelope: &Envelope) -> bool {
        envelope.tenant == self.tenant
            && envelope.aggregate == self.aggregate
            && envelope.aggregate_id == self.aggregate_id
            && envelope.event_type == self.event_type
    }
}

/// The command an append belongs to: its id (the `Nats-Msg-Id` of its events)
/// and the digest of its request (stored in each envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub command_id: CommandId,
    pub digest: String,
    /// Who asked, and from where (sealed): copied into each envelope.
    pub actor: Option<EventActor>,
    pub client: Option<Sealed>,
}

impl Stamp {
    /// The same origin under another command id: for an append a command makes
    /// on its own behalf (a sign-in's session, a tenant's first owner).
    pub fn again(&self, command_id: CommandId) -> Self {
        Self { command_id, ..self.clone() }
    }
}

/// One message of an atomic append.
#[derive(Debug, Clone)]
pub struct Pending {
    pub subject: String,
    pub filter: String,
    /// The subject sequence the filter must be at; `None` skips the check (used for
    /// the second and later events of one aggregate in a batch: the first one's
    /// check already covers them, because the batch lands whole or not at all).
    pub expected_seq: Option<u64>,
    pub envelope: Envelope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream sequence of the last message of the batch; 0 when a repeated
    /// batch was refused as a duplicate without telling where the first one landed.
    pub last_seq: u64,
    /// The server had already stored this command's events (same `Nats-Msg-Id`).
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// An expected subject sequence did not match: someone else wrote first.
    Conflict,
    /// NATS could not be reached or answered with an error.
    Unavailable,
    /// Stored data could not be decoded.
    Corrupt,
    /// An id would have produced an unsafe subject.
    InvalidId,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct StoreError {
    kind: StoreErrorKind,
    detail: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

/// JetStream's `err_code` for "atomic publish batch contains duplicate message id".
const BATCH_DUPLICATE_MSG_ID: u64 = 10201;

fn jetstream_error_code(e: &jetstream::context::PublishError) -> Option<u64> {
    std::error::Error::source(e)?.downcast_ref::<jetstream::Error>().map(|j| j.error_code().0)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, e.to_string())
}

/// The longest a consumer's pull request waits on the server, and so how soon
/// a follower notices that the server holding its consumer is gone: with no
/// heartbeat for two halves of it, an ordered consumer is made again on
/// another server (the client's default, 30 s, left a projector stalled that
/// long after a NATS server was lost).
pub const FAILOVER_EXPIRY: Duration = Duration::from_secs(2);

/// How long a command's JetStream requests (an append's acknowledgement, a
/// point read, a load's consumer) wait for their answer, shorter than the
/// client's five seconds. While the servers of a cluster elect a new leader
/// for a stream, requests go unanswered: a shorter wait lets the caller (a
/// retry under the same command id) reach the new leader sooner. An append
/// that timed out may still have landed; its command id makes the retry a
/// no-op.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the store's JetStream context waits for an answer (creating a
/// stream or bucket, a bucket's reads and writes).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream configuration from DESIGN.md: file storage, atomic batches, no delete
/// or purge, direct gets for point reads, kept forever.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["evt.>".to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        allow_atomic_publish: true,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Cheap to clone: every tenant tree and every command task holds one, and the
/// handles inside (two streams' cached info, the JetStream context) are kilobytes
/// of allocations each (BENCHMARKS.md, G).
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    snapshots: kv::Store,
    acks: AckClock,
    reads: std::sync::atomic::AtomicU64,
    /// Deletions of loads' consumers still running.
    cleanup: tokio_util::task::TaskTracker,
}

/// When this node received the acknowledgement of each event it appended, until
/// the local projector takes it: the start of "from ack to read model", the
/// projection lag a writer waiting for read-your-writes sees. Shared by every
/// clone of the store; events appended by other nodes are not in it.
#[derive(Clone, Default)]
pub struct AckClock {
    acked: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// Acks remembered at most (≈ 3 MiB): if the projector stops taking them, new
/// ones are not recorded rather than memory growing.
const ACK_CLOCK_CAPACITY: usize = 100_000;

impl AckClock {
    /// Records that the events `first..=last` were acknowledged now.
    pub fn acked(&self, first: u64, last: u64) {
        let now = Instant::now();
        let mut acked = self.acked.lock().expect("ack clock lock");
        for seq in first..=last {
            if acked.len() >= ACK_CLOCK_CAPACITY {
                return;
            }
            acked.insert(seq, now);
        }
    }

    /// When `seq` was acknowledged here, if it was; forgets it.
    pub fn take(&self, seq: u64) -> Option<Instant> {
        self.acked.lock().expect("ack clock lock").remove(&seq)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.acked.lock().expect("ack clock lock").len()
    }
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot<S> {
    seq: u64,
    state: S,
}

impl EventStore {
    /// Creates (or updates) the `EVENTS` stream and the `snapshots` and `keys`
    /// buckets, and returns the store with the `keys` bucket for the key ring.
    pub async fn open(client: async_nats::Client, replicas: usize) -> Result<(Self, kv::Store), StoreError> {
        // The context's own wait covers setting up streams and buckets, which
        // on a NATS cluster that is still forming takes longer than a
        // command's requests may (`JETSTREAM_TIMEOUT`).
        let mut js = jetstream::new(client.clone());
        js.set_timeout(SETUP_TIMEOUT);
        js.create_or_update_stream(stream_config(replicas)).await.map_err(unavailable)?;
        let stream = js.get_stream(STREAM).await.map_err(unavailable)?;
        let snapshots = open_bucket(&js, SNAPSHOTS, replicas).await?;
        let keys = open_bucket(&js, KEYS, replicas).await?;
        let inner = StoreInner {
            client,
            js,
            stream,
            snapshots,
            acks: AckClock::default(),
            reads: Default::default(),
            cleanup: tokio_util::task::TaskTracker::new(),
        };
        Ok((Self { inner: Arc::new(inner) }, keys))
    }

    /// Waits for the clean-up this store (and its clones) started; call it
    /// once the store is no longer used, before the NATS connection closes.
    pub async fn close(&self) {
        self.inner.cleanup.close();
        self.inner.cleanup.wait().await;
    }

    /// The ack times of the events appended through this store (and its clones).
    pub fn acks(&self) -> AckClock {
        self.inner.acks.clone()
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Appends the messages as one atomic batch: all land, or none. Each message is
    /// checked against its own expected subject sequence, and carries
    /// `Nats-Msg-Id = {command_id}:{n}` so a retried command is stored once.
    pub async fn append(&self, command_id: &CommandId, batch: Vec<Pending>) -> Result<Appended, StoreError> {
        let n = batch.len();
        if n == 0 {
            return Err(StoreError::new(StoreErrorKind::InvalidId, "empty batch"));
        }
        let batch_id = uuid::Uuid::new_v4().simple().to_string();
        let mut commit = None;
        for (i, p) in batch.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, format!("{command_id}:{}", i + 1).as_str());
            if let Some(expected) = p.expected_seq {
                headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
                headers.insert(EXPECTED_SUBJECT_HEADER, p.filter.as_str());
            }
            if n > 1 {
                headers.insert(NATS_BATCH_ID, batch_id.as_str());
                headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            }
            let payload =
                serde_json::to_vec(&p.envelope).map_err(|e| StoreError::new(StoreErrorKind::Corrupt, e.to_string()))?;
            if i + 1 < n {
                // Leading messages go out as plain core publishes; only the commit is
                // acknowledged, and it reports the fate of the whole batch.
                self.inner
                    .client
                    .publish_with_headers(p.subject, headers, payload.into())
                    .await
                    .map_err(unavailable)?;
            } else {
                if n > 1 {
                    headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
                }
                commit = Some(
                    self.inner
                        .js
                        .publish_with_headers(p.subject, headers, payload.into())
                        .await
                        .map_err(unavailable)?,
                );
            }
        }
        let acked = tokio::time::timeout(JETSTREAM_TIMEOUT, commit.expect("the last message is the commit"))
            .await
            .map_err(|_| unavailable("no acknowledgement of the append in time"))?;
        match acked {
            Ok(ack) => {
                if !ack.duplicate {
                    self.inner.acks.acked(ack.sequence.saturating_sub(n as u64 - 1), ack.sequence);
                }
                Ok(Appended { last_seq: ack.sequence, duplicate: ack.duplicate })
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(StoreError::new(StoreErrorKind::Conflict, e.to_string()))
            }
            // The server checks a batch's message ids before its expected sequences,
            // and refuses a batch that repeats one instead of acking it as a
            // duplicate: this command was stored before. Its sequence is not in the
            // answer; the caller reloads the aggregate to learn it.
            Err(e) if jetstream_error_code(&e) == Some(BATCH_DUPLICATE_MSG_ID) => {
                Ok(Appended { last_seq: 0, duplicate: true })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Reads one aggregate's events after `after_seq`, in order, through an ordered
    /// consumer that is deleted as soon as it has delivered the last one. Left
    /// alone, async-nats gives it 30 s of inactivity before the server removes it,
    /// and meanwhile nats-server matches every new event against it (activating
    /// 100 tenants left 100-270 of them on `EVENTS`). A consumer rather than
    /// batched direct gets: for the usual case of an account's events spread
    /// among other tenants', the server would count the pending events again
    /// for each get.
    pub async fn load(&self, filter: &str, after_seq: u64) -> Result<Vec<Stored>, StoreError> {
        self.inner.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let created = self.inner.stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after_seq + 1 },
            max_expires: FAILOVER_EXPIRY,
            ..Default::default()
        });
        let consumer = tokio::time::timeout(JETSTREAM_TIMEOUT, created)
            .await
            .map_err(|_| unavailable("no answer to a load's consumer in time"))?
            .map_err(unavailable)?;
        let name = consumer.cached_info().name.clone();
        let pending = consumer.cached_info().num_pending;
        let mut out = Vec::with_capacity(pending as usize);
        if pending > 0 {
            let mut messages = consumer.messages().await.map_err(unavailable)?;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(unavailable)?;
                let info = msg.info().map_err(unavailable)?;
                let (seq, left) = (info.stream_sequence, info.pending);
                out.push(decode(seq, &msg.payload)?);
                if left == 0 {
                    break;
                }
            }
        }
        // Off the caller's path: an activation should not wait for the clean-up.
        // The store owns the task, and `close` waits for it.
        let stream = self.inner.stream.clone();
        self.inner.cleanup.spawn(async move {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!(error = %e, "could not delete a load's consumer; it expires by itself");
            }
        });
        Ok(out)
    }

    /// The event stored at `seq`, if any (a point read).
    pub async fn get(&self, seq: u64) -> Result<Option<Stored>, StoreError> {
        self.inner.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.inner.stream.direct_get(seq).await {
            Ok(m) => decode(m.sequence, &m.payload).map(Some),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Reads of the log since start: point reads and loads (each a consumer),
    /// for tests that compare the work two paths do.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The last message stored on an exact subject, if any (a point read).
    pub async fn last_on_subject(&self, subject: &str) -> Result<Option<Stored>, StoreError> {
        self.direct_last(subject).await?.map(|m| decode(m.sequence, &m.payload)).transpose()
    }

    /// The sequence of the newest event on `filter`, which may end in a wildcard
    /// (0 when there is none): one point read, where a load needs a consumer.
    pub async fn last_seq_on(&self, filter: &str) -> Result<u64, StoreError> {
        Ok(self.direct_last(filter).await?.map_or(0, |m| m.sequence))
    }

    async fn direct_last(
        &self,
        subject: &str,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, StoreError> {
        self.inner.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let got = tokio::time::timeout(JETSTREAM_TIMEOUT, self.inner.stream.direct_get_last_for_subject(subject))
            .await
            .map_err(|_| unavailable("no answer to a point read in time"))?;
        match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The sequence of the newest event in the stream (0 when empty).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        let mut s = self.inner.stream.clone();
        let info = s.info().await.map_err(unavailable)?;
        Ok(info.state.last_sequence)
    }

    /// Purges every snapshot of `scope` (a deleted tenant's): a snapshot is a
    /// cache of state, and a deleted tenant keeps none.
    pub async fn forget_snapshots(&self, scope: &Scope) -> Result<usize, StoreError> {
        let keys = crate::store::bucket_keys(&self.inner.snapshots, &format!("{}.>", scope.token()))
            .await
            .map_err(unavailable)?;
        for key in &keys {
            self.inner.snapshots.purge(key).await.map_err(unavailable)?;
        }
        Ok(keys.len())
    }

    pub async fn load_snapshot<S: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(u64, S)>, StoreError> {
        let Some(bytes) = self.inner.snapshots.get(key).await.map_err(unavailable)? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Snapshot<S>>(&bytes) {
            Ok(s) => Ok(Some((s.seq, s.state))),
            // A snapshot from an older state shape is only a cache: ignore it and
            // rebuild from the log.
            Err(_) => Ok(None),
        }
    }

    pub async fn save_snapshot<S: Serialize>(&self, key: &str, seq: u64, state: &S) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&Snapshot { seq, state })
            .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, e.to_string()))?;
        self.inner.snapshots.put(key, bytes.into()).await.map_err(unavailable)?;
        Ok(())
    }
}

async fn open_bucket(js: &jetstream::Context, bucket: &str, replicas: usize) -> Result<kv::Store, StoreError> {
    match js.get_key_value(bucket).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.to_owned(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(unavailable),
    }
}

pub fn decode(seq: u64, payload: &[u8]) -> Result<Stored, StoreError> {
    let envelope: Envelope = serde_json::from_slice(payload)
        .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, format!("event {seq}: {e}")))?;
    Ok(Stored { seq, envelope })
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC timestamps always format")
}

/// Builds the envelope of a domain event.
pub fn envelope<A: Aggregate>(scope: &Scope, aggregate_id: &str, stamp: &Stamp, event: &A::Event) -> Envelope {
    let mut v = serde_json::to_value(event).expect("events serialise");
    let event_type = v["type"].as_str().expect("events are tagged with `type`").to_owned();
    let data = v["data"].take();
    Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        schema_version: A::event_version(&event_type),
        event_type,
        tenant: scope.token().to_owned(),
        aggregate: A::NAME.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        occurred_at: now_rfc3339(),
        command_id: stamp.command_id.as_str().to_owned(),
        request_digest: stamp.digest.clone(),
        actor: stamp.actor.clone(),
        client: stamp.client.clone(),
        data,
    }
}

/// Decodes the domain event inside an envelope, upcasting data stored in an
/// older version of its type's shape first.
pub fn event_of<A: Aggregate>(env: &Envelope) -> Result<A::Event, StoreError> {
    let data = upcast_to_current::<A>(&env.event_type, env.schema_version, env.data.clone())
        .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, e.to_string()))?;
    let tagged = serde_json::json!({ "type": env.event_type, "data": data });
    serde_json::from_value(tagged).map_err(|e| StoreError::new(StoreErrorKind::Corrupt, e.to_string()))
}

/// Turns a decision into the messages of one atomic batch: the aggregate's events,
/// each expecting the previous one, then the claims, each expecting an empty subject.
pub fn batch_for<A: Aggregate>(
    scope: &Scope,
    aggregate_id: &str,
    version: u64,
    stamp: &Stamp,
    events: &[A::Event],
    reservations: &[Reservation],
) -> Result<Vec<Pending>, StoreError> {
    if !is_safe_token(aggregate_id) {
        return Err(StoreError::new(StoreErrorKind::InvalidId, "unsafe aggregate id"));
    }
    let filter = aggregate_filter(scope, A::NAME, aggregate_id);
    let mut out = Vec::with_capacity(events.len() + reservations.len());
    for (i, e) in events.iter().enumerate() {
        let envelope = envelope::<A>(scope, aggregate_id, stamp, e);
        out.push(Pending {
            subject: event_subject(scope, A::NAME, aggregate_id, &envelope.event_type),
            filter: filter.clone(),
            expected_seq: (i == 0).then_some(version),
            envelope,
        });
    }
    for r in reservations {
        if !is_safe_token(&r.key) {
            return Err(StoreError::new(StoreErrorKind::InvalidId, "unsafe claim key"));
        }
        out.push(Pending {
            subject: event_subject(scope, r.aggregate, &r.key, r.event_type),
            filter: aggregate_filter(scope, r.aggregate, &r.key),
            expected_seq: Some(r.expected_seq),
            envelope: Envelope {
                id: uuid::Uuid::now_v7().to_string(),
                event_type: r.event_type.to_owned(),
                tenant: scope.token().to_owned(),
                aggregate: r.aggregate.to_owned(),
                aggregate_id: r.key.clone(),
                occurred_at: now_rfc3339(),
                command_id: stamp.command_id.as_str().to_owned(),
                request_digest: stamp.digest.clone(),
                schema_version: r.version,
                actor: stamp.actor.clone(),
                client: stamp.client.clone(),
                data: r.data.clone(),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme_envelope(aggregate_id: &str, event_type: &str) -> Envelope {
        Envelope {
            id: "e1".into(),
            event_type: event_type.into(),
            tenant: "acme".into(),
            aggregate: "account".into(),
            aggregate_id: aggregate_id.into(),
            occurred_at: now_rfc3339(),
            command_id: "c1".into(),
            request_digest: String::new(),
            schema_version: 1,
            actor: None,
            client: None,
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn an_event_subject_splits_into_its_four_tokens_and_nothing_else_does() {
        let tenant = Scope::parse_token("acme").unwrap();
        let subject = event_subject(&tenant, "account", "a1", "AccountRegistered");
        assert_eq!(
            EventSubject::parse(&subject),
            Some(EventSubject {
                tenant: "acme",
                aggregate: "account",
                aggregate_id: "a1",
                event_type: "AccountRegistered"
            })
        );
        for other in ["", "evt", "evt.acme.account.a1", "evt.acme.account.a1.X.Y", "cmd.acme.account.a1.X"] {
            assert_eq!(EventSubject::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn an_envelope_agrees_with_its_subject_only_when_every_token_matches() {
        let subject = EventSubject::parse("evt.acme.account.a1.AccountRegistered").unwrap();
        let envelope = acme_envelope("a1", "AccountRegistered");
        assert!(subject.agrees_with(&envelope));
        let forged = [
            Envelope { tenant: "globex".into(), ..envelope.clone() },
            Envelope { aggregate: "tenant".into(), ..envelope.clone() },
            acme_envelope("a2", "AccountRegistered"),
            acme_envelope("a1", "ProfileUpdated"),
        ];
        for env in forged {
            assert!(!subject.agrees_with(&env), "{env:?}");
        }
    }

    #[test]
    fn the_ack_clock_hands_each_ack_out_once_and_stays_bounded() {
        let clock = AckClock::default();
        clock.acked(5, 7);
        assert!(clock.take(4).is_none());
        assert!(clock.take(6).is_some());
        assert!(clock.take(6).is_none(), "taken once");
        assert_eq!(clock.len(), 2);
        // A projector that stopped taking acks cannot make it grow without bound.
        clock.acked(100, 100 + 2 * ACK_CLOCK_CAPACITY as u64);
        assert_eq!(clock.len(), ACK_CLOCK_CAPACITY);
    }
}
