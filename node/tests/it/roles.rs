//! Roles and permissions: custom roles per tenant, assignments that take
//! effect on the next request without a new token, and the rules that keep a
//! tenant governable.

use serde_json::{Value, json};

use crate::harness::*;

const ROLES: &str = "{ roles { id name permissions builtIn } }";
const CREATE: &str = "mutation($n: String!, $p: [String!]!) { createRole(input: {name: $n, permissions: $p}) { id name permissions builtIn } }";
const UPDATE: &str = "mutation($id: ID!, $n: String!, $p: [String!]!) { updateRole(input: {id: $id, name: $n, permissions: $p}) { id permissions } }";
const DELETE: &str = "mutation($id: ID!) { deleteRole(id: $id) }";
const ASSIGN: &str = "mutation($u: ID!, $r: [ID!]!) { changeMemberRole(input: {userId: $u, roles: $r}) }";
const USERS: &str = "{ users { totalCount } }";
const ME_ROLES: &str = "{ me { roles permissions } }";

async fn q(node: &TestNode, tenant: &str, token: &str, query: &str, vars: Value) -> Value {
    node.gql(Some(tenant), Some(token), query, vars).await
}

#[tokio::test]
async fn a_custom_role_grants_and_takes_away_on_the_next_request() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let (bob_id, bob) = (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));

    let me = q(&node, "acme", &bob, ME_ROLES, json!({})).await;
    assert_eq!(me["data"]["me"]["roles"], json!(["member"]), "{me}");
    assert_eq!(code(&q(&node, "acme", &bob, USERS, json!({})).await), "FORBIDDEN");

    let r = q(&node, "acme", &owner, CREATE, json!({ "n": "Support", "p": ["read_users"] })).await;
    let support = r["data"]["createRole"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    assert_eq!(r["data"]["createRole"]["builtIn"], false);
    let roles = q(&node, "acme", &owner, ROLES, json!({})).await;
    let names: Vec<&str> =
        roles["data"]["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["owner", "admin", "member", "Support"], "{roles}");

    // Granted: bob's very next request may list users, with the same token.
    let r = q(&node, "acme", &owner, ASSIGN, json!({ "u": bob_id, "r": [support] })).await;
    assert_eq!(r["data"]["changeMemberRole"], true, "{r}");
    let users = q(&node, "acme", &bob, USERS, json!({})).await;
    assert_eq!(users["data"]["users"]["totalCount"], 2, "{users}");
    let me = q(&node, "acme", &bob, ME_ROLES, json!({})).await;
    assert_eq!(me["data"]["me"]["permissions"], json!(["read_users"]), "{me}");

    // Taken away by changing the role: refused on the next request.
    let r = q(&node, "acme", &owner, UPDATE, json!({ "id": support, "n": "Support", "p": ["read_roles"] })).await;
    assert_eq!(r["data"]["updateRole"]["permissions"], json!(["read_roles"]), "{r}");
    assert_eq!(code(&q(&node, "acme", &bob, USERS, json!({})).await), "FORBIDDEN");
    // And on a node started afterwards (the grants come from the log).
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let other = TestNode::start_configured(&nats, |c| c.master_key = Some(master.trim().to_owned().into())).await;
    assert_eq!(code(&q(&other, "acme", &bob, USERS, json!({})).await), "FORBIDDEN");
    let roles = q(&other, "acme", &bob, ROLES, json!({})).await;
    assert_eq!(roles["data"]["roles"].as_array().map(Vec::len), Some(4), "{roles}");
}

#[tokio::test]
async fn roles_keep_their_rules_and_refusals_append_nothing() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let Cast { owner, globex, bob_id, bob } = node.acme_globex_bob().await;
    let me = q(&node, "acme", &owner, "{ me { id } }", json!({})).await;
    let owner_id = me["data"]["me"]["id"].as_str().unwrap().to_owned();
    let r = q(&node, "acme", &owner, CREATE, json!({ "n": "Support", "p": ["read_users"] })).await;
    let support = r["data"]["createRole"]["id"].as_str().unwrap().to_owned();
    q(&node, "acme", &owner, ASSIGN, json!({ "u": bob_id, "r": [support] })).await;
    let before = last_seq(&nats).await;

    let refusals = [
        // A member without manage_roles.
        (q(&node, "acme", &bob, CREATE, json!({ "n": "Mine", "p": [] })).await, "FORBIDDEN"),
        // Unknown permissions, bad names, names taken (whatever the case, built-in ones too).
        (q(&node, "acme", &owner, CREATE, json!({ "n": "X", "p": ["read_everything"] })).await, "BAD_USER_INPUT"),
        (q(&node, "acme", &owner, CREATE, json!({ "n": "a\r\nb", "p": [] })).await, "BAD_USER_INPUT"),
        (q(&node, "acme", &owner, CREATE, json!({ "n": "support", "p": [] })).await, "CONFLICT"),
        (q(&node, "acme", &owner, CREATE, json!({ "n": "Admin", "p": [] })).await, "CONFLICT"),
        // Built-in roles do not change; an assigned role is not deleted.
        (q(&node, "acme", &owner, DELETE, json!({ "id": "admin" })).await, "BAD_USER_INPUT"),
        (q(&node, "acme", &owner, DELETE, json!({ "id": support })).await, "CONFLICT"),
        (q(&node, "acme", &owner, DELETE, json!({ "id": "not-a-role" })).await, "NOT_FOUND"),
        // The last owner stays an owner.
        (q(&node, "acme", &owner, ASSIGN, json!({ "u": owner_id, "r": ["admin"] })).await, "CONFLICT"),
        (q(&node, "acme", &owner, ASSIGN, json!({ "u": bob_id, "r": [] })).await, "BAD_USER_INPUT"),
        // Another tenant neither sees nor uses acme's role.
        (q(&node, "globex", &globex, ASSIGN, json!({ "u": bob_id, "r": ["member"] })).await, "NOT_FOUND"),
        (q(&node, "globex", &globex, DELETE, json!({ "id": support })).await, "NOT_FOUND"),
        (q(&node, "acme", &globex, ROLES, json!({})).await, "FORBIDDEN"),
    ];
    for (r, expected) in &refusals {
        assert_eq!(code(r), *expected, "{r}");
    }
    assert_eq!(last_seq(&nats).await, before, "a refused role change appended something");
    let roles = q(&node, "globex", &globex, ROLES, json!({})).await;
    assert!(!roles.to_string().contains("Support"), "{roles}");

    // Unassigned, the role can go.
    q(&node, "acme", &owner, ASSIGN, json!({ "u": bob_id, "r": ["member"] })).await;
    let r = q(&node, "acme", &owner, DELETE, json!({ "id": support })).await;
    assert_eq!(r["data"]["deleteRole"], true, "{r}");
}

