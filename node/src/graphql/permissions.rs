//! What every root field of the API needs, in one table, and the extension
//! that enforces it before the field's resolver runs. A field missing from the
//! table is refused (`FORBIDDEN`), and a test walks the schema so that none is
//! missing. `schemas/permissions.md` lists the table.

use std::sync::Arc;

use actors::domain::tenant::{PLATFORM_TOKEN, Scope};
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo};
use async_graphql::{ServerResult, Value};

use super::request::{RequestCtx, error};
use crate::App;

/// What a root field needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Anyone, signed in or not (the resolver may still check a proof).
    Public,
    /// A signed-in account or access token; what it acts on is its own.
    SignedIn,
    /// In a tenant, a caller holding this permission; on the platform, an administrator.
    Permission(&'static str),
    /// As `Permission`, for a member only: an access token is refused (what the
    /// field does needs a member's password).
    Member(&'static str),
    /// A platform administrator.
    PlatformAdmin,
}

impl Needs {
    pub fn describe(self) -> String {
        match self {
            Needs::Public => "public".into(),
            Needs::SignedIn => "signed in (acts on one's own account)".into(),
            Needs::Permission(p) => format!("`{p}`"),
            Needs::Member(p) => format!("`{p}`, as a member (not an access token)"),
            Needs::PlatformAdmin => "platform administrator".into(),
        }
    }
}

/// Every root field: its type, its name, and what it needs.
pub const ROOT_FIELDS: &[(&str, &str, Needs)] = &[
    ("Query", "me", Needs::SignedIn),
    ("Query", "users", Needs::Permission("read_users")),
    ("Query", "roles", Needs::Permission("read_roles")),
    ("Query", "sessions", Needs::SignedIn),
    ("Query", "tenant", Needs::Permission("read_tenant")),
    ("Query", "tenants", Needs::PlatformAdmin),
    ("Query", "auditLog", Needs::Permission("read_audit")),
    ("Mutation", "register", Needs::Public),
    ("Mutation", "login", Needs::Public),
    ("Mutation", "refreshSession", Needs::Public),
    ("Mutation", "requestPasswordReset", Needs::Public),
    ("Mutation", "resetPassword", Needs::Public),
    ("Mutation", "verifyEmail", Needs::Public),
    ("Mutation", "updateProfile", Needs::SignedIn),
    ("Mutation", "changeEmail", Needs::SignedIn),
    ("Mutation", "changePassword", Needs::SignedIn),
    ("Mutation", "resendVerification", Needs::SignedIn),
    ("Mutation", "deleteAccount", Needs::SignedIn),
    ("Mutation", "logout", Needs::SignedIn),
    ("Mutation", "logoutEverywhere", Needs::SignedIn),
    ("Mutation", "revokeSession", Needs::SignedIn),
    ("Mutation", "removeUser", Needs::Permission("remove_members")),
    ("Mutation", "createRole", Needs::Permission("manage_roles")),
    ("Mutation", "updateRole", Needs::Permission("manage_roles")),
    ("Mutation", "deleteRole", Needs::Permission("manage_roles")),
    ("Mutation", "changeMemberRole", Needs::Permission("assign_roles")),
    ("Query", "accessTokens", Needs::Permission("read_access-tokens")),
    ("Mutation", "createAccessToken", Needs::Permission("create_access-token")),
    ("Mutation", "revokeAccessToken", Needs::Permission("revoke_access-token")),
    ("Query", "invitations", Needs::Permission("read_invitations")),
    ("Mutation", "inviteMember", Needs::Permission("invite_members")),
    ("Mutation", "revokeInvitation", Needs::Permission("invite_members")),
    ("Mutation", "acceptInvitation", Needs::Public),
    ("Mutation", "createTenant", Needs::PlatformAdmin),
    ("Mutation", "updateTenant", Needs::Permission("update_tenant")),
    ("Mutation", "suspendTenant", Needs::PlatformAdmin),
    ("Mutation", "resumeTenant", Needs::PlatformAdmin),
    ("Mutation", "deleteTenant", Needs::Member("delete_tenant")),
    ("Query", "modules", Needs::SignedIn),
    ("Query", "tenantModules", Needs::Permission("manage_modules")),
    ("Mutation", "subscribeModule", Needs::Permission("manage_modules")),
    ("Mutation", "unsubscribeModule", Needs::Permission("manage_modules")),
    ("Mutation", "upgradeModule", Needs::Permission("manage_modules")),
    ("Mutation", "migrate", Needs::Permission("manage_modules")),
    ("Mutation", "seedModules", Needs::Permission("manage_modules")),
    ("Mutation", "deseedModules", Needs::Permission("manage_modules")),
    ("Query", "backups", Needs::Permission("manage_backups")),
    ("Query", "backupLimits", Needs::Permission("manage_backups")),
    ("Mutation", "backupTenant", Needs::Permission("manage_backups")),
    ("Mutation", "setBackupLimits", Needs::PlatformAdmin),
    ("Mutation", "restoreTenant", Needs::PlatformAdmin),
    ("Query", "messages", Needs::Permission("subscribe_messages")),
    ("Query", "pushForwarding", Needs::Permission("manage_push")),
    ("Mutation", "publishMessage", Needs::Permission("publish_messages")),
    ("Mutation", "setPushForwarding", Needs::Permission("manage_push")),
    ("Mutation", "issuePushCredentials", Needs::Member("subscribe_messages")),
    ("Query", "webhooks", Needs::Permission("read_webhooks")),
    ("Query", "webhookDeliveries", Needs::Permission("read_webhooks")),
    ("Mutation", "createWebhook", Needs::Permission("manage_webhooks")),
    ("Mutation", "updateWebhook", Needs::Permission("manage_webhooks")),
    ("Mutation", "deleteWebhook", Needs::Permission("manage_webhooks")),
    ("Mutation", "rotateWebhookSecret", Needs::Permission("manage_webhooks")),
    ("Mutation", "redeliver", Needs::Permission("manage_webhooks")),
    // Subscriptions check theirs when they start (`graphql/live.rs`).
    ("Subscription", "events", Needs::Permission("read_audit")),
    ("Subscription", "messages", Needs::Permission("subscribe_messages")),
];

pub fn needs(parent: &str, field: &str) -> Option<Needs> {
    ROOT_FIELDS.iter().find(|(t, f, _)| *t == parent && *f == field).map(|(_, _, n)| *n)
}

/// The table as Markdown, for `schemas/permissions.md`.
pub fn field_table() -> String {
    let mut out = String::from(
        "\n## What each GraphQL field needs\n\nGenerated from `node/src/graphql/permissions.rs` (`ROOT_FIELDS`); a field not listed is refused.\n\n| field | needs |\n|---|---|\n",
    );
    for (parent, field, needs) in ROOT_FIELDS {
        out.push_str(&format!("| `{parent}.{field}` | {} |\n", needs.describe()));
    }
    out
}

/// Checks a caller against what a field needs. An access token acts for its
/// tenant, never as an account: it may use exactly the fields whose permission
/// its scopes (as far as its creator still holds them) include.
pub async fn allowed(app: &App, req: &RequestCtx, needs: Needs) -> async_graphql::Result<()> {
    if let Some(token) = &req.token {
        return match needs {
            Needs::Public => Ok(()),
            Needs::Permission(p) if token.permissions.contains(p) => Ok(()),
            Needs::Permission(p) => Err(error("FORBIDDEN", format!("this needs the permission {p}"))),
            Needs::Member(_) => Err(error("FORBIDDEN", "only a member may do this, not an access token")),
            Needs::SignedIn => Err(error("FORBIDDEN", "an access token acts for its tenant, not as an account")),
            Needs::PlatformAdmin => Err(error("FORBIDDEN", "only a platform administrator may do this")),
        };
    }
    let signed_in = || {
        req.principal
            .as_ref()
            .ok_or_else(|| error("UNAUTHENTICATED", "sign in first: send `Authorization: Bearer <token>`"))
    };
    match needs {
        Needs::Public => Ok(()),
        Needs::SignedIn => signed_in().map(|_| ()),
        Needs::PlatformAdmin => {
            let p = signed_in()?;
            if req.scope == Scope::Platform && p.tenant == PLATFORM_TOKEN {
                Ok(())
            } else {
                Err(error("FORBIDDEN", "only a platform administrator may do this"))
            }
        }
        Needs::Permission(permission) | Needs::Member(permission) => holds(app, req, permission).await,
    }
}

/// Whether the caller holds `permission` in the request's tenant: an access
/// token through its scopes (as far as its creator still holds them), an
/// account through its roles; on the platform, only an administrator.
pub async fn holds(app: &App, req: &RequestCtx, permission: &str) -> async_graphql::Result<()> {
    match refusal(app, req, permission).await? {
        None => Ok(()),
        Some((code, message)) => Err(error(code, message)),
    }
}

/// Why the caller may not use `permission` (its code and message), if it
/// may not; `Err` only when the grants could not be read (logged).
pub async fn refusal(
    app: &App,
    req: &RequestCtx,
    permission: &str,
) -> async_graphql::Result<Option<(&'static str, String)>> {
    let needs = || Some(("FORBIDDEN", format!("this needs the permission {permission}")));
    if let Some(token) = &req.token {
        return Ok(if token.permissions.contains(permission) { None } else { needs() });
    }
    let Some(p) = &req.principal else {
        return Ok(Some(("UNAUTHENTICATED", "sign in first: send `Authorization: Bearer <token>`".into())));
    };
    if req.scope == Scope::Platform {
        return Ok(if p.tenant == PLATFORM_TOKEN {
            None
        } else {
            Some(("FORBIDDEN", "only a platform administrator may do this".into()))
        });
    }
    let held = app
        .read_model
        .permissions_of(&req.scope, &p.sub)
        .await
        .map_err(|e| super::request::internal("reading grants", e))?;
    Ok(if held.contains(permission) { None } else { needs() })
}

/// The extension that runs `allowed` before each root field.
pub struct RootFieldGuard;

impl ExtensionFactory for RootFieldGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RootFieldGuardExtension)
    }
}

struct RootFieldGuardExtension;

#[async_graphql::async_trait::async_trait]
impl Extension for RootFieldGuardExtension {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let root = info.parent_type == "Query" || info.parent_type == "Mutation";
        // Introspection (`__schema`, `__type`, `__typename`) is governed by the
        // `introspection` option, not by grants.
        if !root || info.is_for_introspection || info.name.starts_with("__") {
            return next.run(ctx, info).await;
        }
        let pos = info.field.name.pos;
        let Some(needs) = needs(info.parent_type, info.name) else {
            return Err(error("FORBIDDEN", "this field declares no permission").into_server_error(pos));
        };
        let (Some(app), Some(req)) = (ctx.data_opt::<Arc<App>>(), ctx.data_opt::<RequestCtx>()) else {
            return Err(error("INTERNAL", "internal error").into_server_error(pos));
        };
        match allowed(app, req, needs).await {
            Ok(()) => next.run(ctx, info).await,
            Err(e) => Err(e.into_server_error(pos)),
        }
    }
}
