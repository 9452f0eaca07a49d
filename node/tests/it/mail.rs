//! The mail queue and the mailer against a real SMTP server
//! (`scripts/smtp_sink.py`): delivery with both parts, retries while the relay
//! is down, dead letters and their retry, one delivery per message id across
//! restarts, the outbox without a relay, and `canopy mail dead` as a user runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actors::domain::tenant::Scope;
use async_nats::jetstream;
use canopy_node::outbound::mail::dead::{self, Selection};
use canopy_node::outbound::mail::{self, MailKind, OutgoingMail, TemplateVars};
use tempfile::TempDir;

use crate::harness::*;
use crate::process;

const WAIT: Duration = Duration::from_secs(30);

/// A verification mail for Ada from tenant `acme`, code 123456.
fn verification(to: &str) -> OutgoingMail {
    let vars = TemplateVars {
        tenant_name: "Acme Inc".into(),
        first_name: "Ada".into(),
        code: Some("123456".into()),
        link: Some("https://acme.example.com/verify".into()),
        expires_in: 15,
        ..Default::default()
    };
    let rendered = mail::render(MailKind::VerifyEmail, "en", &vars).unwrap();
    let scope = Scope::parse_token("acme").unwrap();
    OutgoingMail::new(to.into(), Some("Ada Lovelace".into()), &scope, MailKind::VerifyEmail, rendered)
}

async fn js(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(nats.client().await)
}

/// One master key for every node of a test: a node started after another on
/// the same NATS must open the keys the first one sealed.
const MASTER_KEY: &str = "bWFpbC10ZXN0cy1tYXN0ZXIta2V5LTMyLWJ5dGVzISE";

/// A node that sends through `smtp_url` (the outbox without one), with
/// `attempts` tries each `backoff_ms` apart.
async fn mail_node(nats: &NatsServer, smtp_url: Option<String>, attempts: u32, backoff_ms: &[u64]) -> TestNode {
    TestNode::start_configured(nats, |c| {
        c.master_key = Some(MASTER_KEY.to_owned().into());
        c.smtp_url = smtp_url;
        c.mail_from = "Acme <no-reply@acme.test>".into();
        c.mail_max_attempts = attempts;
        c.mail_backoff_ms = backoff_ms.to_vec();
    })
    .await
}

fn parse(raw: &str) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap_or_else(|| panic!("not a mail: {raw}"))
}

/// Checks a delivered verification mail: headers, and a text and an HTML part
/// that both carry the code.
fn check_verification(raw: &str, expected: &OutgoingMail) {
    let m = parse(raw);
    assert_eq!(m.from().and_then(|a| a.first()).and_then(|a| a.address()), Some("no-reply@acme.test"), "{raw}");
    let to = m.to().and_then(|a| a.first()).unwrap();
    assert_eq!((to.address(), to.name()), (Some("ada@example.com"), Some("Ada Lovelace")), "{raw}");
    assert_eq!(m.subject(), Some(expected.subject.as_str()));
    assert!(raw.contains("multipart/alternative"), "{raw}");
    assert_eq!((m.text_body_count(), m.html_body_count()), (1, 1), "{raw}");
    let text = m.body_text(0).unwrap();
    let html = m.body_html(0).unwrap();
    assert!(text.contains("123456") && text.starts_with("Hello Ada"), "{text}");
    assert!(html.contains("123456") && html.contains("<html lang=\"en\">"), "{html}");
}

