use citypop_producer_api::{Application, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config
        .log
        .init_with_traces(&config.traces, "citypop-producer-api")?;
    let app = Application::build(&config).await?;
    tracing::info!(
        listen = %app.local_addr()?,
        topic = %config.kafka.topic,
        alias = %config.engine.index_alias,
        "producer-api listening"
    );
    app.run_until(citypop_runtime::shutdown_signal()).await?;
    tracing::info!("producer-api stopped");
    // Spans still queued are exported before the process exits.
    telemetry.shutdown();
    Ok(())
}
