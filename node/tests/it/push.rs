//! Push to clients: `publishMessage` and forwarded events reach clients of the
//! tenant over native NATS (async-nats), WebSocket (nats-py) and MQTT
//! (paho-mqtt), which authenticate through the node's auth callout with the
//! tenant's slug and a Canopy token; nats-server refuses them everything else.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::harness::*;

const PUBLISH: &str =
    "mutation($t: String!, $p: String!) { publishMessage(input: {topic: $t, payload: $p}) { id topic } }";
const FORWARD: &str = "mutation($types: [String!]!) { setPushForwarding(types: $types) }";
const MESSAGES: &str =
    "query($t: String!, $after: String) { messages(topic: $t, after: $after) { id topic payload pushedAt cursor } }";
const CREDENTIALS: &str =
    "mutation { issuePushCredentials(input: {}) { username password expiresAt tokenId subjects } }";

/// A native NATS client of the push account, and the server's complaints about it.
async fn nats_client(
    nats: &NatsServer,
    user: &str,
    password: &str,
) -> Result<(async_nats::Client, mpsc::UnboundedReceiver<String>), async_nats::ConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(0))
        .connect(nats.url())
        .await?;
    Ok((client, rx))
}

/// The next complaint, within 5 s.
async fn complaint(errors: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), errors.recv()).await.expect("no complaint from the server").unwrap()
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("no push within 10 s").unwrap()
}

fn published(r: &Value) -> String {
    r["data"]["publishMessage"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned()
}

async fn count_events(nats: &NatsServer, event_type: &str) -> usize {
    all_events(nats).await.iter().filter(|(s, _)| s.ends_with(&format!(".{event_type}"))).count()
}

#[tokio::test]
async fn a_native_nats_client_gets_its_tenants_pushes_and_nothing_else() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;

    // A member's sign-in token is the password; the tenant's slug the user name.
    let (client, mut errors) = nats_client(&nats, "acme", &cast.bob).await.expect("bob connects");
    let mut sub = client.subscribe("push.acme.>").await.unwrap();
    client.flush().await.unwrap();

    // Another tenant's message goes to its own subject only.
    let r = node.gql(Some("globex"), Some(&cast.globex), PUBLISH, json!({ "t": "orders/42", "p": "not yours" })).await;
    published(&r);
    let r = node.gql(Some("acme"), Some(&cast.owner), PUBLISH, json!({ "t": "orders/42", "p": "hello" })).await;
    assert_eq!(r["data"]["publishMessage"]["topic"], "orders/42", "{r}");
    let id = published(&r);
    let msg = next(&mut sub).await;
    assert_eq!(msg.subject.as_str(), "push.acme.orders.42");
    assert_eq!(&msg.payload[..], b"hello");
    assert_eq!(msg.headers.as_ref().and_then(|h| h.get("Canopy-Push-Id")).map(|v| v.to_string()), Some(id.clone()));

    // The history keeps it; a page after its cursor is empty.
    let r = node.gql(Some("acme"), Some(&cast.bob), MESSAGES, json!({ "t": "orders/42" })).await;
    let page = r["data"]["messages"].as_array().unwrap_or_else(|| panic!("{r}")).clone();
    assert_eq!(page.len(), 1, "{r}");
    assert_eq!((page[0]["id"].as_str(), page[0]["payload"].as_str()), (Some(id.as_str()), Some("hello")));
    let r = node
        .gql(Some("acme"), Some(&cast.bob), MESSAGES, json!({ "t": "orders/42", "after": page[0]["cursor"] }))
        .await;
    assert_eq!(r["data"]["messages"], json!([]), "{r}");
    let r = node.gql(Some("globex"), Some(&cast.globex), MESSAGES, json!({ "t": "orders/42" })).await;
    assert_eq!(r["data"]["messages"][0]["payload"], "not yours", "each tenant reads its own history: {r}");

    // nats-server refuses the rest: another tenant's pushes, the log, the
    // commands, and publishing anything.
    for subject in ["push.globex.>", "evt.>", "cmd.>", ">", "$JS.API.>", "_INBOX.>"] {
        let _ = client.subscribe(subject.to_owned()).await.unwrap();
        client.flush().await.unwrap();
        let e = complaint(&mut errors).await;
        assert!(e.to_lowercase().contains("permissions violation") && e.contains(subject), "{subject}: {e}");
    }
    client.publish("push.acme.orders.42", "forged".into()).await.unwrap();
    client.flush().await.unwrap();
    assert!(complaint(&mut errors).await.to_lowercase().contains("permissions violation for publish"));
    // Nothing of it reached the subscriber: the next push is the next publish.
    node.gql(Some("acme"), Some(&cast.owner), PUBLISH, json!({ "t": "orders/42", "p": "second" })).await;
    assert_eq!(&next(&mut sub).await.payload[..], b"second");

    // Wrong tenant, wrong token, no token: no connection.
    for (user, password) in [
        ("acme", cast.globex.as_str()),
        ("globex", cast.bob.as_str()),
        ("acme", "not-a-token"),
        ("acme", ""),
        ("ACME", cast.bob.as_str()),
        ("acme.>", cast.bob.as_str()),
        ("nobody", cast.bob.as_str()),
    ] {
        assert!(nats_client(&nats, user, password).await.is_err(), "{user} with {password:.12} got in");
    }
}

