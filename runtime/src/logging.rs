use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::telemetry::{Telemetry, TraceArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, in `tracing` `EnvFilter` syntax (e.g. `info,citypop_indexer=debug`).
    #[arg(long, env = "CITYPOP_LOG", default_value = "info")]
    pub log: String,

    /// Log output format.
    #[arg(long, env = "CITYPOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber; logs go to stderr so stdout stays free for
    /// command output (the admin commands print there).
    pub fn init(&self) -> anyhow::Result<()> {
        self.init_with_traces(&TraceArgs::off(), "citypop")
            .map(|_| ())
    }

    /// Installs the global subscriber, exporting spans as `traces` says. Keep the
    /// returned [`Telemetry`] and call its `shutdown` before exiting.
    pub fn init_with_traces(
        &self,
        traces: &TraceArgs,
        default_service: &str,
    ) -> anyhow::Result<Telemetry> {
        let filter = EnvFilter::try_new(&self.log)?;
        let provider = traces.provider(default_service)?;
        // The OpenTelemetry layer sees every span the filter lets through; the filter is
        // global so spans it drops cost nothing in either layer.
        let otel = provider.as_ref().map(crate::telemetry::layer);
        let registry = tracing_subscriber::registry().with(filter).with(otel);
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => registry.with(fmt).try_init(),
            LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        }
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
        Ok(Telemetry::new(provider))
    }
}
