//! The account lifecycle without mail: erasure by crypto-shredding, the last
//! owner's protection, removal by the owner, and the owner's user search.

use actors::store::seal::{KeyRing, MasterKey, SealError, Sealed};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const DELETE: &str = "mutation($p: String!) { deleteAccount(input: {password: $p}) }";

/// The node's key ring, as another node with the same master key would have it.
pub(crate) async fn key_ring(nats: &NatsServer, node: &TestNode) -> KeyRing {
    let master = std::fs::read_to_string(node.data_dir().join("master.key")).unwrap();
    let (_, kv) = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap();
    KeyRing::new(kv, MasterKey::from_base64(&master).unwrap())
}

/// The sealed personal fields of `account_id`'s registration, read raw from EVENTS.
pub(crate) async fn sealed_fields(nats: &NatsServer, account_id: &str) -> Vec<Sealed> {
    let subject_end = format!(".account.{account_id}.AccountRegistered");
    let (_, payload) =
        all_events(nats).await.into_iter().find(|(s, _)| s.ends_with(&subject_end)).expect("the registration");
    let v: Value = serde_json::from_slice(&payload).unwrap();
    ["email", "firstname", "lastname"].iter().map(|f| serde_json::from_value(v["data"][*f].clone()).unwrap()).collect()
}

#[tokio::test]
async fn a_deleted_account_is_crypto_shredded_and_its_email_is_free_again() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    let (ada, token) = (r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned(), token_of(&r, "register"));
    let ring = key_ring(&nats, &node).await;
    for sealed in sealed_fields(&nats, &ada).await {
        assert!(ring.open(&sealed).await.is_ok(), "before the erasure the fields open");
    }

    // A wrong password changes nothing.
    let before = last_seq(&nats).await;
    let wrong = node.gql(Some("acme"), Some(&token), DELETE, json!({ "p": "not-the-password" })).await;
    assert_eq!(code(&wrong), "BAD_USER_INPUT", "{wrong}");
    assert_eq!(last_seq(&nats).await, before);

    let done = node.gql(Some("acme"), Some(&token), DELETE, json!({ "p": "analytical-engine" })).await;
    assert_eq!(done["data"]["deleteAccount"], true, "{done}");
    // The session ended with the account, and the person is gone from the read model.
    let me = node.gql(Some("acme"), Some(&token), ME, json!({})).await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "{me}");
    let users =
        node.gql(Some("acme"), Some(&owner), "{ users { totalCount edges { node { email } } } }", json!({})).await;
    assert!(!users.to_string().contains("ada@example.com"), "{users}");
    assert_eq!(users["data"]["users"]["totalCount"], 1, "{users}");
    let login = node
        .gql(
            Some("acme"),
            None,
            LOGIN,
            json!({ "input": { "email": "ada@example.com", "password": "analytical-engine" } }),
        )
        .await;
    assert_eq!(code(&login), "UNAUTHENTICATED", "{login}");

    // The log still holds the events, and nobody can open their personal fields
    // (a key ring that never saw the key, as any node after the erasure).
    let ring = key_ring(&nats, &node).await;
    for sealed in sealed_fields(&nats, &ada).await {
        assert!(matches!(ring.open(&sealed).await, Err(SealError::MissingKey(_))), "a field still opens");
    }
    // A rebuild from the log brings none of it back.
    let config = canopy_node::Config { surreal_url: Some("mem://".into()), ..canopy_node::Config::default() };
    let rm = canopy_node::read_model::ReadModel::connect(&config).await.unwrap();
    let store = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap().0;
    canopy_node::projection::rebuild(&rm, &store, &ring, Default::default()).await.unwrap();
    let dump = rm.dump().await.unwrap().to_string();
    assert!(!dump.contains("ada@example.com") && !dump.contains(&ada), "{dump}");

    // The address is free: someone registers with it.
    let again = node.register("acme", "ADA@example.com", "another-password").await;
    assert!(again["data"]["register"]["token"].is_string(), "{again}");
}

