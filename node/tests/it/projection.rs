//! The projector against events it cannot apply, published straight onto `evt.>`
//! by a plain NATS client, and against keys destroyed by another key ring.

use std::time::{Duration, Instant};

use actors::domain::tenant::Scope;
use actors::store::event_store::EventStore;
use actors::store::seal::{KeyRing, MasterKey, SealError, person_key_name};
use serde_json::{Value, json};

use crate::harness::*;
use crate::http::node_metric;

const DEAD_LETTERS: &str = "canopy_projection_dead_letters_total";
const APPLIED: &str = "canopy_projection_applied_seq";
const USERS: &str = "{ users(first: 100) { edges { node { id email firstname lastname } } } }";

/// A node whose master key is `master`: nodes on one NATS share the `keys`
/// bucket, so they need the same master key to unwrap it.
async fn node_with(nats: &NatsServer, master: &MasterKey) -> TestNode {
    let key = master.to_base64();
    TestNode::start_configured(nats, |c| c.master_key = Some(key.into())).await
}

/// Publishes `payload` on `subject` through JetStream; returns its stream sequence.
async fn publish(nats: &NatsServer, subject: &str, payload: Vec<u8>) -> u64 {
    let js = async_nats::jetstream::new(nats.client().await);
    js.publish(subject.to_owned(), payload.into()).await.unwrap().await.unwrap().sequence
}

/// An envelope as the event store writes it.
fn envelope(tenant: &str, aggregate: &str, id: &str, event_type: &str, data: Value) -> Vec<u8> {
    json!({
        "id": uuid::Uuid::now_v7().to_string(), "type": event_type, "tenant": tenant,
        "aggregate": aggregate, "aggregate_id": id, "occurred_at": "2025-01-01T00:00:00Z",
        "command_id": "forged", "schema_version": 1, "data": data,
    })
    .to_string()
    .into_bytes()
}

/// The data of an `AccountRegistered` whose personal fields name the key `kid`
/// (with a ciphertext no key opens).
fn registration(account_id: &str, kid: &str) -> Value {
    let sealed = json!({ "kid": kid, "n": "AAAAAAAAAAAAAAAA", "c": "AAAAAAAAAAAAAAAAAAAAAAAA" });
    json!({
        "account_id": account_id, "email_index": "00", "email": sealed, "password_hash": sealed,
        "firstname": sealed, "lastname": sealed, "owner": false,
    })
}

async fn me(node: &TestNode, tenant: &str, token: &str) -> Value {
    let r = node.gql(Some(tenant), Some(token), ME, json!({})).await;
    assert!(r["data"]["me"].is_object(), "{r}");
    r["data"]["me"].clone()
}

/// The ids of a tenant's users, as its owner lists them.
async fn user_ids(node: &TestNode, tenant: &str, owner: &str) -> Vec<String> {
    let r = node.gql(Some(tenant), Some(owner), USERS, json!({})).await;
    let edges = r["data"]["users"]["edges"].as_array().unwrap_or_else(|| panic!("{r}"));
    edges.iter().map(|e| e["node"]["id"].as_str().unwrap().to_owned()).collect()
}

