//! Webhooks in GraphQL: `webhooks` and `webhookDeliveries` (permission
//! `read_webhooks`), `createWebhook`, `updateWebhook`, `deleteWebhook`,
//! `rotateWebhookSecret` and `redeliver` (`manage_webhooks`). A URL is checked
//! by the SSRF guard here, before the command: it must resolve, and only to
//! addresses webhooks may call. Secrets are shown once, in the answer of the
//! mutation that made them; queries show which kind of authentication a
//! webhook uses, never its credentials.

use actors::command::{WebhookAuthInput, WebhookReply, WebhookRequest};
use actors::domain::aggregate::Aggregate;
use actors::domain::webhook::{AuthKind, MAX_EVENT_TYPES, Method, WEBHOOKS_ID, Webhook as Hook, Webhooks};
use actors::tree::executor::load;
use async_graphql::{Context, Enum, ID, InputObject, Object, OneofObject, SimpleObject};

use super::accounts::rfc3339;
use super::request::{bad_input, command_id, error, internal, parts, send, settle, tenant_of};
use crate::App;
use crate::outbound::ssrf;
use crate::outbound::webhook::{Attempt, Delivery, MAX_PAGE, Outcome, parse_delivery_id};

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "WebhookMethod")]
pub enum MethodInput {
    Post,
    Put,
    Patch,
}

impl From<MethodInput> for Method {
    fn from(m: MethodInput) -> Self {
        match m {
            MethodInput::Post => Method::Post,
            MethodInput::Put => Method::Put,
            MethodInput::Patch => Method::Patch,
        }
    }
}

