//! Webhook delivery. Three parts, all on NATS so they hold across nodes:
//!
//! - The webhook reactor, a durable consumer on `EVENTS` (`webhook-reactor`):
//!   each event of a type a tenant's enabled webhook receives becomes one work
//!   item on the work queue `WEBHOOKS` (subject `webhook.{tenant}`), whose
//!   message id is the delivery's id, so a crash between the item and the
//!   acknowledgement queues nothing twice and a restart skips no event.
//! - The deliverer: each tenant with queued items is drained through a
//!   consumer of its own (`wh-{tenant}`, at most `webhook_concurrency` calls in
//!   flight), so a slow or failing endpoint of one tenant holds only that
//!   tenant's items. A failed call is offered again after a backoff (4x each
//!   time) until `webhook_max_attempts`; every retry keeps its `webhook-id`.
//!   After `webhook_disable_after` failed attempts in a row the node disables
//!   the webhook (an event; the mail reactor mails its owner).
//! - The delivery log `WEBHOOK_LOG` (subject `whlog.{tenant}.{webhook}`): one
//!   record per attempt, the newest 1,000 per webhook, for `webhook_log_days`.
//!
//! Every call goes through the SSRF guard (`ssrf.rs`): the URL's addresses are
//! checked before the call and again by the client's resolver at connect
//! time, redirects are not followed, the response is read up to 64 KiB and
//! the call times out. Deliveries are signed per the Standard Webhooks
//! specification with every secret that signs at the time (a rotated secret
//! keeps signing during its overlap).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::command::{CommandEnvelope, CommandResult, Principal, WebhookReply, WebhookRequest, command_subject};
use actors::domain::aggregate::Aggregate;
use actors::domain::ids::CommandId;
use actors::domain::tenant::{Scope, TenantId};
use actors::domain::webhook::{
    AuthKind, WEBHOOKS_ID, Webhook, WebhookEvent, WebhookRedeliveryRequested, Webhooks, WebhooksState,
};
use actors::store::event_store::{Envelope, EventStore, EventSubject, STREAM as EVENTS, decode, event_of};
use actors::store::seal::{KeyRing, SealError, Sealed};
use actors::tree::executor::{Loaded, load, refresh};
use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::outbound::durable::{self, React, Skip, later};
use crate::outbound::push::forwarded;
use crate::outbound::ssrf;

/// The work queue of deliveries, in the nodes' account.
pub const QUEUE: &str = "WEBHOOKS";
/// The delivery log.
pub const LOG: &str = "WEBHOOK_LOG";
/// The durable consumer's name on `EVENTS`.
pub const CONSUMER: &str = "webhook-reactor";
/// The KV bucket of each webhook's failed attempts in a row.
const FAILURES: &str = "webhook_failures";
/// The most deliveries one `webhookDeliveries` page returns.
pub const MAX_PAGE: usize = 100;
/// Attempts kept per webhook in the log (its newest).
const LOGGED_PER_WEBHOOK: i64 = 1000;
/// Items one tenant may have queued; beyond, a delivery fails at once
/// ("backlog full") instead of filling the disk.
const BACKLOG_PER_TENANT: i64 = 100_000;
/// The most of a response that is read, and the most of it that is kept.
const MAX_RESPONSE: usize = 64 * 1024;
const KEPT_RESPONSE: usize = 512;
/// How long a tenant's webhooks, as read from the log, are used before they
/// are read again (an event of the tenant's webhooks seen by this node reads
/// them again at once).
const STATE_TTL: Duration = Duration::from_secs(1);
/// How often the queue is looked at for tenants with items no node drains.
const SWEEP: Duration = Duration::from_millis(500);
/// The longest wait before a retry.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// The webhook settings of `Config`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub allow_loopback: bool,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub disable_after: u32,
    pub concurrency: usize,
    pub log_age: Duration,
}

impl Settings {
    pub fn of(config: &Config) -> Self {
        Self {
            allow_loopback: config.webhook_allow_loopback,
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            max_attempts: config.webhook_max_attempts,
            backoff: Duration::from_millis(config.webhook_backoff_ms),
            disable_after: config.webhook_disable_after,
            concurrency: config.webhook_concurrency,
            log_age: Duration::from_secs(config.webhook_log_days * 24 * 3600),
        }
    }

