//! The `canopy` node: configuration, NATS bootstrap, the HTTP/GraphQL edge, the
//! command router, projections into SurrealDB, and the actor tree from `actors`.

// `Config::redacted` lists every option in one `serde_json::json!`, deeper than
// the default macro recursion limit allows.
#![recursion_limit = "256"]

#[cfg(feature = "bench")]
pub mod bench;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod graphql;
pub mod modules;
pub mod nats;
pub mod outbound;
pub mod projection;
pub mod read_model;
pub mod router;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actors::command::{AccountReply, AccountRequest, CommandEnvelope, CommandResult, Principal, command_subject};
use actors::domain::account::{Email, Password, PersonName};
use actors::domain::ids::CommandId;
use actors::domain::tenant::{Scope, TenantId, TenantStatus};
use actors::hasher::{Hasher, owasp_params};
use actors::store::event_store::EventStore;
use actors::store::seal::{KeyRing, MasterKey};
use actors::tree::deps::Deps;
use actors::tree::{NodeArgs, NodeMsg, NodeSupervisor};
use anyhow::Context;
use ractor::{Actor, ActorRef};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

pub use config::Config;

// jemalloc rather than glibc's allocator, for every binary built on this library
// (`canopy`, `canopy-bench` and the node's test binaries, so they run what ships):
// a node's many short-lived tasks allocate on one worker and free on another, and
// with glibc's per-thread arenas queries ran at half the rate and commands 15-25 %
// slower when the disk is not the limit (BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use crate::edge::auth::Tokens;
use crate::edge::feed::Feed;
use crate::graphql::CanopySchema;
use crate::nats::ManagedNats;
use crate::projection::{Progress, Projector};
use crate::read_model::ReadModel;
use crate::router::Router;

/// What request handlers share.
pub struct App {
    pub config: Config,
    pub nats: async_nats::Client,
    pub store: EventStore,
    pub read_model: ReadModel,
    pub tokens: Tokens,
    pub progress: Progress,
    /// Sessions revoked recently: their access tokens are refused.
    pub revocations: Arc<edge::sessions::Revocations>,
    pub limits: edge::limits::RateLimiter,
    /// When access tokens were last used.
    pub token_usage: edge::tokens::TokenUsage,
    pub schema: CanopySchema,
    pub documents: graphql::Documents,
    pub node: ActorRef<NodeMsg>,
    /// The mailer's counters, for `/metrics`.
    pub mail: Arc<outbound::mail::MailStats>,
    /// Each tenant's status, from the log.
    pub tenants: Arc<edge::tenants::TenantStatuses>,
    /// The module versions this node serves.
    pub modules: Arc<actors::domain::manifest::Registry>,
    /// Each module version's own GraphQL schema.
    pub module_schemas: Arc<graphql::module_schema::ModuleSchemas>,
    /// The push account's side (history, publishing); `None` without NATS keys.
    pub push: Option<outbound::push::PushOut>,
    /// Each tenant's events as this node projects them, for subscriptions.
    pub live: Arc<graphql::live::LiveEvents>,
    /// The webhook queue and delivery log.
    pub webhooks: outbound::webhook::WebhookOut,
    /// Which node runs which tenant: commands go to the tenant's owner.
    pub placement: cluster::placement::Placement,
    /// The router's counters, for `/metrics`.
    pub router: Arc<router::RouterStats>,
}

impl App {
    /// Where a tenant is in its life (`None`: no such tenant). The log's feed
    /// answers; a tenant it has not read of yet (created a moment ago on
    /// another node) is looked up in the directory read model.
    pub async fn tenant_status(&self, t: &TenantId) -> anyhow::Result<Option<TenantStatus>> {
        if let Some(status) = self.tenants.status(t) {
            return Ok(Some(status));
        }
        Ok(self.read_model.tenant(t).await?.map(|row| row.status()))
    }

