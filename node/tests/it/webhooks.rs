//! Webhooks: deliveries signed per the Standard Webhooks specification (checked
//! by the project's own Python library), retried with backoff under one
//! `webhook-id`, logged per attempt, disabled after failing in a row (the
//! owner mailed), redelivered on request, kept across a node restart, and
//! guarded against SSRF at creation and at delivery. Endpoints are real HTTP
//! servers on loopback: one written here that answers as each test needs,
//! and `examples/python/webhook_receiver.py`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::harness::*;

const CREATE: &str = "mutation($input: CreateWebhookInput!) { createWebhook(input: $input) { secret webhook { id name url method eventTypes authKind apiKeyHeader enabled } } }";
const UPDATE: &str = "mutation($input: UpdateWebhookInput!) { updateWebhook(input: $input) { id url method authKind apiKeyHeader enabled disabledReason } }";
const LIST: &str = "query { webhooks { id name url enabled disabledReason authKind previousSecretExpiresAt } }";
const DELIVERIES: &str = "query($id: ID!, $after: String) { webhookDeliveries(webhookId: $id, after: $after) { id eventId eventType status attempts responseCode latencyMs error nextAttemptAt cursor history { attempt status responseCode error response } } }";
const ROTATE: &str = "mutation($id: ID!, $o: Int) { rotateWebhookSecret(id: $id, overlapSeconds: $o) { secret webhook { id previousSecretExpiresAt } } }";
const REDELIVER: &str = "mutation($d: ID!) { redeliver(deliveryId: $d) { deliveryId webhookId } }";
const DELETE: &str = "mutation($id: ID!) { deleteWebhook(id: $id) }";

/// One request an endpoint received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    method: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What the endpoint answers: a status, extra headers, a body, after a delay.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Answer {
    fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new(), delay: Duration::ZERO }
    }
}

/// An HTTP endpoint on loopback that records what it receives and answers
/// from a plan (then 204 once the plan is used up).
#[derive(Clone)]
pub(crate) struct Endpoint {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    plan: Arc<Mutex<VecDeque<Answer>>>,
    always: Arc<Mutex<Option<Answer>>>,
    /// Closes each connection without an answer (and records nothing).
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Endpoint {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener)
    }

    fn on(listener: tokio::net::TcpListener) -> Self {
        let endpoint = Self {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            plan: Arc::default(),
            always: Arc::default(),
            down: Arc::default(),
        };
        let e = endpoint.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let e = e.clone();
                tokio::spawn(async move { e.serve(socket).await });
            }
        });
        endpoint
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn answer(&self, answers: impl IntoIterator<Item = Answer>) {
        self.plan.lock().unwrap().extend(answers);
    }

    fn down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn always(&self, answer: Answer) {
        *self.always.lock().unwrap() = Some(answer);
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for at least `n` requests.
    pub(crate) async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{n} request(s) expected, {} came: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn serve(&self, socket: tokio::net::TcpStream) {
        let mut reader = BufReader::new(socket);
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let method = line.split_whitespace().next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await.unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.trim_end().split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() || self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.got.lock().unwrap().push(Received { method, headers, body: String::from_utf8_lossy(&body).into() });
        let answer = self
            .plan
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.always.lock().unwrap().clone())
            .unwrap_or_else(|| Answer::status(204));
        tokio::time::sleep(answer.delay).await;
        let mut head =
            format!("HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n", answer.status, answer.body.len());
        for (k, v) in &answer.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut socket = reader.into_inner();
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.write_all(&answer.body).await;
        let _ = socket.shutdown().await;
    }
}

