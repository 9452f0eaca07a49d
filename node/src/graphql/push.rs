//! Push in GraphQL: `publishMessage` (permission `publish_messages`), the
//! forwarded event types (`pushForwarding`, `setPushForwarding`: `manage_push`),
//! the push history (`messages`: `subscribe_messages`) and credentials for
//! push clients (`issuePushCredentials`: `subscribe_messages`, as a member).
//! Push is off on a node whose NATS server does not run Canopy's keys; these
//! fields then answer `UNAVAILABLE`.

use actors::command::{PushReply, PushRequest};
use actors::domain::access::Permission;
use actors::domain::access_token::TokenName;
use actors::domain::push::{MAX_FORWARDED, Push, SETTINGS_ID, Topic};
use actors::tree::executor::load;
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::accounts::rfc3339;
use super::request::{bad_input, command_id, error, internal, parts, send, settle, tenant_of, unix_time};
use crate::App;
use crate::outbound::push::{MAX_PAGE, PushOut, Pushed};

/// How long push credentials last unless `expiresAt` says otherwise.
const DEFAULT_CREDENTIAL_DAYS: i64 = 30;

/// The node's push side, or `UNAVAILABLE` where push is off.
pub(super) fn push_of(app: &App) -> async_graphql::Result<&PushOut> {
    app.push.as_ref().ok_or_else(|| {
        error("UNAVAILABLE", "push is off: this node's NATS server does not run Canopy's keys (nats_auth_dir)")
    })
}

#[derive(InputObject)]
pub struct PublishMessageInput {
    /// Levels separated by `/` (`orders/42`), each of `A-Z a-z 0-9 _ -`; at
    /// most 16 levels and 200 characters; not under `events/`.
    topic: String,
    /// UTF-8 text, at most 64 KiB.
    payload: String,
    /// Keep it as the topic's retained message: an MQTT client that subscribes
    /// later gets it first (with the retain flag); an empty payload clears it.
    #[graphql(default)]
    retain: bool,
}

/// A message on its way to the tenant's push clients.
#[derive(SimpleObject)]
pub struct PublishedMessage {
    id: ID,
    topic: String,
}

/// A push kept in the history.
#[derive(SimpleObject)]
pub struct PushMessage {
    /// The message's id (as `publishMessage` answered it), or the forwarded
    /// event's; NATS clients see it as the header `Canopy-Push-Id`.
    id: ID,
    topic: String,
    payload: String,
    /// RFC 3339, UTC: when it was pushed.
    pushed_at: String,
    /// Give it to `after` for the pushes that follow.
    cursor: String,
}

impl From<Pushed> for PushMessage {
    fn from(p: Pushed) -> Self {
        Self { id: ID(p.id), topic: p.topic, payload: p.payload, pushed_at: rfc3339(p.at), cursor: p.seq.to_string() }
    }
}

#[derive(InputObject)]
pub struct IssuePushCredentialsInput {
    /// Shown in `accessTokens`; default `push client`.
    name: Option<String>,
    /// RFC 3339; default 30 days from now.
    expires_at: Option<String>,
}

/// What a push client connects with, over NATS, WebSocket or MQTT. The
/// password is an access token that may only receive pushes; it is shown
/// here once. Revoke it with `revokeAccessToken(id: tokenId)`.
#[derive(SimpleObject)]
pub struct PushCredentials {
    /// The tenant's slug.
    username: String,
    password: String,
    /// RFC 3339, UTC.
    expires_at: String,
    token_id: ID,
    /// What the client may subscribe to: `push.{tenant}.>` over NATS,
    /// `push/{tenant}/#` over MQTT.
    subjects: Vec<String>,
}

#[derive(Default)]
pub struct PushQuery;

#[Object]
impl PushQuery {
    /// The tenant's pushes on `topic`, oldest first, from the history (kept
    /// for `push_history_secs`): those after `after` (a cursor), else those
    /// pushed at or after `since` (RFC 3339), else all kept; at most `first`
    /// (1 to 100, default 20). Permission `subscribe_messages`.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        topic: String,
        since: Option<String>,
        after: Option<String>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<PushMessage>> {
        let (app, req) = parts(ctx);
        let tenant = tenant_of(req, "pushes belong to a tenant")?;
        let topic = Topic::parse(&topic).map_err(|e| bad_input("topic", e))?;
        let first = match first {
            None => 20,
            Some(n) if (1..=MAX_PAGE as i32).contains(&n) => n as usize,
            Some(_) => return Err(bad_input("first", "1 to 100")),
        };
        let since = since.map(|s| unix_time("since", &s)).transpose()?;
        let after = match after {
            None => 0,
            Some(a) => a.parse::<u64>().map_err(|_| bad_input("after", "a cursor from an earlier page"))?,
        };
        let pushed = push_of(app)?
            .history(tenant, &topic, since, after, first)
            .await
            .map_err(|e| internal("reading the push history", e))?;
        Ok(pushed.into_iter().map(PushMessage::from).collect())
    }

