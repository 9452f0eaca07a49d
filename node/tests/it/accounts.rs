//! Tenants and accounts end to end over HTTP, against a real node.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_platform_admin_creates_a_tenant_whose_owner_can_log_in_at_once() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let admin = node.admin_token().await;
    let r = node
        .gql(
            None,
            Some(&admin),
            CREATE_TENANT,
            json!({ "input": { "slug": "acme", "name": "Acme Inc", "ownerEmail": "Owner@Acme.test", "ownerPassword": "owner-password" } }),
        )
        .await;
    assert_eq!(r["data"]["createTenant"], json!({ "id": "acme", "slug": "acme", "name": "Acme Inc" }), "{r}");

    // Read-your-writes: the list shows it as soon as the mutation returned.
    let r = node.gql(None, Some(&admin), "{ tenants { slug name } }", json!({})).await;
    assert_eq!(r["data"]["tenants"], json!([{ "slug": "acme", "name": "Acme Inc" }]), "{r}");

    let r = node
        .gql(
            Some("acme"),
            None,
            LOGIN,
            json!({ "input": { "email": "owner@acme.test", "password": "owner-password" } }),
        )
        .await;
    let owner = token_of(&r, "login");
    let me = node.gql(Some("acme"), Some(&owner), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "Owner@Acme.test");
    assert_eq!(me["data"]["me"]["owner"], true);
}

#[tokio::test]
async fn only_a_platform_admin_may_create_or_list_tenants() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.gql(Some("acme"), Some(&owner), "{ tenants { slug } }", json!({})).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = node.gql(None, None, "{ tenants { slug } }", json!({})).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    let r = node
        .gql(
            None,
            None,
            CREATE_TENANT,
            json!({ "input": { "slug": "evil", "name": "E", "ownerEmail": "e@e.test", "ownerPassword": "12345678" } }),
        )
        .await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
}

#[tokio::test]
async fn register_login_and_me_within_a_tenant() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;

    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let token = token_of(&r, "register");
    assert_eq!(r["data"]["register"]["user"]["email"], "ada@example.com", "{r}");
    let me = node.gql(Some("acme"), Some(&token), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["firstname"], "Ada", "{me}");
    assert_eq!(me["data"]["me"]["owner"], false);

    let r = node
        .gql(
            Some("acme"),
            None,
            LOGIN,
            json!({ "input": { "email": "ADA@example.com", "password": "analytical-engine" } }),
        )
        .await;
    let again = token_of(&r, "login");
    let me2 = node.gql(Some("acme"), Some(&again), ME, json!({})).await;
    assert_eq!(me2["data"]["me"]["id"], me["data"]["me"]["id"]);

    let r = node
        .gql(
            Some("acme"),
            Some(&again),
            "mutation { updateProfile(input: {firstname: \"Augusta\", lastname: \"King\"}) { firstname lastname } }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["updateProfile"], json!({ "firstname": "Augusta", "lastname": "King" }), "{r}");
}

#[tokio::test]
async fn emails_are_unique_per_tenant_ignoring_case_but_not_across_tenants() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;

    let a = node.register("acme", "same@example.com", "password-one").await;
    token_of(&a, "register");
    let dup = node.register("acme", "SAME@example.com", "password-two").await;
    assert_eq!(code(&dup), "BAD_USER_INPUT", "{dup}");
    assert!(dup["errors"][0]["message"].as_str().unwrap().contains("already exists"));

    let b = node.register("globex", "same@example.com", "password-three").await;
    let tb = token_of(&b, "register");
    // Two separate accounts: each logs in with its own password only.
    let r = node
        .gql(
            Some("globex"),
            None,
            LOGIN,
            json!({ "input": { "email": "same@example.com", "password": "password-one" } }),
        )
        .await;
    assert_eq!(code(&r), "UNAUTHENTICATED");
    let me_b = node.gql(Some("globex"), Some(&tb), ME, json!({})).await;
    assert_ne!(me_b["data"]["me"]["id"], a["data"]["register"]["user"]["id"]);
}

