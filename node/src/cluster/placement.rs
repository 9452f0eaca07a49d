//! Tenant placement: which node runs a tenant's tree, held by a lease in KV
//! `placement` (key: the scope's token, value: the holder's node id).
//!
//! A lease is written with a per-message TTL (`Nats-TTL`) and an expected last
//! subject sequence, so creating, renewing and releasing it are all checked by
//! the server against the revision this node last saw: two nodes can never
//! both succeed, and a node that missed a renewal (a pause, a lost
//! connection) finds the lease taken and drops it. Renewals publish to the
//! key's subject rather than calling `update`, which would drop the TTL
//! (NATS-NOTES.md).
//!
//! A node acts on a lease only until `valid_until`, measured on its own
//! monotonic clock from just before the write the server expires from, less a
//! margin: by the time the server lets the key lapse and another node takes
//! it, this node has already stopped taking the tenant's commands. Appends
//! are still guarded by each aggregate's expected sequence, so even a node
//! whose clock ran slow cannot overwrite another's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::domain::tenant::Scope;
use anyhow::{Context, anyhow};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream::DirectGetErrorKind};
use tokio::sync::Notify;

use super::membership::Membership;

pub const BUCKET: &str = "placement";
/// How long a remote holder, once read, is trusted before it is read again.
const HOLDER_CACHE: Duration = Duration::from_secs(1);
/// How long a read or write of a lease waits for the server.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many remote holders are cached; past it the cache starts over.
const HOLDER_CACHE_MAX: usize = 100_000;

/// What the lease's value says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Holder {
    node: String,
}

/// A lease this node holds.
struct Lease {
    /// The revision of the lease's last write: the next write expects it.
    seq: u64,
    valid_until: Instant,
    last_used: Instant,
    in_flight: usize,
    /// Set while the tenant is handed over: new commands wait for it.
    draining: Option<Arc<Notify>>,
}

struct Inner {
    leases: HashMap<Scope, Lease>,
    holders: HashMap<Scope, (String, Instant)>,
}

/// Who may run a tenant's commands now, as far as this node knows.
pub enum Local {
    /// This node holds the lease: run it, holding the permit until done.
    Run(Permit),
    /// This node is handing the tenant over: wait, then ask again.
    Draining(Arc<Notify>),
    NotHeld,
}

/// What a read of the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Free,
    Node(String),
}

#[derive(Clone)]
pub struct Placement {
    js: jetstream::Context,
    kv: kv::Store,
    stream: jetstream::stream::Stream,
    membership: Membership,
    lease: Duration,
    inner: Arc<Mutex<Inner>>,
}

/// A command running under a lease; the lease is not released while one is.
pub struct Permit {
    inner: Arc<Mutex<Inner>>,
    scope: Scope,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().expect("placement lock");
        if let Some(lease) = inner.leases.get_mut(&self.scope) {
            lease.in_flight = lease.in_flight.saturating_sub(1);
            if lease.in_flight == 0
                && let Some(n) = &lease.draining
            {
                n.notify_waiters();
            }
        }
    }
}

/// The outcome of a write of the lease.
enum Write {
    Done(u64),
    Conflict,
}

