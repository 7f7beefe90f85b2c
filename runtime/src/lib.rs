//! Process plumbing shared by producer-api and indexer: the settings both take for
//! Kafka, the search engine and logging, the clients built from them, waiting for a
//! dependency with backoff, the Prometheus endpoint, and the shutdown signal.
//!
//! Nothing here knows about cities; that lives in `citypop-schemas`.

mod engine;
mod kafka;
mod logging;
mod metrics;
mod shutdown;
mod wait;

pub use engine::EngineArgs;
pub use kafka::KafkaArgs;
pub use logging::{LogArgs, LogFormat};
pub use metrics::metrics_response;
pub use shutdown::shutdown_signal;
pub use wait::wait_until_ready;
