//! Accounts in GraphQL: `me`, the owner's `users` page, `register`, `login`
//! and `updateProfile`.

use actors::command::{AccountReply, AccountRequest, CommandFailure, EmailProof, IssuedSession, SessionRequest};
use actors::domain::account::{AccountId, Email, Locale, Password, PersonName};
use actors::domain::challenge::{Code, LinkToken};
use actors::domain::tenant::Scope;
use async_graphql::connection::{Connection, Edge};
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::request::{
    bad_input, command_id, consistent, error, failure, internal, limit, parse, parts, principal, send, settle,
    settle_or_revoke,
};
use crate::App;
use crate::edge::limits::Key;
use crate::graphql::request::RequestCtx;
use crate::read_model::{UserOrder, UserQuery, UserRow};

/// The largest page `users` returns.
pub const MAX_PAGE: i32 = 100;

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct AuthPayload {
    /// A short-lived access token for `Authorization: Bearer <token>`.
    pub(crate) token: String,
    /// When the access token expires (RFC 3339).
    pub(crate) expires_at: String,
    /// An opaque token for `refreshSession`, shown only here: it rotates on
    /// every use, and using a rotated one again ends the session.
    pub(crate) refresh_token: String,
    /// When the refresh token stops working unless used (RFC 3339).
    pub(crate) refresh_expires_at: String,
    #[graphql(skip)]
    pub(crate) account_id: String,
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

    /// Whether the account proved it reads its email address.
    async fn email_verified(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        Ok(self.row(ctx).await?.email_verified)
    }

    /// The ids of the roles the account holds in its tenant.
    async fn roles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        if self.scope == Scope::Platform {
            return Ok(Vec::new());
        }
        parts(ctx).0.read_model.roles_of(&self.scope, &self.id).await.map_err(|e| internal("reading roles", e))
    }

    /// What the account may do in its tenant: its roles' permissions.
    async fn permissions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        if self.scope == Scope::Platform {
            return Ok(Vec::new());
        }
        let held = parts(ctx).0.read_model.permissions_of(&self.scope, &self.id).await;
        Ok(held.map_err(|e| internal("reading grants", e))?.into_iter().collect())
    }

    /// The language of the account's mails and messages (`en`, `de`).
    async fn locale(&self, ctx: &Context<'_>) -> async_graphql::Result<&str> {
        Ok(self.row(ctx).await?.locale.as_deref().unwrap_or(Locale::default().as_str()))
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

/// Unix seconds as RFC 3339 (empty for a time out of range).
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// An access token for a session just opened or rotated, with its refresh token.
pub(crate) fn issue(
    app: &App,
    scope: &Scope,
    account_id: String,
    session: IssuedSession,
) -> async_graphql::Result<AuthPayload> {
    let (token, claims) =
        app.tokens.issue(scope, &account_id, Some(&session.session_id)).map_err(|e| internal("signing a token", e))?;
    Ok(AuthPayload {
        token,
        expires_at: rfc3339(claims.exp),
        refresh_token: session.refresh_token,
        refresh_expires_at: rfc3339(session.expires_at),
        account_id,
    })
}

/// Sends an erasure and waits until the node refuses the person's tokens.
async fn erased(
    ctx: &Context<'_>,
    app: &App,
    req: &RequestCtx,
    operation: &str,
    request: AccountRequest,
) -> async_graphql::Result<bool> {
    let reply: AccountReply = send(app, req, &req.scope, "account", command_id(req, operation), request).await?;
    let AccountReply::Erased { seq, sessions_ended } = reply else {
        return Err(internal("unexpected reply", operation));
    };
    settle_or_revoke(ctx, app, seq, sessions_ended).await?;
    Ok(true)
}

/// The signed-in account's id, as a command names it.
pub(crate) fn own_account(p: &crate::edge::auth::Claims) -> async_graphql::Result<AccountId> {
    AccountId::parse(&p.sub).map_err(|_| error("UNAUTHENTICATED", "the token is not valid"))
}

/// The accounts part of the query root.
#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The signed-in account.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        consistent(app, req).await;
        load_user(app, &req.scope, &p.sub).await
    }

    /// The tenant's accounts (the tenant owner only): filtered by case-insensitive
    /// substrings of the email or name and by verification, ordered, and paged
    /// with cursors.
    async fn users(
        &self,
        ctx: &Context<'_>,
        filter: Option<UserFilter>,
        order_by: Option<UserOrderBy>,
        #[graphql(desc = "page size, 1 to 100", default = 20)] first: i32,
        #[graphql(desc = "the `endCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<Connection<String, User, UsersTotal>> {
        let (app, req) = parts(ctx);

        if !(1..=MAX_PAGE).contains(&first) {
            return Err(bad_input("first", format!("must be between 1 and {MAX_PAGE}")));
        }
        let filter = filter.unwrap_or_default();
        for (field, value) in [("filter.email", &filter.email), ("filter.name", &filter.name)] {
            if value.as_ref().is_some_and(|v| v.chars().count() > 254 || v.chars().any(char::is_control)) {
                return Err(bad_input(field, "at most 254 characters, no control characters"));
            }
        }
        let order_by = order_by.unwrap_or_default();
        let order = match order_by.field {
            UserOrderField::CreatedAt => UserOrder::CreatedAt,
            UserOrderField::Email => UserOrder::Email,
            UserOrderField::Lastname => UserOrder::Lastname,
        };
        let descending = order_by.direction == OrderDirection::Desc;
        let after_key = match &after {
            Some(c) => Some(
                decode_cursor(c, order, descending)
                    .ok_or_else(|| bad_input("after", "not a cursor of `users` in this order"))?,
            ),
            None => None,
        };
        // Who may list users is checked before this runs (`permissions.rs`: `read_users`).
        consistent(app, req).await;
        let limit = first as usize;
        let query = UserQuery {
            email: filter.email.filter(|s| !s.is_empty()),
            name: filter.name.filter(|s| !s.is_empty()),
            verified: filter.verified,
            order,
            descending,
            after: after_key,
            limit: limit + 1,
        };
        let (mut rows, total) =
            app.read_model.search_users(&req.scope, &query).await.map_err(|e| internal("listing users", e))?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut conn = Connection::with_additional_fields(after.is_some(), has_next, UsersTotal { total_count: total });
        conn.edges.extend(
            rows.into_iter().map(|r| Edge::new(encode_cursor(order, descending, &r), User::from_row(&req.scope, r))),
        );
        Ok(conn)
    }
}

