//! Outgoing mail: the `MAIL` work queue that reactors fill ([`enqueue`]), the
//! mailer that empties it ([`mailer`]), the mails it gave up on ([`dead`]),
//! and the templates mails are rendered from ([`templates`]).
//!
//! The queue lives in the nodes' NATS account, outside `evt.>`: readers of the
//! event log never see an address, a name or a code. `schemas/subjects.md`
//! documents the streams, the consumer and the headers.

pub mod dead;
pub mod mailer;
pub mod templates;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::domain::tenant::Scope;
use anyhow::{Context, bail};
use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use templates::{MailKind, Rendered, TemplateVars, render};

/// The work queue: one message per mail, removed once it is sent or buried.
pub const STREAM: &str = "MAIL";
/// Mails the mailer gave up on, with their last error.
pub const DEAD_STREAM: &str = "MAIL_DEAD";
/// The durable pull consumer every node's mailer shares.
pub const CONSUMER: &str = "mailer";
/// Message ids of mails that left the queue (sent or buried), for a day.
pub const DONE_BUCKET: &str = "mail_done";
/// `Canopy-Mail-Kind`: the template name, as in the subject.
pub const KIND_HEADER: &str = "Canopy-Mail-Kind";
/// `Canopy-Scope`: the tenant slug or `_system`, as in the subject.
pub const SCOPE_HEADER: &str = "Canopy-Scope";
/// How long a message id keeps a second mail with it out of the queue.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One mail, rendered, as the queue carries it (the JSON body of a `MAIL`
/// message). `Debug` masks the address and leaves the text out: both are
/// personal data.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: String,
    pub to_name: Option<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The tenant slug, or `_system` for the platform's own mail.
    pub scope: String,
    /// The template name (`MailKind::as_str`).
    pub kind: String,
}

impl OutgoingMail {
    /// A rendered mail of `kind` for `to` in `scope`.
    pub fn new(to: String, to_name: Option<String>, scope: &Scope, kind: MailKind, rendered: Rendered) -> Self {
        let Rendered { subject, text, html } = rendered;
        Self { to, to_name, subject, text, html, scope: scope.token().to_owned(), kind: kind.as_str().to_owned() }
    }
}

impl std::fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("to", &mask_address(&self.to))
            .field("scope", &self.scope)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `mail.{scope}.{kind}`, from parsed tokens only: the scope must be a tenant
/// slug or `_system`, the kind lowercase letters, digits and `_`.
pub fn subject_of(scope: &str, kind: &str) -> anyhow::Result<String> {
    let scope = Scope::parse_token(scope).context("a mail's scope is a tenant slug or _system")?;
    let kind_ok = !kind.is_empty()
        && kind.len() <= 64
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !kind_ok {
        bail!("a mail's kind is 1 to 64 lowercase letters, digits or '_'");
    }
    Ok(format!("mail.{}.{kind}", scope.token()))
}

/// A message id becomes a header and a key: 1 to 200 ASCII letters, digits,
/// `-`, `_`, `.` or `:`.
fn check_msg_id(msg_id: &str) -> anyhow::Result<()> {
    let ok = !msg_id.is_empty()
        && msg_id.len() <= 200
        && msg_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !ok {
        bail!("a mail's message id is 1 to 200 ASCII letters, digits, '-', '_', '.' or ':'");
    }
    Ok(())
}

