//! The GraphQL API: queries read SurrealDB; mutations become commands sent over
//! NATS to the tenant's tree, and answer once their events are projected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::account::{AccountId, Email, InputError, Password, PersonName};
use actors::command::{
    AccountReply, AccountRequest, CommandEnvelope, CommandFailure, CommandResult, Principal, TenantReply,
    TenantRequest, command_subject,
};
use actors::ids::CommandId;
use actors::tenant::{Scope, TenantId, TenantName};
use async_graphql::connection::{Connection, Edge};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    ComplexObject, Context, EmptySubscription, ErrorExtensions, InputObject, Object, Schema, SimpleObject,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::App;
use crate::auth::Claims;
use crate::read_model::{TenantRow, UserRow};

pub type CanopySchema = Schema<Query, Mutation, EmptySubscription>;

/// Deep enough for GraphiQL's introspection query, shallow enough to stop abuse.
pub const MAX_DEPTH: usize = 16;
pub const MAX_COMPLEXITY: usize = 500;
pub const MAX_PAGE: i32 = 100;

pub fn schema() -> CanopySchema {
    schema_with(true)
}

/// The schema, with introspection (`__schema`, `__type`) answered or refused.
pub fn schema_with(introspection: bool) -> CanopySchema {
    let builder =
        Schema::build(Query, Mutation, EmptySubscription).limit_depth(MAX_DEPTH).limit_complexity(MAX_COMPLEXITY);
    if introspection { builder.finish() } else { builder.disable_introspection().finish() }
}

/// The most text a remembered document may have; longer ones are parsed each time.
const DOCUMENT_MAX_LEN: usize = 16 * 1024;
/// The text the remembered documents may add up to (their trees are a few times larger).
const DOCUMENTS_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// Parsed GraphQL documents, by their text. Clients send the same few documents
/// over and over with different variables, and parsing was a measurable share of a
/// mutation's CPU. Only the parse is skipped: the depth, complexity and directive
/// limits and validation still run on every request.
pub struct Documents {
    parsed: quick_cache::sync::Cache<String, ExecutableDocument, TextWeight>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Clone)]
struct TextWeight;

impl quick_cache::Weighter<String, ExecutableDocument> for TextWeight {
    fn weight(&self, text: &String, _: &ExecutableDocument) -> u64 {
        text.len() as u64 + 1
    }
}

