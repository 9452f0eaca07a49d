//! NATS is closed: nothing connects without credentials, a node connects with
//! each kind of credential an external NATS may ask for, and an event-log
//! reader's credential reads the log through an ordered consumer and can do
//! nothing else. Every check uses a plain NATS client.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use canopy_node::nats::auth::{NatsAuth, ensure_reader_mirror};
use canopy_node::nats::connect_with;
use canopy_node::nats::credentials::{Credentials, Tls};
use canopy_node::nats::local::LocalNats;
use futures::StreamExt;
use serde_json::json;
use tempfile::TempDir;

use crate::harness::*;

const PASSWORD: &str = "s3cret-nats-pass";

/// A JetStream context that gives up quickly: a refused request has no answer.
fn quick_js(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_secs(2)).build(client)
}

#[tokio::test]
async fn nothing_connects_to_canopys_nats_without_its_credentials() {
    let nats = NatsServer::start();
    let anonymous = connect_with(nats.url(), &Credentials::None, &Tls::default()).await;
    assert!(anonymous.unwrap_err().to_string().contains("authorization violation"));
    let guessed = Credentials::UserPassword("canopy".into(), "canopy".to_owned().into());
    assert!(connect_with(nats.url(), &guessed, &Tls::default()).await.is_err());
    // A credential minted by another installation's keys is refused too.
    let other = TempDir::new().unwrap();
    let foreign = NatsAuth::load_or_create(other.path()).unwrap().node_creds().unwrap();
    assert!(connect_with(nats.url(), &Credentials::Creds(foreign), &Tls::default()).await.is_err());
    // The installation's own node credential works.
    assert!(nats.client().await.server_info().jetstream);
}

/// A nats-server on `auth` (a config-mode `authorization` block) with JetStream.
fn external(auth: &str) -> LocalNats {
    let conf = format!("server_name: ext\nmax_payload: 1MB\njetstream {{ sync_interval: always }}\n{auth}\n");
    LocalNats::start_with_conf(&conf).expect("nats-server")
}

/// Starts a node on `server` with `tune`, registers an account, and returns it.
async fn node_on(server: LocalNats, tune: impl FnOnce(&mut canopy_node::Config)) {
    let nats = NatsServer::wrap(server);
    let node = TestNode::start_configured(&nats, tune).await;
    node.tenant("acme", "owner@acme.test").await;
    let r = node.register("acme", "ada@example.com", "analytical-engine").await;
    assert!(r["data"]["register"]["token"].is_string(), "{r}");
}

#[tokio::test]
async fn a_node_connects_with_the_user_and_password_in_its_url_and_never_prints_the_password() {
    let server = external(&format!("authorization {{ users: [ {{ user: canopy, password: \"{PASSWORD}\" }} ] }}"));
    let url = server.url.replace("nats://", &format!("nats://canopy:{PASSWORD}@"));
    let wrong = server.url.replace("nats://", "nats://canopy:not-the-password@");
    let config = canopy_node::Config { nats_url: Some(wrong.clone()), ..canopy_node::Config::default() };
    let (plain, creds, tls) = config.external_nats().unwrap().unwrap();
    let err = canopy_node::nats::connect(&plain, &creds, &tls, Duration::from_secs(2)).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("authorization violation") && !text.contains("not-the-password"), "{text}");
    assert!(!config.redacted().to_string().contains("not-the-password"));
    node_on(server, |c| c.nats_url = Some(url)).await;
}

#[tokio::test]
async fn a_node_connects_with_a_token() {
    let server = external(&format!("authorization {{ token: \"{PASSWORD}\" }}"));
    node_on(server, |c| c.nats_token = Some(PASSWORD.to_owned().into())).await;
}

#[tokio::test]
async fn a_node_connects_with_an_nkey_seed() {
    let key = nkeys::KeyPair::new_user();
    let server = external(&format!("authorization {{ users: [ {{ nkey: {} }} ] }}", key.public_key()));
    node_on(server, |c| c.nats_nkey_seed = Some(key.seed().unwrap().into())).await;
}

#[tokio::test]
async fn a_node_connects_over_tls_to_a_server_signed_by_the_given_authority() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = TempDir::new().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    let (ca_file, cert_file, key_file) =
        (dir.path().join("ca.pem"), dir.path().join("s.pem"), dir.path().join("s.key"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, server_cert.pem()).unwrap();
    std::fs::write(&key_file, server_key.serialize_pem()).unwrap();
    let server = external(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ token: \"{PASSWORD}\" }}",
        cert_file.display(),
        key_file.display()
    ));
    assert!(server.url.starts_with("tls://"));
    // Without the authority the server's certificate is not trusted.
    let token = Credentials::Token(PASSWORD.to_owned().into());
    assert!(connect_with(&server.url, &token, &Tls::default()).await.is_err());
    node_on(server, |c| {
        c.nats_token = Some(PASSWORD.to_owned().into());
        c.nats_ca_file = Some(ca_file.clone());
    })
    .await;
}

