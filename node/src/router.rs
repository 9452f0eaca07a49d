//! The command router: listens on `cmd.*.*` and hands each command to the tenant's
//! tree, then answers on the reply subject. Every command takes this path, even on
//! one node, so the edge never talks to actors directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::command::{COMMAND_WILDCARD, CommandFailure, CommandResult, encode_result};
use actors::domain::tenant::Scope;
use actors::tree::{ChildSpec, Delivery, NodeMsg, TenantMsg};
use futures::StreamExt;
use ractor::rpc::CallResult;
use ractor::{ActorRef, ActorStatus};
use tokio::sync::{RwLock, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Commands handled at once by this node; more wait in the subscription.
const IN_FLIGHT: usize = 4096;

#[derive(Clone)]
pub struct Router {
    nats: async_nats::Client,
    node: ActorRef<NodeMsg>,
    timeout: Duration,
    /// The route table: the kinds of children the node's trees run.
    children: &'static [ChildSpec],
    /// Trees seen recently; a stopped one is replaced on its next command.
    trees: Arc<RwLock<HashMap<Scope, ActorRef<TenantMsg>>>>,
}

impl Router {
    pub fn new(
        nats: async_nats::Client,
        node: ActorRef<NodeMsg>,
        timeout: Duration,
        children: &'static [ChildSpec],
    ) -> Self {
        Self { nats, node, timeout, children, trees: Arc::default() }
    }

    /// Runs until cancelled, then waits for the commands already taken to finish.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut sub = self.nats.queue_subscribe(COMMAND_WILDCARD, "canopy-router".into()).await?;
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = JoinSet::new();
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
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
        let _ = sub.unsubscribe().await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn handle(&self, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else { return };
        let mut parts = msg.subject.split('.');
        let (Some("cmd"), Some(scope), Some(aggregate), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let payload = match Scope::parse_token(scope) {
            Err(_) => encode_result::<()>(Err(CommandFailure::new("BAD_USER_INPUT", "invalid tenant in subject"))),
            // The tree's child list is the route table.
            Ok(scope) => match ChildSpec::find(self.children, aggregate, &scope) {
                Some(child) => self.route(child, scope, &msg.payload).await,
                None => encode_result::<()>(Err(CommandFailure::new("NOT_FOUND", "no such aggregate"))),
            },
        };
        if let Err(e) = self.nats.publish(reply, payload.into()).await {
            tracing::warn!(error = %e, "could not send a command reply");
        }
    }

    /// Hands a command to the tenant's tree and returns the encoded reply.
    async fn route(&self, child: &ChildSpec, scope: Scope, payload: &[u8]) -> Vec<u8> {
        // A tree may stop (idle) between lookup and delivery; then ask again once.
        // Retrying is safe: the command id makes a second delivery a no-op.
        for attempt in 0..2 {
            let tree = match self.tree(&scope).await {
                Ok(t) => t,
                Err(f) => return encode_result::<()>(Err(f)),
            };
            match child.execute_json(&tree, payload, self.timeout).await {
                Delivery::Replied(reply) => return reply,
                Delivery::TreeStopped if attempt == 0 => self.forget(&scope, &tree).await,
                Delivery::TreeStopped => break,
            }
        }
        tracing::error!(tenant = %scope, "the tenant's tree stopped twice while taking a command");
        encode_result::<()>(Err(CommandFailure::internal()))
    }

    /// The tenant's tree: from the cache, or from the NodeSupervisor (which starts
    /// it). The cache keeps the NodeSupervisor off the path of every command.
    async fn tree(&self, scope: &Scope) -> CommandResult<ActorRef<TenantMsg>> {
        if let Some(t) = self.trees.read().await.get(scope)
            && t.get_status() == ActorStatus::Running
        {
            return Ok(t.clone());
        }
        let tree = match self.node.call(|port| NodeMsg::Tree(scope.clone(), port), Some(self.timeout)).await {
            Ok(CallResult::Success(t)) => t?,
            _ => return Err(CommandFailure::internal()),
        };
        self.trees.write().await.insert(scope.clone(), tree.clone());
        Ok(tree)
    }

    async fn forget(&self, scope: &Scope, stale: &ActorRef<TenantMsg>) {
        let mut trees = self.trees.write().await;
        if trees.get(scope).is_some_and(|t| t.get_id() == stale.get_id()) {
            trees.remove(scope);
        }
    }
}
