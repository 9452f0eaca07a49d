//! Membership through the NATS service API: every node registers as service
//! `canopy`, so `nats micro ls` and `$SRV.PING.canopy` list the nodes with
//! their ids and versions, and `$SRV.INFO.canopy` their HTTP addresses
//! (metadata `http`). Each node also answers `canopy.node.{id}.status` with
//! its id, version, HTTP address and the number of tenant trees it runs now,
//! which `$SRV.STATS.canopy` shows as the endpoint's data as well.

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
    /// Tenant trees running on the node now.
    pub tenants: usize,
}

/// Registers this node with the service API and answers its status until
/// `cancel`.
pub async fn serve(
    client: async_nats::Client,
    http: SocketAddr,
    node: ActorRef<NodeMsg>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let tenants = Arc::new(AtomicUsize::new(0));
    let in_stats = tenants.clone();
    let metadata = HashMap::from([("http".to_owned(), http.to_string())]);
    let service = async_nats::service::ServiceExt::service_builder(&client)
        .description("a Canopy node")
        .metadata(metadata)
        .stats_handler(move |_, _| serde_json::json!({ "tenants": in_stats.load(Ordering::Relaxed) }))
        .start(SERVICE, version)
        .await
        .map_err(|e| anyhow!("while registering with the NATS service API: {e}"))?;
    let id = service.info().await.id;
    let mut status = service
        .endpoint(format!("canopy.node.{id}.status"))
        .await
        .map_err(|e| anyhow!("while adding the status endpoint: {e}"))?;
    let mut count = tokio::time::interval(COUNT_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = count.tick() => {
                if let Ok(ractor::rpc::CallResult::Success(n)) =
                    node.call(NodeMsg::LiveTrees, Some(Duration::from_secs(2))).await
                {
                    tenants.store(n, Ordering::Relaxed);
                }
            }
            Some(request) = status.next() => {
                let answer = Status {
                    id: id.clone(),
                    version: version.to_owned(),
                    http: http.to_string(),
                    tenants: tenants.load(Ordering::Relaxed),
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = request.respond(Ok(body.into())).await {
                    tracing::debug!(error = %e, "a status request went unanswered");
                }
            }
        }
    }
    let _ = service.stop().await;
    Ok(())
}
