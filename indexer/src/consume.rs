//! Stage 1: the consumer group, and reading one batch from it.

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::watch;

use crate::batch::{Batch, BatchLimits};
use crate::config::Config;

/// Logs what the group does with this member; the offsets themselves are handled by
/// librdkafka, which commits stored offsets on revocation when auto-commit is on.
pub struct GroupContext;

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions revoked")
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
            Err(error) => tracing::warn!(%error, "offset commit failed"),
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

pub fn create_consumer(config: &Config) -> anyhow::Result<GroupConsumer> {
    let consumer: GroupConsumer = config
        .kafka
        .client_config("citypop-indexer")
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
        .create_with_context(GroupContext)
        .context("creating the kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .with_context(|| format!("subscribing to {}", config.kafka.topic))?;
    Ok(consumer)
}

/// Waits for a first message, then gathers more until the batch is full or the
/// first one has waited `linger`. `None` once shutdown was asked for.
pub async fn next_batch(
    consumer: &GroupConsumer,
    limits: &BatchLimits,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Batch> {
    let mut batch = Batch::default();
    while batch.is_empty() {
        if *shutdown.borrow() {
            return None;
        }
        tokio::select! {
            received = consumer.recv() => match received {
                Ok(message) => batch.push(message.detach()),
                Err(error) => tracing::warn!(%error, "kafka consume error"),
            },
            _ = shutdown.changed() => return None,
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
