//! Sessions: refresh tokens rotate, a rotated one used again ends its session,
//! and an access token of an ended session is refused on the next request, on
//! this node and on a node started afterwards.

use serde_json::{Value, json};

use crate::harness::*;

const SESSIONS: &str = "{ sessions { id current userAgent createdAt lastUsedAt } }";

async fn login(node: &TestNode, tenant: &str, email: &str, password: &str, agent: &str) -> Value {
    let body = json!({ "query": LOGIN, "variables": { "input": { "email": email, "password": password } } });
    let (_, r) = node.post("/graphql", &[("x-tenant-id", tenant), ("user-agent", agent)], body).await;
    assert!(r["data"]["login"]["refreshToken"].is_string(), "{r}");
    r["data"]["login"].clone()
}

async fn me_code(node: &TestNode, tenant: &str, token: &str) -> String {
    let r = node.gql(Some(tenant), Some(token), ME, json!({})).await;
    if r["data"]["me"]["id"].is_string() { "OK".into() } else { code(&r).to_owned() }
}

#[tokio::test]
async fn a_refresh_rotates_and_a_reused_refresh_token_ends_the_session() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let first = login(&node, "acme", "owner@acme.test", "owner-password", "test-agent/1").await;

    let r = node.refresh("acme", &first["refreshToken"]).await;
    let second = &r["data"]["refreshSession"];
    assert!(second["token"].is_string(), "{r}");
    assert_ne!(second["refreshToken"], first["refreshToken"], "the refresh token rotates");
    let access = second["token"].as_str().unwrap().to_owned();
    assert_eq!(me_code(&node, "acme", &access).await, "OK");

    // The first refresh token again: someone else has it. The session ends for both.
    let reused = node.refresh("acme", &first["refreshToken"]).await;
    assert_eq!(code(&reused), "UNAUTHENTICATED", "{reused}");
    assert_eq!(me_code(&node, "acme", &access).await, "UNAUTHENTICATED", "the session's access token still works");
    let next = node.refresh("acme", &second["refreshToken"]).await;
    assert_eq!(code(&next), "UNAUTHENTICATED", "the newest refresh token still works: {next}");
    let counts = event_counts(&nats).await;
    assert_eq!(counts.get("SessionRevoked"), Some(&1), "{counts:?}");
}

#[tokio::test]
async fn logout_ends_one_session_and_logout_everywhere_ends_them_all() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let a = login(&node, "acme", "owner@acme.test", "owner-password", "browser-a").await;
    let b = login(&node, "acme", "owner@acme.test", "owner-password", "browser-b").await;
    let c = login(&node, "acme", "owner@acme.test", "owner-password", "browser-c").await;
    let (ta, tb, tc) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap(), c["token"].as_str().unwrap());

    // The list shows every session once, marks the caller's, and keeps the user agent.
    let r = node.gql(Some("acme"), Some(ta), SESSIONS, json!({})).await;
    let list = r["data"]["sessions"].as_array().unwrap_or_else(|| panic!("{r}")).clone();
    assert!(list.len() >= 3, "{r}");
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{r}");
    assert_eq!(current[0]["userAgent"], "browser-a", "{r}");
    let b_id = list.iter().find(|s| s["userAgent"] == "browser-b").unwrap()["id"].as_str().unwrap().to_owned();

    // Session A ends session B.
    let r =
        node.gql(Some("acme"), Some(ta), "mutation($id: ID!) { revokeSession(id: $id) }", json!({ "id": b_id })).await;
    assert_eq!(r["data"]["revokeSession"], true, "{r}");
    assert_eq!(me_code(&node, "acme", tb).await, "UNAUTHENTICATED");
    assert_eq!(code(&node.refresh("acme", &b["refreshToken"]).await), "UNAUTHENTICATED");
    // Revoking it again, or a session id that is not one of ours: NOT_FOUND.
    let again =
        node.gql(Some("acme"), Some(ta), "mutation($id: ID!) { revokeSession(id: $id) }", json!({ "id": b_id })).await;
    assert_eq!(code(&again), "NOT_FOUND", "{again}");

    // Logout ends the caller's own session only.
    let r = node.gql(Some("acme"), Some(ta), "mutation { logout }", json!({})).await;
    assert_eq!(r["data"]["logout"], true, "{r}");
    assert_eq!(me_code(&node, "acme", ta).await, "UNAUTHENTICATED");
    assert_eq!(me_code(&node, "acme", tc).await, "OK");

    // Everywhere: C and any other session left.
    let d = login(&node, "acme", "owner@acme.test", "owner-password", "browser-d").await;
    let r = node.gql(Some("acme"), Some(tc), "mutation { logoutEverywhere }", json!({})).await;
    assert!(r["data"]["logoutEverywhere"].as_i64().unwrap_or(0) >= 2, "{r}");
    assert_eq!(me_code(&node, "acme", tc).await, "UNAUTHENTICATED");
    assert_eq!(me_code(&node, "acme", d["token"].as_str().unwrap()).await, "UNAUTHENTICATED");

    // A node that starts afterwards (the same master key, as a cluster's nodes
    // have) learns every revocation from the log before it serves.
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let fresh = TestNode::start_configured(&nats, |c| c.master_key = Some(master.trim().to_owned().into())).await;
    assert_eq!(me_code(&fresh, "acme", tc).await, "UNAUTHENTICATED");
    assert_eq!(me_code(&fresh, "acme", ta).await, "UNAUTHENTICATED");
}

