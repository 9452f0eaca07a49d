//! The projector: follows the `EVENTS` stream in order and writes read models into
//! SurrealDB, one database per tenant, each change in the same transaction as that
//! database's checkpoint. Mutations wait on its progress for read-your-writes.
//!
//! An event it can never apply (it does not decode, disagrees with its subject, or
//! holds a field its type cannot use) is set aside as a dead letter, so that one bad
//! event never holds back the read models of every tenant. It also blanks the
//! personal data a read model copied from a person whose key was destroyed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::domain::manifest::Registry;
use actors::domain::tenant::{PLATFORM_TOKEN, Scope, TenantId};
use actors::store::event_store::{AckClock, EventStore, EventSubject, STREAM, Stored, decode};
use actors::store::seal::{KeyRing, person_of_key};
use async_nats::jetstream::consumer;
use futures::future::Either;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::read_model::{DbChanges, DeadLetter, ReadError, ReadModel, Statement, db_name, record_id};

pub mod access;
pub mod accounts;
pub mod audit;
pub mod backups;
pub mod event;
pub mod modules;
pub mod tenants;

use event::{ERASED, Event, Projection, Unapplied, refused, statement};

/// Every projection: an aggregate's events reach the read models through its
/// entry here.
const PROJECTIONS: &[&dyn Projection] = &[
    &accounts::Accounts,
    &access::AccessControl,
    &tenants::Tenants,
    &modules::TenantModules,
    &modules::Records,
    &backups::TenantBackups,
];

/// How far the projector has got: the stream sequence of the last applied event.
#[derive(Clone)]
pub struct Progress {
    rx: watch::Receiver<u64>,
    caught_up: Arc<AtomicBool>,
    lag: Arc<Mutex<LagWindow>>,
    ack_lag: Arc<Mutex<LagWindow>>,
    counts: Arc<Counts>,
}

/// Batches committed, events they held and events set aside, since the node started.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    events: AtomicU64,
    dead_letters: AtomicU64,
}

/// Projection lags over the last few seconds: from stored in JetStream (the
/// stream's timestamp), or from the ack this node received for its own appends,
/// to committed in SurrealDB.
#[derive(Default)]
struct LagWindow {
    samples: VecDeque<(Instant, Duration)>,
}

/// The span of the lag window.
const LAG_WINDOW: Duration = Duration::from_secs(5);

impl LagWindow {
    fn record(&mut self, now: Instant, lag: Duration) {
        self.samples.push_back((now, lag));
        while self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > LAG_WINDOW)
            || self.samples.len() > 100_000
        {
            self.samples.pop_front();
        }
    }

    /// The p50 and p99 over the window, and the sample count.
    fn quantiles(&self) -> Option<(Duration, Duration, usize)> {
        let now = Instant::now();
        let mut lags: Vec<Duration> =
            self.samples.iter().filter(|(t, _)| now.duration_since(*t) <= LAG_WINDOW).map(|(_, l)| *l).collect();
        if lags.is_empty() {
            return None;
        }
        lags.sort_unstable();
        let at = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
        Some((at(0.50), at(0.99), lags.len()))
    }
}

impl Progress {
    /// Waits until events up to `seq` are in the read models, or the timeout passes.
    /// Returns whether they are.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        matches!(tokio::time::timeout(timeout, rx.wait_for(|v| *v >= seq)).await, Ok(Ok(_)))
    }

    pub fn applied(&self) -> u64 {
        *self.rx.borrow()
    }

    /// True once the projector has applied everything that was in the log when it started.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Batches committed and the events in them, since the node started.
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.batches.load(Ordering::Relaxed), self.counts.events.load(Ordering::Relaxed))
    }

    /// Events set aside as dead letters since the node started.
    pub fn dead_letters(&self) -> u64 {
        self.counts.dead_letters.load(Ordering::Relaxed)
    }

    /// The p50 and p99 projection lag from stored in JetStream, over the last five
    /// seconds, and the sample count.
    pub fn lag(&self) -> Option<(Duration, Duration, usize)> {
        self.lag.lock().expect("lag window lock").quantiles()
    }

    /// The same from the ack this node received for its own appends: how long a
    /// writer waits for read-your-writes after its append is acknowledged.
    pub fn ack_lag(&self) -> Option<(Duration, Duration, usize)> {
        self.ack_lag.lock().expect("lag window lock").quantiles()
    }
}

