//! What every GraphQL part shares: the request's context as the edge resolved
//! it, typed errors, and sending a command and waiting for its projection.

use std::sync::Arc;
use std::time::Duration;

use actors::command::{ClientInfo, CommandEnvelope, CommandFailure, CommandResult, Principal};
use actors::domain::account::{AccountId, InputError, Locale};
use actors::domain::ids::CommandId;
use actors::domain::session::{SessionId, UserAgent};
use actors::domain::tenant::{Scope, TenantId};
use async_graphql::{Context, ErrorExtensions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::App;
use crate::edge::auth::Claims;
use crate::edge::feed::Feed;
use crate::edge::tokens::TokenCaller;
use crate::router::node_subject;

/// Who is asking, and for which tenant; resolved by the edge before execution.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub scope: Scope,
    pub principal: Option<Claims>,
    /// The API access token the request came with, checked by the edge (never
    /// together with `principal`).
    pub token: Option<TokenCaller>,
    /// From the `idempotency-key` header: retries with the same key apply once.
    pub idempotency_key: Option<String>,
    /// From the `canopy-consistency` header: wait until the read models reach it.
    pub consistency: Option<u64>,
    /// From `Accept-Language`: the default locale of a new account.
    pub locale: Locale,
    /// From `User-Agent`, cleaned: what a new session records about its client.
    pub user_agent: Option<UserAgent>,
    /// The client's address, for rate limits.
    pub client: std::net::IpAddr,
}

impl RequestCtx {
    /// When the caller's credential expires (Unix seconds): its session
    /// token's or its access token's; `None` for an anonymous caller.
    pub fn expires_at(&self) -> Option<i64> {
        match (&self.principal, &self.token) {
            (Some(p), _) => Some(p.exp),
            (None, Some(t)) => Some(t.expires_at),
            (None, None) => None,
        }
    }
}

/// A time given as RFC 3339 in input `field`, in Unix seconds.
pub fn unix_time(field: &'static str, raw: &str) -> async_graphql::Result<i64> {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| bad_input(field, "an RFC 3339 date and time, such as 2027-01-31T00:00:00Z"))
}

pub fn error(code: &str, message: impl Into<String>) -> async_graphql::Error {
    let code = code.to_owned();
    async_graphql::Error::new(message.into()).extend_with(|_, e| e.set("code", code))
}

/// A command's failure as a GraphQL error; `RATE_LIMITED` carries `retryAfter`
/// (seconds) beside its code.
pub fn failure(f: CommandFailure) -> async_graphql::Error {
    let e = error(&f.code, f.message);
    match f.retry_after_secs {
        Some(secs) => e.extend_with(|_, ext| ext.set("retryAfter", secs)),
        None => e,
    }
}

pub fn internal(what: &str, e: impl std::fmt::Display) -> async_graphql::Error {
    tracing::error!(error = %e, "{what}");
    error("INTERNAL", "internal error")
}

pub fn bad_input(field: &'static str, e: impl std::fmt::Display) -> async_graphql::Error {
    let message = format!("{field}: {e}");
    async_graphql::Error::new(message).extend_with(move |_, ext| {
        ext.set("code", "BAD_USER_INPUT");
        ext.set("field", field);
    })
}

pub fn parse<T>(field: &'static str, r: Result<T, InputError>) -> async_graphql::Result<T> {
    r.map_err(|e| bad_input(field, e))
}

pub fn parts<'a>(ctx: &'a Context<'_>) -> (&'a Arc<App>, &'a RequestCtx) {
    (ctx.data_unchecked::<Arc<App>>(), ctx.data_unchecked::<RequestCtx>())
}

pub fn principal(req: &RequestCtx) -> async_graphql::Result<&Claims> {
    req.principal
        .as_ref()
        .ok_or_else(|| error("UNAUTHENTICATED", "sign in first: send `Authorization: Bearer <token>`"))
}

