//! Tenants in GraphQL: a member's `tenant` and `updateTenant`, the platform
//! administrators' `tenants`, `createTenant`, `suspendTenant` and
//! `resumeTenant`, and `deleteTenant` (an administrator, or a member holding
//! `delete_tenant` with their password).

use actors::command::{TenantReply, TenantRequest};
use actors::domain::account::{Email, Password};
use actors::domain::tenant::{Scope, TenantId, TenantName, TenantStatus};
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject};

use super::request::{
    RequestCtx, bad_input, command_id, consistent, error, internal, parse, parts, platform_admin, send, settle,
};
use crate::App;
use crate::edge::feed::Feed;
use crate::read_model::TenantRow;

/// Where a tenant is in its life.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "TenantStatus")]
pub enum Status {
    Active,
    /// Its members and access tokens are refused until it is resumed.
    Suspended,
    /// Its data is shredded; its slug stays taken.
    Deleted,
}

impl From<TenantStatus> for Status {
    fn from(s: TenantStatus) -> Self {
        match s {
            TenantStatus::Active => Status::Active,
            TenantStatus::Suspended => Status::Suspended,
            TenantStatus::Deleted => Status::Deleted,
        }
    }
}

#[derive(SimpleObject)]
pub struct Tenant {
    /// The slug; tenants are addressed by it.
    id: String,
    slug: String,
    name: String,
    created_at: String,
    /// The account that created the tenant, its first owner (`roles` and
    /// `users` tell who owns it now).
    owner: async_graphql::ID,
    status: Status,
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Self {
            status: r.status().into(),
            id: r.slug.clone(),
            slug: r.slug,
            name: r.name,
            created_at: r.created_at,
            owner: async_graphql::ID(r.owner_account_id),
        }
    }
}

/// The tenants part of the query root.
#[derive(Default)]
pub struct TenantQuery;

#[Object]
impl TenantQuery {
    /// The caller's tenant (permission `read_tenant`, which every member holds).
    async fn tenant(&self, ctx: &Context<'_>) -> async_graphql::Result<Tenant> {
        let (app, req) = parts(ctx);
        let slug = super::request::tenant_of(req, "name the tenant")?;
        consistent(app, req).await;
        let row = app.read_model.tenant(slug).await.map_err(|e| internal("reading a tenant", e))?;
        row.map(Tenant::from).ok_or_else(|| super::request::error("NOT_FOUND", "unknown tenant"))
    }

    /// Every tenant (platform administrators only).
    async fn tenants(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Tenant>> {
        let (app, req) = parts(ctx);
        platform_admin(req)?;
        consistent(app, req).await;
        let rows = app.read_model.tenants().await.map_err(|e| internal("listing tenants", e))?;
        Ok(rows.into_iter().map(Tenant::from).collect())
    }
}

#[derive(InputObject)]
pub struct CreateTenantInput {
    /// `[a-z0-9][a-z0-9-]{1,62}`
    slug: String,
    name: String,
    owner_email: String,
    owner_password: String,
}

/// The tenants part of the mutation root.
#[derive(Default)]
pub struct TenantMutation;

#[Object]
impl TenantMutation {
    /// Creates a tenant and its owner account (platform administrators only).
    async fn create_tenant(&self, ctx: &Context<'_>, input: CreateTenantInput) -> async_graphql::Result<Tenant> {
        let (app, req) = parts(ctx);
        platform_admin(req)?;
        let slug = TenantId::parse(&input.slug).map_err(|e| bad_input("slug", e))?;
        let request = TenantRequest::Create {
            slug: slug.clone(),
            name: TenantName::parse(&input.name).map_err(|e| bad_input("name", e))?,
            owner_email: parse("ownerEmail", Email::parse(&input.owner_email))?,
            owner_password: parse("ownerPassword", Password::parse(&input.owner_password))?,
        };
        let reply: TenantReply =
            send(app, req, &Scope::Platform, "tenant", command_id(req, "createTenant"), request).await?;
        let (TenantReply::Created { seq, .. } | TenantReply::Changed { seq }) = reply;
        settle(ctx, app, seq).await?;
        projected(app, &slug).await
    }

    /// Renames the caller's tenant (permission `update_tenant`).
    async fn update_tenant(&self, ctx: &Context<'_>, input: UpdateTenantInput) -> async_graphql::Result<Tenant> {
        let (app, req) = parts(ctx);
        let slug = super::request::tenant_of(req, "name the tenant")?.clone();
        let name = TenantName::parse(&input.name).map_err(|e| bad_input("name", e))?;
        change(ctx, "updateTenant", TenantRequest::Rename { slug: slug.clone(), name }).await?;
        projected(app, &slug).await
    }

