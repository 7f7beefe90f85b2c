//! Process plumbing shared by producer-api and indexer: the settings both take for
//! Kafka, the search engine and logging, the clients built from them, waiting for a
//! dependency with backoff, the Prometheus endpoint, and the shutdown signal.
//!
//! Every Kafka client gets its security (TLS, SASL) from [`KafkaArgs::client_config`]
//! and every engine client its credentials and CA from [`EngineArgs::client`];
//! contradictory or half-given security settings stop a service at start, and
//! passwords ([`Secret`]) never show in `--help`, logs or debug output.
//!
//! Nothing here knows about cities; that lives in `citypop-schemas`.

mod engine;
mod kafka;
mod logging;
mod metrics;
mod secret;
mod shutdown;
pub mod telemetry;
mod wait;

pub use engine::EngineArgs;
pub use kafka::{KafkaArgs, KafkaSecurity, SaslMechanism, SecurityProtocol};
pub use logging::{LogArgs, LogFormat};
pub use metrics::metrics_response;
pub use secret::Secret;
pub use shutdown::shutdown_signal;
pub use telemetry::{OtlpProtocol, Telemetry, TraceArgs};
pub use wait::wait_until_ready;
