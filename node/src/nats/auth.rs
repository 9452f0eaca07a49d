//! NATS is Canopy's trust boundary, so the nats-server Canopy manages (and the
//! one docker-compose runs) requires authentication. This module holds the keys
//! and writes the server's authorization in NATS operator mode: an operator key
//! signs three accounts, and account keys sign users, so a new credential never
//! needs the server to reload.
//!
//! - `CANOPY`: the nodes. The `EVENTS` stream, the KV buckets and `cmd.>` live
//!   here, and only node users connect to it.
//! - `READERS`: event-log readers. It holds `EVENTS`, a mirror of the nodes'
//!   log, and nothing else. A reader may create consumers on it and pull from
//!   them, optionally only for one tenant's subjects. Readers live in an account
//!   of their own because nats-server delivers a consumer's messages, and answers
//!   any API request, on whatever subject the requester names (a push consumer's
//!   deliver subject, a request's reply subject): in the nodes' account that
//!   would let a reader write the log's events into the KV buckets or `cmd.>`.
//!   In `READERS` there is nothing to hurt.
//! - `PUSH`: push clients (native NATS, WebSocket, MQTT). A client may only
//!   subscribe to `push.{its tenant}.>`; the nodes publish there and keep the
//!   bounded push history (stream `PUSH`). It has JetStream for the history
//!   and for the server's MQTT layer, and nothing of the nodes'.
//! - `AUTH`: the auth callout. A client that brings no user JWT (a user name
//!   and password, an MQTT CONNECT) is taken as the default sentinel, a bearer
//!   user of `AUTH` that may do nothing; the server then asks the callout
//!   service (a node, connected as `AUTH`'s one `auth_users` user) on
//!   `$SYS.REQ.USER.AUTH`, and the node answers with a user of `PUSH` or a
//!   refusal (`nats/callout.rs`).
//! - `SYS`: the server's system account.
//!
//! The keys are nkey seeds in files of their own (mode 0600) in one directory;
//! whoever holds them can mint credentials, so they are as secret as the master
//! key. JWTs are built here (header `ed25519-nkey`, signed with the `nkeys`
//! crate), since nats-server accepts no other algorithm and the crates that build
//! NATS JWTs cannot express accounts with JetStream, imports and exports.

use std::path::{Path, PathBuf};

use actors::domain::tenant::TenantId;
use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// The readers' copy of the log, in account `READERS`.
pub const READERS_STREAM: &str = "EVENTS";
/// Where the nodes' JetStream consumer API appears inside `READERS`, for the mirror.
const MIRROR_API: &str = "$JS.canopy.API";
/// The subjects the mirror's source consumer delivers on, exported to `READERS`.
const MIRROR_DELIVER: &str = "canopy.mirror";

/// The file the server configuration includes (see `nats.conf`).
pub const SERVER_CONF: &str = "auth.conf";
/// The node's own credentials, beside the server configuration.
pub const NODE_CREDS: &str = "canopy.creds";

/// The inbox prefix of a reader's credential: replies and deliveries for a
/// tenant's reader go to subjects no other tenant's reader may subscribe to.
pub fn reader_inbox_prefix(tenant: Option<&TenantId>) -> String {
    match tenant {
        Some(t) => format!("_INBOX_{}", t.as_str()),
        None => "_INBOX".to_owned(),
    }
}

/// A reader's credential and what its client must use with it.
#[derive(Debug, Clone)]
pub struct ReaderCredential {
    /// The `.creds` file.
    pub creds: String,
    /// The client's inbox prefix: the only subjects the reader may receive on.
    pub inbox_prefix: String,
    /// For a tenant's reader, the one consumer name it may use.
    pub consumer: Option<String>,
}

