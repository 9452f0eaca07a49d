//! The access handler (`RoleActor`): roles and their assignment in one tenant.
//! Every command takes the tenant's one `access` lane, and the handler checks
//! the sender's permissions against the very state the decision is made on, so
//! a permission taken away in the previous command already counts.

use std::collections::BTreeSet;

use crate::command::{AccessReply, AccessRequest, CommandEnvelope, CommandFailure, CommandResult};
use crate::domain::access::{ACCESS_ID, Access, AccessCommand, AccessState, Actor, RoleId};
use crate::domain::access_token::{TokenId, TokenSecret};
use crate::domain::challenge::Secret;
use crate::domain::tenant::{Scope, TenantCreated};
use crate::store::event_store::Stamp;
use crate::store::seal::{person_key_name, tenant_key_name};
use crate::tree::account::{account_id_for, email_claim};
use crate::tree::account::{failure, stamp_for};
use crate::tree::aggregate_actor::{AggregateActor, AggregateMsg, Ctx, Handler, Route};
use crate::tree::deps::{Deps, broken};
use crate::tree::directory::tenant_created_subject;
use crate::tree::executor::{ExecError, Loaded, execute, load};

pub struct AccessHandler;

pub type RoleActor = AggregateActor<AccessHandler>;
pub type RoleMsg = AggregateMsg<AccessHandler>;

impl Handler for AccessHandler {
    type Aggregate = Access;
    type Request = AccessRequest;
    type Reply = AccessReply;
    const NAME: &'static str = "RoleActor";

    fn route(scope: &Scope, envelope: &CommandEnvelope<AccessRequest>) -> CommandResult<Route> {
        if envelope.principal.actor_in(scope).is_none() {
            return Err(CommandFailure::forbidden(
                "only a member or access token of this tenant may change its access",
            ));
        }
        Ok(Route::Lane(ACCESS_ID.to_owned()))
    }

    async fn run(
        ctx: &Ctx,
        _id: &str,
        envelope: CommandEnvelope<AccessRequest>,
        state: &mut Option<Loaded<Access>>,
    ) -> CommandResult<AccessReply> {
        let Ctx { scope, deps, .. } = ctx;
        let stamp = stamp_for(deps, scope, &envelope).await?;
        let sender = envelope.principal.actor_in(scope).ok_or_else(|| CommandFailure::forbidden("sign in first"))?;
        established(deps, scope, &stamp, state).await?;
        let current = &state.as_ref().expect("established loads the state").state;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Checked before anything is prepared: a refused invitation makes no key.
        let needs = permission_for(&envelope.request);
        if !current.effective(&sender, now).contains(needs) {
            return Err(CommandFailure::forbidden(&format!("this needs the permission {needs}")));
        }
        let (cmd, secret) = command_for(deps, scope, &stamp, sender, now, envelope.request).await?;
        let done = execute::<Access>(&deps.store, scope, ACCESS_ID, state.take(), &stamp, &cmd, deps.snapshot_every)
            .await
            .map_err(|e| failure(e, "appending an access change"))?;
        *state = Some(done.loaded);
        Ok(match cmd {
            AccessCommand::CreateRole { role_id, .. } => AccessReply::RoleCreated { role_id, seq: done.seq },
            AccessCommand::Invite { invitation_id, .. } => AccessReply::Invited { invitation_id, seq: done.seq },
            AccessCommand::RevokeInvitation { invitation_id } => {
                // The invitee's address and the link's secret become unreadable.
                let kid = person_key_name(scope, &invitation_id);
                deps.keys.destroy(&kid).await.map_err(|e| broken("destroying an invitation's key", e))?;
                AccessReply::Done { seq: done.seq }
            }
            AccessCommand::CreateToken { token_id, .. } => AccessReply::TokenCreated {
                token_id,
                // A retry finds the token created by the first try, whose secret was
                // shown then and is kept nowhere.
                secret: secret.filter(|_| !done.replayed).map(|s| s.expose()),
                seq: done.seq,
            },
            _ => AccessReply::Done { seq: done.seq },
        })
    }
}

/// The permission a request needs.
fn permission_for(request: &AccessRequest) -> &'static str {
    match request {
        AccessRequest::CreateRole { .. } | AccessRequest::UpdateRole { .. } | AccessRequest::DeleteRole { .. } => {
            "manage_roles"
        }
        AccessRequest::SetMemberRoles { .. } => "assign_roles",
        // A token that may only receive pushes (`issuePushCredentials`) hands on
        // no more than its creator's own right to receive them.
        AccessRequest::CreateToken { scopes, .. }
            if scopes.len() == 1 && scopes.iter().all(|s| s.as_str() == "subscribe_messages") =>
        {
            "subscribe_messages"
        }
        AccessRequest::CreateToken { .. } => "create_access-token",
        AccessRequest::RevokeToken { .. } => "revoke_access-token",
        AccessRequest::Invite { .. } | AccessRequest::RevokeInvitation { .. } => "invite_members",
    }
}

