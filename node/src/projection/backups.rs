//! A tenant's backups in its database: `backup` (one row per backup it holds)
//! and `backup_limits:tenant` (the limits a platform administrator set).

use futures::future::BoxFuture;

use actors::domain::tenant::Scope;

use super::event::{Event, Projection, Unapplied, refused, statement};
use crate::read_model::Statement;

pub struct TenantBackups;

impl Projection for TenantBackups {
    fn aggregate(&self) -> &'static str {
        "backups"
    }

    fn statements<'a>(&'a self, e: &'a Event<'a>) -> BoxFuture<'a, Result<Vec<Statement>, Unapplied>> {
        Box::pin(async move {
            if *e.scope == Scope::Platform {
                return Err(refused("backups belong to tenants"));
            }
            Ok(match e.event_type() {
                "BackupTaken" => {
                    let backup = e.text("backup_id")?;
                    let id = e.record("backup", &backup)?;
                    vec![statement(
                        format!(
                            "UPSERT {id} CONTENT {{ backup_id: $backup, at: $at, size: $size, events: $events, last_seq: $last }} RETURN NONE"
                        ),
                        serde_json::json!({
                            "backup": backup,
                            "at": e.int("at")?,
                            "size": e.int("size")?,
                            "events": e.int("events")?,
                            "last": e.int("last_seq")?,
                        }),
                    )]
                }
                "BackupRemoved" => {
                    let id = e.record("backup", &e.text("backup_id")?)?;
                    vec![statement(format!("DELETE {id} RETURN NONE"), serde_json::json!({}))]
                }
                "BackupLimitsSet" => vec![statement(
                    "UPSERT backup_limits:tenant CONTENT { per_day: $per_day, max: $max } RETURN NONE".into(),
                    serde_json::json!({ "per_day": e.int("per_day")?, "max": e.int("max")? }),
                )],
                _ => Vec::new(),
            })
        })
    }
}