impl Default for Documents {
    fn default() -> Self {
        Self {
            parsed: quick_cache::sync::Cache::with_weighter(4096, DOCUMENTS_MAX_BYTES, TextWeight),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

impl Documents {
    /// Gives `request` its parsed document: the remembered one, or a fresh parse
    /// that is remembered when it succeeds. A text that does not parse is left to
    /// `execute`, which reports the syntax error.
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > DOCUMENT_MAX_LEN {
            return;
        }
        if let Some(doc) = self.parsed.get(request.query.as_str()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            request.set_parsed_query(doc);
            return;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if let Ok(doc) = request.parsed_query() {
            let doc = doc.clone();
            self.parsed.insert(request.query.clone(), doc);
        }
    }

    /// Documents whose parse was (remembered, parsed anew) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

/// Who is asking, and for which tenant; resolved by the edge before execution.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub scope: Scope,
    pub principal: Option<Claims>,
    /// From the `idempotency-key` header: retries with the same key apply once.
    pub idempotency_key: Option<String>,
    /// From the `canopy-consistency` header: wait until the read models reach it.
    pub consistency: Option<u64>,
}

pub fn error(code: &str, message: impl Into<String>) -> async_graphql::Error {
    let code = code.to_owned();
    async_graphql::Error::new(message.into()).extend_with(|_, e| e.set("code", code))
}

fn failure(f: CommandFailure) -> async_graphql::Error {
    error(&f.code, f.message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> async_graphql::Error {
    tracing::error!(error = %e, "{what}");
    error("INTERNAL", "internal error")
}

fn bad_input(field: &'static str, e: impl std::fmt::Display) -> async_graphql::Error {
    let message = format!("{field}: {e}");
    async_graphql::Error::new(message).extend_with(move |_, ext| {
        ext.set("code", "BAD_USER_INPUT");
        ext.set("field", field);
    })
}

fn parse<T>(field: &'static str, r: Result<T, InputError>) -> async_graphql::Result<T> {
    r.map_err(|e| bad_input(field, e))
}

fn parts<'a>(ctx: &'a Context<'_>) -> (&'a Arc<App>, &'a RequestCtx) {
    (ctx.data_unchecked::<Arc<App>>(), ctx.data_unchecked::<RequestCtx>())
}

fn principal(req: &RequestCtx) -> async_graphql::Result<&Claims> {
    req.principal
        .as_ref()
        .ok_or_else(|| error("UNAUTHENTICATED", "sign in first: send `Authorization: Bearer <token>`"))
}

fn platform_admin(req: &RequestCtx) -> async_graphql::Result<&Claims> {
    let p = principal(req)?;
    if req.scope != Scope::Platform || p.tenant != actors::tenant::PLATFORM_TOKEN {
        return Err(error("FORBIDDEN", "only a platform administrator may do this"));
    }
    Ok(p)
}

/// The command id: derived from the idempotency key when there is one (so a retry
/// maps to the same command; the actor refuses it if the request differs), else fresh.
fn command_id(req: &RequestCtx, operation: &str) -> CommandId {
    match &req.idempotency_key {
        Some(key) => {
            let who = req.principal.as_ref().map_or("anonymous", |p| p.sub.as_str());
            let digest = Sha256::digest(format!("{}\0{who}\0{operation}\0{key}", req.scope).as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            CommandId::parse(&hex).expect("32 hex characters are a command id")
        }
        None => CommandId::fresh(),
    }
}

/// The principal a command carries: the verified token's account, or nobody.
fn command_principal(req: &RequestCtx) -> async_graphql::Result<Principal> {
    let Some(p) = &req.principal else { return Ok(Principal::Anonymous) };
    let scope = Scope::parse_token(&p.tenant).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))?;
    let account_id = AccountId::parse(&p.sub).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))?;
    Ok(Principal::Account { scope, account_id })
}

/// Sends a command to the owning tree over NATS and decodes the typed answer.
async fn send<R: Serialize, T: DeserializeOwned>(
    app: &App,
    req: &RequestCtx,
    scope: &Scope,
    aggregate: &str,
    command_id: CommandId,
    request: R,
) -> async_graphql::Result<T> {
    let envelope = CommandEnvelope { command_id, principal: command_principal(req)?, request };
    let body = serde_json::to_vec(&envelope).map_err(|e| internal("encoding a command", e))?;
    let timeout = Duration::from_millis(app.config.command_timeout_ms);
    let reply = tokio::time::timeout(timeout, app.nats.request(command_subject(scope, aggregate), body.into()))
        .await
        .map_err(|_| internal("command timed out", "no reply"))?
        .map_err(|e| internal("sending a command", e))?;
    let result: CommandResult<T> =
        serde_json::from_slice(&reply.payload).map_err(|e| internal("decoding a command reply", e))?;
    result.map_err(failure)
}

/// Read-your-writes: wait until the local projection has applied `seq`.
async fn settle(ctx: &Context<'_>, app: &App, seq: u64) {
    ctx.insert_http_header("canopy-consistency", seq.to_string());
    let timeout = Duration::from_millis(app.config.read_your_writes_timeout_ms);
    if !app.progress.wait_for(seq, timeout).await {
        tracing::warn!(seq, "read models did not reach the write in time; answering anyway");
    }
}

async fn consistent(app: &App, req: &RequestCtx) {
    if let Some(seq) = req.consistency {
        let timeout = Duration::from_millis(app.config.read_your_writes_timeout_ms);
        let _ = app.progress.wait_for(seq, timeout).await;
    }
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct AuthPayload {
    /// A bearer token for `Authorization: Bearer <token>`.
    token: String,
    /// When the token expires (RFC 3339).
    expires_at: String,
    #[graphql(skip)]
    account_id: String,
}

#[ComplexObject]
impl AuthPayload {
    /// The signed-in account.
    async fn user(&self, ctx: &Context<'_>) -> User {
        let (_, req) = parts(ctx);
        let scope = match &req.principal {
            Some(p) => Scope::parse_token(&p.tenant).unwrap_or(req.scope.clone()),
            None => req.scope.clone(),
        };
        // Its actor has just registered or authenticated it.
        User::known(&scope, &self.account_id)
    }
}

/// An account, read from its tenant's read model. Where a command has just
/// succeeded for the account, the answer starts from its id alone and reads the
/// row on the first field that needs it: a mutation that selects only `id` (read-
/// your-writes already waited for) costs no SurrealDB query.
pub struct User {
    id: String,
    scope: Scope,
    row: tokio::sync::OnceCell<UserRow>,
}

impl User {
    /// An account known to exist (a command for it just succeeded), read lazily.
    fn known(scope: &Scope, account_id: &str) -> Self {
        Self { id: account_id.to_owned(), scope: scope.clone(), row: tokio::sync::OnceCell::new() }
    }

    fn from_row(scope: &Scope, row: UserRow) -> Self {
        Self { id: row.account_id.clone(), scope: scope.clone(), row: tokio::sync::OnceCell::from(row) }
    }

    /// The read-model row, read once however many fields ask for it.
    async fn row(&self, ctx: &Context<'_>) -> async_graphql::Result<&UserRow> {
        self.row.get_or_try_init(|| user_row(parts(ctx).0, &self.scope, &self.id)).await
    }
}

/// An account as others see it.
#[Object]
impl User {
    async fn id(&self) -> &str {
        &self.id
    }

    async fn email(&self, ctx: &Context<'_>) -> async_graphql::Result<&str> {
        Ok(&self.row(ctx).await?.email)
    }

    async fn firstname(&self, ctx: &Context<'_>) -> async_graphql::Result<&str> {
        Ok(&self.row(ctx).await?.firstname)
    }

    async fn lastname(&self, ctx: &Context<'_>) -> async_graphql::Result<&str> {
        Ok(&self.row(ctx).await?.lastname)
    }

    /// True for the tenant's owner.
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        Ok(self.row(ctx).await?.owner)
    }

    async fn created_at(&self, ctx: &Context<'_>) -> async_graphql::Result<&str> {
        Ok(&self.row(ctx).await?.created_at)
    }
}

#[derive(SimpleObject)]
pub struct Tenant {
    /// The slug; tenants are addressed by it.
    id: String,
    slug: String,
    name: String,
    created_at: String,
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Self { id: r.slug.clone(), slug: r.slug, name: r.name, created_at: r.created_at }
    }
}

