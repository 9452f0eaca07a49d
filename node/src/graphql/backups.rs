//! Backups in GraphQL: `backups` and `backupTenant` (permission
//! `manage_backups`), and a platform administrator's `setBackupLimits`
//! (`restoreTenant` is with the tenants, since it creates one).

use actors::command::{BackupReply, BackupRequest};
use actors::domain::backup::{DEFAULT_MAX, DEFAULT_PER_DAY};
use actors::domain::tenant::{Scope, TenantId};
use async_graphql::{Context, InputObject, Object, SimpleObject};

use super::accounts::rfc3339;
use super::request::{bad_input, command_id, consistent, internal, parts, platform_admin, send, settle, tenant_of};
use crate::read_model::backups::BackupRow;

/// A backup of the tenant in the object store `backups`.
#[derive(SimpleObject)]
pub struct Backup {
    /// Give it to `restoreTenant`.
    id: async_graphql::ID,
    /// RFC 3339, UTC.
    created_at: String,
    /// Bytes.
    size: u64,
    /// How many events it holds.
    events: u64,
}

impl From<BackupRow> for Backup {
    fn from(r: BackupRow) -> Self {
        Self { id: async_graphql::ID(r.backup_id), created_at: rfc3339(r.at), size: r.size, events: r.events }
    }
}

/// A tenant's backup limits.
#[derive(SimpleObject)]
pub struct BackupLimits {
    /// Backups a UTC day (default 1); one more is `LIMIT_EXCEEDED`.
    per_day_backups: u32,
    /// Backups kept (default 10); one more removes the oldest.
    max_backups: u32,
}

#[derive(InputObject)]
pub struct BackupLimitsInput {
    slug: String,
    /// 1 to 100.
    per_day_backups: u32,
    /// 1 to 1000.
    max_backups: u32,
}

#[derive(Default)]
pub struct BackupQuery;

#[Object]
impl BackupQuery {
    /// The tenant's backups, newest first (permission `manage_backups`).
    async fn backups(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Backup>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "backups belong to a tenant")?;
        consistent(app, req).await;
        let (rows, _) = app.read_model.backups(&req.scope).await.map_err(|e| internal("reading backups", e))?;
        Ok(rows.into_iter().map(Backup::from).collect())
    }

    /// The tenant's backup limits (permission `manage_backups`).
    async fn backup_limits(&self, ctx: &Context<'_>) -> async_graphql::Result<BackupLimits> {
        let (app, req) = parts(ctx);
        tenant_of(req, "backups belong to a tenant")?;
        consistent(app, req).await;
        let (_, limits) = app.read_model.backups(&req.scope).await.map_err(|e| internal("reading backups", e))?;
        let (per_day_backups, max_backups) = limits.unwrap_or((DEFAULT_PER_DAY, DEFAULT_MAX));
        Ok(BackupLimits { per_day_backups, max_backups })
    }
}

#[derive(Default)]
pub struct BackupMutation;

#[Object]
impl BackupMutation {
    /// Backs the tenant up into the object store `backups` (permission
    /// `manage_backups`): its events, sealed fields still sealed, and its keys
    /// wrapped under the master key. Past the day's limit: `LIMIT_EXCEEDED`;
    /// past the total, the oldest backup is removed.
    async fn backup_tenant(&self, ctx: &Context<'_>) -> async_graphql::Result<Backup> {
        let (app, req) = parts(ctx);
        tenant_of(req, "backups belong to a tenant")?;
        let reply: BackupReply =
            send(app, req, &req.scope, "backups", command_id(req, "backupTenant"), BackupRequest::Take).await?;
        settle(ctx, app, reply.seq).await?;
        let id = reply.backup_id.ok_or_else(|| internal("a backup", "no id in the reply"))?;
        let events = app
            .read_model
            .backups(&req.scope)
            .await
            .map_err(|e| internal("reading backups", e))?
            .0
            .into_iter()
            .find(|b| b.backup_id == id)
            .map_or(0, |b| b.events);
        Ok(Backup { id: async_graphql::ID(id), created_at: rfc3339(reply.at), size: reply.size, events })
    }

    /// Sets a tenant's backup limits (platform administrators only).
    async fn set_backup_limits(
        &self,
        ctx: &Context<'_>,
        input: BackupLimitsInput,
    ) -> async_graphql::Result<BackupLimits> {
        let (app, req) = parts(ctx);
        platform_admin(req)?;
        let slug = TenantId::parse(&input.slug).map_err(|e| bad_input("input.slug", e))?;
        let request = BackupRequest::SetLimits { per_day: input.per_day_backups, max: input.max_backups };
        let reply: BackupReply =
            send(app, req, &Scope::Tenant(slug), "backups", command_id(req, "setBackupLimits"), request).await?;
        settle(ctx, app, reply.seq).await?;
        Ok(BackupLimits { per_day_backups: reply.per_day, max_backups: reply.max })
    }
}