/// The first request `endpoint` received that `matches`, waiting up to 20 s.
async fn received_with(endpoint: &Endpoint, matches: impl Fn(&Received) -> bool) -> Received {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = endpoint.received().into_iter().find(|g| matches(g)) {
            return found;
        }
        assert!(Instant::now() < deadline, "no such request: {:?}", endpoint.received());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the Standard Webhooks Python library verifies `got` with `secret`.
async fn python_verifies(secret: &str, got: &Received) -> bool {
    let headers: serde_json::Map<String, Value> =
        got.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let script = "import json, sys\nfrom standardwebhooks.webhooks import Webhook, WebhookVerificationError\nd = json.load(sys.stdin)\ntry:\n    Webhook(d['secret']).verify(d['body'].encode(), d['headers'])\n    print('verified')\nexcept WebhookVerificationError as e:\n    print('refused', e)\n";
    let input = json!({ "secret": secret, "headers": headers, "body": got.body }).to_string();
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with standardwebhooks (scripts/test.sh installs it)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python: {text}");
    text.trim() == "verified"
}

/// One master key for every node of a test: a second node on the same NATS
/// must open the keys the first one sealed.
const MASTER_KEY: &str = "d2ViaG9vay10ZXN0cy1tYXN0ZXIta2V5LTMyLWJ5dGU";

/// A node whose webhooks may call loopback, retrying quickly.
async fn node_with(nats: &NatsServer, tune: impl FnOnce(&mut canopy_node::config::Config)) -> TestNode {
    TestNode::start_configured(nats, |c| {
        c.master_key = Some(MASTER_KEY.to_owned().into());
        c.webhook_allow_loopback = true;
        c.webhook_backoff_ms = 200;
        c.webhook_max_attempts = 5;
        c.webhook_timeout_ms = 2_000;
        tune(c);
    })
    .await
}

fn input(url: &str, types: &[&str]) -> Value {
    json!({ "name": "orders", "url": url, "eventTypes": types })
}

async fn create(node: &TestNode, token: &str, input: Value) -> (String, String) {
    let r = node.gql(Some("acme"), Some(token), CREATE, json!({ "input": input })).await;
    let created = &r["data"]["createWebhook"];
    let secret = created["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    (created["webhook"]["id"].as_str().unwrap().to_owned(), secret)
}

pub(crate) async fn deliveries(node: &TestNode, token: &str, id: &str) -> Vec<Value> {
    let r = node.gql(Some("acme"), Some(token), DELIVERIES, json!({ "id": id })).await;
    r["data"]["webhookDeliveries"].as_array().unwrap_or_else(|| panic!("{r}")).clone()
}

/// Waits until the webhook's newest delivery has `status`.
pub(crate) async fn delivery_with(node: &TestNode, token: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = deliveries(node, token, id).await;
        if let Some(d) = all.first().filter(|d| d["status"] == status) {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "no delivery became {status}: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn webhook(node: &TestNode, token: &str, id: &str) -> Value {
    let r = node.gql(Some("acme"), Some(token), LIST, json!({})).await;
    r["data"]["webhooks"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_example_receiver_verifies_deliveries_with_the_standard_webhooks_library() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |_| {}).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    // The receiver needs the secret, and the webhook its port: it is created
    // pointing elsewhere, then moved to where the receiver listens.
    let (id, secret) = create(&node, &owner, input("http://127.0.0.1:9/hooks", &["AccountRegistered"])).await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    // The README's receiver: it verifies each delivery or answers 400.
    let mut receiver = tokio::process::Command::new("python3")
        .arg(repo_file("examples/python/webhook_receiver.py"))
        .args(["--port", "0", "--secret", &secret])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with standardwebhooks");
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    let port =
        serde_json::from_str::<Value>(&first).unwrap()["listening"].as_u64().unwrap_or_else(|| panic!("{first}"));
    let url = format!("http://127.0.0.1:{port}/hooks");
    let r = node.gql(Some("acme"), Some(&owner), UPDATE, json!({ "input": { "id": id, "url": url } })).await;
    assert_eq!(r["data"]["updateWebhook"]["url"], url.as_str(), "{r}");

    node.register("acme", "bob@example.com", "bob-the-builder").await;
    let line =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("a delivery").unwrap().unwrap();
    let seen: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["type"], "AccountRegistered", "{line}");
    assert_eq!(seen["verified_with"], json!([0]), "{line}");
    assert!(seen["id"].as_str().unwrap().starts_with("msg_"), "{line}");
}

#[tokio::test]
async fn deliveries_are_signed_retried_under_one_id_logged_and_redelivered() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |_| {}).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let endpoint = Endpoint::start().await;
    endpoint.answer([Answer::status(500), Answer { body: b"busy".to_vec(), ..Answer::status(503) }]);
    let (id, secret) = create(&node, &owner, input(&endpoint.url("/in"), &["AccountRegistered"])).await;

    let r = node.register("acme", "bob@example.com", "bob-the-builder").await;
    let bob_id = r["data"]["register"]["user"]["id"].as_str().unwrap().to_owned();
    let got = endpoint.wait_for(3, Duration::from_secs(20)).await;
    // Every attempt carries the same webhook-id and a valid signature.
    let ids: Vec<_> = got.iter().map(|g| g.header("webhook-id").unwrap().to_owned()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    for g in &got {
        assert_eq!(g.method, "POST");
        assert_eq!(g.header("content-type"), Some("application/json"));
        assert!(python_verifies(&secret, g).await, "{g:?}");
        assert!(!python_verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", g).await, "another secret must not verify");
    }
    // The body is the event without sealed values: no email, no name in clear.
    let body: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(body["type"], "AccountRegistered");
    assert_eq!(body["data"]["aggregate_id"], bob_id.as_str());
    assert!(!got[2].body.contains("bob@example.com") && !got[2].body.contains("Lovelace"), "{}", got[2].body);
    // A body altered on the way no longer verifies.
    let forged = Received { body: got[2].body.replace("AccountRegistered", "AccountErased"), ..got[2].clone() };
    assert!(!python_verifies(&secret, &forged).await);

    let d = delivery_with(&node, &owner, &id, "SUCCEEDED").await;
    assert_eq!(d["id"], ids[0].as_str(), "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["responseCode"], 204, "{d}");
    let codes: Vec<_> = d["history"].as_array().unwrap().iter().map(|a| a["responseCode"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(503), json!(204)], "{d}");
    assert_eq!(d["history"][1]["response"], "busy", "{d}");
    assert_eq!(d["history"][0]["status"], "RETRYING", "{d}");

    // A redelivery sends it once more under the same id.
    let r = node.gql(Some("acme"), Some(&owner), REDELIVER, json!({ "d": ids[0] })).await;
    assert_eq!(r["data"]["redeliver"]["webhookId"], id.as_str(), "{r}");
    let got = endpoint.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(got[3].header("webhook-id"), Some(ids[0].as_str()));
    assert!(python_verifies(&secret, &got[3]).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries(&node, &owner, &id).await[0]["attempts"] != 4 {
        assert!(Instant::now() < deadline, "the redelivery is not in the log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A rotation: both secrets sign during the overlap.
    let r = node.gql(Some("acme"), Some(&owner), ROTATE, json!({ "id": id, "o": 3600 })).await;
    let new_secret = r["data"]["rotateWebhookSecret"]["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    assert_ne!(new_secret, secret);
    assert!(r["data"]["rotateWebhookSecret"]["webhook"]["previousSecretExpiresAt"].is_string(), "{r}");
    node.register("acme", "carol@example.com", "carol-the-builder").await;
    let got = endpoint.wait_for(5, Duration::from_secs(20)).await;
    assert!(python_verifies(&new_secret, &got[4]).await && python_verifies(&secret, &got[4]).await);
    // With no overlap the old secret stops signing at once.
    let r = node.gql(Some("acme"), Some(&owner), ROTATE, json!({ "id": id, "o": 0 })).await;
    let newest = r["data"]["rotateWebhookSecret"]["secret"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    node.register("acme", "dave@example.com", "dave-the-builder").await;
    let got = endpoint.wait_for(6, Duration::from_secs(20)).await;
    assert!(python_verifies(&newest, &got[5]).await && !python_verifies(&new_secret, &got[5]).await);

    // No secret or credential is in the log in clear.
    for (_, raw) in all_events(&nats).await {
        let text = String::from_utf8_lossy(&raw);
        for s in [&secret, &new_secret, &newest] {
            assert!(!text.contains(s.trim_start_matches("whsec_")), "a signing secret is in the log");
        }
    }
}

#[tokio::test]
async fn a_webhook_failing_in_a_row_is_disabled_its_owner_mailed_and_enabled_again() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |c| {
        c.webhook_max_attempts = 2;
        c.webhook_disable_after = 3;
    })
    .await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let endpoint = Endpoint::start().await;
    endpoint.always(Answer::status(500));
    let (id, _) = create(&node, &owner, input(&endpoint.url("/in"), &["AccountRegistered"])).await;

    node.register("acme", "bob@example.com", "bob-the-builder").await;
    node.register("acme", "carol@example.com", "carol-the-builder").await;
    // Three failed attempts in a row disable it; the owner hears of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while webhook(&node, &owner, &id).await["enabled"] != false {
        let d = deliveries(&node, &owner, &id).await;
        assert!(Instant::now() < deadline, "not disabled: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first mail is the owner's address verification.
    let mails = node.outbox_mails("owner@acme.test", 2).await;
    let mail = mails.iter().find(|m| m.subject.contains("webhook")).unwrap_or_else(|| panic!("{mails:?}"));
    assert!(mail.text.contains("failed 3 times in a row") && mail.text.contains(&endpoint.url("/in")), "{}", mail.text);
    let w = webhook(&node, &owner, &id).await;
    assert_eq!(w["enabled"], false, "{w}");
    assert_eq!(w["disabledReason"], "it failed 3 times in a row", "{w}");
    let calls = endpoint.received().len();
    assert!((3..=4).contains(&calls), "{calls} calls");

    // Disabled, it receives nothing, and nothing can be redelivered.
    node.register("acme", "dave@example.com", "dave-the-builder").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.received().len(), calls);
    let some = deliveries(&node, &owner, &id).await[0]["id"].as_str().unwrap().to_owned();
    let r = node.gql(Some("acme"), Some(&owner), REDELIVER, json!({ "d": some })).await;
    assert_eq!(code(&r), "CONFLICT", "{r}");

    // Enabled again with a healthy endpoint, its count starts over.
    endpoint.always(Answer::status(200));
    let r = node.gql(Some("acme"), Some(&owner), UPDATE, json!({ "input": { "id": id, "enabled": true } })).await;
    assert_eq!(r["data"]["updateWebhook"]["enabled"], true, "{r}");
    node.register("acme", "erin@example.com", "erin-the-builder").await;
    endpoint.wait_for(calls + 1, Duration::from_secs(20)).await;
    assert_eq!(webhook(&node, &owner, &id).await["enabled"], true);
}

#[tokio::test]
async fn credentials_and_methods_reach_the_endpoint_and_stay_sealed() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |_| {}).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let endpoint = Endpoint::start().await;
    let mut create_input = input(&endpoint.url("/basic"), &["*"]);
    create_input["auth"] = json!({ "basic": { "username": "canopy", "password": "pa55-w0rd-basic" } });
    create_input["method"] = json!("PUT");
    let (id, _) = create(&node, &owner, create_input).await;
    let w = webhook(&node, &owner, &id).await;
    assert_eq!(w["authKind"], "BASIC", "{w}");
    assert!(!w.to_string().contains("pa55"), "{w}");

    node.register("acme", "bob@example.com", "bob-the-builder").await;
    let got = endpoint.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].method, "PUT");
    // "canopy:pa55-w0rd-basic" in base64.
    assert_eq!(got[0].header("authorization"), Some("Basic Y2Fub3B5OnBhNTUtdzByZC1iYXNpYw=="), "{:?}", got[0]);

    let key = json!({ "input": { "id": id, "method": "POST", "auth": { "apiKey": { "header": "X-Api-Key", "value": "key-0f-the-api" } } } });
    let r = node.gql(Some("acme"), Some(&owner), UPDATE, key).await;
    assert_eq!(r["data"]["updateWebhook"]["apiKeyHeader"], "x-api-key", "{r}");
    node.register("acme", "carol@example.com", "carol-the-builder").await;
    // Every event type goes to this webhook: wait for one sent with the key.
    let with_key = received_with(&endpoint, |g| g.header("x-api-key").is_some()).await;
    assert_eq!(with_key.header("x-api-key"), Some("key-0f-the-api"));
    assert_eq!(with_key.method, "POST");

    let bearer = json!({ "input": { "id": id, "auth": { "bearer": { "token": "t0ken-bearer" } } } });
    node.gql(Some("acme"), Some(&owner), UPDATE, bearer).await;
    node.register("acme", "dave@example.com", "dave-the-builder").await;
    received_with(&endpoint, |g| g.header("authorization") == Some("Bearer t0ken-bearer")).await;
    for (_, raw) in all_events(&nats).await {
        let text = String::from_utf8_lossy(&raw);
        for secret in ["pa55-w0rd-basic", "key-0f-the-api", "t0ken-bearer"] {
            assert!(!text.contains(secret), "{secret} is in the log in clear");
        }
    }
}

#[tokio::test]
async fn the_ssrf_guard_refuses_forbidden_addresses_at_creation_and_at_delivery() {
    let nats = NatsServer::start();
    let strict = node_with(&nats, |c| c.webhook_allow_loopback = false).await;
    let owner = strict.tenant("acme", "owner@acme.test").await;
    let endpoint = Endpoint::start().await;
    for url in [
        endpoint.url("/in"),
        "http://localhost:9/".into(),
        "http://[::1]:9/".into(),
        "http://2130706433/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/".into(),
        "http://192.168.1.1/".into(),
        "http://[::ffff:169.254.169.254]/".into(),
        "http://100.64.0.1/".into(),
    ] {
        let r = strict.gql(Some("acme"), Some(&owner), CREATE, json!({ "input": input(&url, &["*"]) })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{url}: {r}");
        assert_eq!(r["errors"][0]["extensions"]["field"], "url", "{r}");
    }
    // Allowing loopback allows loopback only.
    let lenient = node_with(&nats, |_| {}).await;
    for url in ["http://169.254.169.254/", "http://10.0.0.1/", "http://[fd00::1]/"] {
        let r = lenient.gql(Some("acme"), Some(&owner), CREATE, json!({ "input": input(url, &["*"]) })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{url}: {r}");
    }
    assert!(all_events(&nats).await.iter().all(|(s, _)| !s.ends_with(".WebhookCreated")));

    // A URL accepted by a lenient node is checked again by whoever delivers:
    // with the lenient node gone, the strict one refuses to call it.
    let (id, _) = create(&lenient, &owner, input(&endpoint.url("/in"), &["AccountRegistered"])).await;
    drop(lenient);
    tokio::time::sleep(Duration::from_millis(500)).await;
    strict.register("acme", "bob@example.com", "bob-the-builder").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        let all = deliveries(&strict, &owner, &id).await;
        if let Some(d) = all.first() {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no delivery attempt");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(d["error"].as_str().unwrap().contains("loopback"), "{d}");
    assert!(endpoint.received().is_empty(), "the strict node called a loopback address");
}

#[tokio::test]
async fn redirects_are_not_followed_slow_endpoints_time_out_and_bodies_are_capped() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |c| {
        c.webhook_max_attempts = 1;
        c.webhook_timeout_ms = 500;
    })
    .await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    let target = Endpoint::start().await;
    let redirect = Endpoint::start().await;
    redirect.always(Answer { headers: vec![("location".into(), target.url("/stolen"))], ..Answer::status(302) });
    let slow = Endpoint::start().await;
    slow.always(Answer { delay: Duration::from_secs(3), ..Answer::status(200) });
    let big = Endpoint::start().await;
    big.always(Answer { body: vec![b'x'; 4 * 1024 * 1024], ..Answer::status(200) });
    let (redirected, _) = create(&node, &owner, input(&redirect.url("/in"), &["AccountRegistered"])).await;
    let (slowed, _) = create(&node, &owner, input(&slow.url("/in"), &["AccountRegistered"])).await;
    let (bigged, _) = create(&node, &owner, input(&big.url("/in"), &["AccountRegistered"])).await;

    node.register("acme", "bob@example.com", "bob-the-builder").await;
    let d = delivery_with(&node, &owner, &redirected, "FAILED").await;
    assert_eq!(d["responseCode"], 302, "{d}");
    assert!(d["error"].as_str().unwrap().contains("redirects are not followed"), "{d}");
    let d = delivery_with(&node, &owner, &slowed, "FAILED").await;
    assert_eq!(d["error"], "the call timed out", "{d}");
    assert!(d["latencyMs"].as_i64().unwrap() < 2_500, "{d}");
    let d = delivery_with(&node, &owner, &bigged, "SUCCEEDED").await;
    assert!(d["history"][0]["response"].as_str().unwrap().len() <= 512, "{d}");
    assert!(target.received().is_empty(), "a redirect was followed");
}

#[tokio::test]
async fn a_queued_delivery_survives_a_node_restart_with_its_id() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |c| c.webhook_backoff_ms = 300).await;
    let owner = node.tenant("acme", "owner@acme.test").await;
    // Nothing listens yet: the first attempts fail to connect.
    // The endpoint closes every connection unanswered: the first tries fail.
    let endpoint = Endpoint::start().await;
    endpoint.down(true);
    let (id, secret) = create(&node, &owner, input(&endpoint.url("/in"), &["AccountRegistered"])).await;
    node.register("acme", "bob@example.com", "bob-the-builder").await;
    let failed = delivery_with(&node, &owner, &id, "RETRYING").await;
    assert!(failed["error"].is_string(), "{failed}");
    drop(node);

    // Another node on the same NATS finishes it, under the same id.
    endpoint.down(false);
    let node = node_with(&nats, |c| c.webhook_backoff_ms = 300).await;
    let owner = node.login("acme", "owner@acme.test", "owner-password").await;
    let owner = token_of(&owner, "login");
    // The next try comes after its backoff (4x longer each time) or, for an
    // item the stopped node held, after its acknowledgement wait.
    let got = endpoint.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].header("webhook-id"), failed["id"].as_str());
    assert!(python_verifies(&secret, &got[0]).await);
    let d = delivery_with(&node, &owner, &id, "SUCCEEDED").await;
    assert!(d["attempts"].as_i64().unwrap() >= 2, "{d}");
}

