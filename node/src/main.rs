//! The `canopy` command line: `serve` runs a node, `projections rebuild` rebuilds
//! the read models from the event log.

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
        Cmd::Projections { action: ProjectionsCmd::Dump } => {
            let rm = canopy_node::read_model::ReadModel::connect(&config).await?;
            println!("{}", serde_json::to_string_pretty(&rm.dump().await?)?);
            Ok(())
        }
    }
}
