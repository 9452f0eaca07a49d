//! The mailer: the durable pull consumer `mailer` on `MAIL`, run by every node
//! (they share it, so each mail goes to one of them). It sends each mail to
//! the relay or the outbox, acknowledges it when it left, asks for it again
//! later (`Nak` with the backoff of that attempt) when the failure may pass,
//! and buries it in `MAIL_DEAD` when it cannot or its attempts are spent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind, kv};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::templates::one_line;
use super::transport::{Delivered, Failure, Transport};
use super::{CONSUMER, DONE_BUCKET, MailStats, OutgoingMail, STREAM, dead, done_key, sanitise};
use crate::config::Config;
use crate::nats::credentials::redact_url;

/// Mails one node sends at once. The consumer hands over no more than this
/// per pull, so no mail waits in this node's buffer while its ack wait runs.
pub(crate) const CONCURRENT: usize = 4;

/// How long a delivery may stay unanswered before the server hands the mail
/// out again (the mailer stopped during it): longer than a send may take.
const ACK_WAIT: Duration = Duration::from_secs(120);

/// How long a stopping node lets the mails it is sending finish.
const DRAIN: Duration = Duration::from_secs(10);

pub struct Mailer {
    js: jetstream::Context,
    transport: Transport,
    /// Where mail goes, for the log (the relay's URL without its password, or the outbox).
    target: String,
    from: Mailbox,
    attempts: u32,
    backoff: Vec<Duration>,
    stats: Arc<MailStats>,
}

impl Mailer {
    /// The mailer of a node with `config`: the relay of `smtp_url`, or the
    /// outbox under the data dir without one.
    pub fn new(config: &Config, js: jetstream::Context, stats: Arc<MailStats>) -> anyhow::Result<Self> {
        let (transport, target) = match config.smtp()? {
            Some(settings) => (
                Transport::smtp(&settings).map_err(anyhow::Error::msg)?,
                redact_url(config.smtp_url.as_deref().unwrap_or_default()),
            ),
            None => {
                let dir = config.data_dir.join("outbox");
                let target = format!("the outbox {}", dir.display());
                (Transport::outbox(dir), target)
            }
        };
        let from: Mailbox = config.mail_from.parse().context("mail_from is not a mailbox")?;
        let backoff = config.mail_backoff_ms.iter().map(|ms| Duration::from_millis(*ms)).collect();
        Ok(Self { js, transport, target, from, attempts: config.mail_max_attempts.max(1), backoff, stats })
    }

    /// Runs until `cancel`; lost connections and a deleted consumer are
    /// re-established after a second.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(to = %self.target, attempts = self.attempts, "the mailer is running");
        loop {
            match self.consume(&cancel).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "the mailer lost its consumer; trying again"),
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn consume(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let stream = self.js.get_stream(STREAM).await.context("while opening MAIL")?;
        let consumer =
            stream.create_consumer(consumer_config(self.attempts)).await.context("while creating the mailer")?;
        let done = self.js.get_key_value(DONE_BUCKET).await.context("while opening mail_done")?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(CONCURRENT)
            .expires(actors::store::event_store::FAILOVER_EXPIRY)
            .heartbeat(actors::store::event_store::FAILOVER_EXPIRY / 2)
            .messages()
            .await
            .context("while pulling from MAIL")?;
        let mut sending = FuturesUnordered::new();
        let ended = loop {
            tokio::select! {
                () = cancel.cancelled() => break Ok(()),
                Some(()) = sending.next(), if !sending.is_empty() => {}
                next = messages.next(), if sending.len() < CONCURRENT => match next {
                    Some(Ok(m)) => sending.push(self.deliver(&done, m)),
                    Some(Err(e)) => {
                        use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                        // A missed heartbeat is a slow link; the stream recovers by itself.
                        if e.kind() != K::MissingHeartbeat {
                            break Err(anyhow::Error::new(e).context("while pulling from MAIL"));
                        }
                        tracing::debug!(error = %e, "the mailer missed a heartbeat");
                    }
                    None => break Err(anyhow::anyhow!("the pull from MAIL ended")),
                },
            }
        };
        // Mails already with the relay get a moment to finish, so a relay that
        // accepted one is answered with an ack; any still unanswered after it
        // are handed out again after the ack wait.
        let _ = tokio::time::timeout(DRAIN, async { while sending.next().await.is_some() {} }).await;
        ended
    }