    pub async fn readiness(&self) -> BTreeMap<&'static str, bool> {
        let nats = self.nats.connection_state() == async_nats::connection::State::Connected;
        let stream = nats && self.store.last_seq().await.is_ok();
        BTreeMap::from([
            ("nats", nats),
            ("stream", stream),
            ("surrealdb", self.read_model.health().await),
            ("projections", self.progress.caught_up()),
            ("revocations", self.revocations.marks().ready()),
            ("tenants", self.tenants.marks().ready()),
        ])
    }
}

/// The parts every entry point (serve, rebuild) needs.
pub struct Core {
    pub nats: async_nats::Client,
    /// Where and how `nats` connected, for components that want a connection of their own.
    pub nats_url: String,
    pub nats_credentials: nats::credentials::Credentials,
    pub nats_tls: nats::credentials::Tls,
    pub managed: Option<ManagedNats>,
    /// Canopy's NATS keys for an external server that runs Canopy's
    /// authorization (`nats_auth_dir`); a managed server holds its own.
    external_keys: Option<nats::auth::NatsAuth>,
    pub store: EventStore,
    pub keys: KeyRing,
    pub read_model: ReadModel,
}

fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    if let Some(k) = config.master_key_secret() {
        return MasterKey::from_base64(k).context("while reading CANOPY_MASTER_KEY");
    }
    let path = config.data_dir.join("master.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("while reading {}", path.display()))?;
        return MasterKey::from_base64(&text).with_context(|| format!("while reading {}", path.display()));
    }
    let key = MasterKey::generate();
    write_private(&path, &key.to_base64())?;
    tracing::info!(path = %path.display(), "created a master key; keep it safe, it unlocks every secret in the log");
    Ok(key)
}

/// Writes a new file that only its owner may read.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("while creating {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("while writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

impl Core {
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        edge::auth::install_crypto();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("while creating the data dir {}", config.data_dir.display()))?;
        let master = master_key(config)?;
        let (url, creds, tls, managed) = match config.external_nats()? {
            Some((url, creds, tls)) => (url, creds, tls, None),
            None => {
                let m = ManagedNats::start(config).await.context("while starting the managed nats-server")?;
                (
                    m.url.clone(),
                    nats::credentials::Credentials::CredsFile(m.creds.clone()),
                    nats::credentials::Tls::default(),
                    Some(m),
                )
            }
        };
        let external_keys = match (&managed, &config.nats_auth_dir) {
            (None, Some(dir)) => Some(
                nats::auth::NatsAuth::load(dir)
                    .with_context(|| format!("while reading the NATS keys in {}", dir.display()))?,
            ),
            _ => None,
        };
        let nats = nats::connect(&url, &creds, &tls, Duration::from_secs(15)).await?;
        nats::wait_for_jetstream(&nats, Duration::from_secs(60)).await?;
        // Nodes starting together on a new NATS cluster all create the R3
        // streams while its servers still place them: a request may go
        // unanswered, and the next one succeeds.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (store, keys_kv) = loop {
            match EventStore::open(nats.clone(), config.replicas).await {
                Ok(opened) => break opened,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "creating the EVENTS stream and buckets; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(anyhow::Error::from(e).context("while creating the EVENTS stream and buckets")),
            }
        };
        let keys = KeyRing::new(keys_kv, master);
        let read_model = ReadModel::connect(config).await?;
        Ok(Self {
            nats,
            nats_url: url,
            nats_credentials: creds,
            nats_tls: tls,
            managed,
            external_keys,
            store,
            keys,
            read_model,
        })
    }

    /// Canopy's NATS keys, when the server runs Canopy's authorization (a
    /// managed server, or `nats_auth_dir`): push needs them.
    pub fn nats_keys(&self) -> Option<&nats::auth::NatsAuth> {
        self.managed.as_ref().map(|m| &m.auth).or(self.external_keys.as_ref())
    }

    pub async fn close(self) {
        self.store.close().await;
        let _ = self.nats.flush().await;
        drop(self.nats);
        if let Some(m) = self.managed {
            m.stop().await;
        }
    }
}

