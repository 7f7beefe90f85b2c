//! The `indexer` binary: parses the settings and runs the indexer or a command.

use citypop_indexer::Config;
use citypop_indexer::config::{Command, DlqCommand};
use clap::Parser;
use tracing::Instrument as _;

/// Every event's message and decoded write are allocated on the fetching thread and
/// freed, a batch at a time, on the writing one. With glibc's allocator freeing a
/// written batch was a quarter of the indexer's CPU in a live profile
/// (`malloc_consolidate` walking its bins); mimalloc cut the instructions but
/// handed each batch fresh pages for the kernel to zero (11% of a live profile).
/// jemalloc does neither: 4.6-4.7 -> 3.5-3.6 µs of indexer CPU per event in P1.
/// librdkafka (statically linked) allocates each fetched message and header with
/// the C allocator, so jemalloc is built unprefixed (see Cargo.toml) and serves
/// its `malloc` and `free` too: glibc's free and consolidation were 16% of a live
/// profile after the change above; 3.10 -> 2.73 µs per event (median of 5
/// interleaved P1 round-robin pairs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
