//! A tenant's backups in the read model: the ones it holds and its limits.

use serde::Deserialize;

use actors::domain::tenant::Scope;

use super::{ReadError, ReadModel, db_name};

/// A backup a tenant holds (`at` in Unix seconds).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BackupRow {
    pub backup_id: String,
    pub at: i64,
    pub size: u64,
    pub events: u64,
}

impl ReadModel {
    /// A tenant's backups, newest first, and its limits (per day, in all).
    pub async fn backups(&self, scope: &Scope) -> Result<(Vec<BackupRow>, Option<(u32, u32)>), ReadError> {
        #[derive(Deserialize)]
        struct Limits {
            per_day: u32,
            max: u32,
        }
        let rows = self
            .select(&db_name(scope), "SELECT * FROM backup ORDER BY at DESC, backup_id", serde_json::json!({}))
            .await?;
        let limits: Vec<Limits> = self
            .select(&db_name(scope), "SELECT per_day, max FROM backup_limits:tenant", serde_json::json!({}))
            .await?;
        Ok((rows, limits.into_iter().next().map(|l| (l.per_day, l.max))))
    }
}