/// How many accounts match a `users` query, over all its pages.
#[derive(SimpleObject)]
pub struct UsersTotal {
    total_count: u64,
}

/// What `users` keeps; every field narrows the result.
#[derive(InputObject, Default)]
pub struct UserFilter {
    /// A case-insensitive part of the email.
    email: Option<String>,
    /// A case-insensitive part of the first name, last name or both.
    name: Option<String>,
    verified: Option<bool>,
}

#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserOrderField {
    #[default]
    CreatedAt,
    Email,
    Lastname,
}

#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderDirection {
    #[default]
    Asc,
    Desc,
}

#[derive(InputObject, Default)]
pub struct UserOrderBy {
    field: UserOrderField,
    #[graphql(default)]
    direction: OrderDirection,
}

/// The sort key `users` compares for `order`, as the read model computes it.
fn sort_key(order: UserOrder, row: &UserRow) -> String {
    match order {
        UserOrder::CreatedAt => String::new(),
        UserOrder::Email => row.email.to_lowercase(),
        UserOrder::Lastname => row.lastname.to_lowercase(),
    }
}

fn order_tag(order: UserOrder, descending: bool) -> String {
    let o = match order {
        UserOrder::CreatedAt => "c",
        UserOrder::Email => "e",
        UserOrder::Lastname => "l",
    };
    format!("{o}{}", if descending { "d" } else { "a" })
}

/// A cursor: the order it belongs to, the row's sequence and its sort key.
fn encode_cursor(order: UserOrder, descending: bool, row: &UserRow) -> String {
    B64.encode(format!("user:{}:{}:{}", order_tag(order, descending), row.seq, sort_key(order, row)))
}