pub fn platform_admin(req: &RequestCtx) -> async_graphql::Result<&Claims> {
    let p = principal(req)?;
    if req.scope != Scope::Platform || p.tenant != actors::domain::tenant::PLATFORM_TOKEN {
        return Err(error("FORBIDDEN", "only a platform administrator may do this"));
    }
    Ok(p)
}

/// The request's tenant, for what belongs to one: on the platform,
/// `BAD_USER_INPUT` with `what` ("roles belong to a tenant") and how to name one.
pub fn tenant_of<'a>(req: &'a RequestCtx, what: &str) -> async_graphql::Result<&'a TenantId> {
    match &req.scope {
        Scope::Tenant(t) => Ok(t),
        Scope::Platform => Err(error("BAD_USER_INPUT", format!("{what}: send `x-tenant-id`"))),
    }
}

/// Counts an attempt against rate limits; past one, `RATE_LIMITED` with
/// `retryAfter` (seconds), before anything is sent or appended.
pub async fn limit(
    app: &App,
    checks: &[(&str, crate::edge::limits::Key<'_>, crate::edge::limits::Limit)],
) -> async_graphql::Result<()> {
    app.limits.check(checks).await.map_err(|l| {
        error("RATE_LIMITED", format!("too many attempts; retry in {} s", l.retry_after_secs))
            .extend_with(|_, ext| ext.set("retryAfter", l.retry_after_secs))
    })
}

/// The command id: derived from the idempotency key when there is one (so a retry
/// maps to the same command; the actor refuses it if the request differs), else fresh.
pub fn command_id(req: &RequestCtx, operation: &str) -> CommandId {
    match &req.idempotency_key {
        Some(key) => {
            let who = match (&req.principal, &req.token) {
                (Some(p), _) => p.sub.as_str(),
                (None, Some(t)) => t.token_id.as_str(),
                (None, None) => "anonymous",
            };
            let digest = Sha256::digest(format!("{}\0{who}\0{operation}\0{key}", req.scope).as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            CommandId::parse(&hex).expect("32 hex characters are a command id")
        }
        None => CommandId::fresh(),
    }
}

/// The principal a command carries: the verified session token's account, the
/// access token, or nobody.
pub fn command_principal(req: &RequestCtx) -> async_graphql::Result<Principal> {
    if let Some(t) = &req.token {
        return Ok(Principal::Token { scope: req.scope.clone(), token_id: t.token_id.clone() });
    }
    let Some(p) = &req.principal else { return Ok(Principal::Anonymous) };
    let scope = Scope::parse_token(&p.tenant).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))?;
    let account_id = AccountId::parse(&p.sub).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))?;
    let session_id = match &p.sid {
        Some(sid) => Some(SessionId::parse(sid).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))?),
        None => None,
    };
    Ok(Principal::Account { scope, account_id, session_id })
}

/// A request's command: its principal and client as the edge resolved them.
pub fn envelope<R>(req: &RequestCtx, command_id: CommandId, request: R) -> async_graphql::Result<CommandEnvelope<R>> {
    let client = ClientInfo {
        address: req.client.to_string(),
        user_agent: req.user_agent.as_ref().map(|u| u.as_str().to_owned()),
    };
    Ok(CommandEnvelope { command_id, principal: command_principal(req)?, request, client: Some(client) })
}

