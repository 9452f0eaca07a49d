//! Roles in GraphQL: `roles`, `createRole`, `updateRole`, `deleteRole` and
//! `changeMemberRole`. The `RoleActor` decides and checks the sender's
//! permissions itself; queries are checked here against the caller's current
//! grants in the read model.

use actors::command::{AccessReply, AccessRequest};
use actors::domain::access::{
    ADMIN, MEMBER, OWNER, Permission, RoleDescription, RoleId, RoleName, builtin_permissions,
};
use actors::domain::access_token::{TokenId, TokenName};
use actors::domain::account::AccountId;
use actors::domain::tenant::Scope;
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::accounts::rfc3339;
use super::request::{bad_input, command_id, consistent, error, failure, internal, parts, send, settle, tenant_of};
use crate::App;

/// A role: built in (`owner`, `admin`, `member`) or defined by the tenant.
#[derive(SimpleObject, Clone)]
pub struct Role {
    id: ID,
    name: String,
    description: String,
    permissions: Vec<String>,
    built_in: bool,
}

fn builtin(id: &str, description: &str) -> Role {
    Role {
        id: ID(id.to_owned()),
        name: id.to_owned(),
        description: description.to_owned(),
        permissions: builtin_permissions(id).unwrap_or_default().iter().map(|p| p.as_str().to_owned()).collect(),
        built_in: true,
    }
}

/// Every role of the caller's tenant, built-in ones first.
async fn all_roles(app: &App, scope: &Scope) -> async_graphql::Result<Vec<Role>> {
    let mut out = vec![
        builtin(OWNER, "every permission"),
        builtin(ADMIN, "every permission but deleting the tenant and paying for it"),
        builtin(MEMBER, "what every member may do"),
    ];
    let custom = app.read_model.roles(scope).await.map_err(|e| internal("reading roles", e))?;
    out.extend(custom.into_iter().map(|r| Role {
        id: ID(r.role_id),
        name: r.name,
        description: r.description,
        permissions: r.permissions,
        built_in: false,
    }));
    Ok(out)
}

#[derive(Default)]
pub struct AccessQuery;

#[Object]
impl AccessQuery {
    /// The tenant's access tokens that have not been revoked, newest first
    /// (permission `read_access-tokens`). Secrets are never shown.
    async fn access_tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AccessToken>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "access tokens belong to a tenant")?;
        consistent(app, req).await;
        let rows = app.read_model.access_tokens(&req.scope).await.map_err(|e| internal("reading access tokens", e))?;
        let used = rows.iter().map(|r| app.token_usage.last_used(&req.scope, &r.token_id));
        let used = futures::future::join_all(used).await;
        Ok(rows.into_iter().zip(used).map(|(r, at)| AccessToken::from_row(r, at.map(rfc3339))).collect())
    }

    /// The tenant's roles (permission `read_roles`).
    async fn roles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Role>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "roles belong to a tenant")?;
        consistent(app, req).await;
        all_roles(app, &req.scope).await
    }
}

/// An API access token, without its secret.
#[derive(SimpleObject, Clone)]
pub struct AccessToken {
    id: ID,
    name: String,
    /// Permissions from the catalog; the token does no more than its creator may.
    scopes: Vec<String>,
    /// The account that created it.
    created_by: ID,
    created_at: String,
    expires_at: String,
    /// When it was last used, to the minute; `null` if never.
    last_used_at: Option<String>,
}

impl AccessToken {
    fn from_row(r: crate::read_model::TokenRow, last_used_at: Option<String>) -> Self {
        Self {
            id: ID(r.token_id),
            name: r.name,
            scopes: r.scopes,
            created_by: ID(r.created_by),
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            last_used_at,
        }
    }
}

/// A new access token and its secret, shown this once.
#[derive(SimpleObject)]
pub struct CreatedAccessToken {
    /// `cnp_…`: send it as `x-tenant-key` (with `x-tenant-id`) or as
    /// `Authorization: Bearer`. Only its hash is kept.
    secret: String,
    access_token: AccessToken,
}