fn decode_cursor(c: &str, order: UserOrder, descending: bool) -> Option<(String, u64)> {
    if c.len() > 1024 {
        return None;
    }
    let raw = String::from_utf8(B64.decode(c).ok()?).ok()?;
    let rest = raw.strip_prefix("user:")?;
    let (tag, rest) = rest.split_once(':')?;
    if tag != order_tag(order, descending) {
        return None;
    }
    let (seq, key) = rest.split_once(':')?;
    Some((key.to_owned(), seq.parse().ok()?))
}

#[derive(InputObject)]
pub struct RegisterInput {
    email: String,
    password: String,
    firstname: String,
    lastname: String,
    /// `en` or `de` (a region such as `de-CH` is accepted); default: from `Accept-Language`.
    locale: Option<String>,
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
    /// A new locale (`en`, `de`); unchanged when absent.
    locale: Option<String>,
}

#[derive(InputObject)]
pub struct RequestPasswordResetInput {
    email: String,
}

#[derive(InputObject)]
pub struct ResetPasswordInput {
    /// The token of the reset mail's link.
    token: String,
    /// The new password (8 to 128 characters).
    password: String,
}

#[derive(InputObject)]
pub struct ChangeEmailInput {
    new_email: String,
    password: String,
}

#[derive(InputObject)]
pub struct DeleteAccountInput {
    password: String,
}

#[derive(InputObject)]
pub struct ChangePasswordInput {
    current_password: String,
    new_password: String,
}

/// Exactly one of the two proofs from the verification mail.
#[derive(InputObject)]
pub struct VerifyEmailInput {
    /// The 6-digit code (signed in only).
    code: Option<String>,
    /// The token of the mail's link (works signed out).
    token: Option<String>,
}

