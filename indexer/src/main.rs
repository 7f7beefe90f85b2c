//! The `indexer` binary: parses the settings and runs the indexer or a command.

use citypop_indexer::Config;
use citypop_indexer::config::{Command, DlqCommand};
use clap::Parser;
use tracing::Instrument as _;

/// Every event's message, decoded write and bulk lines are allocated and freed one
/// by one; with glibc's allocator freeing a written batch alone was a quarter of the
/// indexer's CPU in a live profile (`malloc_consolidate` walking its bins).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config
        .log
        .init_with_traces(&config.traces, "citypop-indexer")?;
    let result = run(&config).await;
    // Spans still queued are exported before the process exits.
    telemetry.shutdown();
    result
}

async fn run(config: &Config) -> anyhow::Result<()> {
    // The admin commands that write are their own root traces.
    let root = |name: &'static str| tracing::info_span!(parent: None, "command", otel.name = name);
    match &config.command {
        None | Some(Command::Run) => {
            citypop_indexer::run(config.clone(), citypop_runtime::shutdown_signal()).await?;
            tracing::info!("indexer stopped");
        }
        Some(Command::Setup) => citypop_indexer::setup::run(config).await?,
        Some(Command::Replay(args)) => {
            citypop_indexer::cmd::replay::run(config, args)
                .instrument(root("indexer replay"))
                .await?
        }
        Some(Command::Status(args)) => citypop_indexer::status::print(config, args).await?,
        Some(Command::Dlq(DlqCommand::List(args))) => {
            citypop_indexer::cmd::dlq::list(config, args).await?
        }
        Some(Command::Dlq(DlqCommand::Redrive(args))) => {
            citypop_indexer::cmd::dlq::redrive(config, args)
                .instrument(root("indexer dlq redrive"))
                .await?
        }
    }
    Ok(())
}
