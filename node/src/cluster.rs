//! The cluster: membership, discovery and tenant placement, on NATS alone.
//!
//! Every node registers with the NATS service API as `canopy`, so `nats micro
//! ls` and `$SRV.PING.canopy` list the nodes with their ids and versions, and
//! `$SRV.INFO.canopy` their HTTP addresses (metadata `http`). The service's id
//! is the node's id everywhere: in KV `nodes` (heartbeats, `membership`), in
//! KV `placement` (tenant leases, `placement`) and in the subjects
//! `canopy.node.{id}.status` (its status: id, version, HTTP address, the
//! tenants it owns and the trees it runs) and `canopy.node.{id}.cmd.>`
//! (commands forwarded to it, `router`).

pub mod membership;
pub mod placement;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actors::tree::NodeMsg;
use anyhow::anyhow;
use futures::StreamExt;
use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use membership::{Member, Membership};
use placement::Placement;

/// The service name every node registers under.
pub const SERVICE: &str = "canopy";
/// How often a node counts its live tenant trees for its status.
const COUNT_EVERY: Duration = Duration::from_secs(2);

/// What a node says about itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub id: String,
    pub version: String,
    pub http: String,
    /// Tenants whose lease the node holds.
    pub tenants: usize,
    /// Tenant trees running on the node now.
    pub trees: usize,
}

/// A node registered with the service API, a member, with its placement.
pub struct Node {
    service: async_nats::service::Service,
    /// The tenants owned, as `$SRV.STATS` shows them.
    owned: Arc<AtomicUsize>,
    pub placement: Placement,
}

/// How a node joins.
pub struct JoinArgs {
    pub http: SocketAddr,
    pub dead_after: Duration,
    pub lease: Duration,
    pub replicas: usize,
}

impl Node {
    /// Registers with the service API (which gives the node its id), writes
    /// the first heartbeat and opens the placement bucket.
    pub async fn join(
        client: &async_nats::Client,
        js: &async_nats::jetstream::Context,
        args: JoinArgs,
    ) -> anyhow::Result<Self> {
        let version = env!("CARGO_PKG_VERSION");
        let metadata = HashMap::from([("http".to_owned(), args.http.to_string())]);
        let owned = Arc::new(AtomicUsize::new(0));
        let counted = owned.clone();
        let service = async_nats::service::ServiceExt::service_builder(client)
            .description("a Canopy node")
            .metadata(metadata)
            .stats_handler(move |_, _| serde_json::json!({ "tenants": counted.load(Ordering::Relaxed) }))
            .start(SERVICE, version)
            .await
            .map_err(|e| anyhow!("while registering with the NATS service API: {e}"))?;
        let id = service.info().await.id;
        if !membership::is_node_id(&id) {
            anyhow::bail!("the service API gave this node an id that is not a subject token: {id}");
        }
        let me = Member { id, version: version.to_owned(), http: args.http.to_string() };
        let membership = Membership::join(js, me, args.dead_after, args.replicas).await?;
        let placement = Placement::open(js, membership, args.lease, args.replicas).await?;
        Ok(Self { service, owned, placement })
    }

    pub fn id(&self) -> &str {
        self.placement.me()
    }

    /// Heartbeats, and answers the node's status until `cancel`.
    pub async fn serve(self, node: ActorRef<NodeMsg>, cancel: CancellationToken) -> anyhow::Result<()> {
        let Self { service, owned, placement } = self;
        let membership = placement.membership().clone();
        let beating = tokio::spawn(membership.clone().run(cancel.clone()));
        let me = membership.me().clone();
        let mut status = service
            .endpoint(format!("canopy.node.{}.status", me.id))
            .await
            .map_err(|e| anyhow!("while adding the status endpoint: {e}"))?;
        let mut trees = 0;
        let mut count = tokio::time::interval(COUNT_EVERY);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = count.tick() => {
                    owned.store(placement.held_count(), Ordering::Relaxed);
                    if let Ok(ractor::rpc::CallResult::Success(n)) =
                        node.call(NodeMsg::LiveTrees, Some(Duration::from_secs(2))).await
                    {
                        trees = n;
                    }
                }
                Some(request) = status.next() => {
                    let answer = Status {
                        id: me.id.clone(),
                        version: me.version.clone(),
                        http: me.http.clone(),
                        tenants: placement.held_count(),
                        trees,
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    if let Err(e) = request.respond(Ok(body.into())).await {
                        tracing::debug!(error = %e, "a status request went unanswered");
                    }
                }
            }
        }
        let _ = service.stop().await;
        let _ = beating.await;
        Ok(())
    }
}