impl From<Method> for MethodInput {
    fn from(m: Method) -> Self {
        match m {
            Method::Post => MethodInput::Post,
            Method::Put => MethodInput::Put,
            Method::Patch => MethodInput::Patch,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum WebhookAuthKind {
    None,
    Basic,
    ApiKey,
    Bearer,
}

#[derive(InputObject)]
pub struct BasicAuthInput {
    username: String,
    password: String,
}

#[derive(InputObject)]
pub struct ApiKeyAuthInput {
    /// The header the key is sent in, such as `X-Api-Key`.
    header: String,
    value: String,
}

#[derive(InputObject)]
pub struct BearerAuthInput {
    token: String,
}

/// How the endpoint authenticates Canopy, beside the signature: exactly one.
#[derive(OneofObject)]
pub enum WebhookAuthInputs {
    Basic(BasicAuthInput),
    ApiKey(ApiKeyAuthInput),
    Bearer(BearerAuthInput),
}

impl From<WebhookAuthInputs> for WebhookAuthInput {
    fn from(a: WebhookAuthInputs) -> Self {
        match a {
            WebhookAuthInputs::Basic(b) => WebhookAuthInput::Basic { username: b.username, password: b.password },
            WebhookAuthInputs::ApiKey(k) => WebhookAuthInput::ApiKey { header: k.header, value: k.value },
            WebhookAuthInputs::Bearer(b) => WebhookAuthInput::Bearer { token: b.token },
        }
    }
}

#[derive(InputObject)]
pub struct CreateWebhookInput {
    /// 1 to 100 characters.
    name: String,
    /// `http(s)://`, at most 2,048 characters, resolving only to public addresses.
    url: String,
    #[graphql(default_with = "MethodInput::Post")]
    method: MethodInput,
    /// 1 to 100 event types of `schemas/events/`, or `["*"]` for every type.
    event_types: Vec<String>,
    /// None when left out.
    auth: Option<WebhookAuthInputs>,
}

#[derive(InputObject)]
pub struct UpdateWebhookInput {
    id: ID,
    name: Option<String>,
    url: Option<String>,
    method: Option<MethodInput>,
    event_types: Option<Vec<String>>,
    /// New credentials (replacing the old ones).
    auth: Option<WebhookAuthInputs>,
    /// `true`: the endpoint takes no credentials any more.
    remove_auth: Option<bool>,
    /// `true` enables a disabled webhook (its failure count starts over);
    /// `false` disables it.
    enabled: Option<bool>,
}

/// A webhook, without its secrets.
#[derive(SimpleObject)]
pub struct Webhook {
    id: ID,
    name: String,
    url: String,
    method: MethodInput,
    event_types: Vec<String>,
    auth_kind: WebhookAuthKind,
    /// The header an API key is sent in.
    api_key_header: Option<String>,
    enabled: bool,
    /// Why it was disabled.
    disabled_reason: Option<String>,
    /// RFC 3339.
    created_at: String,
    updated_at: String,
    /// Until when the secret before the last rotation still signs (RFC 3339).
    previous_secret_expires_at: Option<String>,
}

impl Webhook {
    fn of(id: &str, w: &Hook) -> Self {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Self {
            id: ID(id.to_owned()),
            name: w.name.clone(),
            url: w.url.clone(),
            method: w.method.into(),
            event_types: w.event_types.iter().cloned().collect(),
            auth_kind: match w.auth.kind {
                AuthKind::None => WebhookAuthKind::None,
                AuthKind::Basic => WebhookAuthKind::Basic,
                AuthKind::ApiKey => WebhookAuthKind::ApiKey,
                AuthKind::Bearer => WebhookAuthKind::Bearer,
            },
            api_key_header: w.auth.header.clone(),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason.clone(),
            created_at: rfc3339(w.created_at),
            updated_at: rfc3339(w.updated_at),
            previous_secret_expires_at: w.previous.as_ref().filter(|(_, until)| *until > now).map(|(_, u)| rfc3339(*u)),
        }
    }
}

/// A new webhook and its signing secret (`whsec_…`), shown only here.
#[derive(SimpleObject)]
pub struct CreatedWebhook {
    secret: String,
    webhook: Webhook,
}

/// A webhook's new signing secret, shown only here; the old one signs too
/// until `webhook.previousSecretExpiresAt`.
#[derive(SimpleObject)]
pub struct RotatedWebhookSecret {
    secret: String,
    webhook: Webhook,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum WebhookDeliveryStatus {
    Succeeded,
    /// Failed; tried again at `nextAttemptAt`.
    Retrying,
    /// Given up.
    Failed,
    /// Not sent: the webhook was disabled or deleted by then.
    Skipped,
}

impl From<Outcome> for WebhookDeliveryStatus {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded => WebhookDeliveryStatus::Succeeded,
            Outcome::Retrying => WebhookDeliveryStatus::Retrying,
            Outcome::Failed => WebhookDeliveryStatus::Failed,
            Outcome::Skipped => WebhookDeliveryStatus::Skipped,
        }
    }
}

/// One attempt of a delivery.
#[derive(SimpleObject)]
pub struct WebhookAttempt {
    attempt: i32,
    status: WebhookDeliveryStatus,
    response_code: Option<i32>,
    latency_ms: i64,
    error: Option<String>,
    /// The start of the response body (at most 512 bytes).
    response: Option<String>,
    /// RFC 3339.
    at: String,
}

impl From<&Attempt> for WebhookAttempt {
    fn from(a: &Attempt) -> Self {
        Self {
            attempt: a.attempt as i32,
            status: a.outcome.into(),
            response_code: a.response_code.map(i32::from),
            latency_ms: a.latency_ms as i64,
            error: a.error.clone(),
            response: a.response.clone(),
            at: rfc3339(a.at),
        }
    }
}

/// One event sent to one webhook: its `webhook-id`, where it stands, and its
/// attempts.
#[derive(SimpleObject)]
pub struct WebhookDelivery {
    /// The `webhook-id` header, the same on every attempt.
    id: ID,
    event_id: ID,
    event_type: String,
    status: WebhookDeliveryStatus,
    /// The attempts made so far (redeliveries included).
    attempts: i32,
    /// Of the last attempt.
    response_code: Option<i32>,
    latency_ms: i64,
    error: Option<String>,
    /// RFC 3339: the last attempt, and the next one when it will be retried.
    last_attempt_at: String,
    next_attempt_at: Option<String>,
    history: Vec<WebhookAttempt>,
    /// Give it to `after` for older deliveries.
    cursor: String,
}

impl From<Delivery> for WebhookDelivery {
    fn from(d: Delivery) -> Self {
        let last = d.last();
        Self {
            id: ID(last.delivery_id.clone()),
            event_id: ID(last.event_id.clone()),
            event_type: last.event_type.clone(),
            status: last.outcome.into(),
            attempts: d.attempts.iter().filter(|a| a.attempt > 0).count() as i32,
            response_code: last.response_code.map(i32::from),
            latency_ms: last.latency_ms as i64,
            error: last.error.clone(),
            last_attempt_at: rfc3339(last.at),
            next_attempt_at: last.next_attempt_at.map(rfc3339),
            history: d.attempts.iter().map(WebhookAttempt::from).collect(),
            cursor: d.seq.to_string(),
        }
    }
}

/// A delivery on its way again.
#[derive(SimpleObject)]
pub struct Redelivery {
    delivery_id: ID,
    webhook_id: ID,
}

/// The tenant's webhooks, read from the log (one small aggregate).
async fn webhooks_of(
    app: &App,
    req: &super::request::RequestCtx,
) -> async_graphql::Result<actors::domain::webhook::WebhooksState> {
    Ok(load::<Webhooks>(&app.store, &req.scope, WEBHOOKS_ID)
        .await
        .map_err(|e| internal("reading the webhooks", e))?
        .state)
}

/// Refuses a URL that is not `http(s)` or whose host resolves to an address
/// webhooks may not call.
async fn check_url(app: &App, raw: &str) -> async_graphql::Result<()> {
    let url = ssrf::parse(raw).map_err(|e| bad_input("url", e))?;
    ssrf::resolve(&url, app.config.webhook_allow_loopback).await.map_err(|e| bad_input("url", e))?;
    Ok(())
}

fn check_types(types: &[String]) -> async_graphql::Result<()> {
    if types.len() > MAX_EVENT_TYPES {
        return Err(bad_input("eventTypes", "at most 100 event types"));
    }
    Ok(())
}

#[derive(Default)]
pub struct WebhookQuery;

#[Object]
impl WebhookQuery {
    /// The tenant's webhooks (never their secrets). Permission `read_webhooks`.
    async fn webhooks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Webhook>> {
        let (app, req) = parts(ctx);
        tenant_of(req, "webhooks belong to a tenant")?;
        let state = webhooks_of(app, req).await?;
        Ok(state.webhooks.iter().map(|(id, w)| Webhook::of(id, w)).collect())
    }

    /// A webhook's deliveries, newest first: those older than `after` (a
    /// cursor), at most `first` (1 to 100, default 20). Attempts are kept for
    /// `webhook_log_days`, the newest 1,000 per webhook. Permission
    /// `read_webhooks`.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<WebhookDelivery>> {
        let (app, req) = parts(ctx);
        let tenant = tenant_of(req, "webhooks belong to a tenant")?;
        let first = match first {
            None => 20,
            Some(n) if (1..=MAX_PAGE as i32).contains(&n) => n as usize,
            Some(_) => return Err(bad_input("first", "1 to 100")),
        };
        let before = match after {
            None => 0,
            Some(a) => a.parse::<u64>().map_err(|_| bad_input("after", "a cursor from an earlier page"))?,
        };
        // Only the tenant's own webhooks: an id of another's is unknown here.
        if !webhooks_of(app, req).await?.webhooks.contains_key(webhook_id.as_str()) {
            return Err(error("NOT_FOUND", "no such webhook"));
        }
        let deliveries = app
            .webhooks
            .deliveries(tenant, webhook_id.as_str(), before, first)
            .await
            .map_err(|e| internal("reading webhook deliveries", e))?;
        Ok(deliveries.into_iter().map(WebhookDelivery::from).collect())
    }
}

#[derive(Default)]
pub struct WebhookMutation;

#[Object]
impl WebhookMutation {
    /// Adds an endpoint that receives `eventTypes` (each signed per the
    /// Standard Webhooks specification with the `secret` answered here, once).
    /// Permission `manage_webhooks`.
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookInput,
    ) -> async_graphql::Result<CreatedWebhook> {
        let (app, req) = parts(ctx);
        tenant_of(req, "webhooks belong to a tenant")?;
        check_types(&input.event_types)?;
        check_url(app, &input.url).await?;
        let request = WebhookRequest::Create {
            name: input.name,
            url: input.url,
            method: input.method.into(),
            event_types: input.event_types,
            auth: input.auth.map_or(WebhookAuthInput::None, Into::into),
        };
        let reply = command(ctx, "createWebhook", request).await?;
        let secret = reply.secret.ok_or_else(|| {
            error("CONFLICT", "this webhook was created by an earlier try of the request; its secret was shown then")
        })?;
        let webhook = current(app, req, &reply.webhook_id).await?;
        Ok(CreatedWebhook { secret, webhook })
    }