#[tokio::test]
async fn the_owner_pages_through_users_with_cursors() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let mut member = String::new();
    for i in 0..4 {
        let r = node.register("acme", &format!("user{i}@example.com"), "a-good-password").await;
        member = token_of(&r, "register");
    }
    let page = "query($after: String) { users(first: 2, after: $after) { edges { cursor node { email } } pageInfo { hasNextPage endCursor } } }";
    let mut emails = Vec::new();
    let mut after = serde_json::Value::Null;
    let mut pages = 0;
    loop {
        let r = node.gql(Some("acme"), Some(&owner), page, json!({ "after": after })).await;
        let users = &r["data"]["users"];
        for e in users["edges"].as_array().unwrap_or_else(|| panic!("{r}")) {
            emails.push(e["node"]["email"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if users["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = users["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(
        emails,
        ["owner@acme.test", "user0@example.com", "user1@example.com", "user2@example.com", "user3@example.com"]
    );

    let r = node.gql(Some("acme"), Some(&member), "{ users { edges { node { email } } } }", json!({})).await;
    assert_eq!(code(&r), "FORBIDDEN", "members may not list users: {r}");
}

#[tokio::test]
async fn a_token_from_one_tenant_is_refused_on_every_other() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let acme_owner = node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;

    for (path, headers) in [("/graphql", vec![("x-tenant-id", "globex")]), ("/t/globex/graphql", vec![])] {
        let bearer = format!("Bearer {acme_owner}");
        let mut h = headers.clone();
        h.push(("authorization", bearer.as_str()));
        let (status, r) = node.post(path, &h, json!({ "query": "{ me { email } }" })).await;
        assert_eq!(status, 403);
        assert_eq!(code(&r), "FORBIDDEN", "{r}");
        assert!(r.get("data").is_none_or(|d| d.is_null()), "no data may leak: {r}");
    }
    // The admin's token is not a tenant token either.
    let admin = node.admin_token().await;
    let r = node.gql(Some("acme"), Some(&admin), ME, json!({})).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    // Without a tenant header, the token's own tenant applies.
    let r = node.gql(None, Some(&acme_owner), ME, json!({})).await;
    assert_eq!(r["data"]["me"]["email"], "owner@acme.test", "{r}");
}

#[tokio::test]
async fn tokens_verify_with_the_published_jwks() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let token = node.tenant("acme", "owner@acme.test").await;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(
        &node.http.get(node.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap(),
    )
    .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the token's key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["canopy"]);
    v.set_issuer(&["canopy"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
    let c = data.claims;
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["typ"], "access");
    for claim in ["sub", "exp", "iat", "iss", "aud"] {
        assert!(c.get(claim).is_some(), "claim {claim} missing: {c}");
    }
}

#[tokio::test]
async fn the_path_and_the_header_name_the_same_tenant() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let body = json!({ "query": REGISTER, "variables": { "input": { "email": "p@example.com", "password": "path-password", "firstname": "P", "lastname": "Q" } } });
    let (status, r) = node.post("/t/acme/graphql", &[], body.clone()).await;
    assert_eq!(status, 200, "{r}");
    token_of(&r, "register");
    node.tenant("globex", "owner@globex.test").await;
    let (status, r) = node.post("/t/acme/graphql", &[("x-tenant-id", "globex")], body).await;
    assert_eq!(status, 400);
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

#[tokio::test]
async fn an_unknown_email_and_a_wrong_password_get_the_same_answer() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let unknown = node
        .gql(
            Some("acme"),
            None,
            LOGIN,
            json!({ "input": { "email": "nobody@acme.test", "password": "owner-password" } }),
        )
        .await;
    let wrong = node
        .gql(
            Some("acme"),
            None,
            LOGIN,
            json!({ "input": { "email": "owner@acme.test", "password": "not-the-password" } }),
        )
        .await;
    assert_eq!(unknown["errors"], wrong["errors"]);
    assert_eq!(code(&unknown), "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_retried_registration_with_the_same_idempotency_key_is_applied_once() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let body = json!({ "query": REGISTER, "variables": { "input": { "email": "retry@example.com", "password": "retry-password", "firstname": "R", "lastname": "T" } } });
    let headers = [("x-tenant-id", "acme"), ("idempotency-key", "signup-42")];
    let before = event_counts(&nats).await;
    let (_, first) = node.post("/graphql", &headers, body.clone()).await;
    let (_, second) = node.post("/graphql", &headers, body).await;
    assert_eq!(first["data"]["register"]["user"]["id"], second["data"]["register"]["user"]["id"], "{first} {second}");
    // One registration (the account, its verification and its email claim); each
    // answer that hands out tokens opens a session of its own.
    let after = event_counts(&nats).await;
    let added = |t: &str| after.get(t).copied().unwrap_or(0) - before.get(t).copied().unwrap_or(0);
    assert_eq!(
        [
            added("AccountRegistered"),
            added("EmailVerificationRequested"),
            added("EmailReserved"),
            added("SessionStarted")
        ],
        [1, 1, 1, 2]
    );
}
