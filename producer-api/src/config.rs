use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;
use citypop_runtime::{EngineArgs, KafkaArgs, LogArgs, TraceArgs};

use crate::api_keys::ApiKeyList;

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

    /// Writes the producer may hold while Kafka has not acknowledged them; past it,
    /// writes get 503 at once instead of waiting.
    #[arg(
        long,
        env = "CITYPOP_PRODUCER_QUEUE_MESSAGES",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub producer_queue_messages: u32,

    /// How long the producer waits to fill a batch before sending it (librdkafka's
    /// `linger.ms`). Longer batches cost Kafka and this service less CPU per write
    /// and add up to this much to each write's latency; 0 sends at once.
    #[arg(long, env = "CITYPOP_PRODUCER_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub producer_linger: Duration,

    /// Largest batch of writes the producer sends to one partition in one request,
    /// in bytes (librdkafka's `batch.size`).
    #[arg(
        long,
        env = "CITYPOP_PRODUCER_BATCH_BYTES",
        default_value_t = 1_000_000,
        value_parser = clap::value_parser!(u32).range(1..=2_147_483_647)
    )]
    pub producer_batch_bytes: u32,

    /// Compression of the producer's batches: none, gzip, snappy or lz4 (librdkafka's
    /// `compression.type`). The broker stores batches as sent. Events are small and
    /// batches short at the API's rates, so compression saved no CPU when measured.
    #[arg(long, env = "CITYPOP_PRODUCER_COMPRESSION", default_value = "none")]
    pub producer_compression: Compression,

    /// Longest time a client may take to send a request's headers; past it the
    /// connection is closed. Slow clients cannot hold connections open for free.
    #[arg(long, env = "CITYPOP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest time a client may take to send a request's body; past it the answer
    /// is 408.
    #[arg(long, env = "CITYPOP_BODY_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// Longest wait for one engine call of the read path (`GET /city/{name}`, `GET
    /// /cities`) before a 503; shorter than the client-wide
    /// CITYPOP_ELASTICSEARCH_TIMEOUT, so a hung engine does not hold readers. A
    /// read-your-writes wait takes at most `wait_ms` plus this.
    #[arg(long, env = "CITYPOP_ENGINE_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub engine_read_timeout: Duration,

    /// Longest time to answer a request of the API's routes (not the probes nor
    /// `/metrics`), from its headers to its answer; past it the answer is 503. Above
    /// the longest read-your-writes wait (10 s) plus CITYPOP_ENGINE_READ_TIMEOUT, so it
    /// only ends what is stuck.
    #[arg(long, env = "CITYPOP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Requests of the API's routes served at once; past it, requests are refused at
    /// once with 503 and `Retry-After` (load shedding) rather than queued. Probes and
    /// `/metrics` are never refused, so a busy pod is not restarted.
    #[arg(
        long,
        env = "CITYPOP_MAX_CONCURRENT_REQUESTS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_requests: u32,

    /// How long a read of one city (`GET /city/{name}` without `min_version`) waits
    /// for others to share one `_mget` with; `0` turns batching off and each read is
    /// a get by id of its own. Reads stay real-time: the `_mget` starts after every
    /// read it answers arrived.
    #[arg(long, env = "CITYPOP_READ_BATCH_WINDOW", default_value = "250us", value_parser = humantime::parse_duration)]
    pub read_batch_window: Duration,

    /// The most distinct cities in one `_mget` of batched reads; a full batch goes
    /// at once, without waiting for the window to end.
    #[arg(
        long,
        env = "CITYPOP_READ_BATCH_MAX_IDS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub read_batch_max_ids: u32,

    /// The `Cache-Control` header of `GET /city/{name}` answers (200 and 304). The
    /// default makes clients and proxies revalidate with `If-None-Match` each time.
    #[arg(long, env = "CITYPOP_CACHE_CONTROL", default_value = "no-cache", value_parser = parse_header_value)]
    pub cache_control: HeaderValue,

    /// How long the in-process read cache keeps a city; `0` turns it off. A cached
    /// read may be this much older than the index: nothing invalidates it, since
    /// this service never sees the indexer's writes. Reads with `min_version` never
    /// use it.
    #[arg(long, env = "CITYPOP_READ_CACHE_TTL", default_value = "0s", value_parser = humantime::parse_duration)]
    pub read_cache_ttl: Duration,

    /// The most cities the read cache holds; the least used go first.
    #[arg(
        long,
        env = "CITYPOP_READ_CACHE_MAX_ENTRIES",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub read_cache_max_entries: u64,

    /// API keys that writes must present in `X-API-Key`, comma-separated. With no key
    /// here nor in the key file, writes are open. Reads are always open.
    #[arg(long, env = "CITYPOP_API_KEYS", hide_env_values = true, value_parser = ApiKeyList::parse)]
    pub api_keys: Option<ApiKeyList>,

    /// File of further API keys, one a line (blank lines and `#` comments skipped),
    /// such as a mounted Kubernetes Secret.
    #[arg(long, env = "CITYPOP_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// How often the key file is read again; changed keys take effect without a
    /// restart (a mounted Secret is updated in place). A file that cannot be read or
    /// holds no key leaves the keys in force.
    #[arg(long, env = "CITYPOP_API_KEYS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_keys_reload_interval: Duration,

    /// Serve the API reference page at `/docs` (Swagger UI of `/openapi.json`, its
    /// assets compiled into the binary: no CDN needed). `false` turns it off.
    #[arg(
        long,
        env = "CITYPOP_API_DOCS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub api_docs: bool,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub traces: TraceArgs,
}

/// A compression codec librdkafka can write and every Kafka client can read. zstd
/// is not offered: the bundled librdkafka is built without libzstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    /// The value of librdkafka's `compression.type`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
        }
    }
}

/// A header value: visible ASCII and spaces.
fn parse_header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("{value:?} cannot be a header value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn the_docs_page_is_on_unless_turned_off() {
        let parse = |args: &[&str]| {
            Config::try_parse_from([&["producer-api"], args].concat()).map(|c| c.api_docs)
        };
        assert!(parse(&[]).unwrap());
        assert!(!parse(&["--api-docs", "false"]).unwrap());
        assert!(!parse(&["--api-docs", "off"]).unwrap());
        assert!(parse(&["--api-docs", "maybe"]).is_err());
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let config =
            Config::try_parse_from(["producer-api", "--api-keys", "hunter2,correct-horse"])
                .unwrap();
        assert_eq!(config.api_keys.as_ref().map(ApiKeyList::len), Some(2));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("correct-horse"), "{shown}");
    }
}
