//! API access tokens: created with scopes among the creator's permissions,
//! used without a signed-in user (`x-tenant-key` or `Authorization: Bearer`),
//! refused outside their scopes (`FORBIDDEN`) and when expired, revoked,
//! unknown, malformed or another tenant's (`UNAUTHENTICATED`).

use serde_json::{Value, json};

use crate::harness::*;

const CREATE: &str = "mutation($n: String!, $s: [String!]!, $e: String) { createAccessToken(input: {name: $n, scopes: $s, expiresAt: $e}) { secret accessToken { id name scopes } } }";
const LIST: &str = "{ accessTokens { id name scopes createdAt expiresAt lastUsedAt } }";
const REVOKE: &str = "mutation($id: ID!) { revokeAccessToken(id: $id) }";
const USERS: &str = "{ users { totalCount } }";
const ASSIGN: &str = "mutation($u: ID!, $r: [ID!]!) { changeMemberRole(input: {userId: $u, roles: $r}) }";

/// A request to `/graphql` with exactly these headers.
async fn with(node: &TestNode, headers: &[(&str, &str)], query: &str) -> Value {
    node.post("/graphql", headers, json!({ "query": query })).await.1
}

async fn create(node: &TestNode, as_token: &str, scopes: Value) -> Value {
    node.gql(Some("acme"), Some(as_token), CREATE, json!({ "n": "ci deploy", "s": scopes })).await
}

#[tokio::test]
async fn a_token_works_within_its_scopes_until_revoked() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;

    let r = create(&node, &owner, json!(["read_users", "remove_members"])).await;
    let secret = r["data"]["createAccessToken"]["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    let id = r["data"]["createAccessToken"]["accessToken"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("cnp_") && secret.len() >= 4 + 32, "{secret}");
    assert_eq!(r["data"]["createAccessToken"]["accessToken"]["scopes"], json!(["read_users", "remove_members"]));

    // Both ways of presenting it, with no user signed in.
    let by_key = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret)], USERS).await;
    assert_eq!(by_key["data"]["users"]["totalCount"], 1, "{by_key}");
    let bearer = format!("Bearer {secret}");
    let by_bearer = with(&node, &[("x-tenant-id", "acme"), ("authorization", &bearer)], USERS).await;
    assert_eq!(by_bearer["data"]["users"]["totalCount"], 1, "{by_bearer}");

    // Outside its scopes: FORBIDDEN, and a refused mutation appends nothing.
    let before = last_seq(&nats).await;
    for query in [
        "{ roles { id } }",
        "{ me { id } }",
        "mutation { createRole(input: {name: \"X\", permissions: []}) { id } }",
        "mutation { createAccessToken(input: {name: \"x\", scopes: [\"read_users\"]}) { secret } }",
        "mutation { updateProfile(input: {firstname: \"A\", lastname: \"B\"}) { id } }",
    ] {
        let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret)], query).await;
        assert_eq!(code(&r), "FORBIDDEN", "{query}: {r}");
    }
    assert_eq!(last_seq(&nats).await, before, "a refused token request appended something");

    // Within its scopes it sends commands: it removes a member.
    let bob = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let bob_id = bob["data"]["register"]["user"]["id"].as_str().unwrap();
    let removal = format!("mutation {{ removeUser(id: \"{bob_id}\") }}");
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret)], &removal).await;
    assert_eq!(r["data"]["removeUser"], true, "{r}");

    // Another tenant does not know it; garbage in every shape is refused alike.
    let r = with(&node, &[("x-tenant-id", "globex"), ("x-tenant-key", &secret)], USERS).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    let (head, tail) = secret.split_at(secret.len() - 4);
    let tampered = format!("{head}{}", if tail == "AAAA" { "AAAQ" } else { "AAAA" });
    let wrong_prefix = secret.replacen("cnp_", "ghp_", 1);
    for bad in [tampered.as_str(), "cnp_", "cnp_short", &wrong_prefix, &format!("{secret}x"), "cnp_ü"] {
        let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", bad)], USERS).await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{bad}: {r}");
    }
    let r = with(&node, &[("x-tenant-key", &secret)], USERS).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "a token without its tenant: {r}");
    let both = format!("Bearer {owner}");
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret), ("authorization", &both)], USERS).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");

    // The list shows it, when it was used, and never a secret or a hash.
    let mut listed = Value::Null;
    for _ in 0..50 {
        listed = node.gql(Some("acme"), Some(&owner), LIST, json!({})).await;
        if listed["data"]["accessTokens"][0]["lastUsedAt"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed["data"]["accessTokens"][0]["id"], id.as_str(), "{listed}");
    assert!(listed["data"]["accessTokens"][0]["lastUsedAt"].is_string(), "{listed}");
    let text = listed.to_string();
    assert!(!text.contains(&secret[4..20]) && !text.contains("secret") && !text.contains("hash"), "{text}");

    // Revoked: refused on the very next request.
    let r = node.gql(Some("acme"), Some(&owner), REVOKE, json!({ "id": id })).await;
    assert_eq!(r["data"]["revokeAccessToken"], true, "{r}");
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret)], USERS).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    let listed = node.gql(Some("acme"), Some(&owner), LIST, json!({})).await;
    assert_eq!(listed["data"]["accessTokens"], json!([]), "{listed}");
    let counts = event_counts(&nats).await;
    assert_eq!((counts.get("AccessTokenCreated"), counts.get("AccessTokenRevoked")), (Some(&1), Some(&1)));
}

