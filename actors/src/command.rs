//! The command protocol on `cmd.{scope}.{aggregate}`: what the edge sends and what
//! the tenant tree answers. Requests carry parsed types, so a malformed command is
//! refused when it is decoded, before any actor sees it.

use serde::{Deserialize, Serialize};

use crate::domain::access::{Actor, Permission, RoleDescription, RoleId, RoleName};
use crate::domain::access_token::{TokenId, TokenName};
use crate::domain::account::{AccountId, Email, Locale, Password, PersonName};
use crate::domain::challenge::{Code, LinkToken};
use crate::domain::ids::CommandId;
use crate::domain::session::{RefreshToken, SessionId, UserAgent};
use crate::domain::tenant::{Scope, TenantId, TenantName};
use crate::store::event_store::{ActorKind, EventActor};

pub fn command_subject(scope: &Scope, aggregate: &str) -> String {
    format!("cmd.{}.{aggregate}", scope.token())
}

/// The subject the command router listens on.
pub const COMMAND_WILDCARD: &str = "cmd.*.*";

/// Who sends a command, as the edge authenticated them. Actors check it where
/// a decision depends on who asks; a command without one does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// Nobody signed in: registration and login.
    Anonymous,
    /// A signed-in account of `scope` (the platform's accounts are its
    /// administrators), in session `session_id` when its token names one.
    Account {
        scope: Scope,
        account_id: AccountId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<SessionId>,
    },
    /// An API access token of `scope`, verified by the edge; what it may do is
    /// decided by the tenant's access control, which knows its scopes.
    Token { scope: Scope, token_id: TokenId },
    /// A node itself: the pending migrations it runs at start
    /// (`auto_migrate`). Only nodes reach `cmd.>`, so only a node can send it.
    Node,
}

impl Principal {
    pub fn is_platform_admin(&self) -> bool {
        matches!(self, Principal::Account { scope: Scope::Platform, .. })
    }

    /// Who acted, as the events of the command record it.
    pub fn event_actor(&self) -> Option<EventActor> {
        match self {
            Principal::Anonymous | Principal::Node => None,
            Principal::Account { scope, account_id, .. } => Some(EventActor {
                kind: ActorKind::Account,
                id: account_id.as_str().to_owned(),
                tenant: scope.token().to_owned(),
            }),
            Principal::Token { scope, token_id } => Some(EventActor {
                kind: ActorKind::Token,
                id: token_id.as_str().to_owned(),
                tenant: scope.token().to_owned(),
            }),
        }
    }

    /// The account acting, if it belongs to `scope`.
    pub fn account_in(&self, scope: &Scope) -> Option<&AccountId> {
        match self {
            Principal::Account { scope: s, account_id, .. } if s == scope => Some(account_id),
            _ => None,
        }
    }

    /// The session the principal acts in, if its token names one.
    pub fn session(&self) -> Option<&SessionId> {
        match self {
            Principal::Account { session_id, .. } => session_id.as_ref(),
            Principal::Anonymous | Principal::Node | Principal::Token { .. } => None,
        }
    }