/// Waits until `MAIL_DEAD` holds `n` letters; returns them.
async fn wait_dead(js: &jetstream::Context, n: usize) -> Vec<dead::DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        let letters = dead::list(js).await.unwrap();
        if letters.len() >= n {
            return letters;
        }
        assert!(Instant::now() < deadline, "{} of {n} dead letters", letters.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queued_mail_reaches_the_smtp_server_with_its_text_and_html_parts() {
    let nats = NatsServer::start();
    let sink = SmtpSink::start();
    let node = mail_node(&nats, Some(sink.url()), 3, &[50]).await;
    let mail = verification("ada@example.com");
    assert!(mail::enqueue(&js(&nats).await, "evt-1:verify_email", &mail).await.unwrap(), "a new mail");
    let received = sink.wait_for_mails(1, WAIT).await;
    check_verification(&received[0], &mail);
    let parsed = parse(&received[0]);
    assert_eq!(parsed.message_id(), Some("evt-1-verify_email@acme.test"), "the id comes from the message id");
    assert_eq!(node.wait_metric("canopy_mail_sent_total", 1, WAIT).await, 1);
    assert_eq!(node.metric("canopy_mail_dead_total").await, 0);
}

#[tokio::test]
async fn a_mail_is_retried_while_the_relay_is_down_and_delivered_once_it_is_up() {
    let nats = NatsServer::start();
    let port = free_port(); // reserved: nothing listens until the sink starts
    let node = mail_node(&nats, Some(format!("smtp://127.0.0.1:{port}")), 100, &[50, 200]).await;
    let mail = verification("ada@example.com");
    mail::enqueue(&js(&nats).await, "evt-2:verify_email", &mail).await.unwrap();
    node.wait_metric("canopy_mail_retried_total", 2, WAIT).await;
    assert_eq!(node.metric("canopy_mail_sent_total").await, 0);

    let sink = SmtpSink::start_on(port);
    let received = sink.wait_for_mails(1, WAIT).await;
    check_verification(&received[0], &mail);
    node.wait_metric("canopy_mail_sent_total", 1, WAIT).await;
    assert_eq!(node.metric("canopy_mail_dead_total").await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails().len(), 1, "sent once");
}

#[tokio::test]
async fn a_rejected_mail_becomes_a_dead_letter_that_a_retry_delivers() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rejecting = SmtpSink::rejecting(550);
    let port = rejecting.port;
    let node = mail_node(&nats, Some(rejecting.url()), 5, &[50]).await;
    let mail = verification("ada@example.com");
    mail::enqueue(&js, "evt-3:verify_email", &mail).await.unwrap();

    node.wait_metric("canopy_mail_dead_total", 1, WAIT).await;
    assert_eq!(node.metric("canopy_mail_retried_total").await, 0, "a 5xx answer is not retried");
    let letters = wait_dead(&js, 1).await;
    let letter = &letters[0];
    assert_eq!((letter.scope.as_str(), letter.kind.as_str(), letter.attempts), ("acme", "verify_email", 1));
    assert_eq!(letter.to, "a***@example.com");
    assert!(letter.error.contains("550") && letter.error.contains("Refused by the test sink"), "{letter:?}");
    assert!(!letter.error.contains("ada@example.com"), "{letter:?}");
    assert!(dead::retry(&js, Selection::One(letter.id + 1000)).await.is_err(), "no such letter");

    // The relay works again: the letter goes back into MAIL and arrives.
    drop(rejecting);
    let sink = SmtpSink::start_on(port);
    assert_eq!(dead::retry(&js, Selection::All).await.unwrap(), vec![letter.id]);
    let received = sink.wait_for_mails(1, WAIT).await;
    check_verification(&received[0], &mail);
    assert!(dead::list(&js).await.unwrap().is_empty(), "the letter left MAIL_DEAD");
    node.wait_metric("canopy_mail_sent_total", 1, WAIT).await;
}

