//! Where each tenant is in its life, as the edge checks it on every request
//! that names a tenant: active, suspended (its members and tokens are refused)
//! or deleted (it is unknown). Fed from the directory's events on the log,
//! from the start (one to a few events per tenant), so each node knows every
//! tenant before it reports ready and learns of a suspension within
//! milliseconds, with no read-model query on the request path.

use std::collections::HashMap;
use std::sync::RwLock;

use actors::domain::tenant::{Scope, TenantId, TenantStatus};
use actors::store::event_store::{EventStore, Stored};
use actors::store::seal::KeyRing;
use async_nats::jetstream::consumer::DeliverPolicy;
use tokio::sync::mpsc;

use super::feed::{Feed, Marks};

/// The directory's events: `evt._system.tenant.{slug}.{type}`.
const FILTER: &str = "evt._system.tenant.>";

pub struct TenantStatuses {
    statuses: RwLock<HashMap<TenantId, TenantStatus>>,
    marks: Marks,
    /// Deleted tenants, for the task that makes sure their keys are shredded.
    deleted: mpsc::UnboundedSender<TenantId>,
}

impl TenantStatuses {
    /// The feed, and the receiving end of the deleted tenants it reads.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<TenantId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { statuses: RwLock::default(), marks: Marks::default(), deleted: tx }, rx)
    }

    /// What the log says about `slug` so far; `None` for a tenant this node has
    /// not read of (yet).
    pub fn status(&self, slug: &TenantId) -> Option<TenantStatus> {
        self.statuses.read().expect("the tenant statuses' lock is never poisoned").get(slug).copied()
    }
}

impl Feed for TenantStatuses {
    const NAME: &'static str = "tenants";

    fn filter(&self) -> &'static str {
        FILTER
    }

    fn start(&self) -> DeliverPolicy {
        DeliverPolicy::All
    }

    fn apply(&self, stored: Stored) {
        let Ok(slug) = TenantId::parse(&stored.envelope.aggregate_id) else {
            tracing::warn!(seq = stored.seq, "a directory event whose id is no slug");
            return;
        };
        let status = match stored.envelope.event_type.as_str() {
            "TenantCreated" | "TenantResumed" => TenantStatus::Active,
            "TenantSuspended" => TenantStatus::Suspended,
            "TenantDeleted" => TenantStatus::Deleted,
            _ => return,
        };
        if status == TenantStatus::Deleted {
            // A receiver that has stopped does not stop the feed.
            let _ = self.deleted.send(slug.clone());
        }
        self.statuses.write().expect("the tenant statuses' lock is never poisoned").insert(slug, status);
    }

    fn marks(&self) -> &Marks {
        &self.marks
    }
}

/// Shreds the keys of each deleted tenant the feed reads, so that a node that
/// crashed between a deletion's append and its shredding leaves no key behind:
/// every node repeats it, and repeating it does no harm.
pub async fn shred_deleted(keys: KeyRing, store: EventStore, mut deleted: mpsc::UnboundedReceiver<TenantId>) {
    while let Some(slug) = deleted.recv().await {
        let scope = Scope::Tenant(slug);
        if let Err(e) = actors::tree::directory::shred_tenant(&keys, &store, &scope).await {
            tracing::warn!(tenant = %scope, error = %e.message, "could not shred a deleted tenant's keys");
        }
    }
}
