//! Access control of one tenant: the permission catalog, the built-in roles,
//! custom roles, and which roles each member holds. One aggregate per tenant
//! (`access`), so a rule that spans roles and members (a role cannot be deleted
//! while assigned; the last owner stays an owner) is one decision.
//!
//! A member with no assignment holds `member`; the tenant's creator holds
//! `owner` from the tenant's creation on.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::access_token::TokenName;
use crate::domain::aggregate::{Aggregate, Decision, DomainError, Reservation};
use crate::store::seal::Sealed;

/// Every permission, `{action}_{resource}`, with what it allows. The published
/// catalog (`schemas/permissions.json`) is generated from this list.
pub const CATALOG: &[(&str, &str)] = &[
    ("read_tenant", "see the tenant's name, creation and owner"),
    ("update_tenant", "rename the tenant"),
    ("delete_tenant", "delete the tenant and everything in it"),
    ("read_users", "list and search the tenant's users"),
    ("invite_members", "invite people by mail, and revoke invitations"),
    ("read_invitations", "list invitations"),
    ("remove_members", "remove a member (their account is erased)"),
    ("read_roles", "list the roles and their permissions"),
    ("manage_roles", "create, update and delete custom roles"),
    ("assign_roles", "change which roles a member holds"),
    ("create_access-token", "create API access tokens, with scopes among one's own permissions"),
    ("read_access-tokens", "list the tenant's access tokens (never their secrets)"),
    ("revoke_access-token", "revoke any access token of the tenant"),
    ("read_audit", "read the audit trail"),
    ("read_billing", "see the subscription and invoices"),
    ("update_billing", "change the plan"),
    ("update_billing:card", "change the payment card"),
    ("manage_modules", "subscribe to, upgrade and unsubscribe from modules"),
    ("manage_backups", "take backups of the tenant and list them"),
    ("publish_messages", "publish push messages to the tenant's clients"),
    ("subscribe_messages", "receive the tenant's push messages"),
    ("manage_push", "choose which of the tenant's events its push clients receive"),
    ("read_webhooks", "list the tenant's webhooks and their deliveries (never their secrets)"),
    ("manage_webhooks", "create, change, delete and redeliver webhooks, and rotate their secrets"),
];

/// A permission of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission(&'static str);

/// A permission a module adds to the catalog: its name, what it allows, and
/// whether the built-in `member` role holds it (`owner` and `admin` hold
/// every module permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModulePermission {
    pub name: &'static str,
    pub description: &'static str,
    pub member: bool,
}

/// The permissions the node's modules add, registered once when the module
/// registry loads. It only grows: a process that loads several registries
/// (tests) knows the union, and a name is registered once.
static MODULE_PERMISSIONS: std::sync::RwLock<Vec<ModulePermission>> = std::sync::RwLock::new(Vec::new());

/// Adds modules' permissions to the catalog (a name already known is kept as it is).
pub fn register_module_permissions<'a>(decls: impl IntoIterator<Item = (&'a str, &'a str, bool)>) {
    let mut known = MODULE_PERMISSIONS.write().unwrap_or_else(|e| e.into_inner());
    for (name, description, member) in decls {
        if CATALOG.iter().any(|(p, _)| *p == name) || known.iter().any(|p| p.name == name) {
            continue;
        }
        // Leaked once per distinct name: the catalog lives as long as the process.
        known.push(ModulePermission {
            name: Box::leak(name.to_owned().into_boxed_str()),
            description: Box::leak(description.to_owned().into_boxed_str()),
            member,
        });
    }
}