async fn own_store(
    url: &str,
    creds: &nats::credentials::Credentials,
    tls: &nats::credentials::Tls,
    replicas: usize,
) -> anyhow::Result<EventStore> {
    let client = nats::connect(url, creds, tls, Duration::from_secs(15)).await?;
    Ok(EventStore::open(client, replicas).await?.0)
}

/// Turns off backtrace capture in library errors unless `RUST_LIB_BACKTRACE` asks
/// for it. SurrealDB builds `anyhow` errors on paths it takes for every upsert,
/// and with `RUST_BACKTRACE=1` in the environment each one walked the stack: up
/// to a third of the projector's cost per event (BENCHMARKS.md). Panics keep
/// their backtraces, which `RUST_BACKTRACE` alone governs.
///
/// Call it first thing in `main`, before any thread starts: it sets a variable of
/// this process's environment. `unsafe` because the standard library offers no
/// other way to set a variable the dependencies will read.
#[allow(unsafe_code)]
pub fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called at the start of `main`, while the process has one thread,
        // so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Loads the module registry (the configured directory, else the modules built
/// into the binary) and adds the modules' permissions to the catalog.
async fn load_modules(config: &Config) -> anyhow::Result<Arc<actors::domain::manifest::Registry>> {
    let registry = modules::load(config.modules_dir.as_deref()).await.context("while loading the modules")?;
    actors::domain::access::register_module_permissions(
        registry.permissions().iter().map(|p| (p.name.as_str(), p.description.as_str(), p.member)),
    );
    Ok(registry)
}

/// Runs the pending migrations of every tenant holding a module, once the
/// projector has caught up with the log.
async fn migrate_at_start(app: &App) {
    while !app.progress.caught_up() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match edge::records::migrate_every_tenant(app, None).await {
        Ok(report) if !report.is_empty() => tracing::info!(tenants = report.len(), "ran pending module migrations"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e.message, "running pending module migrations at start"),
    }
}

/// Runs a node until `shutdown` resolves: serves HTTP on `listener`, routes
/// commands, projects events. Tests call it with a port-0 listener.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let core = Core::open(&config).await?;
    let result = serve(&config, &core, listener, shutdown).await;
    core.close().await;
    result
}