/// An account's read-model row; NOT_FOUND when it has none.
async fn user_row(app: &App, scope: &Scope, account_id: &str) -> async_graphql::Result<UserRow> {
    app.read_model
        .user(scope, account_id)
        .await
        .map_err(|e| internal("reading a user", e))?
        .ok_or_else(|| error("NOT_FOUND", "no such account"))
}

/// Reads an account now, for `me`: a token can outlive its account's read model row.
async fn load_user(app: &App, scope: &Scope, account_id: &str) -> async_graphql::Result<User> {
    Ok(User::from_row(scope, user_row(app, scope, account_id).await?))
}

fn issue(app: &App, scope: &Scope, account_id: String) -> async_graphql::Result<AuthPayload> {
    let (token, claims) = app.tokens.issue(scope, &account_id).map_err(|e| internal("signing a token", e))?;
    let expires_at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    Ok(AuthPayload { token, expires_at, account_id })
}

pub struct Query;

#[Object]
impl Query {
    /// The signed-in account.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        consistent(app, req).await;
        load_user(app, &req.scope, &p.sub).await
    }

    /// The tenant's accounts, oldest first (the tenant owner only).
    async fn users(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "page size, 1 to 100", default = 20)] first: i32,
        #[graphql(desc = "the `endCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<Connection<String, User>> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(bad_input("first", format!("must be between 1 and {MAX_PAGE}")));
        }
        let after_seq = match &after {
            Some(c) => decode_cursor(c).ok_or_else(|| bad_input("after", "not a cursor returned by `users`"))?,
            None => 0,
        };
        consistent(app, req).await;
        let caller = app.read_model.user(&req.scope, &p.sub).await.map_err(|e| internal("reading a user", e))?;
        let allowed = match &req.scope {
            Scope::Platform => caller.is_some(),
            Scope::Tenant(_) => caller.is_some_and(|c| c.owner),
        };
        if !allowed {
            return Err(error("FORBIDDEN", "only the tenant owner may list users"));
        }
        let limit = first as usize;
        let mut rows =
            app.read_model.users(&req.scope, after_seq, limit + 1).await.map_err(|e| internal("listing users", e))?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut conn = Connection::new(after.is_some(), has_next);
        conn.edges.extend(rows.into_iter().map(|r| Edge::new(encode_cursor(r.seq), User::from_row(&req.scope, r))));
        Ok(conn)
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