    async fn deliver(&self, done: &kv::Store, m: jetstream::Message) {
        let Ok(info) = m.info() else {
            tracing::warn!("a MAIL delivery without its metadata; leaving it to the ack wait");
            return;
        };
        let (seq, published) = (info.stream_sequence, info.published);
        let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1);
        let msg_id = m.headers.as_ref().and_then(|h| h.get(NATS_MESSAGE_ID)).map(|v| v.as_str().to_owned());
        let msg_id = msg_id.unwrap_or_else(|| format!("seq-{seq}"));
        // Finished before and only its acknowledgement was lost: never twice.
        if matches!(done.get(done_key(&msg_id)).await, Ok(Some(_))) {
            self.settle(&m, AckKind::Ack, seq).await;
            return;
        }
        let mail = match serde_json::from_slice::<OutgoingMail>(&m.payload) {
            Ok(mail) => mail,
            Err(e) => {
                let why = format!("the mail does not decode: {e}");
                return self.bury(done, &m, &msg_id, attempt, &why, None).await;
            }
        };
        if attempt > self.attempts {
            let why = "the last attempt ended without an answer (the node stopped during it)";
            return self.bury(done, &m, &msg_id, self.attempts, why, Some(&mail)).await;
        }
        let outcome = match self.compose(&mail, &msg_id) {
            Ok(message) => self.transport.deliver(&message, &file_name(published, &mail, seq)).await,
            Err(why) => Err(Failure::Permanent(why)),
        };
        let (scope, kind) = (mail.scope.as_str(), mail.kind.as_str());
        match outcome {
            Ok(delivered) => {
                self.remember(done, &msg_id).await;
                self.settle(&m, AckKind::Ack, seq).await;
                MailStats::count(&self.stats.sent);
                match delivered {
                    Delivered::Relayed => tracing::info!(scope, kind, seq, attempt, "mail sent"),
                    Delivered::Written(path) => {
                        tracing::info!(scope, kind, seq, file = %path.display(), "mail written to the outbox (no smtp_url)")
                    }
                }
            }
            Err(Failure::Transient(why)) if attempt < self.attempts => {
                let delay = backoff_after(&self.backoff, attempt);
                self.settle(&m, AckKind::Nak(Some(delay)), seq).await;
                MailStats::count(&self.stats.retried);
                let error = sanitise(&why, self.transport.secrets(), Some(&mail.to));
                tracing::warn!(scope, kind, seq, attempt, retry_in = ?delay, %error, "mail not sent; it will be tried again");
            }
            Err(Failure::Transient(why) | Failure::Permanent(why)) => {
                self.bury(done, &m, &msg_id, attempt, &why, Some(&mail)).await
            }
        }
    }

    /// The message for the relay. Its `Message-ID` comes from the queue's
    /// message id, so a mail sent twice (the node stopped between the relay's
    /// answer and the ack) is recognisably the same mail.
    fn compose(&self, mail: &OutgoingMail, msg_id: &str) -> Result<Message, String> {
        let address: Address = mail.to.parse().map_err(|e| format!("the recipient's address is not valid: {e}"))?;
        let name = mail.to_name.as_deref().map(one_line).filter(|n| !n.is_empty());
        let left: String =
            msg_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(name, address))
            .subject(one_line(&mail.subject))
            .date_now()
            .message_id(Some(format!("<{left}@{}>", self.from.email.domain())))
            .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
            .map_err(|e| format!("the mail cannot be built: {e}"))
    }

    /// Copies the mail into `MAIL_DEAD`, then takes it off the queue; if the
    /// copy fails the mail stays queued and comes back after the backoff.
    async fn bury(
        &self,
        done: &kv::Store,
        m: &jetstream::Message,
        msg_id: &str,
        attempts: u32,
        why: &str,
        mail: Option<&OutgoingMail>,
    ) {
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
        let error = sanitise(why, self.transport.secrets(), mail.map(|m| m.to.as_str()));
        let (scope, kind) = mail.map_or(("?", "?"), |m| (m.scope.as_str(), m.kind.as_str()));
        match dead::bury(&self.js, m, msg_id, attempts, &error).await {
            Ok(()) => {
                self.remember(done, msg_id).await;
                self.settle(m, AckKind::Term, seq).await;
                MailStats::count(&self.stats.dead);
                tracing::warn!(scope, kind, seq, attempts, %error, "mail moved to MAIL_DEAD (`canopy mail dead` lists it)");
            }
            Err(e) => {
                let delay = backoff_after(&self.backoff, attempts);
                self.settle(m, AckKind::Nak(Some(delay)), seq).await;
                tracing::warn!(scope, kind, seq, error = %format!("{e:#}"), "could not move a mail to MAIL_DEAD; it stays queued");
            }
        }
    }

    /// Notes that `msg_id` left the queue, so neither a late enqueue nor a
    /// redelivery sends it again (see `enqueue`).
    async fn remember(&self, done: &kv::Store, msg_id: &str) {
        if let Err(e) = done.put(done_key(msg_id), bytes::Bytes::new()).await {
            tracing::warn!(error = %e, "could not record a finished mail in mail_done");
        }
    }

    async fn settle(&self, m: &jetstream::Message, kind: AckKind, seq: u64) {
        if let Err(e) = m.ack_with(kind).await {
            tracing::warn!(seq, error = %e, "could not answer a MAIL delivery; the server will hand it out again");
        }
    }
}