#[tokio::test]
async fn scopes_stay_within_the_creator_and_follow_its_roles() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let (bob_id, bob) = (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));
    let role = node
        .gql(
            Some("acme"),
            Some(&owner),
            "mutation { createRole(input: {name: \"Automation\", permissions: [\"read_users\", \"create_access-token\"]}) { id } }",
            json!({}),
        )
        .await;
    let role_id = role["data"]["createRole"]["id"].as_str().unwrap().to_owned();
    node.gql(Some("acme"), Some(&owner), ASSIGN, json!({ "u": bob_id, "r": [role_id] })).await;

    // Bad input: typed errors, nothing appended.
    let before = last_seq(&nats).await;
    let past = "2020-01-01T00:00:00Z";
    let far = "2099-01-01T00:00:00Z";
    let refusals = [
        (create(&node, &bob, json!(["read_audit"])).await, "FORBIDDEN"),
        (create(&node, &bob, json!(["read_everything"])).await, "BAD_USER_INPUT"),
        (create(&node, &bob, json!([])).await, "BAD_USER_INPUT"),
        (
            node.gql(Some("acme"), Some(&bob), CREATE, json!({ "n": "x", "s": ["read_users"], "e": past })).await,
            "BAD_USER_INPUT",
        ),
        (
            node.gql(Some("acme"), Some(&bob), CREATE, json!({ "n": "x", "s": ["read_users"], "e": far })).await,
            "BAD_USER_INPUT",
        ),
        (
            node.gql(Some("acme"), Some(&bob), CREATE, json!({ "n": "x", "s": ["read_users"], "e": "soon" })).await,
            "BAD_USER_INPUT",
        ),
        (
            node.gql(Some("acme"), Some(&bob), CREATE, json!({ "n": "a\nb", "s": ["read_users"] })).await,
            "BAD_USER_INPUT",
        ),
        (node.gql(Some("acme"), Some(&bob), REVOKE, json!({ "id": "not-a-token" })).await, "FORBIDDEN"),
        (node.gql(Some("acme"), Some(&owner), REVOKE, json!({ "id": "not-a-token" })).await, "NOT_FOUND"),
        (node.gql(Some("acme"), None, CREATE, json!({ "n": "x", "s": ["read_users"] })).await, "UNAUTHENTICATED"),
    ];
    for (r, expected) in &refusals {
        assert_eq!(code(r), *expected, "{r}");
    }
    assert_eq!(last_seq(&nats).await, before, "refused token requests appended something");

    // Within bob's permissions: it works, until bob loses the role.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let short =
        node.gql(Some("acme"), Some(&bob), CREATE, json!({ "n": "short", "s": ["read_users"], "e": soon })).await;
    let short = short["data"]["createAccessToken"]["secret"].as_str().unwrap_or_else(|| panic!("{short}")).to_owned();
    let r = create(&node, &bob, json!(["read_users"])).await;
    let secret = r["data"]["createAccessToken"]["secret"].as_str().unwrap().to_owned();
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret)], USERS).await;
    assert_eq!(r["data"]["users"]["totalCount"], 2, "{r}");
    node.gql(Some("acme"), Some(&owner), ASSIGN, json!({ "u": bob_id, "r": ["member"] })).await;
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &secret)], USERS).await;
    assert_eq!(code(&r), "FORBIDDEN", "the creator lost read_users, so did the token: {r}");

    // The short-lived token expires.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &short)], USERS).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    assert!(r["errors"][0]["message"].as_str().unwrap_or_default().contains("expired"), "{r}");

    // A retry with the same idempotency key cannot show the secret again.
    let body = json!({ "query": CREATE, "variables": { "n": "once", "s": ["read_roles"] } });
    let auth = format!("Bearer {owner}");
    let headers = [("x-tenant-id", "acme"), ("authorization", auth.as_str()), ("idempotency-key", "token-1")];
    let (_, first) = node.post("/graphql", &headers, body.clone()).await;
    assert!(first["data"]["createAccessToken"]["secret"].is_string(), "{first}");
    let (_, again) = node.post("/graphql", &headers, body).await;
    assert_eq!(code(&again), "CONFLICT", "{again}");
}

/// `tenant` shows a member its tenant; a token needs `read_tenant` in its
/// scopes, and nobody reads another tenant's.
#[tokio::test]
async fn members_read_their_tenant_and_tokens_need_the_scope() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let globex = node.tenant("globex", "owner@globex.test").await;
    let r = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let bob = token_of(&r, "register");
    let query = "{ tenant { slug name createdAt owner } }";
    let me = node.gql(Some("acme"), Some(&owner), "{ me { id } }", json!({})).await;
    let t = node.gql(Some("acme"), Some(&bob), query, json!({})).await;
    assert_eq!(t["data"]["tenant"]["slug"], "acme", "{t}");
    assert_eq!(t["data"]["tenant"]["owner"], me["data"]["me"]["id"], "{t}");
    assert_eq!(code(&node.gql(Some("acme"), None, query, json!({})).await), "UNAUTHENTICATED");
    assert_eq!(code(&node.gql(Some("acme"), Some(&globex), query, json!({})).await), "FORBIDDEN");

    let without = create(&node, &owner, json!(["read_users"])).await;
    let without = without["data"]["createAccessToken"]["secret"].as_str().unwrap().to_owned();
    let with_scope = create(&node, &owner, json!(["read_tenant"])).await;
    let with_scope = with_scope["data"]["createAccessToken"]["secret"].as_str().unwrap().to_owned();
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &without)], query).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = with(&node, &[("x-tenant-id", "acme"), ("x-tenant-key", &with_scope)], query).await;
    assert_eq!(r["data"]["tenant"]["name"], "Tenant acme", "{r}");
}