    /// Suspends a tenant (platform administrators only): its members and access
    /// tokens get `FORBIDDEN` from the next request on, and nothing is lost.
    async fn suspend_tenant(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<Tenant> {
        admin_change(ctx, "suspendTenant", &slug, |slug| TenantRequest::Suspend { slug }).await
    }

    /// Lifts a suspension (platform administrators only).
    async fn resume_tenant(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<Tenant> {
        admin_change(ctx, "resumeTenant", &slug, |slug| TenantRequest::Resume { slug }).await
    }

    /// Creates tenant `slug` as a clone of a backup (platform administrators
    /// only): the same accounts, roles, modules and records, under the new
    /// slug; the original is untouched. The clone starts without sessions, and
    /// a person erased since the backup was taken stays erased.
    async fn restore_tenant(&self, ctx: &Context<'_>, input: RestoreTenantInput) -> async_graphql::Result<Tenant> {
        let backup_id = uuid::Uuid::try_parse(&input.backup_id)
            .ok()
            .filter(|u| u.hyphenated().to_string() == input.backup_id.as_str())
            .ok_or_else(|| bad_input("input.backupId", "not a backup id"))?;
        admin_change(ctx, "restoreTenant", &input.slug, |slug| TenantRequest::Restore { slug, backup_id }).await
    }

    /// Deletes a tenant for good: a platform administrator, or a member holding
    /// `delete_tenant` who gives their password. Its data key is destroyed (all
    /// it sealed in the log becomes unreadable), its backups are removed, its
    /// read models are dropped, and its slug is never given out again.
    async fn delete_tenant(&self, ctx: &Context<'_>, input: DeleteTenantInput) -> async_graphql::Result<bool> {
        let (_, req) = parts(ctx);
        let slug = TenantId::parse(&input.slug).map_err(|e| bad_input("slug", e))?;
        if req.scope.tenant().is_some_and(|t| *t != slug) {
            return Err(error("BAD_USER_INPUT", "the slug names another tenant than the request's"));
        }
        let password = match &input.password {
            None => None,
            Some(p) => Some(Password::parse(p).map_err(|_| error("BAD_USER_INPUT", "the password is not correct"))?),
        };
        change(ctx, "deleteTenant", TenantRequest::Delete { slug, password }).await?;
        Ok(true)
    }
}

#[derive(InputObject)]
pub struct RestoreTenantInput {
    backup_id: async_graphql::ID,
    /// The new tenant's slug.
    slug: String,
}

#[derive(InputObject)]
pub struct UpdateTenantInput {
    name: String,
}

#[derive(InputObject)]
pub struct DeleteTenantInput {
    slug: String,
    /// The member's own password; a platform administrator needs none.
    password: Option<String>,
}

/// Sends a lifecycle change to the directory; answers once the read models
/// and this node's tenant statuses hold it, so the next request sees it.
async fn change(ctx: &Context<'_>, operation: &str, request: TenantRequest) -> async_graphql::Result<()> {
    let (app, req): (&std::sync::Arc<App>, &RequestCtx) = parts(ctx);
    let reply: TenantReply = send(app, req, &Scope::Platform, "tenant", command_id(req, operation), request).await?;
    let (TenantReply::Created { seq, .. } | TenantReply::Changed { seq }) = reply;
    settle(ctx, app, seq).await?;
    let timeout = std::time::Duration::from_millis(app.config.read_your_writes_timeout_ms);
    if !app.tenants.marks().wait_for(seq, timeout).await {
        tracing::warn!(seq, "the tenant statuses did not reach the change in time; answering anyway");
    }
    Ok(())
}

/// A platform administrator's change to the tenant `slug`, answered with the tenant.
async fn admin_change(
    ctx: &Context<'_>,
    operation: &str,
    slug: &str,
    request: impl FnOnce(TenantId) -> TenantRequest,
) -> async_graphql::Result<Tenant> {
    let (app, req) = parts(ctx);
    platform_admin(req)?;
    let slug = TenantId::parse(slug).map_err(|e| bad_input("slug", e))?;
    change(ctx, operation, request(slug.clone())).await?;
    projected(app, &slug).await
}

/// The tenant as the read model shows it after a write.
async fn projected(app: &App, slug: &TenantId) -> async_graphql::Result<Tenant> {
    app.read_model
        .tenant(slug)
        .await
        .map_err(|e| internal("reading a tenant", e))?
        .map(Tenant::from)
        .ok_or_else(|| internal("tenant not projected in time", slug.as_str()))
}
