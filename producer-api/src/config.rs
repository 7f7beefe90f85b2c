use std::net::SocketAddr;
use std::time::Duration;

use citypop_runtime::{EngineArgs, KafkaArgs, LogArgs};

/// citypop producer-api: validates city population updates, publishes them to
/// Kafka, and serves reads straight from the search index.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "producer-api", version)]
pub struct Config {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "CITYPOP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Longest wait for Kafka to acknowledge a write before answering 503.
    #[arg(long, env = "CITYPOP_PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
