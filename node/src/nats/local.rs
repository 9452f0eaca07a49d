//! `LocalNats`, a throwaway nats-server for the tests and the benchmark, built
//! only with the `test-support` feature: production code never starts one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::auth::NatsAuth;
use super::credentials::{Credentials, Tls};
use super::{INSTALL_HINT, conf_with_listeners, connect_with};

/// A throwaway nats-server for tests and the benchmark: `nats.conf` with its own
/// keys and authorization (like a managed server), a free port on 127.0.0.1, its
/// own store in a temporary directory. Killed and removed on drop.
pub struct LocalNats {
    child: std::process::Child,
    pub url: String,
    port: u16,
    /// Its MQTT and WebSocket listeners (free ports on 127.0.0.1), when it
    /// runs the repository's `nats.conf`.
    pub mqtt: Option<std::net::SocketAddr>,
    pub websocket: Option<std::net::SocketAddr>,
    dir: PathBuf,
    /// The keys of its accounts, when it runs the repository's `nats.conf`.
    pub auth: Option<NatsAuth>,
}

impl LocalNats {
    /// A server on the repository's `nats.conf`, authentication included.
    pub fn start() -> anyhow::Result<Self> {
        Self::launch(None)
    }

    /// A server on another configuration (listen address, port and store are
    /// still set here), for tests of other ways to authenticate.
    pub fn start_with_conf(conf: &str) -> anyhow::Result<Self> {
        Self::launch(Some(conf))
    }

