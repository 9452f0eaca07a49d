//! Where a mail goes: an SMTP relay named by `smtp_url` (through lettre), or,
//! with none configured, an `.eml` file in the outbox folder. It knows nothing
//! of NATS or of the configuration type; `config.rs` uses its URL parsing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `smtp://…?tls=none`: never TLS (a relay on the same host).
    None,
    /// `smtp://…` (or `?tls=opportunistic`): STARTTLS when the server offers it.
    Opportunistic,
    /// `smtp://…?tls=required`: STARTTLS, or no mail.
    Required,
    /// `smtps://…`: TLS from the first byte.
    Implicit,
}

/// An SMTP relay, parsed from `smtp_url` and the separate credentials.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub user: Option<String>,
    pub password: Option<SecretString>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SmtpSettings {
    /// Parses `smtp://host[:port][?tls=none|opportunistic|required]` (port 587
    /// by default) or `smtps://host[:port]` (port 465), with an optional
    /// `user:password@` (percent-encoded). A user and password may instead come
    /// separately, but not both ways. Errors never repeat the URL: it may hold
    /// the password.
    pub fn parse(raw: &str, user: Option<&str>, password: Option<&SecretString>) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("smtp_url is not a URL ({e})"))?;
        let (default_port, implicit) = match url.scheme() {
            "smtp" => (587, false),
            "smtps" => (465, true),
            other => return Err(format!("smtp_url must start with smtp:// or smtps://, not {other}://")),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("smtp_url has no host")?;
        // `[::1]` arrives with its brackets; the socket wants the bare address.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let mut tls = if implicit { TlsMode::Implicit } else { TlsMode::Opportunistic };
        for (key, value) in url.query_pairs() {
            tls = match (key.as_ref(), value.as_ref(), implicit) {
                ("tls", _, true) => return Err("smtps:// is always TLS; drop the tls= parameter".into()),
                ("tls", "none", false) => TlsMode::None,
                ("tls", "opportunistic", false) => TlsMode::Opportunistic,
                ("tls", "required", false) => TlsMode::Required,
                ("tls", _, false) => return Err("smtp_url's tls= is none, opportunistic or required".into()),
                _ => return Err(format!("smtp_url has an unknown parameter {key:?}")),
            };
        }
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let in_url = match (url.username(), url.password()) {
            ("", None) => None,
            (u, Some(p)) => Some((decode(u), SecretString::from(decode(p)))),
            (_, None) => return Err("smtp_url names a user without a password".into()),
        };
        let (user, password) = match (in_url, user, password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(
                    "SMTP credentials are given twice (in smtp_url and as smtp_user/smtp_password); give one".into()
                );
            }
            (Some((u, p)), None, None) => (Some(u), Some(p)),
            (None, Some(u), Some(p)) => (Some(u.to_owned()), Some(p.clone())),
            (None, None, None) => (None, None),
            (None, _, _) => return Err("set both smtp_user and smtp_password, or neither".into()),
        };
        Ok(Self { host, port: url.port().unwrap_or(default_port), tls, user, password })
    }

    /// Forms of the password that an error message might echo (a server
    /// repeating the `AUTH PLAIN` or `AUTH LOGIN` exchange): they are cut from
    /// every error before it is logged or kept.
    pub fn secrets(&self) -> Vec<String> {
        let (Some(user), Some(password)) = (&self.user, &self.password) else { return Vec::new() };
        let p = password.expose_secret();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        vec![p.to_owned(), b64(p), b64(&format!("\0{user}\0{p}"))]
    }
}

/// The longest a relay may take over one mail, from connecting to the answer to
/// its data: the consumer's ack wait is longer, so a slow relay never makes
/// the server hand the same mail to another node meanwhile.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(90);

/// One SMTP command's timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) enum Transport {
    Smtp { relay: AsyncSmtpTransport<Tokio1Executor>, secrets: Vec<String> },
    Outbox(PathBuf),
}

/// How a mail left.
#[derive(Debug)]
pub(crate) enum Delivered {
    Relayed,
    Written(PathBuf),
}

/// Why a mail did not leave: `Transient` is worth another attempt (no
/// connection, a timeout, a 4xx answer), `Permanent` is not (a 5xx answer, a
/// mail that cannot be built). The text is raw: sanitise it before it is shown.
#[derive(Debug)]
pub(crate) enum Failure {
    Transient(String),
    Permanent(String),
}

