//! Offsets, in one place: what a batch consumed, what is stored once it is handled,
//! when stored offsets are committed, and reading a topic's offsets. Nothing else in
//! the indexer talks to librdkafka about offsets.
//!
//! At-least-once, as in rust-rdkafka's `at_least_once` example: the consumer never
//! stores an offset by itself (`enable.auto.offset.store=false`); [`store`] stores a
//! batch's offsets once every message in it is handled, batches in the order they
//! were consumed; librdkafka's timer commits what is stored, and so do a partition's
//! revocation ([`commit_before_revocation`]) and shutdown ([`commit_stored`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::RuntimeFlavor;

use crate::retry::Retry;

/// How long one metadata, watermark or committed-offset request waits for Kafka.
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka positions name the next message to read, while a consumed message has
/// the offset of itself: the one place that turns the one into the other.
pub fn next_after(offset: i64) -> i64 {
    offset + 1
}

/// Per partition, the highest offset consumed: what a batch has read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsumedOffsets {
    /// The topic read (a batch reads one).
    topic: String,
    highest: BTreeMap<i32, i64>,
}

impl ConsumedOffsets {
    pub fn record(&mut self, message: &impl Message) {
        if self.topic.is_empty() {
            self.topic = message.topic().to_owned();
        }
        let highest = self.highest.entry(message.partition()).or_insert(0);
        *highest = (*highest).max(message.offset());
    }

    /// Per partition, the position after the batch: the next offset to read.
    pub fn next_positions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.highest
            .iter()
            .map(|(&partition, &offset)| (partition, next_after(offset)))
    }

    fn to_list(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(self.highest.len());
        for (partition, position) in self.next_positions() {
            // Adding a partition to a fresh list cannot fail.
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(position));
        }
        list
    }
}

/// Sets up a group consumer's commits: offsets are stored only by [`store`], and
/// librdkafka's timer commits what is stored every `interval`.
pub fn configure_commits(config: &mut ClientConfig, interval: Duration) {
    config
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", interval.as_millis().to_string());
}

/// Sets up a consumer that reads by assignment and commits nothing by itself.
pub fn configure_manual(config: &mut ClientConfig) {
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
}

/// Stores the positions after a batch whose every message is handled; the next
/// commit makes them durable.
pub fn store<C: ConsumerContext>(consumer: &impl Consumer<C>, consumed: &ConsumedOffsets) {
    // Fails only for partitions revoked meanwhile; their new owner re-reads them,
    // and versions make that harmless.
    if let Err(error) = consumer.store_offsets(&consumed.to_list()) {
        tracing::warn!(%error, "storing offsets failed");
    }
}

/// Commits what is stored before partitions are taken away, so the next owner
/// starts where this member's durable work ends rather than at the last timer
/// commit. Runs inside librdkafka's rebalance callback, on the runtime worker that
/// polls: the worker hands its other tasks over while the commit blocks.
pub fn commit_before_revocation<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    let commit = || consumer.commit_consumer_state(CommitMode::Sync);
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
    let committed = if on_worker {
        tokio::task::block_in_place(commit)
    } else {
        commit()
    };
    if let Err(error) = committed {
        tracing::debug!(%error, "commit on revocation");
    }
}

/// The final commit at shutdown, off the async workers (a synchronous commit
/// blocks until Kafka answers).
pub async fn commit_stored<C, K>(consumer: Arc<K>)
where
    C: ConsumerContext + 'static,
    K: Consumer<C> + Send + Sync + 'static,
{
    let committed =
        tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync)).await;
    match committed {
        Ok(Ok(())) => tracing::info!("offsets committed"),
        // librdkafka reports "nothing stored since the last commit" as an error;
        // it is the usual case after a quiet spell, not a failure.
        Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {
            tracing::info!("final commit: nothing new to commit")
        }
        Ok(Err(error)) => tracing::warn!(%error, "final commit failed"),
        Err(error) => tracing::warn!(%error, "final commit did not run"),
    }
}