    fn launch(custom: Option<&str>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("canopy-nats-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
        let mut auth = match custom {
            Some(_) => None,
            None => {
                let auth = NatsAuth::load_or_create(&dir.join("auth"))?;
                auth.write_server_files()?;
                Some(auth)
            }
        };
        let conf = dir.join("nats.conf");
        let free = || -> anyhow::Result<std::net::SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        // A port free when chosen may be taken by another process before the
        // server binds it (tests run side by side): the server then exits, and
        // it is started again on other ports.
        let mut last = None;
        for _ in 0..3 {
            let (text, mqtt, websocket) = match custom {
                Some(c) => (c.to_owned(), None, None),
                None => {
                    let (m, w) = (free()?, free()?);
                    (conf_with_listeners(m, w), Some(m), Some(w))
                }
            };
            std::fs::write(&conf, text)?;
            let port = free()?.port();
            let child = spawn(&dir, port)?;
            let scheme = if custom.is_some_and(|c| c.contains("tls {")) { "tls" } else { "nats" };
            let mut me = Self {
                child,
                url: format!("{scheme}://127.0.0.1:{port}"),
                port,
                mqtt,
                websocket,
                dir: dir.clone(),
                auth,
            };
            match me.wait_listening() {
                Ok(()) => return Ok(me),
                Err(e) => {
                    let _ = me.child.kill();
                    let _ = me.child.wait();
                    // Dropping `me` would remove the directory; the next try needs it.
                    auth = me.auth.take();
                    me.dir = PathBuf::new();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        wait_listening(&mut self.child, self.port)
    }

    /// Stops the server (SIGKILL: what a crash leaves) and starts it again on
    /// the same port, configuration and store, for tests of what survives.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.dir, self.port)?;
        self.wait_listening()
    }

    /// The node's credentials for this server.
    pub fn credentials(&self) -> Credentials {
        match &self.auth {
            Some(a) => Credentials::CredsFile(a.node_creds_path()),
            None => Credentials::None,
        }
    }

    /// A client in the nodes' account.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        connect_with(&self.url, &self.credentials(), &Tls::default()).await
    }

    /// The directory of its keys, when it runs the repository's `nats.conf`.
    pub fn auth_dir(&self) -> Option<PathBuf> {
        self.auth.as_ref().map(|_| self.dir.join("auth"))
    }

    /// The temporary directory that holds its configuration and store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Starts nats-server on the configuration and store in `dir`. Its log is
/// dropped, unless `CANOPY_TEST_NATS_LOG` names a directory: then it goes,
/// with debug lines, to `nats-{port}.log` there.
fn spawn(dir: &Path, port: u16) -> anyhow::Result<std::process::Child> {
    spawn_with(&dir.join("nats.conf"), &dir.join("store"), port, &[])
}

fn spawn_with(conf: &Path, store: &Path, port: u16, extra: &[String]) -> anyhow::Result<std::process::Child> {
    let mut cmd = std::process::Command::new("nats-server");
    cmd.arg("-c")
        .arg(conf)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(logs) = std::env::var_os("CANOPY_TEST_NATS_LOG") {
        cmd.arg("-D").arg("-l").arg(Path::new(&logs).join(format!("nats-{port}.log")));
    }
    cmd.spawn().map_err(|e| anyhow!("could not start nats-server ({e}); {INSTALL_HINT}"))
}

/// Waits until `child` listens on `port`, and checks that the server that
/// answers there is this child: when another process took the port first
/// (tests start servers side by side), the port answers but this child exits
/// at once, unable to bind it.
fn wait_listening(child: &mut std::process::Child, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start on port {port}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("nats-server exited ({status}) instead of listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    match child.try_wait() {
        Ok(Some(status)) => bail!("nats-server exited ({status}): port {port} belongs to another process"),
        _ => Ok(()),
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three (or `n`) throwaway nats-servers clustered by routes on 127.0.0.1,
/// each with its own store, MQTT and WebSocket listeners and server name,
/// sharing one set of keys (the repository's `nats.conf` and authorization).
/// `kill` and `start` stop (SIGKILL) and start one of them on the same ports
/// and store. Killed and removed on drop.
pub struct LocalCluster {
    servers: Vec<ClusterServer>,
    dir: PathBuf,
    pub auth: NatsAuth,
}

struct ClusterServer {
    child: Option<std::process::Child>,
    port: u16,
    conf: PathBuf,
    store: PathBuf,
    args: Vec<String>,
}

impl LocalCluster {
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("canopy-nats-cluster-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
        let auth = NatsAuth::load_or_create(&dir.join("auth"))?;
        auth.write_server_files()?;
        let free = || -> anyhow::Result<std::net::SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        let routes: Vec<u16> = (0..n).map(|_| free().map(|a| a.port())).collect::<anyhow::Result<_>>()?;
        let route_list = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let conf = dir.join(format!("nats-{i}.conf"));
            std::fs::write(&conf, conf_with_listeners(free()?, free()?))?;
            let args = vec![
                "-n".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "canopy-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                route_list.clone(),
            ];
            let store = dir.join(format!("store-{i}"));
            servers.push(ClusterServer { child: None, port: free()?.port(), conf, store, args });
        }
        let mut me = Self { servers, dir, auth };
        for i in 0..n {
            me.start_one(i)?;
        }
        Ok(me)
    }

    /// Starts server `i` again (after `kill`) on its ports and store.
    pub fn start_one(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.servers[i];
        let mut child = spawn_with(&s.conf, &s.store, s.port, &s.args)?;
        if let Err(e) = wait_listening(&mut child, s.port) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.context(format!("nats-server n{i}")));
        }
        s.child = Some(child);
        Ok(())
    }

    /// Kills server `i` (SIGKILL: what a crash leaves).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every server's URL, comma-separated, as `nats_url` takes them.
    pub fn url(&self) -> String {
        self.servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    }

    /// Server `i`'s URL alone.
    pub fn url_of(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::CredsFile(self.auth.node_creds_path())
    }

    pub fn auth_dir(&self) -> PathBuf {
        self.dir.join("auth")
    }

    /// A client in the nodes' account, on any of the servers.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        connect_with(&self.url(), &self.credentials(), &Tls::default()).await
    }

    /// Waits until JetStream answers with a meta leader (the cluster formed).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the NATS cluster did not elect a JetStream meta leader in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