pub struct Projector {
    rm: ReadModel,
    store: EventStore,
    keys: KeyRing,
    /// The module versions whose migrations the projector runs.
    modules: Arc<Registry>,
    tx: watch::Sender<u64>,
    caught_up: Arc<AtomicBool>,
    lag: Arc<Mutex<LagWindow>>,
    ack_lag: Arc<Mutex<LagWindow>>,
    /// Ack times of the events this node appended (from the appending store).
    acks: AckClock,
    counts: Arc<Counts>,
    /// Names of destroyed keys, from the key ring's watch (`KeyRing::forget_destroyed`).
    destroyed: Option<mpsc::UnboundedReceiver<String>>,
    /// Persons whose personal data is still to be blanked: kept until the blanking
    /// commits, so a SurrealDB outage delays an erasure but never drops it.
    unerased: Vec<(Scope, String)>,
    /// Deleted tenants (slugs): their database is gone, and nothing of theirs is
    /// written again, neither an event that follows the deletion nor an erasure.
    deleted: HashSet<String>,
    /// Where committed events go for GraphQL subscribers.
    live: Option<Arc<crate::graphql::live::LiveEvents>>,
}

/// The aggregate whose events change what callers may do.
const ACCESS_AGGREGATE: &str = <actors::domain::access::Access as actors::domain::aggregate::Aggregate>::NAME;

/// Most events applied in one transaction per database.
const MAX_BATCH: usize = 512;
/// After this long without a delivery the projector checks whether the log
/// moved on without it.
const STALL_CHECK: Duration = Duration::from_secs(3);
/// How long the projector waits for a JetStream API answer before it starts
/// over: while servers elect a leader, requests go unanswered, and the next
/// try reaches the new one.
const JS_TIMEOUT: Duration = Duration::from_secs(2);

/// One message of a batch, ready to commit.
struct Entry {
    seq: u64,
    subject: String,
    outcome: Outcome,
    /// The tenant this event deletes, if it is a `TenantDeleted`.
    deletes: Option<TenantId>,
}

enum Outcome {
    /// The event's statements, in the database of its tenant (none for claims
    /// and types this build does not project: they only move the checkpoint).
    /// `elsewhere`: statements for other databases (another trail that shows
    /// the event, a deleted tenant's removal), each after every statement of
    /// the batch for its database.
    Apply { db: String, statements: Vec<Statement>, elsewhere: Vec<(String, Statement)> },
    /// The event is set aside as a dead letter, for this reason.
    SetAside(String),
}

impl Entry {
    fn dead_letter(&self, reason: &str) -> DeadLetter {
        let tokens = EventSubject::parse(&self.subject);
        DeadLetter {
            seq: self.seq,
            subject: self.subject.clone(),
            tenant: tokens.map_or_else(String::new, |t| t.tenant.to_owned()),
            event_type: tokens.map_or_else(String::new, |t| t.event_type.to_owned()),
            reason: reason.to_owned(),
        }
    }
}

/// Statements grouped by database, keeping the log's order inside each.
#[derive(Default)]
struct Grouped {
    changes: Vec<DbChanges>,
    index: HashMap<String, usize>,
}

impl Grouped {
    fn add(&mut self, db: &str, statements: impl IntoIterator<Item = Statement>) {
        let at = match self.index.get(db) {
            Some(at) => *at,
            None => {
                self.changes.push(DbChanges { db: db.to_owned(), statements: Vec::new() });
                self.index.insert(db.to_owned(), self.changes.len() - 1);
                self.changes.len() - 1
            }
        };
        self.changes[at].statements.extend(statements);
    }

