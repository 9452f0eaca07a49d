//! GraphQL subscriptions (`graphql-transport-ws` on `GET /graphql`, the
//! protocol graphql-ws and Apollo speak): `events(types)`, the tenant's
//! events as this node projects them, sealed values left out; and
//! `messages(topic)`, the tenant's pushes on a topic, from account `PUSH`.
//!
//! The token comes in `connection_init` (`{"Authorization": "Bearer …",
//! "x-tenant-id": "acme"}`) and is checked like a request's headers; each
//! subscription checks its field's permission (`ROOT_FIELDS`) when it starts,
//! and ends when the token expires. Every buffer is bounded: a subscriber
//! that falls further behind than `BUFFER` items gets an error and its
//! subscription ends, so a slow reader never holds more than that.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::domain::push::Topic;
use actors::domain::tenant::{Scope, TenantId};
use actors::store::event_store::Envelope;
use async_graphql::{Context, ID, Json, SimpleObject, Subscription};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

use super::permissions::{allowed, needs};
use super::request::{bad_input, error, internal, parts, tenant_of};
use crate::App;

/// Items a subscriber may fall behind before its subscription ends.
pub const BUFFER: usize = 256;
/// Most event types one `events` subscription names.
const MAX_TYPES: usize = 100;

/// An event as a subscriber gets it.
#[derive(Debug, Clone, SimpleObject)]
pub struct LiveEvent {
    id: ID,
    /// The event type, like `ProfileUpdated`.
    #[graphql(name = "type")]
    event_type: String,
    aggregate: String,
    aggregate_id: String,
    /// RFC 3339, UTC.
    occurred_at: String,
    /// The event's data, every sealed value left out.
    data: Json<serde_json::Value>,
}

/// Each tenant's live events on this node, for its subscribers. The
/// projector publishes an event once it is committed, and only for tenants
/// that have a subscriber; each tenant has its own bounded channel, so one
/// tenant's traffic never makes another's subscribers fall behind.
#[derive(Default)]
pub struct LiveEvents {
    tenants: Mutex<HashMap<String, broadcast::Sender<Arc<LiveEvent>>>>,
}

impl LiveEvents {
    /// Whether `tenant` has a subscriber now.
    pub fn listened(&self, tenant: &str) -> bool {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).is_some_and(|s| s.receiver_count() > 0)
    }

    /// Hands a committed event to `tenant`'s subscribers.
    pub fn publish(&self, tenant: &str, envelope: &Envelope) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = tenants.get(tenant) else { return };
        if sender.receiver_count() == 0 {
            tenants.remove(tenant);
            return;
        }
        let body = crate::outbound::push::forwarded(envelope);
        let _ = sender.send(Arc::new(LiveEvent {
            id: ID(envelope.id.clone()),
            event_type: envelope.event_type.clone(),
            aggregate: envelope.aggregate.clone(),
            aggregate_id: envelope.aggregate_id.clone(),
            occurred_at: envelope.occurred_at.clone(),
            data: Json(body["data"].clone()),
        }));
    }

    fn subscribe(&self, tenant: &str) -> broadcast::Receiver<Arc<LiveEvent>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.entry(tenant.to_owned()).or_insert_with(|| broadcast::channel(BUFFER).0).subscribe()
    }
}

/// A push as a subscriber gets it.
#[derive(Debug, Clone, SimpleObject)]
pub struct LiveMessage {
    /// The message's id, or the forwarded event's.
    id: ID,
    topic: String,
    payload: String,
}

/// Checks the field's permission for the connection's caller, and returns
/// the caller's tenant and when its token expires.
async fn admitted(ctx: &Context<'_>, field: &str) -> async_graphql::Result<(TenantId, Option<i64>)> {
    let (app, req) = parts(ctx);
    let needs = needs("Subscription", field).ok_or_else(|| error("FORBIDDEN", "this field declares no permission"))?;
    allowed(app, req, needs).await?;
    let tenant = tenant_of(req, "subscriptions belong to a tenant")?.clone();
    Ok((tenant, req.expires_at()))
}

/// `items` until the token expires, when the subscription completes.
fn until_expiry<T: Send + 'static>(
    items: impl Stream<Item = async_graphql::Result<T>> + Send + 'static,
    expires: Option<i64>,
) -> impl Stream<Item = async_graphql::Result<T>> + Send + 'static {
    let left =
        expires.map_or(u64::MAX / 4, |exp| (exp - time::OffsetDateTime::now_utc().unix_timestamp()).max(0) as u64);
    items.take_until(tokio::time::sleep(Duration::from_secs(left)))
}

