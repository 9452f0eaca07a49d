//! `canopy-bench`: Canopy side by side with raw JetStream. Build it with
//! `--release`; `--quick` runs every scenario briefly.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "canopy-bench", about = "Benchmark Canopy against raw JetStream on this machine")]
struct Cli {
    /// Run every scenario briefly (a smoke test, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Write the JSON report here.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Run only these scenarios, by letter (for example `AC` while profiling C).
    #[arg(long)]
    only: Option<String>,
}

fn main() -> anyhow::Result<()> {
    canopy_node::quiet_library_backtraces();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(Cli::parse()))
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let report = canopy_node::bench::run(canopy_node::bench::Options {
        quick: cli.quick,
        out: Some(cli.out.clone()),
        only: cli.only,
    })
    .await?;
    print!("{}", canopy_node::bench::table(&report));
    eprintln!("report written to {}", cli.out.display());
    Ok(())
}
