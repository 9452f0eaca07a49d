//! Push to clients. The nodes hold a connection in the NATS account `PUSH`
//! (`nats/auth.rs`), where push clients live, and keep there the stream
//! `PUSH` (`push.>`): every push for a bounded time, so a client that was
//! offline catches up (GraphQL `messages`), since nats-server delivers to MQTT
//! subscribers at QoS 0 only.
//!
//! The push reactor is a durable consumer on `EVENTS`: a `MessagePublished`
//! becomes its opened payload on `push.{tenant}.{topic}`; any other event of
//! a type its tenant forwards becomes the event, with every sealed value left
//! out, on `push.{tenant}.events.{type}`. Each push carries its event's id as
//! `Nats-Msg-Id`, so a crash between the push and the acknowledgement pushes
//! nothing twice within the stream's duplicate window, and the consumer's
//! position in NATS means no event is skipped across a restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use actors::domain::aggregate::Aggregate;
use actors::domain::push::{Push, PushEvent, SETTINGS_ID, Topic};
use actors::domain::tenant::{Scope, TenantId};
use actors::store::event_store::{Envelope, EventStore, EventSubject, decode, event_of};
use actors::store::seal::{KeyRing, SealError, Sealed};
use actors::tree::executor::load;
use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::outbound::durable::{self, React, Skip, later};

/// The history stream's name, in `PUSH`.
pub const STREAM: &str = "PUSH";
/// The durable consumer's name on `EVENTS`.
pub const CONSUMER: &str = "push-reactor";
/// The header that carries a push's id to NATS clients: a message's id, or a
/// forwarded event's.
pub const ID_HEADER: &str = "Canopy-Push-Id";
/// The most pushes one `messages` page returns.
pub const MAX_PAGE: usize = 100;
/// Tenants whose forwarding choice is held; more start the cache over.
const SETTINGS_CACHED: usize = 100_000;

/// nats-server's stream of MQTT retained messages in an account, and the
/// prefix of its subjects (`$MQTT.rmsgs.{NATS subject}`).
const RETAINED_STREAM: &str = "$MQTT_rmsgs";
const RETAINED_PREFIX: &str = "$MQTT.rmsgs.";

/// The subject of `topic` for `tenant`.
pub fn subject(tenant: &TenantId, topic: &Topic) -> String {
    format!("push.{}.{}", tenant.as_str(), topic.subject_tokens())
}

/// A push's id, from its `Canopy-Push-Id` header.
pub fn push_id(msg: &async_nats::Message) -> String {
    msg.headers.as_ref().and_then(|h| h.get(ID_HEADER)).map(|v| v.to_string()).unwrap_or_default()
}

/// The nodes' side of `PUSH`: the connection and the history stream.
#[derive(Clone)]
pub struct PushOut {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// One push as `messages` returns it.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Its place in the history: the cursor to page on.
    pub seq: u64,
    /// The message's id, or the forwarded event's.
    pub id: String,
    pub topic: String,
    pub payload: String,
    /// Unix seconds.
    pub at: i64,
}