/// Commits `positions` (per partition, the next offset to read) for a consumer that
/// reads by assignment, off the async workers.
pub async fn commit_positions<C, K>(
    consumer: Arc<K>,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> anyhow::Result<()>
where
    C: ConsumerContext + 'static,
    K: Consumer<C> + Send + Sync + 'static,
{
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for (&partition, &position) in positions {
        list.add_partition_offset(topic, partition, Offset::Offset(position))?;
    }
    tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
        .await?
        .context("committing positions")
}

/// The group's committed position of every partition in `partitions` that has one.
pub async fn committed_positions<C, K>(
    consumer: Arc<K>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> anyhow::Result<BTreeMap<i32, i64>>
where
    C: ConsumerContext + 'static,
    K: Consumer<C> + Send + Sync + 'static,
{
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, partition);
    }
    let committed = tokio::task::spawn_blocking(move || {
        consumer.committed_offsets(list, KAFKA_REQUEST_TIMEOUT)
    })
    .await??;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Assigns every partition in `positions` to a consumer that reads by assignment,
/// starting at its position.
pub fn assign<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::with_capacity(positions.len());
    for (&partition, &position) in positions {
        assignment.add_partition_offset(topic, partition, Offset::Offset(position))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning {topic}"))
}

/// Reads partition offsets with a client of its own. A consumer that is fetching
/// answers offset requests only after its pending long-poll fetches, about half a
/// second per partition; an idle client answers at once.
#[derive(Clone)]
pub struct OffsetReader(Arc<BaseConsumer>);

impl OffsetReader {
    pub fn new(kafka: &citypop_runtime::KafkaArgs) -> anyhow::Result<Self> {
        Self::create(kafka.client_config("citypop-indexer-offsets"))
    }

    /// A reader that can also read `group`'s committed positions. It never joins
    /// the group.
    pub fn for_group(kafka: &citypop_runtime::KafkaArgs, group: &str) -> anyhow::Result<Self> {
        let mut config = kafka.client_config("citypop-indexer-offsets");
        configure_manual(&mut config);
        config.set("group.id", group);
        Self::create(config)
    }

    fn create(config: ClientConfig) -> anyhow::Result<Self> {
        let client: BaseConsumer = config
            .create()
            .context("creating the kafka offset reader")?;
        Ok(Self(Arc::new(client)))
    }

    /// The group's committed positions on `topic` (a reader made [`Self::for_group`]).
    pub async fn committed(
        &self,
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        committed_positions(self.0.clone(), topic, partitions).await
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

    /// The topic's id, which names this incarnation of it (see [`crate::native`]).
    pub async fn topic_id(&self, topic: &str) -> anyhow::Result<Option<String>> {
        let client = self.0.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || crate::native::topic_id(client.client(), &topic))
            .await?
    }

    /// Per partition, the next offset to be written.
    pub async fn end_offsets(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        Ok(ends(&self.watermarks(topic).await?))
    }
}

/// Per partition, the end offset (the high watermark) of `marks`.
pub fn ends(marks: &BTreeMap<i32, (i64, i64)>) -> BTreeMap<i32, i64> {
    marks
        .iter()
        .map(|(&partition, &(_, high))| (partition, high))
        .collect()
}

/// Where a command reads a topic's watermarks: Kafka's, through [`OffsetReader`].
pub trait WatermarkSource {
    fn read_watermarks(
        &self,
        topic: &str,
    ) -> impl Future<Output = anyhow::Result<BTreeMap<i32, (i64, i64)>>> + Send;
}

impl WatermarkSource for OffsetReader {
    async fn read_watermarks(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        self.watermarks(topic).await
    }
}

/// A topic's watermarks for a command that runs for minutes (replay, redrive): while
/// a broker is down, the partitions it led answer nothing until another replica
/// leads them, so a failed read is retried under `retry`, as the bulk writes of the
/// same command are, rather than ending a replay half done.
pub async fn watermarks_retried(
    source: &impl WatermarkSource,
    topic: &str,
    retry: &Retry,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let read = || async {
        // The whole chain, so the log and a final error name the cause.
        source
            .read_watermarks(topic)
            .await
            .map_err(|error| format!("{error:#}"))
    };
    Ok(retry
        .run(&format!("reading the offsets of {topic}"), read, |_, _| {})
        .await?)
}

/// Per partition, the next offset to be written, read as [`watermarks_retried`] does.
pub async fn end_offsets_retried(
    source: &impl WatermarkSource,
    topic: &str,
    retry: &Retry,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    Ok(ends(&watermarks_retried(source, topic, retry).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MessageBuilder;

    /// Fails its first `failures` reads as Kafka does while a partition has no
    /// leader, then answers.
    struct LeaderlessFor {
        failures: usize,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl WatermarkSource for LeaderlessFor {
        async fn read_watermarks(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
            let read = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if read < self.failures {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::LeaderNotAvailable,
                ))
                .with_context(|| format!("fetching watermarks of {topic}/0"));
            }
            Ok(BTreeMap::from([(0, (0, 42)), (1, (3, 7))]))
        }
    }

    fn quick_retry(max_attempts: usize) -> (tokio::sync::watch::Sender<bool>, Retry) {
        let (abort, aborted) = tokio::sync::watch::channel(false);
        let policy = crate::retry::RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_attempts,
        };
        (abort, Retry::new(policy, aborted))
    }

    #[tokio::test]
    async fn end_offsets_are_read_through_a_broker_restart() {
        let source = LeaderlessFor {
            failures: 3,
            reads: Default::default(),
        };
        let (_abort, retry) = quick_retry(0);
        let ends = end_offsets_retried(&source, "cities", &retry)
            .await
            .expect("the read waits for a new leader");
        assert_eq!(ends, BTreeMap::from([(0, 42), (1, 7)]));
        assert_eq!(source.reads.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_read_that_never_succeeds_ends_with_its_cause_once_retries_are_used_up() {
        let source = LeaderlessFor {
            failures: usize::MAX,
            reads: Default::default(),
        };
        let (_abort, retry) = quick_retry(2);
        let error = watermarks_retried(&source, "cities", &retry)
            .await
            .expect_err("never answered");
        let message = format!("{error:#}");
        assert!(
            message.contains("fetching watermarks of cities/0"),
            "{message}"
        );
        assert!(
            message.contains("LeaderNotAvailable") || message.contains("Leader not available"),
            "{message}"
        );
        assert_eq!(source.reads.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn a_batch_stores_one_past_the_highest_offset_per_partition() {
        let mut consumed = ConsumedOffsets::default();
        for (partition, offset) in [(1, 9), (0, 6), (0, 2), (1, 3)] {
            consumed.record(&MessageBuilder::tombstone("k").at(partition, offset).build());
        }
        assert_eq!(
            consumed.next_positions().collect::<Vec<_>>(),
            [(0, 7), (1, 10)]
        );
        let stored: Vec<_> = consumed
            .to_list()
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect();
        assert_eq!(
            stored,
            [
                ("t".to_owned(), 0, Offset::Offset(7)),
                ("t".to_owned(), 1, Offset::Offset(10))
            ]
        );
    }
}
