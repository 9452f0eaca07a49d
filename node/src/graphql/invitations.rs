//! Invitations in GraphQL: `inviteMember` mails a link (through the mail
//! queue, from the `MemberInvited` event), `acceptInvitation` turns it into an
//! account of the tenant (or gives the role to the account that already has the
//! address) and signs it in; `revokeInvitation` and `invitations`.

use actors::command::{AccessReply, AccessRequest, AccountReply, AccountRequest, SessionRequest};
use actors::domain::access::RoleId;
use actors::domain::account::{AccountId, Email, Password, PersonName};
use actors::domain::challenge::LinkToken;
use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};

use super::access::run;
use super::accounts::{AuthPayload, issue, rfc3339};
use super::request::{
    bad_input, command_id, consistent, error, internal, limit, parse, parts, send, settle, tenant_of,
};
use crate::edge::limits::Key;
use crate::read_model::InvitationRow;

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Revoked,
    /// Pending, but past `expiresAt`.
    Expired,
}

/// An invitation to join the tenant.
#[derive(SimpleObject, Clone)]
pub struct Invitation {
    id: ID,
    /// The invited address while the invitation is pending or expired; `null`
    /// once accepted or revoked (it is erased with the invitation's key).
    email: Option<String>,
    /// The role id the invitation grants.
    role: ID,
    invited_by: ID,
    invited_at: String,
    expires_at: String,
    status: InvitationStatus,
    /// The account that accepted it.
    accepted_by: Option<ID>,
}

impl Invitation {
    fn from_row(r: InvitationRow) -> Self {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let status = match r.status.as_str() {
            "accepted" => InvitationStatus::Accepted,
            "revoked" => InvitationStatus::Revoked,
            _ if r.expires_at <= now => InvitationStatus::Expired,
            _ => InvitationStatus::Pending,
        };
        Self {
            id: ID(r.invitation_id),
            email: r.email,
            role: ID(r.role),
            invited_by: ID(r.invited_by),
            invited_at: rfc3339(r.invited_at),
            expires_at: rfc3339(r.expires_at),
            status,
            accepted_by: r.accepted_by.map(ID),
        }
    }
}

#[derive(InputObject)]
pub struct InviteMemberInput {
    email: String,
    /// A role id: `owner`, `admin`, `member` or a custom role's; you may only
    /// hand out a role whose permissions you hold.
    role: ID,
}

#[derive(InputObject)]
pub struct AcceptInvitationInput {
    /// The `token` of the invitation mail's link.
    token: String,
    /// A new account's password, or the existing account's when the invited
    /// address already has one in the tenant.
    password: String,
    firstname: String,
    lastname: String,
}

#[derive(Default)]
pub struct InvitationQuery;

#[Object]
impl InvitationQuery {
    /// The tenant's invitations, newest first (permission `read_invitations`).
    async fn invitations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Invitation>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "invitations belong to a tenant")?;
        consistent(app, req).await;
        let rows = app.read_model.invitations(&req.scope).await.map_err(|e| internal("reading invitations", e))?;
        Ok(rows.into_iter().map(Invitation::from_row).collect())
    }
}

#[derive(Default)]
pub struct InvitationMutation;

#[Object]
impl InvitationMutation {
    /// Invites someone by mail (permission `invite_members`): the mail holds a
    /// link valid for `invitation_ttl_secs` (7 days), once. One pending
    /// invitation per address (`CONFLICT`).
    async fn invite_member(&self, ctx: &Context<'_>, input: InviteMemberInput) -> async_graphql::Result<Invitation> {
        let (app, req) = parts(ctx);
        let request = AccessRequest::Invite {
            email: parse("email", Email::parse(&input.email))?,
            role: RoleId::parse(&input.role).map_err(|_| error("NOT_FOUND", "role: no such role"))?,
            locale: req.locale.clone(),
        };
        let AccessReply::Invited { invitation_id, .. } = run(ctx, "inviteMember", request).await? else {
            return Err(internal("unexpected reply", "inviteMember"));
        };
        let row = app
            .read_model
            .invitation(&req.scope, &invitation_id)
            .await
            .map_err(|e| internal("reading an invitation", e))?
            .ok_or_else(|| internal("a new invitation is not in the read model", &invitation_id))?;
        Ok(Invitation::from_row(row))
    }

    /// Revokes a pending invitation (permission `invite_members`): its link
    /// stops working and the invited address is erased.
    async fn revoke_invitation(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let invitation_id = AccountId::parse(&id).map_err(|_| error("NOT_FOUND", "id: no such invitation"))?;
        run(ctx, "revokeInvitation", AccessRequest::RevokeInvitation { invitation_id }).await.map(|_| true)
    }

    /// Accepts an invitation with its link's token and signs in. A new account
    /// is created with the invited address (already verified) and role; if the
    /// tenant has an account with that address, it proves its password and gets
    /// the role. A used, revoked, expired or wrong token gets `BAD_USER_INPUT`.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        input: AcceptInvitationInput,
    ) -> async_graphql::Result<AuthPayload> {
        let (app, req) = parts(ctx);
        tenant_of(req, "an invitation belongs to a tenant")?;
        let limits = &app.config.rate_limits;
        limit(app, &[("register", Key::Address(req.client), limits.register_per_address)]).await?;
        let request = AccountRequest::AcceptInvitation {
            token: LinkToken::parse(&input.token).map_err(|e| bad_input("token", e))?,
            password: parse("password", Password::parse(&input.password))?,
            firstname: parse("firstname", PersonName::parse(&input.firstname))?,
            lastname: parse("lastname", PersonName::parse(&input.lastname))?,
            locale: req.locale.clone(),
            session: SessionRequest { user_agent: req.user_agent.clone() },
        };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "acceptInvitation"), request).await?;
        let AccountReply::Registered { account_id, seq, session: Some(session) } = reply else {
            return Err(internal("unexpected reply", "acceptInvitation"));
        };
        settle(ctx, app, seq).await?;
        issue(app, &req.scope, account_id, session)
    }
}
