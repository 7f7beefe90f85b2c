use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use citypop_runtime::{EngineArgs, KafkaArgs, LogArgs};

use crate::batch::BatchLimits;
use crate::decode::DeadLetterReason;

/// citypop indexer: consumes city updates from Kafka and writes them to the search
/// index in versioned bulk requests, with retries and a dead-letter topic. Without a
/// command it runs the indexer; settings go before the command or in the environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "indexer", version)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Directory of extra Avro writer schemas (`*.avsc`), read at start in addition
    /// to the published ones compiled in: how a schema a newer producer wrote is
    /// taught to an older indexer.
    #[arg(long, env = "CITYPOP_SCHEMA_DIR")]
    pub schema_dir: Option<PathBuf>,

    /// Address of the health and metrics endpoint (/livez, /readyz, /metrics).
    #[arg(long, env = "CITYPOP_HEALTH_LISTEN", default_value = "127.0.0.1:8081")]
    pub health_listen: SocketAddr,

    /// Kafka consumer group; every indexer of one deployment shares it.
    #[arg(
        long,
        env = "CITYPOP_CONSUMER_GROUP",
        default_value = "citypop-indexer"
    )]
    pub consumer_group: String,

    /// Static group membership id (e.g. the pod name). A restarted member with the
    /// same id takes its partitions back at once instead of waiting out the session
    /// timeout and a rebalance.
    #[arg(long, env = "CITYPOP_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// Dead-letter topic [default: <topic>.dlq].
    #[arg(long, env = "CITYPOP_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,

    /// Partitions of the main topic when the indexer creates it; fixed afterwards,
    /// since a city's partition must never change.
    #[arg(long, env = "CITYPOP_TOPIC_PARTITIONS", default_value_t = 12)]
    pub topic_partitions: i32,

    /// Replication factor of topics the indexer creates; -1 takes the broker's default.
    #[arg(long, env = "CITYPOP_TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication_factor: i32,

    /// Primary shards of each index.
    #[arg(long, env = "CITYPOP_INDEX_SHARDS", default_value_t = 1)]
    pub index_shards: u32,

    /// Replicas of each index.
    #[arg(long, env = "CITYPOP_INDEX_REPLICAS", default_value_t = 1)]
    pub index_replicas: u32,

    /// Most events consumed into one batch. Of a city's events in a batch only the
    /// newest is written, so while the indexer is behind, larger batches mean less
    /// to write. A batch is written as bulk requests of at most
    /// `--bulk-max-documents`.
    #[arg(long, env = "CITYPOP_BATCH_MAX_EVENTS", default_value_t = 10_000)]
    pub batch_max_events: usize,

    /// Most bytes of Kafka key and payload consumed into one batch.
    #[arg(long, env = "CITYPOP_BATCH_MAX_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub batch_max_bytes: usize,

    /// How long a batch's first event waits for more before the batch may be
    /// written. While the previous batch is still being written, the next one keeps
    /// growing up to its limits.
    #[arg(long, env = "CITYPOP_BATCH_LINGER", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// Most documents in one bulk request.
    #[arg(long, env = "CITYPOP_BULK_MAX_DOCUMENTS", default_value_t = 5000)]
    pub bulk_max_documents: usize,

    /// Bulk requests in flight at once. Two keep the engine busy while the next
    /// request is built. A batch holds one write per city, so its requests never
    /// race on a document.
    #[arg(long, env = "CITYPOP_BULK_CONCURRENCY", default_value_t = 2)]
    pub bulk_concurrency: usize,

    /// First delay before retrying a failed bulk request.
    #[arg(long, env = "CITYPOP_RETRY_MIN_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_min_delay: Duration,

    /// Cap on the delay between retries (exponential, full jitter).
    #[arg(long, env = "CITYPOP_RETRY_MAX_DELAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,

    /// Retries of one bulk request before the indexer exits (0 = retry forever).
    /// Exiting loses nothing: uncommitted events are consumed again on restart.
    #[arg(long, env = "CITYPOP_RETRY_MAX_ATTEMPTS", default_value_t = 0)]
    pub retry_max_attempts: usize,

    /// How often stored offsets are committed to Kafka.
    #[arg(long, env = "CITYPOP_COMMIT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,

    /// After SIGTERM, how long the batch in flight may take to finish (retries
    /// included) before it is abandoned uncommitted and the indexer exits.
    #[arg(long, env = "CITYPOP_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_events: self.batch_max_events,
            max_bytes: self.batch_max_bytes,
            linger: self.batch_linger,
        }
    }

    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.kafka.topic))
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Consume the topic and index it (the default).
    Run,
    /// Create what the indexer needs (topics, index template, first index and
    /// alias), then exit: for a deploy hook that runs before the indexers start.
    Setup,
    /// Rebuild the index from the topic into a new index, then swap the alias to it.
    Replay(ReplayArgs),
    /// Inspect or republish dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Delete the index the alias pointed to, once the new one serves.
    #[arg(long)]
    pub delete_old: bool,

    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Show dead letters with their reason, error and origin.
    List(DlqListArgs),
    /// Republish dead letters to the main topic (after a fix). Each reason has its own
    /// consumer group on the dead-letter topic, so nothing is redriven twice.
    Redrive(DlqRedriveArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DlqListArgs {
    /// Show at most this many, the most recent.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,

    /// Only dead letters of this reason.
    #[arg(long, value_enum)]
    pub reason: Option<DeadLetterReason>,

    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DlqRedriveArgs {
    /// Only dead letters of this reason [default: all reasons].
    #[arg(long, value_enum)]
    pub reason: Option<DeadLetterReason>,

    /// Count what would be republished and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
