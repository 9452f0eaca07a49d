//! The revocation set the edge consults on every signed-in request: the ids of
//! sessions revoked recently enough that an access token of theirs could still
//! be unexpired. It is fed by the log alone: an ordered consumer on `EVENTS`
//! for `SessionRevoked`, started at the oldest revocation that still matters
//! (now less the access tokens' lifetime), so a restarted node knows every
//! revocation that can affect it before it serves.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use actors::store::event_store::{EventStore, EventSubject, STREAM, decode};
use async_nats::jetstream::consumer;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The events that end a session.
const FILTER: &str = "evt.*.account.*.SessionRevoked";

pub struct Revocations {
    /// Revoked session ids, with when the revocation was read (Unix seconds).
    revoked: RwLock<HashMap<String, i64>>,
    /// The stream sequence of the last revocation read; 0 before the first.
    seen: watch::Sender<u64>,
    /// Whether the revocations that existed at start have all been read.
    ready: watch::Sender<bool>,
    /// How long a revocation is kept: the access tokens' lifetime plus leeway.
    keep_secs: i64,
}

impl Revocations {
    pub fn new(token_ttl_secs: u64) -> Self {
        Self {
            revoked: RwLock::default(),
            seen: watch::channel(0).0,
            ready: watch::channel(false).0,
            keep_secs: token_ttl_secs as i64 + 60,
        }
    }

    pub fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked.read().expect("the revocation set's lock is never poisoned").contains_key(session_id)
    }

    /// Whether every revocation that existed when the node started is known.
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the revocation stored at `seq` has been read (bounded by `timeout`).
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    fn insert(&self, session_id: String, seq: u64) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut set = self.revoked.write().expect("the revocation set's lock is never poisoned");
        // Entries older than any token they could affect leave as new ones come.
        set.retain(|_, at| *at + self.keep_secs >= now);
        set.insert(session_id, now);
        drop(set);
        self.seen.send_if_modified(|s| {
            let newer = seq > *s;
            *s = (*s).max(seq);
            newer
        });
    }

    /// Follows the log's revocations until `cancel`, resuming after errors.
    pub async fn run(&self, store: EventStore, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut from = time::OffsetDateTime::now_utc() - time::Duration::seconds(self.keep_secs);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = self.follow(&store, from) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "the revocation feed lost its consumer; resuming");
                    }
                }
            }
            // Resume a little before where the last attempt could have stopped.
            from = time::OffsetDateTime::now_utc() - time::Duration::seconds(self.keep_secs);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn follow(&self, store: &EventStore, from: time::OffsetDateTime) -> anyhow::Result<()> {
        let stream = store.jetstream().get_stream(STREAM).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: FILTER.into(),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: from },
                ..Default::default()
            })
            .await?;
        let mut consumer = consumer;
        let pending = consumer.info().await?.num_pending;
        if pending == 0 {
            self.ready.send_replace(true);
        }
        let mut read = 0u64;
        let mut messages = consumer.messages().await?;
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            let seq = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            read += 1;
            match decode(seq, &msg.payload) {
                Ok(stored) if EventSubject::parse(&msg.subject).is_some_and(|s| s.agrees_with(&stored.envelope)) => {
                    match stored.envelope.data.get("session_id").and_then(|v| v.as_str()) {
                        Some(sid) => self.insert(sid.to_owned(), seq),
                        None => tracing::warn!(seq, "a SessionRevoked event without a session id"),
                    }
                }
                _ => tracing::warn!(seq, "an undecodable SessionRevoked event"),
            }
            if read >= pending {
                self.ready.send_replace(true);
            }
        }
        Ok(())
    }
}