async fn serve(
    config: &Config,
    core: &Core,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The mail queue exists before anything can fill it; the mailer is built
    // (its relay and sender checked) before any actor starts.
    outbound::mail::ensure_streams(core.store.jetstream(), config.replicas).await?;
    let mail = Arc::new(outbound::mail::MailStats::default());
    let mailer = outbound::mail::mailer::Mailer::new(config, core.store.jetstream().clone(), mail.clone())?;

    let registry = load_modules(config).await?;
    actors::store::backup::ensure_bucket(core.store.jetstream(), config.replicas)
        .await
        .context("while opening the backups object store")?;
    let hasher = Hasher::new(config.hash_concurrency(), owasp_params());
    let deps = Deps {
        store: core.store.clone(),
        keys: core.keys.clone(),
        hasher,
        snapshot_every: config.snapshot_every,
        cache_per_tenant: config.accounts_cached_per_tenant.max(1),
        accounts: actors::tree::deps::AccountPolicy {
            verification_ttl_secs: config.verification_ttl_secs as i64,
            resend_interval_secs: config.verification_resend_secs as i64,
            refresh_ttl_secs: config.refresh_ttl_secs as i64,
            max_sessions: config.max_sessions_per_account.max(1),
            reset_ttl_secs: config.password_reset_ttl_secs as i64,
            invitation_ttl_secs: config.invitation_ttl_secs as i64,
        },
        modules: registry.clone(),
    };
    let (node, node_handle) = Actor::spawn(
        None,
        NodeSupervisor,
        NodeArgs {
            deps,
            idle_timeout: Duration::from_secs(config.idle_timeout_secs.max(1)),
            children: actors::tree::CHILDREN,
        },
    )
    .await
    .context("while starting the node supervisor")?;

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Membership and placement: the node joins before it takes any command.
    let addr = listener.local_addr()?;
    let member = cluster::Node::join(
        &core.nats,
        core.store.jetstream(),
        cluster::JoinArgs {
            http: addr,
            dead_after: Duration::from_secs(config.node_dead_after_secs),
            lease: Duration::from_secs(config.lease_secs),
            replicas: config.replicas,
        },
    )
    .await
    .context("while joining the cluster")?;
    let placement = member.placement.clone();
    tracing::info!(node = member.id(), "joined the cluster");
    let router = Router::new(router::RouterArgs {
        nats: core.nats.clone(),
        node: node.clone(),
        timeout: Duration::from_millis(config.command_timeout_ms),
        children: actors::tree::CHILDREN,
        placement: placement.clone(),
        max_live_trees: config.max_live_trees,
        idle: Duration::from_secs(config.idle_timeout_secs.max(1)),
    });
    let router_stats = router.stats();
    let leaving = router.clone();
    tasks.spawn(router.run(cancel.clone()));
    tasks.spawn(member.serve(node.clone(), cancel.clone()));
    tasks.spawn(mailer.run(cancel.clone()));
    // Mails come from events only: the reactor follows the log durably.
    let reactor = outbound::reactor::MailReactor {
        store: core.store.clone(),
        keys: core.keys.clone(),
        app_url: config.app_url(),
    };
    tasks.spawn(reactor.run(cancel.clone()));
    // Keys destroyed anywhere leave this node's key ring, and their persons'
    // personal data leaves its read models (the projector blanks them).
    let (destroyed_tx, destroyed_rx) = tokio::sync::mpsc::unbounded_channel();
    let (keys, keys_cancel) = (core.keys.clone(), cancel.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = keys.forget_destroyed(destroyed_tx) => {}
            () = keys_cancel.cancelled() => {}
        }
        Ok(())
    });
    let (projector, progress) = Projector::new(core.read_model.clone(), core.store.clone(), core.keys.clone());
    let live = Arc::new(graphql::live::LiveEvents::default());
    let projector = projector.with_destroyed_keys(destroyed_rx).with_modules(registry.clone()).with_live(live.clone());
    let projector_cancel = cancel.clone();
    // The projector gets a thread and a runtime of its own: embedded SurrealDB runs
    // a query's whole plan inside the caller's poll, and a batch's transaction held
    // a shared worker for milliseconds, stalling the NATS connection and the
    // commands queued behind it. The OS now shares the cores between them instead.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (url, replicas) = (core.nats_url.clone(), config.replicas);
    let (creds, tls) = (core.nats_credentials.clone(), core.nats_tls.clone());
    std::thread::Builder::new().name("canopy-projector".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => {
                rt.block_on(async move {
                    // A connection of its own, driven by this thread: the stream's
                    // deliveries no longer queue in the connection task that carries
                    // commands, appends and their acks.
                    match own_store(&url, &creds, &tls, replicas).await {
                        Ok(store) => projector.with_store(store).run(projector_cancel).await,
                        Err(e) => tracing::error!(error = %e, "the projector could not connect to NATS"),
                    }
                });
                drop(rt);
            }
            Err(e) => tracing::error!(error = %e, "could not start the projector's runtime"),
        }
        let _ = done_tx.send(());
    })?;
    // `run` waits for the projector like for its other tasks (a panic drops the sender).
    tasks.spawn(async move {
        let _ = done_rx.await;
        Ok(())
    });
    // Make sure the router's subscription is registered before anyone sends to it.
    core.nats.flush().await.context("while subscribing to commands")?;

    // The edge refuses tokens of revoked sessions; it learns them from the log.
    let revocations = Arc::new(edge::sessions::Revocations::new(config.token_ttl_secs));
    let (feed, store, feed_cancel) = (revocations.clone(), core.store.clone(), cancel.clone());
    tasks.spawn(async move { edge::feed::run(feed.as_ref(), store, feed_cancel).await });
    // And each tenant's status; a deleted tenant's keys are shredded on sight.
    let (tenants, deleted) = edge::tenants::TenantStatuses::new();
    let tenants = Arc::new(tenants);
    let (feed, store, feed_cancel) = (tenants.clone(), core.store.clone(), cancel.clone());
    tasks.spawn(async move { edge::feed::run(feed.as_ref(), store, feed_cancel).await });
    let (keys, store, shred_cancel) = (core.keys.clone(), core.store.clone(), cancel.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = edge::tenants::shred_deleted(keys, store, deleted) => {}
            () = shred_cancel.cancelled() => {}
        }
        Ok(())
    });

    let limit_key = core
        .keys
        .secret_or_create("ratelimit.hash", || actors::store::seal::DataKey::generate().as_bytes().to_vec())
        .await
        .context("while reading the rate limits' hash key")?;
    let limits = edge::limits::RateLimiter::open(
        core.store.jetstream(),
        &config.rate_limits,
        config.replicas,
        limit_key.as_slice().try_into().context("the rate limits' hash key has the wrong length")?,
    )
    .await
    .context("while opening the rate-limit stream")?;
    let token_usage = edge::tokens::TokenUsage::open(core.store.jetstream(), config.replicas)
        .await
        .context("while opening the token usage bucket")?;

    let tokens = Tokens::load(&core.keys, config.issuer.clone(), config.token_ttl_secs)
        .await
        .context("while loading the signing keys")?;
    let push = match core.nats_keys() {
        Some(keys) => {
            let creds = nats::credentials::Credentials::Creds(keys.push_node_creds()?);
            let client = nats::connect(&core.nats_url, &creds, &core.nats_tls, Duration::from_secs(15))
                .await
                .context("while connecting to the push account")?;
            let out =
                outbound::push::PushOut::open(client, Duration::from_secs(config.push_history_secs), config.replicas)
                    .await?;
            let reactor = outbound::push::PushReactor::new(core.store.clone(), core.keys.clone(), out.clone());
            tasks.spawn(reactor.run(cancel.clone()));
            Some(out)
        }
        None => {
            tracing::info!("push is off: the NATS server is not run with Canopy's keys (set nats_auth_dir)");
            None
        }
    };
    // Webhooks: the reactor queues deliveries from the log, the deliverer makes them.
    let webhook_settings = outbound::webhook::Settings::of(config);
    let webhooks =
        outbound::webhook::WebhookOut::open(core.store.jetstream().clone(), &webhook_settings, config.replicas).await?;
    outbound::webhook::start(
        &mut tasks,
        core.store.clone(),
        core.keys.clone(),
        core.nats.clone(),
        webhooks.clone(),
        webhook_settings,
        cancel.clone(),
    )?;
    let app = Arc::new(App {
        config: config.clone(),
        nats: core.nats.clone(),
        store: core.store.clone(),
        read_model: core.read_model.clone(),
        tokens,
        progress,
        revocations,
        limits,
        token_usage,
        schema: graphql::schema_with(config.introspection),
        documents: graphql::Documents::default(),
        node: node.clone(),
        mail,
        tenants,
        module_schemas: Arc::new(
            graphql::module_schema::build_all(&registry).context("while building the modules' GraphQL schemas")?,
        ),
        modules: registry,
        push,
        webhooks,
        live,
        placement: placement.clone(),
        router: router_stats,
    });
    if let Some(keys) = core.nats_keys() {
        // Push clients authenticate through this node (one node of the cluster
        // answers each connection).
        let creds = nats::credentials::Credentials::Creds(keys.callout_service_creds()?);
        let client = nats::connect(&core.nats_url, &creds, &core.nats_tls, Duration::from_secs(15))
            .await
            .context("while connecting as the auth callout service")?;
        let service =
            nats::callout::Service::subscribe(client).await.context("while subscribing to the auth callout")?;
        let (callout, push) = keys.callout_signers()?;
        let gate = Arc::new(edge::push::PushGate { app: app.clone() });
        tasks.spawn(service.serve(nats::callout::Signers { callout, push }, gate, cancel.clone()));
    }

    // Signing keys rotate anywhere (`canopy keys rotate`, or any node's rotation
    // period): every node follows, and signs with the newest key.
    let (follower, keys, follow_cancel) = (app.clone(), core.keys.clone(), cancel.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = follower.tokens.follow_rotations(&keys) => {}
            () = follow_cancel.cancelled() => {}
        }
        Ok(())
    });
    if let Some(days) = config.signing_key_rotation_days {
        let (keys, ttl, rotate_cancel) = (core.keys.clone(), config.token_ttl_secs, cancel.clone());
        tasks.spawn(async move {
            let period = days.max(1) * 86_400;
            loop {
                if let Err(e) = edge::auth::rotate_if_due(&keys, ttl, period).await {
                    tracing::warn!(error = %e, "rotating the signing key");
                }
                tokio::select! {
                    () = rotate_cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        });
    }

    bootstrap_admin(&app).await?;
    if config.auto_migrate {
        // Migrations a new release of a module brings run once the read
        // models have caught up (each tenant's modules are read from them).
        let (app, migrate_cancel) = (app.clone(), cancel.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = migrate_at_start(&app) => {}
                () = migrate_cancel.cancelled() => {}
            }
            Ok(())
        });
    }

    tracing::info!(%addr, "canopy is listening: GraphiQL at http://{addr}/graphql");
    // Leaving: the node leaves the membership, so no tenant is sent to it,
    // and hands its tenants over while it still serves HTTP (commands for
    // them are forwarded to their next owner); then HTTP stops.
    let shutdown = async move {
        shutdown.await;
        placement.membership().leave().await;
        leaving.hand_over_all().await;
    };
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    let served = poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(edge::routes(app.clone()), shutdown, Some(Duration::from_secs(20)))
        .await;

    // Stop taking commands, let the ones in flight finish, then stop the actors.
    cancel.cancel();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "a background task ended with an error");
        }
    }
    node.stop(Some("shutdown".into()));
    let _ = node_handle.await;
    served.context("while serving HTTP")?;
    Ok(())
}

