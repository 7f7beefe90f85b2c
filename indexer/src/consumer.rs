//! Stage 1, consume: the consumer group this indexer is a member of.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::offsets;

/// How often librdkafka reports lag and committed offsets for the metrics.
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// librdkafka's default session timeout: how long the group waits for a member
/// that stopped heartbeating.
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// The shortest poll interval (and so session timeout) librdkafka and the broker
/// accept (the broker's `group.min.session.timeout.ms` defaults to 6 s).
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(6);

/// Prefetched payload librdkafka may hold. It bounds the indexer's memory while
/// the engine is slow: at most this much waits behind a paused batch.
const PREFETCH_KBYTES: u32 = 16 * 1024;

/// Prefetched messages librdkafka aims to hold: four default batches. Its default
/// (100,000) costs tens of MiB in per-message overhead for small events, with no
/// gain in throughput.
const PREFETCH_MESSAGES: u32 = 20_000;

/// How soon librdkafka fetches again for a partition whose prefetch queue was over
/// the thresholds above. Its default, 1 s, starved the indexer: behind by a few
/// hundred thousand events, it emptied the queue in a fraction of that, then waited
/// up to a second for the next fetch, every ~30,000 events; it drained a Zipf
/// backlog at 45–55k events/s where 5 ms drains it at 170–220k (round-robin:
/// 45–50k → 57–65k, bound by the engine), without more CPU per event.
const REFETCH_BACKOFF: Duration = Duration::from_millis(5);

/// Fetch settings of every consumer of the event topic: a queue that was full is
/// fetched for again as soon as there is room.
pub fn refetch_promptly(client_config: &mut ClientConfig) -> &mut ClientConfig {
    client_config.set(
        "fetch.queue.backoff.ms",
        REFETCH_BACKOFF.as_millis().to_string(),
    )
}

/// Commits stored offsets before partitions are taken away, tells when the member
/// joined its group, and feeds librdkafka's statistics into the metrics.
pub struct GroupContext {
    metrics: Arc<Metrics>,
    joined: watch::Sender<bool>,
    /// Whether consumption is paused now. Partitions assigned meanwhile are paused
    /// as they arrive, or a member would fetch them at full speed into memory
    /// during an engine outage; a partition given back after a pause elsewhere is
    /// resumed, or it could stay paused for good. A member starts paused: nothing
    /// flows before the recreated-topic guard has vouched for the topic.
    paused: AtomicBool,
    /// What the latest assignment was given before `assign` (see `pre_rebalance`).
    paused_at_assign: AtomicBool,
}

impl GroupContext {
    /// Whether consumption is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Pauses or resumes the whole assignment, now and at every rebalance to come.
    /// Only a change reaches librdkafka: a pause or resume while it starts a new
    /// assignment's fetchers can leave a partition unread for good (see
    /// `pre_rebalance`, which gives every new assignment the state before it is
    /// assigned).
    pub fn set_paused<C: Consumer<Self>>(&self, consumer: &C, pause: bool) {
        if self.paused.swap(pause, Ordering::SeqCst) == pause {
            return;
        }
        match consumer.assignment() {
            Ok(assignment) => apply_pause(consumer, &assignment, pause),
            Err(error) => tracing::warn!(%error, "reading the assignment failed"),
        }
    }

    /// Turns true once the member joined its group and got its assignment (which
    /// may be empty).
    pub fn joined(&self) -> watch::Receiver<bool> {
        self.joined.subscribe()
    }
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
                // Before `assign`, never after: librdkafka starts an assigned
                // partition's fetcher from its own thread, and an application pause
                // or resume of that partition in the same moment makes it drop the
                // start (the start's version is older than the pause's by the time
                // it is served). The partition then stays assigned, unpaused and
                // unread for good, with no error (seen in CI: one of 12 partitions,
                // fetch state "none"). Paused or resumed here, before it is
                // assigned, its fetcher starts after, as the state says.
                let paused = self.paused.load(Ordering::SeqCst);
                apply_pause(consumer, partitions, paused);
                self.paused_at_assign.store(paused, Ordering::SeqCst);
                tracing::info!(
                    partitions = partitions.count(),
                    paused,
                    "partitions assigned"
                )
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            // The state changed while `assign` ran, and `set_paused` may have read
            // the assignment before it: only then is it applied again here.
            let paused = self.paused.load(Ordering::SeqCst);
            if paused != self.paused_at_assign.load(Ordering::SeqCst) {
                apply_pause(consumer, partitions, paused);
            }
            self.joined.send_replace(true);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(error) => tracing::debug!(%error, "offset commit"),
        }
    }
}

