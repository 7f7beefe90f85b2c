//! Stage 1, consume: the consumer group this indexer is a member of.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::offsets;

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
                offsets::commit_before_revocation(consumer);
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
    offsets::configure_commits(&mut client_config, config.commit_interval);
    let consumer: GroupConsumer = client_config
        .set("group.id", &config.consumer_group)
        .set("auto.offset.reset", "earliest")
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
