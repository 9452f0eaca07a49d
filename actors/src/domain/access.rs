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

use crate::domain::aggregate::{Aggregate, Decision, DomainError};

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
    ("publish_messages", "publish push messages to the tenant's clients"),
    ("subscribe_messages", "receive the tenant's push messages"),
];

/// A permission of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission(&'static str);

impl Permission {
    pub fn parse(raw: &str) -> Result<Self, AccessError> {
        CATALOG.iter().find(|(p, _)| *p == raw).map(|(p, _)| Self(p)).ok_or_else(|| {
            // Bounded and printable: the name goes back to the caller.
            let shown: String = raw.chars().filter(|c| !c.is_control()).take(64).collect();
            AccessError::UnknownPermission(shown)
        })
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    pub fn all() -> impl Iterator<Item = Permission> {
        CATALOG.iter().map(|(p, _)| Permission(p))
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
        MEMBER => Some(Permission::all().filter(|p| MEMBER_PERMISSIONS.contains(&p.as_str())).collect()),
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
        match uuid::Uuid::try_parse(raw) {
            Ok(u) if u.hyphenated().to_string() == raw => Ok(Self(raw.to_owned())),
            _ => Err(AccessError::UnknownRole),
        }
    }

    /// The id of a role created by command `seed` (a retry gets the same one).
    pub fn derived(seed: &str) -> Self {
        Self(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string())
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
}

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
        let mut out = BTreeSet::new();
        for role in self.roles_of(account_id) {
            match builtin_permissions(&role) {
                Some(ps) => out.extend(ps.iter().map(|p| p.as_str().to_owned())),
                None => out.extend(self.roles.get(&role).into_iter().flat_map(|r| r.permissions.iter().cloned())),
            }
        }
        out
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
    /// An account left the tenant: it holds nothing any more.
    ForgetMember {
        account_id: String,
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
    #[error("the role is assigned to members; take it from them first")]
    RoleAssigned,
    #[error("the tenant's last owner must stay an owner")]
    LastOwner,
    #[error("a member holds at least one role")]
    NoRoles,
    #[error("a description has at most 500 characters and no control characters")]
    InvalidDescription,
}

impl DomainError for AccessError {
    fn code(&self) -> &'static str {
        match self {
            AccessError::RoleAssigned | AccessError::LastOwner | AccessError::RoleNameTaken => "CONFLICT",
            AccessError::UnknownRole => "NOT_FOUND",
            AccessError::UnknownPermission(_)
            | AccessError::InvalidRoleName
            | AccessError::BuiltInRole
            | AccessError::NoRoles
            | AccessError::InvalidDescription => "BAD_USER_INPUT",
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
                if state.assignments.values().any(|r| r.contains(role_id)) {
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
            AccessCommand::ForgetMember { account_id } => {
                let held = state.roles_of(account_id);
                if held.contains(OWNER) && state.owners() <= 1 {
                    return Err(AccessError::LastOwner);
                }
                if !state.assignments.contains_key(account_id) {
                    return Ok(Decision::events(Vec::new()));
                }
                one(AccessEvent::MemberRolesChanged(MemberRolesChanged {
                    account_id: account_id.clone(),
                    roles: BTreeSet::from([MEMBER.to_owned()]),
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
        check::<Access>(&history, AccessCommand::ForgetMember { account_id: "o1".into() }, Err(AccessError::LastOwner));
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
    }
}
