//! One typed configuration: defaults, then a TOML file, then `CANOPY_*` environment
//! variables, then command-line flags. Secrets are wrapped so they never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::nats::credentials::{Credentials, Tls, redact_url, split_url_credentials};
use crate::outbound::mail::transport::SmtpSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP server listens.
    pub http: SocketAddr,
    /// Where the managed nats-server, embedded SurrealDB and keys keep their files.
    pub data_dir: PathBuf,
    /// An external NATS server; unset starts a managed `nats-server` child.
    pub nats_url: Option<String>,
    /// The client port of the managed nats-server.
    pub nats_port: u16,
    /// The nats-server binary for the managed server.
    pub nats_server_bin: String,
    /// Credentials for an external NATS (at most one kind; a managed server
    /// uses the credentials Canopy generates): a user and password (also
    /// accepted in the URL as `nats://user:password@host`), a token, an nkey
    /// seed, or a `.creds` file.
    pub nats_user: Option<String>,
    pub nats_password: Option<SecretString>,
    pub nats_token: Option<SecretString>,
    pub nats_nkey_seed: Option<SecretString>,
    pub nats_creds: Option<PathBuf>,
    /// The certificate authority of an external NATS's TLS certificate (PEM);
    /// setting it requires TLS, as a `tls://` URL does.
    pub nats_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM), for a NATS that verifies clients.
    pub nats_tls_cert: Option<PathBuf>,
    pub nats_tls_key: Option<PathBuf>,
    /// The directory of Canopy's NATS keys (`canopy nats init --dir`), for an
    /// external NATS that runs Canopy's authorization: with it the node answers
    /// the server's auth callout for push clients and publishes their pushes.
    /// A managed server's keys are under the data dir. Unset with an external
    /// NATS: no push.
    pub nats_auth_dir: Option<PathBuf>,
    /// Where the managed nats-server listens for MQTT 3.1.1 push clients.
    pub mqtt_listen: SocketAddr,
    /// Where the managed nats-server listens for WebSocket push clients (plain
    /// `ws://`: put TLS in front of it, as for the HTTP port).
    pub websocket_listen: SocketAddr,
    /// How long pushes are kept for clients that were offline, in seconds.
    pub push_history_secs: u64,
    /// Lets webhooks call loopback addresses (and no other forbidden kind):
    /// for tests and local development only.
    pub webhook_allow_loopback: bool,
    /// How long one webhook call may take, connecting included, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// How many times a delivery is tried before it is given up.
    pub webhook_max_attempts: u32,
    /// The wait before the first retry, in milliseconds; each later one waits
    /// four times longer, at most six hours.
    pub webhook_backoff_ms: u64,
    /// After this many failed attempts in a row a webhook is disabled and its
    /// owner mailed.
    pub webhook_disable_after: u32,
    /// How many calls to one tenant's endpoints run at once.
    pub webhook_concurrency: usize,
    /// How long delivery attempts are kept for `webhookDeliveries`, in days.
    pub webhook_log_days: u64,
    /// `mem://`, `surrealkv://path` or `ws://host:port`; unset uses surrealkv under the data dir.
    pub surreal_url: Option<String>,
    /// User and password for a remote SurrealDB (`ws://`), if it requires them.
    pub surreal_user: Option<String>,
    pub surreal_password: Option<SecretString>,
    /// 32 bytes, base64url; it wraps every data and signing key. Unset: read or
    /// create `master.key` in the data dir. Every node of a cluster needs the same one.
    pub master_key: Option<SecretString>,
    /// The `iss` claim of issued tokens, also the expected `aud`.
    pub issuer: String,
    /// Lifetime of an access token, in seconds (refresh it with its session's refresh token).
    pub token_ttl_secs: u64,
    /// How long a refresh token works unused, in seconds; each use starts it again.
    pub refresh_ttl_secs: u64,
    /// Open sessions per account; one more ends the least recently used.
    pub max_sessions_per_account: usize,
    /// Rotate the token signing key when it is this many days old (unset: only
    /// `canopy keys rotate` rotates it).
    pub signing_key_rotation_days: Option<u64>,
    /// Limits on sign-in, registration, password resets, verification and refresh.
    pub rate_limits: crate::edge::limits::RateLimits,
    /// Take the client's address from the last `X-Forwarded-For` entry (only
    /// behind a proxy that sets it; anyone can send the header).
    pub trust_forwarded_for: bool,
    /// A tenant tree with no command for this long is stopped.
    pub idle_timeout_secs: u64,
    /// At most this many tenant trees run on the node; starting one more stops
    /// the least recently used first.
    pub max_live_trees: usize,
    /// A node whose heartbeat in KV `nodes` is this old is dead for the others.
    pub node_dead_after_secs: u64,
    /// How long a tenant's placement lease lasts unrenewed: after a node dies,
    /// its tenants move to others within this time (whole seconds, at least 2).
    pub lease_secs: u64,
    /// How long a mutation waits for its own events to be projected.
    pub read_your_writes_timeout_ms: u64,
    /// How long the edge waits for a command's reply.
    pub command_timeout_ms: u64,
    /// Requests to `{tenant}.{base_domain}` resolve the tenant from the subdomain.
    pub base_domain: Option<String>,
    /// The platform administrator created at first start.
    pub bootstrap_admin_email: Option<String>,
    pub bootstrap_admin_password: Option<SecretString>,
    /// Replicas of the stream and buckets: 1 on one server, 3 on a NATS cluster.
    pub replicas: usize,
    /// How many argon2 hashes may run at once (0: the number of cores less one, at least 1).
    pub hash_concurrency: usize,
    /// Snapshot an aggregate after this many events.
    pub snapshot_every: u64,
    /// How many accounts each tenant keeps in memory.
    pub accounts_cached_per_tenant: usize,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <metrics_token>`.
    pub metrics_token: Option<SecretString>,
    /// Whether GraphQL introspection (and the GraphiQL page) is served; turn it
    /// off in production to keep the schema's shape to the documented SDL.
    pub introspection: bool,
    /// How long a verification code and link stay valid, in seconds.
    pub verification_ttl_secs: u64,
    /// The least time between two verification mails to one account, in seconds.
    pub verification_resend_secs: u64,
    /// How long a password reset link stays valid, in seconds.
    pub password_reset_ttl_secs: u64,
    /// How long an invitation to join a tenant stays valid, in seconds.
    pub invitation_ttl_secs: u64,
    /// Where the links in mails point: the application's public address
    /// (unset: this node's own HTTP address).
    pub app_url: Option<String>,
    /// The SMTP relay: `smtp://host[:port]` (STARTTLS when offered; add
    /// `?tls=required` to insist, `?tls=none` to never), or `smtps://host[:port]`
    /// (TLS from the start), optionally with `user:password@`. Unset: mail is
    /// written as `.eml` files to `<data_dir>/outbox/`.
    pub smtp_url: Option<String>,
    /// The relay's user and password, when they are not in `smtp_url`.
    pub smtp_user: Option<String>,
    pub smtp_password: Option<SecretString>,
    /// The `From` of every mail, e.g. `Acme <no-reply@acme.example>`.
    pub mail_from: String,
    /// How many times a mail is tried before it becomes a dead letter.
    pub mail_max_attempts: u32,
    /// The wait after each failed attempt, in milliseconds; attempts past the
    /// list's end wait its last entry.
    pub mail_backoff_ms: Vec<u64>,
    /// A directory of module versions (`{module}/v{N}/module.toml` and their
    /// files) replacing the ones embedded in the binary.
    pub modules_dir: Option<PathBuf>,
    /// Run pending module migrations when a tenant subscribes to a module
    /// version, and every tenant's at start.
    pub auto_migrate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:4000".parse().expect("a valid default address"),
            data_dir: PathBuf::from("./data"),
            nats_url: None,
            nats_port: 4222,
            nats_server_bin: "nats-server".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_nkey_seed: None,
            nats_creds: None,
            nats_ca_file: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_auth_dir: None,
            mqtt_listen: "127.0.0.1:1883".parse().expect("a valid default address"),
            websocket_listen: "127.0.0.1:9222".parse().expect("a valid default address"),
            push_history_secs: 86_400,
            webhook_allow_loopback: false,
            webhook_timeout_ms: 10_000,
            webhook_max_attempts: 8,
            webhook_backoff_ms: 5_000,
            webhook_disable_after: 20,
            webhook_concurrency: 8,
            webhook_log_days: 30,
            surreal_url: None,
            surreal_user: None,
            surreal_password: None,
            master_key: None,
            issuer: "canopy".into(),
            token_ttl_secs: 900,
            idle_timeout_secs: 300,
            max_live_trees: 10_000,
            node_dead_after_secs: 10,
            lease_secs: 10,
            read_your_writes_timeout_ms: 5000,
            command_timeout_ms: 10_000,
            base_domain: None,
            bootstrap_admin_email: None,
            bootstrap_admin_password: None,
            replicas: 1,
            hash_concurrency: 0,
            snapshot_every: 100,
            accounts_cached_per_tenant: 1000,
            log_format: "text".into(),
            metrics_token: None,
            introspection: true,
            verification_ttl_secs: 24 * 3600,
            verification_resend_secs: 60,
            password_reset_ttl_secs: 1800,
            invitation_ttl_secs: 7 * 86_400,
            refresh_ttl_secs: 30 * 86_400,
            max_sessions_per_account: 50,
            signing_key_rotation_days: None,
            rate_limits: Default::default(),
            trust_forwarded_for: false,
            app_url: None,
            smtp_url: None,
            smtp_user: None,
            smtp_password: None,
            mail_from: "Canopy <no-reply@localhost>".into(),
            mail_max_attempts: 8,
            mail_backoff_ms: vec![5_000, 30_000, 120_000, 600_000, 1_800_000],
            modules_dir: None,
            auto_migrate: true,
        }
    }
}