/// The permissions modules added, in the order they were registered.
pub fn module_permissions() -> Vec<ModulePermission> {
    MODULE_PERMISSIONS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Permission {
    pub fn parse(raw: &str) -> Result<Self, AccessError> {
        let module = || module_permissions().into_iter().find(|p| p.name == raw).map(|p| Self(p.name));
        CATALOG.iter().find(|(p, _)| *p == raw).map(|(p, _)| Self(p)).or_else(module).ok_or_else(|| {
            // Bounded and printable: the name goes back to the caller.
            let shown: String = raw.chars().filter(|c| !c.is_control()).take(64).collect();
            AccessError::UnknownPermission(shown)
        })
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The catalog's permissions, then those modules added.
    pub fn all() -> impl Iterator<Item = Permission> {
        CATALOG.iter().map(|(p, _)| Permission(p)).chain(module_permissions().into_iter().map(|p| Permission(p.name)))
    }
}

/// The roles every tenant has; their permissions are fixed by this code.
pub const OWNER: &str = "owner";
pub const ADMIN: &str = "admin";
pub const MEMBER: &str = "member";

/// What `admin` may not do: end the tenant or pay for it.
const NOT_FOR_ADMIN: [&str; 3] = ["delete_tenant", "update_billing", "update_billing:card"];
/// What `member` may do.
const MEMBER_PERMISSIONS: [&str; 3] = ["read_tenant", "read_roles", "subscribe_messages"];

/// The permissions of a built-in role, `None` for any other id.
pub fn builtin_permissions(role_id: &str) -> Option<BTreeSet<Permission>> {
    match role_id {
        OWNER => Some(Permission::all().collect()),
        ADMIN => Some(Permission::all().filter(|p| !NOT_FOR_ADMIN.contains(&p.as_str())).collect()),
        MEMBER => {
            let module = module_permissions().into_iter().filter(|p| p.member).map(|p| Permission(p.name));
            Some(Permission::all().filter(|p| MEMBER_PERMISSIONS.contains(&p.as_str())).chain(module).collect())
        }
        _ => None,
    }
}

/// A role's name: 1 to 50 characters, letters, digits, spaces, `-` and `_`,
/// unique in its tenant regardless of case (the built-in names included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(raw: &str) -> Result<Self, AccessError> {
        let t = raw.trim();
        let n = t.chars().count();
        if n == 0 || n > 50 || !t.chars().all(|c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_') {
            return Err(AccessError::InvalidRoleName);
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A role's description: at most 500 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleDescription(String);

impl RoleDescription {
    pub fn parse(raw: &str) -> Result<Self, AccessError> {
        let t = raw.trim();
        if t.chars().count() > 500 || t.chars().any(char::is_control) {
            return Err(AccessError::InvalidDescription);
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role's id: a built-in name, or the UUID of a custom role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoleId(String);

impl RoleId {
    pub fn parse(raw: &str) -> Result<Self, AccessError> {
        if builtin_permissions(raw).is_some() {
            return Ok(Self(raw.to_owned()));
        }
        crate::domain::ids::canonical_uuid(raw).map(Self).ok_or(AccessError::UnknownRole)
    }

    /// The id of a role created by command `seed` (a retry gets the same one).
    pub fn derived(seed: &str) -> Self {
        Self(crate::domain::ids::derived_uuid(seed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A custom role as the tenant defined it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDef {
    pub name: String,
    pub description: String,
    pub permissions: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessState {
    /// Custom roles by id.
    pub roles: BTreeMap<String, RoleDef>,
    /// Members whose roles differ from `member`, by account id.
    pub assignments: BTreeMap<String, BTreeSet<String>>,
    /// API access tokens by id, revoked ones included (an id is never reused).
    pub tokens: BTreeMap<String, TokenDef>,
    /// Invitations by id (the id of the account a newcomer gets), every status.
    pub invitations: BTreeMap<String, InvitationDef>,
}

/// An invitation to join the tenant with a role. Its email and the secret
/// behind its link are sealed under the key of the account id it reserves, so
/// revoking it (or erasing the account it became) shreds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationDef {
    pub email: Sealed,
    /// The blind index of the address, as for accounts.
    pub email_index: String,
    pub role: String,
    pub invited_by: String,
    pub expires_at: i64,
    pub secret: Sealed,
    pub status: InvitationStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Revoked,
}

/// At most this many pending invitations per tenant.
pub const MAX_PENDING_INVITATIONS: usize = 500;

/// An access token as the tenant's access control knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenDef {
    pub name: String,
    pub scopes: BTreeSet<String>,
    /// The account that created it; the token never does more than it may.
    pub created_by: String,
    pub expires_at: i64,
    pub revoked: bool,
}

/// Who acts in the tenant: a member's account, or an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Account(String),
    Token(String),
}

/// At most this many live (neither revoked nor expired) tokens per tenant.
pub const MAX_LIVE_TOKENS: usize = 100;
/// The longest a token may live, in seconds (a year and a day).
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 366 * 24 * 3600;

impl AccessState {
    /// The roles an account holds.
    pub fn roles_of(&self, account_id: &str) -> BTreeSet<String> {
        self.assignments.get(account_id).cloned().unwrap_or_else(|| BTreeSet::from([MEMBER.to_owned()]))
    }

    /// Whether a role exists here (built-in or custom).
    pub fn has_role(&self, role_id: &str) -> bool {
        builtin_permissions(role_id).is_some() || self.roles.contains_key(role_id)
    }

    /// What an account may do: the union of its roles' permissions.
    pub fn permissions_of(&self, account_id: &str) -> BTreeSet<String> {
        self.roles_of(account_id).iter().flat_map(|r| self.role_permissions(r)).collect()
    }

    /// The token `id` if it works at `now` (neither revoked nor expired).
    fn live_token(&self, id: &str, now: i64) -> Option<&TokenDef> {
        self.tokens.get(id).filter(|t| !t.revoked && t.expires_at > now)
    }

    /// What `actor` may do at `now`: a member's permissions, or a live token's
    /// scopes as far as its creator still holds them.
    pub fn effective(&self, actor: &Actor, now: i64) -> BTreeSet<String> {
        match actor {
            Actor::Account(id) => self.permissions_of(id),
            Actor::Token(id) => self
                .live_token(id, now)
                .map(|t| t.scopes.intersection(&self.permissions_of(&t.created_by)).cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The account behind `actor`: itself, or a live token's creator.
    pub fn account_behind(&self, actor: &Actor, now: i64) -> Option<String> {
        match actor {
            Actor::Account(id) => Some(id.clone()),
            Actor::Token(id) => self.live_token(id, now).map(|t| t.created_by.clone()),
        }
    }

    /// The invitation `id` if it can still be accepted at `now`.
    pub fn open_invitation(&self, id: &str, now: i64) -> Option<&InvitationDef> {
        self.invitations.get(id).filter(|i| i.status == InvitationStatus::Pending && i.expires_at > now)
    }

    fn pending_invitations(&self, now: i64) -> impl Iterator<Item = &InvitationDef> {
        self.invitations.values().filter(move |i| i.status == InvitationStatus::Pending && i.expires_at > now)
    }

    /// The permissions a role grants (none for an unknown role).
    fn role_permissions(&self, role_id: &str) -> BTreeSet<String> {
        match builtin_permissions(role_id) {
            Some(ps) => ps.iter().map(|p| p.as_str().to_owned()).collect(),
            None => self.roles.get(role_id).map(|r| r.permissions.clone()).unwrap_or_default(),
        }
    }

    fn live_tokens(&self, now: i64) -> usize {
        self.tokens.keys().filter(|id| self.live_token(id, now).is_some()).count()
    }

    /// Whether `account_id` is the tenant's only owner, who may not leave.
    pub fn is_last_owner(&self, account_id: &str) -> bool {
        self.roles_of(account_id).contains(OWNER) && self.owners() <= 1
    }

    fn owners(&self) -> usize {
        self.assignments.values().filter(|r| r.contains(OWNER)).count()
    }

    fn name_taken(&self, name: &RoleName, except: Option<&str>) -> bool {
        let key = name.key();
        [OWNER, ADMIN, MEMBER].contains(&key.as_str())
            || self.roles.iter().any(|(id, r)| Some(id.as_str()) != except && r.name.to_lowercase() == key)
    }
}

#[derive(Debug, Clone)]
pub enum AccessCommand {
    /// The tenant's creation names its first owner.
    Establish {
        owner_account_id: String,
    },
    CreateRole {
        role_id: String,
        name: RoleName,
        description: RoleDescription,
        permissions: BTreeSet<Permission>,
    },
    UpdateRole {
        role_id: String,
        name: RoleName,
        description: RoleDescription,
        permissions: BTreeSet<Permission>,
    },
    DeleteRole {
        role_id: String,
    },
    /// Set an account's roles (`member` alone clears its assignment).
    SetMemberRoles {
        account_id: String,
        roles: BTreeSet<String>,
    },
    /// Create an access token for `by`, whose scopes must be among what `by` may do.
    CreateToken {
        token_id: String,
        name: TokenName,
        scopes: BTreeSet<Permission>,
        by: Actor,
        now: i64,
        expires_at: i64,
        secret_hash: Sealed,
    },
    RevokeToken {
        token_id: String,
    },
    /// Invite someone by email with `role`; `by` may only hand out a role whose
    /// permissions it holds. `email` and `secret` are sealed under the key of
    /// `invitation_id`.
    Invite {
        invitation_id: String,
        email: Sealed,
        email_index: String,
        role: String,
        by: Actor,
        now: i64,
        expires_at: i64,
        secret: Sealed,
        locale: String,
    },
    RevokeInvitation {
        invitation_id: String,
    },
    /// An existing account of the tenant accepted an invitation (its proof was
    /// checked by the caller); a newcomer's acceptance lands with its
    /// registration instead (`invitation_accepted`).
    AcceptInvitation {
        invitation_id: String,
        account_id: String,
        now: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum AccessEvent {
    /// The tenant's access control began, with its first owner.
    AccessEstablished(AccessEstablished),
    RoleCreated(RoleChanged),
    RoleUpdated(RoleChanged),
    RoleDeleted(RoleDeleted),
    /// An account's roles changed (to exactly `roles`).
    MemberRolesChanged(MemberRolesChanged),
    /// An access token was created; `secret_hash` is the SHA-256 of its secret,
    /// sealed under the tenant's key.
    AccessTokenCreated(AccessTokenCreated),
    /// An access token stopped working.
    AccessTokenRevoked(AccessTokenRevoked),
    /// Someone was invited by mail; `email` and `secret` are sealed under the key
    /// of the account id the invitation reserves.
    MemberInvited(MemberInvited),
    /// An invitation was accepted by `account_id`, which now holds its role
    /// besides those it was given before (a newcomer holds exactly it).
    InvitationAccepted(InvitationAccepted),
    /// An invitation can no longer be accepted.
    InvitationRevoked(InvitationRevoked),
    /// An account left the tenant (it was erased) and holds nothing any more;
    /// the tokens it created stop working with it.
    /// It is appended with the erasure, in the same batch (see `member_removed`).
    MemberRemoved(MemberRemoved),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessEstablished {
    pub owner_account_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoleChanged {
    pub role_id: String,
    pub name: String,
    pub description: String,
    pub permissions: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoleDeleted {
    pub role_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberRolesChanged {
    pub account_id: String,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessTokenCreated {
    pub token_id: String,
    pub name: String,
    pub scopes: BTreeSet<String>,
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub secret_hash: Sealed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessTokenRevoked {
    pub token_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberInvited {
    pub invitation_id: String,
    pub email: Sealed,
    pub email_index: String,
    pub role: String,
    pub invited_by: String,
    /// Unix seconds.
    pub invited_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The random secret the invitation's link derives from.
    pub secret: Sealed,
    /// The language of the invitation mail.
    pub locale: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationAccepted {
    pub invitation_id: String,
    pub account_id: String,
    /// The role the invitation granted.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationRevoked {
    pub invitation_id: String,
}

/// A newcomer's `InvitationAccepted`, landing on the tenant's access aggregate
/// in the same atomic batch as the account's registration, expecting the access
/// history to end at `access_seq` (the state the invitation was checked on).
pub fn invitation_accepted(invitation_id: &str, account_id: &str, role: &str, access_seq: u64) -> Reservation {
    Reservation {
        aggregate: <Access as Aggregate>::NAME,
        key: ACCESS_ID.to_owned(),
        event_type: "InvitationAccepted",
        version: 1,
        data: serde_json::to_value(InvitationAccepted {
            invitation_id: invitation_id.to_owned(),
            account_id: account_id.to_owned(),
            role: role.to_owned(),
        })
        .expect("an InvitationAccepted serializes"),
        expected_seq: access_seq,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberRemoved {
    pub account_id: String,
}

/// The `MemberRemoved` that lands on the tenant's access aggregate in the same
/// atomic batch as an account's erasure, expecting the access history to end at
/// `access_seq` (the state the last-owner rule was checked on).
pub fn member_removed(account_id: &str, access_seq: u64) -> Reservation {
    Reservation {
        aggregate: <Access as Aggregate>::NAME,
        key: ACCESS_ID.to_owned(),
        event_type: "MemberRemoved",
        version: 1,
        data: serde_json::to_value(MemberRemoved { account_id: account_id.to_owned() })
            .expect("a MemberRemoved serializes"),
        expected_seq: access_seq,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("unknown permission: {0}")]
    UnknownPermission(String),
    #[error("a role name has 1 to 50 characters: letters, digits, spaces, '-' and '_'")]
    InvalidRoleName,
    #[error("a role with this name already exists")]
    RoleNameTaken,
    #[error("no such role")]
    UnknownRole,
    #[error("built-in roles cannot be changed or deleted")]
    BuiltInRole,
    #[error("the role is assigned to members or pending invitations; take it from them first")]
    RoleAssigned,
    #[error("the tenant's last owner must stay an owner")]
    LastOwner,
    #[error("a member holds at least one role")]
    NoRoles,
    #[error("a description has at most 500 characters and no control characters")]
    InvalidDescription,
    #[error("a token has at least one scope")]
    NoScopes,
    #[error("a token's scopes must be among the permissions of whoever creates it")]
    ScopesBeyondCreator,
    #[error("a token expires in the future, within 366 days")]
    InvalidExpiry,
    #[error("the tenant has 100 live access tokens; revoke one first")]
    TooManyTokens,
    #[error("no such access token")]
    UnknownToken,
    #[error("you may only invite with a role whose permissions you hold")]
    RoleBeyondInviter,
    #[error("this address has a pending invitation; revoke it first")]
    AlreadyInvited,
    #[error("the tenant has 500 pending invitations; revoke some first")]
    TooManyInvitations,
    #[error("no such invitation")]
    UnknownInvitation,
    #[error("the invitation is not valid, was used or has expired")]
    InvitationClosed,
}

impl DomainError for AccessError {
    fn code(&self) -> &'static str {
        match self {
            AccessError::RoleAssigned
            | AccessError::LastOwner
            | AccessError::RoleNameTaken
            | AccessError::TooManyTokens
            | AccessError::AlreadyInvited
            | AccessError::TooManyInvitations => "CONFLICT",
            AccessError::UnknownRole | AccessError::UnknownToken | AccessError::UnknownInvitation => "NOT_FOUND",
            AccessError::ScopesBeyondCreator | AccessError::RoleBeyondInviter => "FORBIDDEN",
            AccessError::UnknownPermission(_)
            | AccessError::InvalidRoleName
            | AccessError::BuiltInRole
            | AccessError::NoRoles
            | AccessError::InvalidDescription
            | AccessError::NoScopes
            | AccessError::InvalidExpiry
            | AccessError::InvitationClosed => "BAD_USER_INPUT",
        }
    }
}

pub struct Access;

/// The one `access` aggregate of a tenant has this id.
pub const ACCESS_ID: &str = "tenant";

fn names(ps: &BTreeSet<Permission>) -> BTreeSet<String> {
    ps.iter().map(|p| p.as_str().to_owned()).collect()
}

impl Aggregate for Access {
    const NAME: &'static str = "access";
    type State = AccessState;
    type Command = AccessCommand;
    type Event = AccessEvent;
    type Error = AccessError;

    fn decide(state: &AccessState, cmd: &AccessCommand) -> Result<Decision<AccessEvent>, AccessError> {
        let one = |e| Ok(Decision::events(vec![e]));
        match cmd {
            AccessCommand::Establish { owner_account_id } => {
                // Established once: a second request (a race) changes nothing.
                if state.owners() > 0 {
                    return Ok(Decision::events(Vec::new()));
                }
                one(AccessEvent::AccessEstablished(AccessEstablished { owner_account_id: owner_account_id.clone() }))
            }
            AccessCommand::CreateRole { role_id, name, description, permissions } => {
                if state.name_taken(name, None) {
                    return Err(AccessError::RoleNameTaken);
                }
                one(AccessEvent::RoleCreated(RoleChanged {
                    role_id: role_id.clone(),
                    name: name.as_str().to_owned(),
                    description: description.as_str().to_owned(),
                    permissions: names(permissions),
                }))
            }
            AccessCommand::UpdateRole { role_id, name, description, permissions } => {
                if builtin_permissions(role_id).is_some() {
                    return Err(AccessError::BuiltInRole);
                }
                if !state.roles.contains_key(role_id) {
                    return Err(AccessError::UnknownRole);
                }
                if state.name_taken(name, Some(role_id)) {
                    return Err(AccessError::RoleNameTaken);
                }
                one(AccessEvent::RoleUpdated(RoleChanged {
                    role_id: role_id.clone(),
                    name: name.as_str().to_owned(),
                    description: description.as_str().to_owned(),
                    permissions: names(permissions),
                }))
            }
            AccessCommand::DeleteRole { role_id } => {
                if builtin_permissions(role_id).is_some() {
                    return Err(AccessError::BuiltInRole);
                }
                if !state.roles.contains_key(role_id) {
                    return Err(AccessError::UnknownRole);
                }
                // Invitations that were never accepted or revoked hold it too, expired
                // or not: revoking them frees it.
                let invited =
                    state.invitations.values().any(|i| i.status == InvitationStatus::Pending && &i.role == role_id);
                if invited || state.assignments.values().any(|r| r.contains(role_id)) {
                    return Err(AccessError::RoleAssigned);
                }
                one(AccessEvent::RoleDeleted(RoleDeleted { role_id: role_id.clone() }))
            }
            AccessCommand::SetMemberRoles { account_id, roles } => {
                if roles.is_empty() {
                    return Err(AccessError::NoRoles);
                }
                if roles.iter().any(|r| !state.has_role(r)) {
                    return Err(AccessError::UnknownRole);
                }
                let was_owner = state.roles_of(account_id).contains(OWNER);
                if was_owner && !roles.contains(OWNER) && state.owners() <= 1 {
                    return Err(AccessError::LastOwner);
                }
                one(AccessEvent::MemberRolesChanged(MemberRolesChanged {
                    account_id: account_id.clone(),
                    roles: roles.clone(),
                }))
            }
            AccessCommand::CreateToken { token_id, name, scopes, by, now, expires_at, secret_hash } => {
                if scopes.is_empty() {
                    return Err(AccessError::NoScopes);
                }
                if *expires_at <= *now || *expires_at > now + MAX_TOKEN_LIFETIME_SECS {
                    return Err(AccessError::InvalidExpiry);
                }
                let (held, Some(created_by)) = (state.effective(by, *now), state.account_behind(by, *now)) else {
                    return Err(AccessError::ScopesBeyondCreator);
                };
                if !scopes.iter().all(|p| held.contains(p.as_str())) {
                    return Err(AccessError::ScopesBeyondCreator);
                }
                if state.live_tokens(*now) >= MAX_LIVE_TOKENS {
                    return Err(AccessError::TooManyTokens);
                }
                one(AccessEvent::AccessTokenCreated(AccessTokenCreated {
                    token_id: token_id.clone(),
                    name: name.as_str().to_owned(),
                    scopes: names(scopes),
                    created_by,
                    created_at: *now,
                    expires_at: *expires_at,
                    secret_hash: secret_hash.clone(),
                }))
            }
            AccessCommand::RevokeToken { token_id } => match state.tokens.get(token_id) {
                None => Err(AccessError::UnknownToken),
                // Revoked once; asking again changes nothing.
                Some(t) if t.revoked => Ok(Decision::events(Vec::new())),
                Some(_) => one(AccessEvent::AccessTokenRevoked(AccessTokenRevoked { token_id: token_id.clone() })),
            },
            AccessCommand::Invite { invitation_id, email, email_index, role, by, now, expires_at, secret, locale } => {
                if !state.has_role(role) {
                    return Err(AccessError::UnknownRole);
                }
                let (held, Some(invited_by)) = (state.effective(by, *now), state.account_behind(by, *now)) else {
                    return Err(AccessError::RoleBeyondInviter);
                };
                if !state.role_permissions(role).is_subset(&held) {
                    return Err(AccessError::RoleBeyondInviter);
                }
                if state.pending_invitations(*now).any(|i| &i.email_index == email_index) {
                    return Err(AccessError::AlreadyInvited);
                }
                if state.pending_invitations(*now).count() >= MAX_PENDING_INVITATIONS {
                    return Err(AccessError::TooManyInvitations);
                }
                if state.invitations.contains_key(invitation_id) {
                    return Err(AccessError::AlreadyInvited);
                }
                one(AccessEvent::MemberInvited(MemberInvited {
                    invitation_id: invitation_id.clone(),
                    email: email.clone(),
                    email_index: email_index.clone(),
                    role: role.clone(),
                    invited_by,
                    invited_at: *now,
                    expires_at: *expires_at,
                    secret: secret.clone(),
                    locale: locale.clone(),
                }))
            }
            AccessCommand::RevokeInvitation { invitation_id } => match state.invitations.get(invitation_id) {
                None => Err(AccessError::UnknownInvitation),
                Some(i) if i.status == InvitationStatus::Pending => {
                    one(AccessEvent::InvitationRevoked(InvitationRevoked { invitation_id: invitation_id.clone() }))
                }
                // Revoked once; asking again changes nothing (and lets the caller
                // destroy the invitation's key again, should that have failed).
                Some(i) if i.status == InvitationStatus::Revoked => Ok(Decision::events(Vec::new())),
                Some(_) => Err(AccessError::InvitationClosed),
            },
            AccessCommand::AcceptInvitation { invitation_id, account_id, now } => {
                let Some(invitation) = state.open_invitation(invitation_id, *now) else {
                    return Err(AccessError::InvitationClosed);
                };
                one(AccessEvent::InvitationAccepted(InvitationAccepted {
                    invitation_id: invitation_id.clone(),
                    account_id: account_id.clone(),
                    role: invitation.role.clone(),
                }))
            }
        }
    }

    fn evolve(mut state: AccessState, event: &AccessEvent) -> AccessState {
        match event {
            AccessEvent::AccessEstablished(e) => {
                state.assignments.insert(e.owner_account_id.clone(), BTreeSet::from([OWNER.to_owned()]));
            }
            AccessEvent::RoleCreated(e) | AccessEvent::RoleUpdated(e) => {
                state.roles.insert(
                    e.role_id.clone(),
                    RoleDef {
                        name: e.name.clone(),
                        description: e.description.clone(),
                        permissions: e.permissions.clone(),
                    },
                );
            }
            AccessEvent::RoleDeleted(e) => {
                state.roles.remove(&e.role_id);
            }
            AccessEvent::MemberRolesChanged(e) => {
                if e.roles.len() == 1 && e.roles.contains(MEMBER) {
                    state.assignments.remove(&e.account_id);
                } else {
                    state.assignments.insert(e.account_id.clone(), e.roles.clone());
                }
            }
            AccessEvent::MemberRemoved(e) => {
                state.assignments.remove(&e.account_id);
                for t in state.tokens.values_mut().filter(|t| t.created_by == e.account_id) {
                    t.revoked = true;
                }
            }
            AccessEvent::AccessTokenCreated(e) => {
                state.tokens.insert(
                    e.token_id.clone(),
                    TokenDef {
                        name: e.name.clone(),
                        scopes: e.scopes.clone(),
                        created_by: e.created_by.clone(),
                        expires_at: e.expires_at,
                        revoked: false,
                    },
                );
            }
            AccessEvent::AccessTokenRevoked(e) => {
                if let Some(t) = state.tokens.get_mut(&e.token_id) {
                    t.revoked = true;
                }
            }
            AccessEvent::MemberInvited(e) => {
                state.invitations.insert(
                    e.invitation_id.clone(),
                    InvitationDef {
                        email: e.email.clone(),
                        email_index: e.email_index.clone(),
                        role: e.role.clone(),
                        invited_by: e.invited_by.clone(),
                        expires_at: e.expires_at,
                        secret: e.secret.clone(),
                        status: InvitationStatus::Pending,
                    },
                );
            }
            AccessEvent::InvitationAccepted(e) => {
                // The invited role joins the roles the account was given (none for a
                // newcomer, who then holds exactly it).
                let mut roles = state.assignments.get(&e.account_id).cloned().unwrap_or_default();
                if let Some(i) = state.invitations.get_mut(&e.invitation_id) {
                    i.status = InvitationStatus::Accepted;
                    roles.insert(e.role.clone());
                    if roles.len() == 1 && roles.contains(MEMBER) {
                        state.assignments.remove(&e.account_id);
                    } else {
                        state.assignments.insert(e.account_id.clone(), roles);
                    }
                }
            }
            AccessEvent::InvitationRevoked(e) => {
                if let Some(i) = state.invitations.get_mut(&e.invitation_id) {
                    i.status = InvitationStatus::Revoked;
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::{check, replay};

    fn established() -> AccessEvent {
        AccessEvent::AccessEstablished(AccessEstablished { owner_account_id: "o1".into() })
    }

    fn perms(ps: &[&str]) -> BTreeSet<Permission> {
        ps.iter().map(|p| Permission::parse(p).unwrap()).collect()
    }

    fn create(id: &str, name: &str, ps: &[&str]) -> AccessCommand {
        AccessCommand::CreateRole {
            role_id: id.into(),
            name: RoleName::parse(name).unwrap(),
            description: RoleDescription::default(),
            permissions: perms(ps),
        }
    }

    fn created(id: &str, name: &str, ps: &[&str]) -> AccessEvent {
        AccessEvent::RoleCreated(RoleChanged {
            role_id: id.into(),
            name: name.into(),
            description: String::new(),
            permissions: ps.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    fn set(account: &str, roles: &[&str]) -> AccessCommand {
        AccessCommand::SetMemberRoles {
            account_id: account.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn the_catalog_names_are_unique_and_in_the_seeds_form() {
        let mut seen = BTreeSet::new();
        for (p, description) in CATALOG {
            assert!(seen.insert(*p), "{p} twice");
            let (action, resource) = p.split_once('_').unwrap_or_else(|| panic!("{p} is not action_resource"));
            assert!(!action.is_empty() && !resource.is_empty() && !description.is_empty(), "{p}");
            assert!(p.chars().all(|c| c.is_ascii_lowercase() || "_-:".contains(c)), "{p}");
        }
        assert!(Permission::parse("update_billing:card").is_ok());
        for bad in ["", "read_everything", "READ_USERS", "read_users ", "*"] {
            assert!(Permission::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn built_in_roles_nest_owner_above_admin_above_member() {
        let owner = builtin_permissions(OWNER).unwrap();
        let admin = builtin_permissions(ADMIN).unwrap();
        let member = builtin_permissions(MEMBER).unwrap();
        assert_eq!(owner.len(), CATALOG.len());
        assert!(admin.is_subset(&owner) && member.is_subset(&admin));
        assert!(!admin.contains(&Permission::parse("delete_tenant").unwrap()));
        assert!(builtin_permissions("custom").is_none());
    }

    #[test]
    fn custom_roles_have_unique_names_and_grant_their_permissions() {
        let history = vec![established(), created("r1", "Support", &["read_users"])];
        check::<Access>(&history, create("r2", "SUPPORT", &[]), Err(AccessError::RoleNameTaken));
        check::<Access>(&history, create("r2", "Admin", &[]), Err(AccessError::RoleNameTaken));
        let assigned = AccessEvent::MemberRolesChanged(MemberRolesChanged {
            account_id: "a1".into(),
            roles: BTreeSet::from(["r1".to_owned()]),
        });
        check::<Access>(&history, set("a1", &["r1"]), Ok(vec![assigned.clone()]));
        let state = replay::<Access>(&[history.clone(), vec![assigned]].concat());
        assert_eq!(state.permissions_of("a1"), BTreeSet::from(["read_users".to_owned()]));
        assert!(state.permissions_of("nobody").contains("read_tenant"), "the default is member");
        assert!(state.permissions_of("o1").contains("delete_tenant"), "the creator owns the tenant");
    }

    #[test]
    fn an_assigned_role_cannot_be_deleted_and_built_in_roles_cannot_change() {
        let history = vec![
            established(),
            created("r1", "Support", &["read_users"]),
            AccessEvent::MemberRolesChanged(MemberRolesChanged {
                account_id: "a1".into(),
                roles: BTreeSet::from(["r1".to_owned()]),
            }),
        ];
        check::<Access>(&history, AccessCommand::DeleteRole { role_id: "r1".into() }, Err(AccessError::RoleAssigned));
        check::<Access>(&history, AccessCommand::DeleteRole { role_id: ADMIN.into() }, Err(AccessError::BuiltInRole));
        check::<Access>(&history, AccessCommand::DeleteRole { role_id: "r9".into() }, Err(AccessError::UnknownRole));
        check::<Access>(&history, set("a1", &["r9"]), Err(AccessError::UnknownRole));
        check::<Access>(&history, set("a1", &[]), Err(AccessError::NoRoles));
    }

    #[test]
    fn the_last_owner_can_be_neither_demoted_nor_forgotten() {
        let history = vec![established()];
        check::<Access>(&history, set("o1", &[ADMIN]), Err(AccessError::LastOwner));
        assert!(replay::<Access>(&history).is_last_owner("o1"));
        let second = AccessEvent::MemberRolesChanged(MemberRolesChanged {
            account_id: "o2".into(),
            roles: BTreeSet::from([OWNER.to_owned()]),
        });
        let two = [history, vec![second]].concat();
        let demoted = AccessEvent::MemberRolesChanged(MemberRolesChanged {
            account_id: "o1".into(),
            roles: BTreeSet::from([ADMIN.to_owned()]),
        });
        check::<Access>(&two, set("o1", &[ADMIN]), Ok(vec![demoted]));
        assert!(!replay::<Access>(&two).is_last_owner("o1"));
        // A removed member holds nothing, and the other owner is the last one again.
        let removed = AccessEvent::MemberRemoved(MemberRemoved { account_id: "o1".into() });
        let left = replay::<Access>(&[two, vec![removed.clone()]].concat());
        assert_eq!(left.roles_of("o1"), BTreeSet::from([MEMBER.to_owned()]));
        assert!(left.is_last_owner("o2"));
        // The reservation carries exactly the event's data.
        let r = member_removed("o1", 7);
        assert_eq!(r.expected_seq, 7);
        let tagged = serde_json::json!({ "type": r.event_type, "data": r.data });
        assert_eq!(serde_json::from_value::<AccessEvent>(tagged).unwrap(), removed);
    }

    fn token(id: &str, by: Actor, ps: &[&str], now: i64) -> AccessCommand {
        AccessCommand::CreateToken {
            token_id: id.into(),
            name: TokenName::parse("ci").unwrap(),
            scopes: perms(ps),
            by,
            now,
            expires_at: now + 3600,
            secret_hash: Sealed::opaque_for_tests("h"),
        }
    }

    #[test]
    fn tokens_do_no_more_than_their_scopes_and_their_creator() {
        let support = created("r1", "Support", &["read_users", "create_access-token"]);
        let assigned = AccessEvent::MemberRolesChanged(MemberRolesChanged {
            account_id: "a1".into(),
            roles: BTreeSet::from(["r1".to_owned()]),
        });
        let history = vec![established(), support, assigned];
        let a1 = Actor::Account("a1".into());
        // Beyond the creator's permissions, empty, or expiring wrongly: refused.
        check::<Access>(&history, token("t1", a1.clone(), &["read_audit"], 100), Err(AccessError::ScopesBeyondCreator));
        check::<Access>(&history, token("t1", a1.clone(), &[], 100), Err(AccessError::NoScopes));
        let mut late = token("t1", a1.clone(), &["read_users"], 100);
        if let AccessCommand::CreateToken { expires_at, .. } = &mut late {
            *expires_at = 100 + MAX_TOKEN_LIFETIME_SECS + 1;
        }
        check::<Access>(&history, late, Err(AccessError::InvalidExpiry));

        let d = Access::decide(&replay::<Access>(&history), &token("t1", a1.clone(), &["read_users"], 100)).unwrap();
        let live = [history.clone(), d.events].concat();
        let state = replay::<Access>(&live);
        let t1 = Actor::Token("t1".into());
        assert_eq!(state.effective(&t1, 200), BTreeSet::from(["read_users".to_owned()]));
        assert!(state.effective(&t1, 100 + 3600).is_empty(), "expired");
        assert!(state.effective(&Actor::Token("t9".into()), 200).is_empty(), "unknown");
        // A token creates tokens within its own scopes, on its creator's behalf.
        let beyond = token("t2", t1.clone(), &["create_access-token"], 200);
        check::<Access>(&live, beyond, Err(AccessError::ScopesBeyondCreator));
        let d = Access::decide(&state, &token("t2", t1.clone(), &["read_users"], 200)).unwrap();
        assert!(matches!(&d.events[..], [AccessEvent::AccessTokenCreated(c)] if c.created_by == "a1"));

        // The creator loses the role: the token loses the permission with it.
        let demoted = AccessEvent::MemberRolesChanged(MemberRolesChanged {
            account_id: "a1".into(),
            roles: BTreeSet::from([MEMBER.to_owned()]),
        });
        assert!(replay::<Access>(&[live.clone(), vec![demoted]].concat()).effective(&t1, 200).is_empty());

        // Revoked, or its creator removed: it does nothing.
        let revoked =
            [live.clone(), vec![AccessEvent::AccessTokenRevoked(AccessTokenRevoked { token_id: "t1".into() })]]
                .concat();
        assert!(replay::<Access>(&revoked).effective(&t1, 200).is_empty());
        check::<Access>(&revoked, AccessCommand::RevokeToken { token_id: "t1".into() }, Ok(vec![]));
        check::<Access>(&live, AccessCommand::RevokeToken { token_id: "t9".into() }, Err(AccessError::UnknownToken));
        let removed = [live, vec![AccessEvent::MemberRemoved(MemberRemoved { account_id: "a1".into() })]].concat();
        assert!(replay::<Access>(&removed).effective(&t1, 200).is_empty());
    }

    fn invite(id: &str, index: &str, role: &str, by: &str, now: i64) -> AccessCommand {
        AccessCommand::Invite {
            invitation_id: id.into(),
            email: Sealed::opaque_for_tests("e"),
            email_index: index.into(),
            role: role.into(),
            by: Actor::Account(by.into()),
            now,
            expires_at: now + 100,
            secret: Sealed::opaque_for_tests("s"),
            locale: "en".into(),
        }
    }

    #[test]
    fn invitations_grant_no_more_than_the_inviter_holds_and_are_used_once() {
        let support = created("r1", "Support", &["read_users"]);
        let admin = AccessEvent::MemberRolesChanged(MemberRolesChanged {
            account_id: "ad".into(),
            roles: BTreeSet::from([ADMIN.to_owned()]),
        });
        let history = vec![established(), support, admin];
        // An admin may not invite an owner; nobody invites with an unknown role.
        check::<Access>(&history, invite("i1", "x", OWNER, "ad", 10), Err(AccessError::RoleBeyondInviter));
        check::<Access>(&history, invite("i1", "x", "r9", "o1", 10), Err(AccessError::UnknownRole));
        let d = Access::decide(&replay::<Access>(&history), &invite("i1", "x", "r1", "ad", 10)).unwrap();
        let invited = [history.clone(), d.events].concat();
        // One pending invitation per address; the role cannot be deleted meanwhile.
        check::<Access>(&invited, invite("i2", "x", MEMBER, "o1", 20), Err(AccessError::AlreadyInvited));
        check::<Access>(&invited, AccessCommand::DeleteRole { role_id: "r1".into() }, Err(AccessError::RoleAssigned));
        let state = replay::<Access>(&invited);
        assert!(state.open_invitation("i1", 50).is_some() && state.open_invitation("i1", 110).is_none());

        // Accepted by a newcomer (as a registration's reservation does): it holds exactly the role.
        let r = invitation_accepted("i1", "n1", "r1", 42);
        assert_eq!((r.expected_seq, r.event_type), (42, "InvitationAccepted"));
        let accepted: AccessEvent =
            serde_json::from_value(serde_json::json!({ "type": r.event_type, "data": r.data })).unwrap();
        let used = [invited.clone(), vec![accepted]].concat();
        let state = replay::<Access>(&used);
        assert_eq!(state.roles_of("n1"), BTreeSet::from(["r1".to_owned()]));
        assert!(state.open_invitation("i1", 50).is_none());
        let again = AccessCommand::AcceptInvitation { invitation_id: "i1".into(), account_id: "n2".into(), now: 50 };
        check::<Access>(&used, again, Err(AccessError::InvitationClosed));
        check::<Access>(
            &used,
            AccessCommand::RevokeInvitation { invitation_id: "i1".into() },
            Err(AccessError::InvitationClosed),
        );

        // An existing account adds the role to those it was given.
        let d = Access::decide(&replay::<Access>(&used), &invite("i3", "y", "r1", "o1", 60)).unwrap();
        let both = [used, d.events].concat();
        let accept = AccessCommand::AcceptInvitation { invitation_id: "i3".into(), account_id: "ad".into(), now: 70 };
        let d = Access::decide(&replay::<Access>(&both), &accept).unwrap();
        let state = replay::<Access>(&[both.clone(), d.events].concat());
        assert_eq!(state.roles_of("ad"), BTreeSet::from([ADMIN.to_owned(), "r1".to_owned()]));

        // Revoked: closed, and revoking again changes nothing.
        let revoke = AccessCommand::RevokeInvitation { invitation_id: "i3".into() };
        let d = Access::decide(&replay::<Access>(&both), &revoke).unwrap();
        let revoked = [both, d.events].concat();
        check::<Access>(&revoked, revoke, Ok(vec![]));
        assert!(replay::<Access>(&revoked).open_invitation("i3", 70).is_none());
        check::<Access>(
            &revoked,
            AccessCommand::RevokeInvitation { invitation_id: "i9".into() },
            Err(AccessError::UnknownInvitation),
        );
    }
}
