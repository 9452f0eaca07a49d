//! The plain HTTP endpoints: health, readiness, GraphiQL, and secrets in the log.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn readiness_follows_nats_while_health_only_says_the_process_lives() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let r = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        body["checks"],
        json!({ "nats": true, "stream": true, "surrealdb": true, "projections": true, "revocations": true, "tenants": true })
    );

    drop(nats);
    let mut not_ready = false;
    for _ in 0..100 {
        let r = node.http.get(node.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(body["ready"], false);
            not_ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(not_ready, "readyz must answer 503 once NATS is gone");
    assert_eq!(node.http.get(node.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn metrics_and_introspection_close_when_the_configuration_says_so() {
    const TOKEN: &str = "metrics-token-0123456789";
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| {
        c.metrics_token = Some(TOKEN.to_owned().into());
        c.introspection = false;
    })
    .await;
    let metrics = |auth: Option<&str>| {
        let mut req = node.http.get(node.url("/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let open = metrics(None).await.unwrap();
    assert_eq!(open.status(), 401);
    assert!(!open.text().await.unwrap().contains("canopy_"), "metrics leaked without the token");
    assert_eq!(metrics(Some("Bearer not-the-metrics-token")).await.unwrap().status(), 401);
    assert_eq!(metrics(Some(TOKEN)).await.unwrap().status(), 401, "the token without `Bearer `");
    let ok = metrics(Some(&format!("Bearer {TOKEN}"))).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("canopy_projection_applied_seq"));

    // async-graphql answers introspection fields with null when it is off.
    let r = node.gql(None, None, "{ __schema { types { name } } }", json!({})).await;
    assert!(r["data"]["__schema"].is_null(), "introspection answered: {r}");
    let r = node.gql(None, None, "{ __type(name: \"User\") { fields { name } } }", json!({})).await;
    assert!(r["data"]["__type"].is_null(), "introspection answered: {r}");
    assert_eq!(
        node.http.get(node.url("/graphql")).send().await.unwrap().status(),
        404,
        "GraphiQL without introspection"
    );
    // Ordinary requests still work.
    assert!(node.admin_token().await.len() > 20);
}

#[tokio::test]
async fn get_graphql_serves_graphiql_and_introspection_works() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let page = node.http.get(node.url("/graphql")).send().await.unwrap().text().await.unwrap();
    assert!(page.to_lowercase().contains("graphiql"), "{page}");
    // GraphiQL's introspection query must fit under the depth and complexity limits.
    let introspection = "query { __schema { queryType { name } types { name kind fields(includeDeprecated: true) { name args { name type { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } type { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }";
    let r = node.gql(None, None, introspection, json!({})).await;
    assert!(r.get("errors").is_none(), "{r}");
    assert!(r["data"]["__schema"]["types"].as_array().unwrap().len() > 10);
}

#[tokio::test]
async fn no_password_hash_email_or_name_is_in_clear_in_the_log() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner.secret@acme.test").await;
    let r = node
        .gql(
            Some("acme"),
            None,
            REGISTER,
            json!({ "input": { "email": "Visible.Person@example.com", "password": "SuperSecretPassword1", "firstname": "Marguerite", "lastname": "Yourcenar" } }),
        )
        .await;
    token_of(&r, "register");
    let events = all_events(&nats).await;
    assert!(events.len() >= 6);
    for (subject, payload) in events {
        let text = String::from_utf8(payload).unwrap().to_lowercase();
        for secret in [
            "supersecretpassword1",
            "owner-password",
            ADMIN_PASSWORD,
            "visible.person",
            "owner.secret",
            "marguerite",
            "yourcenar",
            "argon2",
            ADMIN_EMAIL,
        ] {
            assert!(!text.contains(&secret.to_lowercase()), "{subject} holds {secret:?} in clear: {text}");
            assert!(!subject.to_lowercase().contains(&secret.to_lowercase()));
        }
    }
}

async fn metrics_text(node: &TestNode) -> String {
    node.http.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// One sample of the node's /metrics, read now.
pub async fn node_metric(node: &TestNode, name: &str) -> f64 {
    metric(&metrics_text(node).await, name)
}

async fn live_trees(node: &TestNode) -> u64 {
    node_metric(node, "canopy_tenant_trees").await as u64
}

fn metric(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_projection_lag_is_measured_from_the_ack_of_this_nodes_appends() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    for first in ["One", "Two", "Three"] {
        let q =
            format!("mutation {{ updateProfile(input: {{firstname: \"{first}\", lastname: \"X\"}}) {{ firstname }} }}");
        let r = node.gql(Some("acme"), Some(&owner), &q, json!({})).await;
        assert_eq!(r["data"]["updateProfile"]["firstname"], first, "{r}");
    }
    let text = metrics_text(&node).await;
    // Every mutation waited for its own event: each was acked here and projected.
    assert!(metric(&text, "canopy_projection_ack_lag_seconds_count") >= 3.0, "{text}");
    let (p50, p99) = (
        metric(&text, "canopy_projection_ack_lag_seconds{quantile=\"0.5\"}"),
        metric(&text, "canopy_projection_ack_lag_seconds{quantile=\"0.99\"}"),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{text}");
    // The lag from the stream's timestamp covers at least as many events.
    assert!(
        metric(&text, "canopy_projection_lag_seconds_count")
            >= metric(&text, "canopy_projection_ack_lag_seconds_count")
    );
}

#[tokio::test]
async fn commands_after_a_tree_passivated_start_it_again() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| c.idle_timeout_secs = 1).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let update = |first: &'static str| {
        format!("mutation {{ updateProfile(input: {{firstname: \"{first}\", lastname: \"X\"}}) {{ firstname }} }}")
    };
    let r = node.gql(Some("acme"), Some(&owner), &update("One"), json!({})).await;
    assert_eq!(r["data"]["updateProfile"]["firstname"], "One", "{r}");
    assert!(live_trees(&node).await >= 1);
    let mut idle = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if live_trees(&node).await == 0 {
            idle = true;
            break;
        }
    }
    assert!(idle, "idle trees must passivate");
    // The router still holds the stopped tree; the command must reach a new one.
    let r = node.gql(Some("acme"), Some(&owner), &update("Two"), json!({})).await;
    assert_eq!(r["data"]["updateProfile"]["firstname"], "Two", "{r}");
    assert!(live_trees(&node).await >= 1);
}

#[tokio::test]
async fn a_mutation_reads_the_read_model_only_for_the_fields_it_selects() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    const READS: &str = "canopy_read_model_reads_total";
    let me = node.gql(Some("acme"), Some(&owner), "{ me { id } }", json!({})).await;
    let id = me["data"]["me"]["id"].as_str().expect("me").to_owned();

    let before = node_metric(&node, READS).await;
    let q = "mutation { updateProfile(input: {firstname: \"Ada\", lastname: \"L\"}) { id } }";
    let r = node.gql(Some("acme"), Some(&owner), q, json!({})).await;
    assert_eq!(r["data"]["updateProfile"]["id"], id.as_str(), "{r}");
    let after_id_only = node_metric(&node, READS).await;
    assert_eq!(after_id_only, before, "an answer of only `id` needs no read");

    let q = "mutation { updateProfile(input: {firstname: \"Grace\", lastname: \"H\"}) { id firstname lastname email owner createdAt } }";
    let r = node.gql(Some("acme"), Some(&owner), q, json!({})).await;
    let u = &r["data"]["updateProfile"];
    // Read-your-writes still holds for the fields that are read.
    assert_eq!((u["firstname"].as_str(), u["lastname"].as_str()), (Some("Grace"), Some("H")), "{r}");
    assert_eq!((u["email"].as_str(), u["owner"].as_bool()), (Some("owner@acme.test"), Some(true)), "{r}");
    assert!(u["createdAt"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    // Six fields, one read.
    assert_eq!(node_metric(&node, READS).await, after_id_only + 1.0);
}

/// `{ __schema { types { fields { type { ofType { ... { name } } } } } } }`, `depth` levels deep.
fn introspection_of_depth(depth: usize) -> String {
    let inner = depth - 4;
    format!(
        "{{ __schema {{ types {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(inner),
        " }".repeat(inner)
    )
}

#[tokio::test]
async fn a_document_is_parsed_once_but_its_limits_are_checked_on_every_request() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    const REMEMBERED: &str = "canopy_graphql_documents_total{parse=\"remembered\"}";

    let first = node_metric(&node, REMEMBERED).await;
    for _ in 0..2 {
        let r = node.gql(Some("acme"), Some(&owner), "{ me { email } }", json!({})).await;
        assert_eq!(r["data"]["me"]["email"], "owner@acme.test", "{r}");
    }
    let second = node_metric(&node, REMEMBERED).await;
    assert_eq!(second, first + 1.0, "the second request reused the first one's parse");

    // Too deep: refused the second time too, though its parse was remembered.
    let deep = introspection_of_depth(canopy_node::graphql::MAX_DEPTH + 2);
    for _ in 0..2 {
        let r = node.gql(Some("acme"), Some(&owner), &deep, json!({})).await;
        assert!(r["data"].is_null(), "{r}");
        assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{r}");
        assert!(r["errors"][0]["message"].as_str().unwrap().contains("nested too deep"), "{r}");
    }
    assert_eq!(node_metric(&node, REMEMBERED).await, second + 1.0);

    // A syntax error is reported each time and never remembered.
    for _ in 0..2 {
        let r = node.gql(Some("acme"), Some(&owner), "{ me { email ", json!({})).await;
        assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{r}");
    }
    assert_eq!(node_metric(&node, REMEMBERED).await, second + 1.0);
}
