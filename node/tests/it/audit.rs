//! The audit trail: every event of a tenant with who acted (an account or an
//! access token), what, when, and the client's address and user agent, which
//! are sealed in the log. Read through a projection, filtered and paged,
//! only by holders of `read_audit`, never across tenants.

use serde_json::{Value, json};

use crate::harness::*;

const LOG: &str = "query($f: AuditFilter, $first: Int!, $after: String) { auditLog(filter: $f, first: $first, after: $after) { edges { cursor node { id at action aggregate aggregateId actor { kind id tenant } address userAgent } } pageInfo { hasNextPage endCursor } } }";
const CREATE_ROLE: &str =
    "mutation($n: String!) { createRole(input: {name: $n, permissions: [\"read_users\"]}) { id } }";
const CREATE_TOKEN: &str = "mutation { createAccessToken(input: {name: \"auditor\", scopes: [\"read_audit\", \"manage_roles\"]}) { secret accessToken { id } } }";
const AGENT: &str = "audit-test/1.0 (trail)";

/// A GraphQL request with a user agent, as `token` (a session or `cnp_` secret).
async fn as_agent(node: &TestNode, tenant: &str, token: &str, query: &str, variables: Value) -> Value {
    let auth = format!("Bearer {token}");
    let headers = [("x-tenant-id", tenant), ("authorization", auth.as_str()), ("user-agent", AGENT)];
    node.post("/graphql", &headers, json!({ "query": query, "variables": variables })).await.1
}