    /// Changes a webhook; fields left out stay as they are. Permission
    /// `manage_webhooks`.
    async fn update_webhook(&self, ctx: &Context<'_>, input: UpdateWebhookInput) -> async_graphql::Result<Webhook> {
        let (app, req) = parts(ctx);
        tenant_of(req, "webhooks belong to a tenant")?;
        if let Some(types) = &input.event_types {
            check_types(types)?;
        }
        if let Some(url) = &input.url {
            check_url(app, url).await?;
        }
        let auth = match (input.auth, input.remove_auth) {
            (Some(_), Some(true)) => return Err(bad_input("auth", "give new credentials or removeAuth, not both")),
            (Some(a), _) => Some(a.into()),
            (None, Some(true)) => Some(WebhookAuthInput::None),
            (None, _) => None,
        };
        let request = WebhookRequest::Update {
            webhook_id: input.id.to_string(),
            name: input.name,
            url: input.url,
            method: input.method.map(Into::into),
            event_types: input.event_types,
            auth,
            enabled: input.enabled,
        };
        let reply = command(ctx, "updateWebhook", request).await?;
        current(app, req, &reply.webhook_id).await
    }

    /// Removes a webhook; deliveries still queued for it are skipped.
    /// Permission `manage_webhooks`.
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ID> {
        let (_, req) = parts(ctx);
        tenant_of(req, "webhooks belong to a tenant")?;
        let request = WebhookRequest::Delete { webhook_id: id.to_string() };
        let reply = command(ctx, "deleteWebhook", request).await?;
        Ok(ID(reply.webhook_id))
    }