    /// The wait after failed attempt `attempt` (1-based): the base, then four
    /// times longer each time, at most six hours.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 4u32.saturating_pow(attempt.saturating_sub(1).min(15));
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// A delivery's id, its `webhook-id`: the webhook's and the event's ids, so
/// the same event to the same webhook is always the same delivery.
pub fn delivery_id(webhook_id: &str, event_id: &str) -> Option<String> {
    let w = uuid::Uuid::parse_str(webhook_id).ok()?;
    let e = uuid::Uuid::parse_str(event_id).ok()?;
    Some(format!("msg_{}{}", w.simple(), e.simple()))
}

/// The webhook's and the event's ids of a delivery id.
pub fn parse_delivery_id(raw: &str) -> Option<(String, String)> {
    let hex = raw.strip_prefix("msg_")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let w = uuid::Uuid::parse_str(&hex[..32]).ok()?;
    let e = uuid::Uuid::parse_str(&hex[32..]).ok()?;
    Some((w.to_string(), e.to_string()))
}

/// A webhook's key in the failure counts.
fn failure_key(tenant: &TenantId, webhook_id: &str) -> String {
    format!("{}.{webhook_id}", tenant.as_str())
}

/// What a delivery's body is: the Standard Webhooks payload shape, with the
/// event as push clients see it (no sealed value).
pub fn body_of(envelope: &Envelope) -> String {
    serde_json::json!({
        "type": envelope.event_type,
        "timestamp": envelope.occurred_at,
        "data": forwarded(envelope),
    })
    .to_string()
}

/// One work item: a delivery to make.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    webhook_id: String,
    delivery_id: String,
    event_id: String,
    event_type: String,
    event_seq: u64,
    body: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Succeeded,
    /// It failed and will be tried again at `next_attempt_at`.
    Retrying,
    /// It failed and is given up (the last attempt, or a full backlog).
    Failed,
    /// The webhook was disabled or deleted before the delivery was made.
    Skipped,
}

/// One attempt as the delivery log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub delivery_id: String,
    pub event_id: String,
    pub event_type: String,
    pub event_seq: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub outcome: Outcome,
    pub response_code: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed, in words safe to show the tenant.
    pub error: Option<String>,
    /// The start of the response body.
    pub response: Option<String>,
    /// Unix seconds.
    pub at: i64,
    pub next_attempt_at: Option<i64>,
}

/// A delivery: its attempts, newest last.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The log position of its first attempt: its cursor.
    pub seq: u64,
    pub attempts: Vec<Attempt>,
}

impl Delivery {
    pub fn last(&self) -> &Attempt {
        self.attempts.last().expect("a delivery has an attempt")
    }
}

/// The nodes' side of webhooks in NATS: the queue, the log, the failure counts.
#[derive(Clone)]
pub struct WebhookOut {
    js: jetstream::Context,
    failures: kv::Store,
}

