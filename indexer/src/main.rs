use citypop_indexer::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.log.init()?;
    citypop_indexer::run(config, citypop_runtime::shutdown_signal()).await?;
    tracing::info!("indexer stopped");
    Ok(())
}
