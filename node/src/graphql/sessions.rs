//! Sessions in GraphQL: `refreshSession` rotates a refresh token, `logout`,
//! `logoutEverywhere` and `revokeSession` end sessions, and `sessions` lists
//! the signed-in account's open ones.

use actors::command::{AccountReply, AccountRequest, SessionSelection};
use actors::domain::account::AccountId;
use actors::domain::session::{RefreshToken, SessionId};
use actors::domain::tenant::Scope;
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::accounts::{AuthPayload, issue, own_account};
use super::request::{bad_input, command_id, consistent, internal, limit, parts, principal, send, settle_or_revoke};
use crate::App;
use crate::edge::feed::Feed;
use crate::edge::limits::Key;
use crate::graphql::request::RequestCtx;

/// An open session of the signed-in account.
#[derive(SimpleObject)]
pub struct Session {
    id: ID,
    /// When the sign-in happened (RFC 3339).
    created_at: String,
    /// When its refresh token was last used (RFC 3339).
    last_used_at: String,
    /// The client's `User-Agent` at sign-in, if it sent one.
    user_agent: Option<String>,
    /// Whether this is the session of the token making the request.
    current: bool,
}

#[derive(Default)]
pub struct SessionQuery;

#[Object]
impl SessionQuery {
    /// The signed-in account's open sessions, most recently used first.
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Session>> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        consistent(app, req).await;
        let rows = app.read_model.sessions(&req.scope, &p.sub).await.map_err(|e| internal("listing sessions", e))?;
        Ok(rows
            .into_iter()
            .map(|r| Session {
                current: p.sid.as_deref() == Some(r.session_id.as_str()),
                id: ID(r.session_id),
                created_at: r.created_at,
                last_used_at: r.last_used_at,
                user_agent: r.user_agent,
            })
            .collect())
    }
}

#[derive(InputObject)]
pub struct RefreshSessionInput {
    refresh_token: String,
}

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// A new access token and refresh token for the session of `refreshToken`,
    /// which stops working. No access token is needed. An unknown, expired or
    /// revoked token gets `UNAUTHENTICATED`; a token that was already rotated
    /// away also ends its session.
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        input: RefreshSessionInput,
    ) -> async_graphql::Result<AuthPayload> {
        let (app, req) = parts(ctx);
        let per_address = app.config.rate_limits.refresh_per_address;
        limit(app, &[("refresh", Key::Address(req.client), per_address)]).await?;
        // Garbage is answered as an invalid token, without a command.
        let token = RefreshToken::parse(&input.refresh_token)
            .map_err(|_| super::request::error("UNAUTHENTICATED", "the refresh token is not valid; sign in again"))?;
        // A refresh is not idempotent: its new token is shown once.
        let anonymous = RequestCtx { principal: None, token: None, idempotency_key: None, ..req.clone() };
        let account = token.account_id().clone();
        let sent = send(
            app,
            &anonymous,
            &req.scope,
            "account",
            command_id(&anonymous, "refreshSession"),
            AccountRequest::RefreshSession { token },
        )
        .await;
        let reply: AccountReply = match sent {
            Ok(r) => r,
            Err(e) => {
                // A reused token ended its session in this command: the
                // session's access tokens are refused once this answer is.
                revoked_before_answering(app, &req.scope, &account).await;
                return Err(e);
            }
        };
        let AccountReply::Refreshed { account_id, session, seq } = reply else {
            return Err(internal("unexpected reply", "refreshSession"));
        };
        ctx.insert_http_header("canopy-consistency", seq.to_string());
        issue(app, &req.scope, account_id, session)
    }

    /// Ends the session of the token making the request.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        revoke(ctx, "logout", SessionSelection::Current).await.map(|_| true)
    }

    /// Ends every session of the signed-in account, this one included; returns how many.
    async fn logout_everywhere(&self, ctx: &Context<'_>) -> async_graphql::Result<i32> {
        revoke(ctx, "logoutEverywhere", SessionSelection::All).await
    }

    /// Ends one session of the signed-in account (see `sessions`).
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let session_id = SessionId::parse(&id).map_err(|_| bad_input("id", "not a session id"))?;
        revoke(ctx, "revokeSession", SessionSelection::One { session_id }).await.map(|_| true)
    }
}

/// Ends sessions of the signed-in account and waits until this node refuses
/// their access tokens.
async fn revoke(ctx: &Context<'_>, operation: &str, which: SessionSelection) -> async_graphql::Result<i32> {
    let (app, req) = parts(ctx);
    let p = principal(req)?;
    let request = AccountRequest::RevokeSessions { account_id: own_account(p)?, which };
    let reply: AccountReply = send(app, req, &req.scope, "account", command_id(req, operation), request).await?;
    let AccountReply::SessionsRevoked { count, seq } = reply else {
        return Err(internal("unexpected reply", operation));
    };
    settle_or_revoke(ctx, app, seq, count).await?;
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// Waits until this node's revocation set holds the account's newest
/// `SessionRevoked` (bounded by the read-your-writes timeout).
async fn revoked_before_answering(app: &App, scope: &Scope, account: &AccountId) {
    let subject = actors::store::event_store::event_subject(scope, "account", account.as_str(), "SessionRevoked");
    let Ok(seq) = app.store.last_seq_on(&subject).await else { return };
    if seq > 0 {
        let timeout = std::time::Duration::from_millis(app.config.read_your_writes_timeout_ms);
        let _ = app.revocations.marks().wait_for(seq, timeout).await;
    }
}