impl Placement {
    pub async fn open(
        js: &jetstream::Context,
        membership: Membership,
        lease: Duration,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let lease = Duration::from_secs(lease.as_secs().max(2));
        let kv = crate::nats::bucket(
            js,
            kv::Config {
                bucket: BUCKET.into(),
                description: "Canopy tenant placement leases".into(),
                // One revision per key: a longer history would raise short
                // TTLs to the markers' TTL (NATS-NOTES.md).
                history: 1,
                limit_markers: Some(Duration::from_secs(1)),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let stream = js.get_stream(format!("KV_{BUCKET}")).await.context("while opening the placement stream")?;
        Ok(Self {
            js: js.clone(),
            kv,
            stream,
            membership,
            lease,
            inner: Arc::new(Mutex::new(Inner { leases: HashMap::new(), holders: HashMap::new() })),
        })
    }

    pub fn me(&self) -> &str {
        &self.membership.me().id
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// How often leases are renewed: four times per lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 4
    }

    fn subject(scope: &Scope) -> String {
        format!("$KV.{BUCKET}.{}", scope.token())
    }

    /// How long after its write a lease is acted on: the lease less a margin
    /// of a fifth (at least half a second) for a late renewal's round trip.
    fn usable(&self) -> Duration {
        self.lease - (self.lease / 5).max(Duration::from_millis(500))
    }

    /// Whether this node may run `scope`'s commands now.
    pub fn local(&self, scope: &Scope) -> Local {
        let mut inner = self.inner.lock().expect("placement lock");
        let Some(lease) = inner.leases.get_mut(scope) else { return Local::NotHeld };
        if let Some(n) = &lease.draining {
            return Local::Draining(n.clone());
        }
        let now = Instant::now();
        if now >= lease.valid_until || !self.membership.healthy() {
            return Local::NotHeld;
        }
        lease.in_flight += 1;
        lease.last_used = now;
        Local::Run(Permit { inner: self.inner.clone(), scope: scope.clone() })
    }

    /// The scopes this node holds, with whether each is usable now.
    pub fn held(&self) -> Vec<(Scope, bool)> {
        let now = Instant::now();
        let inner = self.inner.lock().expect("placement lock");
        inner.leases.iter().map(|(s, l)| (s.clone(), l.draining.is_none() && now < l.valid_until)).collect()
    }

    /// How many leases this node holds.
    pub fn held_count(&self) -> usize {
        self.inner.lock().expect("placement lock").leases.len()
    }

    /// The holder of `scope`'s lease: this node's own table, a recently read
    /// remote holder, or the bucket.
    pub async fn owner(&self, scope: &Scope) -> anyhow::Result<Owner> {
        {
            let inner = self.inner.lock().expect("placement lock");
            if inner.leases.contains_key(scope) {
                return Ok(Owner::Node(self.me().to_owned()));
            }
            if let Some((node, at)) = inner.holders.get(scope)
                && at.elapsed() < HOLDER_CACHE
            {
                return Ok(Owner::Node(node.clone()));
            }
        }
        let (owner, _) = self.read(scope).await?;
        if let Owner::Node(node) = &owner {
            self.remember(scope, node);
        }
        Ok(owner)
    }

    /// The node a command for `scope` goes to first, without a read: this
    /// node, unless a recently read holder is another live node.
    pub fn cached_owner(&self, scope: &Scope) -> Option<String> {
        let inner = self.inner.lock().expect("placement lock");
        if inner.leases.contains_key(scope) {
            return Some(self.me().to_owned());
        }
        inner
            .holders
            .get(scope)
            .filter(|(node, at)| at.elapsed() < HOLDER_CACHE && self.membership.is_live(node))
            .map(|(node, _)| node.clone())
    }

    fn remember(&self, scope: &Scope, node: &str) {
        if node == self.me() {
            return;
        }
        let mut inner = self.inner.lock().expect("placement lock");
        if inner.holders.len() >= HOLDER_CACHE_MAX {
            inner.holders.clear();
        }
        inner.holders.insert(scope.clone(), (node.to_owned(), Instant::now()));
    }

    /// Every lease in the bucket, tenant by tenant (at most `max`; the flag
    /// says whether there were more), read from a snapshot of the bucket.
    pub async fn all(&self, max: usize) -> anyhow::Result<(Vec<(String, String)>, bool)> {
        use futures::StreamExt;
        let mut stream = self.stream.clone();
        if stream.info().await?.state.messages == 0 {
            return Ok((Vec::new(), false));
        }
        let mut watch = self.kv.watch_with_history(">").await?;
        let mut out = Vec::new();
        let mut more = false;
        while let Ok(Some(entry)) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            let entry = entry?;
            if entry.operation == kv::Operation::Put
                && let Ok(h) = serde_json::from_slice::<Holder>(&entry.value)
            {
                if out.len() < max {
                    out.push((entry.key.clone(), h.node));
                } else {
                    more = true;
                }
            }
            if entry.delta == 0 {
                break;
            }
        }
        out.sort();
        Ok((out, more))
    }

    /// Drops a cached remote holder (it did not answer).
    pub fn forget_holder(&self, scope: &Scope) {
        self.inner.lock().expect("placement lock").holders.remove(scope);
    }

    /// Reads the lease from the bucket: its holder and the revision to expect.
    async fn read(&self, scope: &Scope) -> anyhow::Result<(Owner, u64)> {
        // A short bound: while the bucket's servers elect a leader a read
        // gets no answer, and the caller asks again rather than wait out the
        // client's five seconds.
        let read = tokio::time::timeout(IO_TIMEOUT, self.stream.direct_get_last_for_subject(Self::subject(scope)))
            .await
            .map_err(|_| anyhow!("reading the placement of {scope}: no answer in time"))?;
        match read {
            Ok(msg) => {
                let marker = msg.headers.get("KV-Operation").is_some()
                    || msg.headers.get(async_nats::header::NATS_MARKER_REASON).is_some()
                    || msg.payload.is_empty();
                if marker {
                    return Ok((Owner::Free, msg.sequence));
                }
                match serde_json::from_slice::<Holder>(&msg.payload) {
                    Ok(h) => Ok((Owner::Node(h.node), msg.sequence)),
                    // A value no node wrote: treat the key as free, but only
                    // over this revision.
                    Err(_) => Ok((Owner::Free, msg.sequence)),
                }
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok((Owner::Free, 0)),
            Err(e) => Err(anyhow!("reading the placement of {scope}: {e}")),
        }
    }

    /// Writes the lease (or its release) over revision `expect`.
    async fn write(&self, scope: &Scope, expect: u64, release: bool) -> anyhow::Result<Write> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expect.to_string().as_str());
        headers.insert("Nats-TTL", format!("{}s", self.lease.as_secs()).as_str());
        let payload = if release {
            headers.insert("KV-Operation", "DEL");
            Vec::new()
        } else {
            serde_json::to_vec(&Holder { node: self.me().to_owned() })?
        };
        let ack = self
            .js
            .publish_with_headers(Self::subject(scope), headers, payload.into())
            .await
            .map_err(|e| anyhow!("writing the placement of {scope}: {e}"))?;
        match tokio::time::timeout(IO_TIMEOUT, ack).await {
            Ok(Ok(ack)) => Ok(Write::Done(ack.sequence)),
            Ok(Err(e)) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => Ok(Write::Conflict),
            Ok(Err(e)) => Err(anyhow!("writing the placement of {scope}: {e}")),
            Err(_) => Err(anyhow!("writing the placement of {scope}: no acknowledgement in time")),
        }
    }