#[derive(InputObject)]
pub struct CreateAccessTokenInput {
    name: String,
    /// Permissions from the catalog, each held by the creator.
    scopes: Vec<String>,
    /// RFC 3339, within 366 days; 90 days from now when left out.
    expires_at: Option<String>,
}

/// The default lifetime of an access token.
const DEFAULT_TOKEN_DAYS: i64 = 90;

#[derive(InputObject)]
pub struct CreateRoleInput {
    name: String,
    #[graphql(default)]
    description: String,
    /// Names from the permission catalog (`schemas/permissions.json`).
    permissions: Vec<String>,
}

#[derive(InputObject)]
pub struct UpdateRoleInput {
    id: ID,
    name: String,
    #[graphql(default)]
    description: String,
    permissions: Vec<String>,
}

#[derive(InputObject)]
pub struct ChangeMemberRoleInput {
    user_id: ID,
    /// Role ids (`owner`, `admin`, `member`, or a custom role's id); at least one.
    roles: Vec<ID>,
}

/// Permission names of the input `field`.
fn permissions(field: &'static str, raw: &[String]) -> async_graphql::Result<Vec<Permission>> {
    if raw.len() > 100 {
        return Err(bad_input(field, "at most 100"));
    }
    raw.iter().map(|p| Permission::parse(p).map_err(|e| bad_input(field, e))).collect()
}

fn role_id(field: &'static str, raw: &str) -> async_graphql::Result<RoleId> {
    RoleId::parse(raw).map_err(|_| error("NOT_FOUND", format!("{field}: no such role")))
}

/// Sends a request to the tenant's `RoleActor` and waits for read-your-writes.
pub(super) async fn run(
    ctx: &Context<'_>,
    operation: &str,
    request: AccessRequest,
) -> async_graphql::Result<AccessReply> {
    let (app, req) = parts(ctx);
    super::request::tenant_of(req, "roles belong to a tenant")?;
    let reply: AccessReply = send(app, req, &req.scope, "access", command_id(req, operation), request).await?;
    let seq = match &reply {
        AccessReply::Done { seq }
        | AccessReply::RoleCreated { seq, .. }
        | AccessReply::TokenCreated { seq, .. }
        | AccessReply::Invited { seq, .. } => *seq,
    };
    settle(ctx, app, seq).await?;
    Ok(reply)
}

/// An expiry given as RFC 3339 (`expiresAt`), or `default_days` from now, in Unix seconds.
pub(super) fn expiry(raw: Option<&str>, default_days: i64) -> async_graphql::Result<i64> {
    match raw {
        None => Ok(time::OffsetDateTime::now_utc().unix_timestamp() + default_days * 24 * 3600),
        Some(raw) => super::request::unix_time("expiresAt", raw),
    }
}

/// Creates an access token and returns its id and secret. A retry under the
/// same idempotency key finds the token made and gets `CONFLICT`: its secret
/// was shown to the first request and is kept nowhere.
pub(super) async fn create_token(
    ctx: &Context<'_>,
    operation: &str,
    name: TokenName,
    scopes: Vec<Permission>,
    expires_at: i64,
) -> async_graphql::Result<(String, String)> {
    let request = AccessRequest::CreateToken { name, scopes, expires_at };
    let AccessReply::TokenCreated { token_id, secret, .. } = run(ctx, operation, request).await? else {
        return Err(internal("unexpected reply", operation));
    };
    let Some(secret) = secret else {
        return Err(error(
            "CONFLICT",
            "this token was created by an earlier request with the same idempotency-key, and its secret was shown then; revoke it and create another",
        ));
    };
    Ok((token_id, secret))
}

/// A role as the read model has it now.
async fn role(app: &App, scope: &Scope, id: &str) -> async_graphql::Result<Role> {
    all_roles(app, scope).await?.into_iter().find(|r| r.id.as_str() == id).ok_or_else(failure_not_found)
}

fn failure_not_found() -> async_graphql::Error {
    failure(actors::command::CommandFailure::new("NOT_FOUND", "no such role"))
}

#[derive(Default)]
pub struct AccessMutation;

