//! The command router: takes commands from NATS and runs each where its
//! tenant's lease is, answering on the reply subject. Every command takes this
//! path, even on one node, so the edge never talks to actors directly.
//!
//! Commands arrive on `cmd.{scope}.{aggregate}` (any node's router, a queue
//! group) or on `canopy.node.{id}.cmd.{scope}.{aggregate}` (this node's). A
//! router runs a command in the tenant's tree when this node holds the
//! tenant's lease (`cluster::placement`); otherwise it forwards the command to
//! the holder, or, when nobody holds it, to the node rendezvous hashing picks
//! (itself included, which then takes the lease). A forwarded command carries
//! its hop count, and a node that receives one for a free tenant takes the
//! tenant itself, so differing views of the membership cannot bounce a
//! command around.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::command::{COMMAND_WILDCARD, CommandFailure, CommandResult, encode_result};
use actors::domain::tenant::Scope;
use actors::tree::{ChildSpec, Delivery, NodeMsg, TenantMsg};
use bytes::Bytes;
use futures::StreamExt;
use ractor::rpc::CallResult;
use ractor::{ActorRef, ActorStatus};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::rendezvous;
use crate::cluster::placement::{Local, Owner, Placement};

/// Commands handled at once by this node; more wait in the subscription.
const IN_FLIGHT: usize = 4096;
/// The header that counts how often a command was forwarded.
pub const HOP_HEADER: &str = "Canopy-Hop";
/// A command is forwarded at most this often.
const MAX_HOPS: u32 = 3;
/// How long a command waits before asking again where its tenant is.
const RETRY: Duration = Duration::from_millis(100);
/// Tenants handed to a node that joined, per renewal round.
const HANDOVERS_PER_ROUND: usize = 4;

/// The answer when no node could take a tenant in time.
pub const MOVING: &str = "the tenant is moving between nodes; retry with the same idempotency-key";

/// The subject a node's router takes its own commands on.
pub fn node_subject(node: &str, scope: &Scope, aggregate: &str) -> String {
    format!("canopy.node.{node}.cmd.{}.{aggregate}", scope.token())
}

/// Counts for `/metrics`.
#[derive(Default)]
pub struct RouterStats {
    pub forwarded: AtomicU64,
    pub evicted: AtomicU64,
    pub handed_over: AtomicU64,
    pub leases_lost: AtomicU64,
}

struct Tree {
    tree: ActorRef<TenantMsg>,
    last_used: Instant,
}

#[derive(Clone)]
pub struct Router {
    nats: async_nats::Client,
    node: ActorRef<NodeMsg>,
    timeout: Duration,
    /// The route table: the kinds of children the node's trees run.
    children: &'static [ChildSpec],
    placement: Placement,
    max_live_trees: usize,
    /// How long a tenant's lease is kept without commands.
    idle: Duration,
    /// Trees seen recently; a stopped one is replaced on its next command.
    trees: Arc<Mutex<HashMap<Scope, Tree>>>,
    stats: Arc<RouterStats>,
}

/// How a router is set up.
pub struct RouterArgs {
    pub nats: async_nats::Client,
    pub node: ActorRef<NodeMsg>,
    pub timeout: Duration,
    pub children: &'static [ChildSpec],
    pub placement: Placement,
    pub max_live_trees: usize,
    pub idle: Duration,
}

