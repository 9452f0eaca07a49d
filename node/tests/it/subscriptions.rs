//! GraphQL subscriptions over `graphql-transport-ws` on `GET /graphql`: the
//! token in `connection_init`, permissions checked per field, a tenant's
//! events and pushes only, and a slow reader cut off with bounded buffers.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `graphql-transport-ws` connection, initialised with `payload`; `Err`
/// holds how the server refused it.
async fn connect(node: &TestNode, payload: Value) -> Result<Socket, String> {
    let mut request = format!("ws://{}/graphql", node.addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("a WebSocket upgrade");
    ws.send(Message::text(json!({ "type": "connection_init", "payload": payload }).to_string())).await.unwrap();
    match next_frame(&mut ws).await {
        Some(v) if v["type"] == "connection_ack" => Ok(ws),
        other => Err(format!("{other:?}")),
    }
}

/// The next protocol message (pings answered), or `None` when the server closed.
async fn next_frame(ws: &mut Socket) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next()).await.expect("nothing within 15 s")?;
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "ping" {
                    ws.send(Message::text(json!({ "type": "pong" }).to_string())).await.unwrap();
                    continue;
                }
                return Some(v);
            }
            Ok(Message::Close(frame)) => return Some(json!({ "type": "closed", "frame": format!("{frame:?}") })),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

async fn subscribe(ws: &mut Socket, id: &str, query: &str) {
    let msg = json!({ "id": id, "type": "subscribe", "payload": { "query": query } });
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

/// The error code a frame carries: an `error` message's, or a `next`'s errors.
fn error_code(frame: &Value) -> Option<&str> {
    frame["payload"]["errors"][0]["extensions"]["code"].as_str().or(frame["payload"][0]["extensions"]["code"].as_str())
}

fn init(token: &str, tenant: &str) -> Value {
    json!({ "Authorization": format!("Bearer {token}"), "x-tenant-id": tenant })
}

const PUBLISH: &str = "mutation($t: String!, $p: String!) { publishMessage(input: {topic: $t, payload: $p}) { id } }";
const UPDATE: &str = "mutation { updateProfile(input: {firstname: \"Augusta\", lastname: \"Secretname\"}) { id } }";

#[tokio::test]
async fn subscriptions_stream_the_tenants_events_and_pushes_and_nothing_else() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;

    let mut ws = connect(&node, init(&cast.owner, "acme")).await.expect("the owner connects");
    subscribe(&mut ws, "e", "subscription { events(types: [\"ProfileUpdated\"]) { type aggregateId data } }").await;
    subscribe(&mut ws, "m", "subscription { messages(topic: \"orders/42\") { id topic payload } }").await;
    // The subscriptions are in place once the server has read them; a
    // harmless event of another type passes unseen meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // globex's change is not acme's; bob's is.
    node.gql(Some("globex"), Some(&cast.globex), UPDATE, json!({})).await;
    let r = node.gql(Some("acme"), Some(&cast.bob), UPDATE, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    let got = next_frame(&mut ws).await.unwrap();
    assert_eq!((got["type"].as_str(), got["id"].as_str()), (Some("next"), Some("e")), "{got}");
    let event = &got["payload"]["data"]["events"];
    assert_eq!(
        (event["type"].as_str(), event["aggregateId"].as_str()),
        (Some("ProfileUpdated"), Some(cast.bob_id.as_str()))
    );
    assert!(!event.to_string().contains("Secretname") && !event.to_string().contains("\"kid\""), "{event}");

    node.gql(Some("globex"), Some(&cast.globex), PUBLISH, json!({ "t": "orders/42", "p": "not yours" })).await;
    let r = node.gql(Some("acme"), Some(&cast.owner), PUBLISH, json!({ "t": "orders/42", "p": "live" })).await;
    let id = r["data"]["publishMessage"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    let got = next_frame(&mut ws).await.unwrap();
    assert_eq!(got["id"], "m", "{got}");
    assert_eq!(got["payload"]["data"]["messages"], json!({ "id": id, "topic": "orders/42", "payload": "live" }));

    // Each field's permission: bob may receive pushes, not read the events.
    let mut bob = connect(&node, init(&cast.bob, "acme")).await.expect("bob connects");
    subscribe(&mut bob, "e", "subscription { events { type } }").await;
    let refused = next_frame(&mut bob).await.unwrap();
    assert_eq!(error_code(&refused), Some("FORBIDDEN"), "{refused}");
    // Bad input is refused by type.
    for (i, bad) in [
        "subscription { events(types: [\"NoSuchEvent\"]) { type } }",
        "subscription { messages(topic: \"orders.*\") { id } }",
        "subscription { messages(topic: \"\") { id } }",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("bad{i}");
        subscribe(&mut ws, &id, bad).await;
        let mut r = next_frame(&mut ws).await.unwrap();
        while r["id"] != id.as_str() {
            r = next_frame(&mut ws).await.unwrap();
        }
        assert_eq!(error_code(&r), Some("BAD_USER_INPUT"), "{bad}: {r}");
    }

    // No connection without a valid token of the tenant named.
    for payload in [
        json!({}),
        init("not-a-token", "acme"),
        init(&cast.globex, "acme"),
        // A platform administrator's token names no tenant.
        json!({ "Authorization": format!("Bearer {}", node.admin_token().await) }),
    ] {
        assert!(connect(&node, payload.clone()).await.is_err(), "{payload} connected");
    }
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_cut_off_with_bounded_buffers() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let mut ws = connect(&node, init(&owner, "acme")).await.unwrap();
    subscribe(&mut ws, "m", "subscription { messages(topic: \"flood\") { payload } }").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // More than the socket's buffers and the subscription's 256 hold, unread.
    let big = "x".repeat(60 * 1024);
    let sent = 700;
    futures::stream::iter(0..sent)
        .for_each_concurrent(16, |_| {
            let big = big.clone();
            let (node, owner) = (&node, &owner);
            async move {
                let r = node.gql(Some("acme"), Some(owner), PUBLISH, json!({ "t": "flood", "p": big })).await;
                assert!(r["errors"].is_null(), "{r}");
            }
        })
        .await;
    // Give the pushes time to arrive and fill what they can.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut received = 0;
    let end = loop {
        let frame = next_frame(&mut ws).await.expect("the connection stays open");
        if frame["type"] == "next" && frame["payload"]["errors"].is_null() {
            received += 1;
            continue;
        }
        break frame;
    };
    assert!(received < sent, "a reader that fell behind was sent all {sent}");
    assert_eq!(error_code(&end), Some("SLOW_CONSUMER"), "after {received} messages: {end}");
    // The server still serves it: a new subscription works.
    subscribe(&mut ws, "again", "subscription { messages(topic: \"after\") { payload } }").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.gql(Some("acme"), Some(&owner), PUBLISH, json!({ "t": "after", "p": "fine" })).await;
    loop {
        let f = next_frame(&mut ws).await.unwrap();
        if f["id"] == "again" {
            assert_eq!(f["payload"]["data"]["messages"]["payload"], "fine", "{f}");
            break;
        }
    }
}