impl Transport {
    pub(crate) fn smtp(s: &SmtpSettings) -> Result<Self, String> {
        let tls = |host: &str| TlsParameters::new(host.to_owned()).map_err(|e| format!("SMTP TLS settings: {e}"));
        let mode = match s.tls {
            TlsMode::None => Tls::None,
            TlsMode::Opportunistic => Tls::Opportunistic(tls(&s.host)?),
            TlsMode::Required => Tls::Required(tls(&s.host)?),
            TlsMode::Implicit => Tls::Wrapper(tls(&s.host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .tls(mode)
            .timeout(Some(COMMAND_TIMEOUT));
        if let (Some(user), Some(password)) = (&s.user, &s.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose_secret().to_owned()));
        }
        Ok(Transport::Smtp { relay: builder.build(), secrets: s.secrets() })
    }

    pub(crate) fn outbox(dir: PathBuf) -> Self {
        Transport::Outbox(dir)
    }

    /// Texts to cut from errors (see [`SmtpSettings::secrets`]).
    pub(crate) fn secrets(&self) -> &[String] {
        match self {
            Transport::Smtp { secrets, .. } => secrets,
            Transport::Outbox(_) => &[],
        }
    }

    /// Sends `message`, or writes it to the outbox as `file_name`.
    pub(crate) async fn deliver(&self, message: &Message, file_name: &str) -> Result<Delivered, Failure> {
        match self {
            Transport::Smtp { relay, .. } => {
                let formatted = message.formatted();
                match tokio::time::timeout(SEND_TIMEOUT, relay.send_raw(message.envelope(), &formatted)).await {
                    Ok(Ok(_)) => Ok(Delivered::Relayed),
                    Ok(Err(e)) if e.is_permanent() || e.is_client() => Err(Failure::Permanent(e.to_string())),
                    Ok(Err(e)) => Err(Failure::Transient(e.to_string())),
                    Err(_) => Err(Failure::Transient(format!("the relay took longer than {SEND_TIMEOUT:?}"))),
                }
            }
            Transport::Outbox(dir) => write_eml(dir, file_name, &message.formatted())
                .await
                .map(Delivered::Written)
                .map_err(|e| Failure::Transient(format!("could not write to the outbox: {e}"))),
        }
    }
}

/// Writes a mail into `dir` whole or not at all (a temporary file, then a
/// rename), readable only by the node's user: it holds an address and codes.
async fn write_eml(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use tokio::io::AsyncWriteExt;
    tokio::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).await?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = tokio::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SmtpSettings, String> {
        SmtpSettings::parse(url, None, None)
    }

    #[test]
    fn smtp_urls_choose_the_port_and_the_tls_mode() {
        let s = parse("smtp://mail.example.com").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.tls), ("mail.example.com", 587, TlsMode::Opportunistic));
        let s = parse("smtp://127.0.0.1:2525?tls=required").unwrap();
        assert_eq!((s.port, s.tls), (2525, TlsMode::Required));
        assert_eq!(parse("smtp://h:25?tls=none").unwrap().tls, TlsMode::None);
        let s = parse("smtps://h").unwrap();
        assert_eq!((s.port, s.tls), (465, TlsMode::Implicit));
        assert_eq!(parse("smtp://[::1]:25").unwrap().host, "::1");
        assert!(parse("smtps://h?tls=none").is_err());
        assert!(parse("smtp://h?tls=maybe").is_err());
        assert!(parse("smtp://h?foo=1").is_err());
        assert!(parse("http://h").is_err());
        assert!(parse("not a url").is_err());
    }

    #[test]
    fn credentials_come_from_the_url_or_the_settings_but_not_both() {
        let s = parse("smtps://mailer:p%40ss%3Aword@h").unwrap();
        assert_eq!(s.user.as_deref(), Some("mailer"));
        assert_eq!(s.password.as_ref().unwrap().expose_secret(), "p@ss:word");
        let pw: SecretString = "hunter2hunter2".to_owned().into();
        let s = SmtpSettings::parse("smtp://h", Some("u"), Some(&pw)).unwrap();
        assert_eq!(s.user.as_deref(), Some("u"));
        let twice = SmtpSettings::parse("smtp://a:b@h", Some("u"), Some(&pw)).unwrap_err();
        assert!(twice.contains("twice") && !twice.contains(":b@"), "{twice}");
        assert!(SmtpSettings::parse("smtp://h", Some("u"), None).is_err());
        assert!(parse("smtp://lonely@h").is_err());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let secrets = s.secrets();
        assert!(secrets.contains(&"hunter2hunter2".to_owned()) && secrets.len() == 3);
    }

    #[test]
    fn url_errors_never_repeat_the_url() {
        let err = parse("smtpx://user:hunter2@h").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
