//! Email verification end to end: the mail is produced by the reactor from the
//! event (never by a resolver), carries the code and link in the account's
//! language with the tenant's name, and is sent once, whatever restarts.

use std::time::Duration;

use actors::store::seal::MasterKey;
use serde_json::{Value, json};

use crate::harness::*;

const ME_VERIFIED: &str = "{ me { emailVerified locale } }";
const VERIFY_CODE: &str = "mutation($c: String!) { verifyEmail(input: {code: $c}) { emailVerified } }";
const VERIFY_TOKEN: &str = "mutation($t: String!) { verifyEmail(input: {token: $t}) { id emailVerified } }";
const RESEND: &str = "mutation { resendVerification }";

async fn register_in(node: &TestNode, email: &str, lang: &str) -> Value {
    let body = json!({ "query": REGISTER, "variables": { "input": {
        "email": email, "password": "a-good-password", "firstname": "Ada", "lastname": "Lovelace" } } });
    node.post("/graphql", &[("x-tenant-id", "acme"), ("accept-language", lang)], body).await.1
}

#[tokio::test]
async fn the_verification_mail_speaks_the_accounts_language_and_its_code_verifies_once() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = register_in(&node, "ada@example.com", "de-DE,de;q=0.9").await;
    let token = token_of(&r, "register");
    let me = node.gql(Some("acme"), Some(&token), ME_VERIFIED, json!({})).await;
    assert_eq!(me["data"]["me"], json!({ "emailVerified": false, "locale": "de" }), "{me}");

    let mail = node.outbox_mails("ada@example.com", 1).await.remove(0);
    let sent = mail.code().expect("a code in the text part");
    assert!(mail.html.contains(&sent), "the HTML part carries the code too");
    assert!(
        mail.subject.contains("Tenant acme") && mail.text.contains("Tenant acme"),
        "the tenant's name: {}",
        mail.subject
    );
    assert!(mail.text.contains("Ada") && mail.from.contains('@'), "{mail:?}");
    assert!(mail.text.to_lowercase().contains("bestätig"), "a German mail: {}", mail.text);
    // Nothing secret reached the log: neither the code nor the link token.
    let link = mail.link_token().expect("a link");
    let log: String = all_events(&nats).await.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect();
    assert!(!log.contains(&format!("\"{sent}\"")), "the code is in the log");
    assert!(!log.contains(&link), "the link token is in the log");
    assert!(!log.contains("ada@example.com"), "an address is in the log in clear");

    // A wrong code changes nothing; the right one verifies; it works once.
    let before = last_seq(&nats).await;
    let wrong = format!("{:06}", (sent.parse::<u32>().unwrap() + 1) % 1_000_000);
    let r = node.gql(Some("acme"), Some(&token), VERIFY_CODE, json!({ "c": wrong })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    assert_eq!(last_seq(&nats).await, before);
    let r = node.gql(Some("acme"), Some(&token), VERIFY_CODE, json!({ "c": sent })).await;
    assert_eq!(r["data"]["verifyEmail"]["emailVerified"], true, "{r}");
    let r = node.gql(Some("acme"), Some(&token), VERIFY_CODE, json!({ "c": sent })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "a used code: {r}");
    // The link of a verified account is used up too.
    let r = node.gql(Some("acme"), None, VERIFY_TOKEN, json!({ "t": link })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "a used link: {r}");
    let r = node.gql(Some("acme"), Some(&token), RESEND, json!({})).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "nothing to resend once verified: {r}");
}

#[tokio::test]
async fn the_link_verifies_signed_out_and_a_resend_replaces_the_code_at_most_once_per_interval() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.verification_resend_secs = 2).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = register_in(&node, "bob@example.com", "en").await;
    let token = token_of(&r, "register");
    let first = node.outbox_mails("bob@example.com", 1).await.remove(0);

    // Too soon for another mail: RATE_LIMITED, with when to come back, and nothing appended.
    let before = last_seq(&nats).await;
    let r = node.gql(Some("acme"), Some(&token), RESEND, json!({})).await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    let wait = r["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap();
    assert!((1..=2).contains(&wait), "{r}");
    assert_eq!(last_seq(&nats).await, before);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = node.gql(Some("acme"), Some(&token), RESEND, json!({})).await;
    assert_eq!(r["data"]["resendVerification"], true, "{r}");
    let second = node.outbox_mails("bob@example.com", 2).await.remove(1);
    assert_ne!(second.code(), first.code());
    // The first link no longer works; the new one does, signed out.
    let r = node.gql(Some("acme"), None, VERIFY_TOKEN, json!({ "t": first.link_token().unwrap() })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "a superseded link: {r}");
    let r = node.gql(Some("acme"), None, VERIFY_TOKEN, json!({ "t": second.link_token().unwrap() })).await;
    assert_eq!(r["data"]["verifyEmail"]["emailVerified"], true, "{r}");
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.verification_ttl_secs = 1).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = register_in(&node, "eve@example.com", "en").await;
    let token = token_of(&r, "register");
    let sent = node.verification_code("eve@example.com").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = node.gql(Some("acme"), Some(&token), VERIFY_CODE, json!({ "c": sent })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
}

#[tokio::test]
async fn mail_for_events_written_while_no_node_ran_arrives_once_a_node_starts_and_never_twice() {
    let nats = NatsServer::start();
    let master = MasterKey::generate();
    // A tenant created by an actor tree alone: no edge, no reactor, no mailer.
    let tree =
        crate::actors::spawn(crate::actors::deps_with(&nats, 100, master.clone()).await, Duration::from_secs(60)).await;
    crate::actors::create_tenant(&tree, "acme").await;
    tree.stop_and_wait(None, None).await.unwrap();

    let key = Some(master.to_base64().into());
    let first = TestNode::start_configured(&nats, |c| c.master_key = key.clone()).await;
    let mails = first.outbox_mails("owner@acme.test", 1).await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].code().is_some());
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A node started afterwards sends nothing again.
    let second = TestNode::start_configured(&nats, |c| c.master_key = key.clone()).await;
    second.register("acme", "late@example.com", "a-good-password").await;
    second.outbox_mails("late@example.com", 1).await;
    assert!(second.outbox_mails_now("owner@acme.test").is_empty(), "the owner's mail was sent twice");
}

#[tokio::test]
async fn a_registration_reaches_a_real_smtp_server_and_its_code_verifies() {
    let nats = NatsServer::start();
    let sink = SmtpSink::start();
    let node = TestNode::start_configured(&nats, |c| {
        c.smtp_url = Some(sink.url());
        c.mail_from = "Acme <no-reply@acme.test>".into();
    })
    .await;
    node.tenant("acme", "owner@acme.test").await;
    let r = register_in(&node, "smtp@example.com", "en").await;
    let token = token_of(&r, "register");
    // The owner's mail and this one.
    let received = sink.wait_for_mails(2, Duration::from_secs(15)).await;
    let mail = received
        .iter()
        .filter_map(|raw| Mail::parse(raw.as_bytes()))
        .find(|m| m.to == "smtp@example.com")
        .expect("the registration's mail reached the SMTP server");
    assert_eq!(mail.from, "no-reply@acme.test");
    let code = mail.code().expect("a code");
    assert!(mail.html.contains(&code));
    let r = node.gql(Some("acme"), Some(&token), VERIFY_CODE, json!({ "c": code })).await;
    assert_eq!(r["data"]["verifyEmail"]["emailVerified"], true, "{r}");
}