    /// The changes of a run of entries: each event's statements, or its dead letter.
    fn of(entries: &[Entry]) -> Vec<DbChanges> {
        let mut grouped = Self::default();
        for e in entries {
            match &e.outcome {
                Outcome::Apply { db, statements, elsewhere } => {
                    if !statements.is_empty() {
                        grouped.add(db, statements.iter().cloned());
                    }
                    for (other, st) in elsewhere {
                        grouped.add(other, [st.clone()]);
                    }
                }
                Outcome::SetAside(reason) => {
                    grouped.add(&db_name(&Scope::Platform), [dead_letter_statement(&e.dead_letter(reason))])
                }
            }
        }
        grouped.changes
    }
}

/// The record of an event set aside, in the `system` database under its stream
/// sequence: a rebuild from the log writes the same records again.
fn dead_letter_statement(letter: &DeadLetter) -> Statement {
    statement(
        format!(
            "UPSERT projection_dead_letter:{} CONTENT {{ seq: $seq, subject: $subject, tenant: $tenant, event_type: $event_type, reason: $reason }} RETURN NONE",
            letter.seq
        ),
        serde_json::json!({
            "seq": letter.seq, "subject": letter.subject, "tenant": letter.tenant,
            "event_type": letter.event_type, "reason": letter.reason,
        }),
    )
}

/// Reads a message of the log as an event of the tenant its subject names. The
/// subject is what NATS permissions and the appends' checks apply to, so an
/// envelope that names another tenant, aggregate, id or type is refused: it
/// must never reach another tenant's database.
fn admit(seq: u64, subject: &str, payload: &[u8]) -> Result<(Scope, Stored), Unapplied> {
    let tokens = EventSubject::parse(subject).ok_or_else(|| refused("not an event subject"))?;
    let scope = Scope::parse_token(tokens.tenant).map_err(|_| refused("the subject names no valid tenant"))?;
    let stored = decode(seq, payload).map_err(|_| refused("undecodable envelope"))?;
    if !tokens.agrees_with(&stored.envelope) {
        return Err(refused("envelope disagrees with its subject"));
    }
    Ok((scope, stored))
}

/// The tenant a `TenantDeleted` event deletes; for any other event `None`.
fn deleted_tenant(ev: &Stored) -> Option<TenantId> {
    let e = &ev.envelope;
    (e.tenant == PLATFORM_TOKEN && e.aggregate == "tenant" && e.event_type == "TenantDeleted")
        .then(|| TenantId::parse(&e.aggregate_id).ok())
        .flatten()
}

/// Commits the entries of a batch, which follow the checkpoint `before`, and
/// records in `set_aside` the dead letters it committed.
///
/// When SurrealDB refuses the transaction, a checkpoint-only transaction tells
/// whether SurrealDB itself is at fault: if that fails too, the error is returned
/// and nothing is set aside, so an outage never costs an event. Otherwise the
/// entries are committed in halves, down to single events, and an event whose
/// own transaction is refused is set aside with its stream sequence. The
/// checkpoint moves with each piece, in the log's order.
async fn commit(
    rm: &ReadModel,
    entries: Vec<Entry>,
    before: u64,
    set_aside: &mut Vec<DeadLetter>,
) -> Result<(), ReadError> {
    let mut committed = before;
    // The pieces still to commit; the next one is last.
    let mut pending = vec![entries];
    while let Some(mut piece) = pending.pop() {
        let Some(last) = piece.last().map(|e| e.seq) else { continue };
        let refusal = match rm.apply(Grouped::of(&piece), last).await {
            Ok(()) => {
                committed = last;
                set_aside.extend(piece.iter().filter_map(|e| match &e.outcome {
                    Outcome::SetAside(reason) => Some(e.dead_letter(reason)),
                    Outcome::Apply { .. } => None,
                }));
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the read model refused a batch");
                e
            }
        };
        rm.apply(Vec::new(), committed).await?;
        if piece.len() > 1 {
            let second = piece.split_off(piece.len() / 2);
            pending.push(second);
            pending.push(piece);
            continue;
        }
        let Some(mut entry) = piece.pop() else { continue };
        if matches!(entry.outcome, Outcome::SetAside(_)) {
            // Even its dead letter does not commit, though SurrealDB does: try
            // the batch again later rather than lose the event.
            return Err(refusal);
        }
        // SurrealDB's message may quote the event's values, personal ones
        // included, so it stays out of the reason.
        entry.outcome = Outcome::SetAside("the read model refused its changes".into());
        pending.push(vec![entry]);
    }
    Ok(())
}

