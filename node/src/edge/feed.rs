//! A feed: an in-memory view the edge consults on every request, fed by the log
//! alone through an ordered consumer on `EVENTS`. Each node follows the log
//! itself, so every node's view converges without any other channel, and a
//! restarted node reads what matters before it reports ready.

use std::time::Duration;

use actors::store::event_store::{EventStore, EventSubject, STREAM, Stored, decode};
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far a feed has read: the stream sequence of the last event it applied,
/// and whether every event that existed when it started has been applied.
pub struct Marks {
    seen: watch::Sender<u64>,
    ready: watch::Sender<bool>,
}

impl Default for Marks {
    fn default() -> Self {
        Self { seen: watch::channel(0).0, ready: watch::channel(false).0 }
    }
}

impl Marks {
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the event stored at `seq` has been applied (bounded by `timeout`).
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    fn advance(&self, seq: u64) {
        self.seen.send_if_modified(|s| {
            let newer = seq > *s;
            *s = (*s).max(seq);
            newer
        });
    }
}

/// What a feed reads and how it applies it.
pub trait Feed: Send + Sync {
    /// Its name in log lines.
    const NAME: &'static str;
    /// The subjects it follows.
    fn filter(&self) -> &'static str;
    /// Where it starts reading, each time it (re)connects.
    fn start(&self) -> DeliverPolicy;
    /// Applies one event that agrees with its subject.
    fn apply(&self, stored: Stored);
    fn marks(&self) -> &Marks;
}

/// Follows the log into `feed` until `cancel`, starting again after errors.
pub async fn run<F: Feed>(feed: &F, store: EventStore, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = follow(feed, &store) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, feed = F::NAME, "a feed lost its consumer; resuming");
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn follow<F: Feed>(feed: &F, store: &EventStore) -> anyhow::Result<()> {
    let stream = store.jetstream().get_stream(STREAM).await?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: feed.filter().into(),
            deliver_policy: feed.start(),
            max_expires: actors::store::event_store::FAILOVER_EXPIRY,
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    if pending == 0 {
        feed.marks().ready.send_replace(true);
    }
    let mut read = 0u64;
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let seq = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        read += 1;
        match decode(seq, &msg.payload) {
            Ok(stored) if EventSubject::parse(&msg.subject).is_some_and(|s| s.agrees_with(&stored.envelope)) => {
                feed.apply(stored)
            }
            _ => tracing::warn!(seq, feed = F::NAME, "an undecodable event"),
        }
        feed.marks().advance(seq);
        if read >= pending {
            feed.marks().ready.send_replace(true);
        }
    }
    Ok(())
}