/// A reader's client, with its credential's inbox prefix, and the consumer
/// name a tenant's credential allows.
async fn reader(nats: &NatsServer, tenant: Option<&str>) -> (async_nats::Client, Option<String>) {
    let tenant = tenant.map(|t| actors::domain::tenant::TenantId::parse(t).unwrap());
    let auth = nats.local().auth.as_ref().unwrap();
    ensure_reader_mirror(nats.url(), auth, &Tls::default(), 1).await.unwrap();
    let reader = auth.reader_creds(tenant.as_ref(), None).unwrap();
    let client = async_nats::ConnectOptions::with_credentials(&reader.creds)
        .unwrap()
        .custom_inbox_prefix(&reader.inbox_prefix)
        .connect(nats.url())
        .await
        .unwrap();
    (client, reader.consumer)
}

/// Reads the readers' `EVENTS` through an ordered consumer until it has `want`
/// messages (the mirror follows the log within moments), returning their subjects.
async fn read_all(client: &async_nats::Client, name: Option<&str>, filter: &str, want: usize) -> Vec<String> {
    let js = quick_js(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stream = js.get_stream("EVENTS").await.unwrap();
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                name: name.map(str::to_owned),
                filter_subject: filter.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut subjects = Vec::new();
        let mut messages = consumer.messages().await.unwrap();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
            subjects.push(m.subject.to_string());
        }
        if subjects.len() >= want || std::time::Instant::now() > deadline {
            return subjects;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many events in the log start with `prefix`.
async fn count_on(nats: &NatsServer, prefix: &str) -> usize {
    all_events(nats).await.iter().filter(|(s, _)| s.starts_with(prefix)).count()
}

/// Whether a subscription on `client` receives anything that `publisher`
/// publishes on `subject` within a short wait.
async fn receives(client: &async_nats::Client, publisher: &async_nats::Client, filter: &str, subject: &str) -> bool {
    let mut sub = match client.subscribe(filter.to_owned()).await {
        Ok(s) => s,
        Err(_) => return false,
    };
    client.flush().await.ok();
    publisher.publish(subject.to_owned(), "probe".into()).await.unwrap();
    publisher.flush().await.unwrap();
    matches!(tokio::time::timeout(Duration::from_millis(700), sub.next()).await, Ok(Some(_)))
}

#[tokio::test]
async fn a_reader_reads_the_log_through_an_ordered_consumer_and_can_do_nothing_else() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;
    node.register("acme", "ada@example.com", "analytical-engine").await;
    let total = all_events(&nats).await.len();
    let acme = count_on(&nats, "evt.acme.").await;
    assert!(acme >= 3 && total > acme);

    let (all, _) = reader(&nats, None).await;
    let seen = read_all(&all, None, "evt.>", total).await;
    assert_eq!(seen.len(), total, "the reader sees the whole log");
    assert!(seen.iter().any(|s| s.starts_with("evt.globex.")));

    // Everything else is refused, tried with the reader's own client. A live
    // subscription to the log sees nothing of a new registration.
    let mut live = all.subscribe("evt.>").await.unwrap();
    all.flush().await.unwrap();
    node.register("acme", "grace@example.com", "grace-hopper-1").await;
    let heard = tokio::time::timeout(Duration::from_millis(700), live.next()).await;
    assert!(!matches!(heard, Ok(Some(_))), "a reader subscribed to the live evt.>");
    let node_client = nats.client().await;
    let before = last_seq(&nats).await;
    let js = quick_js(all.clone());
    let forged = json!({ "type": "AccountRegistered" }).to_string();
    let acked = match js.publish("evt.acme.account.x.AccountRegistered", forged.into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "a reader's publish on evt.> was stored");
    let cmd = tokio::time::timeout(Duration::from_secs(2), all.request("cmd.acme.account", "{}".into())).await;
    assert!(!matches!(cmd, Ok(Ok(_))), "a command from a reader got an answer");
    all.publish("evt.acme.account.y.AccountRegistered", "{}".into()).await.unwrap();
    all.flush().await.unwrap();
    assert_eq!(last_seq(&nats).await, before, "nothing a reader sent reached the log");
    assert!(!receives(&all, &node_client, "cmd.>", "cmd.acme.account").await, "a reader saw cmd.>");
    assert!(js.get_key_value("keys").await.is_err(), "a reader opened KV keys");
    assert!(js.get_key_value("snapshots").await.is_err(), "a reader opened KV snapshots");
    let direct = tokio::time::timeout(
        Duration::from_secs(2),
        all.request("$JS.API.DIRECT.GET.KV_keys.$KV.keys.signing.primary", "".into()),
    )
    .await;
    assert!(!matches!(direct, Ok(Ok(ref m)) if !m.payload.is_empty()), "a reader read a key");
    assert!(js.delete_stream("EVENTS").await.is_err(), "a reader deleted a stream");
    let stream = js.get_stream("EVENTS").await.unwrap();
    assert!(stream.purge().await.is_err(), "a reader purged a stream");
    assert!(stream.delete_message(1).await.is_err(), "a reader deleted a message");
    // The log and the readers' copy are intact.
    assert_eq!(last_seq(&nats).await, before);
    let again = read_all(&all, None, "evt.>", before as usize).await;
    assert_eq!(again.len() as u64, before, "{again:?}");
}

#[tokio::test]
async fn a_tenant_reader_reads_only_its_tenants_events() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    node.tenant("acme", "owner@acme.test").await;
    node.tenant("globex", "owner@globex.test").await;
    let acme = count_on(&nats, "evt.acme.").await;

    let (reader_acme, consumer) = reader(&nats, Some("acme")).await;
    let consumer = consumer.expect("a tenant's reader has a consumer name");
    let seen = read_all(&reader_acme, Some(&consumer), "evt.acme.>", acme).await;
    assert_eq!(seen.len(), acme);
    assert!(seen.iter().all(|s| s.starts_with("evt.acme.")), "{seen:?}");

    // Another tenant's filter, the whole log, a consumer without the filter in
    // its create subject, or another name: all refused.
    let stream = quick_js(reader_acme.clone()).get_stream("EVENTS").await.unwrap();
    let own = Some(consumer.as_str());
    for (name, filter) in
        [(own, "evt.globex.>"), (own, "evt.>"), (None, "evt.acme.>"), (own, ""), (Some("acme-follow"), "evt.acme.>")]
    {
        let created = stream
            .create_consumer(consumer::pull::OrderedConfig {
                name: name.map(str::to_owned),
                filter_subject: filter.to_owned(),
                ..Default::default()
            })
            .await;
        assert!(created.is_err(), "a consumer {name:?} on {filter:?} was created for acme's reader");
    }
    // The whole-log reader's inbox is not acme's to read.
    let (whole, _) = reader(&nats, None).await;
    assert!(!receives(&reader_acme, &whole, "_INBOX.>", "_INBOX.probe").await, "acme's reader read another inbox");

    // Globex's reader, knowing the name of a consumer another acme reader
    // keeps (with every acme event still to deliver), cannot pull from it.
    let (reader_acme2, kept) = reader(&nats, Some("acme")).await;
    let kept = kept.unwrap();
    quick_js(reader_acme2)
        .get_stream("EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            name: Some(kept.clone()),
            filter_subject: "evt.acme.>".into(),
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .expect("acme's reader keeps a consumer of its own");
    let (reader_globex, _) = reader(&nats, Some("globex")).await;
    let pull = format!("$JS.API.CONSUMER.MSG.NEXT.EVENTS.{kept}");
    let mut inbox = reader_globex.subscribe("_INBOX_globex.pull").await.unwrap();
    reader_globex.publish_with_reply(pull, "_INBOX_globex.pull", r#"{"batch":10}"#.into()).await.unwrap();
    reader_globex.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), inbox.next()).await;
    assert!(!matches!(got, Ok(Some(_))), "globex's reader pulled from acme's consumer");
}

