//! How a node authenticates to NATS and reaches it over TLS, and the URL
//! handling that keeps credentials out of addresses and messages. Both the
//! configuration and the connection code use it; it uses neither.

use std::path::PathBuf;

use secrecy::SecretString;

/// How a node proves who it is to NATS.
#[derive(Clone)]
pub enum Credentials {
    /// No credentials (a server without authentication refuses nothing).
    None,
    UserPassword(String, SecretString),
    Token(SecretString),
    /// An nkey seed (`SU…`): the server sends a nonce and the client signs it.
    NkeySeed(SecretString),
    /// A `.creds` file: a user JWT and its nkey seed.
    CredsFile(PathBuf),
    /// The text of a `.creds` file.
    Creds(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "none",
            Credentials::UserPassword(..) => "user and password",
            Credentials::Token(_) => "token",
            Credentials::NkeySeed(_) => "nkey",
            Credentials::CredsFile(_) | Credentials::Creds(_) => "creds",
        })
    }
}

/// TLS towards an external NATS: a `tls://` URL requires it; `ca_file` adds the
/// authority that signed the server's certificate; a client certificate and
/// key are sent where the server verifies clients.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Takes the credentials out of `url`, a server address or a comma-separated
/// list of them (a cluster, as NATS clients take it): the list without any
/// user, password or token, and the credentials the first address with some
/// carried (the servers of one cluster share their users).
pub fn split_url_credentials(url: &str) -> (String, Option<Credentials>) {
    let mut found = None;
    let plain: Vec<String> = url
        .split(',')
        .map(|one| {
            let (plain, creds) = split_one(one.trim());
            if found.is_none() {
                found = creds;
            }
            plain
        })
        .collect();
    (plain.join(","), found)
}

fn split_one(url: &str) -> (String, Option<Credentials>) {
    let Some(scheme_end) = url.find("://") else { return (url.to_owned(), None) };
    let rest = &url[scheme_end + 3..];
    let host_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..host_start].rfind('@') else { return (url.to_owned(), None) };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let plain = format!("{}{host}", &url[..scheme_end + 3]);
    let creds = match userinfo.split_once(':') {
        Some((user, pass)) => Credentials::UserPassword(user.to_owned(), pass.to_owned().into()),
        None => Credentials::Token(userinfo.to_owned().into()),
    };
    (plain, Some(creds))
}

/// Hides a password in `scheme://user:password@host`, and a token in
/// `scheme://token@host`, in each address of a comma-separated list.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(|one| redact_one(one.trim())).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..s + 3], &url[at..]),
                None => format!("{}<redacted>{}", &url[..s + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_list_of_servers_keeps_every_address_and_loses_every_secret() {
        let (plain, creds) = split_url_credentials("nats://u:s3cret@a:4222, nats://b:4222,tls://u:s3cret@c:4222");
        assert_eq!(plain, "nats://a:4222,nats://b:4222,tls://c:4222");
        assert!(matches!(creds, Some(Credentials::UserPassword(u, p)) if u == "u" && p.expose_secret() == "s3cret"));
        let shown = redact_url("nats://u:s3cret@a:4222,nats://t0ken@b:4222,nats://c:4222");
        assert_eq!(shown, "nats://u:<redacted>@a:4222,nats://<redacted>@b:4222,nats://c:4222");
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(redact_url("nats://u:secret@h:4222"), "nats://u:<redacted>@h:4222");
        assert_eq!(redact_url("nats://tok3n@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(redact_url("ws://h:8000"), "ws://h:8000");
    }

    #[test]
    fn credentials_in_a_url_are_taken_out_of_the_address() {
        let (url, creds) = split_url_credentials("nats://canopy:s3cret@nats.internal:4222");
        assert_eq!(url, "nats://nats.internal:4222");
        assert!(
            matches!(creds, Some(Credentials::UserPassword(u, p)) if u == "canopy" && p.expose_secret() == "s3cret")
        );
        let (url, creds) = split_url_credentials("tls://tok3n@h:4443");
        assert_eq!(url, "tls://h:4443");
        assert!(matches!(creds, Some(Credentials::Token(t)) if t.expose_secret() == "tok3n"));
        assert!(split_url_credentials("nats://h:4222").1.is_none());
        assert_eq!(format!("{:?}", Credentials::Token("x".to_owned().into())), "token");
    }
}
