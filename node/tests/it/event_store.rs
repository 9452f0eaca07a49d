//! The event log's guarantees, checked against a real nats-server.

use actors::domain::tenant::{Scope, TenantId};
use actors::store::event_store::{Envelope, EventStore, Pending, StoreErrorKind, aggregate_filter, event_subject};

use crate::harness::{NatsServer, all_events};

async fn store(nats: &NatsServer) -> EventStore {
    let client = nats.client().await;
    EventStore::open(client, 1).await.unwrap().0
}

fn cid(raw: &str) -> actors::domain::ids::CommandId {
    actors::domain::ids::CommandId::parse(raw).unwrap()
}

fn acme() -> Scope {
    Scope::Tenant(TenantId::parse("acme").unwrap())
}

fn pending(id: &str, event_type: &str, expected: Option<u64>) -> Pending {
    Pending {
        subject: event_subject(&acme(), "account", id, event_type),
        filter: aggregate_filter(&acme(), "account", id),
        expected_seq: expected,
        envelope: Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.into(),
            tenant: "acme".into(),
            aggregate: "account".into(),
            aggregate_id: id.into(),
            occurred_at: actors::store::event_store::now_rfc3339(),
            command_id: "c".into(),
            request_digest: String::new(),
            schema_version: 1,
            actor: None,
            client: None,
            data: serde_json::json!({}),
        },
    }
}

#[tokio::test]
async fn two_writers_racing_on_one_aggregate_exactly_one_wins() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    let first = store.append(&cid("c0"), vec![pending("a1", "AccountRegistered", Some(0))]).await.unwrap();

    // Both writers saw version `first.last_seq` and append at the same time.
    let (c1, c2) = (cid("c1"), cid("c2"));
    let (a, b) = tokio::join!(
        store.append(&c1, vec![pending("a1", "ProfileUpdated", Some(first.last_seq))]),
        store.append(&c2, vec![pending("a1", "ProfileUpdated", Some(first.last_seq))]),
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "exactly one writer wins: {a:?} {b:?}");
    let loser = match (a, b) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!(),
    };
    assert_eq!(loser.kind(), StoreErrorKind::Conflict);
    assert_eq!(store.load(&aggregate_filter(&acme(), "account", "a1"), 0).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_retried_batch_is_recognised_and_stored_once() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    let batch = || vec![pending("a1", "AccountRegistered", Some(0)), pending("a1", "ProfileUpdated", None)];
    let once = store.append(&cid("cmd-1"), batch()).await.unwrap();
    assert!(!once.duplicate);
    // The retry is recognised by its message ids, even though its expected
    // sequence is now stale, and stores nothing.
    let again = store.append(&cid("cmd-1"), batch()).await.unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(all_events(&nats).await.len(), 2);
}

#[tokio::test]
async fn a_retried_single_event_on_fresh_state_is_acked_as_the_first() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    let first = store.append(&cid("c0"), vec![pending("a1", "AccountRegistered", Some(0))]).await.unwrap();
    let update =
        store.append(&cid("cmd-2"), vec![pending("a1", "ProfileUpdated", Some(first.last_seq))]).await.unwrap();
    // A retry decided on the state that already holds the update expects the
    // update's own sequence: the server acks it as a duplicate of the first.
    let retry =
        store.append(&cid("cmd-2"), vec![pending("a1", "ProfileUpdated", Some(update.last_seq))]).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.last_seq, update.last_seq);
    // A retry with the stale expectation is a conflict, which the executor
    // answers by reloading and deciding again (landing in the case above).
    let stale =
        store.append(&cid("cmd-2"), vec![pending("a1", "ProfileUpdated", Some(first.last_seq))]).await.unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::Conflict);
    assert_eq!(all_events(&nats).await.len(), 2);
}

#[tokio::test]
async fn a_batch_whose_second_message_fails_its_check_stores_nothing() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    store.append(&cid("c0"), vec![pending("taken", "EmailReserved", Some(0))]).await.unwrap();
    let before = all_events(&nats).await.len();

    // The first message is fine; the second claims a subject that is not empty.
    let err = store
        .append(
            &cid("c1"),
            vec![pending("a2", "AccountRegistered", Some(0)), pending("taken", "EmailReserved", Some(0))],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    assert_eq!(all_events(&nats).await.len(), before, "no event of the failed batch may land");
    assert!(store.load(&aggregate_filter(&acme(), "account", "a2"), 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn loading_an_aggregate_reads_only_its_own_events() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    for i in 0..50 {
        store
            .append(&cid(&format!("c{i}")), vec![pending(&format!("a{i}"), "AccountRegistered", Some(0))])
            .await
            .unwrap();
    }
    let one = store.load(&aggregate_filter(&acme(), "account", "a7"), 0).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].envelope.aggregate_id, "a7");
}

#[tokio::test]
async fn the_stream_is_configured_as_designed() {
    let nats = NatsServer::start();
    let _ = store(&nats).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let info = js.get_stream("EVENTS").await.unwrap().info().await.unwrap().config.clone();
    assert_eq!(info.subjects, vec!["evt.>".to_string()]);
    assert!(info.allow_atomic_publish && info.deny_delete && info.deny_purge);
    assert!(info.duplicate_window >= std::time::Duration::from_secs(120));
    assert_eq!(info.storage, async_nats::jetstream::stream::StorageType::File);
    assert_eq!(info.max_age, std::time::Duration::ZERO, "events are kept forever");
}

#[tokio::test]
async fn a_long_history_loads_whole_and_in_order_without_leaving_a_consumer() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    // 2,400 events of `long` interleaved with 2,400 of `other`, in atomic batches of 400.
    for b in 0..12 {
        let batch =
            (0..400).map(|i| pending(if i % 2 == 0 { "long" } else { "other" }, "ProfileUpdated", None)).collect();
        store.append(&cid(&format!("batch{b}")), batch).await.unwrap();
    }
    let long = store.load(&aggregate_filter(&acme(), "account", "long"), 0).await.unwrap();
    assert_eq!(long.len(), 2_400);
    assert!(long.iter().all(|e| e.envelope.aggregate_id == "long"), "another aggregate's event was loaded");
    assert!(long.windows(2).all(|w| w[0].seq < w[1].seq), "events out of order");

    // From a point in the middle: exactly the events after it.
    let after = long[1_499].seq;
    let tail = store.load(&aggregate_filter(&acme(), "account", "long"), after).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), long[1_500..].iter().map(|e| e.seq).collect::<Vec<_>>());
    // After the last event, and for an aggregate that never existed: nothing.
    assert!(store.load(&aggregate_filter(&acme(), "account", "long"), long[2_399].seq).await.unwrap().is_empty());
    assert!(store.load(&aggregate_filter(&acme(), "account", "nobody"), 0).await.unwrap().is_empty());

    // The consumers are deleted in the background; without that they would stay 30 s.
    let client = nats.client().await;
    let mut events = async_nats::jetstream::new(client).get_stream("EVENTS").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut left = events.info().await.unwrap().state.consumer_count;
    while left > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = events.info().await.unwrap().state.consumer_count;
    }
    assert_eq!(left, 0, "a load left a consumer on the stream");
}
