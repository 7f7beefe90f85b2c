//! Stage 1: the consumer group, and reading one batch from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use citypop_schemas::event::Codec;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::{Semaphore, mpsc, watch};

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

/// Joins fetching to writing: the fetch loop hands a batch over only when the writer
/// asks for one, and until then the batch keeps growing. A busy writer so gets
/// fewer, larger batches, which coalesce more: a lagging indexer writes less.
pub fn handover() -> (BatchSender, BatchReceiver) {
    let wanted = Arc::new(Semaphore::new(0));
    let (sender, receiver) = mpsc::channel(1);
    (
        BatchSender {
            wanted: wanted.clone(),
            batches: sender,
        },
        BatchReceiver {
            wanted,
            batches: receiver,
        },
    )
}

pub struct BatchSender {
    /// One permit per batch the writer asked for.
    wanted: Arc<Semaphore>,
    batches: mpsc::Sender<Batch>,
}

impl BatchSender {
    /// Hands `batch` over; `false` once the writer is gone.
    pub async fn send(&self, batch: Batch) -> bool {
        self.batches.send(batch).await.is_ok()
    }
}

pub struct BatchReceiver {
    wanted: Arc<Semaphore>,
    batches: mpsc::Receiver<Batch>,
}

impl BatchReceiver {
    /// Asks for the next batch and waits for it; `None` once fetching ended.
    pub async fn recv(&mut self) -> Option<Batch> {
        // A request from a call given up on still stands: ask once.
        if self.wanted.available_permits() == 0 {
            self.wanted.add_permits(1);
        }
        self.batches.recv().await
    }
}

impl Drop for BatchReceiver {
    /// A fetch loop waiting for the writer learns it is gone.
    fn drop(&mut self) {
        self.wanted.close();
    }
}

/// Reads batches from a consumer: what is read, and into what limits.
pub struct Gatherer<'a, C: ConsumerContext + 'static> {
    pub consumer: &'a StreamConsumer<C>,
    pub codec: &'a Codec,
    pub limits: &'a BatchLimits,
}

impl<C: ConsumerContext + 'static> Gatherer<'_, C> {
    /// Waits for a first message, then gathers more until the batch is full or the
    /// first one has waited `linger`. Messages carried over from a paused wait come
    /// first. `None` once `stop` turned true.
    pub async fn gather(
        &self,
        carried: &mut Vec<OwnedMessage>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Batch> {
        let mut batch = Batch::default();
        for message in carried.drain(..) {
            batch.push(self.codec, message);
        }
        while batch.is_empty() {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                received = self.consumer.recv() => match received {
                    Ok(message) => batch.push(self.codec, message.detach()),
                    Err(error) => tracing::warn!(%error, "kafka consume error"),
                },
                _ = stop.changed() => return None,
            }
        }
        let deadline = tokio::time::Instant::now() + self.limits.linger;
        while !batch.is_full(self.limits) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(self.codec, message.detach()),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "kafka consume error");
                    break;
                }
                Err(_linger_elapsed) => break,
            }
        }
        Some(batch)
    }

    /// Goes on adding to `batch`, up to its limits, until the writer asks for it;
    /// then the caller hands it over. While `paused` (the engine fails) the consumer
    /// is still polled, since one silent for `max.poll.interval.ms` leaves its group;
    /// what arrives beyond a full batch is `carried` into the next one, so offsets
    /// stay in order. Only the fetch loop ever polls the consumer: two pollers can
    /// lose a wake-up and stall. `false` once `stop` turned true or the writer is
    /// gone.
    pub async fn grow_until_wanted(
        &self,
        batch: &mut Batch,
        carried: &mut Vec<OwnedMessage>,
        writer: &BatchSender,
        paused: &watch::Receiver<bool>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut paused = paused.clone();
        loop {
            let room = !batch.is_full(self.limits);
            tokio::select! {
                asked = writer.wanted.acquire() => return match asked {
                    Ok(permit) => {
                        permit.forget();
                        true
                    }
                    Err(_closed) => false,
                },
                received = self.consumer.recv(), if room || *paused.borrow() => match received {
                    Ok(message) if room => batch.push(self.codec, message.detach()),
                    Ok(message) => carried.push(message.detach()),
                    Err(error) => tracing::debug!(%error, "kafka consume error while waiting for the writer"),
                },
                Ok(()) = paused.changed() => {}
                _ = stop.changed() => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_wanted_only_once_the_writer_asks() {
        let (writer, mut batches) = handover();
        assert_eq!(writer.wanted.available_permits(), 0, "nobody asked yet");
        let asking = tokio::spawn(async move {
            let batch = batches.recv().await;
            (batch.map(|b| b.len()), batches)
        });
        let permit = writer.wanted.acquire().await.expect("the writer asks");
        permit.forget();
        assert!(writer.send(Batch::default()).await);
        let (received, batches) = asking.await.unwrap();
        assert_eq!(received, Some(0));
        assert_eq!(writer.wanted.available_permits(), 0, "one ask, one batch");
        drop(batches);
        assert!(
            writer.wanted.acquire().await.is_err(),
            "a fetch loop waiting for a writer that is gone stops waiting"
        );
    }
}