impl WebhookOut {
    /// Opens (creating or updating) the queue, the log and the failure counts.
    pub async fn open(js: jetstream::Context, settings: &Settings, replicas: usize) -> anyhow::Result<Self> {
        let queue = stream::Config {
            name: QUEUE.to_owned(),
            description: Some("webhook deliveries to make, one subject per tenant".into()),
            subjects: vec!["webhook.*".to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_messages_per_subject: BACKLOG_PER_TENANT,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            ..Default::default()
        };
        let log = stream::Config {
            name: LOG.to_owned(),
            description: Some("webhook delivery attempts, the newest 1,000 per webhook".into()),
            subjects: vec!["whlog.*.*".to_owned()],
            storage: stream::StorageType::File,
            max_messages_per_subject: LOGGED_PER_WEBHOOK,
            max_age: settings.log_age,
            max_bytes: 4 * 1024 * 1024 * 1024,
            discard: stream::DiscardPolicy::Old,
            num_replicas: replicas,
            ..Default::default()
        };
        for config in [queue, log] {
            let name = config.name.clone();
            match js.get_stream(&name).await {
                Ok(_) => js.update_stream(config).await.map(|_| ()),
                Err(_) => js.create_stream(config).await.map(|_| ()),
            }
            .with_context(|| format!("while opening the {name} stream"))?;
        }
        let failures = crate::nats::bucket(
            &js,
            kv::Config {
                bucket: FAILURES.to_owned(),
                description: "each webhook's failed attempts in a row".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self { js, failures })
    }

    /// Queues `item` for `tenant` under message id `msg_id`; `false` when the
    /// tenant's backlog is full.
    async fn enqueue(&self, tenant: &TenantId, item: &Item, msg_id: &str) -> anyhow::Result<bool> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        let body = serde_json::to_vec(item)?;
        let subject = format!("webhook.{}", tenant.as_str());
        match self.js.publish_with_headers(subject, headers, body.into()).await?.await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("maximum messages per subject") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends one attempt to the log.
    async fn record(&self, tenant: &TenantId, webhook_id: &str, attempt: &Attempt) -> anyhow::Result<()> {
        let subject = format!("whlog.{}.{webhook_id}", tenant.as_str());
        self.js.publish(subject, serde_json::to_vec(attempt)?.into()).await?.await?;
        Ok(())
    }

    /// The deliveries of one webhook, newest first: those whose first attempt
    /// is before cursor `before` (0: from the newest), at most `first`.
    pub async fn deliveries(
        &self,
        tenant: &TenantId,
        webhook_id: &str,
        before: u64,
        first: usize,
    ) -> anyhow::Result<Vec<Delivery>> {
        let mut all = self.all_deliveries(tenant, webhook_id).await?;
        all.retain(|d| before == 0 || d.seq < before);
        all.sort_by_key(|d| std::cmp::Reverse(d.seq));
        all.truncate(first.clamp(1, MAX_PAGE));
        Ok(all)
    }

    /// One delivery of a webhook, if the log still holds it.
    pub async fn delivery(&self, tenant: &TenantId, webhook_id: &str, id: &str) -> anyhow::Result<Option<Delivery>> {
        Ok(self.all_deliveries(tenant, webhook_id).await?.into_iter().find(|d| d.last().delivery_id == id))
    }

    /// Every attempt the log holds for a webhook (at most 1,000), grouped by
    /// delivery.
    async fn all_deliveries(&self, tenant: &TenantId, webhook_id: &str) -> anyhow::Result<Vec<Delivery>> {
        let stream = self.js.get_stream(LOG).await?;
        let mut c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("whlog.{}.{webhook_id}", tenant.as_str()),
                max_expires: actors::store::event_store::FAILOVER_EXPIRY,
                ..Default::default()
            })
            .await?;
        let pending = c.info().await?.num_pending as usize;
        let mut by_id: BTreeMap<String, Delivery> = BTreeMap::new();
        if pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = c.messages().await?;
        for _ in 0..pending {
            let Some(msg) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await? else { break };
            let msg = msg.map_err(|e| anyhow!(e))?;
            let seq = msg.info().map_err(|e| anyhow!(e))?.stream_sequence;
            let Ok(attempt) = serde_json::from_slice::<Attempt>(&msg.payload) else { continue };
            by_id
                .entry(attempt.delivery_id.clone())
                .or_insert_with(|| Delivery { seq, attempts: Vec::new() })
                .attempts
                .push(attempt);
        }
        Ok(by_id.into_values().collect())
    }

    /// Counts one more failed attempt in a row of a webhook; the new count.
    async fn failed(&self, key: &str) -> anyhow::Result<u32> {
        for _ in 0..10 {
            let entry = self.failures.entry(key).await?;
            let (count, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (std::str::from_utf8(&e.value).ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0), e.revision)
                }
                Some(e) => (0, e.revision),
                None => (0, 0),
            };
            let next = count.saturating_add(1);
            let written = if revision == 0 {
                self.failures.create(key, next.to_string().into()).await.map(|_| ()).map_err(|e| anyhow!(e))
            } else {
                self.failures.update(key, next.to_string().into(), revision).await.map(|_| ()).map_err(|e| anyhow!(e))
            };
            if written.is_ok() {
                return Ok(next);
            }
        }
        Err(anyhow!("the failure count of {key} kept changing"))
    }

    /// Starts a webhook's count of failures in a row over.
    async fn succeeded(&self, key: &str) -> anyhow::Result<()> {
        self.failures.put(key, "0".into()).await?;
        Ok(())
    }
}

/// Each tenant's webhooks as the log said them a moment ago.
pub struct WebhookDirectory {
    store: EventStore,
    held: Mutex<HashMap<String, Held>>,
}

/// A tenant's webhooks as last read, and when.
struct Held {
    loaded: Loaded<Webhooks>,
    state: Arc<WebhooksState>,
    /// `None`: read again on the next use.
    at: Option<Instant>,
}

impl WebhookDirectory {
    pub fn new(store: EventStore) -> Self {
        Self { store, held: Mutex::new(HashMap::new()) }
    }