/// Creates the platform administrator from the configuration, once. The command id
/// is derived from the email, so a restart (or a second node) is a no-op retry.
async fn bootstrap_admin(app: &App) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&app.config.bootstrap_admin_email, &app.config.bootstrap_admin_password)
    else {
        return Ok(());
    };
    let email = Email::parse(email).context("CANOPY_BOOTSTRAP_ADMIN_EMAIL is not a valid email")?;
    let password = Password::parse(password.expose_secret())
        .context("CANOPY_BOOTSTRAP_ADMIN_PASSWORD must have 8 to 128 characters")?;
    let command_id = CommandId::parse(&format!(
        "bootstrap-admin-{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, email.normalized().as_bytes()).simple()
    ))
    .expect("a prefix and 32 hex characters are a command id");
    let request = AccountRequest::Register {
        email,
        password,
        firstname: PersonName::parse("Platform").expect("constant"),
        lastname: PersonName::parse("Administrator").expect("constant"),
        locale: Default::default(),
        session: None,
    };
    let body =
        serde_json::to_vec(&CommandEnvelope { command_id, principal: Principal::Anonymous, request, client: None })?;
    let reply = app
        .nats
        .request(command_subject(&Scope::Platform, "account"), body.into())
        .await
        .context("while creating the bootstrap administrator")?;
    match serde_json::from_slice::<CommandResult<AccountReply>>(&reply.payload)? {
        Ok(AccountReply::Registered { seq, .. }) => {
            app.progress.wait_for(seq, Duration::from_secs(10)).await;
            tracing::info!("platform administrator ready");
        }
        Ok(other) => anyhow::bail!("unexpected reply creating the administrator: {other:?}"),
        // The email already belongs to an administrator created earlier (or with
        // another password since): keep that account, never overwrite it from the
        // environment.
        Err(f) if f.code == "BAD_USER_INPUT" || f.code == "CONFLICT" => {
            tracing::info!("platform administrator already exists")
        }
        Err(f) => anyhow::bail!("creating the bootstrap administrator failed: {f}"),
    }
    Ok(())
}