/// `examples/python/follow_events.py`, a reader in another language (nats-py),
/// follows one tenant with that tenant's read-only credential and finds every
/// event valid against its published JSON Schema, and none of another tenant.
#[tokio::test]
async fn the_python_example_follows_a_tenant_and_every_event_matches_its_schema() {
    let nats = NatsServer::start();
    let node = TestNode::start(&nats).await;
    let cast = node.acme_globex_bob().await;
    let update = "mutation { updateProfile(input: {firstname: \"A\", lastname: \"B\"}) { id } }";
    node.gql(Some("acme"), Some(&cast.bob), update, json!({})).await;
    let publish = "mutation { publishMessage(input: {topic: \"t\", payload: \"p\"}) { id } }";
    node.gql(Some("acme"), Some(&cast.owner), publish, json!({})).await;
    node.gql(Some("globex"), Some(&cast.globex), update, json!({})).await;

    let auth = nats.local().auth.as_ref().unwrap();
    ensure_reader_mirror(nats.url(), auth, &Tls::default(), 1).await.unwrap();
    let acme = actors::domain::tenant::TenantId::parse("acme").unwrap();
    let reader = auth.reader_creds(Some(&acme), None).unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let creds = dir.path().join("acme.creds");
    std::fs::write(&creds, &reader.creds).unwrap();
    // The mirror follows the log within moments; the example reads what it holds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = tokio::process::Command::new("python3")
        .arg(crate::harness::repo_file("examples/python/follow_events.py"))
        .args(["--server", nats.url(), "--tenant", "acme", "--consumer", reader.consumer.as_deref().unwrap()])
        .arg("--creds")
        .arg(&creds)
        .args(["--idle", "2"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    for wanted in ["AccountRegistered", "ProfileUpdated", "MessagePublished", "SessionStarted"] {
        assert!(types.contains(&wanted), "no {wanted} in {types:?}");
    }
    assert!(lines.iter().all(|l| l["valid"] == true), "{stdout}");
    assert!(lines.iter().all(|l| l["subject"].as_str().unwrap().starts_with("evt.acme.")), "{stdout}");
}