impl PushOut {
    /// Opens the history stream on `client` (a node user of `PUSH`), creating
    /// it, or updating its retention to `history`.
    pub async fn open(client: async_nats::Client, history: Duration, replicas: usize) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: STREAM.to_owned(),
            description: Some("every push to clients, kept for a bounded time so offline clients catch up".into()),
            subjects: vec!["push.>".to_owned()],
            storage: stream::StorageType::File,
            max_age: history,
            // A topic keeps its newest thousand; one tenant cannot fill the disk.
            max_messages_per_subject: 1000,
            max_bytes: 1024 * 1024 * 1024,
            max_message_size: (actors::domain::push::MAX_PAYLOAD + 16 * 1024) as i32,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            ..Default::default()
        };
        match js.get_stream(STREAM).await {
            Ok(_) => {
                js.update_stream(config).await.context("while updating the PUSH stream")?;
            }
            Err(_) => {
                js.create_stream(config).await.context("while creating the PUSH stream")?;
            }
        }
        // nats-server makes this stream when the account's first MQTT client
        // connects; made here first, with the configuration the server makes
        // it with (which it accepts as its own), retained messages published
        // before then are kept too.
        if js.get_stream(RETAINED_STREAM).await.is_err() {
            let retained = stream::Config {
                name: RETAINED_STREAM.to_owned(),
                subjects: vec![format!("{RETAINED_PREFIX}>")],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                num_replicas: replicas,
                ..Default::default()
            };
            if let Err(e) = js.create_stream(retained).await
                && js.get_stream(RETAINED_STREAM).await.is_err()
            {
                return Err(anyhow!("while creating the MQTT retained messages stream: {e}"));
            }
        }
        Ok(Self { client, js })
    }

    /// Makes `payload` the retained message of `subject` for MQTT clients (an
    /// empty payload clears it). nats-server keeps an account's retained
    /// messages in `$MQTT_rmsgs`, one per subject, with the MQTT flags in a
    /// header; every server of the account follows that stream and hands the
    /// message to each MQTT subscription that starts later. QoS 0, as every
    /// push to MQTT clients.
    async fn retain(&self, subject: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nmqtt-RTopic", subject.replace('.', "/").as_str());
        // The retain flag (0x1) at QoS 0, in hex; `-` before it marks a deletion.
        headers.insert("Nmqtt-RFlags", if payload.is_empty() { "-1" } else { "1" });
        headers.insert("Nmqtt-ROrigin", "canopy");
        self.js.publish_with_headers(format!("{RETAINED_PREFIX}{subject}"), headers, payload.into()).await?.await?;
        Ok(())
    }

    /// The node's connection to `PUSH`, for live subscriptions to pushes.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publishes one push and waits until the history holds it.
    async fn publish(&self, subject: String, id: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        headers.insert(ID_HEADER, id);
        self.js.publish_with_headers(subject, headers, payload.into()).await?.await?;
        Ok(())
    }

    /// The tenant's pushes on `topic` after history position `after` (0: from
    /// the oldest kept) and not before `since` (Unix seconds), oldest first, at
    /// most `first`.
    pub async fn history(
        &self,
        tenant: &TenantId,
        topic: &Topic,
        since: Option<i64>,
        after: u64,
        first: usize,
    ) -> anyhow::Result<Vec<Pushed>> {
        let first = first.clamp(1, MAX_PAGE);
        let stream = self.js.get_stream(STREAM).await?;
        let deliver_policy = match (after, since) {
            (a, _) if a > 0 => consumer::DeliverPolicy::ByStartSequence { start_sequence: a + 1 },
            (_, Some(s)) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp(s).map_err(|e| anyhow!(e))?,
            },
            _ => consumer::DeliverPolicy::All,
        };
        let mut c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject(tenant, topic),
                deliver_policy,
                max_expires: actors::store::event_store::FAILOVER_EXPIRY,
                ..Default::default()
            })
            .await?;
        let pending = c.info().await?.num_pending as usize;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = c.messages().await?;
        while out.len() < first.min(pending) {
            let Some(msg) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await? else { break };
            let msg = msg.map_err(|e| anyhow!(e))?;
            let info = msg.info().map_err(|e| anyhow!(e))?;
            let (seq, at) = (info.stream_sequence, info.published.unix_timestamp());
            if since.is_some_and(|s| at < s) {
                continue;
            }
            let id = push_id(&msg);
            let payload = String::from_utf8_lossy(&msg.payload).into_owned();
            out.push(Pushed { seq, id, topic: topic.as_str().to_owned(), payload, at });
        }
        Ok(out)
    }
}

impl React for PushReactor {
    fn consumer(&self) -> (&'static str, &'static str, Vec<String>) {
        (CONSUMER, "turns published messages and forwarded events into pushes on PUSH", vec!["evt.>".to_owned()])
    }

    async fn react(&self, seq: u64, subject: &str, payload: &[u8]) -> Result<(), Skip> {
        self.push(seq, subject, payload).await
    }
}

pub struct PushReactor {
    pub store: EventStore,
    pub keys: KeyRing,
    pub out: PushOut,
    /// Each tenant's forwarded event types, as the log last said.
    forwarded: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl PushReactor {
    pub fn new(store: EventStore, keys: KeyRing, out: PushOut) -> Self {
        Self { store, keys, out, forwarded: Mutex::new(HashMap::new()) }
    }

    /// Follows the log until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        durable::run(&self.store, &self, cancel).await
    }