/// `canopy nats credentials --read-events`: a read-only credential for the event
/// log, all of it or one tenant's. The first one asks NATS to create the
/// readers' mirror, so the node's nats-server must be running.
pub async fn reader_credentials(
    config: &Config,
    auth_dir: &Path,
    tenant: Option<&TenantId>,
    expires_in_days: Option<u32>,
) -> anyhow::Result<nats::auth::ReaderCredential> {
    let auth = nats::auth::NatsAuth::load(auth_dir)?;
    let (url, tls) = match config.external_nats()? {
        Some((url, _, tls)) => (url, tls),
        None => (format!("nats://127.0.0.1:{}", config.nats_port), nats::credentials::Tls::default()),
    };
    nats::auth::ensure_reader_mirror(&url, &auth, &tls, config.replicas)
        .await
        .context("while preparing the readers' copy of the log (is the node running?)")?;
    let expires = expires_in_days.map(|d| time::OffsetDateTime::now_utc().unix_timestamp() + i64::from(d) * 86_400);
    auth.reader_creds(tenant, expires)
}

/// A connection to the node's NATS as a node, for the command line: the
/// configured external server with its credentials, or the managed server on
/// `127.0.0.1:{nats_port}` with the credential `canopy serve` wrote
/// (`<data_dir>/nats/auth/canopy.creds`).
pub async fn node_nats(config: &Config) -> anyhow::Result<async_nats::Client> {
    let (url, creds, tls) = match config.external_nats()? {
        Some(external) => external,
        None => {
            let creds = nats::auth_dir(&config.data_dir).join(nats::auth::NODE_CREDS);
            if !creds.exists() {
                anyhow::bail!("{} does not exist: start the node (`canopy serve`) first", creds.display());
            }
            (
                format!("nats://127.0.0.1:{}", config.nats_port),
                nats::credentials::Credentials::CredsFile(creds),
                nats::credentials::Tls::default(),
            )
        }
    };
    nats::connect_with(&url, &creds, &tls).await.context("while connecting to the node's NATS (is the node running?)")
}

