//! Tenants in GraphQL: a member's `tenant`, and the platform administrators'
//! `tenants` and `createTenant`.

use actors::command::{TenantReply, TenantRequest};
use actors::domain::account::{Email, Password};
use actors::domain::tenant::{Scope, TenantId, TenantName};
use async_graphql::{Context, InputObject, Object, SimpleObject};

use super::request::{bad_input, command_id, consistent, internal, parse, parts, platform_admin, send, settle};
use crate::read_model::TenantRow;

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
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Self {
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
        let TenantReply::Created { seq, .. } = reply;
        settle(ctx, app, seq).await;
        app.read_model
            .tenant(&slug)
            .await
            .map_err(|e| internal("reading a tenant", e))?
            .map(Tenant::from)
            .ok_or_else(|| internal("tenant not projected in time", slug.as_str()))
    }
}
