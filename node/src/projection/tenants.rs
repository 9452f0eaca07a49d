//! The tenant directory in the `system` database: one `tenant` record per
//! tenant, with its name and status. A deleted tenant keeps its record (its
//! slug stays taken) with its name erased, and its database is removed.

use futures::future::BoxFuture;

use actors::domain::tenant::{Scope, TenantStatus};

use super::event::{ERASED, Event, Projection, Unapplied, refused, statement};
use crate::read_model::Statement;

pub struct Tenants;

impl Projection for Tenants {
    fn aggregate(&self) -> &'static str {
        "tenant"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            if *e.scope != Scope::Platform {
                return Err(refused("a directory event outside the platform"));
            }
            let id = e.record("tenant", e.aggregate_id())?;
            // `RETURN NONE`: the projector reads no results.
            let set = |assignments: &str, vars: serde_json::Value| {
                Ok(vec![statement(format!("UPDATE {id} SET {assignments} RETURN NONE"), vars)])
            };
            match e.event_type() {
                "TenantCreated" => {
                    let slug = e.text("slug")?;
                    if slug != e.aggregate_id() {
                        return Err(refused("field `slug` disagrees with the aggregate id"));
                    }
                    Ok(vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ slug: $slug, name: $name, owner_account_id: $owner, created_seq: $seq, created_at: $at, status: $status }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "slug": slug, "name": e.text("name")?, "owner": e.text("owner_account_id")?,
                            "seq": e.stored.seq, "at": e.stored.envelope.occurred_at,
                            "status": TenantStatus::Active.as_str(),
                        }),
                    )])
                }
                "TenantRenamed" => set("name = $name", serde_json::json!({ "name": e.text("name")? })),
                "TenantSuspended" => set("status = $s", serde_json::json!({ "s": TenantStatus::Suspended.as_str() })),
                "TenantResumed" => set("status = $s", serde_json::json!({ "s": TenantStatus::Active.as_str() })),
                // The projector removes the tenant's database in the same transaction.
                "TenantDeleted" => set(
                    "status = $s, name = $erased",
                    serde_json::json!({ "s": TenantStatus::Deleted.as_str(), "erased": ERASED }),
                ),
                _ => Ok(Vec::new()),
            }
        })
    }
}
