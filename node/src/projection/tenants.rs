//! The tenant directory in the `system` database: one `tenant` record per
//! `TenantCreated`.

use futures::future::BoxFuture;

use actors::domain::tenant::Scope;

use super::event::{Event, Projection, Unapplied, refused, statement};
use crate::read_model::Statement;

pub struct Tenants;

impl Projection for Tenants {
    fn aggregate(&self) -> &'static str {
        "tenant"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            if e.event_type() != "TenantCreated" {
                return Ok(Vec::new());
            }
            if *e.scope != Scope::Platform {
                return Err(refused("TenantCreated outside the platform"));
            }
            let slug = e.text("slug")?;
            if slug != e.aggregate_id() {
                return Err(refused("field `slug` disagrees with the aggregate id"));
            }
            let id = e.record("tenant", &slug)?;
            // `RETURN NONE`: the projector reads no results.
            Ok(vec![statement(
                format!(
                    "UPSERT {id} CONTENT {{ slug: $slug, name: $name, owner_account_id: $owner, created_seq: $seq, created_at: $at }} RETURN NONE"
                ),
                serde_json::json!({
                    "slug": slug, "name": e.text("name")?, "owner": e.text("owner_account_id")?,
                    "seq": e.stored.seq, "at": e.stored.envelope.occurred_at,
                }),
            )])
        })
    }
}