/// Waits (at most ten seconds) until the node's read models hold the log up to `seq`.
async fn wait_applied(node: &TestNode, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while (node_metric(node, APPLIED).await as u64) < seq {
        assert!(Instant::now() < deadline, "the projector did not reach {seq}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_event_that_cannot_be_applied_is_set_aside_and_no_tenant_waits_for_it() {
    let nats = NatsServer::start();
    let master = MasterKey::generate();
    let node = node_with(&nats, &master).await;
    let acme_owner = node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;
    let owner = me(&node, "acme", &acme_owner).await;
    let owner_id = owner["id"].as_str().unwrap();

    // 1. A registration whose email is in clear instead of sealed.
    let mut data = registration("x", "x");
    let bad_id = uuid::Uuid::new_v4().to_string();
    data["account_id"] = bad_id.clone().into();
    data["email"] = "plain@acme.test".into();
    let subject = format!("evt.acme.account.{bad_id}.AccountRegistered");
    publish(&nats, &subject, envelope("acme", "account", &bad_id, "AccountRegistered", data)).await;
    // 2. A message that is no envelope at all.
    let subject = format!("evt.acme.account.{}.AccountRegistered", uuid::Uuid::new_v4());
    publish(&nats, &subject, b"not an envelope".to_vec()).await;
    // 3. The owner's real sealed first name, tampered with: its key exists, so
    // this is no erasure, and it must not reach the read model either.
    let registered = format!("evt.acme.account.{owner_id}.AccountRegistered");
    let (_, payload) = all_events(&nats).await.into_iter().find(|(s, _)| *s == registered).unwrap();
    let original: Value = serde_json::from_slice(&payload).unwrap();
    let mut firstname = original["data"]["firstname"].clone();
    let c = firstname["c"].as_str().unwrap();
    let flipped = if c.starts_with('A') { "B" } else { "A" };
    firstname["c"] = format!("{flipped}{}", &c[1..]).into();
    let data = json!({ "firstname": firstname, "lastname": original["data"]["lastname"] });
    let subject = format!("evt.acme.account.{owner_id}.ProfileUpdated");
    let last_bad = publish(&nats, &subject, envelope("acme", "account", owner_id, "ProfileUpdated", data)).await;

    // Every tenant, the bad events' own included, keeps its read-your-writes well
    // under the 5 s timeout a stalled projector would make each mutation wait.
    for tenant in ["globex", "acme"] {
        let email = format!("ada@{tenant}.test");
        let started = Instant::now();
        let r = node.register(tenant, &email, "password-123").await;
        let took = started.elapsed();
        let token = token_of(&r, "register");
        assert!(took < Duration::from_secs(2), "register in {tenant} took {took:?}");
        assert_eq!(me(&node, tenant, &token).await["email"], email.as_str());
    }
    assert!(node_metric(&node, APPLIED).await as u64 > last_bad);
    assert_eq!(node_metric(&node, DEAD_LETTERS).await, 3.0);
    assert_eq!(me(&node, "acme", &acme_owner).await, owner, "the tampered update changed nothing");

    // A node with a new read model projects the whole log again, the bad events
    // included, and still becomes ready (`start` waits for /readyz to answer 200).
    drop(node);
    let fresh = node_with(&nats, &master).await;
    assert_eq!(node_metric(&fresh, DEAD_LETTERS).await, 3.0);
    assert_eq!(me(&fresh, "acme", &acme_owner).await, owner);
}

#[tokio::test]
async fn an_envelope_that_names_another_tenant_than_its_subject_lands_nowhere() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let acme_owner = node.tenant("acme", "owner@acme.test").await;
    let globex_owner = node.tenant("globex", "owner@globex.test").await;

    // Published on acme's subject, claiming to be globex's.
    let forged = uuid::Uuid::new_v4().to_string();
    let kid = person_key_name(&Scope::parse_token("globex").unwrap(), &forged);
    let subject = format!("evt.acme.account.{forged}.AccountRegistered");
    publish(&nats, &subject, envelope("globex", "account", &forged, "AccountRegistered", registration(&forged, &kid)))
        .await;
    // The same shape, honest about its tenant, under a person key that does not
    // exist: a missing key is an erased person, who is projected as such.
    let erased = uuid::Uuid::new_v4().to_string();
    let kid = person_key_name(&Scope::parse_token("acme").unwrap(), &erased);
    let subject = format!("evt.acme.account.{erased}.AccountRegistered");
    let seq = publish(
        &nats,
        &subject,
        envelope("acme", "account", &erased, "AccountRegistered", registration(&erased, &kid)),
    )
    .await;
    wait_applied(&node, seq).await;

    let globex = user_ids(&node, "globex", &globex_owner).await;
    assert!(!globex.contains(&forged), "a forged envelope reached globex: {globex:?}");
    let acme = user_ids(&node, "acme", &acme_owner).await;
    assert!(!acme.contains(&forged), "{acme:?}");
    assert!(acme.contains(&erased), "{acme:?}");
    let r = node.gql(Some("acme"), Some(&acme_owner), USERS, json!({})).await;
    let row = r["data"]["users"]["edges"].as_array().unwrap().iter().find(|e| e["node"]["id"] == erased.as_str());
    assert_eq!(row.unwrap()["node"]["email"], "[erased]", "{r}");
    assert_eq!(node_metric(&node, DEAD_LETTERS).await, 1.0);
}

/// A key ring on a connection of its own, as another node would have.
async fn key_ring(nats: &NatsServer, master: &MasterKey) -> KeyRing {
    let (_, keys) = EventStore::open(nats.client().await, 1).await.unwrap();
    KeyRing::new(keys, master.clone())
}

#[tokio::test]
async fn a_key_destroyed_by_one_key_ring_stops_opening_on_another_that_had_it_cached() {
    let nats = NatsServer::start();
    let master = MasterKey::generate();
    let (a, b) = (key_ring(&nats, &master).await, key_ring(&nats, &master).await);
    let (tx, mut destroyed) = tokio::sync::mpsc::unbounded_channel();
    let watching = a.clone();
    let watch = tokio::spawn(async move { watching.forget_destroyed(tx).await });

    let name = person_key_name(&Scope::parse_token("acme").unwrap(), "a1");
    let sealed = a.key(&name).await.unwrap().seal(&name, b"Ada");
    assert_eq!(a.open_string(&sealed).await.unwrap(), "Ada");
    b.destroy(&name).await.unwrap();
    // B forgot it at once; A forgets it when its watch sees the purge.
    assert!(matches!(b.open_string(&sealed).await, Err(SealError::MissingKey(_))));
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.open_string(&sealed).await.is_ok() {
        assert!(Instant::now() < deadline, "ring A still opens a value sealed under a destroyed key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(a.open_string(&sealed).await, Err(SealError::MissingKey(_))));
    assert_eq!(destroyed.recv().await.as_deref(), Some(name.as_str()));
    watch.abort();
}

#[tokio::test]
async fn a_destroyed_person_key_blanks_that_persons_data_in_the_read_model() {
    let nats = NatsServer::start();
    let master = MasterKey::generate();
    let node = node_with(&nats, &master).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let token = token_of(&node.register("acme", "ada@acme.test", "password-123").await, "register");
    let ada = me(&node, "acme", &token).await;
    assert_eq!(ada["email"], "ada@acme.test");
    let owner_before = me(&node, "acme", &owner).await;

    let other_node = key_ring(&nats, &master).await;
    let id = ada["id"].as_str().unwrap();
    other_node.destroy(&person_key_name(&Scope::parse_token("acme").unwrap(), id)).await.unwrap();

    let erased =
        json!({ "id": id, "email": "[erased]", "firstname": "[erased]", "lastname": "[erased]", "owner": false });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = me(&node, "acme", &token).await;
        if now == erased {
            break;
        }
        assert!(Instant::now() < deadline, "still not erased: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(me(&node, "acme", &owner).await, owner_before, "only that person is erased");

    // A node that projects the log afresh cannot open the person's fields either.
    drop(node);
    let fresh = node_with(&nats, &master).await;
    assert_eq!(me(&fresh, "acme", &token).await, erased);
}