/// Blanks an account's personal fields, if the account has a row: `UPDATE` never
/// creates one. Nothing for an id that is not a safe token (`person_of_key`
/// returns none).
fn erasure(account_id: &str) -> Option<Statement> {
    let id = record_id("user", account_id)?;
    Some(statement(
        format!("UPDATE {id} SET email = $erased, firstname = $erased, lastname = $erased RETURN NONE"),
        serde_json::json!({ "erased": ERASED }),
    ))
}

impl Projector {
    pub fn new(rm: ReadModel, store: EventStore, keys: KeyRing) -> (Self, Progress) {
        let (tx, rx) = watch::channel(0);
        let caught_up = Arc::new(AtomicBool::new(false));
        let lag = Arc::new(Mutex::new(LagWindow::default()));
        let ack_lag = Arc::new(Mutex::new(LagWindow::default()));
        let counts = Arc::new(Counts::default());
        let p = Progress {
            rx,
            caught_up: caught_up.clone(),
            lag: lag.clone(),
            ack_lag: ack_lag.clone(),
            counts: counts.clone(),
        };
        let acks = store.acks();
        let projector = Self {
            rm,
            store,
            keys,
            modules: Arc::new(Registry::empty()),
            tx,
            caught_up,
            lag,
            ack_lag,
            acks,
            counts,
            destroyed: None,
            unerased: Vec::new(),
            deleted: HashSet::new(),
            live: None,
        };
        (projector, p)
    }

    /// Reads the log through `store` (a connection of the projector's own). The
    /// ack times still come from the store given to `new`, the one that appends.
    pub fn with_store(mut self, store: EventStore) -> Self {
        self.store = store;
        self
    }

    /// Runs module migrations from `modules` (the node's registry).
    pub fn with_modules(mut self, modules: Arc<Registry>) -> Self {
        self.modules = modules;
        self
    }

    /// Hands each committed event to `live`, for its tenant's subscribers.
    pub fn with_live(mut self, live: Arc<crate::graphql::live::LiveEvents>) -> Self {
        self.live = Some(live);
        self
    }

    /// Blanks the personal data of each person whose key is named on `destroyed`
    /// (the names `KeyRing::forget_destroyed` sends), between batches.
    pub fn with_destroyed_keys(mut self, destroyed: mpsc::UnboundedReceiver<String>) -> Self {
        self.destroyed = Some(destroyed);
        self
    }