    /// The tenant's webhooks, read at most `STATE_TTL` ago. A state held is
    /// brought up to date with one point read (`refresh`), not read again
    /// from the start: a load's search of the log grows with the log.
    async fn of(&self, tenant: &TenantId) -> anyhow::Result<Arc<WebhooksState>> {
        let cached = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match held.get(tenant.as_str()) {
                Some(h) if h.at.is_some_and(|at| at.elapsed() < STATE_TTL) => return Ok(h.state.clone()),
                Some(h) => Some((h.loaded.clone(), h.state.clone())),
                None => None,
            }
        };
        let scope = Scope::Tenant(tenant.clone());
        let (loaded, state) = match cached {
            Some((cached, state)) => {
                let version = cached.version;
                let loaded = refresh::<Webhooks>(&self.store, &scope, WEBHOOKS_ID, cached).await?;
                let state = if loaded.version == version { state } else { Arc::new(loaded.state.clone()) };
                (loaded, state)
            }
            None => {
                let loaded = load::<Webhooks>(&self.store, &scope, WEBHOOKS_ID).await?;
                let state = Arc::new(loaded.state.clone());
                (loaded, state)
            }
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= 100_000 {
            held.retain(|_, h| h.at.is_some_and(|at| at.elapsed() < STATE_TTL));
        }
        held.insert(tenant.as_str().to_owned(), Held { loaded, state: state.clone(), at: Some(Instant::now()) });
        Ok(state)
    }

    /// Reads the tenant's webhooks again on the next use.
    fn forget(&self, tenant: &TenantId) {
        if let Some(h) = self.held.lock().unwrap_or_else(|e| e.into_inner()).get_mut(tenant.as_str()) {
            h.at = None;
        }
    }
}

/// The webhook reactor: events into work items.
pub struct WebhookReactor {
    store: EventStore,
    out: WebhookOut,
    directory: Arc<WebhookDirectory>,
    /// Tells this node's deliverer which tenant has new items.
    wake: tokio::sync::mpsc::Sender<TenantId>,
}

impl React for WebhookReactor {
    // Deliveries are not ordered, so events are queued a few at a time: each
    // waits for its item's acknowledgement (an fsync) on its own.
    const CONCURRENCY: usize = 32;

    fn consumer(&self) -> (&'static str, &'static str, Vec<String>) {
        (CONSUMER, "turns events into webhook deliveries on WEBHOOKS", vec!["evt.>".to_owned()])
    }

    async fn react(&self, seq: u64, subject: &str, payload: &[u8]) -> Result<(), Skip> {
        self.fan_out(seq, subject, payload).await
    }
}