#[tokio::test]
async fn bad_refresh_tokens_are_refused_alike_and_append_nothing() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;
    let acme = login(&node, "acme", "owner@acme.test", "owner-password", "x").await;
    let good = acme["refreshToken"].as_str().unwrap().to_owned();
    let before = last_seq(&nats).await;

    let mut bad: Vec<String> = (0..160).step_by(7).map(|n| "a".repeat(n)).collect();
    bad.extend([
        good.to_uppercase(),
        good.replacen('.', ":", 1),
        format!("{}\r\nX: y", &good[..good.len() - 5]),
        format!("{}{}", &good[..good.len() - 1], if good.ends_with('A') { 'B' } else { 'A' }),
        "*.>.evt".into(),
    ]);
    for t in &bad {
        let r = node.refresh("acme", &json!(t)).await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{t:?}: {r}");
    }
    // A real refresh token of acme, presented to globex: its account is not there.
    let r = node.refresh("globex", &json!(good)).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    assert_eq!(last_seq(&nats).await, before, "a refused refresh appended something");
    // And the token still works where it belongs.
    assert!(node.refresh("acme", &json!(good)).await["data"]["refreshSession"]["token"].is_string());
}

async fn fetch_jwks(node: &TestNode) -> Value {
    let text = node.http.get(node.url("/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The `kid` in a JWT's header.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Verifies a token with nothing but the node's JWKS, as any other service would.
fn verify_with_jwks(token: &str, jwks: &Value) -> Result<(), String> {
    let kid = kid_of(token);
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).ok_or("no such key")?;
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["canopy"]);
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &v).map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_key_rotation_signs_new_tokens_while_old_ones_verify_until_they_expire() {
    canopy_node::edge::auth::install_crypto();
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.token_ttl_secs = 3).await;
    node.tenant("acme", "owner@acme.test").await;
    let before =
        login(&node, "acme", "owner@acme.test", "owner-password", "x").await["token"].as_str().unwrap().to_owned();

    // What `canopy keys rotate` does, with the node's own key ring.
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let (_, kv) = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap();
    let ring = actors::store::seal::KeyRing::new(kv, actors::store::seal::MasterKey::from_base64(&master).unwrap());
    // A rotation period: nothing is due while the key is younger than it.
    assert_eq!(canopy_node::edge::auth::rotate_if_due(&ring, 3, 86_400).await.unwrap(), None);
    let new_kid = canopy_node::edge::auth::rotate_signing_key(&ring, 3).await.unwrap();
    assert_ne!(new_kid, kid_of(&before));

    // The node follows the rotation: new tokens carry the new key.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let t =
            login(&node, "acme", "owner@acme.test", "owner-password", "x").await["token"].as_str().unwrap().to_owned();
        if kid_of(&t) == new_kid {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "the node still signs with the old key");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let jwks = fetch_jwks(&node).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    verify_with_jwks(&before, &jwks).expect("a token from before the rotation verifies with the JWKS alone");
    verify_with_jwks(&after, &jwks).expect("a token from after the rotation verifies with the JWKS alone");
    assert_eq!(me_code(&node, "acme", &before).await, "OK", "the rotation signed someone out");

    // Once every token of the old key has expired (lifetime plus leeway), the key leaves the JWKS.
    tokio::time::sleep(std::time::Duration::from_secs(3 + 5 + 1)).await;
    let jwks = fetch_jwks(&node).await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [new_kid.as_str()], "{jwks}");
}
