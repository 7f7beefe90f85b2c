//! The `indexer` binary: parses the settings and runs the indexer or a command.

use citypop_indexer::Config;
use citypop_indexer::config::{Command, DlqCommand};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.log.init()?;
    match &config.command {
        None | Some(Command::Run) => {
            citypop_indexer::run(config.clone(), citypop_runtime::shutdown_signal()).await?;
            tracing::info!("indexer stopped");
        }
        Some(Command::Setup) => citypop_indexer::setup::run(&config).await?,
        Some(Command::Replay(args)) => citypop_indexer::cmd::replay::run(&config, args).await?,
        Some(Command::Status(args)) => citypop_indexer::status::print(&config, args).await?,
        Some(Command::Dlq(DlqCommand::List(args))) => {
            citypop_indexer::cmd::dlq::list(&config, args).await?
        }
        Some(Command::Dlq(DlqCommand::Redrive(args))) => {
            citypop_indexer::cmd::dlq::redrive(&config, args).await?
        }
    }
    Ok(())
}