/// The consumer: explicit acks, and `max_deliver` one more than the
/// attempts. That last delivery never sends: it buries a mail whose final
/// attempt ended without an answer (the node stopped during it), which with
/// `max_deliver` equal to the attempts would stay in `MAIL` for good. The
/// backoff is the `Nak` delay of each attempt, not the consumer's `backoff`
/// field (that one paces redeliveries after the ack wait, and the server
/// refuses it longer than `max_deliver`).
fn consumer_config(attempts: u32) -> pull::Config {
    pull::Config {
        durable_name: Some(CONSUMER.to_owned()),
        description: Some("Canopy's mailer: sends each mail once, retries with backoff".to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: i64::from(attempts) + 1,
        ..Default::default()
    }
}

/// The delay before attempt `attempt + 1`: the backoff list's entry for
/// `attempt` (1-based), its last entry beyond its end.
fn backoff_after(backoff: &[Duration], attempt: u32) -> Duration {
    let i = (attempt.max(1) as usize - 1).min(backoff.len().saturating_sub(1));
    backoff.get(i).copied().unwrap_or(Duration::ZERO)
}

/// `20261204-174501-acme-verify_email-42.eml`: sorted by the time the mail was
/// queued, then by its `MAIL` sequence, which a redelivery keeps (it overwrites
/// the same file instead of adding one).
fn file_name(queued: OffsetDateTime, mail: &OutgoingMail, seq: u64) -> String {
    let token = |s: &str| -> String {
        s.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
    };
    let t = queued.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{}-{}-{seq}.eml",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        token(&mail.scope),
        token(&mail.kind)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_files_sort_by_time_and_never_name_a_path() {
        let mail = OutgoingMail {
            to: "a@b.c".into(),
            to_name: None,
            subject: String::new(),
            text: String::new(),
            html: String::new(),
            scope: "../etc".into(),
            kind: "verify_email".into(),
        };
        let t = OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap();
        assert_eq!(file_name(t, &mail, 42), "20261130-005320-___etc-verify_email-42.eml");
    }

    #[test]
    fn each_attempt_waits_its_entry_of_the_backoff_then_the_last() {
        let backoff = [10, 20, 30].map(Duration::from_millis);
        let got: Vec<u128> = (1..=5).map(|a| backoff_after(&backoff, a).as_millis()).collect();
        assert_eq!(got, [10, 20, 30, 30, 30]);
        assert_eq!(backoff_after(&[], 3), Duration::ZERO);
        assert_eq!(consumer_config(8).max_deliver, 9, "eight attempts and one delivery to bury");
    }
}