#[tokio::test]
async fn the_last_owner_stays_and_only_the_owner_removes_others() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let last = node.gql(Some("acme"), Some(&owner), DELETE, json!({ "p": "owner-password" })).await;
    assert_eq!(code(&last), "CONFLICT", "{last}");

    let ada = node.register("acme", "ada@example.com", "analytical-engine").await;
    let bob = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let ada_id = ada["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();
    let remove = "mutation($id: ID!) { removeUser(id: $id) }";
    let refused = node.gql(Some("acme"), Some(&token_of(&bob, "register")), remove, json!({ "id": ada_id })).await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    let done = node.gql(Some("acme"), Some(&owner), remove, json!({ "id": ada_id })).await;
    assert_eq!(done["data"]["removeUser"], true, "{done}");
    let me = node.gql(Some("acme"), Some(&token_of(&ada, "register")), ME, json!({})).await;
    assert_eq!(code(&me), "UNAUTHENTICATED", "{me}");
    // Removing again finds nobody; garbage ids are bad input.
    let again = node.gql(Some("acme"), Some(&owner), remove, json!({ "id": ada_id })).await;
    assert_eq!(code(&again), "NOT_FOUND", "{again}");
    let bad = node.gql(Some("acme"), Some(&owner), remove, json!({ "id": "*.>" })).await;
    assert_eq!(code(&bad), "BAD_USER_INPUT", "{bad}");
}

#[tokio::test]
async fn the_owner_searches_users_by_email_and_name_in_any_order_page_by_page() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    for (email, first, last) in [
        ("carol@Example.com", "Carol", "Zeta"),
        ("alice@example.com", "Alice", "Young"),
        ("bob@other.org", "Bob", "Xavier"),
        ("dave@example.com", "Dave", "Alpha"),
    ] {
        let r = node
            .gql(
                Some("acme"),
                None,
                REGISTER,
                json!({ "input": { "email": email, "password": "a-good-password", "firstname": first, "lastname": last } }),
            )
            .await;
        assert!(r["data"]["register"]["token"].is_string(), "{r}");
    }
    let q = "query($f: UserFilter, $o: UserOrderBy, $n: Int!, $a: String) { users(filter: $f, orderBy: $o, first: $n, after: $a) { totalCount pageInfo { hasNextPage endCursor } edges { node { email lastname } } } }";
    let page = |f: Value, o: Value, n: i32, a: Value| {
        let owner = owner.clone();
        let node = &node;
        async move { node.gql(Some("acme"), Some(&owner), q, json!({ "f": f, "o": o, "n": n, "a": a })).await }
    };

    // A case-insensitive part of the email.
    let r = page(json!({ "email": "EXAMPLE.COM" }), json!(null), 10, json!(null)).await;
    assert_eq!(r["data"]["users"]["totalCount"], 3, "{r}");
    // Of the name (first, last or both).
    let r = page(json!({ "name": "alice you" }), json!(null), 10, json!(null)).await;
    assert_eq!(user_emails(&r), ["alice@example.com"], "{r}");
    // Nobody verified yet.
    let r = page(json!({ "verified": true }), json!(null), 10, json!(null)).await;
    assert_eq!(r["data"]["users"]["totalCount"], 0, "{r}");

    // By last name, descending, two per page: the cursor carries on in that order.
    let o = json!({ "field": "LASTNAME", "direction": "DESC" });
    let first = page(json!({}), o.clone(), 2, json!(null)).await;
    assert_eq!(user_emails(&first), ["carol@Example.com", "alice@example.com"], "{first}");
    assert_eq!(first["data"]["users"]["totalCount"], 5, "{first}");
    let cursor = first["data"]["users"]["pageInfo"]["endCursor"].clone();
    let second = page(json!({}), o.clone(), 2, cursor.clone()).await;
    assert_eq!(user_emails(&second), ["bob@other.org", "dave@example.com"], "{second}");
    // A cursor of one order is refused in another.
    let mixed = page(json!({}), json!({ "field": "EMAIL" }), 2, cursor).await;
    assert_eq!(code(&mixed), "BAD_USER_INPUT", "{mixed}");
    // By email, ascending.
    let r = page(json!({}), json!({ "field": "EMAIL" }), 10, json!(null)).await;
    assert_eq!(
        user_emails(&r),
        ["alice@example.com", "bob@other.org", "carol@Example.com", "dave@example.com", "owner@acme.test"],
        "{r}"
    );
    // Control characters in a filter are bad input.
    let bad = page(json!({ "email": "a\u{0}b" }), json!(null), 10, json!(null)).await;
    assert_eq!(code(&bad), "BAD_USER_INPUT", "{bad}");
}