    /// Takes `scope`'s lease if it is free (or already this node's). Returns
    /// the owner afterwards: this node, or the one that holds it.
    pub async fn acquire(&self, scope: &Scope) -> anyhow::Result<Owner> {
        if !self.membership.healthy() {
            anyhow::bail!("this node's heartbeat is not current");
        }
        for _ in 0..3 {
            let (owner, seq) = self.read(scope).await?;
            match owner {
                Owner::Node(node) if node != self.me() => {
                    self.remember(scope, &node);
                    return Ok(Owner::Node(node));
                }
                // Free, or written by this node (a release that did not
                // finish, or a concurrent acquisition here): write over it.
                _ => {}
            }
            let sent = Instant::now();
            match self.write(scope, seq, false).await? {
                Write::Done(seq) => {
                    let mut inner = self.inner.lock().expect("placement lock");
                    inner.holders.remove(scope);
                    let lease = inner.leases.entry(scope.clone()).or_insert(Lease {
                        seq,
                        valid_until: sent,
                        last_used: sent,
                        in_flight: 0,
                        draining: None,
                    });
                    if seq > lease.seq || lease.valid_until <= sent {
                        lease.seq = seq;
                        lease.valid_until = sent + self.usable();
                    }
                    tracing::debug!(tenant = %scope, seq, "took the tenant's lease");
                    return Ok(Owner::Node(self.me().to_owned()));
                }
                Write::Conflict => continue,
            }
        }
        // Three lost races in a row: somebody else is writing it.
        Ok(self.read(scope).await?.0)
    }