/// The operator's and accounts' keys, and the callout service's user key.
pub struct NatsAuth {
    dir: PathBuf,
    operator: KeyPair,
    system: KeyPair,
    canopy: KeyPair,
    readers: KeyPair,
    push: KeyPair,
    callout: KeyPair,
    callout_service: KeyPair,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Reads a seed file, or creates it with a fresh key of `kind`.
fn seed_file(dir: &Path, name: &str, fresh: fn() -> KeyPair, create: bool) -> anyhow::Result<KeyPair> {
    let path = dir.join(format!("{name}.nk"));
    if path.exists() {
        let seed = std::fs::read_to_string(&path).with_context(|| format!("while reading {}", path.display()))?;
        return KeyPair::from_seed(seed.trim())
            .map_err(|e| anyhow!("{} holds no valid nkey seed: {e}", path.display()));
    }
    if !create {
        anyhow::bail!(
            "{} does not exist: the NATS keys are created by `canopy serve` (managed nats-server) or `canopy nats init`",
            path.display()
        );
    }
    let kp = fresh();
    let seed = kp.seed().map_err(|e| anyhow!("encoding a new nkey seed: {e}"))?;
    crate::write_private(&path, &seed)?;
    Ok(kp)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A signed NATS JWT: `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims, and
/// the Ed25519 signature of the first two parts by `issuer`.
pub(super) fn encode(issuer: &KeyPair, mut claims: Value) -> anyhow::Result<String> {
    claims["iss"] = Value::String(issuer.public_key());
    claims["iat"] = Value::from(now());
    claims["jti"] = Value::String(uuid::Uuid::new_v4().simple().to_string().to_uppercase());
    let header = B64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = B64.encode(serde_json::to_vec(&claims)?);
    let signing_input = format!("{header}.{body}");
    let sig = issuer.sign(signing_input.as_bytes()).map_err(|e| anyhow!("signing a NATS JWT: {e}"))?;
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// The text of a `.creds` file, the form every NATS client and the `nats` CLI read.
fn creds(jwt: &str, user: &KeyPair) -> anyhow::Result<String> {
    let seed = user.seed().map_err(|e| anyhow!("encoding a user seed: {e}"))?;
    Ok(format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    ))
}

/// A user JWT for `user_key`, signed by `account`, with `permissions` (the
/// `pub`/`sub` lists and other user claims) and an optional expiry (Unix time).
pub(super) fn user_jwt(
    account: &KeyPair,
    user_key: &str,
    name: &str,
    permissions: Value,
    expires: Option<i64>,
) -> anyhow::Result<String> {
    let mut nats = json!({ "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1 });
    if let (Value::Object(n), Value::Object(p)) = (&mut nats, permissions) {
        n.extend(p);
    }
    let mut claims = json!({ "name": name, "sub": user_key, "nats": nats });
    if let Some(exp) = expires {
        claims["exp"] = Value::from(exp);
    }
    encode(account, claims)
}

/// Unlimited account limits, with JetStream on or off.
fn limits(jetstream: bool) -> Value {
    let storage = if jetstream { -1 } else { 0 };
    json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": storage, "disk_storage": storage,
        "streams": -1, "consumer": -1,
    })
}

impl NatsAuth {
    /// Reads the keys in `dir`, creating any that are missing (a first start).
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
        Self::read(dir, true)
    }

    /// Reads the keys in `dir`; they must exist.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::read(dir, false)
    }

    fn read(dir: &Path, create: bool) -> anyhow::Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            operator: seed_file(dir, "operator", KeyPair::new_operator, create)?,
            system: seed_file(dir, "system", KeyPair::new_account, create)?,
            canopy: seed_file(dir, "canopy", KeyPair::new_account, create)?,
            readers: seed_file(dir, "readers", KeyPair::new_account, create)?,
            push: seed_file(dir, "push", KeyPair::new_account, create)?,
            callout: seed_file(dir, "callout", KeyPair::new_account, create)?,
            callout_service: seed_file(dir, "callout-service", KeyPair::new_user, create)?,
        })
    }

    /// The nodes' account: its public key is also its name on the server and
    /// the name of its JetStream store directory.
    pub fn canopy_account(&self) -> String {
        self.canopy.public_key()
    }

    fn account_jwt(&self, account: &KeyPair, name: &str, nats: Value) -> anyhow::Result<String> {
        encode(&self.operator, json!({ "name": name, "sub": account.public_key(), "nats": nats }))
    }

    /// The server's authorization: the operator, the system account, and the
    /// three accounts preloaded into a memory resolver.
    pub fn server_config(&self) -> anyhow::Result<String> {
        let operator = encode(
            &self.operator,
            json!({
                "name": "canopy",
                "sub": self.operator.public_key(),
                "nats": { "type": "operator", "version": 2, "system_account": self.system.public_key() },
            }),
        )?;
        let system = self.account_jwt(
            &self.system,
            "SYS",
            json!({ "type": "account", "version": 2, "limits": limits(false),
                    "default_permissions": { "pub": {}, "sub": {} } }),
        )?;
        let canopy = self.account_jwt(
            &self.canopy,
            "CANOPY",
            json!({
                "type": "account", "version": 2, "limits": limits(true),
                "default_permissions": { "pub": {}, "sub": {} },
                // What the readers' mirror needs: creating its consumer on EVENTS,
                // the consumer's deliveries, and the flow-control replies.
                "exports": [
                    { "name": "mirror-consumers", "subject": "$JS.API.CONSUMER.>", "type": "service" },
                    { "name": "mirror-deliveries", "subject": format!("{MIRROR_DELIVER}.>"), "type": "stream" },
                    { "name": "mirror-flow-control", "subject": "$JS.FC.>", "type": "service" },
                ],
            }),
        )?;
        let canopy_pub = self.canopy.public_key();
        let readers = self.account_jwt(
            &self.readers,
            "READERS",
            json!({
                "type": "account", "version": 2, "limits": limits(true),
                // Readers get exactly what their user JWT allows; nothing by default.
                "default_permissions": { "pub": { "deny": [">"] }, "sub": { "deny": [">"] } },
                "imports": [
                    { "name": "mirror-consumers", "subject": "$JS.API.CONSUMER.>", "account": canopy_pub,
                      "local_subject": format!("{MIRROR_API}.CONSUMER.>"), "type": "service" },
                    { "name": "mirror-deliveries", "subject": format!("{MIRROR_DELIVER}.>"), "account": canopy_pub,
                      "type": "stream" },
                    { "name": "mirror-flow-control", "subject": "$JS.FC.>", "account": canopy_pub, "type": "service" },
                ],
            }),
        )?;
        let push = self.account_jwt(
            &self.push,
            "PUSH",
            json!({
                "type": "account", "version": 2, "limits": limits(true),
                // Clients get exactly what the callout's user JWT allows.
                "default_permissions": { "pub": { "deny": [">"] }, "sub": { "deny": [">"] } },
            }),
        )?;
        let callout = self.account_jwt(
            &self.callout,
            "AUTH",
            json!({
                "type": "account", "version": 2, "limits": limits(false),
                "default_permissions": { "pub": { "deny": [">"] }, "sub": { "deny": [">"] } },
                "authorization": {
                    "auth_users": [self.callout_service.public_key()],
                    "allowed_accounts": [self.push.public_key()],
                },
            }),
        )?;
        Ok(format!(
            "# Written by canopy from the keys beside this file; do not edit.\n\
             operator: {operator}\n\
             system_account: {sys}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {system}\n  {canopy_pub}: {canopy}\n  {rd}: {readers}\n  \
             {ps}: {push}\n  {au}: {callout}\n}}\n\
             # A client without a user JWT is this user of AUTH, which sends it to the callout.\n\
             default_sentinel: {sentinel}\n",
            sys = self.system.public_key(),
            rd = self.readers.public_key(),
            ps = self.push.public_key(),
            au = self.callout.public_key(),
            sentinel = self.sentinel()?,
        ))
    }

    fn user(&self, account: &KeyPair, name: &str, permissions: Value, expires: Option<i64>) -> anyhow::Result<String> {
        let user = KeyPair::new_user();
        creds(&user_jwt(account, &user.public_key(), name, permissions, expires)?, &user)
    }

    /// The default sentinel: a bearer user of `AUTH` that may do nothing. A
    /// client that presents no JWT of its own connects as it, and `AUTH`'s
    /// callout decides who it really is.
    fn sentinel(&self) -> anyhow::Result<String> {
        let nobody = KeyPair::new_user();
        let deny = json!({ "pub": { "deny": [">"] }, "sub": { "deny": [">"] }, "bearer_token": true });
        user_jwt(&self.callout, &nobody.public_key(), "sentinel", deny, None)
    }

    /// The callout service's credential: `AUTH`'s `auth_users` user, which the
    /// server lets in without asking the callout.
    pub fn callout_service_creds(&self) -> anyhow::Result<String> {
        // The server asks on `$SYS.REQ.USER.AUTH` and takes answers on `$SYS._INBOX.…`.
        let permissions = json!({ "pub": { "allow": ["$SYS._INBOX.>"] }, "sub": { "allow": ["$SYS.REQ.USER.AUTH"] } });
        let key = &self.callout_service;
        creds(&user_jwt(&self.callout, &key.public_key(), "canopy-callout", permissions, None)?, key)
    }

    /// A node's credential in `PUSH`: it publishes pushes and keeps their history.
    /// (Its own permissions: the account's default denies everything.)
    pub fn push_node_creds(&self) -> anyhow::Result<String> {
        let everything = json!({ "pub": { "allow": [">"] }, "sub": { "allow": [">"] } });
        self.user(&self.push, "canopy-node", everything, None)
    }

    /// The callout's signing keys: `AUTH` signs its answers, `PUSH` the users in them.
    pub fn callout_signers(&self) -> anyhow::Result<(KeyPair, KeyPair)> {
        let copy = |k: &KeyPair| {
            KeyPair::from_seed(&k.seed().map_err(|e| anyhow!("reading a NATS account key: {e}"))?)
                .map_err(|e| anyhow!("reading a NATS account key: {e}"))
        };
        Ok((copy(&self.callout)?, copy(&self.push)?))
    }

    /// A node's credential: everything in the nodes' account.
    pub fn node_creds(&self) -> anyhow::Result<String> {
        self.user(&self.canopy, "canopy-node", json!({}), None)
    }

    /// A reader's credential: consumers on the readers' `EVENTS`, pulls from
    /// them, deliveries to its own inbox prefix, and nothing else. A reader of
    /// the whole log may create any consumer. A tenant's reader gets one
    /// consumer name of its own, unguessable, and may create, read and pull
    /// only that consumer, filtered to `evt.{tenant}.>`: another tenant's
    /// reader cannot pull from it however its owner named things. `expires` is
    /// a Unix time.
    pub fn reader_creds(&self, tenant: Option<&TenantId>, expires: Option<i64>) -> anyhow::Result<ReaderCredential> {
        let s = READERS_STREAM;
        let inbox_prefix = reader_inbox_prefix(tenant);
        let (consumer, publish) = match tenant {
            Some(t) => {
                let c = format!("{}-{}", t.as_str(), &uuid::Uuid::new_v4().simple().to_string()[..20]);
                // The filter is part of the subject, and the server refuses a request
                // whose body names another filter than its subject.
                let publish = vec![
                    format!("$JS.API.CONSUMER.CREATE.{s}.{c}.evt.{}.>", t.as_str()),
                    format!("$JS.API.CONSUMER.INFO.{s}.{c}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{c}"),
                ];
                (Some(c), publish)
            }
            None => (
                None,
                vec![
                    format!("$JS.API.CONSUMER.CREATE.{s}"),
                    format!("$JS.API.CONSUMER.CREATE.{s}.>"),
                    format!("$JS.API.CONSUMER.INFO.{s}.*"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{s}.*"),
                ],
            ),
        };
        let mut allow = vec!["$JS.API.INFO".to_owned(), format!("$JS.API.STREAM.INFO.{s}")];
        allow.extend(publish);
        let name = match tenant {
            Some(t) => format!("reader-{}", t.as_str()),
            None => "reader".to_owned(),
        };
        let permissions = json!({ "pub": { "allow": allow }, "sub": { "allow": [format!("{inbox_prefix}.>")] } });
        let creds = self.user(&self.readers, &name, permissions, expires)?;
        Ok(ReaderCredential { creds, inbox_prefix, consumer })
    }

    /// A short-lived credential that may only create the readers' mirror.
    pub fn mirror_admin_creds(&self) -> anyhow::Result<String> {
        let s = READERS_STREAM;
        let permissions = json!({
            "pub": { "allow": ["$JS.API.INFO", format!("$JS.API.STREAM.INFO.{s}"), format!("$JS.API.STREAM.CREATE.{s}")] },
            "sub": { "allow": ["_INBOX.>"] },
        });
        self.user(&self.readers, "readers-admin", permissions, Some(now() + 120))
    }

    /// Writes the server's `auth.conf` and the node's `canopy.creds` into the
    /// key directory, replacing earlier versions.
    pub fn write_server_files(&self) -> anyhow::Result<()> {
        let conf = self.dir.join(SERVER_CONF);
        std::fs::write(&conf, self.server_config()?).with_context(|| format!("while writing {}", conf.display()))?;
        let node = self.dir.join(NODE_CREDS);
        let _ = std::fs::remove_file(&node);
        crate::write_private(&node, &self.node_creds()?)?;
        Ok(())
    }

    pub fn node_creds_path(&self) -> PathBuf {
        self.dir.join(NODE_CREDS)
    }

    /// Moves a JetStream store written before authentication (every stream in the
    /// global account `$G`) into the nodes' account, so an existing log stays
    /// visible. Only while the server is stopped; a store already moved is left alone.
    pub fn adopt_unauthenticated_store(&self, store_dir: &Path) -> anyhow::Result<()> {
        let js = store_dir.join("jetstream");
        let (old, new) = (js.join("$G"), js.join(self.canopy_account()));
        if old.is_dir() && !new.exists() {
            std::fs::rename(&old, &new)
                .with_context(|| format!("while moving {} to {}", old.display(), new.display()))?;
            tracing::info!(account = %self.canopy_account(), "moved the existing JetStream store into the nodes' NATS account");
        }
        Ok(())
    }
}

/// Creates the readers' `EVENTS` mirror if it does not exist yet, connecting to
/// `url` as the short-lived mirror administrator. The mirror follows the nodes'
/// log from its first event; it is made once, by the first reader credential.
pub async fn ensure_reader_mirror(url: &str, auth: &NatsAuth, tls: &super::Tls, replicas: usize) -> anyhow::Result<()> {
    use async_nats::jetstream::stream;
    let client = super::connect_with(url, &super::Credentials::Creds(auth.mirror_admin_creds()?), tls).await?;
    let js = async_nats::jetstream::new(client);
    if js.get_stream(READERS_STREAM).await.is_ok() {
        return Ok(());
    }
    js.create_stream(stream::Config {
        name: READERS_STREAM.to_owned(),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        mirror: Some(stream::Source {
            name: actors::store::event_store::STREAM.to_owned(),
            external: Some(stream::External {
                api_prefix: MIRROR_API.to_owned(),
                delivery_prefix: Some(MIRROR_DELIVER.to_owned()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .context("while creating the readers' mirror of the event log")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(jwt: &str) -> Value {
        let body = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&B64.decode(body).unwrap()).unwrap()
    }

    fn jwt_of(creds: &str) -> &str {
        creds.lines().nth(1).unwrap()
    }

    #[test]
    fn keys_are_created_once_and_read_back_the_same() {
        let dir = tempfile::TempDir::new().unwrap();
        let a = NatsAuth::load_or_create(dir.path()).unwrap();
        let b = NatsAuth::load(dir.path()).unwrap();
        assert_eq!(a.canopy_account(), b.canopy_account());
        assert!(NatsAuth::load(&dir.path().join("elsewhere")).is_err());
    }

    #[test]
    fn jwts_are_signed_by_their_issuer_with_the_nkey_algorithm() {
        let dir = tempfile::TempDir::new().unwrap();
        let auth = NatsAuth::load_or_create(dir.path()).unwrap();
        let creds = auth.node_creds().unwrap();
        let jwt = jwt_of(&creds);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let header: Value = serde_json::from_slice(&B64.decode(input.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "ed25519-nkey");
        assert_eq!(claims(jwt)["iss"], auth.canopy_account());
        auth.canopy.verify(input.as_bytes(), &B64.decode(sig).unwrap()).unwrap();
        assert!(creds.contains("-----BEGIN USER NKEY SEED-----\nSU"), "the creds file carries a user seed");
    }

    #[test]
    fn a_store_from_before_authentication_moves_into_the_nodes_account_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let auth = NatsAuth::load_or_create(&dir.path().join("auth")).unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("jetstream/$G/streams/EVENTS")).unwrap();
        auth.adopt_unauthenticated_store(&store).unwrap();
        let moved = store.join("jetstream").join(auth.canopy_account()).join("streams/EVENTS");
        assert!(moved.is_dir() && !store.join("jetstream/$G").exists());
        // A later `$G` (never written by Canopy again) does not replace the account's store.
        std::fs::create_dir_all(store.join("jetstream/$G/streams/OTHER")).unwrap();
        auth.adopt_unauthenticated_store(&store).unwrap();
        assert!(moved.is_dir() && store.join("jetstream/$G").exists());
    }

    #[test]
    fn a_tenant_reader_may_only_create_consumers_filtered_to_its_tenant() {
        let dir = tempfile::TempDir::new().unwrap();
        let auth = NatsAuth::load_or_create(dir.path()).unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let reader = auth.reader_creds(Some(&acme), None).unwrap();
        let consumer = reader.consumer.clone().unwrap();
        assert!(consumer.starts_with("acme-") && consumer.len() > 20, "{consumer}");
        let c = claims(jwt_of(&reader.creds));
        let publish: Vec<&str> =
            c["nats"]["pub"]["allow"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(
            publish.contains(&format!("$JS.API.CONSUMER.CREATE.EVENTS.{consumer}.evt.acme.>").as_str()),
            "{publish:?}"
        );
        assert!(publish.iter().all(|s| !s.contains("evt.>") && !s.starts_with("cmd") && !s.contains("KV")));
        assert!(
            publish.iter().all(|s| !s.ends_with(".*")),
            "a tenant's reader names only its own consumer: {publish:?}"
        );
        assert_eq!(c["nats"]["sub"]["allow"], json!(["_INBOX_acme.>"]));
        assert_ne!(
            auth.reader_creds(Some(&acme), None).unwrap().consumer,
            Some(consumer),
            "each credential has its own"
        );
        assert_eq!(claims(jwt_of(&auth.reader_creds(None, Some(42)).unwrap().creds))["exp"], 42);
    }
}