/// Every node's tenant feed shreds a deleted tenant's key at once: racing
/// shredders end with the marker in place, none undoing another's work.
#[tokio::test]
async fn concurrent_shreds_of_one_key_all_end_with_its_marker() {
    let nats = NatsServer::start();
    let (_, kv) = actors::store::event_store::EventStore::open(nats.client().await, 1).await.unwrap();
    let ring = KeyRing::new(kv, MasterKey::generate());
    ring.key("data.acme").await.unwrap();
    let (a, b, c) = (ring.clone(), ring.clone(), ring.clone());
    let (x, y, z) = tokio::join!(a.shred("data.acme"), b.shred("data.acme"), c.shred("data.acme"));
    for r in [x, y, z] {
        r.unwrap();
    }
    assert!(ring.is_shredded("data.acme").await.unwrap());
    assert!(ring.key("data.acme").await.is_err(), "a shredded key is never made again");
}

/// `nats_url` may list several servers, as NATS clients take them: a node
/// whose list names a server that is down as well reaches the one that is up.
#[tokio::test]
async fn a_node_reaches_nats_through_a_list_of_servers() {
    let nats = NatsServer::start();
    let node = TestNode::start_configured(&nats, |c| {
        c.nats_url = Some(format!("nats://127.0.0.1:1, {}", nats.url()));
    })
    .await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let r = node.gql(Some("acme"), Some(&owner), ME, json!({})).await;
    assert_eq!(r["data"]["me"]["email"], "owner@acme.test", "{r}");
}

/// Every node registers with the NATS service API: `$SRV.PING.canopy` finds
/// each one, `$SRV.INFO` names its HTTP address, and its status endpoint (and
/// `$SRV.STATS`) counts the tenant trees it runs.
#[tokio::test]
async fn every_node_answers_the_nats_service_api_with_its_address_and_tenants() {
    use futures::StreamExt;
    let nats = NatsServer::start();
    let one = TestNode::start(&nats).await;
    let master = std::fs::read_to_string(one.data_dir().join("master.key")).unwrap();
    let two = TestNode::start_configured(&nats, |c| c.master_key = Some(master.trim().to_owned().into())).await;
    let client = nats.client().await;
    // Every node answers a ping: gather the answers for a moment.
    let gather = |subject: &'static str| {
        let client = client.clone();
        async move {
            let inbox = client.new_inbox();
            let mut answers = client.subscribe(inbox.clone()).await.unwrap();
            client.publish_with_reply(subject, inbox, "".into()).await.unwrap();
            let mut out = Vec::new();
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), answers.next()).await {
                out.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
            }
            out
        }
    };
    let pings = gather("$SRV.PING.canopy").await;
    assert_eq!(pings.len(), 2, "{pings:?}");
    assert!(pings.iter().all(|p| p["name"] == "canopy" && p["version"] == env!("CARGO_PKG_VERSION")), "{pings:?}");
    let infos = gather("$SRV.INFO.canopy").await;
    let mut addrs: Vec<String> =
        infos.iter().map(|i| i["metadata"]["http"].as_str().unwrap_or_default().to_owned()).collect();
    addrs.sort();
    let mut want = vec![one.addr.to_string(), two.addr.to_string()];
    want.sort();
    assert_eq!(addrs, want, "{infos:?}");

    // A node running a tenant's tree counts it.
    one.tenant("acme", "owner@acme.test").await;
    let ids: Vec<String> = pings.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut total = 0;
        for id in &ids {
            let r = client.request(format!("canopy.node.{id}.status"), "".into()).await.unwrap();
            let status: Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(status["id"], id.as_str(), "{status}");
            total += status["tenants"].as_u64().unwrap();
        }
        if total >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no node counts the tenant's tree");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = gather("$SRV.STATS.canopy").await;
    assert!(stats.iter().any(|s| s["endpoints"][0]["data"]["tenants"].as_u64() >= Some(1)), "{stats:?}");
}