#[tokio::test]
async fn push_credentials_work_until_revoked_and_bad_input_appends_nothing() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;

    let r = node.gql(Some("acme"), Some(&cast.bob), CREDENTIALS, json!({})).await;
    let creds = r["data"]["issuePushCredentials"].clone();
    assert_eq!(creds["username"], "acme", "{r}");
    assert_eq!(creds["subjects"], json!(["push.acme.>", "push/acme/#"]));
    let password = creds["password"].as_str().unwrap().to_owned();
    let (client, _) = nats_client(&nats, "acme", &password).await.expect("the credentials connect");
    let mut sub = client.subscribe("push.acme.>").await.unwrap();
    client.flush().await.unwrap();
    node.gql(Some("acme"), Some(&cast.owner), PUBLISH, json!({ "t": "a/b", "p": "via token" })).await;
    assert_eq!(&next(&mut sub).await.payload[..], b"via token");
    // Another tenant's slug with them is refused.
    assert!(nats_client(&nats, "globex", &password).await.is_err());

    // Revoked: no new connection.
    let revoke = "mutation($id: ID!) { revokeAccessToken(id: $id) }";
    let r = node.gql(Some("acme"), Some(&cast.owner), revoke, json!({ "id": creds["tokenId"] })).await;
    assert_eq!(r["data"]["revokeAccessToken"], true, "{r}");
    assert!(nats_client(&nats, "acme", &password).await.is_err(), "a revoked token still connects");

    // An access token without subscribe_messages is refused too.
    let create = "mutation { createAccessToken(input: {name: \"ci\", scopes: [\"read_users\"]}) { secret } }";
    let r = node.gql(Some("acme"), Some(&cast.owner), create, json!({})).await;
    let other = r["data"]["createAccessToken"]["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    assert!(nats_client(&nats, "acme", &other).await.is_err());

    // Bad topics and payloads: typed errors, nothing appended.
    let before = count_events(&nats, "MessagePublished").await;
    let big = "x".repeat(64 * 1024 + 1);
    for (topic, payload) in [
        ("orders.42", "p"),
        ("orders/*", "p"),
        ("orders/#", "p"),
        ("orders/+", "p"),
        ("orders/>", "p"),
        ("", "p"),
        ("/orders", "p"),
        ("a//b", "p"),
        ("events/AccountRegistered", "p"),
        ("a b", "p"),
        ("ok", big.as_str()),
    ] {
        let r = node.gql(Some("acme"), Some(&cast.owner), PUBLISH, json!({ "t": topic, "p": payload })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{topic:?}: {r}");
    }
    // A member may not publish (no publish_messages), nor choose forwarding.
    let r = node.gql(Some("acme"), Some(&cast.bob), PUBLISH, json!({ "t": "ok", "p": "p" })).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = node.gql(Some("acme"), Some(&cast.bob), FORWARD, json!({ "types": ["ProfileUpdated"] })).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let many: Vec<String> = (0..101).map(|i| format!("T{i}")).collect();
    for types in [json!(["NoSuchEvent"]), json!(many)] {
        let r = node.gql(Some("acme"), Some(&cast.owner), FORWARD, json!({ "types": types })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    }
    for (topic, first) in [("a.b", 10), ("ok", 0), ("ok", 101)] {
        let q = "query($t: String!, $f: Int) { messages(topic: $t, first: $f) { id } }";
        let r = node.gql(Some("acme"), Some(&cast.owner), q, json!({ "t": topic, "f": first })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    }
    assert_eq!(count_events(&nats, "MessagePublished").await, before);
    assert_eq!(count_events(&nats, "ForwardingSet").await, 0);
}

#[tokio::test]
async fn forwarded_events_reach_clients_without_their_sealed_values() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;
    let (client, _) = nats_client(&nats, "acme", &cast.bob).await.unwrap();
    let mut sub = client.subscribe("push.acme.events.>").await.unwrap();
    client.flush().await.unwrap();

    let r =
        node.gql(Some("acme"), Some(&cast.owner), FORWARD, json!({ "types": ["ProfileUpdated", "RoleCreated"] })).await;
    assert_eq!(r["data"]["setPushForwarding"], json!(["ProfileUpdated", "RoleCreated"]), "{r}");
    let r = node.gql(Some("acme"), Some(&cast.owner), "{ pushForwarding }", json!({})).await;
    assert_eq!(r["data"]["pushForwarding"], json!(["ProfileUpdated", "RoleCreated"]), "{r}");

    let update = "mutation { updateProfile(input: {firstname: \"Augusta\", lastname: \"Secretname\"}) { id } }";
    let r = node.gql(Some("acme"), Some(&cast.bob), update, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    // globex forwards nothing: its events stay in the log.
    node.gql(Some("globex"), Some(&cast.globex), update, json!({})).await;
    let msg = next(&mut sub).await;
    assert_eq!(msg.subject.as_str(), "push.acme.events.ProfileUpdated");
    let body: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!((body["type"].as_str(), body["tenant"].as_str()), (Some("ProfileUpdated"), Some("acme")), "{body}");
    let text = body.to_string();
    assert!(!text.contains("Secretname") && !text.contains("\"kid\""), "a sealed value was pushed: {text}");

    // Unforwarded types are not pushed: after the change, a role arrives next.
    let r = node.gql(Some("acme"), Some(&cast.owner), FORWARD, json!({ "types": ["RoleCreated"] })).await;
    assert!(r["errors"].is_null(), "{r}");
    node.gql(Some("acme"), Some(&cast.bob), update, json!({})).await;
    let role = "mutation { createRole(input: {name: \"Support\", permissions: [\"read_users\"]}) { id } }";
    let r = node.gql(Some("acme"), Some(&cast.owner), role, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
    assert_eq!(next(&mut sub).await.subject.as_str(), "push.acme.events.RoleCreated");
}

/// Runs `scripts/push_probe.py` and reads its report line by line.
struct Probe {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Probe {
    fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new("python3")
            .arg(repo_file("scripts/push_probe.py"))
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with paho-mqtt and nats-py (scripts/test.sh installs them)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The report up to and including the first line whose event is `until`.
    async fn until(&mut self, until: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("the probe said nothing more after {out:?}"))
                .unwrap()
                .unwrap_or_else(|| panic!("the probe ended after {out:?}"));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            let done = v["event"] == until || v["event"] == "exit";
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn events<'a>(report: &'a [Value], kind: &str) -> Vec<&'a Value> {
    report.iter().filter(|v| v["event"] == kind).collect()
}

#[tokio::test]
async fn mqtt_and_websocket_clients_get_pushes_and_are_refused_elsewhere() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;
    let mqtt = nats.local().mqtt.unwrap().port().to_string();
    let ws = nats.local().websocket.unwrap().port().to_string();

    let mut mqtt_probe = Probe::start(&[
        "mqtt",
        "--port",
        &mqtt,
        "--user",
        "acme",
        "--password",
        &cast.bob,
        "--subscribe",
        "push/acme/#",
        "--subscribe",
        "push/globex/#",
        "--subscribe",
        "evt/#",
        "--subscribe",
        "$MQTT/sub/#",
        "--subscribe",
        "$MQTT/msgs/#",
        "--count",
        "1",
    ]);
    let report = mqtt_probe.until("ready").await;
    let granted: Vec<(String, bool)> = events(&report, "suback")
        .iter()
        .map(|s| (s["topic"].as_str().unwrap().to_owned(), s["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        granted,
        [
            ("push/acme/#".into(), true),
            ("push/globex/#".into(), false),
            ("evt/#".into(), false),
            // The MQTT layer's own subjects (other sessions' deliveries) are refused too.
            ("$MQTT/sub/#".into(), false),
            ("$MQTT/msgs/#".into(), false),
        ],
        "{report:?}"
    );
    let mut ws_probe = Probe::start(&[
        "ws",
        "--port",
        &ws,
        "--user",
        "acme",
        "--password",
        &cast.bob,
        "--subscribe",
        "push.acme.>",
        "--subscribe",
        "push.globex.>",
        "--publish",
        "push.acme.orders.42",
        "--count",
        "1",
    ]);
    let report = ws_probe.until("ready").await;
    let errors: Vec<String> =
        events(&report, "error").iter().map(|e| e["error"].as_str().unwrap().to_lowercase()).collect();
    assert!(errors.iter().any(|e| e.contains("permissions violation") && e.contains("push.globex.>")), "{report:?}");
    assert!(errors.iter().any(|e| e.contains("permissions violation for publish")), "{report:?}");

    let r =
        node.gql(Some("acme"), Some(&cast.owner), PUBLISH, json!({ "t": "orders/42", "p": "to every client" })).await;
    published(&r);
    let report = mqtt_probe.until("message").await;
    let got = events(&report, "message");
    assert_eq!(got.len(), 1, "{report:?}");
    assert_eq!(
        (got[0]["topic"].as_str(), got[0]["payload"].as_str()),
        (Some("push/acme/orders/42"), Some("to every client"))
    );
    let report = ws_probe.until("message").await;
    let got = events(&report, "message");
    assert_eq!(
        (got[0]["topic"].as_str(), got[0]["payload"].as_str()),
        (Some("push.acme.orders.42"), Some("to every client"))
    );

    // Refused at the door: the MQTT CONNACK says so, the WebSocket connection fails.
    for (user, password) in [("acme", "wrong"), ("globex", cast.bob.as_str())] {
        let mut p = Probe::start(&["mqtt", "--port", &mqtt, "--user", user, "--password", password]);
        let report = p.until("exit").await;
        assert!(!events(&report, "refused").is_empty() && events(&report, "connected").is_empty(), "{report:?}");
        let mut p = Probe::start(&["ws", "--port", &ws, "--user", user, "--password", password]);
        let report = p.until("exit").await;
        assert!(!events(&report, "refused").is_empty() && events(&report, "connected").is_empty(), "{report:?}");
    }
}

const RETAIN: &str =
    "mutation($t: String!, $p: String!) { publishMessage(input: {topic: $t, payload: $p, retain: true}) { id } }";

/// An MQTT client subscribing to `topic` as `user`; what it received within
/// three seconds (a retained message comes at once).
async fn mqtt_receives(nats: &NatsServer, user: &str, password: &str, topic: &str) -> Vec<Value> {
    let port = nats.local().mqtt.unwrap().port().to_string();
    let args = ["mqtt", "--port", &port, "--user", user, "--password", password, "--subscribe", topic];
    let mut probe = Probe::start(&[&args[..], &["--count", "1", "--timeout", "3"]].concat());
    let report = probe.until("exit").await;
    assert!(!events(&report, "ready").is_empty(), "{report:?}");
    events(&report, "message").into_iter().cloned().collect()
}

#[tokio::test]
async fn a_retained_message_reaches_mqtt_clients_that_subscribe_later_until_cleared() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;
    // Published before any MQTT client of the account connected; the newer
    // retained message replaces the older, a plain one retains nothing.
    for (topic, payload, query) in
        [("status/door", "open", RETAIN), ("status/door", "closed", RETAIN), ("status/window", "ajar", PUBLISH)]
    {
        let r = node.gql(Some("acme"), Some(&cast.owner), query, json!({ "t": topic, "p": payload })).await;
        published(&r);
    }
    let want = |got: &[Value]| {
        got.iter().map(|m| (m["topic"].clone(), m["payload"].clone(), m["retain"].clone())).collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        // The push reactor stores it a moment after the answer.
        let got = mqtt_receives(&nats, "acme", &cast.bob, "push/acme/status/#").await;
        if !got.is_empty() || std::time::Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(want(&got), [(json!("push/acme/status/door"), json!("closed"), json!(true))]);
    // Another tenant's client sees none of it.
    assert!(mqtt_receives(&nats, "globex", &cast.globex, "push/globex/#").await.is_empty());

    // An empty retained message clears it, and reaches no client itself.
    let r = node.gql(Some("acme"), Some(&cast.owner), RETAIN, json!({ "t": "status/door", "p": "" })).await;
    published(&r);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !mqtt_receives(&nats, "acme", &cast.bob, "push/acme/status/#").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the retained message was not cleared");
    }
    let r = node.gql(Some("acme"), Some(&cast.owner), MESSAGES, json!({ "t": "status/door" })).await;
    let payloads: Vec<_> = r["data"]["messages"].as_array().unwrap().iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(payloads, [json!("open"), json!("closed")], "{r}");
}
