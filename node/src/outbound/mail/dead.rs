//! Dead letters: mails the mailer gave up on, kept in `MAIL_DEAD` with their
//! last error until an operator lists them (`canopy mail dead`) and moves them
//! back into the queue (`canopy mail retry`). A letter's id is its `MAIL_DEAD`
//! stream sequence.

use anyhow::{Context, bail};
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
/// The subject it had in `MAIL` (`mail.{scope}.{kind}`), where a retry puts it back.
pub const SUBJECT_HEADER: &str = "Canopy-Mail-Subject";
/// The `Nats-Msg-Id` it had in `MAIL`.
pub const MSG_ID_HEADER: &str = "Canopy-Mail-Msg-Id";

/// One dead letter as `canopy mail dead` shows it: never the body, and the
/// address only masked.
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

/// Which letters `retry` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    One(u64),
    All,
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

/// Moves dead letters back into `MAIL` under their old subject, then deletes
/// them from `MAIL_DEAD`; returns the ids moved. The new message id is the old
/// one and the letter's id, so the queue does not drop it as a duplicate, and a
/// retry repeated after a crash between the two steps queues it once.
pub async fn retry(js: &jetstream::Context, which: Selection) -> anyhow::Result<Vec<u64>> {
    let stream = dead_stream(js).await?;
    let ids = match which {
        Selection::One(id) => vec![id],
        Selection::All => list(js).await?.into_iter().map(|l| l.id).collect(),
    };
    let mut moved = Vec::new();
    for id in ids {
        let m = match stream.direct_get(id).await {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => bail!("there is no dead letter {id}"),
            Err(e) => return Err(e).with_context(|| format!("while reading dead letter {id}")),
        };
        let h = Some(&m.headers);
        let subject = match header(h, SUBJECT_HEADER) {
            Some(s) => s.to_owned(),
            None => format!("mail.{}", m.subject.as_str().strip_prefix("maildead.").unwrap_or_default()),
        };
        if !subject.starts_with("mail.") || subject.split('.').count() != 3 {
            bail!("dead letter {id} has no mail subject to go back to");
        }
        let old_id = header(h, MSG_ID_HEADER).unwrap_or("mail");
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, format!("{old_id}.retry.{id}").as_str());
        for name in [KIND_HEADER, SCOPE_HEADER] {
            if let Some(value) = header(h, name) {
                headers.insert(name, value);
            }
        }
        js.publish_with_headers(subject, headers, m.payload.clone())
            .await
            .with_context(|| format!("while queueing dead letter {id} again"))?
            .await
            .with_context(|| format!("while queueing dead letter {id} again"))?;
        stream.delete_message(id).await.with_context(|| format!("while deleting dead letter {id}"))?;
        moved.push(id);
    }
    Ok(moved)
}

/// The letters as an aligned table for a terminal.
pub fn table(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|l| {
            let time = l.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            [
                l.id.to_string(),
                time,
                l.scope.clone(),
                l.kind.clone(),
                l.attempts.to_string(),
                l.to.clone(),
                l.error.clone(),
            ]
        })
        .collect();
    let head = ["ID", "TIME", "SCOPE", "KIND", "ATTEMPTS", "TO", "ERROR"].map(str::to_owned);
    let mut widths = [0; 7];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns_and_says_when_it_is_empty() {
        assert_eq!(table(&[]), "no dead letters\n");
        let letter = DeadLetter {
            id: 7,
            time: OffsetDateTime::UNIX_EPOCH,
            scope: "acme".into(),
            kind: "verify_email".into(),
            attempts: 1,
            error: "permanent error (550): no such user".into(),
            to: "a***@example.com".into(),
        };
        let shown = table(&[letter]);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  TIME"), "{shown}");
        assert!(lines[1].starts_with("7   1970-01-01T00:00:00Z  acme"), "{shown}");
        assert_eq!(lines[0].find("ERROR"), lines[1].find("permanent"), "{shown}");
    }
}