    /// Pushes what one event asks for, if anything.
    async fn push(&self, seq: u64, event_subject: &str, payload: &[u8]) -> Result<(), Skip> {
        let at = EventSubject::parse(event_subject).ok_or_else(|| Skip::Never("not an event subject".into()))?;
        let Ok(Scope::Tenant(tenant)) = Scope::parse_token(at.tenant) else { return Ok(()) };
        let is_push = at.aggregate == <Push as Aggregate>::NAME;
        if !is_push && !self.forwards(&tenant, at.event_type).await? {
            return Ok(());
        }
        let stored = decode(seq, payload).map_err(|e| Skip::Never(format!("undecodable event: {e}")))?;
        if !at.agrees_with(&stored.envelope) {
            return Err(Skip::Never("the envelope disagrees with its subject".into()));
        }
        let envelope = &stored.envelope;
        if is_push {
            match event_of::<Push>(envelope).map_err(|e| Skip::Never(e.to_string()))? {
                PushEvent::MessagePublished(m) => {
                    let topic = Topic::parse(&m.topic).map_err(|e| Skip::Never(e.to_string()))?;
                    let sealed =
                        Sealed::from_json(&m.payload).ok_or_else(|| Skip::Never("the payload is not sealed".into()))?;
                    let payload = match self.keys.open(&sealed).await {
                        Ok(p) => p,
                        Err(SealError::MissingKey(_) | SealError::Shredded(_)) => {
                            return Err(Skip::Never("the tenant's key is gone".into()));
                        }
                        Err(e) => return Err(later(e)),
                    };
                    // The message's id, as `publishMessage` answered it.
                    let id = &envelope.aggregate_id;
                    let subject = subject(&tenant, &topic);
                    if m.retain {
                        self.out.retain(&subject, payload.clone()).await.map_err(later)?;
                    }
                    // An empty retained message only clears the retained one.
                    if !(m.retain && payload.is_empty()) {
                        self.out.publish(subject, id, payload).await.map_err(later)?;
                    }
                }
                PushEvent::ForwardingSet(f) => {
                    let mut held = self.forwarded.lock().unwrap_or_else(|e| e.into_inner());
                    held.insert(tenant.as_str().to_owned(), f.types.into_iter().collect());
                }
            }
            // Push events are never forwarded: a message is pushed as itself.
            return Ok(());
        }
        let topic = Topic::for_event(&envelope.event_type).map_err(|e| Skip::Never(e.to_string()))?;
        let body = serde_json::to_vec(&forwarded(envelope)).map_err(|e| Skip::Never(e.to_string()))?;
        self.out.publish(subject(&tenant, &topic), &envelope.id, body).await.map_err(later)
    }

    /// Whether `tenant` forwards events of `event_type`: its choice as the
    /// log last said, read once per tenant and kept up to date by the
    /// `ForwardingSet` events this reactor sees.
    async fn forwards(&self, tenant: &TenantId, event_type: &str) -> Result<bool, Skip> {
        if let Some(types) = self.forwarded.lock().unwrap_or_else(|e| e.into_inner()).get(tenant.as_str()) {
            return Ok(types.contains(event_type));
        }
        let scope = Scope::Tenant(tenant.clone());
        let types = load::<Push>(&self.store, &scope, SETTINGS_ID).await.map_err(later)?.state.forwarded;
        let answer = types.contains(event_type);
        let mut held = self.forwarded.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= SETTINGS_CACHED {
            held.clear();
        }
        held.entry(tenant.as_str().to_owned()).or_insert(types);
        Ok(answer)
    }
}

/// An event as its tenant's push clients get it: the envelope's public parts
/// and its data with every sealed value left out (at any depth).
pub fn forwarded(envelope: &Envelope) -> Value {
    fn strip(v: &Value) -> Option<Value> {
        if Sealed::from_json(v).is_some() {
            return None;
        }
        Some(match v {
            Value::Object(map) => Value::Object(map.iter().filter_map(|(k, v)| Some((k.clone(), strip(v)?))).collect()),
            Value::Array(items) => Value::Array(items.iter().filter_map(strip).collect()),
            other => other.clone(),
        })
    }
    serde_json::json!({
        "id": envelope.id,
        "type": envelope.event_type,
        "tenant": envelope.tenant,
        "aggregate": envelope.aggregate,
        "aggregate_id": envelope.aggregate_id,
        "occurred_at": envelope.occurred_at,
        "actor": envelope.actor,
        "data": strip(&envelope.data).unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_event_keeps_no_sealed_value_at_any_depth() {
        let sealed = serde_json::json!({ "kid": "person.acme.1", "n": "bm9uY2U", "c": "Y2lwaGVy" });
        let envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": "e1", "type": "ProfileUpdated", "tenant": "acme", "aggregate": "account",
            "aggregate_id": "a1", "occurred_at": "2026-12-06T00:00:00Z", "command_id": "c1",
            "request_digest": "d", "schema_version": 1,
            "client": sealed,
            "data": { "name": sealed, "locale": "de", "nested": { "email": sealed, "keep": 1 }, "list": [sealed, 2] },
        }))
        .unwrap();
        let out = forwarded(&envelope);
        assert_eq!(out["data"], serde_json::json!({ "locale": "de", "nested": { "keep": 1 }, "list": [2] }), "{out}");
        assert!(out.get("client").is_none() && out.get("request_digest").is_none(), "{out}");
        assert!(!out.to_string().contains("Y2lwaGVy"));
    }
}