    /// Runs until cancelled, reconnecting after errors from where it left off
    /// (and after a stall: a consumer that delivers nothing while the log has
    /// newer events is made again from the checkpoint).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let result = tokio::select! {
                r = self.follow(None) => r,
                () = cancel.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "projector interrupted; resuming from its checkpoint");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Applies the whole log as it is now, then returns (for `projections rebuild`).
    pub async fn catch_up(mut self) -> anyhow::Result<u64> {
        let last = self.store.last_seq().await?;
        self.follow(Some(last)).await?;
        Ok(last)
    }

    async fn follow(&mut self, stop_at: Option<u64>) -> anyhow::Result<()> {
        let mut applied = self.rm.checkpoint().await?;
        self.deleted = self.rm.deleted_tenants().await?.into_iter().collect();
        self.erase(applied).await?;
        let head = tokio::time::timeout(JS_TIMEOUT, self.store.last_seq()).await??;
        self.publish_progress(applied, head);
        if stop_at.is_some_and(|s| s <= applied) {
            return Ok(());
        }
        let stream = tokio::time::timeout(JS_TIMEOUT, self.store.jetstream().get_stream(STREAM)).await??;
        let consumer = tokio::time::timeout(
            JS_TIMEOUT,
            stream.create_consumer(consumer::pull::OrderedConfig {
                filter_subject: "evt.>".into(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: applied + 1 },
                max_expires: actors::store::event_store::FAILOVER_EXPIRY,
                ..Default::default()
            }),
        )
        .await??;
        let mut messages = consumer.messages().await?;
        loop {
            let next = {
                let destroyed = async {
                    match self.destroyed.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    name = destroyed => Either::Left(name),
                    m = messages.next() => Either::Right(m),
                    () = tokio::time::sleep(STALL_CHECK) => {
                        // Nothing arrived for a while: fine when the log has
                        // nothing newer, a stalled consumer (its server lost,
                        // its pull unanswered) when it has.
                        let head = tokio::time::timeout(JS_TIMEOUT, self.store.last_seq()).await;
                        if head.map_or(true, |h| h.is_ok_and(|h| h > applied)) {
                            anyhow::bail!(
                                "the consumer delivered nothing for {STALL_CHECK:?} while the log moved on (or its head could not be read)"
                            );
                        }
                        continue;
                    }
                }
            };
            let first = match next {
                Either::Left(Some(name)) => {
                    self.take_destroyed(name);
                    self.erase(applied).await?;
                    continue;
                }
                // The key ring's watch has stopped: only the log is left to follow.
                Either::Left(None) => {
                    self.destroyed = None;
                    continue;
                }
                Either::Right(Some(m)) => m?,
                Either::Right(None) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.push(m?),
                    _ => break,
                }
            }
            let mut entries = Vec::with_capacity(batch.len());
            // (sequence, stored at) of each event, for the lag windows.
            let mut marks = Vec::with_capacity(batch.len());
            for m in &batch {
                let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                marks.push((info.stream_sequence, info.published));
                let entry = self.entry(info.stream_sequence, &m.subject, &m.payload).await?;
                if let Some(slug) = &entry.deletes {
                    self.deleted.insert(slug.as_str().to_owned());
                }
                entries.push(entry);
            }
            let last = marks.last().map_or(applied, |(seq, _)| *seq);
            // The scopes whose access control the batch changes: the edge's cached
            // answers there stop counting once it commits, before it is reported.
            let mut access_changed: Vec<Scope> = batch
                .iter()
                .filter_map(|m| EventSubject::parse(&m.subject).filter(|t| t.aggregate == ACCESS_AGGREGATE))
                .filter_map(|t| Scope::parse_token(t.tenant).ok())
                .collect();
            access_changed.dedup();
            let mut set_aside = Vec::new();
            let committed = commit(&self.rm, entries, applied, &mut set_aside).await;
            // Also when the commit failed part of the way: a piece may have landed.
            for scope in &access_changed {
                self.rm.access_changed(scope);
            }
            self.report(&set_aside);
            committed?;
            self.tell_subscribers(&batch);
            applied = last;
            self.record_lag(&marks);
            self.counts.batches.fetch_add(1, Ordering::Relaxed);
            self.counts.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.publish_progress(last, head);
            if stop_at.is_some_and(|s| last >= s) {
                return Ok(());
            }
        }
        anyhow::bail!("the event stream ended")
    }

    /// Hands the committed events of tenants with a subscriber to them.
    fn tell_subscribers(&self, batch: &[async_nats::jetstream::Message]) {
        let Some(live) = &self.live else { return };
        for m in batch {
            let Some(at) = EventSubject::parse(&m.subject) else { continue };
            if !live.listened(at.tenant) {
                continue;
            }
            let Ok(info) = m.info() else { continue };
            if let Ok(stored) = actors::store::event_store::decode(info.stream_sequence, &m.payload)
                && at.agrees_with(&stored.envelope)
            {
                live.publish(at.tenant, &stored.envelope);
            }
        }
    }

    /// Logs and counts events just set aside. The line names the event's place
    /// and the reason, never its data.
    fn report(&self, set_aside: &[DeadLetter]) {
        for d in set_aside {
            tracing::warn!(
                seq = d.seq,
                subject = %d.subject,
                tenant = %d.tenant,
                event_type = %d.event_type,
                reason = %d.reason,
                "an event the projector cannot apply was set aside as a dead letter"
            );
        }
        self.counts.dead_letters.fetch_add(set_aside.len() as u64, Ordering::Relaxed);
    }

    /// Queues the person of a destroyed key for blanking, with any other names
    /// already waiting (up to a batch). Keys that are not a person's are ignored.
    fn take_destroyed(&mut self, first: String) {
        let mut names = vec![first];
        if let Some(rx) = self.destroyed.as_mut() {
            while names.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(name) => names.push(name),
                    Err(_) => break,
                }
            }
        }
        self.unerased.extend(names.iter().filter_map(|n| person_of_key(n)));
    }

    /// Blanks the personal fields of the persons waiting in `unerased`, in one
    /// transaction that rewrites the checkpoint `applied` as it is. A person who
    /// is not in the read model yet needs nothing: their events project as erased
    /// once their key is gone.
    async fn erase(&mut self, applied: u64) -> anyhow::Result<()> {
        if self.unerased.is_empty() {
            return Ok(());
        }
        let mut grouped = Grouped::default();
        for (scope, account_id) in &self.unerased {
            if !self.is_deleted(scope) {
                grouped.add(&db_name(scope), erasure(account_id));
                let (db, trail) = audit::erasure(scope, account_id);
                grouped.add(&db, [trail]);
            }
        }
        self.rm.apply(grouped.changes, applied).await?;
        tracing::info!(persons = self.unerased.len(), "blanked the personal data of persons whose key was destroyed");
        self.unerased.clear();
        Ok(())
    }

    /// Records, for each event just committed, how long ago JetStream stored it
    /// and, for this node's own appends, how long ago their ack arrived.
    fn record_lag(&self, marks: &[(u64, time::OffsetDateTime)]) {
        let now = time::OffsetDateTime::now_utc();
        let at = Instant::now();
        let mut stored = self.lag.lock().expect("lag window lock");
        let mut acked = self.ack_lag.lock().expect("lag window lock");
        for (seq, published) in marks {
            stored.record(at, (now - *published).try_into().unwrap_or(Duration::ZERO));
            if let Some(t) = self.acks.take(*seq) {
                acked.record(at, at.saturating_duration_since(t));
            }
        }
    }

    fn publish_progress(&self, applied: u64, head: u64) {
        self.tx.send_replace(applied);
        if applied >= head {
            self.caught_up.store(true, Ordering::Release);
        }
    }

    /// What one message of the log does to the read models. Only an outage is an
    /// error; an event that can never apply becomes a dead letter.
    async fn entry(&self, seq: u64, subject: &str, payload: &[u8]) -> anyhow::Result<Entry> {
        let mut deletes = None;
        let applied = match admit(seq, subject, payload) {
            // Nothing of a deleted tenant is written again: it would bring its database back.
            Ok((scope, _)) if self.is_deleted(&scope) => Ok((db_name(&scope), Vec::new(), Vec::new())),
            Ok((scope, ev)) => {
                deletes = deleted_tenant(&ev);
                self.changes(&scope, &ev).await.map(|(st, elsewhere)| (db_name(&scope), st, elsewhere))
            }
            Err(e) => Err(e),
        };
        let outcome = match applied {
            Ok((db, statements, elsewhere)) => Outcome::Apply { db, statements, elsewhere },
            Err(Unapplied::Refused(reason)) => Outcome::SetAside(reason),
            Err(Unapplied::Unavailable(e)) => return Err(e),
        };
        Ok(Entry { seq, subject: subject.to_owned(), outcome, deletes })
    }

    fn is_deleted(&self, scope: &Scope) -> bool {
        scope.tenant().is_some_and(|t| self.deleted.contains(t.as_str()))
    }

    /// An event's statements in its scope's database (its projection's and its
    /// audit record), and those for other databases.
    async fn changes(
        &self,
        scope: &Scope,
        ev: &Stored,
    ) -> Result<(Vec<Statement>, Vec<(String, Statement)>), Unapplied> {
        let mut statements = self.statements(scope, ev).await?;
        let mut elsewhere = Vec::new();
        if audit::audited(&ev.envelope.aggregate) {
            statements.push(audit::record(&self.keys, scope, ev).await?);
        }
        if let Some(other) = audit::also_in(scope, ev).filter(|o| !self.is_deleted(o)) {
            elsewhere.push((db_name(&other), audit::record(&self.keys, &other, ev).await?));
        }
        if let Some(slug) = deleted_tenant(ev) {
            let removed = db_name(&Scope::Tenant(slug));
            // Names are made by `db_name`: plain identifiers, safe to splice.
            elsewhere.push((
                removed.clone(),
                statement(format!("REMOVE DATABASE IF EXISTS {removed}"), serde_json::json!({})),
            ));
        }
        Ok((statements, elsewhere))
    }

    async fn statements(&self, scope: &Scope, ev: &Stored) -> Result<Vec<Statement>, Unapplied> {
        // Claims and aggregates no projection reads only move the checkpoint.
        let Some(projection) = PROJECTIONS.iter().find(|p| p.aggregate() == ev.envelope.aggregate) else {
            return Ok(Vec::new());
        };
        // Older shapes of an event type are upcast first, so projections only
        // handle current ones; a shape from a newer build is set aside.
        let data = actors::contract::current_data(&ev.envelope).map_err(|e| refused(e.to_string()))?;
        projection.statements(&Event { scope, stored: ev, data, keys: &self.keys, modules: &self.modules }).await
    }
}

