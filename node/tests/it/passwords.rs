//! Password reset and change, and email change, through the mails they send.

use serde_json::{Value, json};

use crate::harness::*;

const RESET_REQUEST: &str = "mutation($e: String!) { requestPasswordReset(input: {email: $e}) }";
const RESET: &str = "mutation($t: String!, $p: String!) { resetPassword(input: {token: $t, password: $p}) }";
const CHANGE: &str =
    "mutation($c: String!, $n: String!) { changePassword(input: {currentPassword: $c, newPassword: $n}) }";
const CHANGE_EMAIL: &str = "mutation($e: String!, $p: String!) { changeEmail(input: {newEmail: $e, password: $p}) }";

async fn login(node: &TestNode, email: &str, password: &str) -> Value {
    node.gql(Some("acme"), None, LOGIN, json!({ "input": { "email": email, "password": password } })).await
}

async fn me_code(node: &TestNode, token: &str) -> String {
    let r = node.gql(Some("acme"), Some(token), ME, json!({})).await;
    if r["data"]["me"]["id"].is_string() { "OK".into() } else { code(&r).to_owned() }
}

#[tokio::test]
async fn a_reset_link_sets_the_password_once_and_ends_every_session() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let session = token_of(&r, "register");
    let other = token_of(&login(&node, "ada@example.com", "analytical-engine").await, "login");

    let r = node.gql(Some("acme"), None, RESET_REQUEST, json!({ "e": "ADA@example.com" })).await;
    assert_eq!(r["data"]["requestPasswordReset"], true, "{r}");
    let mail = node.outbox_mails("ada@example.com", 2).await.pop().unwrap();
    let token = mail.link_token().expect("a reset link");
    assert!(mail.text.contains("/reset-password?token="), "{}", mail.text);

    // Too short a password: refused, the link still good.
    let r = node.gql(Some("acme"), None, RESET, json!({ "t": token, "p": "short" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let r = node.gql(Some("acme"), None, RESET, json!({ "t": token, "p": "a-brand-new-password" })).await;
    assert_eq!(r["data"]["resetPassword"], true, "{r}");
    // Every session ended, on the next request.
    assert_eq!(me_code(&node, &session).await, "UNAUTHENTICATED");
    assert_eq!(me_code(&node, &other).await, "UNAUTHENTICATED");
    // The old password no longer works, the new one does, and the link is used up.
    assert_eq!(code(&login(&node, "ada@example.com", "analytical-engine").await), "UNAUTHENTICATED");
    assert!(login(&node, "ada@example.com", "a-brand-new-password").await["data"]["login"]["token"].is_string());
    let r = node.gql(Some("acme"), None, RESET, json!({ "t": token, "p": "yet-another-password" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "a used link: {r}");
    // And a notice went to the address.
    let notice = node.outbox_mails("ada@example.com", 3).await.pop().unwrap();
    assert!(notice.link_token().is_none() && notice.code().is_none(), "a notice carries no secret");
}

#[tokio::test]
async fn an_expired_reset_link_is_refused() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.password_reset_ttl_secs = 1).await;
    node.tenant("acme", "owner@acme.test").await;
    node.register("acme", "ada@example.com", "analytical-engine").await;
    node.gql(Some("acme"), None, RESET_REQUEST, json!({ "e": "ada@example.com" })).await;
    let token = node.outbox_mails("ada@example.com", 2).await.pop().unwrap().link_token().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = node.gql(Some("acme"), None, RESET, json!({ "t": token, "p": "a-brand-new-password" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

#[tokio::test]
async fn a_password_change_keeps_this_session_and_ends_the_others() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let here = token_of(&r, "register");
    let there = token_of(&login(&node, "ada@example.com", "analytical-engine").await, "login");
    let r = node
        .gql(Some("acme"), Some(&here), CHANGE, json!({ "c": "analytical-engine", "n": "difference-engine" }))
        .await;
    assert_eq!(r["data"]["changePassword"], true, "{r}");
    assert_eq!(me_code(&node, &here).await, "OK");
    assert_eq!(me_code(&node, &there).await, "UNAUTHENTICATED");
    assert!(login(&node, "ada@example.com", "difference-engine").await["data"]["login"]["token"].is_string());
}

#[tokio::test]
async fn an_email_change_takes_effect_once_the_new_address_is_verified() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let token = token_of(&r, "register");
    let r = node
        .gql(Some("acme"), Some(&token), CHANGE_EMAIL, json!({ "e": "ada@lovelace.test", "p": "analytical-engine" }))
        .await;
    assert_eq!(r["data"]["changeEmail"], true, "{r}");
    // Until verified, the old address is the account's and the new one is free.
    let me = node.gql(Some("acme"), Some(&token), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "ada@example.com", "{me}");
    assert!(login(&node, "ada@example.com", "analytical-engine").await["data"]["login"]["token"].is_string());
    // The old address got a notice, the new one a code.
    let notice = node.outbox_mails("ada@example.com", 2).await.pop().unwrap();
    assert!(notice.code().is_none() && notice.link_token().is_none(), "{notice:?}");
    let sent = node.verification_code("ada@lovelace.test").await;
    let r = node
        .gql(
            Some("acme"),
            Some(&token),
            "mutation($c: String!) { verifyEmail(input: {code: $c}) { email emailVerified } }",
            json!({ "c": sent }),
        )
        .await;
    assert_eq!(r["data"]["verifyEmail"], json!({ "email": "ada@lovelace.test", "emailVerified": true }), "{r}");
    // The address moved: the new one signs in, the old one is free for someone else.
    assert!(login(&node, "ada@lovelace.test", "analytical-engine").await["data"]["login"]["token"].is_string());
    assert_eq!(code(&login(&node, "ada@example.com", "analytical-engine").await), "UNAUTHENTICATED");
    let r = node.register("acme", "ada@example.com", "someone-else-now").await;
    assert!(r["data"]["register"]["token"].is_string(), "{r}");
}