fn encode_cursor(seq: u64) -> String {
    B64.encode(format!("user:{seq}"))
}

fn decode_cursor(c: &str) -> Option<u64> {
    let raw = String::from_utf8(B64.decode(c).ok()?).ok()?;
    raw.strip_prefix("user:")?.parse().ok()
}

#[derive(InputObject)]
pub struct RegisterInput {
    email: String,
    password: String,
    firstname: String,
    lastname: String,
}

#[derive(InputObject)]
pub struct LoginInput {
    email: String,
    password: String,
}

#[derive(InputObject)]
pub struct UpdateProfileInput {
    firstname: String,
    lastname: String,
}

#[derive(InputObject)]
pub struct CreateTenantInput {
    /// `[a-z0-9][a-z0-9-]{1,62}`
    slug: String,
    name: String,
    owner_email: String,
    owner_password: String,
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Creates an account in the current tenant and signs it in.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> async_graphql::Result<AuthPayload> {
        let (app, req) = parts(ctx);
        if req.scope == Scope::Platform {
            return Err(error(
                "BAD_USER_INPUT",
                "register needs a tenant: send `x-tenant-id`, use a tenant subdomain or /t/{tenant}/graphql",
            ));
        }
        let request = AccountRequest::Register {
            email: parse("email", Email::parse(&input.email))?,
            password: parse("password", Password::parse(&input.password))?,
            firstname: parse("firstname", PersonName::parse(&input.firstname))?,
            lastname: parse("lastname", PersonName::parse(&input.lastname))?,
        };
        let reply: AccountReply = send(app, req, &req.scope, "account", command_id(req, "register"), request).await?;
        let AccountReply::Registered { account_id, seq } = reply else {
            return Err(internal("unexpected reply", "register"));
        };
        settle(ctx, app, seq).await;
        issue(app, &req.scope, account_id)
    }

    /// Signs in with email and password; without a tenant, as a platform administrator.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> async_graphql::Result<AuthPayload> {
        let (app, req) = parts(ctx);
        // Malformed input cannot match an account: answer exactly as for a wrong
        // password, so the error does not tell which part was wrong.
        let (Ok(email), Ok(password)) = (Email::parse(&input.email), Password::parse(&input.password)) else {
            return Err(failure(CommandFailure::invalid_credentials()));
        };
        let request = AccountRequest::Login { email, password };
        let reply: AccountReply = send(app, req, &req.scope, "account", command_id(req, "login"), request).await?;
        let AccountReply::LoggedIn { account_id, .. } = reply else {
            return Err(internal("unexpected reply", "login"));
        };
        issue(app, &req.scope, account_id)
    }

    /// Changes the signed-in account's names.
    async fn update_profile(&self, ctx: &Context<'_>, input: UpdateProfileInput) -> async_graphql::Result<User> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        let request = AccountRequest::UpdateProfile {
            account_id: AccountId::parse(&p.sub).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))?,
            firstname: parse("firstname", PersonName::parse(&input.firstname))?,
            lastname: parse("lastname", PersonName::parse(&input.lastname))?,
        };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "updateProfile"), request).await?;
        let AccountReply::Updated { seq } = reply else {
            return Err(internal("unexpected reply", "updateProfile"));
        };
        settle(ctx, app, seq).await;
        Ok(User::known(&req.scope, &p.sub))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(&B64.encode("other:1")), None);
    }
}
