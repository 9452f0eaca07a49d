//! The permission matrix: every root field of the API, called by every kind of
//! caller, gets exactly what the catalog says, and a refused mutation appends
//! nothing to the event log.
//!
//! The catalog is `ROOT_FIELDS` in `node/src/graphql/permissions.rs` (what each
//! root field needs) together with the permission sets of the built-in roles in
//! `actors::domain::access`. The expected outcome of every call is derived from
//! those and from the caller's grants by `expected`, which restates the rules of
//! `permissions::allowed` and of the edge; nothing is written down per caller or
//! per field. The table of rows below only says how to call each field.
//!
//! The callers are the tenant's owner, an admin, a plain member, a member whose
//! only role is a custom one, an access token whose scopes are every permission
//! of its creator (so it holds the scope of every field), an access token whose
//! only scope is a permission no field needs, an anonymous caller, a signed-in
//! caller of another tenant, and the platform administrator (the only caller
//! that may pass the `PlatformAdmin` fields, so without it those would only ever
//! be seen refused).
//!
//! "Allowed" means that the guard let the call through: the answer carries no
//! `FORBIDDEN` or `UNAUTHENTICATED` code. It may hold data or another typed
//! error of the resolver (`NOT_FOUND`, `BAD_USER_INPUT`, `CONFLICT`, ...), which
//! is how the rows keep one node and one tenant usable for the whole matrix: an
//! allowed caller gets inputs that fail after the guard, or that change nothing
//! that a later row relies on. "Refused" means exactly the expected code.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use actors::domain::access::{ADMIN, CATALOG, MEMBER, OWNER, builtin_permissions};
use async_graphql::parser::types::{OperationType, Selection};
use canopy_node::edge::limits::Limit;
use canopy_node::graphql::permissions::{Needs, ROOT_FIELDS, needs};
use serde_json::{Value, json};

use crate::harness::*;

/// The widths of the printed matrix's first column and of its cells.
const NAME: usize = 30;
const CELL: usize = 20;

/// The tenant every call goes to.
const TENANT: &str = "acme";
/// The tenant of the caller that does not belong to `TENANT`.
const OTHER_TENANT: &str = "globex";
/// The password `TestNode::tenant` gives the owners it creates.
const OWNER_PASSWORD: &str = "owner-password";
/// The password of every account the matrix registers.
const PASSWORD: &str = "matrix-password";
/// The permissions of the custom role: a small set that grants some fields and
/// not others, and that is no built-in role's.
const CUSTOM_ROLE: [&str; 2] = ["read_users", "invite_members"];
/// A well-formed id that names nothing: where a field takes an id, an allowed
/// caller gets past the guard and the input checks, reaches the actor (which
/// checks the caller's grants once more) and gets `NOT_FOUND`, and nothing is
/// changed.
const UNKNOWN_ID: &str = "00000000-0000-4000-8000-000000000000";

/// How a row is called, beyond its document and variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Nothing: the call changes nothing a later call relies on.
    Plain,
    /// The call consumes a refresh token: it gets an unused one of the caller's
    /// scope (the tenant's throwaway account, or the platform administrator),
    /// because an unknown or used one is answered `UNAUTHENTICATED` by the
    /// resolver, which would look like a refusal.
    RefreshToken,
    /// The call may end the caller's sessions (`logout`, `logoutEverywhere`,
    /// which take no input that could make them fail): every caller that uses
    /// a session signs in again after the row.
    EndsSessions,
}

/// What a row's variables may refer to.
struct Env {
    /// The plain member's account id.
    member_id: String,
    /// An account of the caller's scope that `login` may sign in: the tenant's
    /// throwaway account, or the platform administrator on the platform.
    login_email: String,
    login_password: String,
    /// An unused refresh token of the caller's scope (`Setup::RefreshToken`).
    refresh_token: String,
}

impl Env {
    /// Values of the right shapes, for checking the documents without a node.
    fn placeholder() -> Self {
        Self {
            member_id: UNKNOWN_ID.to_owned(),
            login_email: "someone@example.com".to_owned(),
            login_password: PASSWORD.to_owned(),
            refresh_token: "placeholder".to_owned(),
        }
    }
}

