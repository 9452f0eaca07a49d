//! Dead letters: mails the mailer gave up on, kept in `MAIL_DEAD` with their
//! last error. A letter's id is its `MAIL_DEAD` stream sequence.

use anyhow::Context;
use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, message::StreamMessage, stream::DirectGetErrorKind};
use time::OffsetDateTime;

use super::templates::one_line;
use super::{DEAD_STREAM, KIND_HEADER, OutgoingMail, SCOPE_HEADER, mask_address};

/// The last error, sanitised: one line, at most 300 characters, no password,
/// the address masked.
pub const ERROR_HEADER: &str = "Canopy-Mail-Error";
/// How many times the mailer tried to send it.
pub const ATTEMPTS_HEADER: &str = "Canopy-Mail-Attempts";
/// The subject it had in `MAIL` (`mail.{scope}.{kind}`).
pub const SUBJECT_HEADER: &str = "Canopy-Mail-Subject";
/// The `Nats-Msg-Id` it had in `MAIL`.
pub const MSG_ID_HEADER: &str = "Canopy-Mail-Msg-Id";

/// One dead letter as an operator sees it: never the body, and the address
/// only masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: u64,
    /// When it was buried.
    pub time: OffsetDateTime,
    pub scope: String,
    pub kind: String,
    pub attempts: u32,
    pub error: String,
    /// The recipient, masked (`a***@example.com`); `?` for a mail that does not decode.
    pub to: String,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// Copies a `MAIL` message into `MAIL_DEAD` (same body, the subject's first
/// token `maildead`), with the last error and the attempts in its headers.
/// The caller removes the original only after this returned `Ok`. Its message
/// id is derived from the original's, so burying the same delivery twice (the
/// ack of the original got lost) keeps one letter.
pub(crate) async fn bury(
    js: &jetstream::Context,
    original: &jetstream::Message,
    msg_id: &str,
    attempts: u32,
    error: &str,
) -> anyhow::Result<()> {
    let subject = original.subject.as_str();
    let rest = subject.strip_prefix("mail.").unwrap_or(subject);
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, format!("{msg_id}:dead").as_str());
    headers.insert(MSG_ID_HEADER, msg_id);
    headers.insert(SUBJECT_HEADER, subject);
    headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
    headers.insert(ERROR_HEADER, one_line(error).as_str());
    for name in [KIND_HEADER, SCOPE_HEADER] {
        if let Some(value) = header(original.headers.as_ref(), name) {
            headers.insert(name, one_line(value).as_str());
        }
    }
    js.publish_with_headers(format!("maildead.{rest}"), headers, original.payload.clone())
        .await
        .context("while burying a mail")?
        .await
        .context("while burying a mail")?;
    Ok(())
}

fn letter(m: &StreamMessage) -> DeadLetter {
    let h = Some(&m.headers);
    let shown = |name: &str| header(h, name).map(|v| one_line(v).chars().take(300).collect()).unwrap_or_default();
    let to =
        serde_json::from_slice::<OutgoingMail>(&m.payload).map_or_else(|_| "?".to_owned(), |m| mask_address(&m.to));
    DeadLetter {
        id: m.sequence,
        time: m.time,
        scope: shown(SCOPE_HEADER),
        kind: shown(KIND_HEADER),
        attempts: header(h, ATTEMPTS_HEADER).and_then(|a| a.parse().ok()).unwrap_or(0),
        error: shown(ERROR_HEADER),
        to,
    }
}

async fn dead_stream(js: &jetstream::Context) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(DEAD_STREAM).await.context("MAIL_DEAD was not found: has a node started on this NATS?")
}

/// Every dead letter, oldest first. Reads with direct gets, so it creates no
/// consumer and works while the mailers run.
pub async fn list(js: &jetstream::Context) -> anyhow::Result<Vec<DeadLetter>> {
    let stream = dead_stream(js).await?;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        match stream.direct_get_next_for_subject("maildead.>", Some(next)).await {
            Ok(m) => {
                out.push(letter(&m));
                next = m.sequence + 1;
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).context("while reading MAIL_DEAD"),
        }
    }
}