fn entries(r: &Value) -> Vec<Value> {
    r["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test]
async fn the_trail_names_who_did_what_from_where_and_keeps_it_sealed_in_the_log() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let Cast { owner, globex, bob, .. } = node.acme_globex_bob().await;
    let me = node.gql(Some("acme"), Some(&owner), "{ me { id } }", json!({})).await;
    let owner_id = me["data"]["me"]["id"].as_str().unwrap().to_owned();

    // The owner acts with a user agent; a token acts for the tenant.
    let r = as_agent(&node, "acme", &owner, CREATE_ROLE, json!({ "n": "Support" })).await;
    assert!(r["data"]["createRole"]["id"].is_string(), "{r}");
    let r = as_agent(&node, "acme", &owner, CREATE_TOKEN, json!({})).await;
    let secret = r["data"]["createAccessToken"]["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    let token_id = r["data"]["createAccessToken"]["accessToken"]["id"].as_str().unwrap().to_owned();
    let r = as_agent(&node, "acme", &secret, CREATE_ROLE, json!({ "n": "Billing" })).await;
    assert!(r["data"]["createRole"]["id"].is_string(), "{r}");

    // Newest first: the token's role, the token, the owner's role.
    let page = as_agent(&node, "acme", &owner, LOG, json!({ "first": 3 })).await;
    let got = entries(&page);
    let actions: Vec<&str> = got.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["RoleCreated", "AccessTokenCreated", "RoleCreated"], "{page}");
    assert_eq!(got[0]["actor"], json!({ "kind": "ACCESS_TOKEN", "id": token_id, "tenant": "acme" }), "{page}");
    assert_eq!(got[1]["actor"], json!({ "kind": "ACCOUNT", "id": owner_id, "tenant": "acme" }), "{page}");
    for e in &got {
        assert_eq!(e["address"], "127.0.0.1", "{e}");
        assert_eq!(e["userAgent"], AGENT, "{e}");
        assert_eq!(e["aggregate"], "access", "{e}");
    }
    // The next page goes on from the cursor, without repeating.
    assert_eq!(page["data"]["auditLog"]["pageInfo"]["hasNextPage"], true);
    let cursor = page["data"]["auditLog"]["pageInfo"]["endCursor"].clone();
    let next = as_agent(&node, "acme", &owner, LOG, json!({ "first": 100, "after": cursor })).await;
    let rest = entries(&next);
    assert!(
        rest.iter()
            .all(|e| e["id"].as_str().unwrap().parse::<u64>().unwrap()
                < cursor.as_str().unwrap().parse::<u64>().unwrap()),
        "{next}"
    );
    let rest_actions: Vec<&str> = rest.iter().map(|e| e["action"].as_str().unwrap()).collect();
    // Bob's registration and the tenant's creation are there, oldest last; the
    // email claims are not.
    assert!(rest_actions.contains(&"AccountRegistered") && rest_actions.contains(&"SessionStarted"), "{next}");
    assert_eq!(rest_actions.last(), Some(&"TenantCreated"), "{next}");
    assert!(!rest_actions.contains(&"EmailReserved"), "{next}");
    assert_eq!(next["data"]["auditLog"]["pageInfo"]["hasNextPage"], false);

    // Filters: by actor, by action, by time.
    let by_token = as_agent(&node, "acme", &owner, LOG, json!({ "first": 100, "f": { "actor": token_id } })).await;
    assert_eq!(entries(&by_token).len(), 1, "{by_token}");
    let roles = as_agent(&node, "acme", &owner, LOG, json!({ "first": 100, "f": { "action": "RoleCreated" } })).await;
    assert_eq!(entries(&roles).len(), 2, "{roles}");
    let future =
        as_agent(&node, "acme", &owner, LOG, json!({ "first": 100, "f": { "from": "2999-01-01T00:00:00Z" } })).await;
    assert_eq!(entries(&future).len(), 0, "{future}");
    let past =
        as_agent(&node, "acme", &owner, LOG, json!({ "first": 100, "f": { "to": "2000-01-01T00:00:00Z" } })).await;
    assert_eq!(entries(&past).len(), 0, "{past}");
    let at = got[0]["at"].as_str().unwrap();
    let since = as_agent(&node, "acme", &owner, LOG, json!({ "first": 100, "f": { "from": at } })).await;
    assert!(!entries(&since).is_empty(), "{since}");

    // Bad input is typed; a member without `read_audit` and another tenant see nothing.
    for (vars, field) in [
        (json!({ "first": 0 }), "first"),
        (json!({ "first": 101 }), "first"),
        (json!({ "first": 5, "after": "nope" }), "after"),
        (json!({ "first": 5, "f": { "from": "yesterday" } }), "filter.from"),
        (json!({ "first": 5, "f": { "action": "Role.Created>" } }), "filter.action"),
        (json!({ "first": 5, "f": { "actor": "a b" } }), "filter.actor"),
    ] {
        let r = as_agent(&node, "acme", &owner, LOG, vars.clone()).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{vars}: {r}");
        assert!(r["errors"][0]["message"].as_str().unwrap().starts_with(field), "{r}");
    }
    assert_eq!(code(&as_agent(&node, "acme", &bob, LOG, json!({ "first": 5 })).await), "FORBIDDEN");
    let theirs = as_agent(&node, "globex", &globex, LOG, json!({ "first": 100 })).await;
    assert!(!theirs.to_string().contains(&owner_id) && !theirs.to_string().contains("RoleCreated"), "{theirs}");

    // In the log the client is sealed: neither the address nor the agent is in
    // clear in any event; the actor is.
    let raw: Vec<String> =
        all_events(&nats).await.into_iter().map(|(_, p)| String::from_utf8_lossy(&p).into_owned()).collect();
    assert!(raw.iter().all(|e| !e.contains(AGENT) && !e.contains("127.0.0.1")), "a client is in clear in the log");
    assert!(raw.iter().any(|e| e.contains(&token_id) && e.contains("\"kind\":\"token\"")), "no event names the token");
}

#[tokio::test]
async fn erasing_a_person_erases_their_addresses_from_the_trail() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let (ada_id, ada) = (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));
    let update = "mutation { updateProfile(input: {firstname: \"Augusta\", lastname: \"King\"}) { id } }";
    let r = as_agent(&node, "acme", &ada, update, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    let mine = json!({ "first": 100, "f": { "actor": ada_id } });
    let before = entries(&as_agent(&node, "acme", &owner, LOG, mine.clone()).await);
    assert!(before.iter().any(|e| e["action"] == "ProfileUpdated" && e["userAgent"] == AGENT), "{before:?}");

    let r = node
        .gql(
            Some("acme"),
            Some(&ada),
            "mutation { deleteAccount(input: {password: \"analytical-engine\"}) }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["deleteAccount"], true, "{r}");
    // The records stay (what and when), their client is erased, by the projector, shortly.
    let mut after = Vec::new();
    for _ in 0..50 {
        after = entries(&as_agent(&node, "acme", &owner, LOG, mine.clone()).await);
        if after.iter().all(|e| e["address"] == "[erased]") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(after.iter().any(|e| e["action"] == "ProfileUpdated"), "{after:?}");
    assert!(after.iter().all(|e| e["address"] == "[erased]" && e["userAgent"] == "[erased]"), "{after:?}");
}