/// `items` up to and including the first error: a subscriber that fell
/// behind gets its error, then the end.
fn end_after_error<T: Send + 'static>(
    items: impl Stream<Item = async_graphql::Result<T>> + Send + 'static,
) -> impl Stream<Item = async_graphql::Result<T>> + Send + 'static {
    items.scan(false, |done, item| {
        if *done {
            return futures::future::ready(None);
        }
        *done = item.is_err();
        futures::future::ready(Some(item))
    })
}

#[derive(Default)]
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The tenant's events as this node projects them (of `types`, or all),
    /// every sealed value left out. Permission `read_audit`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<String>>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveEvent>> + use<>> {
        let (tenant, expires) = admitted(ctx, "events").await?;
        let wanted: Option<BTreeSet<String>> = match types {
            None => None,
            Some(t) if t.len() > MAX_TYPES => return Err(bad_input("types", "at most 100 event types")),
            Some(t) => {
                let known = actors::contract::event_types();
                if let Some(unknown) = t.iter().find(|e| !known.contains(*e)) {
                    return Err(bad_input("types", format!("unknown event type {unknown}")));
                }
                Some(t.into_iter().collect())
            }
        };
        let (app, _) = parts(ctx);
        let rx = app.live.subscribe(tenant.as_str());
        let items = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((Ok(e), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Some((Err(error("SLOW_CONSUMER", format!("the subscriber fell {n} events behind"))), rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        let items = end_after_error(items).filter_map(move |item| {
            let keep = match (&item, &wanted) {
                (Ok(e), Some(w)) => w.contains(&e.event_type),
                _ => true,
            };
            futures::future::ready(keep.then(|| item.map(|e| e.as_ref().clone())))
        });
        Ok(until_expiry(items, expires))
    }

    /// The tenant's pushes on `topic` (a topic as `publishMessage` takes it,
    /// or under `events/`), as they are pushed. Permission `subscribe_messages`.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        topic: String,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveMessage>> + use<>> {
        let (tenant, expires) = admitted(ctx, "messages").await?;
        let topic = Topic::parse(&topic).map_err(|e| bad_input("topic", e))?;
        let (app, _) = parts(ctx);
        let push = super::push::push_of(app)?;
        let subject = crate::outbound::push::subject(&tenant, &topic);
        let mut sub = push.client().subscribe(subject).await.map_err(|e| internal("subscribing to pushes", e))?;
        // The NATS subscription is drained at once into a bounded channel. A
        // subscriber that lets it fill loses the subscription there and then
        // (nothing more is held for it) and learns why after what it had.
        let (tx, rx) = tokio::sync::mpsc::channel::<LiveMessage>(BUFFER);
        let lagged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (shown, flag) = (topic.as_str().to_owned(), lagged.clone());
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let id = crate::outbound::push::push_id(&msg);
                let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                match tx.try_send(LiveMessage { id: ID(id), topic: shown.clone(), payload }) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            // Dropping `sub` ends the NATS subscription.
        });
        let slow = futures::stream::once(async move { lagged.load(std::sync::atomic::Ordering::SeqCst) }).filter_map(
            |lagged| {
                futures::future::ready(
                    lagged
                        .then(|| Err(error("SLOW_CONSUMER", format!("the subscriber fell {BUFFER} messages behind")))),
                )
            },
        );
        let items = tokio_stream_of(rx).map(Ok).chain(slow);
        Ok(until_expiry(items, expires))
    }
}

/// A receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// The context a WebSocket connection's subscriptions run in: the
/// `connection_init` payload read as request headers (`Authorization`,
/// `x-tenant-id`, `x-tenant-key`, `accept-language`), checked like a request's.
pub async fn connection_data(
    app: Arc<App>,
    client: std::net::IpAddr,
    payload: serde_json::Value,
) -> async_graphql::Result<async_graphql::Data> {
    let mut headers = poem::http::HeaderMap::new();
    if let Some(fields) = payload.as_object() {
        for (k, v) in fields {
            let (Some(v), Ok(name)) = (v.as_str(), poem::http::HeaderName::from_bytes(k.to_lowercase().as_bytes()))
            else {
                continue;
            };
            if let Ok(value) = poem::http::HeaderValue::from_str(v) {
                headers.insert(name, value);
            }
        }
    }
    let req = crate::edge::resolve_given(&app, &headers, client).await.map_err(async_graphql::Error::new)?;
    if matches!(req.scope, Scope::Platform) {
        return Err(async_graphql::Error::new("subscriptions belong to a tenant: send x-tenant-id"));
    }
    let mut data = async_graphql::Data::default();
    data.insert(app);
    data.insert(req);
    Ok(data)
}
