//! Membership through KV `nodes`: every node puts its entry (id, version, HTTP
//! address) under its id several times per `dead_after`, and watches the
//! bucket. A node whose last heartbeat this node saw is older than
//! `dead_after` is dead for it; a node that could not write its own heartbeat
//! for that long counts itself out too (it stops taking tenants, see
//! `placement`). A node that stops cleanly deletes its entry, so the others
//! drop it at once.
//!
//! Ages are measured on each node's monotonic clock from when it received an
//! entry, never by comparing two machines' wall clocks; only the entries
//! already in the bucket when a node starts are aged by their server
//! timestamps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub const BUCKET: &str = "nodes";

/// What a node writes about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: String,
    pub version: String,
    pub http: String,
}

#[derive(Clone)]
pub struct Membership {
    me: Member,
    kv: kv::Store,
    dead_after: Duration,
    inner: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    /// Every node heard from, with when; this node's own entry is when its
    /// heartbeat was last stored (the watch's copy of it is not counted).
    members: HashMap<String, (Member, Instant)>,
    /// Set when the node leaves: it no longer counts itself live.
    leaving: bool,
}

impl Seen {
    /// Whether `id` is live: heard from within `dead_after` (for this node,
    /// its own heartbeat stored that recently), and not this node leaving.
    fn live(&self, id: &str, me: &str, dead_after: Duration) -> bool {
        !(self.leaving && id == me) && self.members.get(id).is_some_and(|(_, at)| at.elapsed() < dead_after)
    }
}