fn apply_pause<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &TopicPartitionList,
    pause: bool,
) {
    let result = if pause {
        consumer.pause(partitions)
    } else {
        consumer.resume(partitions)
    };
    match result {
        Ok(()) => tracing::debug!(
            paused = pause,
            partitions = partitions.count(),
            "consumption paused state set"
        ),
        Err(error) => {
            tracing::warn!(%error, paused = pause, "pausing or resuming consumption failed")
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// The group consumer's librdkafka settings.
fn group_client_config(config: &Config) -> ClientConfig {
    let mut client_config = config.kafka.client_config("citypop-indexer");
    if let Some(id) = &config.group_instance_id {
        client_config.set("group.instance.id", id);
    }
    offsets::configure_commits(&mut client_config, config.commit_interval);
    refetch_promptly(&mut client_config);
    let max_poll_interval = config.max_poll_interval.max(MIN_POLL_INTERVAL);
    client_config
        .set(
            "max.poll.interval.ms",
            max_poll_interval.as_millis().to_string(),
        )
        // librdkafka refuses a session timeout above the poll interval.
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT
                .min(max_poll_interval)
                .as_millis()
                .to_string(),
        )
        .set("group.id", &config.consumer_group)
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string())
        .set("queued.min.messages", PREFETCH_MESSAGES.to_string())
        .set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        );
    client_config
}

pub fn create_consumer(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<GroupConsumer> {
    let consumer: GroupConsumer = group_client_config(config)
        .create_with_context(GroupContext {
            metrics,
            joined: watch::channel(false).0,
            paused: AtomicBool::new(true),
            paused_at_assign: AtomicBool::new(true),
        })
        .context("creating the kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .with_context(|| format!("subscribing to {}", config.kafka.topic))?;
    Ok(consumer)
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::*;

    /// librdkafka's `fetch.queue.backoff.ms` when unset.
    const LIBRDKAFKA_DEFAULT_BACKOFF_MS: u64 = 1000;

    fn fetch_queue_backoff(client_config: &ClientConfig) -> Duration {
        Duration::from_millis(
            client_config
                .get("fetch.queue.backoff.ms")
                .map_or(LIBRDKAFKA_DEFAULT_BACKOFF_MS, |ms| {
                    ms.parse().expect("a number of milliseconds")
                }),
        )
    }

    /// Fails unless a consumer with `client_config` fetches for a partition whose
    /// queue was full again within the batch linger of the default settings.
    pub(crate) fn assert_refetches_within_a_batch_linger(
        client_config: impl Fn(&Config) -> ClientConfig,
    ) {
        let config = Config::parse_from(["indexer"]);
        let backoff = fetch_queue_backoff(&client_config(&config));
        assert!(
            backoff < config.batch.linger,
            "fetch.queue.backoff.ms {backoff:?} is not below the batch linger {:?}",
            config.batch.linger
        );
    }

    /// While the indexer is behind, a partition's prefetch queue fills up and
    /// librdkafka stops fetching for it for `fetch.queue.backoff.ms`. A consumer that
    /// drains the queue sooner then waits with nothing to read: batches close
    /// half-empty on their linger and the next one waits up to the whole backoff
    /// (seen: 0.5–0.95 s waits every ~30,000 events, draining at a third of the rate).
    #[test]
    fn a_full_prefetch_queue_is_fetched_again_within_a_batch_linger() {
        assert_refetches_within_a_batch_linger(group_client_config);
    }
}