/// Ownership is a role, not a birthright: once another member owns the tenant,
/// its creator may leave, the new sole owner may not, and an erased member's
/// roles are gone with it (in the same atomic append as the erasure).
#[tokio::test]
async fn the_last_owner_is_whoever_holds_the_role_and_erasure_removes_roles() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let creator = node.tenant("acme", "owner@acme.test").await;
    let creator_id =
        q(&node, "acme", &creator, "{ me { id } }", json!({})).await["data"]["me"]["id"].as_str().unwrap().to_owned();
    let r = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let (bob_id, bob) = (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));
    let r = node.register("acme", "carol@example.com", "carol-the-clerk").await;
    let (carol_id, carol) =
        (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));
    let delete = "mutation($p: String!) { deleteAccount(input: {password: $p}) }";

    // The creator is the last owner: it may not leave.
    let before = last_seq(&nats).await;
    let r = q(&node, "acme", &creator, delete, json!({ "p": "owner-password" })).await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    assert_eq!(last_seq(&nats).await, before, "a refused erasure appended something");

    // Bob becomes an owner and demotes the creator; the creator may leave now.
    let r = q(&node, "acme", &creator, ASSIGN, json!({ "u": bob_id, "r": ["owner"] })).await;
    assert_eq!(r["data"]["changeMemberRole"], true, "{r}");
    let r = q(&node, "acme", &bob, ASSIGN, json!({ "u": creator_id, "r": ["admin"] })).await;
    assert_eq!(r["data"]["changeMemberRole"], true, "{r}");
    let r = q(&node, "acme", &creator, delete, json!({ "p": "owner-password" })).await;
    assert_eq!(r["data"]["deleteAccount"], true, "{r}");
    // Bob is the last owner now, though he did not create the tenant.
    let r = q(&node, "acme", &bob, delete, json!({ "p": "bob-the-builder" })).await;
    assert_eq!(code(&r), "CONFLICT", "{r}");

    // Carol holds a custom role; removing her removes the assignment, so the role can go.
    let r = q(&node, "acme", &bob, CREATE, json!({ "n": "Support", "p": ["read_users"] })).await;
    let support = r["data"]["createRole"]["id"].as_str().unwrap().to_owned();
    q(&node, "acme", &bob, ASSIGN, json!({ "u": carol_id, "r": [support] })).await;
    assert_eq!(code(&q(&node, "acme", &bob, DELETE, json!({ "id": support })).await), "CONFLICT");
    let r = q(&node, "acme", &bob, "mutation($id: ID!) { removeUser(id: $id) }", json!({ "id": carol_id })).await;
    assert_eq!(r["data"]["removeUser"], true, "{r}");
    assert_eq!(code(&q(&node, "acme", &carol, ME_ROLES, json!({})).await), "UNAUTHENTICATED");
    let r = q(&node, "acme", &bob, DELETE, json!({ "id": support })).await;
    assert_eq!(r["data"]["deleteRole"], true, "{r}");
    let counts = event_counts(&nats).await;
    assert_eq!(counts.get("MemberRemoved"), Some(&2), "{counts:?}");
}