impl Membership {
    /// Opens the bucket and writes the first heartbeat, so the node is a member
    /// before it takes any tenant.
    pub async fn join(
        js: &jetstream::Context,
        me: Member,
        dead_after: Duration,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let kv = crate::nats::bucket(
            js,
            kv::Config {
                bucket: BUCKET.into(),
                description: "Canopy nodes' heartbeats".into(),
                history: 1,
                // Entries of nodes that died are removed some time after
                // they count as dead; the age check does not rely on it.
                max_age: (dead_after * 6).max(Duration::from_secs(60)),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let membership = Self { me, kv, dead_after, inner: Arc::default() };
        membership.beat().await.context("while writing the node's first heartbeat")?;
        Ok(membership)
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    async fn beat(&self) -> anyhow::Result<()> {
        if self.inner.lock().expect("membership lock").leaving {
            return Ok(());
        }
        let sent = Instant::now();
        self.kv.put(&self.me.id, serde_json::to_vec(&self.me)?.into()).await?;
        self.inner.lock().expect("membership lock").members.insert(self.me.id.clone(), (self.me.clone(), sent));
        Ok(())
    }

    /// Whether this node's own heartbeat is current: a node that cannot reach
    /// the bucket must not act as a member.
    pub fn healthy(&self) -> bool {
        self.is_live(&self.me.id)
    }

    /// Leaves the cluster: deletes this node's entry, so the others stop
    /// sending it tenants, and stops counting itself live.
    pub async fn leave(&self) {
        self.inner.lock().expect("membership lock").leaving = true;
        match tokio::time::timeout(Duration::from_secs(2), self.kv.delete(&self.me.id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not delete this node's heartbeat"),
            Err(_) => tracing::debug!("deleting this node's heartbeat timed out"),
        }
    }

    /// The live members, sorted by id (this node among them while it is healthy).
    pub fn live(&self) -> Vec<Member> {
        let seen = self.inner.lock().expect("membership lock");
        let mut live: Vec<Member> = seen
            .members
            .values()
            .filter(|(m, _)| seen.live(&m.id, &self.me.id, self.dead_after))
            .map(|(m, _)| m.clone())
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        live
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.inner.lock().expect("membership lock").live(id, &self.me.id, self.dead_after)
    }

    /// Resolves once `id` is no longer live: a request waiting for a node's
    /// answer gives up on it then, rather than at its timeout.
    pub async fn until_dead(&self, id: &str) {
        while self.is_live(id) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Heartbeats and follows the others until `cancel`, then deletes this
    /// node's entry.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let every = (self.dead_after / 4).max(Duration::from_millis(100));
        let mut beat = tokio::time::interval(every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = None;
        loop {
            if watch.is_none() {
                match self.kv.watch_with_history(">").await {
                    Ok(w) => watch = Some(w),
                    Err(e) => tracing::warn!(error = %e, "could not watch the nodes bucket; trying again"),
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = beat.tick() => {
                    if let Err(e) = tokio::time::timeout(every, self.beat()).await.map_err(anyhow::Error::from).and_then(|r| r) {
                        tracing::warn!(error = %e, "could not write this node's heartbeat");
                    }
                }
                entry = async { watch.as_mut().expect("set above").next().await }, if watch.is_some() => match entry {
                    Some(Ok(entry)) => self.saw(entry),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the nodes bucket's watch failed; watching again");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
        if !self.inner.lock().expect("membership lock").leaving {
            self.leave().await;
        }
        Ok(())
    }

    fn saw(&self, entry: kv::Entry) {
        let mut seen = self.inner.lock().expect("membership lock");
        if entry.key == self.me.id {
            return;
        }
        match entry.operation {
            kv::Operation::Put => {
                let Ok(member) = serde_json::from_slice::<Member>(&entry.value) else {
                    tracing::warn!(key = %entry.key, "a malformed entry in the nodes bucket");
                    return;
                };
                if member.id != entry.key || !is_node_id(&member.id) {
                    tracing::warn!(key = %entry.key, "an entry in the nodes bucket names another node");
                    return;
                }
                // An entry read back from the bucket's history is as old as
                // the server says; one that arrives now is fresh.
                let age = (time::OffsetDateTime::now_utc() - entry.created).max(time::Duration::ZERO);
                let age = Duration::try_from(age).unwrap_or_default();
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                seen.members.insert(entry.key, (member, at));
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                seen.members.remove(&entry.key);
            }
        }
    }
}

/// Whether `id` can be a node id: it becomes a subject token
/// (`canopy.node.{id}.…`), so only `A-Z a-z 0-9 _ -`, at most 64.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The owner rendezvous hashing picks for `key` among `nodes`: the node with
/// the highest hash of (node, key). Every node computes the same answer from
/// the same members, and a node joining or leaving moves only the keys it
/// wins or held.
pub fn rendezvous<'a>(nodes: &'a [Member], key: &str) -> Option<&'a Member> {
    use sha2::{Digest, Sha256};
    nodes.iter().max_by_key(|m| {
        let digest =
            Sha256::new().chain_update(m.id.as_bytes()).chain_update([0]).chain_update(key.as_bytes()).finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member { id: id.into(), version: "0".into(), http: "127.0.0.1:1".into() }
    }

    #[test]
    fn rendezvous_moves_only_the_keys_of_the_node_that_joins_or_leaves() {
        let three: Vec<Member> = ["a", "b", "c"].into_iter().map(member).collect();
        let four: Vec<Member> = ["a", "b", "c", "d"].into_iter().map(member).collect();
        let keys: Vec<String> = (0..2000).map(|i| format!("tenant-{i}")).collect();
        let mut moved = 0;
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for k in &keys {
            let before = rendezvous(&three, k).unwrap();
            let after = rendezvous(&four, k).unwrap();
            *per_node.entry(after.id.clone()).or_default() += 1;
            if before != after {
                moved += 1;
                assert_eq!(after.id, "d", "a key moved between two nodes that stayed");
            }
        }
        // About a quarter moves to the newcomer, and the share is even.
        assert!((350..650).contains(&moved), "{moved} of 2000 moved");
        assert!(per_node.values().all(|n| (350..650).contains(n)), "{per_node:?}");
        // The order of the member list does not matter.
        let reversed: Vec<Member> = four.iter().rev().cloned().collect();
        assert!(keys.iter().all(|k| rendezvous(&four, k) == rendezvous(&reversed, k)));
        assert!(rendezvous(&[], "x").is_none());
    }
}
