//! Invitations: mailed through the queue, accepted once (a new account with
//! the role, or the role for an account that has the address), revocable,
//! expiring, and never a way to hand out more than the inviter holds.

use serde_json::{Value, json};

use crate::harness::*;

const INVITE: &str =
    "mutation($e: String!, $r: ID!) { inviteMember(input: {email: $e, role: $r}) { id email role status expiresAt } }";
const ACCEPT: &str = "mutation($t: String!, $p: String!) { acceptInvitation(input: {token: $t, password: $p, firstname: \"New\", lastname: \"Member\"}) { token user { id email emailVerified } } }";
const LIST: &str = "{ invitations { id email role status acceptedBy } }";
const REVOKE: &str = "mutation($id: ID!) { revokeInvitation(id: $id) }";
const ME: &str = "{ me { roles permissions } }";

async fn accept(node: &TestNode, token: &str, password: &str) -> Value {
    node.gql(Some("acme"), None, ACCEPT, json!({ "t": token, "p": password })).await
}

async fn invite(node: &TestNode, as_token: &str, email: &str, role: &str) -> Value {
    node.gql(Some("acme"), Some(as_token), INVITE, json!({ "e": email, "r": role })).await
}

#[tokio::test]
async fn an_invitation_is_mailed_accepted_once_and_grants_its_role() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let role = node
        .gql(
            Some("acme"),
            Some(&owner),
            "mutation { createRole(input: {name: \"Support\", permissions: [\"read_users\", \"read_tenant\"]}) { id } }",
            json!({}),
        )
        .await;
    let support = role["data"]["createRole"]["id"].as_str().unwrap().to_owned();

    let r = invite(&node, &owner, "carol@example.com", &support).await;
    assert_eq!(r["data"]["inviteMember"]["status"], "PENDING", "{r}");
    assert_eq!(r["data"]["inviteMember"]["email"], "carol@example.com", "{r}");
    let mail = node.outbox_mails("carol@example.com", 1).await.pop().unwrap();
    assert!(mail.text.contains("Support") && mail.text.contains("Owner"), "{}", mail.text);
    let token = mail.link_token().unwrap_or_else(|| panic!("no link in {}", mail.text));

    // Accepted: a new account with a verified address, exactly the role, signed in.
    let r = accept(&node, &token, "carols-password").await;
    let carol = r["data"]["acceptInvitation"]["token"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    assert_eq!(r["data"]["acceptInvitation"]["user"]["email"], "carol@example.com");
    assert_eq!(r["data"]["acceptInvitation"]["user"]["emailVerified"], true);
    let me = node.gql(Some("acme"), Some(&carol), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["roles"], json!([support]), "{me}");
    let users = node.gql(Some("acme"), Some(&carol), "{ users { totalCount } }", json!({})).await;
    assert_eq!(users["data"]["users"]["totalCount"], 2, "{users}");
    // No verification mail: the invitation proved the address.
    assert_eq!(node.outbox_mails_now("carol@example.com").len(), 1);

    // Used once: a second acceptance is refused and appends nothing.
    let before = last_seq(&nats).await;
    let again = accept(&node, &token, "another-password").await;
    assert_eq!(code(&again), "BAD_USER_INPUT", "{again}");
    assert_eq!(last_seq(&nats).await, before);
    let list = node.gql(Some("acme"), Some(&owner), LIST, json!({})).await;
    assert_eq!(list["data"]["invitations"][0]["status"], "ACCEPTED", "{list}");
    assert_eq!(list["data"]["invitations"][0]["email"], Value::Null, "{list}");

    // An existing account's address: it proves its password and gains the role.
    let r = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let bob_id = r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();
    invite(&node, &owner, "BOB@example.com", "admin").await;
    let token = node.outbox_mails("bob@example.com", 2).await.pop().unwrap().link_token().unwrap();
    let before = last_seq(&nats).await;
    let wrong = accept(&node, &token, "not-bobs-password").await;
    assert_eq!(code(&wrong), "BAD_USER_INPUT", "{wrong}");
    assert_eq!(last_seq(&nats).await, before, "a wrong password appended something");
    let r = accept(&node, &token, "bob-the-builder").await;
    assert_eq!(r["data"]["acceptInvitation"]["user"]["id"], bob_id.as_str(), "{r}");
    let bob = r["data"]["acceptInvitation"]["token"].as_str().unwrap().to_owned();
    let me = node.gql(Some("acme"), Some(&bob), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["roles"], json!(["admin"]), "{me}");

    // Revoked: the link stops working and the address is gone from the list.
    let r = invite(&node, &owner, "dave@example.com", "member").await;
    let dave = r["data"]["inviteMember"]["id"].as_str().unwrap().to_owned();
    let token = node.outbox_mails("dave@example.com", 1).await.pop().unwrap().link_token().unwrap();
    let r = node.gql(Some("acme"), Some(&owner), REVOKE, json!({ "id": dave })).await;
    assert_eq!(r["data"]["revokeInvitation"], true, "{r}");
    assert_eq!(code(&accept(&node, &token, "daves-password").await), "BAD_USER_INPUT");
    let list = node.gql(Some("acme"), Some(&owner), LIST, json!({})).await;
    let revoked = list["data"]["invitations"].as_array().unwrap().iter().find(|i| i["id"] == dave.as_str()).unwrap();
    assert_eq!((&revoked["status"], &revoked["email"]), (&json!("REVOKED"), &Value::Null), "{list}");
    let counts = event_counts(&nats).await;
    assert_eq!(
        (counts.get("MemberInvited"), counts.get("InvitationAccepted"), counts.get("InvitationRevoked")),
        (Some(&3), Some(&2), Some(&1))
    );
}