/// Values given as flags; unset flags leave lower layers alone.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct Overrides {
    /// Address for the HTTP server [default: 127.0.0.1:4000].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Data directory [default: ./data].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Use this NATS server instead of a managed one.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// Client port of the managed nats-server [default: 4222].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_port: Option<u16>,
    /// Use this SurrealDB instead of the embedded one (mem://, surrealkv://, ws://).
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surreal_url: Option<String>,
    /// Send mail through this SMTP relay (smtp://host:port, smtps://host:port)
    /// instead of writing it to the outbox; put a password in CANOPY_SMTP_PASSWORD,
    /// not here, where other users of the machine can read it.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// Use the module versions in this directory instead of the embedded ones.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the layers in order. `file` is optional; a missing default file is fine.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        match file {
            Some(f) if !f.exists() => return Err(ConfigError(format!("config file {} does not exist", f.display()))),
            Some(f) => fig = fig.merge(Toml::file(f)),
            None => fig = fig.merge(Toml::file("canopy.toml")),
        }
        fig = fig // CANOPY_CONFIG names the file; CANOPY_BLESS is for the contract tests.
            .merge(Env::prefixed("CANOPY_").ignore(&["config", "bless"]))
            .merge(Serialized::defaults(flags));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The base of the links in mails, without a trailing slash.
    pub fn app_url(&self) -> String {
        match &self.app_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.http),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.verification_ttl_secs == 0 {
            return Err(ConfigError("verification_ttl_secs must be positive".into()));
        }
        if let Some(u) = &self.app_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(ConfigError("app_url must start with https:// or http://".into()));
        }
        if self.max_live_trees == 0 {
            return Err(ConfigError("max_live_trees must be positive".into()));
        }
        if !(1..=3600).contains(&self.node_dead_after_secs) {
            return Err(ConfigError("node_dead_after_secs must be between 1 and 3600".into()));
        }
        if !(2..=3600).contains(&self.lease_secs) {
            return Err(ConfigError("lease_secs must be between 2 and 3600".into()));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(ConfigError("replicas must be between 1 and 5".into()));
        }
        if self.push_history_secs == 0 {
            return Err(ConfigError("push_history_secs must be positive".into()));
        }
        if self.webhook_timeout_ms == 0 || self.webhook_timeout_ms > 300_000 {
            return Err(ConfigError("webhook_timeout_ms must be between 1 and 300000".into()));
        }
        if self.webhook_max_attempts == 0 || self.webhook_max_attempts > 50 {
            return Err(ConfigError("webhook_max_attempts must be between 1 and 50".into()));
        }
        if self.webhook_disable_after == 0 {
            return Err(ConfigError("webhook_disable_after must be positive".into()));
        }
        if self.webhook_concurrency == 0 || self.webhook_concurrency > 256 {
            return Err(ConfigError("webhook_concurrency must be between 1 and 256".into()));
        }
        if self.webhook_log_days == 0 {
            return Err(ConfigError("webhook_log_days must be positive".into()));
        }
        if self.token_ttl_secs == 0 {
            return Err(ConfigError("token_ttl_secs must be positive".into()));
        }
        if self.bootstrap_admin_email.is_some() != self.bootstrap_admin_password.is_some() {
            return Err(ConfigError(
                "set both CANOPY_BOOTSTRAP_ADMIN_EMAIL and CANOPY_BOOTSTRAP_ADMIN_PASSWORD, or neither".into(),
            ));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(ConfigError("log_format is `text` or `json`".into()));
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return Err(ConfigError("set both nats_tls_cert and nats_tls_key, or neither".into()));
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.expose_secret().len() < 16) {
            return Err(ConfigError("metrics_token must have at least 16 characters".into()));
        }
        self.external_nats()?;
        self.smtp()?;
        if let Err(e) = self.mail_from.parse::<lettre::message::Mailbox>() {
            return Err(ConfigError(format!("mail_from is not a mailbox like `Canopy <no-reply@example.com>` ({e})")));
        }
        if !(1..=100).contains(&self.mail_max_attempts) {
            return Err(ConfigError("mail_max_attempts must be between 1 and 100".into()));
        }
        if self.mail_backoff_ms.is_empty() || self.mail_backoff_ms.iter().any(|ms| *ms > 86_400_000) {
            return Err(ConfigError("mail_backoff_ms is a list of one or more waits of at most a day".into()));
        }
        Ok(())
    }

    /// The SMTP relay and how to authenticate to it; `None` writes mail to the outbox.
    pub fn smtp(&self) -> Result<Option<SmtpSettings>, ConfigError> {
        let Some(url) = &self.smtp_url else {
            if self.smtp_user.is_some() || self.smtp_password.is_some() {
                return Err(ConfigError("smtp_user and smtp_password need an smtp_url".into()));
            }
            return Ok(None);
        };
        SmtpSettings::parse(url, self.smtp_user.as_deref(), self.smtp_password.as_ref()).map(Some).map_err(ConfigError)
    }

    /// The external NATS's address without credentials, how to authenticate to
    /// it, and its TLS settings; `None` when Canopy manages its nats-server.
    pub fn external_nats(&self) -> Result<Option<(String, Credentials, Tls)>, ConfigError> {
        let Some(raw) = &self.nats_url else { return Ok(None) };
        let (url, in_url) = split_url_credentials(raw);
        crate::nats::server_addrs(&url).map_err(|e| ConfigError(e.to_string()))?;
        let mut given: Vec<Credentials> = in_url.into_iter().collect();
        match (&self.nats_user, &self.nats_password) {
            (Some(u), Some(p)) => given.push(Credentials::UserPassword(u.clone(), p.clone())),
            (None, None) => {}
            _ => return Err(ConfigError("set both nats_user and nats_password, or neither".into())),
        }
        if let Some(t) = &self.nats_token {
            given.push(Credentials::Token(t.clone()));
        }
        if let Some(s) = &self.nats_nkey_seed {
            given.push(Credentials::NkeySeed(s.clone()));
        }
        if let Some(f) = &self.nats_creds {
            given.push(Credentials::CredsFile(f.clone()));
        }
        if given.len() > 1 {
            return Err(ConfigError(format!(
                "NATS credentials are given {} ways ({}); give one",
                given.len(),
                given.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
            )));
        }
        let tls = Tls {
            ca_file: self.nats_ca_file.clone(),
            client_cert: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
        };
        Ok(Some((url, given.pop().unwrap_or(Credentials::None), tls)))
    }

    pub fn hash_concurrency(&self) -> usize {
        if self.hash_concurrency == 0 {
            // Leave one core to everything else, so that a login flood on one
            // tenant cannot take all the CPU from the others.
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        } else {
            self.hash_concurrency
        }
    }

    /// The effective configuration as JSON, with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> serde_json::Value {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|_| "<redacted>");
        serde_json::json!({
            "http": self.http.to_string(),
            "data_dir": self.data_dir,
            "nats_url": self.nats_url.as_deref().map(redact_url).unwrap_or_else(|| format!("managed (127.0.0.1:{})", self.nats_port)),
            "nats_server_bin": self.nats_server_bin,
            "nats_credentials": match self.external_nats() {
                Ok(Some((_, c, _))) => format!("{c:?}"),
                _ => "generated (managed nats-server)".to_owned(),
            },
            "nats_ca_file": self.nats_ca_file,
            "nats_tls_cert": self.nats_tls_cert,
            "nats_auth_dir": self.nats_auth_dir,
            "mqtt_listen": self.mqtt_listen.to_string(),
            "websocket_listen": self.websocket_listen.to_string(),
            "push_history_secs": self.push_history_secs,
            "webhook_allow_loopback": self.webhook_allow_loopback,
            "webhook_timeout_ms": self.webhook_timeout_ms,
            "webhook_max_attempts": self.webhook_max_attempts,
            "webhook_backoff_ms": self.webhook_backoff_ms,
            "webhook_disable_after": self.webhook_disable_after,
            "webhook_concurrency": self.webhook_concurrency,
            "webhook_log_days": self.webhook_log_days,
            "surreal_url": self.surreal_url.as_deref().map(redact_url).unwrap_or_else(|| "embedded surrealkv".into()),
            "surreal_user": self.surreal_user,
            "surreal_password": secret(&self.surreal_password),
            "master_key": secret(&self.master_key).unwrap_or("data_dir/master.key"),
            "issuer": self.issuer,
            "token_ttl_secs": self.token_ttl_secs,
            "refresh_ttl_secs": self.refresh_ttl_secs,
            "max_sessions_per_account": self.max_sessions_per_account,
            "signing_key_rotation_days": self.signing_key_rotation_days,
            "rate_limits": self.rate_limits,
            "trust_forwarded_for": self.trust_forwarded_for,
            "idle_timeout_secs": self.idle_timeout_secs,
            "max_live_trees": self.max_live_trees,
            "node_dead_after_secs": self.node_dead_after_secs,
            "lease_secs": self.lease_secs,
            "read_your_writes_timeout_ms": self.read_your_writes_timeout_ms,
            "command_timeout_ms": self.command_timeout_ms,
            "base_domain": self.base_domain,
            "bootstrap_admin_email": self.bootstrap_admin_email.as_ref().map(|_| "<set>"),
            "bootstrap_admin_password": secret(&self.bootstrap_admin_password),
            "replicas": self.replicas,
            "hash_concurrency": self.hash_concurrency(),
            "snapshot_every": self.snapshot_every,
            "accounts_cached_per_tenant": self.accounts_cached_per_tenant,
            "log_format": self.log_format,
            "metrics_token": secret(&self.metrics_token),
            "introspection": self.introspection,
            "verification_ttl_secs": self.verification_ttl_secs,
            "verification_resend_secs": self.verification_resend_secs,
            "password_reset_ttl_secs": self.password_reset_ttl_secs,
            "invitation_ttl_secs": self.invitation_ttl_secs,
            "app_url": self.app_url(),
            "smtp_url": self.smtp_url.as_deref().map(redact_url).unwrap_or_else(|| format!("none: mail goes to {}", self.data_dir.join("outbox").display())),
            "smtp_user": self.smtp_user,
            "smtp_password": secret(&self.smtp_password),
            "mail_from": self.mail_from,
            "mail_max_attempts": self.mail_max_attempts,
            "mail_backoff_ms": self.mail_backoff_ms,
            "modules_dir": self.modules_dir.as_ref().map_or_else(|| "embedded".into(), |d| d.display().to_string()),
            "auto_migrate": self.auto_migrate,
        })
    }

    pub fn master_key_secret(&self) -> Option<&str> {
        self.master_key.as_ref().map(|s| s.expose_secret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_credentials_are_given_one_way_only() {
        let url = |u: &str| Config { nats_url: Some(u.into()), ..Config::default() };
        let (plain, creds, _) = url("nats://u:p@h:4222").external_nats().unwrap().unwrap();
        assert_eq!(plain, "nats://h:4222");
        assert!(matches!(creds, Credentials::UserPassword(..)));
        let twice = Config { nats_token: Some("t".to_owned().into()), ..url("nats://u:p@h:4222") };
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("2 ways") && !err.contains(":p@"), "{err}");
        assert!(Config::default().external_nats().unwrap().is_none(), "unset: managed");
        let shown = url("nats://u:hunter2hunter2@h:4222").redacted().to_string();
        assert!(!shown.contains("hunter2hunter2"), "{shown}");
    }

    #[test]
    fn nats_url_takes_a_list_of_servers_and_refuses_what_is_not_one() {
        let url = |u: &str| Config { nats_url: Some(u.into()), ..Config::default() };
        let (plain, creds, _) = url("nats://u:p@a:4222,nats://b:4222").external_nats().unwrap().unwrap();
        assert_eq!(plain, "nats://a:4222,nats://b:4222");
        assert!(matches!(creds, Credentials::UserPassword(..)));
        for bad in ["", ",", "nats://a:4222,http://u:hunter2hunter2@b:80", "nats://a:notaport"] {
            let err = url(bad).validate().unwrap_err().to_string();
            assert!(err.contains("nats_url") && !err.contains("hunter2hunter2"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_printed_config_holds_no_secret() {
        let cfg = Config {
            master_key: Some("c2VjcmV0LW1hc3Rlci1rZXk".to_owned().into()),
            bootstrap_admin_email: Some("root@example.com".into()),
            bootstrap_admin_password: Some("hunter2hunter2".to_owned().into()),
            ..Config::default()
        };
        let shown = cfg.redacted().to_string();
        for secret in ["c2VjcmV0LW1hc3Rlci1rZXk", "hunter2hunter2", "root@example.com"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn the_smtp_password_is_never_printed_and_mail_settings_are_checked() {
        let cfg =
            Config { smtp_url: Some("smtps://mailer:hunter2hunter2@smtp.example.com".into()), ..Config::default() };
        cfg.validate().unwrap();
        let shown = cfg.redacted().to_string();
        assert!(!shown.contains("hunter2hunter2") && shown.contains("smtp.example.com"), "{shown}");
        let cfg = Config {
            smtp_url: Some("smtp://smtp.example.com".into()),
            smtp_user: Some("mailer".into()),
            smtp_password: Some("hunter2hunter2".to_owned().into()),
            ..Config::default()
        };
        assert!(cfg.smtp().unwrap().is_some());
        assert!(!cfg.redacted().to_string().contains("hunter2hunter2"));
        let bad = |c: Config| c.validate().unwrap_err().to_string();
        let err = bad(Config { smtp_url: Some("smtpx://u:hunter2hunter2@h".into()), ..Config::default() });
        assert!(!err.contains("hunter2hunter2"), "{err}");
        assert!(bad(Config { smtp_user: Some("u".into()), ..Config::default() }).contains("smtp_url"));
        assert!(bad(Config { mail_from: "not a mailbox".into(), ..Config::default() }).contains("mail_from"));
        assert!(bad(Config { mail_max_attempts: 0, ..Config::default() }).contains("mail_max_attempts"));
        assert!(bad(Config { mail_backoff_ms: vec![], ..Config::default() }).contains("mail_backoff_ms"));
        assert!(Config::default().smtp().unwrap().is_none(), "no smtp_url: the outbox");
    }

    // The closure's error type is figment's own, as `Jail` requires.
    #[allow(clippy::result_large_err)]
    #[test]
    fn mail_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CANOPY_SMTP_URL", "smtp://127.0.0.1:2525?tls=none");
            jail.set_env("CANOPY_MAIL_FROM", "Acme <no-reply@acme.example>");
            jail.set_env("CANOPY_MAIL_MAX_ATTEMPTS", "3");
            jail.set_env("CANOPY_MAIL_BACKOFF_MS", "[10, 20]");
            let cfg = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(cfg.smtp_url.as_deref(), Some("smtp://127.0.0.1:2525?tls=none"));
            assert_eq!(cfg.mail_from, "Acme <no-reply@acme.example>");
            assert_eq!((cfg.mail_max_attempts, cfg.mail_backoff_ms), (3, vec![10, 20]));
            Ok(())
        });
    }

    #[test]
    fn a_config_file_sets_options_and_flags_beat_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("canopy.toml");
        std::fs::write(&file, "http = \"127.0.0.1:7001\"\nidle_timeout_secs = 42\n").unwrap();
        let cfg = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!((cfg.http.port(), cfg.idle_timeout_secs), (7001, 42));
        let flags = Overrides { http: Some("127.0.0.1:7002".parse().unwrap()), ..Default::default() };
        let cfg = Config::load(Some(&file), &flags).unwrap();
        assert_eq!((cfg.http.port(), cfg.idle_timeout_secs), (7002, 42));
        std::fs::write(&file, "no_such_option = 1\n").unwrap();
        assert!(Config::load(Some(&file), &Overrides::default()).is_err(), "unknown keys are refused");
        assert!(Config::load(Some(&dir.path().join("missing.toml")), &Overrides::default()).is_err());
    }

    #[test]
    fn modules_are_embedded_and_migrated_unless_configured_otherwise() {
        let cfg = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!((cfg.modules_dir, cfg.auto_migrate), (None, true));
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("canopy.toml");
        std::fs::write(&file, "modules_dir = \"/srv/modules\"\nauto_migrate = false\n").unwrap();
        let cfg = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!((cfg.modules_dir.as_deref(), cfg.auto_migrate), (Some(Path::new("/srv/modules")), false));
        let flags = Overrides { modules_dir: Some("/opt/modules".into()), ..Default::default() };
        let cfg = Config::load(Some(&file), &flags).unwrap();
        assert_eq!(cfg.modules_dir.as_deref(), Some(Path::new("/opt/modules")));
        assert_eq!(cfg.redacted()["modules_dir"], "/opt/modules");
    }

    #[test]
    fn flags_override_the_defaults() {
        let flags = Overrides { http: Some("127.0.0.1:9999".parse().unwrap()), ..Default::default() };
        let cfg = Config::load(None, &flags).unwrap();
        assert_eq!(cfg.http.port(), 9999);
        assert_eq!(cfg.issuer, "canopy");
    }
}