    /// The event types forwarded to the tenant's push clients, on
    /// `events/{type}`. Permission `manage_push`.
    async fn push_forwarding(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "push belongs to a tenant")?;
        // One small aggregate, read from the log itself.
        let loaded = load::<Push>(&app.store, &req.scope, SETTINGS_ID)
            .await
            .map_err(|e| internal("reading the push settings", e))?;
        Ok(loaded.state.forwarded.into_iter().collect())
    }
}

#[derive(Default)]
pub struct PushMutation;

#[Object]
impl PushMutation {
    /// Publishes `payload` to the tenant's push clients on `topic`: over NATS
    /// on `push.{tenant}.{topic with . for /}`, over MQTT on
    /// `push/{tenant}/{topic}` (QoS 0). It is an event first; the push follows
    /// within moments. Permission `publish_messages`.
    async fn publish_message(
        &self,
        ctx: &Context<'_>,
        input: PublishMessageInput,
    ) -> async_graphql::Result<PublishedMessage> {
        let (app, req) = parts(ctx);
        tenant_of(req, "pushes belong to a tenant")?;
        push_of(app)?;
        // Checked here too, to name the field; the actor checks again.
        let topic = Topic::for_message(&input.topic).map_err(|e| bad_input("topic", e))?;
        if input.payload.len() > actors::domain::push::MAX_PAYLOAD {
            return Err(bad_input("payload", "at most 64 KiB"));
        }
        let request =
            PushRequest::Publish { topic: topic.as_str().to_owned(), payload: input.payload, retain: input.retain };
        let reply: PushReply = send(app, req, &req.scope, "push", command_id(req, "publishMessage"), request).await?;
        settle(ctx, app, reply.seq).await?;
        let id = reply.message_id.ok_or_else(|| internal("a published message", "no id in the reply"))?;
        Ok(PublishedMessage { id: ID(id), topic: topic.as_str().to_owned() })
    }

    /// Chooses the event types forwarded to the tenant's push clients (at
    /// most 100 of the types in `schemas/events/`; an empty list forwards
    /// none). Each arrives on `events/{type}` with every sealed value left
    /// out. Permission `manage_push`.
    async fn set_push_forwarding(&self, ctx: &Context<'_>, types: Vec<String>) -> async_graphql::Result<Vec<String>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "push belongs to a tenant")?;
        if types.len() > MAX_FORWARDED {
            return Err(bad_input("types", "at most 100 event types"));
        }
        let request = PushRequest::SetForwarding { types };
        let reply: PushReply =
            send(app, req, &req.scope, "push", command_id(req, "setPushForwarding"), request).await?;
        settle(ctx, app, reply.seq).await?;
        Ok(reply.forwarded)
    }

    /// Credentials for one push client: the tenant's slug and an access token
    /// that may only receive pushes (listed in `accessTokens`, revoked with
    /// `revokeAccessToken`). The password is shown once. Permission
    /// `subscribe_messages`, as a member.
    async fn issue_push_credentials(
        &self,
        ctx: &Context<'_>,
        input: IssuePushCredentialsInput,
    ) -> async_graphql::Result<PushCredentials> {
        let (app, req) = parts(ctx);
        let tenant = tenant_of(req, "push belongs to a tenant")?.clone();
        push_of(app)?;
        let name =
            TokenName::parse(input.name.as_deref().unwrap_or("push client")).map_err(|e| bad_input("name", e))?;
        let expires_at = super::access::expiry(input.expires_at.as_deref(), DEFAULT_CREDENTIAL_DAYS)?;
        let scope =
            Permission::parse(crate::edge::push::SUBSCRIBE_MESSAGES).map_err(|e| internal("a permission", e))?;
        let (token_id, secret) =
            super::access::create_token(ctx, "issuePushCredentials", name, vec![scope], expires_at).await?;
        Ok(PushCredentials {
            username: tenant.as_str().to_owned(),
            password: secret,
            expires_at: rfc3339(expires_at),
            token_id: ID(token_id),
            subjects: vec![format!("push.{}.>", tenant.as_str()), format!("push/{}/#", tenant.as_str())],
        })
    }
}
