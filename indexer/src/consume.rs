//! Stage 1: the consumer group, and reading one batch from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::watch;

use crate::batch::{Batch, BatchLimits};
use crate::config::Config;
use crate::metrics::Metrics;

/// How long one metadata or watermark request waits for Kafka.
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often librdkafka reports lag and committed offsets for the metrics.
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// Prefetched payload librdkafka may hold. It bounds the indexer's memory while
/// the engine is slow: at most this much waits behind a paused batch.
const PREFETCH_KBYTES: u32 = 16 * 1024;

/// Prefetched messages librdkafka aims to hold: four default batches. Its default
/// (100,000) costs tens of MiB in per-message overhead for small events, with no
/// gain in throughput.
const PREFETCH_MESSAGES: u32 = 20_000;

/// Commits stored offsets before partitions are taken away, and feeds librdkafka's
/// statistics into the metrics.
pub struct GroupContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.record_statistics(&statistics);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Commit what is stored now, so the next owner starts where this
                // member's durable work ends rather than at the last timer commit.
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(%error, "commit on revocation");
                }
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(error) => tracing::debug!(%error, "offset commit"),
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

pub fn create_consumer(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<GroupConsumer> {
    let mut client_config = config.kafka.client_config("citypop-indexer");
    if let Some(id) = &config.group_instance_id {
        client_config.set("group.instance.id", id);
    }
    let consumer: GroupConsumer = client_config
        .set("group.id", &config.consumer_group)
        .set("auto.offset.reset", "earliest")
        // At-least-once: an offset is stored only once its event is indexed, skipped
        // as stale or dead-lettered; the auto-commit timer then commits what is stored.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string())
        .set("queued.min.messages", PREFETCH_MESSAGES.to_string())
        .set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        )
        .create_with_context(GroupContext { metrics })
        .context("creating the kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .with_context(|| format!("subscribing to {}", config.kafka.topic))?;
    Ok(consumer)
}

/// Reads partition offsets with a client of its own. A consumer that is fetching
/// answers offset requests only after its pending long-poll fetches, about half a
/// second per partition; an idle client answers at once.
#[derive(Clone)]
pub struct OffsetReader(Arc<BaseConsumer>);

impl OffsetReader {
    pub fn new(kafka: &citypop_runtime::KafkaArgs) -> anyhow::Result<Self> {
        let client: BaseConsumer = kafka
            .client_config("citypop-indexer-offsets")
            .create()
            .context("creating the kafka offset reader")?;
        Ok(Self(Arc::new(client)))
    }

    /// (low, high) watermarks of every partition of `topic`: the first offset still
    /// held and the next offset to be written.
    pub async fn watermarks(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        let client = self.0.clone();
        let topic = topic.to_owned();
        // Metadata and watermark requests block; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(Some(&topic), KAFKA_REQUEST_TIMEOUT)
                .with_context(|| format!("fetching metadata of {topic}"))?;
            let mut marks = BTreeMap::new();
            for t in metadata.topics() {
                if let Some(error) = t.error() {
                    anyhow::bail!("topic {topic}: {error:?}");
                }
                for partition in t.partitions() {
                    let partition_marks = client
                        .fetch_watermarks(&topic, partition.id(), KAFKA_REQUEST_TIMEOUT)
                        .with_context(|| {
                            format!("fetching watermarks of {topic}/{}", partition.id())
                        })?;
                    marks.insert(partition.id(), partition_marks);
                }
            }
            Ok(marks)
        })
        .await?
    }

    /// Per partition, the next offset to be written.
    pub async fn end_offsets(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        Ok(self
            .watermarks(topic)
            .await?
            .into_iter()
            .map(|(partition, (_, high))| (partition, high))
            .collect())
    }
}

/// Waits for a first message, then gathers more until the batch is full or the
/// first one has waited `linger`. Messages carried over from a paused wait come
/// first. `None` once `stop` turned true.
pub async fn next_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    limits: &BatchLimits,
    carried: Vec<OwnedMessage>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Batch> {
    let mut batch = Batch::default();
    for message in carried {
        batch.push(message);
    }
    while batch.is_empty() {
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            received = consumer.recv() => match received {
                Ok(message) => batch.push(message.detach()),
                Err(error) => tracing::warn!(%error, "kafka consume error"),
            },
            _ = stop.changed() => return None,
        }
    }
    let deadline = tokio::time::Instant::now() + limits.linger;
    while !batch.is_full(limits) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "kafka consume error");
                break;
            }
            Err(_linger_elapsed) => break,
        }
    }
    Some(batch)
}
