//! Bad input to the identity mutations: every refusal is typed, localized for
//! a German caller with the same code, and appends nothing.

use serde_json::{Value, json};

use crate::harness::*;

async fn gql_as(node: &TestNode, token: Option<&str>, lang: &str, query: &str, variables: Value) -> Value {
    let mut headers = vec![("x-tenant-id", "acme"), ("accept-language", lang)];
    let bearer;
    if let Some(t) = token {
        bearer = format!("Bearer {t}");
        headers.push(("authorization", &bearer));
    }
    node.post("/graphql", &headers, json!({ "query": query, "variables": variables })).await.1
}

fn message(r: &Value) -> &str {
    r["errors"][0]["message"].as_str().unwrap_or_else(|| panic!("no error in {r}"))
}

#[tokio::test]
async fn errors_keep_their_code_and_speak_the_callers_language() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    let login = json!({ "input": { "email": "owner@acme.test", "password": "wrong-password" } });
    let en = gql_as(&node, None, "en-US", LOGIN, login.clone()).await;
    let de = gql_as(&node, None, "de-CH, en;q=0.5", LOGIN, login).await;
    assert_eq!((code(&en), code(&de)), ("UNAUTHENTICATED", "UNAUTHENTICATED"));
    assert_eq!(message(&en), "invalid email or password");
    assert_eq!(message(&de), "E-Mail-Adresse oder Passwort ist falsch");
    let short =
        json!({ "input": { "email": "x@example.com", "password": "short", "firstname": "A", "lastname": "B" } });
    let de = gql_as(&node, None, "de", REGISTER, short).await;
    assert_eq!(code(&de), "BAD_USER_INPUT");
    assert_eq!(message(&de), "password: ein Passwort hat 8 bis 128 Zeichen");
    // Refusals before GraphQL runs are translated too.
    let de = gql_as(&node, Some("not-a-jwt"), "de", ME, json!({})).await;
    assert_eq!((code(&de), message(&de)), ("UNAUTHENTICATED", "das Token ist ungültig"));
}

#[tokio::test]
async fn hostile_identity_input_is_refused_and_appends_nothing() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    node.register("acme", "taken@example.com", "a-good-password").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let ada = token_of(&r, "register");
    let before = last_seq(&nats).await;

    // Header injection: CR/LF in names and emails never reaches a mail header.
    for (email, first) in [
        ("ada2@example.com", "Ada\r\nBcc: x@evil.test"),
        ("a\r\nb@example.com", "Ada"),
        ("ada3@example.com", "Ada\nBcc: x@evil.test"),
    ] {
        let input =
            json!({ "input": { "email": email, "password": "a-good-password", "firstname": first, "lastname": "L" } });
        let r = node.gql(Some("acme"), None, REGISTER, input).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{email:?} {first:?}: {r}");
    }
    // Codes and tokens of every shape and length.
    let verify = "mutation($c: String, $t: String) { verifyEmail(input: {code: $c, token: $t}) { id } }";
    let mut junk: Vec<String> = (0..120).step_by(9).map(|n| "7".repeat(n)).collect();
    junk.extend(["12345a".into(), "*.>".into(), "000000\r\n".into(), "٠١٢٣٤٥".into()]);
    for j in &junk {
        let r = node.gql(Some("acme"), Some(&ada), verify, json!({ "c": j })).await;
        if j.len() != 6 {
            assert_eq!(code(&r), "BAD_USER_INPUT", "code {j:?}: {r}");
        }
        let r = node.gql(Some("acme"), None, verify, json!({ "t": j })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "token {j:?}: {r}");
        let r = node
            .gql(
                Some("acme"),
                None,
                "mutation($t: String!) { resetPassword(input: {token: $t, password: \"a-new-password\"}) }",
                json!({ "t": j }),
            )
            .await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "reset token {j:?}: {r}");
    }
    // Both proofs, or neither.
    let r = node.gql(Some("acme"), Some(&ada), verify, json!({ "c": "123456", "t": "x" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let r = node.gql(Some("acme"), Some(&ada), verify, json!({})).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // A code needs a session; a well-formed wrong code is refused.
    let r = node.gql(Some("acme"), None, verify, json!({ "c": "123456" })).await;
    assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    // New passwords too short or too long; a wrong current password.
    let change = "mutation($c: String!, $n: String!) { changePassword(input: {currentPassword: $c, newPassword: $n}) }";
    for (current, new) in [
        ("analytical-engine", "short"),
        ("analytical-engine", &"x".repeat(129)[..]),
        ("wrong-password", "a-new-password"),
    ] {
        let r = node.gql(Some("acme"), Some(&ada), change, json!({ "c": current, "n": new })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    }
    // An email change to an address taken in the tenant, in any case.
    let r = node
        .gql(
            Some("acme"),
            Some(&ada),
            "mutation { changeEmail(input: {newEmail: \"TAKEN@example.com\", password: \"analytical-engine\"}) }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    // Someone else's account: forbidden by the actor whatever the edge sends.
    let remove = node
        .gql(
            Some("acme"),
            Some(&ada),
            "mutation($id: ID!) { removeUser(id: $id) }",
            json!({ "id": "00000000-0000-0000-0000-000000000000" }),
        )
        .await;
    assert_eq!(code(&remove), "FORBIDDEN", "{remove}");
    assert_eq!(last_seq(&nats).await, before, "a refused request appended something");

    // A reset for an unknown email is answered as for a known one, and appends nothing.
    let reset = "mutation($e: String!) { requestPasswordReset(input: {email: $e}) }";
    let unknown = node.gql(Some("acme"), None, reset, json!({ "e": "nobody@example.com" })).await;
    assert_eq!(last_seq(&nats).await, before, "an unknown email's reset appended something");
    let known = node.gql(Some("acme"), None, reset, json!({ "e": "ada@example.com" })).await;
    assert_eq!(unknown, known, "the answers differ");
    assert_eq!(known["data"]["requestPasswordReset"], true, "{known}");
    let _ = owner;
}
