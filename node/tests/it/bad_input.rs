//! Every kind of bad input gets a clear, typed error, appends nothing and leaves
//! the node serving.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::harness::*;

struct Case {
    name: &'static str,
    status: u16,
    /// The HTTP status wanted: request-level refusals carry their own, while
    /// resolver and validation errors ride on 200 as GraphQL-over-HTTP says.
    want_status: u16,
    code: &'static str,
    response: Value,
}

fn check(cases: &[Case]) {
    for c in cases {
        assert_eq!(code(&c.response), c.code, "{}: {}", c.name, c.response);
        assert_eq!(c.status, c.want_status, "{}: {}", c.name, c.response);
        let text = c.response.to_string();
        for leak in ["argon2", "panicked", "src/", "Sealed", "owner-password", "$argon"] {
            assert!(!text.contains(leak), "{}: the error leaks {leak:?}: {text}", c.name);
        }
    }
}

async fn raw(node: &TestNode, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut req = node.http.post(node.url("/graphql")).header("content-type", "application/json").body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.text().await.unwrap()).unwrap())
}

#[tokio::test]
async fn bad_requests_are_refused_with_typed_errors_and_append_nothing() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let before = last_seq(&nats).await;
    let mut cases = Vec::new();

    let (s, r) = raw(&node, &[("x-tenant-id", "acme")], b"{\"query\": ".to_vec()).await;
    cases.push(Case { name: "malformed JSON", status: s, want_status: 400, code: "BAD_USER_INPUT", response: r });
    assert_eq!(s, 400);

    let big = format!("{{\"query\": \"{{ me {{ id }} }}\", \"pad\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let (s, r) = raw(&node, &[("x-tenant-id", "acme")], big.into_bytes()).await;
    assert_eq!(s, 413);
    cases.push(Case { name: "body over 1 MiB", status: s, want_status: 413, code: "BAD_USER_INPUT", response: r });

    let deep = format!(
        "{{ __schema {{ types {{ {} name {} }} }} }}",
        "fields { type { ofType { ".repeat(6),
        "} } } ".repeat(6)
    );
    let (s, r) = node.post("/graphql", &[("x-tenant-id", "acme")], json!({ "query": deep })).await;
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("nested too deep"), "{r}");
    cases.push(Case { name: "query too deep", status: s, want_status: 200, code: "BAD_USER_INPUT", response: r });

    let wide: String = (0..600).map(|i| format!("a{i}: me {{ id }} ")).collect();
    let (s, r) = node.post("/graphql", &[("x-tenant-id", "acme")], json!({ "query": format!("{{ {wide} }}") })).await;
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("too complex"), "{r}");
    cases.push(Case { name: "query too complex", status: s, want_status: 200, code: "BAD_USER_INPUT", response: r });

    let (s, r) = node.post("/graphql", &[("x-tenant-id", "nobody")], json!({ "query": ME })).await;
    assert_eq!(s, 404);
    cases.push(Case { name: "unknown tenant", status: s, want_status: 404, code: "NOT_FOUND", response: r });

    let too_long = "a".repeat(64);
    for slug in ["acme.corp", "acme*", "acme>", "ac me", "", too_long.as_str(), "ACME", "_system"] {
        let (s, r) = node.post("/graphql", &[("x-tenant-id", slug)], json!({ "query": ME })).await;
        assert_eq!(s, 400, "{slug:?}: {r}");
        cases.push(Case {
            name: "bad slug in header",
            status: s,
            want_status: 400,
            code: "BAD_USER_INPUT",
            response: r,
        });
    }
    for path in ["/t/%C3%A4cme/graphql", "/t/ac%20me/graphql", "/t/a.b/graphql", "/t/%3E/graphql"] {
        let (s, r) = node.post(path, &[], json!({ "query": ME })).await;
        assert_eq!(s, 400, "{path}: {r}");
        cases.push(Case { name: "bad slug in path", status: s, want_status: 400, code: "BAD_USER_INPUT", response: r });
    }

    let register = |email: &str, password: &str| json!({ "query": REGISTER, "variables": { "input": { "email": email, "password": password, "firstname": "A", "lastname": "B" } } });
    let long_password = "p".repeat(129);
    for (name, body) in [
        ("invalid email", register("not-an-email", "good-password")),
        ("password under 8", register("a@example.com", "short")),
        ("password over 128", register("a@example.com", &long_password)),
        ("duplicate email", register("OWNER@acme.test", "good-password")),
    ] {
        let (s, r) = node.post("/graphql", &[("x-tenant-id", "acme")], body).await;
        cases.push(Case { name, status: s, want_status: 200, code: "BAD_USER_INPUT", response: r });
    }

    let (s, r) = node.post("/graphql", &[("x-tenant-id", "acme")], json!({ "query": ME })).await;
    cases.push(Case { name: "missing token", status: s, want_status: 200, code: "UNAUTHENTICATED", response: r });

    // A forged token: a valid one with its payload changed to another account.
    let parts: Vec<&str> = owner.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("someone-else");
    let forged = format!("{}.{}.{}", parts[0], B64.encode(claims.to_string()), parts[2]);
    // `alg: none`, with the same claims and no signature.
    let none = format!("{}.{}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    // Signed with HS256 using the public key as the secret (the classic confusion).
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"public-key-bytes"),
    )
    .unwrap();
    for (name, token) in
        [("forged token", forged), ("alg none token", none), ("HS256 token", hs), ("garbage token", "abc".into())]
    {
        let bearer = format!("Bearer {token}");
        let (s, r) =
            node.post("/graphql", &[("x-tenant-id", "acme"), ("authorization", &bearer)], json!({ "query": ME })).await;
        assert_eq!(s, 401, "{name}: {r}");
        cases.push(Case { name, status: s, want_status: 401, code: "UNAUTHENTICATED", response: r });
    }

    let (s, r) = node.post("/graphql", &[("x-tenant-id", "acme")], json!({ "query": "{ nope }" })).await;
    cases.push(Case { name: "unknown field", status: s, want_status: 200, code: "BAD_USER_INPUT", response: r });
    let (s, r) = node
        .post(
            "/graphql",
            &[("x-tenant-id", "acme"), ("authorization", &format!("Bearer {owner}"))],
            json!({ "query": "{ users(first: 1000) { edges { cursor } } }" }),
        )
        .await;
    cases.push(Case { name: "page too large", status: s, want_status: 200, code: "BAD_USER_INPUT", response: r });
    let (s, r) = node
        .post(
            "/graphql",
            &[("x-tenant-id", "acme"), ("authorization", &format!("Bearer {owner}"))],
            json!({ "query": "{ users(after: \"bogus\") { edges { cursor } } }" }),
        )
        .await;
    cases.push(Case { name: "bad cursor", status: s, want_status: 200, code: "BAD_USER_INPUT", response: r });

    check(&cases);
    assert_eq!(last_seq(&nats).await, before, "bad input must append nothing");

    // And the node still serves.
    assert_eq!(node.http.get(node.url("/healthz")).send().await.unwrap().status(), 200);
    let r = node.gql(Some("acme"), Some(&owner), ME, json!({})).await;
    assert_eq!(r["data"]["me"]["email"], "owner@acme.test", "{r}");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.token_ttl_secs = 1).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    // One second of life plus the five seconds of leeway for clock skew.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let bearer = format!("Bearer {owner}");
    let (s, r) =
        node.post("/graphql", &[("x-tenant-id", "acme"), ("authorization", &bearer)], json!({ "query": ME })).await;
    assert_eq!(s, 401);
    assert_eq!(code(&r), "UNAUTHENTICATED");
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("expired"), "{r}");
}