/// The accounts part of the mutation root.
#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Creates an account in the current tenant and signs it in.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> async_graphql::Result<AuthPayload> {
        let (app, req) = parts(ctx);
        if req.scope == Scope::Platform {
            return Err(error(
                "BAD_USER_INPUT",
                "register needs a tenant: send `x-tenant-id`, use a tenant subdomain or /t/{tenant}/graphql",
            ));
        }
        let limits = &app.config.rate_limits;
        limit(app, &[("register", Key::Address(req.client), limits.register_per_address)]).await?;
        let request = AccountRequest::Register {
            email: parse("email", Email::parse(&input.email))?,
            password: parse("password", Password::parse(&input.password))?,
            firstname: parse("firstname", PersonName::parse(&input.firstname))?,
            lastname: parse("lastname", PersonName::parse(&input.lastname))?,
            locale: match &input.locale {
                Some(l) => parse("locale", Locale::parse(l))?,
                None => req.locale.clone(),
            },
            session: Some(SessionRequest { user_agent: req.user_agent.clone() }),
        };
        let reply: AccountReply = send(app, req, &req.scope, "account", command_id(req, "register"), request).await?;
        let AccountReply::Registered { account_id, seq, session: Some(session) } = reply else {
            return Err(internal("unexpected reply", "register"));
        };
        settle(ctx, app, seq).await?;
        issue(app, &req.scope, account_id, session)
    }

    /// Signs in with email and password; without a tenant, as a platform administrator.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> async_graphql::Result<AuthPayload> {
        let (app, req) = parts(ctx);
        // Malformed input cannot match an account: answer exactly as for a wrong
        // password, so the error does not tell which part was wrong.
        let limits = &app.config.rate_limits;
        limit(
            app,
            &[
                ("login", Key::Address(req.client), limits.login_per_address),
                ("login", Key::AccountAddress(input.email.trim(), req.client), limits.login_per_account),
            ],
        )
        .await?;
        let (Ok(email), Ok(password)) = (Email::parse(&input.email), Password::parse(&input.password)) else {
            return Err(failure(CommandFailure::invalid_credentials()));
        };
        let request =
            AccountRequest::Login { email, password, session: SessionRequest { user_agent: req.user_agent.clone() } };
        let reply: AccountReply = send(app, req, &req.scope, "account", command_id(req, "login"), request).await?;
        let AccountReply::LoggedIn { account_id, session, seq, .. } = reply else {
            return Err(internal("unexpected reply", "login"));
        };
        // The session is in the log; its list shows it once projected.
        ctx.insert_http_header("canopy-consistency", seq.to_string());
        issue(app, &req.scope, account_id, session)
    }

    /// Changes the signed-in account's names.
    async fn update_profile(&self, ctx: &Context<'_>, input: UpdateProfileInput) -> async_graphql::Result<User> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        let request = AccountRequest::UpdateProfile {
            account_id: own_account(p)?,
            firstname: parse("firstname", PersonName::parse(&input.firstname))?,
            lastname: parse("lastname", PersonName::parse(&input.lastname))?,
            locale: input.locale.as_deref().map(|l| parse("locale", Locale::parse(l))).transpose()?,
        };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "updateProfile"), request).await?;
        let AccountReply::Updated { seq } = reply else {
            return Err(internal("unexpected reply", "updateProfile"));
        };
        settle(ctx, app, seq).await?;
        Ok(User::known(&req.scope, &p.sub))
    }

    /// Verifies the account's email address with the code (signed in) or the
    /// link token (signed in or not) of the verification mail. A wrong, used or
    /// expired proof gets `BAD_USER_INPUT` and changes nothing.
    async fn verify_email(&self, ctx: &Context<'_>, input: VerifyEmailInput) -> async_graphql::Result<User> {
        let (app, req) = parts(ctx);
        let proof = match (input.code, input.token) {
            (Some(code), None) => {
                let p = principal(req)?;
                EmailProof::Code { account_id: own_account(p)?, code: parse("code", Code::parse(&code))? }
            }
            (None, Some(token)) => EmailProof::Token { token: parse("token", LinkToken::parse(&token))? },
            _ => return Err(bad_input("input", "give exactly one of `code` and `token`")),
        };
        let per_account = app.config.rate_limits.verification_per_account;
        let account = proof.account_id().to_string();
        limit(app, &[("verify", Key::AccountAddress(&account, req.client), per_account)]).await?;
        let request = AccountRequest::VerifyEmail { proof };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "verifyEmail"), request).await?;
        let AccountReply::Verified { account_id, seq } = reply else {
            return Err(internal("unexpected reply", "verifyEmail"));
        };
        settle(ctx, app, seq).await?;
        Ok(User::known(&req.scope, &account_id))
    }

    /// Mails a password reset link to `email` if it has an account in this
    /// tenant. The answer is `true` either way: it never tells whether an
    /// address is registered. The link works once, for 30 minutes.
    async fn request_password_reset(
        &self,
        ctx: &Context<'_>,
        input: RequestPasswordResetInput,
    ) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let email = parse("email", Email::parse(&input.email))?;
        let limits = &app.config.rate_limits;
        let normalized = email.normalized();
        limit(
            app,
            &[
                ("reset", Key::Address(req.client), limits.password_reset_per_address),
                ("reset", Key::AccountAddress(&normalized, req.client), limits.password_reset_per_account),
            ],
        )
        .await?;
        let request = AccountRequest::RequestPasswordReset { email };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "requestPasswordReset"), request).await?;
        match reply {
            AccountReply::ResetRequested => Ok(true),
            _ => Err(internal("unexpected reply", "requestPasswordReset")),
        }
    }

    /// Sets a new password with the token of a reset mail, and ends every
    /// session of the account. A wrong, used or expired token gets
    /// `BAD_USER_INPUT` and changes nothing.
    async fn reset_password(&self, ctx: &Context<'_>, input: ResetPasswordInput) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let token = parse("token", LinkToken::parse(&input.token))?;
        let per_account = app.config.rate_limits.verification_per_account;
        let account = token.account_id().to_string();
        limit(app, &[("reset-token", Key::AccountAddress(&account, req.client), per_account)]).await?;
        let password = parse("password", Password::parse(&input.password))?;
        let request = AccountRequest::ResetPassword { token, password };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "resetPassword"), request).await?;
        let AccountReply::PasswordSet { seq, sessions_ended } = reply else {
            return Err(internal("unexpected reply", "resetPassword"));
        };
        settle_or_revoke(ctx, app, seq, sessions_ended).await?;
        Ok(true)
    }

    /// Mails a verification to `newEmail` (and a notice to the current address).
    /// The address changes, and the old one is free for others, only once the
    /// new one is verified with `verifyEmail`. An address taken in the tenant
    /// gets `BAD_USER_INPUT`.
    async fn change_email(&self, ctx: &Context<'_>, input: ChangeEmailInput) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        let request = AccountRequest::ChangeEmail {
            account_id: own_account(p)?,
            new_email: parse("newEmail", Email::parse(&input.new_email))?,
            password: Password::parse(&input.password)
                .map_err(|_| error("BAD_USER_INPUT", "the password is not correct"))?,
        };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "changeEmail"), request).await?;
        let AccountReply::ChangeRequested { seq } = reply else {
            return Err(internal("unexpected reply", "changeEmail"));
        };
        settle(ctx, app, seq).await?;
        Ok(true)
    }

    /// Erases the signed-in account, proving its password: its sessions end,
    /// its personal data can no longer be read anywhere, even in the event log,
    /// and its email is free again. The tenant's last owner cannot.
    async fn delete_account(&self, ctx: &Context<'_>, input: DeleteAccountInput) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        let request = AccountRequest::DeleteAccount {
            account_id: own_account(p)?,
            password: Password::parse(&input.password)
                .map_err(|_| error("BAD_USER_INPUT", "the password is not correct"))?,
        };
        erased(ctx, app, req, "deleteAccount", request).await
    }

    /// Erases an account of the tenant, as `deleteAccount` does (the tenant owner only).
    async fn remove_user(&self, ctx: &Context<'_>, id: async_graphql::ID) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        super::request::tenant_of(req, "members belong to a tenant")?;
        let account_id = AccountId::parse(&id).map_err(|_| bad_input("id", "not an account id"))?;
        erased(ctx, app, req, "removeUser", AccountRequest::RemoveUser { account_id }).await
    }

    /// Changes the signed-in account's password, proving the current one;
    /// every other session of the account ends.
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        let request = AccountRequest::ChangePassword {
            account_id: own_account(p)?,
            current_password: parse("currentPassword", Password::parse(&input.current_password))
                .map_err(|_| error("BAD_USER_INPUT", "the current password is not correct"))?,
            new_password: parse("newPassword", Password::parse(&input.new_password))?,
        };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "changePassword"), request).await?;
        let AccountReply::PasswordSet { seq, sessions_ended } = reply else {
            return Err(internal("unexpected reply", "changePassword"));
        };
        settle_or_revoke(ctx, app, seq, sessions_ended).await?;
        Ok(true)
    }

    /// Mails the signed-in account a new verification code and link; the older
    /// ones stop working. At most one per `verification_resend_secs`
    /// (`RATE_LIMITED` with `retryAfter` otherwise).
    async fn resend_verification(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let (app, req) = parts(ctx);
        let p = principal(req)?;
        let request = AccountRequest::ResendVerification { account_id: own_account(p)? };
        let reply: AccountReply =
            send(app, req, &req.scope, "account", command_id(req, "resendVerification"), request).await?;
        let AccountReply::VerificationSent { seq } = reply else {
            return Err(internal("unexpected reply", "resendVerification"));
        };
        settle(ctx, app, seq).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_only_in_their_own_order_and_reject_garbage() {
        let row = UserRow {
            account_id: "a".into(),
            email: "Ada@Example.com".into(),
            firstname: "Ada".into(),
            lastname: "Lovelace".into(),
            owner: false,
            seq: 42,
            created_at: String::new(),
            email_verified: false,
            locale: None,
        };
        let c = encode_cursor(UserOrder::Email, false, &row);
        assert_eq!(decode_cursor(&c, UserOrder::Email, false), Some(("ada@example.com".into(), 42)));
        assert_eq!(decode_cursor(&c, UserOrder::Email, true), None);
        assert_eq!(decode_cursor(&c, UserOrder::CreatedAt, false), None);
        assert_eq!(decode_cursor("not-a-cursor", UserOrder::CreatedAt, false), None);
        assert_eq!(decode_cursor(&B64.encode("other:1"), UserOrder::CreatedAt, false), None);
    }
}
