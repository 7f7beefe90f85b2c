//! The indexer's settings: one struct, with each concern's settings flattened in
//! from the module of the stage that uses them; every one is a flag and a
//! `CITYPOP_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use citypop_runtime::{EngineArgs, KafkaArgs, LogArgs, TraceArgs};

use crate::batch::BatchLimits;
use crate::bulk::BulkLimits;
use crate::dead_letter::{DeadLetterArgs, DeadLetterReason};
use crate::index_admin::IndexArgs;
use crate::retry::RetryPolicy;

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

    #[command(flatten)]
    pub dead_letters: DeadLetterArgs,

    #[command(flatten)]
    pub topics: TopicArgs,

    #[command(flatten)]
    pub index: IndexArgs,

    #[command(flatten)]
    pub batch: BatchLimits,

    #[command(flatten)]
    pub bulk: BulkLimits,

    #[command(flatten)]
    pub retry: RetryPolicy,

    /// Longest time between two polls of the consumer before Kafka counts the member
    /// as stuck and takes its partitions away (librdkafka's `max.poll.interval.ms`;
    /// the indexer polls while it retries or waits, so this only trips on a real
    /// hang). The session timeout is kept at or below it.
    #[arg(long, env = "CITYPOP_MAX_POLL_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_poll_interval: Duration,

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

    #[command(flatten)]
    pub traces: TraceArgs,
}

impl Config {
    pub fn dlq_topic(&self) -> String {
        self.dead_letters.topic(&self.kafka.topic)
    }
}

/// How the indexer creates the topics it needs.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TopicArgs {
    /// Partitions of the main topic when the indexer creates it; fixed afterwards,
    /// since a city's partition must never change.
    #[arg(
        long = "topic-partitions",
        env = "CITYPOP_TOPIC_PARTITIONS",
        default_value_t = 12
    )]
    pub partitions: i32,

    /// Replication factor of topics the indexer creates; -1 takes the broker's default.
    #[arg(long = "topic-replication-factor", env = "CITYPOP_TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i32,

    /// `min.insync.replicas` of topics the indexer creates: how many replicas must
    /// have a write before it is acknowledged to a producer with `acks=all`
    /// [default: 2 when the replication factor is 3 or more, 1 when it is 1 or 2,
    /// the broker's own default when the replication factor is -1].
    #[arg(
        long = "topic-min-insync-replicas",
        env = "CITYPOP_TOPIC_MIN_INSYNC_REPLICAS"
    )]
    pub min_insync_replicas: Option<i32>,

    /// `retention.ms` of the dead-letter topic when the indexer creates it; -1 keeps
    /// dead letters until they are redriven or deleted by hand.
    #[arg(long = "dlq-retention-ms", env = "CITYPOP_DLQ_RETENTION_MS", default_value_t = -1, allow_negative_numbers = true)]
    pub dlq_retention_ms: i64,
}

impl TopicArgs {
    /// The `min.insync.replicas` created topics get; `None` leaves the broker's.
    pub fn min_insync_replicas(&self) -> Option<i32> {
        // With fewer than 3 replicas, 2 in sync would stop every write as soon as
        // one broker is down.
        self.min_insync_replicas.or(match self.replication_factor {
            f if f >= 3 => Some(2),
            f if f >= 1 => Some(1),
            _ => None,
        })
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
    /// Show a running indexer's status (asks its `/status` on the health address).
    Status(StatusArgs),
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

    /// Replay a topic whose `cleanup.policy` is not `compact`. With `delete`, cities
    /// not updated within the retention are gone from the topic, and the new index
    /// would lack them.
    #[arg(long)]
    pub allow_incomplete: bool,

    /// Swap even when the new index holds fewer live documents than the old one,
    /// beyond the messages replay could not index.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The indexer's health address [default: the health listen address, with
    /// 0.0.0.0 read as 127.0.0.1].
    #[arg(long)]
    pub url: Option<String>,

    /// Print the JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Show dead letters with their reason, error and origin.
    List(DlqListArgs),
    /// Republish dead letters to the main topic (after a fix): only a key's newest
    /// dead letter, once, and never one whose key has a newer event indexed (it is
    /// reported as superseded). Each reason has its own consumer group on the
    /// dead-letter topic, committed as it goes, so nothing is redriven twice and a
    /// stopped redrive resumes.
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

    /// How long to wait for the live indexer's group to commit up to the end
    /// offsets of the main topic taken at the start: only then can the index tell
    /// which dead letters are superseded by a newer event.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub wait_for_indexer: Duration,

    /// Print the counts as JSON (redriven per reason, superseded, duplicates,
    /// skipped, examined), for a job that acts on them.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_settings_parse_with_their_documented_defaults() {
        Config::command().debug_assert();
        let config = Config::parse_from(["indexer"]);
        assert_eq!(config.dlq_topic(), "city-updates.dlq");
        assert_eq!(config.batch.max_events, 10_000);
        assert_eq!(config.batch.linger, Duration::from_millis(50));
        assert_eq!(config.bulk.documents, 5000);
        assert_eq!(config.retry.max_delay, Duration::from_secs(30));
        assert_eq!(config.topics.partitions, 12);
        assert_eq!(config.index.replicas, 1);
        assert_eq!(config.topics.dlq_retention_ms, -1);
        assert_eq!(config.topics.min_insync_replicas(), None);
    }

    #[test]
    fn min_insync_replicas_follow_the_replication_factor_unless_set() {
        let topics = |args: &[&str]| {
            Config::parse_from(std::iter::once("indexer").chain(args.iter().copied())).topics
        };
        assert_eq!(
            topics(&["--topic-replication-factor", "3"]).min_insync_replicas(),
            Some(2)
        );
        assert_eq!(
            topics(&["--topic-replication-factor", "2"]).min_insync_replicas(),
            Some(1)
        );
        assert_eq!(
            topics(&["--topic-replication-factor", "1"]).min_insync_replicas(),
            Some(1)
        );
        assert_eq!(
            topics(&[
                "--topic-replication-factor",
                "5",
                "--topic-min-insync-replicas",
                "3"
            ])
            .min_insync_replicas(),
            Some(3)
        );
    }
}