impl WebhookReactor {
    /// Follows the log until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        durable::run(&self.store.clone(), &self, cancel).await
    }

    async fn fan_out(&self, seq: u64, event_subject: &str, payload: &[u8]) -> Result<(), Skip> {
        let at = EventSubject::parse(event_subject).ok_or_else(|| Skip::Never("not an event subject".into()))?;
        let Ok(Scope::Tenant(tenant)) = Scope::parse_token(at.tenant) else { return Ok(()) };
        let own = at.aggregate == <Webhooks as Aggregate>::NAME;
        if own {
            self.directory.forget(&tenant);
        }
        let state = self.directory.of(&tenant).await.map_err(later)?;
        let receiving: Vec<(&String, &Webhook)> =
            state.webhooks.iter().filter(|(_, w)| w.enabled && w.receives(at.event_type)).collect();
        if receiving.is_empty() && !own {
            return Ok(());
        }
        let stored = decode(seq, payload).map_err(|e| Skip::Never(format!("undecodable event: {e}")))?;
        if !at.agrees_with(&stored.envelope) {
            return Err(Skip::Never("the envelope disagrees with its subject".into()));
        }
        let envelope = &stored.envelope;
        if own {
            match event_of::<Webhooks>(envelope).map_err(|e| Skip::Never(e.to_string()))? {
                WebhookEvent::WebhookRedeliveryRequested(r) => {
                    self.redeliver(&tenant, &state, &r, &envelope.id).await?
                }
                // An enabled webhook starts its count of failures in a row over.
                WebhookEvent::WebhookEnabled(e) => {
                    self.out.succeeded(&failure_key(&tenant, &e.webhook_id)).await.map_err(later)?;
                }
                _ => {}
            }
        }
        // A webhook receives the events that happened once it existed.
        let occurred =
            time::OffsetDateTime::parse(&envelope.occurred_at, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .unwrap_or(i64::MAX);
        let body = body_of(envelope);
        let mut queued = false;
        for (webhook_id, webhook) in receiving {
            if webhook.created_at > occurred {
                continue;
            }
            let Some(delivery) = delivery_id(webhook_id, &envelope.id) else { continue };
            let item = Item {
                webhook_id: webhook_id.clone(),
                delivery_id: delivery.clone(),
                event_id: envelope.id.clone(),
                event_type: envelope.event_type.clone(),
                event_seq: seq,
                body: body.clone(),
            };
            self.queue(&tenant, &item, &delivery).await?;
            queued = true;
        }
        if queued {
            let _ = self.wake.try_send(tenant);
        }
        Ok(())
    }

    /// Queues a delivery again, as a redelivery asked: its event is read from
    /// the log by position and must be the delivery's event of this tenant.
    async fn redeliver(
        &self,
        tenant: &TenantId,
        state: &WebhooksState,
        r: &WebhookRedeliveryRequested,
        request_id: &str,
    ) -> Result<(), Skip> {
        let never = |why: &str| Skip::Never(why.to_owned());
        if !state.webhooks.get(&r.webhook_id).is_some_and(|w| w.enabled) {
            return Err(never("the webhook is gone or disabled"));
        }
        let (webhook_id, event_id) = parse_delivery_id(&r.delivery_id).ok_or_else(|| never("not a delivery id"))?;
        if webhook_id != r.webhook_id {
            return Err(never("the delivery is another webhook's"));
        }
        let events = self.store.jetstream().get_stream(EVENTS).await.map_err(later)?;
        let raw = events.get_raw_message(r.event_seq).await.map_err(|_| never("the event is not in the log"))?;
        let original = decode(r.event_seq, &raw.payload).map_err(|e| never(&format!("undecodable event: {e}")))?;
        let envelope = &original.envelope;
        if envelope.id != event_id || envelope.tenant != tenant.as_str() {
            return Err(never("the event is not the delivery's"));
        }
        let item = Item {
            webhook_id,
            delivery_id: r.delivery_id.clone(),
            event_id,
            event_type: envelope.event_type.clone(),
            event_seq: r.event_seq,
            body: body_of(envelope),
        };
        self.queue(tenant, &item, &format!("{}.{request_id}", r.delivery_id)).await?;
        let _ = self.wake.try_send(tenant.clone());
        Ok(())
    }

    /// Queues one item; a full backlog fails the delivery in the log.
    async fn queue(&self, tenant: &TenantId, item: &Item, msg_id: &str) -> Result<(), Skip> {
        if self.out.enqueue(tenant, item, msg_id).await.map_err(later)? {
            return Ok(());
        }
        let attempt = Attempt {
            error: Some("the tenant's webhook backlog is full".into()),
            ..Attempt::of(item, 0, Outcome::Failed)
        };
        self.out.record(tenant, &item.webhook_id, &attempt).await.map_err(later)
    }
}

impl Attempt {
    fn of(item: &Item, attempt: u32, outcome: Outcome) -> Self {
        Self {
            delivery_id: item.delivery_id.clone(),
            event_id: item.event_id.clone(),
            event_type: item.event_type.clone(),
            event_seq: item.event_seq,
            attempt,
            outcome,
            response_code: None,
            latency_ms: 0,
            error: None,
            response: None,
            at: time::OffsetDateTime::now_utc().unix_timestamp(),
            next_attempt_at: None,
        }
    }
}

/// Starts the reactor and the deliverer of this node.
pub fn start(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    store: EventStore,
    keys: KeyRing,
    nats: async_nats::Client,
    out: WebhookOut,
    settings: Settings,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let directory = Arc::new(WebhookDirectory::new(store.clone()));
    let (wake, woken) = tokio::sync::mpsc::channel(1024);
    let reactor = WebhookReactor { store, out: out.clone(), directory: directory.clone(), wake };
    tasks.spawn(reactor.run(cancel.clone()));
    let deliverer = Arc::new(Deliverer::new(out, directory, keys, nats, settings)?);
    tasks.spawn(deliverer.run(woken, cancel));
    Ok(())
}