/// One root field: its type, its name, a valid document that calls it alone,
/// and its variables.
struct Row {
    parent: &'static str,
    field: &'static str,
    document: &'static str,
    variables: fn(&Env) -> Value,
    setup: Setup,
}

impl Row {
    fn query(field: &'static str, document: &'static str) -> Self {
        Self { parent: "Query", field, document, variables: |_| json!({}), setup: Setup::Plain }
    }

    fn mutation(field: &'static str, document: &'static str) -> Self {
        Self { parent: "Mutation", field, document, variables: |_| json!({}), setup: Setup::Plain }
    }

    fn vars(self, variables: fn(&Env) -> Value) -> Self {
        Self { variables, ..self }
    }

    fn setup(self, setup: Setup) -> Self {
        Self { setup, ..self }
    }
}

/// One row per root field. A field added to `ROOT_FIELDS` fails the test until
/// it has a row here, and a row for a field `ROOT_FIELDS` does not name fails it
/// too. A new row is one line: the document must be valid for the schema (the
/// test checks it), and an allowed caller must fail after the guard or change
/// nothing later rows rely on, with a code other than `FORBIDDEN` and
/// `UNAUTHENTICATED` (which would read as a refusal).
fn rows() -> Vec<Row> {
    vec![
        // Queries read and change nothing.
        Row::query("me", "{ me { id } }"),
        Row::query("users", "{ users(first: 1) { totalCount } }"),
        Row::query("roles", "{ roles { id } }"),
        Row::query("sessions", "{ sessions { id } }"),
        Row::query("tenant", "{ tenant { slug } }"),
        Row::query("tenants", "{ tenants { slug } }"),
        Row::query("accessTokens", "{ accessTokens { id } }"),
        Row::query("invitations", "{ invitations { id } }"),
        Row::query("auditLog", "{ auditLog(first: 1) { edges { node { action } } } }"),
        // A malformed address: no account is created.
        Row::mutation("register", "mutation($input: RegisterInput!) { register(input: $input) { token } }").vars(|_| {
            json!({ "input": { "email": "not-an-email", "password": PASSWORD, "firstname": "Ada", "lastname": "Lovelace" } })
        }),
        // Real credentials: a wrong password is answered `UNAUTHENTICATED`, which
        // would look like a refusal. The throwaway account's new sessions harm nothing.
        Row::mutation("login", "mutation($input: LoginInput!) { login(input: $input) { token } }")
            .vars(|e| json!({ "input": { "email": e.login_email, "password": e.login_password } })),
        Row::mutation("refreshSession", "mutation($t: String!) { refreshSession(input: {refreshToken: $t}) { refreshToken } }")
            .vars(|e| json!({ "t": e.refresh_token }))
            .setup(Setup::RefreshToken),
        // An address with no account: the answer is `true` and nothing is mailed.
        Row::mutation("requestPasswordReset", "mutation { requestPasswordReset(input: {email: \"nobody@nowhere.test\"}) }"),
        Row::mutation("resetPassword", "mutation { resetPassword(input: {token: \"not-a-link-token\", password: \"long-enough-password\"}) }"),
        Row::mutation("verifyEmail", "mutation { verifyEmail(input: {token: \"not-a-link-token\"}) { id } }"),
        // A blank name: the profile stays as it is.
        Row::mutation("updateProfile", "mutation { updateProfile(input: {firstname: \" \", lastname: \"Lovelace\"}) { id } }"),
        Row::mutation("changeEmail", "mutation { changeEmail(input: {newEmail: \"not-an-email\", password: \"long-enough-password\"}) }"),
        // A password too short to be anyone's: refused before any hashing.
        Row::mutation("changePassword", "mutation { changePassword(input: {currentPassword: \"short\", newPassword: \"long-enough-password\"}) }"),
        // No input to make it fail: an allowed caller gets a new verification
        // mail (or `RATE_LIMITED`, or a typed error for a verified address), which
        // later rows do not depend on.
        Row::mutation("resendVerification", "mutation { resendVerification }"),
        // A malformed password: a right one would erase the caller, which later rows use.
        Row::mutation("deleteAccount", "mutation { deleteAccount(input: {password: \"short\"}) }"),
        Row::mutation("logout", "mutation { logout }").setup(Setup::EndsSessions),
        Row::mutation("logoutEverywhere", "mutation { logoutEverywhere }").setup(Setup::EndsSessions),
        Row::mutation("revokeSession", "mutation($id: ID!) { revokeSession(id: $id) }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("removeUser", "mutation($id: ID!) { removeUser(id: $id) }").vars(|_| json!({ "id": UNKNOWN_ID })),
        // The name of a built-in role: `CONFLICT` from the actor, no role is created.
        Row::mutation("createRole", "mutation { createRole(input: {name: \"Admin\", permissions: []}) { id } }"),
        Row::mutation("updateRole", "mutation($id: ID!) { updateRole(input: {id: $id, name: \"Renamed\", permissions: []}) { id } }")
            .vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("deleteRole", "mutation($id: ID!) { deleteRole(id: $id) }").vars(|_| json!({ "id": UNKNOWN_ID })),
        // No roles at all: the actor answers `BAD_USER_INPUT`, the member keeps its role.
        Row::mutation("changeMemberRole", "mutation($u: ID!) { changeMemberRole(input: {userId: $u, roles: []}) }")
            .vars(|e| json!({ "u": e.member_id })),
        // No scopes: the actor answers `BAD_USER_INPUT`, no token is created.
        Row::mutation("createAccessToken", "mutation { createAccessToken(input: {name: \"matrix\", scopes: []}) { secret } }"),
        Row::mutation("revokeAccessToken", "mutation($id: ID!) { revokeAccessToken(id: $id) }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("inviteMember", "mutation { inviteMember(input: {email: \"not-an-email\", role: \"member\"}) { id } }"),
        Row::mutation("revokeInvitation", "mutation($id: ID!) { revokeInvitation(id: $id) }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("acceptInvitation", "mutation { acceptInvitation(input: {token: \"not-a-link-token\", password: \"long-enough-password\", firstname: \"Ada\", lastname: \"Lovelace\"}) { token } }"),
        // A malformed slug: no tenant is created.
        Row::mutation("createTenant", "mutation { createTenant(input: {slug: \"-\", name: \"Matrix\", ownerEmail: \"owner@matrix.test\", ownerPassword: \"long-enough-password\"}) { slug } }"),
        // The tenant's lifecycle. A blank name and a malformed slug fail after
        // the guard: a caller allowed to rename, suspend or delete the tenant
        // must not, since every later call goes to it.
        Row::mutation("updateTenant", "mutation { updateTenant(input: {name: \" \"}) { slug } }"),
        Row::mutation("suspendTenant", "mutation { suspendTenant(slug: \"-\") { slug } }"),
        Row::mutation("resumeTenant", "mutation { resumeTenant(slug: \"-\") { slug } }"),
        Row::mutation("deleteTenant", "mutation { deleteTenant(input: {slug: \"-\", password: \"long-enough-password\"}) }"),
        // Modules: the catalog and the tenant's list read; each change names a
        // module the tenant does not hold (or a malformed one), so nothing changes.
        Row::query("modules", "{ modules { name } }"),
        Row::query("tenantModules", "{ tenantModules { name } }"),
        Row::mutation("subscribeModule", "mutation { subscribeModule(input: {name: \"Not-A-Module\", version: \"v1\"}) { applied } }"),
        Row::mutation("unsubscribeModule", "mutation { unsubscribeModule(name: \"nope\") { applied } }"),
        Row::mutation("upgradeModule", "mutation { upgradeModule(input: {name: \"nope\", to: \"v2\"}) { applied } }"),
        Row::mutation("migrate", "mutation { migrate(input: {module: \"nope\", dryRun: true}) { applied } }"),
        Row::mutation("seedModules", "mutation { seedModules(module: \"nope\") { applied } }"),
        Row::mutation("deseedModules", "mutation { deseedModules(module: \"nope\") { applied } }"),
        // Backups: reading them changes nothing; taking one is bounded by the
        // daily limit, so every allowed caller but the first gets `LIMIT_EXCEEDED`
        // and later rows see one backup at most. Limits and restores name a
        // malformed slug.
        Row::query("backups", "{ backups { id } }"),
        Row::query("backupLimits", "{ backupLimits { maxBackups } }"),
        Row::mutation("backupTenant", "mutation { backupTenant { id } }"),
        Row::mutation("setBackupLimits", "mutation { setBackupLimits(input: {slug: \"-\", perDayBackups: 1, maxBackups: 1}) { maxBackups } }"),
        Row::mutation("restoreTenant", "mutation { restoreTenant(input: {backupId: \"00000000-0000-4000-8000-000000000000\", slug: \"-\"}) { slug } }"),
        // Push: a publish appends a message nobody relies on; the others name
        // an unknown event type or a malformed date.
        Row::query("messages", "{ messages(topic: \"matrix\") { id } }"),
        Row::query("pushForwarding", "{ pushForwarding }"),
        Row::mutation("publishMessage", "mutation { publishMessage(input: {topic: \"matrix\", payload: \"x\"}) { id } }"),
        Row::mutation("setPushForwarding", "mutation { setPushForwarding(types: [\"NoSuchEvent\"]) }"),
        Row::mutation("issuePushCredentials", "mutation { issuePushCredentials(input: {expiresAt: \"soon\"}) { password } }"),
        // Webhooks: reading changes nothing; every change names an unknown
        // webhook or delivery, or a URL that is not http(s).
        Row::query("webhooks", "{ webhooks { id } }"),
        Row::query("webhookDeliveries", "query($id: ID!) { webhookDeliveries(webhookId: $id) { id } }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("createWebhook", "mutation { createWebhook(input: {name: \"m\", url: \"ftp://matrix.test/\", eventTypes: [\"*\"]}) { secret } }"),
        Row::mutation("updateWebhook", "mutation($id: ID!) { updateWebhook(input: {id: $id, name: \"m\"}) { id } }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("deleteWebhook", "mutation($id: ID!) { deleteWebhook(id: $id) }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("rotateWebhookSecret", "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret } }").vars(|_| json!({ "id": UNKNOWN_ID })),
        Row::mutation("redeliver", "mutation { redeliver(deliveryId: \"msg_matrix\") { deliveryId } }"),
    ]
}

/// What a caller is, as far as the guard is concerned.
#[derive(Debug)]
enum Kind {
    /// No credential at all.
    Anonymous,
    /// A signed-in account of `TENANT` holding these permissions.
    Account(BTreeSet<String>),
    /// An access token of `TENANT` whose effective scopes (its scopes as far as
    /// its creator holds them) are these.
    Token(BTreeSet<String>),
    /// A signed-in account of another tenant, calling with `TENANT`'s header.
    OtherTenant,
    /// The platform administrator, on the platform (no tenant named).
    PlatformAdmin,
}

/// What a call should get.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Refused(&'static str),
}

/// The outcome the catalog promises `kind` for a field that needs `needs`: the
/// rules of `permissions::allowed`, and before them the edge's.
fn expected(kind: &Kind, needs: Needs) -> Outcome {
    use Outcome::{Allowed, Refused};
    match (kind, needs) {
        // The edge refuses a session token issued for another tenant than the
        // one the request names before GraphQL runs, whatever the field.
        (Kind::OtherTenant, _) => Refused("FORBIDDEN"),
        (_, Needs::Public) => Allowed,
        // Nobody signed in: every other field asks to sign in first.
        (Kind::Anonymous, _) => Refused("UNAUTHENTICATED"),
        // An access token acts for its tenant, never as an account, and may use
        // exactly the fields whose permission its effective scopes include.
        (Kind::Token(scopes), Needs::Permission(p)) => {
            if scopes.contains(p) {
                Allowed
            } else {
                Refused("FORBIDDEN")
            }
        }
        // A field for members only (it needs a member's password) refuses every token.
        (Kind::Token(_), Needs::SignedIn | Needs::Member(_) | Needs::PlatformAdmin) => Refused("FORBIDDEN"),
        // On the platform, an administrator may use every field.
        (Kind::PlatformAdmin, _) => Allowed,
        (Kind::Account(_), Needs::SignedIn) => Allowed,
        (Kind::Account(held), Needs::Permission(p) | Needs::Member(p)) => {
            if held.contains(p) {
                Allowed
            } else {
                Refused("FORBIDDEN")
            }
        }
        (Kind::Account(_), Needs::PlatformAdmin) => Refused("FORBIDDEN"),
    }
}

/// The permission a field needs, if it needs one.
fn permission_of(needs: Needs) -> Option<&'static str> {
    match needs {
        Needs::Permission(p) | Needs::Member(p) => Some(p),
        Needs::Public | Needs::SignedIn | Needs::PlatformAdmin => None,
    }
}

/// What an answer says about the guard: refused with the code of its first
/// `FORBIDDEN` or `UNAUTHENTICATED` error, allowed otherwise.
fn outcome(response: &Value) -> Outcome {
    let codes = response["errors"].as_array().into_iter().flatten().filter_map(|e| e["extensions"]["code"].as_str());
    for code in codes {
        match code {
            "FORBIDDEN" => return Outcome::Refused("FORBIDDEN"),
            "UNAUTHENTICATED" => return Outcome::Refused("UNAUTHENTICATED"),
            _ => {}
        }
    }
    Outcome::Allowed
}

/// A session of an account: what it signs in with, and its current token.
struct Session {
    tenant: Option<&'static str>,
    email: String,
    password: String,
    token: String,
}

/// How a caller presents itself.
enum Auth {
    Anonymous,
    Session(Session),
    /// An access token's secret (`cnp_…`, sent as `Authorization: Bearer`).
    Token(String),
}

struct Caller {
    name: &'static str,
    kind: Kind,
    /// The tenant the requests name (`x-tenant-id`); `None` on the platform.
    tenant: Option<&'static str>,
    auth: Auth,
}

impl Caller {
    fn credential(&self) -> Option<&str> {
        match &self.auth {
            Auth::Anonymous => None,
            Auth::Session(s) => Some(&s.token),
            Auth::Token(secret) => Some(secret),
        }
    }
}

/// Signs `email` in; returns the `login` answer's payload.
async fn sign_in(node: &TestNode, tenant: Option<&str>, email: &str, password: &str) -> Value {
    let r = node.gql(tenant, None, LOGIN, json!({ "input": { "email": email, "password": password } })).await;
    assert!(r["data"]["login"]["token"].is_string(), "signing in {email} in {tenant:?} failed: {r}");
    r["data"]["login"].clone()
}

fn string_at(response: &Value, pointer: &str) -> String {
    response
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {response}"))
        .to_owned()
}

fn role_permissions(role: &str) -> BTreeSet<String> {
    builtin_permissions(role)
        .unwrap_or_else(|| panic!("{role} is not a built-in role"))
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect()
}

/// Checks, without a node, that the rows and `ROOT_FIELDS` name the same
/// fields, and that every row's document is valid for the schema and calls its
/// field alone.
async fn check_rows(rows: &[Row]) {
    let mut seen = BTreeSet::new();
    for row in rows {
        assert!(seen.insert((row.parent, row.field)), "two rows for {}.{}", row.parent, row.field);
        assert!(
            needs(row.parent, row.field).is_some(),
            "the matrix has a row for {}.{}, which ROOT_FIELDS does not name",
            row.parent,
            row.field
        );
    }
    // Subscriptions run over WebSocket, not in this matrix's HTTP requests:
    // `subscriptions.rs` tries each with callers that hold and lack its permission.
    for (parent, field, _) in ROOT_FIELDS.iter().filter(|(parent, _, _)| *parent != "Subscription") {
        assert!(
            seen.contains(&(*parent, *field)),
            "ROOT_FIELDS names {parent}.{field}, which has no row in the permission matrix: add one to rows()"
        );
    }

    let schema = canopy_node::graphql::schema();
    for row in rows {
        let name = format!("{}.{}", row.parent, row.field);
        let doc = async_graphql::parser::parse_query(row.document)
            .unwrap_or_else(|e| panic!("{name}: the document does not parse: {e}"));
        let operations: Vec<_> = doc.operations.iter().collect();
        assert_eq!(operations.len(), 1, "{name}: the document must hold one operation");
        let operation = &operations[0].1.node;
        let parent = match operation.ty {
            OperationType::Query => "Query",
            OperationType::Mutation => "Mutation",
            OperationType::Subscription => "Subscription",
        };
        assert_eq!(parent, row.parent, "{name}: the document's operation is a {parent}");
        let fields: Vec<&str> = operation
            .selection_set
            .node
            .items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) if f.node.alias.is_none() => f.node.name.node.as_str(),
                _ => panic!("{name}: the document must select its root field directly, without an alias"),
            })
            .collect();
        assert_eq!(fields, [row.field], "{name}: the document must call exactly its own field");
        // Variables are coerced when the field's arguments are read, after the
        // guard: a missing one would not hide the guard, but it would make the
        // resolver fail on something else than the row means to send.
        let variables = (row.variables)(&Env::placeholder());
        let given: BTreeSet<&str> = variables.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
        let declared: BTreeSet<&str> =
            operation.variable_definitions.iter().map(|v| v.node.name.node.as_str()).collect();
        assert_eq!(given, declared, "{name}: the row must give exactly the variables its document declares");
        // Executed on the bare schema (no node behind it), a valid document gets
        // through parsing and validation to the guard, which finds no node and
        // answers `INTERNAL`; an invalid one is refused before, with no code. On a
        // node, an invalid document would hide the guard behind its validation error.
        let variables = async_graphql::Variables::from_json(variables);
        let response = schema.execute(async_graphql::Request::new(row.document).variables(variables)).await;
        let response = serde_json::to_value(&response).expect("a GraphQL response is JSON");
        assert_eq!(
            response["errors"].as_array().map(Vec::len),
            Some(1),
            "{name}: the document is not valid for the schema: {response}"
        );
        assert_eq!(
            response["errors"][0]["extensions"]["code"], "INTERNAL",
            "{name}: the document is not valid for the schema (it did not reach the guard): {response}"
        );
    }
}

#[tokio::test]
async fn every_caller_gets_exactly_what_the_catalog_says_for_every_field() {
    let started = Instant::now();
    let rows = rows();
    check_rows(&rows).await;

    // Many sign-ins, registrations and refreshes come from one address: the
    // limits are raised so that none is answered `RATE_LIMITED` instead.
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| {
        let plenty = Limit::new(10_000, 60);
        let limits = &mut c.rate_limits;
        limits.login_per_address = plenty;
        limits.login_per_account = plenty;
        limits.register_per_address = plenty;
        limits.password_reset_per_address = plenty;
        limits.password_reset_per_account = plenty;
        limits.verification_per_account = plenty;
        limits.refresh_per_address = plenty;
    })
    .await;

    // The tenant, another tenant, and the accounts of the matrix.
    let owner = node.tenant(TENANT, "owner@acme.test").await;
    let other = node.tenant(OTHER_TENANT, "owner@globex.test").await;
    let mut accounts = BTreeMap::new();
    for name in ["admin", "member", "custom", "throwaway"] {
        let email = format!("{name}@acme.test");
        let r = node.register(TENANT, &email, PASSWORD).await;
        let id = string_at(&r, "/data/register/user/id");
        accounts.insert(name, (id, email, token_of(&r, "register")));
    }
    let owner_do = |query: &'static str, variables: Value| node.gql(Some(TENANT), Some(&owner), query, variables);
    const ASSIGN: &str = "mutation($u: ID!, $r: [ID!]!) { changeMemberRole(input: {userId: $u, roles: $r}) }";
    let r = owner_do(ASSIGN, json!({ "u": accounts["admin"].0, "r": [ADMIN] })).await;
    assert_eq!(r["data"]["changeMemberRole"], true, "making the admin: {r}");
    let r = owner_do(
        "mutation($p: [String!]!) { createRole(input: {name: \"Matrix custom\", permissions: $p}) { id } }",
        json!({ "p": CUSTOM_ROLE }),
    )
    .await;
    let custom_role = string_at(&r, "/data/createRole/id");
    let r = owner_do(ASSIGN, json!({ "u": accounts["custom"].0, "r": [custom_role] })).await;
    assert_eq!(r["data"]["changeMemberRole"], true, "giving the custom role: {r}");

    // The tokens, created by the owner. "With the scope": every permission the
    // owner holds, so the scope of every field. "Without": one permission that
    // no field needs, so the scope of none.
    let owner_permissions = role_permissions(OWNER);
    let unrelated = CATALOG
        .iter()
        .map(|(p, _)| *p)
        .find(|p| !ROOT_FIELDS.iter().any(|(_, _, n)| permission_of(*n) == Some(*p)))
        .expect("a permission of the catalog that no root field needs");
    let mut tokens = Vec::new();
    for scopes in [owner_permissions.clone(), BTreeSet::from([unrelated.to_owned()])] {
        let r = owner_do(
            "mutation($s: [String!]!) { createAccessToken(input: {name: \"matrix\", scopes: $s}) { secret accessToken { scopes } } }",
            json!({ "s": scopes }),
        )
        .await;
        assert_eq!(r["data"]["createAccessToken"]["accessToken"]["scopes"], json!(scopes), "{r}");
        // Its creator holds every scope, so its effective scopes are its scopes.
        assert!(scopes.is_subset(&owner_permissions));
        tokens.push((string_at(&r, "/data/createAccessToken/secret"), scopes));
    }
    let [(with_secret, with_scopes), (without_secret, without_scopes)] =
        <[_; 2]>::try_from(tokens).expect("two tokens were created");

    let session = |tenant: Option<&'static str>, email: &str, password: &str, token: String| {
        Auth::Session(Session { tenant, email: email.to_owned(), password: password.to_owned(), token })
    };
    let account = |name: &str| {
        let (_, email, token) = &accounts[name];
        session(Some(TENANT), email, PASSWORD, token.clone())
    };
    let admin_login = sign_in(&node, None, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let custom_permissions: BTreeSet<String> = CUSTOM_ROLE.iter().map(|p| (*p).to_owned()).collect();
    let mut callers = vec![
        Caller {
            name: "owner",
            kind: Kind::Account(owner_permissions.clone()),
            tenant: Some(TENANT),
            auth: session(Some(TENANT), "owner@acme.test", OWNER_PASSWORD, owner.clone()),
        },
        Caller {
            name: "admin",
            kind: Kind::Account(role_permissions(ADMIN)),
            tenant: Some(TENANT),
            auth: account("admin"),
        },
        Caller {
            name: "member",
            kind: Kind::Account(role_permissions(MEMBER)),
            tenant: Some(TENANT),
            auth: account("member"),
        },
        Caller {
            name: "custom role",
            kind: Kind::Account(custom_permissions),
            tenant: Some(TENANT),
            auth: account("custom"),
        },
        Caller {
            name: "token with the scope",
            kind: Kind::Token(with_scopes),
            tenant: Some(TENANT),
            auth: Auth::Token(with_secret),
        },
        Caller {
            name: "token without",
            kind: Kind::Token(without_scopes),
            tenant: Some(TENANT),
            auth: Auth::Token(without_secret),
        },
        Caller { name: "anonymous", kind: Kind::Anonymous, tenant: Some(TENANT), auth: Auth::Anonymous },
        Caller {
            name: "other tenant",
            kind: Kind::OtherTenant,
            tenant: Some(TENANT),
            auth: session(Some(OTHER_TENANT), "owner@globex.test", OWNER_PASSWORD, other),
        },
        Caller {
            name: "platform admin",
            kind: Kind::PlatformAdmin,
            tenant: None,
            auth: session(None, ADMIN_EMAIL, ADMIN_PASSWORD, string_at(&admin_login, "/token")),
        },
    ];

    // The accounts hold what the matrix assumes they hold.
    for caller in &callers {
        if let Kind::Account(held) = &caller.kind {
            let r = node.gql(caller.tenant, caller.credential(), "{ me { permissions } }", json!({})).await;
            let actual: BTreeSet<String> = r["data"]["me"]["permissions"]
                .as_array()
                .unwrap_or_else(|| panic!("no permissions for {}: {r}", caller.name))
                .iter()
                .map(|p| p.as_str().unwrap_or_default().to_owned())
                .collect();
            assert_eq!(&actual, held, "{} does not hold the permissions the matrix assumes: {r}", caller.name);
        }
    }

    // Unused refresh tokens by scope (the tenant, or the platform); each
    // allowed `refreshSession` hands back the next one.
    let throwaway_email = accounts["throwaway"].1.clone();
    let mut refresh: BTreeMap<Option<&str>, String> = BTreeMap::new();
    let tenant_login = sign_in(&node, Some(TENANT), &throwaway_email, PASSWORD).await;
    refresh.insert(Some(TENANT), string_at(&tenant_login, "/refreshToken"));
    refresh.insert(None, string_at(&admin_login, "/refreshToken"));

    let member_id = accounts["member"].0.clone();
    let mut failures = Vec::new();
    let mut table = String::new();
    for row in &rows {
        let name = format!("{}.{}", row.parent, row.field);
        let needs = needs(row.parent, row.field).expect("check_rows found every row in ROOT_FIELDS");
        table.push_str(&format!("{name:<NAME$}"));
        for caller in &callers {
            let want = expected(&caller.kind, needs);
            let (login_email, login_password) = match caller.tenant {
                None => (ADMIN_EMAIL.to_owned(), ADMIN_PASSWORD.to_owned()),
                Some(_) => (throwaway_email.clone(), PASSWORD.to_owned()),
            };
            let env = Env {
                member_id: member_id.clone(),
                login_email,
                login_password,
                refresh_token: refresh.get(&caller.tenant).cloned().unwrap_or_default(),
            };
            let variables = (row.variables)(&env);
            let mutation = row.parent == "Mutation";
            let before = if mutation { Some(last_seq(&nats).await) } else { None };
            let r = node.gql(caller.tenant, caller.credential(), row.document, variables).await;
            let got = outcome(&r);
            let who = format!("{name} as {} (needs {}):", caller.name, needs.describe());
            match (&want, &got) {
                (Outcome::Allowed, Outcome::Allowed) => {
                    // The guard let it through; the resolver answered with data
                    // or a typed error, never an internal one.
                    let internal =
                        r["errors"].as_array().into_iter().flatten().any(|e| e["extensions"]["code"] == "INTERNAL");
                    if internal {
                        failures.push(format!("{who} allowed, but the resolver failed: {r}"));
                    }
                }
                (Outcome::Refused(code), Outcome::Refused(_)) => {
                    let errors = r["errors"].as_array().map_or(0, Vec::len);
                    if r["errors"][0]["extensions"]["code"] != *code || errors != 1 || !r["data"][row.field].is_null() {
                        failures.push(format!("{who} expected exactly {code}, got {r}"));
                    }
                }
                _ => failures.push(format!("{who} expected {want:?}, got {got:?}: {r}")),
            }
            if let Some(before) = before
                && (want != Outcome::Allowed || got != Outcome::Allowed)
            {
                let after = last_seq(&nats).await;
                if after != before {
                    failures.push(format!("{who} a refused mutation appended {} event(s): {r}", after - before));
                }
            }
            if row.setup == Setup::RefreshToken
                && let Some(next) = r.pointer("/data/refreshSession/refreshToken").and_then(Value::as_str)
            {
                refresh.insert(caller.tenant, next.to_owned());
            }
            let cell = match (&got, r["errors"][0]["extensions"]["code"].as_str()) {
                (Outcome::Allowed, None) => "data".to_owned(),
                (Outcome::Allowed, Some(code)) => format!("ok:{code}"),
                (Outcome::Refused(code), _) => format!("-{code}"),
            };
            table.push_str(&format!(" {cell:<CELL$}"));
        }
        table.push('\n');
        if row.setup == Setup::EndsSessions {
            for caller in &mut callers {
                if let Auth::Session(s) = &mut caller.auth {
                    let login = sign_in(&node, s.tenant, &s.email, &s.password).await;
                    s.token = string_at(&login, "/token");
                }
            }
        }
    }

    // The matrix as it was observed: "data", or "ok:" and the resolver's code
    // when the guard let the call through; "-" and the code when it refused it.
    let header: String = callers.iter().map(|c| format!(" {:<CELL$}", c.name)).collect();
    println!("{:<NAME$}{header}\n{table}", "permission matrix");
    println!("permission matrix: {} rows, {} callers, in {:?}", rows.len(), callers.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} call(s) did not get what the catalog says:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