    /// Who acts in `scope`, for its access control: an account of the scope or
    /// a token of it.
    pub fn actor_in(&self, scope: &Scope) -> Option<Actor> {
        match self {
            Principal::Account { scope: s, account_id, .. } if s == scope => {
                Some(Actor::Account(account_id.as_str().to_owned()))
            }
            Principal::Token { scope: s, token_id } if s == scope => Some(Actor::Token(token_id.as_str().to_owned())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnvelope<R> {
    /// Chosen by the caller; a retry with the same id is applied once, and a
    /// reuse of the id for another request is refused.
    pub command_id: CommandId,
    pub principal: Principal,
    pub request: R,
    /// Where the request came from, as the edge saw it; sealed into each event
    /// for the audit trail, never part of the request's digest (a retry from
    /// another address is the same request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
}

/// A request's client address and user agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The longest address and user agent kept: an IPv6 address with a zone
    /// fits the first, and a user agent is cut (at a character boundary).
    const MAX_ADDRESS: usize = 64;
    const MAX_USER_AGENT: usize = 256;

    /// The same, cut to bounded lengths and without control characters: what
    /// reaches the log, whoever sent the command.
    pub fn bounded(&self) -> Self {
        let clean = |s: &str, max: usize| s.chars().filter(|c| !c.is_control()).take(max).collect::<String>();
        Self {
            address: clean(&self.address, Self::MAX_ADDRESS),
            user_agent: self.user_agent.as_deref().map(|u| clean(u, Self::MAX_USER_AGENT)),
        }
    }
}

/// Request fields that are secrets: left out of a request's digest, which is
/// stored in the log (a replay proves them again instead).
const SECRET_FIELDS: [&str; 6] = ["password", "owner_password", "proof", "token", "current_password", "new_password"];

impl<R: Serialize> CommandEnvelope<R> {
    /// What a request's digest is computed over: the principal and the request
    /// without its secrets, as canonical JSON (serde_json orders object keys).
    pub fn digest_input(&self) -> String {
        let mut request = serde_json::to_value(&self.request).unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut request {
            for secret in SECRET_FIELDS {
                fields.remove(secret);
            }
        }
        serde_json::json!({ "principal": self.principal, "request": request }).to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountRequest {
    /// `session`: open a session for the new account (the edge does; the
    /// bootstrap administrator does not).
    Register {
        email: Email,
        password: Password,
        firstname: PersonName,
        lastname: PersonName,
        locale: Locale,
        session: Option<SessionRequest>,
    },
    Login {
        email: Email,
        password: Password,
        #[serde(default)]
        session: SessionRequest,
    },
    /// Mail a reset link if the email has an account; the answer is the same either way.
    RequestPasswordReset {
        email: Email,
    },
    /// Set a new password with a reset link's token.
    ResetPassword {
        token: LinkToken,
        password: Password,
    },
    /// Mail a verification to a new address, proving the password (the account itself only).
    ChangeEmail {
        account_id: AccountId,
        new_email: Email,
        password: Password,
    },
    /// Erase the account, proving the password (the account itself only).
    DeleteAccount {
        account_id: AccountId,
        password: Password,
    },
    /// Erase another account of the tenant (its owner only).
    RemoveUser {
        account_id: AccountId,
    },
    /// Change the password, proving the current one (the account itself only).
    ChangePassword {
        account_id: AccountId,
        current_password: Password,
        new_password: Password,
    },
    /// Rotate a session's refresh token (no access token needed).
    RefreshSession {
        token: RefreshToken,
    },
    /// End sessions of the account (the account itself only).
    RevokeSessions {
        account_id: AccountId,
        which: SessionSelection,
    },
    UpdateProfile {
        account_id: AccountId,
        firstname: PersonName,
        lastname: PersonName,
        locale: Option<Locale>,
    },
    /// Mail the account's verification again (the account itself only).
    ResendVerification {
        account_id: AccountId,
    },
    /// Verify with the mailed code (the account itself only) or link token (anyone holding it).
    VerifyEmail {
        proof: EmailProof,
    },
    /// Accept an invitation by its link's token: a newcomer's account is
    /// created (its address proven by the link), or an existing account with
    /// the invited address proves its password; either gets the role and a
    /// session.
    AcceptInvitation {
        token: LinkToken,
        password: Password,
        firstname: PersonName,
        lastname: PersonName,
        locale: Locale,
        #[serde(default)]
        session: SessionRequest,
    },
}

/// What a new session records about its client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionRequest {
    pub user_agent: Option<UserAgent>,
}

/// Which sessions a revocation ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "which", rename_all = "snake_case")]
pub enum SessionSelection {
    /// The principal's own session (logout).
    Current,
    /// Every session (logout everywhere).
    All,
    /// One session by id.
    One { session_id: SessionId },
}

/// A session just opened or rotated: the refresh token is in clear here, once,
/// for its holder; the log has only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedSession {
    pub session_id: String,
    pub refresh_token: String,
    /// When the refresh token stops working unless used (Unix seconds).
    pub expires_at: i64,
}

/// How a person proves they read a verification mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum EmailProof {
    Code { account_id: AccountId, code: Code },
    Token { token: LinkToken },
}

impl EmailProof {
    /// The account the proof is for.
    pub fn account_id(&self) -> &AccountId {
        match self {
            EmailProof::Code { account_id, .. } => account_id,
            EmailProof::Token { token } => token.account_id(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountReply {
    Registered {
        account_id: String,
        seq: u64,
        session: Option<IssuedSession>,
    },
    LoggedIn {
        account_id: String,
        owner: bool,
        session: IssuedSession,
        seq: u64,
    },
    Refreshed {
        account_id: String,
        session: IssuedSession,
        seq: u64,
    },
    SessionsRevoked {
        count: usize,
        seq: u64,
    },
    Updated {
        seq: u64,
    },
    VerificationSent {
        seq: u64,
    },
    Verified {
        account_id: String,
        seq: u64,
    },
    /// The same for a known and an unknown email.
    ResetRequested,
    /// `sessions_ended`: how many sessions the change revoked.
    PasswordSet {
        seq: u64,
        sessions_ended: usize,
    },
    ChangeRequested {
        seq: u64,
    },
    Erased {
        seq: u64,
        sessions_ended: usize,
    },
}

/// Requests to a tenant's `RoleActor` (aggregate `access`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccessRequest {
    CreateRole {
        name: RoleName,
        description: RoleDescription,
        permissions: Vec<Permission>,
    },
    UpdateRole {
        role_id: RoleId,
        name: RoleName,
        description: RoleDescription,
        permissions: Vec<Permission>,
    },
    DeleteRole {
        role_id: RoleId,
    },
    SetMemberRoles {
        account_id: AccountId,
        roles: Vec<RoleId>,
    },
    /// `expires_at`: Unix seconds.
    CreateToken {
        name: TokenName,
        scopes: Vec<Permission>,
        expires_at: i64,
    },
    RevokeToken {
        token_id: TokenId,
    },
    /// `locale`: the language of the invitation mail.
    Invite {
        email: Email,
        role: RoleId,
        locale: Locale,
    },
    RevokeInvitation {
        invitation_id: AccountId,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccessReply {
    Done {
        seq: u64,
    },
    RoleCreated {
        role_id: String,
        seq: u64,
    },
    /// `secret` is shown once: a retry of the same command finds the token
    /// created and gets `None`.
    TokenCreated {
        token_id: String,
        secret: Option<String>,
        seq: u64,
    },
    Invited {
        invitation_id: String,
        seq: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TenantRequest {
    Create {
        slug: TenantId,
        name: TenantName,
        owner_email: Email,
        owner_password: Password,
    },
    /// By a member or token of the tenant holding `update_tenant`.
    Rename {
        slug: TenantId,
        name: TenantName,
    },
    /// By a platform administrator.
    Suspend {
        slug: TenantId,
    },
    /// By a platform administrator.
    Resume {
        slug: TenantId,
    },
    /// By a platform administrator, or by a member of the tenant holding
    /// `delete_tenant` who proves their password.
    Delete {
        slug: TenantId,
        password: Option<Password>,
    },
    /// By a platform administrator: a new tenant `slug`, cloned from a backup.
    Restore {
        slug: TenantId,
        backup_id: uuid::Uuid,
    },
}

/// Requests to a tenant's backups actor (aggregate `backups`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupRequest {
    /// By a member or token holding `manage_backups`, or a platform administrator.
    Take,
    /// By a platform administrator.
    SetLimits { per_day: u32, max: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupReply {
    /// The backup taken, if the request took one.
    pub backup_id: Option<String>,
    pub size: u64,
    /// Unix seconds.
    pub at: i64,
    pub per_day: u32,
    pub max: u32,
    pub seq: u64,
}

/// Requests to a tenant's push actor (aggregate `push`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushRequest {
    /// By a member or token holding `publish_messages`: `payload` (UTF-8
    /// text) for the tenant's clients on `topic`; `retain` keeps it as the
    /// topic's retained message for MQTT clients.
    Publish {
        topic: String,
        payload: String,
        #[serde(default)]
        retain: bool,
    },
    /// By a member or token holding `manage_push`.
    SetForwarding { types: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushReply {
    /// The published message's id (a UUID), for a publish.
    pub message_id: Option<String>,
    /// The event types forwarded, after a change of them.
    pub forwarded: Vec<String>,
    pub seq: u64,
}

/// Requests to a tenant's webhooks actor (aggregate `webhook`). Every one but
/// `Disable` needs `manage_webhooks`; `Disable` is a node's, after failures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WebhookRequest {
    Create {
        name: String,
        url: String,
        method: crate::domain::webhook::Method,
        event_types: Vec<String>,
        auth: WebhookAuthInput,
    },
    Update {
        webhook_id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        method: Option<crate::domain::webhook::Method>,
        #[serde(default)]
        event_types: Option<Vec<String>>,
        #[serde(default)]
        auth: Option<WebhookAuthInput>,
        #[serde(default)]
        enabled: Option<bool>,
    },
    Delete {
        webhook_id: String,
    },
    /// A new signing secret; the old one signs too for `overlap_secs`.
    RotateSecret {
        webhook_id: String,
        overlap_secs: i64,
    },
    /// By a node: the webhook failed `failures` times in a row.
    Disable {
        webhook_id: String,
        reason: String,
        failures: u32,
    },
    /// Sends delivery `delivery_id` (of the event at `event_seq`) again.
    Redeliver {
        webhook_id: String,
        delivery_id: String,
        event_seq: u64,
    },
}

/// A webhook's authentication as a request gives it, credentials in clear
/// (they are sealed before any event holds them). Its `Debug` shows no
/// credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WebhookAuthInput {
    None,
    Basic { username: String, password: String },
    ApiKey { header: String, value: String },
    Bearer { token: String },
}

impl std::fmt::Debug for WebhookAuthInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            WebhookAuthInput::None => "None",
            WebhookAuthInput::Basic { .. } => "Basic(..)",
            WebhookAuthInput::ApiKey { .. } => "ApiKey(..)",
            WebhookAuthInput::Bearer { .. } => "Bearer(..)",
        };
        f.write_str(kind)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReply {
    /// The webhook the request was about.
    pub webhook_id: String,
    /// A new `whsec_` signing secret, shown once: after a creation or a
    /// rotation (never to a retry, which finds the first try's).
    pub secret: Option<String>,
    pub seq: u64,
}

impl TenantRequest {
    pub fn slug(&self) -> &TenantId {
        match self {
            TenantRequest::Create { slug, .. }
            | TenantRequest::Rename { slug, .. }
            | TenantRequest::Suspend { slug }
            | TenantRequest::Resume { slug }
            | TenantRequest::Delete { slug, .. }
            | TenantRequest::Restore { slug, .. } => slug,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TenantReply {
    Created {
        slug: TenantId,
        owner_account_id: String,
        seq: u64,
    },
    /// A lifecycle change, stored at `seq` (the tenant's last event when the
    /// change was already in place).
    Changed {
        seq: u64,
    },
}

/// Why a command did not succeed. `code` is the GraphQL `extensions.code`; the
/// message is safe to show to the caller and never holds internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandFailure {
    pub code: String,
    pub message: String,
    /// For `RATE_LIMITED`: when a retry may succeed, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl CommandFailure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into(), retry_after_secs: None }
    }

    pub fn rejected(e: &impl crate::domain::aggregate::DomainError) -> Self {
        Self { retry_after_secs: e.retry_after_secs(), ..Self::new(e.code(), e.to_string()) }
    }

    pub fn conflict() -> Self {
        Self::new("CONFLICT", "another change to the same data happened at the same time; retry the request")
    }

    /// Infrastructure failed. The detail goes to the log, never to the caller.
    pub fn internal() -> Self {
        Self::new("INTERNAL", "internal error; the request was not applied or may be retried safely")
    }

    /// The event log could not be reached; nothing was appended, or a retry
    /// under the same command id is a no-op.
    pub fn unavailable() -> Self {
        Self::new("UNAVAILABLE", UNAVAILABLE_MESSAGE)
    }

    pub fn unknown_tenant() -> Self {
        Self::new("NOT_FOUND", "unknown tenant")
    }

    pub fn invalid_credentials() -> Self {
        Self::new("UNAUTHENTICATED", "invalid email or password")
    }

    /// The command id was used before for a request with other content (as
    /// Stripe answers a reused idempotency key).
    pub fn reused_id() -> Self {
        Self::new("CONFLICT", "idempotency key reused with a different request")
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new("FORBIDDEN", message)
    }
}

/// What goes back on the reply subject.
pub type CommandResult<T> = Result<T, CommandFailure>;

/// A result as it goes back on the reply subject (JSON).
pub const UNAVAILABLE_MESSAGE: &str =
    "the event log cannot be reached now; the request was not applied or may be retried safely";

pub fn encode_result<T: Serialize>(r: CommandResult<T>) -> Vec<u8> {
    serde_json::to_vec(&r).unwrap_or_else(|_| br#"{"Err":{"code":"INTERNAL","message":"internal error"}}"#.to_vec())
}

// Parsed input types travel inside commands: serialise them as plain strings and
// parse them again on the way in, so the receiving side holds parsed values too.
macro_rules! string_wire {
    ($t:ty, $expose:ident) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.$expose())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                <$t>::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_wire!(AccountId, as_str);
string_wire!(Email, as_str);
string_wire!(Password, expose);
string_wire!(PersonName, as_str);
string_wire!(Locale, as_str);
string_wire!(Code, as_str);
string_wire!(LinkToken, expose);
string_wire!(SessionId, as_str);
string_wire!(RefreshToken, expose);
string_wire!(UserAgent, as_str);
string_wire!(Permission, as_str);
string_wire!(RoleName, as_str);
string_wire!(RoleDescription, as_str);
string_wire!(RoleId, as_str);
string_wire!(TokenName, as_str);
string_wire!(TokenId, as_str);

/// Requests to a tenant's modules actor (aggregate `modules`). Module names
/// are checked against the registry before anything else.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModulesRequest {
    Subscribe {
        module: String,
        major: u32,
        #[serde(default)]
        with_dependencies: bool,
        /// Run the versions' migrations and main seeds in the same batch
        /// (the node's `auto_migrate`).
        #[serde(default)]
        migrate: bool,
    },
    Unsubscribe {
        module: String,
    },
    Upgrade {
        module: String,
        to: u32,
    },
    /// Runs the pending migrations of one module (or of every held module);
    /// `force` writes the main seeds again over their own records; `dry_run`
    /// only answers the plan.
    Migrate {
        module: Option<String>,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        dry_run: bool,
    },
    /// Adds the temporary seeds of one module (or of every held module).
    Seed {
        module: Option<String>,
    },
    /// Removes the temporary seeds no user has changed.
    Deseed {
        module: Option<String>,
    },
}

/// One step of what a modules request did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// `contacts@v1`.
    pub module: String,
    /// `subscribe`, `migration`, `upgrade_migration`, `baseline`, `transform`,
    /// `seed`, `deseed`, `unsubscribe` or `upgrade`.
    pub action: String,
    /// What the step works on: a migration's file, a table, a count.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModulesReply {
    /// The sequence to wait for before reading (0 when nothing was appended).
    pub seq: u64,
    pub steps: Vec<PlanStep>,
}

/// A record command for one module's actor (aggregate `record`). `major` is
/// the major version the caller asked for; the module actor refuses a version
/// the tenant does not hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordRequest {
    pub module: String,
    pub major: u32,
    pub table: String,
    pub op: RecordOp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordOp {
    Create { values: serde_json::Map<String, serde_json::Value> },
    Update { id: uuid::Uuid, patch: serde_json::Map<String, serde_json::Value> },
    Delete { id: uuid::Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordReply {
    pub id: String,
    /// The record's values after the command (empty after a delete).
    pub values: serde_json::Map<String, serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANONYMOUS: &str = r#""principal":{"kind":"anonymous"}"#;

    #[test]
    fn a_client_is_bounded_before_it_is_sealed() {
        let hostile =
            ClientInfo { address: "1".repeat(500), user_agent: Some(format!("bot\u{0}\n{}", "x".repeat(900))) };
        let kept = hostile.bounded();
        assert_eq!(kept.address.len(), 64);
        let ua = kept.user_agent.unwrap();
        assert_eq!(ua.chars().count(), 256);
        assert!(ua.starts_with("botxx"), "{ua}");
    }

    #[test]
    fn a_command_with_an_invalid_email_does_not_decode() {
        let raw = format!(
            r#"{{"command_id":"c1",{ANONYMOUS},"request":{{"kind":"login","email":"nope","password":"12345678"}}}}"#
        );
        assert!(serde_json::from_str::<CommandEnvelope<AccountRequest>>(&raw).is_err());
        let ok = raw.replace("nope", "a@b.co");
        serde_json::from_str::<CommandEnvelope<AccountRequest>>(&ok).unwrap();
        let without_principal = ok.replace(&format!("{ANONYMOUS},"), "");
        assert!(serde_json::from_str::<CommandEnvelope<AccountRequest>>(&without_principal).is_err());
    }

    #[test]
    fn command_ids_that_could_reach_a_subject_or_header_do_not_parse() {
        let long = "x".repeat(65);
        for bad in ["", "a.b", "a*", "a>", "a b", "a\r\nb", "ä", long.as_str()] {
            assert!(CommandId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CommandId::parse(&"x".repeat(64)).is_ok());
        assert!(CommandId::parse(CommandId::fresh().as_str()).is_ok());
    }

    #[test]
    fn the_digest_input_leaves_secrets_out_but_binds_everything_else() {
        let login = |email: &str, password: &str| CommandEnvelope {
            command_id: CommandId::parse("c1").unwrap(),
            principal: Principal::Anonymous,
            request: AccountRequest::Login {
                email: Email::parse(email).unwrap(),
                password: Password::parse(password).unwrap(),
                session: SessionRequest::default(),
            },
            client: Some(ClientInfo { address: format!("10.0.0.{}", password.len()), user_agent: None }),
        };
        let a = login("a@b.co", "first-password");
        assert!(!a.digest_input().contains("first-password"));
        // Neither the password nor the client's address is part of the digest.
        assert_eq!(a.digest_input(), login("a@b.co", "other-password").digest_input());
        assert_ne!(a.digest_input(), login("z@b.co", "first-password").digest_input());
    }

    #[test]
    fn commands_round_trip_through_json() {
        let cmd = CommandEnvelope {
            command_id: CommandId::parse("c1").unwrap(),
            principal: Principal::Anonymous,
            request: AccountRequest::Login {
                email: Email::parse("a@b.co").unwrap(),
                password: Password::parse("12345678").unwrap(),
                session: SessionRequest::default(),
            },
            client: None,
        };
        let json = serde_json::to_string(&cmd).unwrap();
        let back: CommandEnvelope<AccountRequest> = serde_json::from_str(&json).unwrap();
        assert!(matches!(back.request, AccountRequest::Login { .. }));
    }

    #[test]
    fn subjects_use_the_scope_token() {
        assert_eq!(command_subject(&Scope::Platform, "tenant"), "cmd._system.tenant");
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        assert_eq!(command_subject(&acme, "account"), "cmd.acme.account");
    }
}