/// The SSRF guard as the HTTP client's resolver: a name resolves only to
/// addresses webhooks may call, checked when the connection is made.
struct GuardedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = ssrf::lookup(name.as_str(), 0).await?;
            for a in &addrs {
                ssrf::allowed(a.ip(), allow_loopback)?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Makes the calls.
pub struct Deliverer {
    out: WebhookOut,
    directory: Arc<WebhookDirectory>,
    keys: KeyRing,
    nats: async_nats::Client,
    http: reqwest::Client,
    settings: Settings,
    /// Tenants this node is draining now.
    draining: Mutex<HashSet<String>>,
    /// Webhooks this node last saw succeed with a count of zero.
    clean: Mutex<HashSet<String>>,
}

/// Why a call failed, in words safe to show the tenant.
struct CallFailed {
    code: Option<u16>,
    error: String,
    response: Option<String>,
}

impl Deliverer {
    fn new(
        out: WebhookOut,
        directory: Arc<WebhookDirectory>,
        keys: KeyRing,
        nats: async_nats::Client,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .dns_resolver(Arc::new(GuardedResolver { allow_loopback: settings.allow_loopback }))
            .user_agent(concat!("Canopy-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(32)
            .build()
            .context("while building the webhook client")?;
        Ok(Self {
            out,
            directory,
            keys,
            nats,
            http,
            settings,
            draining: Mutex::new(HashSet::new()),
            clean: Mutex::new(HashSet::new()),
        })
    }

    /// Drains every tenant with queued items until `cancel`: those the
    /// reactor names at once, the rest (another node's items, retries whose
    /// wait is over) when the queue is looked at.
    async fn run(
        self: Arc<Self>,
        mut woken: tokio::sync::mpsc::Receiver<TenantId>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(tenant) = woken.recv() => self.clone().drain(tenant, &cancel),
                _ = sweep.tick() => {
                    if let Err(e) = self.clone().sweep(&cancel).await {
                        tracing::warn!(error = %e, "could not look at the webhook queue");
                    }
                }
            }
        }
    }

    /// Starts draining every tenant the queue holds items of.
    async fn sweep(self: Arc<Self>, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut queue = self.out.js.get_stream(QUEUE).await?;
        if queue.info().await?.state.messages == 0 {
            return Ok(());
        }
        let mut subjects = queue.info_with_subjects("webhook.*").await?;
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry?;
            let Some(tenant) = subject.strip_prefix("webhook.").and_then(|t| TenantId::parse(t).ok()) else {
                continue;
            };
            if count > 0 {
                self.clone().drain(tenant, cancel);
            }
        }
        Ok(())
    }

    /// Drains `tenant`'s items in a task of its own, unless one runs already.
    fn drain(self: Arc<Self>, tenant: TenantId, cancel: &CancellationToken) {
        if !self.draining.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant.as_str().to_owned()) {
            return;
        }
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                r = self.drain_tenant(&tenant) => {
                    if let Err(e) = r {
                        tracing::warn!(tenant = tenant.as_str(), error = %e, "draining webhook deliveries failed");
                    }
                }
            }
            self.draining.lock().unwrap_or_else(|e| e.into_inner()).remove(tenant.as_str());
        });
    }

    /// Delivers `tenant`'s items, `concurrency` at a time, until none is ready.
    async fn drain_tenant(&self, tenant: &TenantId) -> anyhow::Result<()> {
        let queue = self.out.js.get_stream(QUEUE).await?;
        let name = format!("wh-{}", tenant.as_str());
        let consumer = queue
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name),
                description: Some("one tenant's webhook deliveries".into()),
                filter_subject: format!("webhook.{}", tenant.as_str()),
                ack_policy: consumer::AckPolicy::Explicit,
                // One attempt's longest time and a margin: an item a stopped
                // node held is offered again soon after.
                ack_wait: self.settings.timeout + Duration::from_secs(5),
                max_ack_pending: self.settings.concurrency as i64,
                inactive_threshold: Duration::from_secs(3600),
                ..Default::default()
            })
            .await?;
        // As many calls in flight as the consumer lets out; more are fetched
        // as each one ends, and the drain ends when none is in flight and
        // none is ready.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            let room = self.settings.concurrency.saturating_sub(in_flight.len());
            if room > 0 {
                let fetched: Vec<_> = consumer
                    .fetch()
                    .max_messages(room)
                    .expires(Duration::from_millis(if in_flight.is_empty() { 500 } else { 50 }))
                    .messages()
                    .await?
                    .collect()
                    .await;
                for m in fetched {
                    match m {
                        Ok(msg) => in_flight.push(self.deliver(tenant, msg)),
                        Err(e) => tracing::warn!(error = %e, "a webhook item could not be read"),
                    }
                }
            }
            if in_flight.is_empty() {
                return Ok(());
            }
            // Wait for a call to end (or, with room left, briefly for new items).
            if room > 0 && in_flight.len() < self.settings.concurrency {
                let _ = tokio::time::timeout(Duration::from_millis(50), in_flight.next()).await;
            } else {
                in_flight.next().await;
            }
        }
    }

    /// Makes one attempt of one item and settles it: acknowledged when done,
    /// offered again after its backoff when it may be retried.
    async fn deliver(&self, tenant: &TenantId, msg: jetstream::Message) {
        let attempt = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let Ok(item) = serde_json::from_slice::<Item>(&msg.payload) else {
            tracing::warn!("an unreadable webhook item was dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let ack = match self.attempt(tenant, &item, attempt).await {
            Err(Outcome::Retrying) => AckKind::Nak(Some(self.settings.backoff(attempt))),
            _ => AckKind::Ack,
        };
        if let Err(e) = msg.ack_with(ack).await {
            tracing::warn!(error = %e, "a webhook item could not be settled; it comes again");
        }
    }

    /// One attempt: the call, its record in the log, and the failure count.
    /// `Err` is how it ended when it did not succeed.
    async fn attempt(&self, tenant: &TenantId, item: &Item, attempt: u32) -> Result<(), Outcome> {
        let state = match self.directory.of(tenant).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a tenant's webhooks; retrying");
                return Err(Outcome::Retrying);
            }
        };
        let mut record = Attempt::of(item, attempt, Outcome::Succeeded);
        let Some(webhook) = state.webhooks.get(&item.webhook_id).filter(|w| w.enabled) else {
            record.outcome = Outcome::Skipped;
            record.error = Some("the webhook was disabled or deleted".into());
            self.log(tenant, item, &record).await;
            return Err(Outcome::Skipped);
        };
        let started = Instant::now();
        let result = self.call(webhook, item).await;
        record.latency_ms = started.elapsed().as_millis() as u64;
        let key = failure_key(tenant, &item.webhook_id);
        match result {
            Ok((code, response)) => {
                record.response_code = Some(code);
                record.response = response;
                self.log(tenant, item, &record).await;
                let was_clean = !self.clean.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
                if !was_clean && let Err(e) = self.out.succeeded(&key).await {
                    self.clean.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    tracing::warn!(error = %e, "could not reset a webhook's failure count");
                }
                Ok(())
            }
            Err(failed) => {
                self.clean.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                let last = attempt >= self.settings.max_attempts;
                record.outcome = if last { Outcome::Failed } else { Outcome::Retrying };
                record.response_code = failed.code;
                record.error = Some(failed.error);
                record.response = failed.response;
                if !last {
                    record.next_attempt_at = Some(record.at + self.settings.backoff(attempt).as_secs() as i64);
                }
                self.log(tenant, item, &record).await;
                match self.out.failed(&key).await {
                    Ok(n) if n >= self.settings.disable_after => self.disable(tenant, &item.webhook_id, n).await,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not count a webhook's failure"),
                }
                Err(record.outcome)
            }
        }
    }

    async fn log(&self, tenant: &TenantId, item: &Item, record: &Attempt) {
        if let Err(e) = self.out.record(tenant, &item.webhook_id, record).await {
            tracing::warn!(error = %e, "could not log a webhook attempt");
        }
    }

    /// Disables a webhook that failed `failures` times in a row: a command
    /// like any other, from the node.
    async fn disable(&self, tenant: &TenantId, webhook_id: &str, failures: u32) {
        let scope = Scope::Tenant(tenant.clone());
        let seed = format!("{scope}/webhook-disable/{webhook_id}/{failures}");
        let Ok(command_id) = CommandId::parse(&format!(
            "whd-{}",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).simple()
        )) else {
            return;
        };
        let reason = format!("it failed {failures} times in a row");
        let envelope = CommandEnvelope {
            command_id,
            principal: Principal::Node,
            request: WebhookRequest::Disable { webhook_id: webhook_id.to_owned(), reason, failures },
            client: None,
        };
        let sent = async {
            let body = serde_json::to_vec(&envelope)?;
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                self.nats.request(command_subject(&scope, Webhooks::NAME), body.into()),
            )
            .await??;
            serde_json::from_slice::<CommandResult<WebhookReply>>(&reply.payload)?.map_err(|e| anyhow!("{e:?}"))?;
            anyhow::Ok(())
        };
        match sent.await {
            Ok(()) => {
                self.directory.forget(tenant);
                tracing::info!(tenant = tenant.as_str(), webhook_id, failures, "a failing webhook was disabled");
            }
            Err(e) => tracing::warn!(error = %e, "could not disable a failing webhook"),
        }
    }

    /// Calls the endpoint once; the response code and the start of the body
    /// when it answered 2xx.
    async fn call(&self, webhook: &Webhook, item: &Item) -> Result<(u16, Option<String>), CallFailed> {
        let fail = |error: String| CallFailed { code: None, error, response: None };
        let url = ssrf::parse(&webhook.url).map_err(|e| fail(e.to_string()))?;
        // Literal addresses are checked here; names again by the resolver when
        // the connection is made.
        ssrf::resolve(&url, self.settings.allow_loopback).await.map_err(|e| fail(e.to_string()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut signatures = Vec::new();
        for sealed in webhook.signing_secrets(now) {
            let secret = self.open(sealed).await.map_err(|e| fail(format!("the signing secret: {e}")))?;
            let signer =
                standardwebhooks::Webhook::new(&secret).map_err(|_| fail("the signing secret is malformed".into()))?;
            signatures.push(
                signer
                    .sign(&item.delivery_id, now, item.body.as_bytes())
                    .map_err(|_| fail("the body is not UTF-8".into()))?,
            );
        }
        let method =
            reqwest::Method::from_bytes(webhook.method.as_str().as_bytes()).map_err(|e| fail(e.to_string()))?;
        let mut request = self
            .http
            .request(method, url)
            .header("content-type", "application/json")
            .header("webhook-id", &item.delivery_id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(item.body.clone());
        if let Some(sealed) = &webhook.auth.credentials {
            let opened = self.open(sealed).await.map_err(|e| fail(format!("the credentials: {e}")))?;
            let creds: serde_json::Value =
                serde_json::from_str(&opened).map_err(|_| fail("the credentials are malformed".into()))?;
            let field = |k: &str| creds[k].as_str().unwrap_or_default().to_owned();
            request = match webhook.auth.kind {
                AuthKind::None => request,
                AuthKind::Basic => request.basic_auth(field("username"), Some(field("password"))),
                AuthKind::Bearer => request.bearer_auth(field("token")),
                AuthKind::ApiKey => request.header(webhook.auth.header.clone().unwrap_or_default(), field("value")),
            };
        }
        let mut response = request.send().await.map_err(|e| fail(describe(&e)))?;
        let code = response.status().as_u16();
        let mut read = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read.extend_from_slice(&chunk[..chunk.len().min(MAX_RESPONSE - read.len())]);
                    if read.len() >= MAX_RESPONSE {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(CallFailed { code: Some(code), error: describe(&e), response: None }),
            }
        }
        let kept = String::from_utf8_lossy(&read[..read.len().min(KEPT_RESPONSE)]).into_owned();
        let response = (!kept.is_empty()).then_some(kept);
        if (200..300).contains(&code) {
            return Ok((code, response));
        }
        let error = if (300..400).contains(&code) {
            format!("the endpoint answered {code}; redirects are not followed")
        } else {
            format!("the endpoint answered {code}")
        };
        Err(CallFailed { code: Some(code), error, response })
    }

    /// Opens a sealed value of the tenant as text.
    async fn open(&self, sealed: &Sealed) -> Result<String, String> {
        match self.keys.open_string(sealed).await {
            Ok(s) => Ok(s),
            Err(SealError::MissingKey(_) | SealError::Shredded(_)) => Err("the tenant's key is gone".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A client error in words safe to show the tenant (no internal detail).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the call timed out".into()
    } else if e.is_connect() {
        // The resolver's refusal (an address webhooks may not call) is a connect error.
        let mut source: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = source {
            if let Some(refused) = s.downcast_ref::<ssrf::Refused>() {
                return refused.to_string();
            }
            source = s.source();
        }
        "the endpoint could not be reached".into()
    } else {
        "the call failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_id_names_its_webhook_and_event_and_nothing_else_parses() {
        let w = uuid::Uuid::new_v4().to_string();
        let e = uuid::Uuid::now_v7().to_string();
        let id = delivery_id(&w, &e).unwrap();
        assert!(id.starts_with("msg_") && id.len() == 68, "{id}");
        assert_eq!(parse_delivery_id(&id), Some((w.clone(), e.clone())));
        assert_eq!(delivery_id(&w, &e), Some(id.clone()), "the same event to the same webhook is one delivery");
        for bad in ["", "msg_", "msg_xyz", &id.to_uppercase(), &format!("{id}0"), &id.replace("msg_", "evt_")] {
            assert_eq!(parse_delivery_id(bad), None, "{bad}");
        }
        assert_eq!(delivery_id("not-a-uuid", &e), None);
    }

    #[test]
    fn the_backoff_grows_fourfold_and_stops_at_six_hours() {
        let s = Settings {
            allow_loopback: false,
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            backoff: Duration::from_secs(5),
            disable_after: 20,
            concurrency: 8,
            log_age: Duration::from_secs(60),
        };
        assert_eq!(s.backoff(1), Duration::from_secs(5));
        assert_eq!(s.backoff(2), Duration::from_secs(20));
        assert_eq!(s.backoff(3), Duration::from_secs(80));
        assert_eq!(s.backoff(40), MAX_BACKOFF);
    }
}
