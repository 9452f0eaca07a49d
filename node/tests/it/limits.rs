//! Rate limits: past a limit the answer is RATE_LIMITED with a retry-after and
//! nothing is appended; a flood on one account from one address does not lock
//! its owner out elsewhere; the counters live in NATS, so nodes count together.

use canopy_node::edge::limits::Limit;
use serde_json::{Value, json};

use crate::harness::*;

async fn login_from(node: &TestNode, address: &str, email: &str, password: &str) -> Value {
    let body = json!({ "query": LOGIN, "variables": { "input": { "email": email, "password": password } } });
    node.post("/graphql", &[("x-tenant-id", "acme"), ("x-forwarded-for", address)], body).await.1
}

fn tight(c: &mut canopy_node::Config) {
    c.trust_forwarded_for = true;
    c.rate_limits.login_per_account = Limit::new(3, 60);
    c.rate_limits.login_per_address = Limit::new(6, 60);
    c.rate_limits.register_per_address = Limit::new(2, 60);
}

#[tokio::test]
async fn a_flood_on_one_account_is_limited_without_locking_its_owner_out() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, tight).await;
    node.tenant("acme", "owner@acme.test").await;

    for _ in 0..3 {
        let r = login_from(&node, "203.0.113.7", "owner@acme.test", "wrong-password").await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    }
    let before = last_seq(&nats).await;
    // The fourth try from that address, even with the right password, is refused unseen.
    let r = login_from(&node, "203.0.113.7", "owner@acme.test", "owner-password").await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    let retry = r["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap_or(0);
    assert!((1..=60).contains(&retry), "{r}");
    assert_eq!(last_seq(&nats).await, before, "a limited login appended something");
    // The owner, elsewhere, signs in.
    let r = login_from(&node, "198.51.100.20", "owner@acme.test", "owner-password").await;
    assert!(r["data"]["login"]["token"].is_string(), "{r}");
    // The same email in another case is the same account.
    let r = login_from(&node, "203.0.113.7", "OWNER@acme.test", "owner-password").await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
}

#[tokio::test]
async fn one_address_is_limited_across_accounts_and_across_nodes() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, tight).await;
    node.tenant("acme", "owner@acme.test").await;
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let other = TestNode::start_configured(&nats, |c| {
        tight(c);
        c.master_key = Some(master.trim().to_owned().into());
    })
    .await;

    // Six attempts on six accounts, spread over two nodes: one address, one count.
    for i in 0..6 {
        let n = if i % 2 == 0 { &node } else { &other };
        let r = login_from(n, "192.0.2.1", &format!("user{i}@acme.test"), "some-password").await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    }
    for n in [&node, &other] {
        let r = login_from(n, "192.0.2.1", "user9@acme.test", "some-password").await;
        assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    }

    // Registration has its own limit per address.
    let register = |email: &str| {
        json!({ "query": REGISTER, "variables": { "input": {
            "email": email, "password": "a-good-password", "firstname": "A", "lastname": "B" } } })
    };
    for i in 0..2 {
        let (_, r) = node
            .post(
                "/graphql",
                &[("x-tenant-id", "acme"), ("x-forwarded-for", "192.0.2.9")],
                register(&format!("new{i}@acme.test")),
            )
            .await;
        assert!(r["data"]["register"]["token"].is_string(), "{r}");
    }
    let before = last_seq(&nats).await;
    let (_, r) = other
        .post("/graphql", &[("x-tenant-id", "acme"), ("x-forwarded-for", "192.0.2.9")], register("new2@acme.test"))
        .await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    assert_eq!(last_seq(&nats).await, before, "a limited registration appended something");
}

#[tokio::test]
async fn forwarded_addresses_are_ignored_unless_trusted() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| {
        tight(c);
        c.trust_forwarded_for = false;
    })
    .await;
    node.tenant("acme", "owner@acme.test").await;
    // Each try claims another address; without trust they are all the peer's,
    // which already signed the owner in once while creating the tenant.
    for i in 0..2 {
        let r = login_from(&node, &format!("203.0.113.{i}"), "owner@acme.test", "wrong-password").await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{r}");
    }
    let r = login_from(&node, "203.0.113.99", "owner@acme.test", "wrong-password").await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
}

/// Concurrent attempts from one address are each counted: of 40 refreshes sent
/// at once with room for 10, exactly 10 pass, on two nodes counting together.
#[tokio::test]
async fn concurrent_attempts_are_counted_exactly() {
    let nats = NatsServer::start();
    let limited = |c: &mut canopy_node::Config| {
        c.trust_forwarded_for = true;
        c.rate_limits.refresh_per_address = Limit::new(10, 3600);
    };
    let node = TestNode::start_configured(&nats, limited).await;
    node.tenant("acme", "owner@acme.test").await;
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let other = TestNode::start_configured(&nats, |c| {
        limited(c);
        c.master_key = Some(master.trim().to_owned().into());
    })
    .await;

    // Unknown refresh tokens: every attempt is counted, and none can succeed.
    let body = json!({ "query": "mutation($t: String!) { refreshSession(input: { refreshToken: $t }) { token } }",
        "variables": { "t": "not-a-refresh-token" } });
    let attempts = (0..40).map(|i| {
        let n = if i % 2 == 0 { &node } else { &other };
        let body = body.clone();
        async move { n.post("/graphql", &[("x-tenant-id", "acme"), ("x-forwarded-for", "192.0.2.77")], body).await.1 }
    });
    let answers = futures::future::join_all(attempts).await;
    let limited = answers.iter().filter(|r| code(r) == "RATE_LIMITED").count();
    let let_through: Vec<&str> = answers.iter().map(code).filter(|c| *c != "RATE_LIMITED").collect();
    assert_eq!(limited, 30, "exactly the attempts past the limit are refused; the others: {let_through:?}");
    assert!(let_through.iter().all(|c| *c == "UNAUTHENTICATED"), "{let_through:?}");
}