#[tokio::test]
async fn invitations_refuse_bad_input_and_escalation_and_expire() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.invitation_ttl_secs = 3).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ann@example.com", "ann-the-admin").await;
    let (ann_id, ann) = (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));
    let assign = "mutation($u: ID!) { changeMemberRole(input: {userId: $u, roles: [\"admin\"]}) }";
    node.gql(Some("acme"), Some(&owner), assign, json!({ "u": ann_id })).await;
    let r = node.register("acme", "max@example.com", "max-the-member").await;
    let max = token_of(&r, "register");
    let r = invite(&node, &owner, "eve@example.com", "member").await;
    assert_eq!(r["data"]["inviteMember"]["status"], "PENDING", "{r}");
    let token = node.outbox_mails("eve@example.com", 1).await.pop().unwrap().link_token().unwrap();

    let before = last_seq(&nats).await;
    let refusals = [
        (invite(&node, &ann, "x@example.com", "owner").await, "FORBIDDEN"),
        (invite(&node, &max, "x@example.com", "member").await, "FORBIDDEN"),
        (invite(&node, &owner, "x@example.com", "no-such-role").await, "NOT_FOUND"),
        (invite(&node, &owner, "x@example.com", "8e2b1e1e-0000-5000-8000-000000000000").await, "NOT_FOUND"),
        (invite(&node, &owner, "not an address", "member").await, "BAD_USER_INPUT"),
        (invite(&node, &owner, "EVE@example.com", "member").await, "CONFLICT"),
        (node.gql(Some("acme"), None, INVITE, json!({ "e": "x@example.com", "r": "member" })).await, "UNAUTHENTICATED"),
        (node.gql(Some("acme"), Some(&max), LIST, json!({})).await, "FORBIDDEN"),
        (accept(&node, "garbage", "a-good-password").await, "BAD_USER_INPUT"),
        (accept(&node, &format!("{}x", &token[..token.len() - 1]), "a-good-password").await, "BAD_USER_INPUT"),
        (accept(&node, &token, "short").await, "BAD_USER_INPUT"),
        (node.gql(Some("acme"), Some(&owner), REVOKE, json!({ "id": "nope" })).await, "NOT_FOUND"),
    ];
    for (r, expected) in &refusals {
        assert_eq!(code(r), *expected, "{r}");
    }
    assert_eq!(last_seq(&nats).await, before, "refused invitation requests appended something");
    // The invitation survived the bad attempts; an admin may invite as admin.
    let r = invite(&node, &ann, "fay@example.com", "admin").await;
    assert_eq!(r["data"]["inviteMember"]["status"], "PENDING", "{r}");

    // Expired: refused, and listed as such.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let r = accept(&node, &token, "a-good-password").await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let list = node.gql(Some("acme"), Some(&owner), LIST, json!({})).await;
    let statuses: Vec<&str> =
        list["data"]["invitations"].as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["EXPIRED", "EXPIRED"], "{list}");
}
