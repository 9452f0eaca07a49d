//! Roles in GraphQL: `roles`, `createRole`, `updateRole`, `deleteRole` and
//! `changeMemberRole`. The `RoleActor` decides and checks the sender's
//! permissions itself; queries are checked here against the caller's current
//! grants in the read model.

use actors::command::{AccessReply, AccessRequest};
use actors::domain::access::{
    ADMIN, MEMBER, OWNER, Permission, RoleDescription, RoleId, RoleName, builtin_permissions,
};
use actors::domain::account::AccountId;
use actors::domain::tenant::Scope;
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::request::{bad_input, command_id, consistent, error, failure, internal, parts, principal, send, settle};
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
    /// The tenant's roles (permission `read_roles`).
    async fn roles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Role>> {
        let (app, req) = parts(ctx);
        if req.scope == Scope::Platform {
            return Err(error("BAD_USER_INPUT", "roles belong to a tenant: send `x-tenant-id`"));
        }
        consistent(app, req).await;
        all_roles(app, &req.scope).await
    }
}

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

fn permissions(raw: &[String]) -> async_graphql::Result<Vec<Permission>> {
    if raw.len() > 100 {
        return Err(bad_input("permissions", "at most 100"));
    }
    raw.iter().map(|p| Permission::parse(p).map_err(|e| bad_input("permissions", e))).collect()
}

fn role_id(field: &'static str, raw: &str) -> async_graphql::Result<RoleId> {
    RoleId::parse(raw).map_err(|_| error("NOT_FOUND", format!("{field}: no such role")))
}

async fn run(ctx: &Context<'_>, operation: &str, request: AccessRequest) -> async_graphql::Result<AccessReply> {
    let (app, req) = parts(ctx);
    principal(req)?;
    if req.scope == Scope::Platform {
        return Err(error("FORBIDDEN", "roles belong to a tenant: send `x-tenant-id`"));
    }
    let reply: AccessReply = send(app, req, &req.scope, "access", command_id(req, operation), request).await?;
    let seq = match &reply {
        AccessReply::Done { seq } | AccessReply::RoleCreated { seq, .. } => *seq,
    };
    settle(ctx, app, seq).await;
    Ok(reply)
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
            permissions: permissions(&input.permissions)?,
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
            permissions: permissions(&input.permissions)?,
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
}