#[Object]
impl AccessMutation {
    /// Creates a custom role (permission `manage_roles`). Its name is unique in
    /// the tenant, whatever the case; unknown permissions are refused.
    async fn create_role(&self, ctx: &Context<'_>, input: CreateRoleInput) -> async_graphql::Result<Role> {
        let request = AccessRequest::CreateRole {
            name: RoleName::parse(&input.name).map_err(|e| bad_input("name", e))?,
            description: RoleDescription::parse(&input.description).map_err(|e| bad_input("description", e))?,
            permissions: permissions("permissions", &input.permissions)?,
        };
        let AccessReply::RoleCreated { role_id, .. } = run(ctx, "createRole", request).await? else {
            return Err(internal("unexpected reply", "createRole"));
        };
        role(parts(ctx).0, &parts(ctx).1.scope, &role_id).await
    }

    /// Changes a custom role's name, description and permissions (`manage_roles`).
    async fn update_role(&self, ctx: &Context<'_>, input: UpdateRoleInput) -> async_graphql::Result<Role> {
        let id = role_id("id", &input.id)?;
        let request = AccessRequest::UpdateRole {
            role_id: id.clone(),
            name: RoleName::parse(&input.name).map_err(|e| bad_input("name", e))?,
            description: RoleDescription::parse(&input.description).map_err(|e| bad_input("description", e))?,
            permissions: permissions("permissions", &input.permissions)?,
        };
        run(ctx, "updateRole", request).await?;
        role(parts(ctx).0, &parts(ctx).1.scope, id.as_str()).await
    }

    /// Deletes a custom role (`manage_roles`); `CONFLICT` while a member holds it.
    async fn delete_role(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let request = AccessRequest::DeleteRole { role_id: role_id("id", &id)? };
        run(ctx, "deleteRole", request).await.map(|_| true)
    }

    /// Sets a member's roles (`assign_roles`). The tenant's last owner stays an
    /// owner (`CONFLICT`).
    async fn change_member_role(&self, ctx: &Context<'_>, input: ChangeMemberRoleInput) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let account_id = AccountId::parse(&input.user_id).map_err(|_| bad_input("userId", "not an account id"))?;
        if input.roles.len() > 20 {
            return Err(bad_input("roles", "at most 20"));
        }
        let roles = input.roles.iter().map(|r| role_id("roles", r)).collect::<async_graphql::Result<Vec<_>>>()?;
        // The member must be one of this tenant's accounts.
        app.read_model
            .user(&req.scope, account_id.as_str())
            .await
            .map_err(|e| internal("reading a user", e))?
            .ok_or_else(|| error("NOT_FOUND", "no such account"))?;
        run(ctx, "changeMemberRole", AccessRequest::SetMemberRoles { account_id, roles }).await.map(|_| true)
    }

    /// Creates an API access token (permission `create_access-token`) whose
    /// scopes are among the creator's permissions. The secret is in this answer
    /// and nowhere else; a retry with the same `idempotency-key` finds the token
    /// created and gets `CONFLICT`, since the secret cannot be shown again.
    async fn create_access_token(
        &self,
        ctx: &Context<'_>,
        input: CreateAccessTokenInput,
    ) -> async_graphql::Result<CreatedAccessToken> {
        let (app, req) = parts(ctx);
        let name = TokenName::parse(&input.name).map_err(|e| bad_input("name", e))?;
        let scopes = permissions("scopes", &input.scopes)?;
        let expires_at = expiry(input.expires_at.as_deref(), DEFAULT_TOKEN_DAYS)?;
        let (token_id, secret) = create_token(ctx, "createAccessToken", name, scopes, expires_at).await?;
        let row = app
            .read_model
            .access_token(&req.scope, &token_id)
            .await
            .map_err(|e| internal("reading an access token", e))?
            .ok_or_else(|| internal("a created token is not in the read model", &token_id))?;
        Ok(CreatedAccessToken { secret, access_token: AccessToken::from_row(row, None) })
    }

    /// Revokes an access token (permission `revoke_access-token`): it is
    /// refused from the next request on. Revoking a revoked token is a no-op.
    async fn revoke_access_token(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let token_id = TokenId::parse(&id).map_err(|_| error("NOT_FOUND", "id: no such access token"))?;
        run(ctx, "revokeAccessToken", AccessRequest::RevokeToken { token_id }).await.map(|_| true)
    }
}