#[tokio::test]
async fn one_message_id_is_delivered_once_across_node_and_server_restarts() {
    let mut nats = NatsServer::start();
    let sink = SmtpSink::start();
    let mail = verification("ada@example.com");
    let id = "evt-4:verify_email";

    let node = mail_node(&nats, Some(sink.url()), 3, &[50]).await;
    let js1 = js(&nats).await;
    assert!(mail::enqueue(&js1, id, &mail).await.unwrap());
    assert!(!mail::enqueue(&js1, id, &mail).await.unwrap(), "a second enqueue is dropped");
    sink.wait_for_mails(1, WAIT).await;
    node.wait_metric("canopy_mail_sent_total", 1, WAIT).await;
    drop(node);

    // Another node (a restart): the id is still known.
    let node = mail_node(&nats, Some(sink.url()), 3, &[50]).await;
    assert!(!mail::enqueue(&js(&nats).await, id, &mail).await.unwrap(), "dropped after a node restart");
    drop(node);

    // nats-server forgets the ids of messages a work queue removed when it
    // restarts; `mail_done` does not.
    nats.restart();
    assert!(!mail::enqueue(&js(&nats).await, id, &mail).await.unwrap(), "dropped after a nats-server restart");
    let node = mail_node(&nats, Some(sink.url()), 3, &[50]).await;
    let other = verification("ada@example.com");
    assert!(mail::enqueue(&js(&nats).await, "evt-5:verify_email", &other).await.unwrap(), "another id is new");
    sink.wait_for_mails(2, WAIT).await;
    node.wait_metric("canopy_mail_sent_total", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails().len(), 2, "evt-4 once, evt-5 once");
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[tokio::test]
async fn without_an_smtp_url_each_mail_is_an_eml_file_in_the_outbox() {
    let nats = NatsServer::start();
    let node = mail_node(&nats, None, 3, &[50]).await;
    let mail = verification("ada@example.com");
    mail::enqueue(&js(&nats).await, "evt-6:verify_email", &mail).await.unwrap();
    node.wait_metric("canopy_mail_sent_total", 1, WAIT).await;

    let outbox = node.data_dir().join("outbox");
    let files = eml_files(&outbox);
    assert_eq!(files.len(), 1, "one file and no temporary one: {files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap();
    assert!(
        name.ends_with("-acme-verify_email-1.eml") && name.as_bytes()[..8].iter().all(u8::is_ascii_digit),
        "{name}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
    check_verification(&std::fs::read_to_string(&files[0]).unwrap(), &mail);
}

#[tokio::test]
async fn canopy_mail_dead_lists_dead_letters_with_masked_addresses_and_retry_requeues_them() {
    let data = TempDir::new().unwrap();
    let nats_port = free_port();
    let rejecting = SmtpSink::rejecting(550);
    let mut canopy = process::spawn(
        data.path(),
        nats_port,
        &[("CANOPY_SMTP_URL", &rejecting.url()), ("CANOPY_MAIL_MAX_ATTEMPTS", "1")],
    );
    canopy.ready().await;

    // Queue a mail as a reactor would, with the node's own credentials.
    let creds = canopy_node::nats::auth_dir(data.path()).join(canopy_node::nats::auth::NODE_CREDS);
    let client = canopy_node::nats::connect(
        &format!("nats://127.0.0.1:{nats_port}"),
        &canopy_node::nats::credentials::Credentials::CredsFile(creds),
        &Default::default(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let js = jetstream::new(client);
    mail::enqueue(&js, "evt-7:verify_email", &verification("ada@example.com")).await.unwrap();
    let first = wait_dead(&js, 1).await[0].id;

    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(process::BIN);
        cmd.args(args).arg("--data-dir").arg(data.path()).args(["--nats-port", &nats_port.to_string()]);
        cmd.output()
    };
    let out = run(&["mail", "dead"]).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("ID"), "{stdout}");
    assert!(
        stdout.contains("a***@example.com") && stdout.contains("verify_email") && stdout.contains("550"),
        "{stdout}"
    );
    assert!(!stdout.contains("ada@example.com") && !stderr.contains("ada@example.com"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("123456"), "never the body: {stdout}");

    let out = run(&["mail", "retry", "--all"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), format!("moved 1 dead letter(s) back into MAIL: {first}"));
    // The relay still refuses it, so it comes back as a new letter.
    let again = wait_dead(&js, 1).await;
    assert!(again.len() == 1 && again[0].id > first, "{again:?}");
    assert!(!run(&["mail", "retry", &first.to_string()]).await.unwrap().status.success(), "already moved");
    let log = canopy.log_text();
    assert!(log.contains("mail moved to MAIL_DEAD"), "{log}");
    assert!(!log.contains("ada@example.com") && !log.contains("123456"), "the node's log names no address or code");
}

#[test]
fn the_subject_map_documents_the_mail_streams_consumer_bucket_and_headers() {
    let doc = std::fs::read_to_string(repo_file("schemas/subjects.md")).unwrap();
    let names = [
        mail::STREAM,
        mail::DEAD_STREAM,
        mail::CONSUMER,
        mail::DONE_BUCKET,
        mail::KIND_HEADER,
        mail::SCOPE_HEADER,
        dead::ERROR_HEADER,
        dead::ATTEMPTS_HEADER,
        dead::SUBJECT_HEADER,
        dead::MSG_ID_HEADER,
        "mail.{tenant}.{kind}",
        "maildead.{tenant}.{kind}",
    ];
    for name in names {
        assert!(doc.contains(&format!("`{name}`")), "subjects.md does not document `{name}`");
    }
    for kind in MailKind::ALL {
        assert!(doc.contains(&format!("`{kind}`")), "subjects.md does not name the kind `{kind}`");
    }
    let config = mail::queue_config(1);
    assert_eq!(
        (config.subjects.as_slice(), config.duplicate_window),
        (&["mail.>".to_owned()][..], mail::DUPLICATE_WINDOW)
    );
}
