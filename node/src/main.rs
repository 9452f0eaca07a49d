//! The `canopy` command line: `serve` runs a node, `projections rebuild` rebuilds
//! the read models from the event log, `nats` manages NATS credentials, `mail`
//! lists and retries dead letters, `modules check` checks the module versions.

use std::path::PathBuf;

use anyhow::Context;
use canopy_node::config::{Config, Overrides};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "canopy", version, about = "A multi-tenant SaaS backend on a NATS event mesh")]
struct Cli {
    /// A TOML config file [default: ./canopy.toml if present].
    #[arg(long, global = true, env = "CANOPY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: GraphQL on --http, commands and events on NATS.
    Serve,
    /// Work on the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsCmd,
    },
    /// Token signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// NATS authentication: keys, the server's authorization, credentials.
    Nats {
        #[command(subcommand)]
        action: NatsCmd,
    },
    /// Mail the node gave up on (the node's NATS must be running).
    Mail {
        #[command(subcommand)]
        action: MailCmd,
    },
    /// The module versions tenants can subscribe to.
    Modules {
        #[command(subcommand)]
        action: ModulesCmd,
    },
}

#[derive(Subcommand)]
enum ModulesCmd {
    /// Load the module versions (from --dir, else the configured modules_dir,
    /// else the embedded ones), check them and their migrations on a throwaway
    /// SurrealDB, and list them; on a problem, print it and exit with 1.
    Check {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MailCmd {
    /// List dead letters: id, time, scope, kind, attempts, the masked
    /// recipient and the last error.
    Dead,
    /// Move dead letters back into the queue, to be tried again.
    Retry {
        /// The dead letter's id (from `canopy mail dead`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum NatsCmd {
    /// Create the NATS keys (kept if present) and write the server's `auth.conf`
    /// and the node's `canopy.creds` into DIR, for a nats-server that Canopy does
    /// not start itself (docker-compose). With --store, an existing JetStream
    /// store written before authentication is moved into the nodes' account.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Print a credential (a `.creds` file) for NATS clients.
    Credentials {
        /// A read-only credential for the event log: consumers on the readers'
        /// mirror `EVENTS`, nothing else. The node must be running (its NATS is
        /// asked to create the mirror on first use).
        #[arg(long, required = true)]
        read_events: bool,
        /// Only this tenant's events (`evt.{tenant}.>`).
        #[arg(long)]
        tenant: Option<String>,
        /// The credential stops working after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// The directory with the NATS keys [default: <data_dir>/nats/auth].
        #[arg(long)]
        auth_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Sign new access tokens with a new key. Tokens signed before stay valid
    /// (the old public key stays in the JWKS until the last of them expires),
    /// so nobody is signed out. The node must be running.
    Rotate,
}

#[derive(Subcommand)]
enum ProjectionsCmd {
    /// Drop every read model and rebuild it from the event log (stop the node first
    /// when it uses the embedded store).
    Rebuild,
    /// Print every read model as JSON, ordered, to compare two builds.
    Dump,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,surrealdb=warn,surrealkv=warn,async_nats=warn"));
    // Logs go to stderr, so that stdout carries only data (`projections dump`).
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

fn main() -> anyhow::Result<()> {
    canopy_node::quiet_library_backtraces();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(Cli::parse()))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref(), &cli.overrides)?;
    init_logging(&config.log_format);
    tracing::info!(config = %config.redacted(), "effective configuration");
    match cli.command {
        Cmd::Serve => {
            let listener = tokio::net::TcpListener::bind(config.http)
                .await
                .with_context(|| format!("while binding {}", config.http))?;
            canopy_node::run(config, listener, terminated()).await
        }
        Cmd::Projections { action: ProjectionsCmd::Rebuild } => {
            let last = canopy_node::rebuild_projections(&config).await?;
            tracing::info!(last_seq = last, "read models rebuilt from the log");
            Ok(())
        }
        Cmd::Nats { action: NatsCmd::Init { dir, store } } => {
            let auth = canopy_node::nats::auth::NatsAuth::load_or_create(&dir)?;
            auth.write_server_files()?;
            if let Some(store) = store {
                auth.adopt_unauthenticated_store(&store)?;
            }
            tracing::info!(dir = %dir.display(), "NATS keys, auth.conf and canopy.creds are ready");
            Ok(())
        }
        Cmd::Nats { action: NatsCmd::Credentials { read_events: _, tenant, expires_in_days, auth_dir } } => {
            let tenant = tenant
                .map(|t| actors::domain::tenant::TenantId::parse(&t).with_context(|| format!("--tenant {t:?}")))
                .transpose()?;
            let dir = auth_dir.unwrap_or_else(|| canopy_node::nats::auth_dir(&config.data_dir));
            let reader = canopy_node::reader_credentials(&config, &dir, tenant.as_ref(), expires_in_days).await?;
            print!("{}", reader.creds);
            let consumer = match (&tenant, &reader.consumer) {
                (Some(t), Some(c)) => format!("the consumer named {c}, filtered to evt.{t}.>"),
                _ => "an ordered consumer".to_owned(),
            };
            eprintln!(
                "Save it as a .creds file and read stream EVENTS with {consumer}, using inbox prefix {} (README, \"Following events\").",
                reader.inbox_prefix
            );
            Ok(())
        }
        Cmd::Keys { action: KeysCmd::Rotate } => {
            let kid = canopy_node::rotate_signing_key(&config).await?;
            println!("{kid}");
            eprintln!("New tokens are signed with key {kid}; tokens signed before stay valid until they expire.");
            Ok(())
        }
        Cmd::Mail { action: MailCmd::Dead } => {
            let letters = canopy_node::mail_dead_letters(&config).await?;
            print!("{}", canopy_node::outbound::mail::dead::table(&letters));
            Ok(())
        }
        Cmd::Mail { action: MailCmd::Retry { id, all: _ } } => {
            use canopy_node::outbound::mail::dead::Selection;
            let which = id.map_or(Selection::All, Selection::One);
            let moved = canopy_node::mail_retry(&config, which).await?;
            let ids: Vec<String> = moved.iter().map(u64::to_string).collect();
            println!("moved {} dead letter(s) back into MAIL: {}", moved.len(), ids.join(" "));
            Ok(())
        }
        Cmd::Modules { action: ModulesCmd::Check { dir } } => {
            match canopy_node::modules::check(dir.as_deref().or(config.modules_dir.as_deref())).await {
                Ok(report) => {
                    print!("{report}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1)
                }
            }
        }
        Cmd::Projections { action: ProjectionsCmd::Dump } => {
            let rm = canopy_node::read_model::ReadModel::connect(&config).await?;
            println!("{}", serde_json::to_string_pretty(&rm.dump().await?)?);
            Ok(())
        }
    }
}
