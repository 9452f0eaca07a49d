//! What every reactor shares: a durable pull consumer on `EVENTS`, shared by
//! every node, that hands each event to the reactor and acknowledges it when
//! the reactor is done with it. Its position lives in NATS, so a restart
//! resumes after the last acknowledged event and skips none. An event the
//! reactor can never act on is logged and acknowledged; one that failed for a
//! passing reason (NATS, the key store) is offered again after a delay.

use std::future::Future;
use std::time::Duration;

use actors::store::event_store::EventStore;
use anyhow::anyhow;
use async_nats::jetstream::{AckKind, consumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// How long a failed event waits before it is offered again, and a lost
/// consumer before it is made again.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Why an event did not lead to its work.
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    /// It never will: malformed, expired, or its person or tenant was erased.
    /// Logged and acknowledged.
    #[error("nothing to do for this event: {0}")]
    Never(String),
    /// NATS or the key store failed: offered again later.
    #[error("will retry: {0}")]
    Later(String),
}

pub fn later(e: impl std::fmt::Display) -> Skip {
    Skip::Later(e.to_string())
}

/// A reactor: what one event of the log becomes.
pub trait React: Sync {
    /// How many events it works on at once. One keeps the log's order; more
    /// suit a reactor whose work for one event does not depend on another's
    /// (each event is acknowledged when its own work is done, in any order).
    const CONCURRENCY: usize = 1;

    /// The durable consumer's name and description, and its filter subjects.
    fn consumer(&self) -> (&'static str, &'static str, Vec<String>);

    /// Does the work of the event at stream sequence `seq`.
    fn react(&self, seq: u64, subject: &str, payload: &[u8]) -> impl Future<Output = Result<(), Skip>> + Send;
}

/// Follows the log for `reactor` until `cancel`; makes the consumer again
/// after an error.
pub async fn run<R: React>(store: &EventStore, reactor: &R, cancel: CancellationToken) -> anyhow::Result<()> {
    let (name, _, _) = reactor.consumer();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = follow(store, reactor) => {
                if let Err(e) = r {
                    tracing::warn!(consumer = name, error = %e, "a reactor lost its consumer; resuming");
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

async fn follow<R: React>(store: &EventStore, reactor: &R) -> anyhow::Result<()> {
    let (name, description, filters) = reactor.consumer();
    let stream = store.jetstream().get_stream(actors::store::event_store::STREAM).await?;
    let consumer = stream
        // Created, or updated to today's filters when an older node made it.
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            description: Some(description.into()),
            filter_subjects: filters,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: (R::CONCURRENCY as i64).max(1) * 16,
            ..Default::default()
        })
        .await?;
    // Short pulls: a pull waiting on a lost NATS server is noticed in seconds.
    let expiry = actors::store::event_store::FAILOVER_EXPIRY;
    let messages = consumer.stream().expires(expiry).heartbeat(expiry / 2).messages().await?;
    let mut settled = messages
        .map(|msg| async move {
            let msg = msg?;
            let seq = msg.info().map_err(|e| anyhow!("{e}"))?.stream_sequence;
            match reactor.react(seq, &msg.subject, &msg.payload).await {
                Ok(()) => msg.ack().await.map_err(|e| anyhow!("{e}"))?,
                Err(Skip::Never(why)) => {
                    tracing::info!(consumer = name, seq, reason = %why, "nothing to do for an event");
                    msg.ack().await.map_err(|e| anyhow!("{e}"))?;
                }
                Err(Skip::Later(why)) => {
                    tracing::warn!(consumer = name, seq, error = %why, "an event's work failed; retrying");
                    msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await.map_err(|e| anyhow!("{e}"))?;
                }
            }
            anyhow::Ok(())
        })
        .buffer_unordered(R::CONCURRENCY.max(1));
    while let Some(done) = settled.next().await {
        done?;
    }
    Ok(())
}