/// The `mail_done` key of a message id: a digest, so any id makes a valid key.
fn done_key(msg_id: &str) -> String {
    let digest = sha2::Sha256::digest(msg_id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// `MAIL`: a work queue (a message leaves when the mailer acknowledges it),
/// on file, deduplicated by `Nats-Msg-Id` for a day.
pub fn queue_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["mail.>".to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// `MAIL_DEAD`: kept until a retry moves a letter back (limits retention, no
/// age limit); direct gets list it without a consumer.
pub fn dead_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: DEAD_STREAM.to_owned(),
        subjects: vec!["maildead.>".to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        allow_direct: true,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Creates (or updates) `MAIL`, `MAIL_DEAD` and the `mail_done` bucket.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    js.create_or_update_stream(queue_config(replicas)).await.context("while creating the MAIL stream")?;
    js.create_or_update_stream(dead_config(replicas)).await.context("while creating the MAIL_DEAD stream")?;
    crate::nats::bucket(
        js,
        kv::Config {
            bucket: DONE_BUCKET.to_owned(),
            history: 1,
            max_age: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Queues a mail; `msg_id` (derived by the caller from the event id) goes in
/// `Nats-Msg-Id`, so a second enqueue with the same id is dropped by the
/// server. Returns whether it was new.
///
/// The server remembers ids only while their message is in the stream or, for
/// a removed one, until it restarts; `mail_done` remembers for a day the ids of
/// mails the mailer has finished, so a restarted nats-server does not let a
/// sent mail in again.
pub async fn enqueue(js: &jetstream::Context, msg_id: &str, mail: &OutgoingMail) -> anyhow::Result<bool> {
    check_msg_id(msg_id)?;
    let subject = subject_of(&mail.scope, &mail.kind)?;
    let done = js.get_key_value(DONE_BUCKET).await.context("while opening the mail_done bucket")?;
    if done.get(done_key(msg_id)).await.context("while reading the mail_done bucket")?.is_some() {
        return Ok(false);
    }
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, msg_id);
    headers.insert(KIND_HEADER, mail.kind.as_str());
    headers.insert(SCOPE_HEADER, mail.scope.as_str());
    let body = serde_json::to_vec(mail).context("while encoding a mail")?;
    let ack = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .context("while queueing a mail")?
        .await
        .context("while queueing a mail")?;
    Ok(!ack.duplicate)
}

/// What the mailer has done since the node started, for `/metrics`.
#[derive(Debug, Default)]
pub struct MailStats {
    sent: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
}

impl MailStats {
    /// Mails handed to the relay or written to the outbox.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Failed attempts that will be tried again.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Mails moved to `MAIL_DEAD`.
    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `ada@example.com` → `a***@example.com`: enough to tell mails apart, not
/// enough to know the person.
pub fn mask_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            let first = local.chars().next().filter(|c| !c.is_control()).unwrap_or('?');
            format!("{first}***@{}", templates::one_line(domain))
        }
        _ => "***".to_owned(),
    }
}

/// The longest error text kept in a dead letter or a log line.
const MAX_ERROR_CHARS: usize = 300;

/// An error fit for a log line and a header: every form of the SMTP password
/// cut, the recipient's address masked, on one line, at most 300 characters.
pub(crate) fn sanitise(text: &str, secrets: &[String], address: Option<&str>) -> String {
    let mut s = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        s = s.replace(secret.as_str(), "<redacted>");
    }
    if let Some(a) = address.filter(|a| !a.is_empty()) {
        s = s.replace(a, &mask_address(a));
    }
    let s = templates::one_line(&s);
    if s.chars().count() <= MAX_ERROR_CHARS {
        return s;
    }
    let mut cut: String = s.chars().take(MAX_ERROR_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> OutgoingMail {
        OutgoingMail {
            to: "ada@example.com".into(),
            to_name: Some("Ada Lovelace".into()),
            subject: "Hello".into(),
            text: "code 123456".into(),
            html: "<p>code 123456</p>".into(),
            scope: "acme".into(),
            kind: "verify_email".into(),
        }
    }

    #[test]
    fn addresses_are_masked_to_their_first_letter_and_domain() {
        assert_eq!(mask_address("ada@example.com"), "a***@example.com");
        assert_eq!(mask_address("élodie@exemple.fr"), "é***@exemple.fr");
        assert_eq!(mask_address("@example.com"), "***");
        assert_eq!(mask_address("nonsense"), "***");
    }

    #[test]
    fn debug_shows_no_address_name_or_text() {
        let shown = format!("{:?}", mail());
        assert!(shown.contains("a***@example.com"), "{shown}");
        for hidden in ["ada@example.com", "Lovelace", "123456"] {
            assert!(!shown.contains(hidden), "{shown}");
        }
    }

    #[test]
    fn subjects_are_built_from_a_parsed_scope_and_kind_only() {
        assert_eq!(subject_of("acme", "verify_email").unwrap(), "mail.acme.verify_email");
        assert_eq!(subject_of("_system", "password_reset").unwrap(), "mail._system.password_reset");
        for (scope, kind) in [("acme.x", "k"), ("*", "k"), ("acme", "a.b"), ("acme", ">"), ("acme", ""), ("Acme", "k")]
        {
            assert!(subject_of(scope, kind).is_err(), "{scope} {kind}");
        }
        assert!(check_msg_id("0193a1b2-c3d4:verify_email").is_ok());
        for bad in ["", "a b", "a\r\nb", "x>"] {
            assert!(check_msg_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(done_key("x").len(), 32);
    }

    #[test]
    fn errors_lose_the_password_the_address_and_their_line_breaks() {
        let secrets = vec!["hunter2hunter2".to_owned()];
        let raw = "permanent error (535): bad login hunter2hunter2 for ada@example.com\r\n5.7.8 try again";
        let s = sanitise(raw, &secrets, Some("ada@example.com"));
        assert_eq!(s, "permanent error (535): bad login <redacted> for a***@example.com 5.7.8 try again");
        let long = sanitise(&"x".repeat(1000), &[], None);
        assert_eq!(long.chars().count(), 300);
    }

    #[test]
    fn a_rendered_mail_keeps_its_parts_and_names_its_scope_and_kind() {
        let vars = TemplateVars {
            tenant_name: "Acme".into(),
            first_name: "Ada".into(),
            code: Some("123456".into()),
            expires_in: 15,
            ..Default::default()
        };
        let rendered = render(MailKind::VerifyEmail, "en", &vars).unwrap();
        let scope = Scope::parse_token("acme").unwrap();
        let m = OutgoingMail::new("ada@example.com".into(), None, &scope, MailKind::VerifyEmail, rendered.clone());
        assert_eq!((m.scope.as_str(), m.kind.as_str()), ("acme", "verify_email"));
        assert_eq!((m.subject, m.text, m.html), (rendered.subject, rendered.text, rendered.html));
    }
}