impl Router {
    pub fn new(args: RouterArgs) -> Self {
        Self {
            nats: args.nats,
            node: args.node,
            timeout: args.timeout,
            children: args.children,
            placement: args.placement,
            max_live_trees: args.max_live_trees.max(1),
            idle: args.idle,
            trees: Arc::default(),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<RouterStats> {
        self.stats.clone()
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Runs until cancelled, then waits for the commands already taken to finish.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut any = self.nats.queue_subscribe(COMMAND_WILDCARD, "canopy-router".into()).await?;
        let mut own = self.nats.subscribe(format!("canopy.node.{}.cmd.*.*", self.placement.me())).await?;
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut renew = tokio::time::interval(self.placement.renew_every());
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintenance: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let msg = tokio::select! {
                m = any.next() => match m { Some(m) => m, None => break },
                m = own.next() => match m { Some(m) => m, None => break },
                _ = renew.tick() => {
                    // One round at a time; a slow round delays the next.
                    if maintenance.as_ref().is_none_or(|h| h.is_finished()) {
                        let router = self.clone();
                        maintenance = Some(tokio::spawn(async move { router.maintain().await }));
                    }
                    continue;
                }
                () = cancel.cancelled() => break,
            };
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let router = self.clone();
            tasks.spawn(async move {
                router.handle(msg).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        let _ = any.unsubscribe().await;
        let _ = own.unsubscribe().await;
        while tasks.join_next().await.is_some() {}
        if let Some(h) = maintenance {
            let _ = h.await;
        }
        Ok(())
    }

    async fn handle(&self, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else { return };
        let hops = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HOP_HEADER))
            .and_then(|v| v.as_str().parse::<u32>().ok())
            .unwrap_or(0);
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        let (scope, aggregate) = match tokens.as_slice() {
            ["cmd", scope, aggregate] => (*scope, *aggregate),
            ["canopy", "node", _, "cmd", scope, aggregate] => (*scope, *aggregate),
            _ => return,
        };
        let payload = match Scope::parse_token(scope) {
            Err(_) => {
                encode_result::<()>(Err(CommandFailure::new("BAD_USER_INPUT", "invalid tenant in subject"))).into()
            }
            // The tree's child list is the route table.
            Ok(scope) => match ChildSpec::find(self.children, aggregate, &scope) {
                Some(child) => self.dispatch(child, scope, &msg.payload, hops).await,
                None => encode_result::<()>(Err(CommandFailure::new("NOT_FOUND", "no such aggregate"))).into(),
            },
        };
        if let Err(e) = self.nats.publish(reply, payload).await {
            tracing::warn!(error = %e, "could not send a command reply");
        }
    }

    /// Runs a command where its tenant's lease is: here, or on the node that
    /// holds it or should take it. Gives up with `UNAVAILABLE` when no node
    /// could take the tenant within the command timeout (its last holder died
    /// and its lease has not lapsed yet): the client retries with the same
    /// idempotency key.
    async fn dispatch(&self, child: &ChildSpec, scope: Scope, payload: &Bytes, hops: u32) -> Bytes {
        // Answer before the sender's own timeout does, with a typed error.
        let deadline = Instant::now() + self.timeout.mul_f64(0.9);
        while Instant::now() < deadline {
            match self.placement.local(&scope) {
                Local::Run(permit) => {
                    let reply = self.route(child, &scope, payload).await;
                    drop(permit);
                    return reply.into();
                }
                Local::Draining(handed_over) => {
                    let _ = tokio::time::timeout(RETRY, handed_over.notified()).await;
                    continue;
                }
                Local::NotHeld => {}
            }
            let me = self.placement.me().to_owned();
            let target = match self.placement.owner(&scope).await {
                Ok(Owner::Node(node)) if node == me => {
                    // The bucket says this node, the table does not: a lease
                    // being released or lost here. Take it again if it is free.
                    self.take(&scope).await;
                    continue;
                }
                Ok(Owner::Node(node)) => {
                    if !self.placement.membership().is_live(&node) {
                        // Its holder is gone; the lease lapses by itself.
                        self.placement.forget_holder(&scope);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                    node
                }
                Ok(Owner::Free) => {
                    // A leaving node is not among the live ones: it sends
                    // every free tenant on, forwarded or not.
                    let membership = self.placement.membership();
                    let live = membership.live();
                    let pick = rendezvous(&live, scope.token()).map(|m| m.id.clone());
                    let take = membership.healthy() && (hops > 0 || pick.as_deref().is_none_or(|p| p == me));
                    match pick {
                        Some(node) if !take => node,
                        // This node is the pick, or was sent the command by
                        // another: it takes the tenant.
                        _ => {
                            self.take(&scope).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not read a tenant's placement");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            if hops >= MAX_HOPS {
                break;
            }
            match self.forward(&target, &scope, child.aggregate, payload, hops + 1, deadline).await {
                Some(reply) => return reply,
                None => {
                    self.placement.forget_holder(&scope);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        encode_result::<()>(Err(CommandFailure::new("UNAVAILABLE", MOVING))).into()
    }

    /// Tries to take `scope`'s lease; after a failure (the bucket not
    /// answering, or this node's heartbeat not current) waits before the
    /// caller asks again.
    async fn take(&self, scope: &Scope) {
        if let Err(e) = self.placement.acquire(scope).await {
            tracing::debug!(error = %e, "could not take a lease");
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Sends a command to another node's router. `None` when that node did
    /// not answer: the command may be tried elsewhere, and its command id
    /// makes a second delivery a no-op if the first one ran.
    async fn forward(
        &self,
        node: &str,
        scope: &Scope,
        aggregate: &str,
        payload: &Bytes,
        hops: u32,
        deadline: Instant,
    ) -> Option<Bytes> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HOP_HEADER, hops.to_string().as_str());
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .headers(headers)
            .timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        // A node that dies with the command never answers: stop waiting when
        // it counts as dead. The command may have run there; its command id
        // makes the next owner's run of it a no-op if it did.
        let sent = self.nats.send_request(node_subject(node, scope, aggregate), request);
        tokio::select! {
            reply = sent => match reply {
                Ok(reply) => Some(reply.payload),
                Err(e) => {
                    tracing::debug!(error = %e, node, tenant = %scope, "a forwarded command went unanswered");
                    None
                }
            },
            () = self.placement.membership().until_dead(node) => {
                tracing::debug!(node, tenant = %scope, "the node a command was forwarded to died");
                None
            }
        }
    }

    /// Hands a command to the tenant's tree and returns the encoded reply.
    async fn route(&self, child: &ChildSpec, scope: &Scope, payload: &[u8]) -> Vec<u8> {
        // A tree may stop (idle) between lookup and delivery; then ask again once.
        // Retrying is safe: the command id makes a second delivery a no-op.
        for attempt in 0..2 {
            let tree = match self.tree(scope).await {
                Ok(t) => t,
                Err(f) => return encode_result::<()>(Err(f)),
            };
            match child.execute_json(&tree, payload, self.timeout).await {
                Delivery::Replied(reply) => return reply,
                Delivery::TreeStopped if attempt == 0 => self.forget(scope, &tree),
                Delivery::TreeStopped => break,
            }
        }
        tracing::error!(tenant = %scope, "the tenant's tree stopped twice while taking a command");
        encode_result::<()>(Err(CommandFailure::internal()))
    }

    /// The tenant's tree: from the cache, or from the NodeSupervisor (which starts
    /// it). The cache keeps the NodeSupervisor off the path of every command.
    async fn tree(&self, scope: &Scope) -> CommandResult<ActorRef<TenantMsg>> {
        {
            let mut trees = self.trees.lock().expect("router lock");
            if let Some(t) = trees.get_mut(scope)
                && t.tree.get_status() == ActorStatus::Running
            {
                t.last_used = Instant::now();
                return Ok(t.tree.clone());
            }
        }
        let tree = match self.node.call(|port| NodeMsg::Tree(scope.clone(), port), Some(self.timeout)).await {
            Ok(CallResult::Success(t)) => t?,
            _ => return Err(CommandFailure::internal()),
        };
        let evict = {
            let mut trees = self.trees.lock().expect("router lock");
            trees.insert(scope.clone(), Tree { tree: tree.clone(), last_used: Instant::now() });
            self.least_recently_used(&mut trees, scope)
        };
        // Passivating is what the idle timeout does too: the tree's state is
        // rebuilt from the log on its next command.
        for t in evict {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            t.stop(Some("max_live_trees".into()));
        }
        Ok(tree)
    }

    /// The trees to stop so that at most `max_live_trees` run, least recently
    /// used first, never `keep`; forgets trees that stopped by themselves.
    fn least_recently_used(&self, trees: &mut HashMap<Scope, Tree>, keep: &Scope) -> Vec<ActorRef<TenantMsg>> {
        trees
            .retain(|_, t| t.tree.get_status() == ActorStatus::Running || t.tree.get_status() == ActorStatus::Starting);
        if trees.len() <= self.max_live_trees {
            return Vec::new();
        }
        let mut order: Vec<(Instant, Scope)> =
            trees.iter().filter(|(s, _)| *s != keep).map(|(s, t)| (t.last_used, s.clone())).collect();
        order.sort_by_key(|(at, _)| *at);
        let excess = trees.len() - self.max_live_trees;
        order.into_iter().take(excess).filter_map(|(_, s)| trees.remove(&s)).map(|t| t.tree).collect()
    }

    fn forget(&self, scope: &Scope, stale: &ActorRef<TenantMsg>) {
        let mut trees = self.trees.lock().expect("router lock");
        if trees.get(scope).is_some_and(|t| t.tree.get_id() == stale.get_id()) {
            trees.remove(scope);
        }
    }

    /// Stops the tree of a tenant this node no longer runs.
    async fn stop_tree(&self, scope: &Scope) {
        let tree = self.trees.lock().expect("router lock").remove(scope);
        if let Some(t) = tree {
            let _ = t.tree.stop_and_wait(Some("handed over".into()), Some(Duration::from_secs(10))).await;
        }
    }

    /// One round of lease upkeep: renew the leases, stop the trees of lost
    /// ones, release the idle ones, and hand a few tenants to the node that
    /// should own them now (a node that joined).
    async fn maintain(&self) {
        for scope in self.placement.renew_all().await {
            self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
            self.stop_tree(&scope).await;
        }
        for scope in self.placement.idle(self.idle) {
            self.hand_over(&scope).await;
        }
        let live = self.placement.membership().live();
        let me = self.placement.me().to_owned();
        let moving: Vec<Scope> = self
            .placement
            .held()
            .into_iter()
            .filter(|(scope, usable)| *usable && rendezvous(&live, scope.token()).is_some_and(|m| m.id != me))
            .map(|(scope, _)| scope)
            .take(HANDOVERS_PER_ROUND)
            .collect();
        for scope in moving {
            self.stats.handed_over.fetch_add(1, Ordering::Relaxed);
            self.hand_over(&scope).await;
        }
    }

    /// Drains a tenant (new commands wait, running ones finish), stops its
    /// tree and releases its lease; the waiting commands then go to the next
    /// owner.
    async fn hand_over(&self, scope: &Scope) {
        if self.placement.drain(scope, self.timeout).await {
            self.stop_tree(scope).await;
            self.placement.release(scope).await;
        }
    }

    /// Hands every tenant over before the node stops: its membership entry
    /// is already gone, so rendezvous hashing sends them elsewhere.
    pub async fn hand_over_all(&self) {
        let held: Vec<Scope> = self.placement.held().into_iter().map(|(s, _)| s).collect();
        let count = held.len();
        futures::stream::iter(held).for_each_concurrent(16, |scope| async move { self.hand_over(&scope).await }).await;
        if count > 0 {
            tracing::info!(tenants = count, "handed this node's tenants over");
        }
    }
}