/// Drops every read model and rebuilds it from the log. Returns the last sequence applied.
pub async fn rebuild(
    rm: &ReadModel,
    store: &EventStore,
    keys: &KeyRing,
    modules: Arc<Registry>,
) -> anyhow::Result<u64> {
    rm.drop_all().await?;
    let (projector, _) = Projector::new(rm.clone(), store.clone(), keys.clone());
    let projector = projector.with_modules(modules);
    projector.catch_up().await
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::Config;

    async fn memory_model() -> ReadModel {
        let config = Config { surreal_url: Some("mem://".into()), ..Config::default() };
        ReadModel::connect(&config).await.unwrap()
    }

    fn alpha() -> Scope {
        Scope::Tenant(TenantId::parse("alpha").unwrap())
    }

    fn envelope(tenant: &str) -> Vec<u8> {
        serde_json::json!({
            "id": "e1", "type": "AccountRegistered", "tenant": tenant, "aggregate": "account",
            "aggregate_id": "a1", "occurred_at": "2025-01-01T00:00:00Z", "command_id": "c1",
            "schema_version": 1, "data": {},
        })
        .to_string()
        .into_bytes()
    }

    fn refusal(subject: &str, payload: &[u8]) -> String {
        match admit(7, subject, payload) {
            Err(Unapplied::Refused(reason)) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_is_read_only_as_the_tenant_its_subject_names() {
        let subject = "evt.alpha.account.a1.AccountRegistered";
        let (scope, stored) = admit(7, subject, &envelope("alpha")).unwrap();
        assert_eq!((scope, stored.seq), (alpha(), 7));
        assert_eq!(refusal(subject, &envelope("beta")), "envelope disagrees with its subject");
        assert_eq!(refusal(subject, b"{\"id\":"), "undecodable envelope");
        assert_eq!(refusal("evt.alpha.account.a1", &envelope("alpha")), "not an event subject");
        assert_eq!(
            refusal("evt.Alpha.account.a1.AccountRegistered", &envelope("Alpha")),
            "the subject names no valid tenant"
        );
    }

    /// A registration in tenant `alpha` at `seq`; `broken` breaks the schema (`seq` is an int).
    fn user(seq: u64, broken: bool) -> Entry {
        let id = format!("u{seq}");
        let mut vars = serde_json::json!({ "id": id, "seq": seq });
        if broken {
            vars["seq"] = "not a number".into();
        }
        let sql = format!(
            "UPSERT user:⟨{id}⟩ CONTENT {{ account_id: $id, email: 'e', firstname: 'f', lastname: 'l', owner: false, seq: $seq, created_at: 't' }} RETURN NONE"
        );
        Entry {
            seq,
            subject: format!("evt.alpha.account.{id}.AccountRegistered"),
            outcome: Outcome::Apply {
                db: db_name(&alpha()),
                statements: vec![statement(sql, vars)],
                elsewhere: Vec::new(),
            },
            deletes: None,
        }
    }

    async fn users(rm: &ReadModel) -> Vec<String> {
        rm.users(&alpha(), 0, 100).await.unwrap().into_iter().map(|u| u.account_id).collect()
    }

    #[tokio::test]
    async fn an_event_the_read_model_refuses_is_set_aside_and_the_rest_of_its_batch_applies() {
        let rm = memory_model().await;
        let not_an_event = Entry {
            seq: 9,
            subject: "evt.alpha".into(),
            outcome: Outcome::SetAside("not an event subject".into()),
            deletes: None,
        };
        let entries = vec![user(5, false), user(6, true), user(7, false), user(8, false), not_an_event];
        let mut set_aside = Vec::new();
        commit(&rm, entries, 4, &mut set_aside).await.unwrap();
        assert_eq!(rm.checkpoint().await.unwrap(), 9);
        assert_eq!(users(&rm).await, ["u5", "u7", "u8"]);
        let refused = DeadLetter {
            seq: 6,
            subject: "evt.alpha.account.u6.AccountRegistered".into(),
            tenant: "alpha".into(),
            event_type: "AccountRegistered".into(),
            reason: "the read model refused its changes".into(),
        };
        let unreadable = DeadLetter {
            seq: 9,
            subject: "evt.alpha".into(),
            tenant: String::new(),
            event_type: String::new(),
            reason: "not an event subject".into(),
        };
        assert_eq!(set_aside, [refused.clone(), unreadable.clone()]);
        assert_eq!(rm.dead_letters().await.unwrap(), [refused, unreadable]);
    }

    #[tokio::test]
    async fn nothing_is_set_aside_while_surrealdb_cannot_commit_even_a_checkpoint() {
        let rm = memory_model().await;
        rm.apply(Vec::new(), 4).await.unwrap();
        // Every checkpoint write now fails, as every transaction does while
        // SurrealDB is down.
        rm.execute_for_tests("system", "DEFINE FIELD OVERWRITE seq ON checkpoint TYPE string").await;
        let mut set_aside = Vec::new();
        assert!(commit(&rm, vec![user(5, false), user(6, true)], 4, &mut set_aside).await.is_err());
        assert!(set_aside.is_empty());
        assert!(rm.dead_letters().await.unwrap().is_empty());
        assert_eq!(rm.checkpoint().await.unwrap(), 4);
        assert!(users(&rm).await.is_empty());
    }

    #[tokio::test]
    async fn an_erasure_blanks_a_projected_person_and_creates_nobody() {
        let rm = memory_model().await;
        let mut set_aside = Vec::new();
        commit(&rm, vec![user(5, false), user(6, false)], 4, &mut set_aside).await.unwrap();
        let changes = vec![DbChanges {
            db: db_name(&alpha()),
            statements: vec![erasure("u5").unwrap(), erasure("u404").unwrap()],
        }];
        rm.apply(changes, 6).await.unwrap();
        let u5 = rm.user(&alpha(), "u5").await.unwrap().unwrap();
        assert_eq!([u5.email.as_str(), &u5.firstname, &u5.lastname], [ERASED; 3]);
        assert_eq!(rm.user(&alpha(), "u6").await.unwrap().unwrap().email, "e");
        assert_eq!(users(&rm).await, ["u5", "u6"]);
        assert!(erasure("u1⟩; DELETE user; ⟨").is_none());
    }
}
