//! The projector: follows the `EVENTS` stream in order and writes read models into
//! SurrealDB, one database per tenant, each change in the same transaction as that
//! database's checkpoint. Mutations wait on its progress for read-your-writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::event_store::{AckClock, EventStore, STREAM, Stored, decode};
use actors::seal::{KeyRing, SealError, Sealed};
use actors::tenant::Scope;
use async_nats::jetstream::consumer;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::read_model::{DbChanges, ReadModel, Statement, db_name, record_id};

/// How far the projector has got: the stream sequence of the last applied event.
#[derive(Clone)]
pub struct Progress {
    rx: watch::Receiver<u64>,
    caught_up: Arc<AtomicBool>,
    lag: Arc<Mutex<LagWindow>>,
    ack_lag: Arc<Mutex<LagWindow>>,
    counts: Arc<Counts>,
}

/// Batches committed and events they held, since the node started.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    events: AtomicU64,
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
    tx: watch::Sender<u64>,
    caught_up: Arc<AtomicBool>,
    lag: Arc<Mutex<LagWindow>>,
    ack_lag: Arc<Mutex<LagWindow>>,
    /// Ack times of the events this node appended (from the appending store).
    acks: AckClock,
    counts: Arc<Counts>,
}

/// Most events applied in one transaction per database.
const MAX_BATCH: usize = 512;

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
        (Self { rm, store, keys, tx, caught_up, lag, ack_lag, acks, counts }, p)
    }

    /// Reads the log through `store` (a connection of the projector's own). The
    /// ack times still come from the store given to `new`, the one that appends.
    pub fn with_store(mut self, store: EventStore) -> Self {
        self.store = store;
        self
    }

    /// Runs until cancelled, reconnecting after errors from where it left off.
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
        let start = self.rm.checkpoint().await? + 1;
        let head = self.store.last_seq().await?;
        self.publish_progress(start - 1, head);
        if stop_at.is_some_and(|s| s < start) {
            return Ok(());
        }
        let stream = self.store.jetstream().get_stream(STREAM).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: "evt.>".into(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        while let Some(first) = messages.next().await {
            let mut batch = vec![first?];
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.push(m?),
                    _ => break,
                }
            }
            let mut stored = Vec::with_capacity(batch.len());
            // (sequence, stored at) of each event, for the lag windows.
            let mut marks = Vec::with_capacity(batch.len());
            let mut last = 0;
            for m in &batch {
                let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                last = info.stream_sequence;
                marks.push((last, info.published));
                match decode(last, &m.payload) {
                    Ok(s) => stored.push(s),
                    // A message that is not an envelope can never be projected; waiting
                    // for it would stall every tenant's read models, so skip it loudly.
                    Err(e) => {
                        tracing::error!(seq = last, subject = %m.subject, error = %e, "skipping an undecodable event")
                    }
                }
            }
            self.apply(stored, last).await?;
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

    async fn apply(&mut self, events: Vec<Stored>, last: u64) -> anyhow::Result<()> {
        // Group by database, keeping the log's order inside each.
        let mut changes: Vec<DbChanges> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for ev in events {
            let scope = match Scope::parse_token(&ev.envelope.tenant) {
                Ok(s) => s,
                Err(_) => {
                    tracing::warn!(seq = ev.seq, "event with an invalid tenant skipped");
                    continue;
                }
            };
            let statements = self.statements(&ev).await?;
            if statements.is_empty() {
                continue;
            }
            let db = db_name(&scope);
            let at = *index.entry(db.clone()).or_insert_with(|| {
                changes.push(DbChanges { db, statements: Vec::new() });
                changes.len() - 1
            });
            changes[at].statements.extend(statements);
        }
        self.rm.apply(changes, last).await?;
        Ok(())
    }

    async fn open(&self, sealed: &Sealed) -> anyhow::Result<String> {
        match self.keys.open_string(sealed).await {
            Ok(s) => Ok(s),
            // The person's key was deleted: their data is erased from the log.
            Err(SealError::MissingKey(_)) => Ok("[erased]".into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn statements(&self, ev: &Stored) -> anyhow::Result<Vec<Statement>> {
        let env = &ev.envelope;
        let data = &env.data;
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let sealed = |k: &str| -> anyhow::Result<Sealed> { Ok(serde_json::from_value(data[k].clone())?) };
        let st = |sql: String, vars: serde_json::Value| Statement {
            sql,
            vars: match vars {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
        };
        // Record ids are written as literals: `type::record(...)` made every statement
        // a function call, a measurable share of the projector's cost. `record_id`
        // only accepts subject-safe tokens, so nothing from the log can reach the
        // query text unchecked. `RETURN NONE`: the projector reads no results.
        let record = |table: &str, key: &str| {
            let id = record_id(table, key);
            if id.is_none() {
                tracing::error!(seq = ev.seq, event_type = %env.event_type, "skipping an event with an unsafe id");
            }
            id
        };
        Ok(match env.event_type.as_str() {
            "TenantCreated" => {
                let Some(id) = record("tenant", &text("slug")) else { return Ok(Vec::new()) };
                vec![st(
                    format!(
                        "UPSERT {id} CONTENT {{ slug: $slug, name: $name, owner_account_id: $owner, created_seq: $seq, created_at: $at }} RETURN NONE"
                    ),
                    serde_json::json!({
                        "slug": text("slug"), "name": text("name"), "owner": text("owner_account_id"),
                        "seq": ev.seq, "at": env.occurred_at,
                    }),
                )]
            }
            "AccountRegistered" => {
                let Some(id) = record("user", &text("account_id")) else { return Ok(Vec::new()) };
                vec![st(
                    format!(
                        "UPSERT {id} CONTENT {{ account_id: $id, email: $email, firstname: $first, lastname: $last, owner: $owner, seq: $seq, created_at: $at }} RETURN NONE"
                    ),
                    serde_json::json!({
                        "id": text("account_id"),
                        "email": self.open(&sealed("email")?).await?,
                        "first": self.open(&sealed("firstname")?).await?,
                        "last": self.open(&sealed("lastname")?).await?,
                        "owner": data.get("owner").and_then(|v| v.as_bool()).unwrap_or(false),
                        "seq": ev.seq, "at": env.occurred_at,
                    }),
                )]
            }
            "ProfileUpdated" => {
                let Some(id) = record("user", &env.aggregate_id) else { return Ok(Vec::new()) };
                vec![st(
                    format!("UPDATE {id} SET firstname = $first, lastname = $last RETURN NONE"),
                    serde_json::json!({
                        "first": self.open(&sealed("firstname")?).await?,
                        "last": self.open(&sealed("lastname")?).await?,
                    }),
                )]
            }
            // Claims and event types this build does not project only move the checkpoint.
            _ => Vec::new(),
        })
    }
}

/// Drops every read model and rebuilds it from the log. Returns the last sequence applied.
pub async fn rebuild(rm: &ReadModel, store: &EventStore, keys: &KeyRing) -> anyhow::Result<u64> {
    rm.drop_all().await?;
    let (projector, _) = Projector::new(rm.clone(), store.clone(), keys.clone());
    projector.catch_up().await
}