/// Sends a command to the owning tree over NATS and decodes its result. An
/// `Err` is the transport's failure, already logged: the caller answers
/// `INTERNAL`.
pub async fn dispatch<R: Serialize, T: DeserializeOwned>(
    app: &App,
    scope: &Scope,
    aggregate: &str,
    envelope: &CommandEnvelope<R>,
) -> Result<CommandResult<T>, async_graphql::Error> {
    let body = bytes::Bytes::from(serde_json::to_vec(envelope).map_err(|e| internal("encoding a command", e))?);
    let timeout = Duration::from_millis(app.config.command_timeout_ms);
    // Straight to the tenant's owner when this node knows it, else to this
    // node's router, which finds it: one NATS hop either way. An owner that
    // no longer listens never got the command: ask this node's router then.
    let started = tokio::time::Instant::now();
    let mut owner = app.placement.cached_owner(scope);
    let reply = loop {
        let to = owner.take().unwrap_or_else(|| app.placement.me().to_owned());
        let left = timeout.saturating_sub(started.elapsed());
        let sent = tokio::time::timeout(left, app.nats.request(node_subject(&to, scope, aggregate), body.clone()));
        let answered = tokio::select! {
            a = sent => a,
            // The owner died with the command: this node's router takes it
            // on (a no-op by its command id if it had run there).
            () = app.placement.membership().until_dead(&to), if to != app.placement.me() => {
                app.placement.forget_holder(scope);
                continue;
            }
        };
        match answered {
            Err(_) => return Err(unavailable()),
            Ok(Ok(reply)) => break reply,
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders if to != app.placement.me() => {
                    app.placement.forget_holder(scope);
                }
                async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut => {
                    return Err(unavailable());
                }
                _ => return Err(internal("sending a command", e)),
            },
        }
    };
    serde_json::from_slice(&reply.payload).map_err(|e| internal("decoding a command reply", e))
}

pub const NO_ANSWER: &str = "no answer from the tenant's node in time; retry with the same idempotency-key";

/// The answer when a command's outcome is unknown (its node went away, or no
/// reply came in time): it may have been applied, and a retry with the same
/// idempotency key is applied at most once.
fn unavailable() -> async_graphql::Error {
    error("UNAVAILABLE", NO_ANSWER)
}

/// Sends a command to the owning tree over NATS and decodes the typed answer.
pub async fn send<R: Serialize, T: DeserializeOwned>(
    app: &App,
    req: &RequestCtx,
    scope: &Scope,
    aggregate: &str,
    command_id: CommandId,
    request: R,
) -> async_graphql::Result<T> {
    dispatch(app, scope, aggregate, &envelope(req, command_id, request)?).await?.map_err(failure)
}

/// The answer of a write this node's read models did not show within the
/// read-your-writes timeout: it is stored (and a retry with the same
/// idempotency key is not applied again), but a mutation never answers with
/// data older than its own write.
pub const NOT_YET_READABLE: &str =
    "the write is stored, but this node's read models do not show it yet; read again with its canopy-consistency token";

/// Waits until this node's projector has applied `seq`; past the
/// read-your-writes timeout, `NOT_YET_READABLE` (with the write's sequence as
/// `extensions.consistency`).
pub async fn projected(app: &App, seq: u64) -> async_graphql::Result<()> {
    let timeout = Duration::from_millis(app.config.read_your_writes_timeout_ms);
    if app.progress.wait_for(seq, timeout).await {
        return Ok(());
    }
    tracing::warn!(seq, "read models did not reach the write in time");
    Err(error("NOT_YET_READABLE", NOT_YET_READABLE).extend_with(|_, ext| ext.set("consistency", seq.to_string())))
}

/// Read-your-writes: wait until the local projection has applied `seq`.
pub async fn settle(ctx: &Context<'_>, app: &App, seq: u64) -> async_graphql::Result<()> {
    ctx.insert_http_header("canopy-consistency", seq.to_string());
    projected(app, seq).await
}

/// After a mutation that may have ended sessions (`ended` of them, the last
/// one's event at or before `seq`): read-your-writes, and the node's revocation
/// set holds them, so their access tokens are refused from the next request on.
pub async fn settle_or_revoke(ctx: &Context<'_>, app: &App, seq: u64, ended: usize) -> async_graphql::Result<()> {
    settle(ctx, app, seq).await?;
    if ended == 0 {
        return Ok(());
    }
    let timeout = Duration::from_millis(app.config.read_your_writes_timeout_ms);
    if !app.revocations.marks().wait_for(seq, timeout).await {
        tracing::warn!(seq, "the revocation set did not reach the write in time; answering anyway");
    }
    Ok(())
}

pub async fn consistent(app: &App, req: &RequestCtx) {
    if let Some(seq) = req.consistency {
        let timeout = Duration::from_millis(app.config.read_your_writes_timeout_ms);
        let _ = app.progress.wait_for(seq, timeout).await;
    }
}