    /// A new signing secret, shown once here; the old one keeps signing
    /// beside it for `overlapSeconds` (0 to 604800, default a day), so a
    /// receiver can switch without losing a delivery. Permission
    /// `manage_webhooks`.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = 86400)] overlap_seconds: i32,
    ) -> async_graphql::Result<RotatedWebhookSecret> {
        let (app, req) = parts(ctx);
        tenant_of(req, "webhooks belong to a tenant")?;
        let request = WebhookRequest::RotateSecret { webhook_id: id.to_string(), overlap_secs: overlap_seconds.into() };
        let reply = command(ctx, "rotateWebhookSecret", request).await?;
        let secret = reply.secret.ok_or_else(|| {
            error("CONFLICT", "this secret was made by an earlier try of the request; it was shown then")
        })?;
        let webhook = current(app, req, &reply.webhook_id).await?;
        Ok(RotatedWebhookSecret { secret, webhook })
    }

    /// Sends a delivery again (same `webhook-id`, a new timestamp and
    /// signature), whatever became of it. Permission `manage_webhooks`.
    async fn redeliver(&self, ctx: &Context<'_>, delivery_id: ID) -> async_graphql::Result<Redelivery> {
        let (app, req) = parts(ctx);
        let tenant = tenant_of(req, "webhooks belong to a tenant")?;
        let (webhook_id, _) =
            parse_delivery_id(delivery_id.as_str()).ok_or_else(|| bad_input("deliveryId", "not a delivery id"))?;
        let not_found = || error("NOT_FOUND", "no such delivery");
        if !webhooks_of(app, req).await?.webhooks.contains_key(&webhook_id) {
            return Err(not_found());
        }
        let delivery = app
            .webhooks
            .delivery(tenant, &webhook_id, delivery_id.as_str())
            .await
            .map_err(|e| internal("reading webhook deliveries", e))?
            .ok_or_else(not_found)?;
        let request = WebhookRequest::Redeliver {
            webhook_id: webhook_id.clone(),
            delivery_id: delivery_id.to_string(),
            event_seq: delivery.last().event_seq,
        };
        command(ctx, "redeliver", request).await?;
        Ok(Redelivery { delivery_id, webhook_id: ID(webhook_id) })
    }
}

/// Sends `request` to the tenant's webhooks actor as operation `operation`
/// and waits for the read models to reach its events (read-your-writes).
async fn command(ctx: &Context<'_>, operation: &str, request: WebhookRequest) -> async_graphql::Result<WebhookReply> {
    let (app, req) = parts(ctx);
    let reply: WebhookReply = send(app, req, &req.scope, Webhooks::NAME, command_id(req, operation), request).await?;
    settle(ctx, app, reply.seq).await?;
    Ok(reply)
}

/// A webhook as the log says it is now.
async fn current(app: &App, req: &super::request::RequestCtx, id: &str) -> async_graphql::Result<Webhook> {
    let state = webhooks_of(app, req).await?;
    let w = state.webhooks.get(id).ok_or_else(|| error("NOT_FOUND", "no such webhook"))?;
    Ok(Webhook::of(id, w))
}