    /// Renews every lease this node holds. Returns the scopes whose lease was
    /// lost (another node holds it now): their trees must stop.
    pub async fn renew_all(&self) -> Vec<Scope> {
        use futures::StreamExt;
        let due: Vec<(Scope, u64)> = {
            let inner = self.inner.lock().expect("placement lock");
            inner.leases.iter().map(|(s, l)| (s.clone(), l.seq)).collect()
        };
        let results: Vec<(Scope, u64, Instant, anyhow::Result<Write>)> = futures::stream::iter(due)
            .map(|(scope, seq)| async move {
                let sent = Instant::now();
                let r = self.write(&scope, seq, false).await;
                (scope, seq, sent, r)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let (mut lost, mut conflicts) = (Vec::new(), Vec::new());
        {
            let mut inner = self.inner.lock().expect("placement lock");
            for (scope, was, sent, result) in results {
                let Some(lease) = inner.leases.get_mut(&scope) else { continue };
                if lease.seq != was {
                    // Written again meanwhile (a concurrent acquisition): that write counts.
                    continue;
                }
                match result {
                    Ok(Write::Done(seq)) => {
                        lease.seq = seq;
                        lease.valid_until = sent + self.usable();
                    }
                    // Another revision than this node's last: someone took it,
                    // or an earlier renewal landed whose acknowledgement was lost
                    // (a server failing over). The bucket says which.
                    Ok(Write::Conflict) => conflicts.push((scope, was)),
                    Err(e) => tracing::warn!(error = %e, "could not renew a lease; trying again"),
                }
            }
        }
        for (scope, was) in conflicts {
            let still_mine = match self.read(&scope).await {
                Ok((Owner::Node(node), seq)) if node == self.me() => Some(seq),
                Ok(_) => None,
                // Unknown: keep it; the next round asks again, and the lease
                // is not acted on past `valid_until` meanwhile.
                Err(_) => continue,
            };
            let mut inner = self.inner.lock().expect("placement lock");
            let Some(lease) = inner.leases.get_mut(&scope) else { continue };
            if lease.seq != was {
                continue;
            }
            match still_mine {
                Some(seq) => lease.seq = seq,
                None => {
                    tracing::warn!(tenant = %scope, "lost the tenant's lease to another node");
                    inner.leases.remove(&scope);
                    lost.push(scope);
                }
            }
        }
        lost
    }

    /// Stops taking new commands for `scope`, and waits (up to `timeout`)
    /// until the ones running finish. Returns whether this node held it.
    pub async fn drain(&self, scope: &Scope, timeout: Duration) -> bool {
        let notify = {
            let mut inner = self.inner.lock().expect("placement lock");
            let Some(lease) = inner.leases.get_mut(scope) else { return false };
            lease.draining.get_or_insert_with(|| Arc::new(Notify::new())).clone()
        };
        let deadline = Instant::now() + timeout;
        loop {
            let waiting = notify.notified();
            if self.inner.lock().expect("placement lock").leases.get(scope).is_none_or(|l| l.in_flight == 0) {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), waiting).await.is_err() {
                tracing::warn!(tenant = %scope, "commands still running when the tenant was handed over");
                return true;
            }
        }
    }

    /// Gives `scope`'s lease up (after `drain`), and wakes the commands that
    /// waited for it: they go to the next owner.
    pub async fn release(&self, scope: &Scope) {
        let taken = self.inner.lock().expect("placement lock").leases.remove(scope);
        let Some(lease) = taken else { return };
        match self.write(scope, lease.seq, true).await {
            Ok(Write::Done(_)) => tracing::debug!(tenant = %scope, "released the tenant's lease"),
            Ok(Write::Conflict) => tracing::warn!(tenant = %scope, "the released lease was already another node's"),
            Err(e) => tracing::warn!(error = %e, tenant = %scope, "could not release a lease; it lapses by itself"),
        }
        if let Some(n) = lease.draining {
            n.notify_waiters();
        }
    }

    /// The held scopes not used for `idle`, least recently used first.
    pub fn idle(&self, idle: Duration) -> Vec<Scope> {
        let inner = self.inner.lock().expect("placement lock");
        let mut idle: Vec<(Instant, Scope)> = inner
            .leases
            .iter()
            .filter(|(_, l)| l.in_flight == 0 && l.draining.is_none() && l.last_used.elapsed() >= idle)
            .map(|(s, l)| (l.last_used, s.clone()))
            .collect();
        idle.sort();
        idle.into_iter().map(|(_, s)| s).collect()
    }
}
