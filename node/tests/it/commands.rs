//! Commands act only with their own proof: a replay is refused unless it is the
//! same request and proves its credential again, the actor checks who sends a
//! command, and every id that arrives over NATS is parsed before it is used.

use serde_json::{Value, json};

use crate::harness::*;

const UPDATE: &str = "mutation($input: UpdateProfileInput!) { updateProfile(input: $input) { firstname } }";

fn register_body(email: &str, password: &str) -> Value {
    json!({ "query": REGISTER, "variables": { "input": {
        "email": email, "password": password, "firstname": "Ada", "lastname": "Lovelace" } } })
}

#[tokio::test]
async fn a_replayed_registration_gets_a_token_only_with_the_same_request_and_password() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let headers = [("x-tenant-id", "acme"), ("idempotency-key", "signup-7")];
    let (_, first) = node.post("/graphql", &headers, register_body("ada@example.com", "ada-real-password")).await;
    let id = first["data"]["register"]["user"]["id"].as_str().unwrap_or_else(|| panic!("{first}")).to_owned();
    let after_first = event_counts(&nats).await;

    // An attacker who learnt the key and the email, but not the password.
    let (_, stolen) = node.post("/graphql", &headers, register_body("ada@example.com", "attacker-guess")).await;
    assert_eq!(code(&stolen), "CONFLICT", "{stolen}");
    assert_eq!(stolen["errors"][0]["message"], "idempotency key reused with a different request");
    assert!(stolen["data"].is_null() || stolen["data"]["register"].is_null(), "no token: {stolen}");
    // The same key for another request altogether.
    let (_, other) = node.post("/graphql", &headers, register_body("eve@example.com", "eve-password-1")).await;
    assert_eq!(code(&other), "CONFLICT", "{other}");

    // The real client's retry proves the password and gets the same account.
    let (_, retry) = node.post("/graphql", &headers, register_body("ada@example.com", "ada-real-password")).await;
    assert_eq!(retry["data"]["register"]["user"]["id"], id, "{retry}");
    // Only the proven retry opened a session; nothing else was appended.
    let mut expected = after_first.clone();
    *expected.entry("SessionStarted".into()).or_default() += 1;
    assert_eq!(event_counts(&nats).await, expected, "no replay registered anything");
}

#[tokio::test]
async fn a_reused_key_for_another_profile_update_is_a_conflict() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let bearer = format!("Bearer {owner}");
    let headers = [("x-tenant-id", "acme"), ("authorization", bearer.as_str()), ("idempotency-key", "rename-1")];
    let update =
        |first: &str| json!({ "query": UPDATE, "variables": { "input": { "firstname": first, "lastname": "O" } } });
    let (_, a) = node.post("/graphql", &headers, update("Grace")).await;
    assert_eq!(a["data"]["updateProfile"]["firstname"], "Grace", "{a}");
    let (_, again) = node.post("/graphql", &headers, update("Grace")).await;
    assert_eq!(again["data"]["updateProfile"]["firstname"], "Grace", "a true retry succeeds: {again}");
    let (_, other) = node.post("/graphql", &headers, update("Mallory")).await;
    assert_eq!(code(&other), "CONFLICT", "{other}");
}

/// Sends a raw command as any NATS client in the nodes' account could.
async fn raw(nats: &NatsServer, subject: &str, body: Value) -> Value {
    let client = nats.client().await;
    let reply = client.request(subject.to_owned(), body.to_string().into()).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn failure_code(reply: &Value) -> &str {
    reply["Err"]["code"].as_str().unwrap_or_else(|| panic!("not a failure: {reply}"))
}

#[tokio::test]
async fn the_actor_refuses_a_command_its_principal_may_not_send() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let victim = node.register("acme", "victim@example.com", "victim-password").await;
    let victim = victim["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();
    let mallory = node.register("acme", "mallory@example.com", "mallory-password").await;
    let mallory = mallory["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();
    let before = last_seq(&nats).await;

    let update = |principal: Value| {
        json!({ "command_id": "raw-1", "principal": principal, "request": {
            "kind": "update_profile", "account_id": victim, "firstname": "Pwned", "lastname": "X" } })
    };
    let as_mallory = json!({ "kind": "account", "scope": "acme", "account_id": mallory });
    assert_eq!(failure_code(&raw(&nats, "cmd.acme.account", update(as_mallory)).await), "FORBIDDEN");
    let anonymous = json!({ "kind": "anonymous" });
    assert_eq!(failure_code(&raw(&nats, "cmd.acme.account", update(anonymous.clone())).await), "FORBIDDEN");
    // The victim's id but in another tenant's name.
    let elsewhere = json!({ "kind": "account", "scope": "globex", "account_id": victim });
    assert_eq!(failure_code(&raw(&nats, "cmd.acme.account", update(elsewhere)).await), "FORBIDDEN");
    // A command without a principal does not decode.
    let mut bare = update(anonymous.clone());
    bare.as_object_mut().unwrap().remove("principal");
    assert_eq!(failure_code(&raw(&nats, "cmd.acme.account", bare).await), "BAD_USER_INPUT");
    // Only a platform administrator creates tenants.
    let create = json!({ "command_id": "raw-2", "principal": anonymous, "request": {
        "kind": "create", "slug": "evil", "name": "Evil", "owner_email": "e@evil.test", "owner_password": "evil-password" } });
    assert_eq!(failure_code(&raw(&nats, "cmd._system.tenant", create).await), "FORBIDDEN");
    assert_eq!(last_seq(&nats).await, before, "a refused command appended something");
}

#[tokio::test]
async fn ids_that_could_reach_a_subject_header_or_key_are_refused_before_use() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let before = last_seq(&nats).await;
    let long = "x".repeat(300);
    for bad in ["", ".", "*", ">", "a b", "a.b", "a\r\nNats-Msg-Id: x", long.as_str()] {
        let body = json!({ "command_id": bad, "principal": { "kind": "anonymous" }, "request": {
            "kind": "register", "email": "id@example.com", "password": "id-password-1", "firstname": "I", "lastname": "D" } });
        let reply = raw(&nats, "cmd.acme.account", body).await;
        assert_eq!(failure_code(&reply), "BAD_USER_INPUT", "command id {bad:?}: {reply}");
    }
    for bad in ["", "*", "evt.>", "a1", "../x", long.as_str()] {
        let as_it = json!({ "kind": "account", "scope": "acme", "account_id": bad });
        let body = json!({ "command_id": "ok-id", "principal": as_it, "request": {
            "kind": "update_profile", "account_id": bad, "firstname": "I", "lastname": "D" } });
        let reply = raw(&nats, "cmd.acme.account", body).await;
        assert_eq!(failure_code(&reply), "BAD_USER_INPUT", "account id {bad:?}: {reply}");
    }
    assert_eq!(last_seq(&nats).await, before, "a malformed id was appended");
}