/// `canopy keys rotate`: sign new tokens with a new key; the old one verifies
/// until its last token has expired. Every running node follows at once.
pub async fn rotate_signing_key(config: &Config) -> anyhow::Result<String> {
    let client = node_nats(config).await?;
    let (_, keys_kv) = EventStore::open(client.clone(), config.replicas).await?;
    let keys = KeyRing::new(keys_kv, master_key(config)?);
    let kid = edge::auth::rotate_signing_key(&keys, config.token_ttl_secs).await?;
    client.flush().await?;
    Ok(kid)
}

/// `canopy mail dead`: the dead letters, oldest first.
pub async fn mail_dead_letters(config: &Config) -> anyhow::Result<Vec<outbound::mail::dead::DeadLetter>> {
    let js = async_nats::jetstream::new(node_nats(config).await?);
    outbound::mail::dead::list(&js).await
}

/// `canopy mail retry <ID> | --all`: moves dead letters back into the queue;
/// returns their ids.
pub async fn mail_retry(config: &Config, which: outbound::mail::dead::Selection) -> anyhow::Result<Vec<u64>> {
    let client = node_nats(config).await?;
    let js = async_nats::jetstream::new(client.clone());
    let moved = outbound::mail::dead::retry(&js, which).await;
    let _ = client.flush().await;
    moved
}

/// `canopy projections rebuild`: drop every read model and replay the log.
pub async fn rebuild_projections(config: &Config) -> anyhow::Result<u64> {
    let registry = load_modules(config).await?;
    let core = Core::open(config).await?;
    let result = projection::rebuild(&core.read_model, &core.store, &core.keys, registry).await;
    core.close().await;
    result
}
