//! The command router: listens on `cmd.*.*` and hands each command to the tenant's
//! tree, then answers on the reply subject. Every command takes this path, even on
//! one node, so the edge never talks to actors directly.

use std::sync::Arc;
use std::time::Duration;

use actors::command::{COMMAND_WILDCARD, CommandEnvelope, CommandFailure, CommandResult};
use actors::tenant::Scope;
use actors::tree::{NodeMsg, TenantMsg};
use futures::StreamExt;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Commands handled at once by this node; more wait in the subscription.
const IN_FLIGHT: usize = 4096;

#[derive(Clone)]
pub struct Router {
    pub nats: async_nats::Client,
    pub node: ActorRef<NodeMsg>,
    pub timeout: Duration,
}

impl Router {
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
            Err(_) => encode::<()>(Err(CommandFailure::new("BAD_USER_INPUT", "invalid tenant in subject"))),
            Ok(scope) => match aggregate {
                "account" => encode(self.route(scope, &msg.payload, TenantMsg::Account).await),
                "tenant" if scope == Scope::Platform => {
                    encode(self.route(scope, &msg.payload, TenantMsg::Directory).await)
                }
                _ => encode::<()>(Err(CommandFailure::new("NOT_FOUND", "no such aggregate"))),
            },
        };
        if let Err(e) = self.nats.publish(reply, payload.into()).await {
            tracing::warn!(error = %e, "could not send a command reply");
        }
    }

    async fn route<R, T>(
        &self,
        scope: Scope,
        payload: &[u8],
        wrap: fn(CommandEnvelope<R>, RpcReplyPort<CommandResult<T>>) -> TenantMsg,
    ) -> CommandResult<T>
    where
        R: DeserializeOwned + Clone + Send + 'static,
        T: Send + 'static,
    {
        let cmd: CommandEnvelope<R> = serde_json::from_slice(payload)
            .map_err(|e| CommandFailure::new("BAD_USER_INPUT", format!("malformed command: {e}")))?;
        // A tree may stop (idle) between lookup and delivery; then ask again once.
        for attempt in 0..2 {
            let tree = match self.node.call(|port| NodeMsg::Tree(scope.clone(), port), Some(self.timeout)).await {
                Ok(CallResult::Success(t)) => t?,
                _ => return Err(CommandFailure::internal()),
            };
            match tree.call(|port| wrap(cmd.clone(), port), Some(self.timeout)).await {
                Ok(CallResult::Success(result)) => return result,
                Ok(CallResult::Timeout) => {
                    tracing::error!(tenant = %scope, "command timed out in the tenant tree");
                    return Err(CommandFailure::internal());
                }
                // The actor died with our reply port: the command may or may not have
                // been applied, and a retry with the same command id is safe.
                Ok(CallResult::SenderError) => {
                    tracing::error!(tenant = %scope, "the actor handling a command stopped");
                    return Err(CommandFailure::internal());
                }
                Err(_) if attempt == 0 => continue,
                Err(_) => return Err(CommandFailure::internal()),
            }
        }
        Err(CommandFailure::internal())
    }
}

fn encode<T: Serialize>(r: CommandResult<T>) -> Vec<u8> {
    serde_json::to_vec(&r).unwrap_or_else(|_| br#"{"Err":{"code":"INTERNAL","message":"internal error"}}"#.to_vec())
}