#[tokio::test]
async fn webhook_input_is_checked_and_tenants_stay_apart() {
    let nats = NatsServer::start();
    let node = node_with(&nats, |_| {}).await;
    let cast = node.acme_globex_bob().await;
    let endpoint = Endpoint::start().await;
    let url = endpoint.url("/in");
    let many: Vec<String> = (0..101).map(|i| format!("T{i}")).collect();
    let huge: Vec<String> = (0..20_000).map(|i| format!("T{i}")).collect();
    let bad = [
        json!({ "name": "x", "url": "ftp://example.com/", "eventTypes": ["*"] }),
        json!({ "name": "x", "url": "javascript:alert(1)", "eventTypes": ["*"] }),
        json!({ "name": "x", "url": "https://user:pw@example.com/", "eventTypes": ["*"] }),
        json!({ "name": "x", "url": url, "eventTypes": [] }),
        json!({ "name": "x", "url": url, "eventTypes": many }),
        json!({ "name": "x", "url": url, "eventTypes": huge }),
        json!({ "name": "x", "url": url, "eventTypes": ["NoSuchEvent"] }),
        json!({ "name": "x", "url": url, "eventTypes": ["*", "AccountRegistered"] }),
        json!({ "name": "  ", "url": url, "eventTypes": ["*"] }),
        json!({ "name": "x", "url": url, "eventTypes": ["*"], "auth": { "apiKey": { "header": "webhook-signature", "value": "v" } } }),
        json!({ "name": "x", "url": url, "eventTypes": ["*"], "auth": { "apiKey": { "header": "X Bad", "value": "v" } } }),
        json!({ "name": "x", "url": url, "eventTypes": ["*"], "auth": { "bearer": { "token": "a\r\nX-Evil: 1" } } }),
        json!({ "name": "x", "url": url, "eventTypes": ["*"], "auth": { "basic": { "username": "a:b", "password": "p" } } }),
    ];
    for b in bad {
        let r = node.gql(Some("acme"), Some(&cast.owner), CREATE, json!({ "input": b })).await;
        assert_eq!(code(&r), "BAD_USER_INPUT", "{b}: {r}");
    }
    assert!(all_events(&nats).await.iter().all(|(s, _)| !s.ends_with(".WebhookCreated")));

    // A member without `manage_webhooks` may not create one.
    let r = node.gql(Some("acme"), Some(&cast.bob), CREATE, json!({ "input": input(&url, &["*"]) })).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");

    // Another tenant knows nothing of acme's webhook.
    let (id, _) = create(&node, &cast.owner, input(&url, &["AccountRegistered"])).await;
    node.register("acme", "carol@example.com", "carol-the-builder").await;
    let d = delivery_with(&node, &cast.owner, &id, "SUCCEEDED").await;
    let r = node.gql(Some("globex"), Some(&cast.globex), DELIVERIES, json!({ "id": id })).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = node.gql(Some("globex"), Some(&cast.globex), REDELIVER, json!({ "d": d["id"] })).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = node.gql(Some("globex"), Some(&cast.globex), DELETE, json!({ "id": id })).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r =
        node.gql(Some("globex"), Some(&cast.globex), UPDATE, json!({ "input": { "id": id, "enabled": false } })).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = node.gql(Some("globex"), Some(&cast.globex), LIST, json!({})).await;
    assert_eq!(r["data"]["webhooks"], json!([]), "{r}");
    let r = node.gql(Some("acme"), Some(&cast.owner), REDELIVER, json!({ "d": "msg_nope" })).await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");

    // At most 50 per tenant.
    for i in 1..50 {
        let r = node
            .gql(Some("acme"), Some(&cast.owner), CREATE, json!({ "input": input(&format!("{url}{i}"), &["*"]) }))
            .await;
        assert!(r["data"]["createWebhook"]["secret"].is_string(), "{i}: {r}");
    }
    let r = node.gql(Some("acme"), Some(&cast.owner), CREATE, json!({ "input": input(&url, &["*"]) })).await;
    assert_eq!(code(&r), "LIMIT_EXCEEDED", "{r}");
    let r = node.gql(Some("acme"), Some(&cast.owner), DELETE, json!({ "id": id })).await;
    assert_eq!(r["data"]["deleteWebhook"], id.as_str(), "{r}");
    assert_eq!(webhook(&node, &cast.owner, &id).await, Value::Null);
}