/// The command a request becomes, with a new token's secret (shown once).
/// What a command creates gets an id derived from the command's, so a retry
/// finds it; an invitation reserves the id of the account a newcomer gets.
async fn command_for(
    deps: &Deps,
    scope: &Scope,
    stamp: &Stamp,
    by: Actor,
    now: i64,
    request: AccessRequest,
) -> CommandResult<(AccessCommand, Option<TokenSecret>)> {
    let cmd = match request {
        AccessRequest::CreateRole { name, description, permissions } => AccessCommand::CreateRole {
            role_id: RoleId::derived(&format!("{scope}/role/{}", stamp.command_id)).to_string(),
            name,
            description,
            permissions: permissions.into_iter().collect(),
        },
        AccessRequest::UpdateRole { role_id, name, description, permissions } => AccessCommand::UpdateRole {
            role_id: role_id.to_string(),
            name,
            description,
            permissions: permissions.into_iter().collect(),
        },
        AccessRequest::DeleteRole { role_id } => AccessCommand::DeleteRole { role_id: role_id.to_string() },
        AccessRequest::SetMemberRoles { account_id, roles } => AccessCommand::SetMemberRoles {
            account_id: account_id.to_string(),
            roles: roles.into_iter().map(|r| r.to_string()).collect::<BTreeSet<_>>(),
        },
        AccessRequest::CreateToken { name, scopes, expires_at } => {
            let token_id = TokenId::derived(&format!("{scope}/token/{}", stamp.command_id));
            let secret = TokenSecret::generate(&token_id);
            let kid = tenant_key_name(scope);
            let key = deps.keys.key(&kid).await.map_err(|e| broken("reading the tenant key", e))?;
            let cmd = AccessCommand::CreateToken {
                token_id: token_id.to_string(),
                name,
                scopes: scopes.into_iter().collect(),
                by,
                now,
                expires_at,
                secret_hash: key.seal(&kid, secret.hash().as_bytes()),
            };
            return Ok((cmd, Some(secret)));
        }
        AccessRequest::RevokeToken { token_id } => AccessCommand::RevokeToken { token_id: token_id.to_string() },
        AccessRequest::Invite { email, role, locale } => {
            let invitation_id = account_id_for(scope, &stamp.command_id);
            let (email_index, _) = email_claim(deps, scope, &email).await?;
            // The invitee's address and the link's secret are sealed under the key
            // of the account id the invitation reserves.
            let kid = person_key_name(scope, invitation_id.as_str());
            let key = deps.keys.key(&kid).await.map_err(|e| broken("creating an invitation's key", e))?;
            let secret = Secret::generate();
            AccessCommand::Invite {
                invitation_id: invitation_id.to_string(),
                email: key.seal(&kid, email.as_str().as_bytes()),
                email_index,
                role: role.to_string(),
                by,
                now,
                expires_at: now + deps.accounts.invitation_ttl_secs,
                secret: key.seal(&kid, secret.as_bytes()),
                locale: locale.as_str().to_owned(),
            }
        }
        AccessRequest::RevokeInvitation { invitation_id } => {
            AccessCommand::RevokeInvitation { invitation_id: invitation_id.to_string() }
        }
    };
    Ok((cmd, None))
}

/// Loads the tenant's access state; a tenant created before access control
/// existed gets its creator established as owner first (from the directory's
/// `TenantCreated`), in its own append.
async fn established(
    deps: &Deps,
    scope: &Scope,
    stamp: &Stamp,
    state: &mut Option<Loaded<Access>>,
) -> Result<(), CommandFailure> {
    if state.is_none() {
        *state = Some(load::<Access>(&deps.store, scope, ACCESS_ID).await.map_err(|e| broken("loading access", e))?);
    }
    let needs_owner = state.as_ref().is_some_and(|s| s.version == 0 && s.state == AccessState::default());
    let Scope::Tenant(slug) = scope else { return Ok(()) };
    if !needs_owner {
        return Ok(());
    }
    let created = deps
        .store
        .last_on_subject(&tenant_created_subject(slug))
        .await
        .map_err(|e| broken("reading the tenant directory", e))?
        .ok_or_else(CommandFailure::unknown_tenant)?;
    let tenant: TenantCreated =
        serde_json::from_value(created.envelope.data).map_err(|e| broken("decoding TenantCreated", e))?;
    let cmd = AccessCommand::Establish { owner_account_id: tenant.owner_account_id };
    let own = stamp.again(crate::domain::ids::CommandId::fresh());
    match execute::<Access>(&deps.store, scope, ACCESS_ID, state.take(), &own, &cmd, deps.snapshot_every).await {
        Ok(done) => *state = Some(done.loaded),
        // Another command established it first: read what it wrote.
        Err(ExecError::Conflict) => {
            *state = Some(load::<Access>(&deps.store, scope, ACCESS_ID).await.map_err(|e| broken("loading access", e))?)
        }
        Err(e) => return Err(broken("establishing access", e)),
    }
    Ok(())
}
