//! `indexer replay`: rebuilds the index from the topic into a new index while the
//! live indexer keeps running, then moves the alias to it in one atomic call.
//!
//! 1. Create `<alias>-<timestamp>` with replicas 0 and refresh off.
//! 2. Read every partition from its beginning up to the end offsets taken at the
//!    start, with the live indexer's batching, coalescing and versioning.
//! 3. Catch up with the live indexer: read to fresh end offsets until little is
//!    left, then block writes on the old index (the live indexer retries them, as it
//!    does any write block) and read to the end once more. The new index now holds
//!    everything the old one does, so no read after the swap can go back in time.
//! 4. Refresh and turn refresh back on, then swap the alias for reads and writes in
//!    one `_aliases` call, so reads never see an empty or half-built index; lift the
//!    block on the old index.
//! 5. Read on to the end offsets taken after the swap. Versions make any overlap
//!    with the live indexer harmless.
//! 6. Restore replicas, optionally delete the old index, print a summary.
//!
//! It refuses a topic that is not compacted (`--allow-incomplete` overrides) and, just
//! before the swap, a new index with fewer live documents than the old one beyond
//! what it could not index (`--force` overrides). Stopped anywhere (an error, Ctrl-C,
//! SIGTERM), it lifts the write block on the old index and, once the alias has
//! moved, restores the new index's replicas, both retried until the engine accepts
//! them: an interrupted replay never leaves the live index blocked or thin.
//!
//! Messages replay cannot index are counted and reported, not dead-lettered again:
//! the live indexer dead-lettered them when they first arrived.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use tokio::sync::watch;

use crate::batch::{Batch, BatchLimits};
use crate::batch_writer::BatchWriter;
use crate::bulk::BulkWriter;
use crate::config::{Config, ReplayArgs};
use crate::consumer;
use crate::dead_letter::{self, PoisonCause, PoisonSink};
use crate::fetch::Flow;
use crate::index_admin::{
    TopicBinding, create_loading_index, delete_indexes, finish_loading, indexes_behind,
    live_documents, put_template, set_replicas, set_write_block, swap_alias,
};
use crate::metrics::Metrics;
use crate::offsets::{self, OffsetReader};
use crate::pipeline::{FetchPlan, LoopEnd, LoopError, Next, Pipeline};
use crate::progress::Progress;
use crate::retry::{Interrupted, Retry, RetryPolicy};
use crate::setup;

/// Longest wait for the next message while the end offsets are not reached yet.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Catch-up stops once a round has at most this many bulk requests' worth left: the
/// write block that follows then lasts about that long.
const CATCH_UP_BULKS: i64 = 2;

/// Catch-up rounds at most, for a topic written faster than replay reads.
const CATCH_UP_ROUNDS: usize = 10;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub alias: String,
    pub index: String,
    pub previous: Vec<String>,
    pub events: u64,
    /// Messages that could not be indexed, by reason (they are in the dead-letter
    /// topic already, from when they first arrived).
    pub dead_letters: BTreeMap<&'static str, u64>,
    pub duration_seconds: f64,
    pub events_per_second: f64,
    pub deleted_previous: bool,
}

/// The replay consumer's librdkafka settings.
fn replay_client_config(config: &Config) -> ClientConfig {
    let mut consumer_config = config.kafka.client_config("citypop-indexer-replay");
    offsets::configure_manual(&mut consumer_config);
    consumer::refetch_promptly(&mut consumer_config);
    consumer_config
        // Assigned, never subscribed and never committed: the group id only
        // names this reader in the broker's logs.
        .set("group.id", format!("{}.replay", config.consumer_group));
    consumer_config
}

pub async fn run(config: &Config, args: &ReplayArgs) -> anyhow::Result<()> {
    let client = config.engine.client()?;
    let alias = config.engine.index_alias.clone();
    let topic = config.kafka.topic.clone();
    let consumer: Arc<StreamConsumer> = Arc::new(
        replay_client_config(config)
            .create()
            .context("creating the replay consumer")?,
    );
    let policy = setup::cleanup_policy(&*setup::admin_client(config)?, &topic)
        .await
        .context("reading the topic's cleanup.policy, to tell whether it holds every city")?;
    let incomplete = !setup::is_compacted(&policy);
    if incomplete && !args.allow_incomplete && !args.dry_run {
        bail!(
            "topic {topic} has cleanup.policy {policy:?}, not \"compact\": cities not updated \
             within its retention are gone from it, so the new index would lack them; pass \
             --allow-incomplete to replay what is left"
        );
    }
    let previous = indexes_behind(&client, &alias).await?;
    let (abort, aborted) = watch::channel(false);
    tokio::spawn(async move {
        citypop_runtime::shutdown_signal().await;
        tracing::warn!(
            "stopping the replay; the old index is left writable and the serving index \
             keeps its replicas, which may take retries while the engine is unreachable"
        );
        let _ = abort.send(true);
    });
    let offsets = OffsetReader::new(&config.kafka)?;
    // Offsets are read again at every step; a broker restart in between is waited
    // out like an engine outage, not turned into a failed replay.
    let reads = Retry::new(config.retry, aborted.clone());
    let start_marks = offsets::watermarks_retried(&offsets, &topic, &reads).await?;
    let index = format!("{alias}-{}", chrono::Utc::now().format("%Y%m%dt%H%M%S%3f"));
    let total: i64 = start_marks.values().map(|(low, high)| high - low).sum();

    if args.dry_run {
        println!("replay plan (dry run, nothing changed):");
        println!(
            "  topic {topic}: {} partitions, {total} events to read",
            start_marks.len()
        );
        for (partition, (low, high)) in &start_marks {
            println!("    partition {partition}: offsets {low}..{high}");
        }
        if incomplete {
            println!(
                "  cleanup.policy {policy:?}, not \"compact\": the topic may have lost cities; {}",
                if args.allow_incomplete {
                    "replayed anyway (--allow-incomplete)"
                } else {
                    "refused without --allow-incomplete"
                }
            );
        }
        println!("  new index {index} (replicas 0 and refresh off while loading)");
        println!(
            "  alias {alias} moves from [{}] to {index}",
            previous.join(", ")
        );
        if args.delete_old {
            println!("  then delete [{}]", previous.join(", "));
        }
        return Ok(());
    }

    let binding = TopicBinding {
        partitions: Some(start_marks.len() as i32),
        topic_id: offsets.topic_id(&topic).await?,
    };
    put_template(&client, &alias, &config.index, &binding).await?;
    create_loading_index(&client, &index).await?;
    tracing::info!(%index, %alias, events = total, "replay started");

    let started = Instant::now();
    let metrics = Arc::new(Metrics::register(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let mut replay = Replay {
        consumer: consumer.clone(),
        offsets: offsets.clone(),
        reads: reads.clone(),
        writer: BatchWriter::new(
            Arc::new(crate::codec(config.schema_dir.as_deref())?),
            BulkWriter::new(client.clone(), index.clone()),
            NotIndexed::default(),
            Retry::new(config.retry, aborted.clone()),
            metrics,
            config.bulk,
        ),
        limits: config.batch,
        progress: Progress::new(total as u64),
        next: start_marks.iter().map(|(&p, &(low, _))| (p, low)).collect(),
        events: 0,
        stop: aborted.clone(),
    };
    offsets::assign(consumer.as_ref(), &topic, &replay.next)?;

    let first_ends = start_marks
        .iter()
        .map(|(&p, &(_, high))| (p, high))
        .collect();
    if let Err(error) = replay.read_until(&first_ends).await {
        // Nothing reads the new index yet; leave no half-built index behind.
        let discarded = discard(&client, &index).await;
        return Err(error.context(format!(
            "replay stopped before the alias swap; the alias was not touched, {discarded}"
        )));
    }

    tracing::debug!(events = replay.events, "start end offsets reached");
    let swapped = async {
        replay.catch_up(&topic).await?;
        tracing::debug!(
            events = replay.events,
            "caught up, blocking writes to the old index"
        );
        set_write_block(&client, &previous, true).await?;
        let frozen = offsets::end_offsets_retried(&offsets, &topic, &reads).await?;
        replay.read_until(&frozen).await?;
        tracing::debug!(
            events = replay.events,
            "old index frozen and read to its end"
        );
        finish_loading(&client, &index).await?;
        let not_indexed: u64 = replay.writer.poison_sink().counts().values().sum();
        compare_documents(&client, &previous, &index, not_indexed, args.force).await?;
        interrupted(&aborted)?;
        swap_alias(&client, &alias, &previous, &index).await
    }
    .await;
    // Whatever happened, the live indexer must be able to write again; and when the
    // swap's answer was lost, the alias itself says whether it happened.
    let must_finish = RetryPolicy {
        max_attempts: 0,
        ..config.retry
    };
    until_done(
        must_finish,
        "lifting the write block on the old index",
        || set_write_block(&client, &previous, false),
    )
    .await;
    if let Err(error) = swapped {
        let serving = until_done(must_finish, "reading the alias", || {
            indexes_behind(&client, &alias)
        })
        .await;
        if serving != [index.clone()] {
            let discarded = discard(&client, &index).await;
            return Err(error.context(format!(
                "replay stopped before the alias swap; the old index serves and takes \
                 writes, {discarded}"
            )));
        }
        tracing::warn!(%error, "the swap's answer was lost, but the alias moved");
    }
    tracing::info!(%alias, %index, "alias swapped");

    // From here the new index serves: whatever happens, it gets its replicas back.
    let read_on = async {
        let second_ends = offsets::end_offsets_retried(&offsets, &topic, &reads).await?;
        let more: i64 = second_ends
            .iter()
            .map(|(p, end)| (end - first_ends.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        replay.progress.grow(more as u64);
        replay.read_until(&second_ends).await
    }
    .await;
    replay.progress.finish();
    until_done(
        must_finish,
        "restoring the replicas of the new index",
        || set_replicas(&client, &index, config.index.replicas),
    )
    .await;
    read_on.context(
        "reading on after the alias swap; the new index serves with its replicas, and the \
         live indexer writes what was left",
    )?;
    if args.delete_old && !previous.is_empty() {
        delete_indexes(&client, &previous).await?;
    }

    let duration = started.elapsed().as_secs_f64();
    let summary = Summary {
        alias,
        index,
        previous,
        events: replay.events,
        dead_letters: replay.writer.poison_sink().counts(),
        duration_seconds: duration,
        events_per_second: replay.events as f64 / duration.max(1e-9),
        deleted_previous: args.delete_old,
    };
    print_summary(&summary, args.json)
}

/// Deletes the half-built new index; says what became of it.
async fn discard(client: &elasticsearch::Elasticsearch, index: &str) -> String {
    match delete_indexes(client, &[index.to_owned()]).await {
        Ok(()) => "the new index was deleted".to_owned(),
        Err(error) => format!("the new index {index} is left behind ({error:#}): delete it"),
    }
}

/// Fails once the replay was told to stop.
fn interrupted(aborted: &watch::Receiver<bool>) -> anyhow::Result<()> {
    if *aborted.borrow() {
        bail!("interrupted");
    }
    Ok(())
}

/// Retries a step that must not be left undone (lifting the write block,
/// restoring replicas) until it succeeds: neither a signal nor the retry limit ends
/// it, since giving up would leave the live index damaged.
async fn until_done<T, Fut>(policy: RetryPolicy, what: &str, mut attempt: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let retry = Retry::without_abort(policy);
    loop {
        // Without an abort signal and with no attempt limit only success ends the
        // retries; the loop is there for the type's sake.
        if let Ok(done) = retry
            .run(what, &mut attempt, |_: &anyhow::Error, _| {})
            .await
        {
            return done;
        }
    }
}

/// Refuses a new index with fewer live documents than the old one beyond what
/// replay could not index: the topic lost events (retention, deleted records) and
/// the swap would lose cities.
async fn compare_documents(
    client: &elasticsearch::Elasticsearch,
    previous: &[String],
    index: &str,
    not_indexed: u64,
    force: bool,
) -> anyhow::Result<()> {
    let old = live_documents(client, previous).await?;
    let new = live_documents(client, &[index.to_owned()]).await?;
    if new + not_indexed >= old {
        return Ok(());
    }
    let missing = old - new - not_indexed;
    if force {
        tracing::warn!(
            old,
            new,
            not_indexed,
            missing,
            "fewer documents, swapping as forced"
        );
        return Ok(());
    }
    bail!(
        "the new index {index} holds {new} live documents, [{}] {old}, and only {not_indexed} \
         messages could not be indexed: {missing} cities would be lost (the topic no longer \
         holds their events); pass --force to swap anyway",
        previous.join(", ")
    )
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    let not_indexed: u64 = summary.dead_letters.values().sum();
    let reasons = dead_letter::counts_by_reason(&summary.dead_letters);
    println!(
        "replay done: {} events in {:.1} s ({:.0} events/s); {not_indexed} could not be indexed{}",
        summary.events,
        summary.duration_seconds,
        summary.events_per_second,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
    );
    println!(
        "alias {} now on {} (was [{}]{})",
        summary.alias,
        summary.index,
        summary.previous.join(", "),
        if summary.deleted_previous {
            ", deleted"
        } else {
            ""
        }
    );
    Ok(())
}

struct Replay {
    consumer: Arc<StreamConsumer>,
    offsets: OffsetReader,
    reads: Retry,
    writer: BatchWriter<BulkWriter, NotIndexed>,
    limits: BatchLimits,
    progress: Progress,
    /// Per partition, the next offset still to read.
    next: BTreeMap<i32, i64>,
    events: u64,
    stop: watch::Receiver<bool>,
}

impl Replay {
    /// Reads to fresh end offsets until the gap to the live end is small.
    async fn catch_up(&mut self, topic: &str) -> anyhow::Result<()> {
        for _ in 0..CATCH_UP_ROUNDS {
            let ends = offsets::end_offsets_retried(&self.offsets, topic, &self.reads).await?;
            let left: i64 = ends
                .iter()
                .map(|(p, end)| (end - self.next.get(p).copied().unwrap_or(0)).max(0))
                .sum();
            self.progress.grow(left as u64);
            if left <= CATCH_UP_BULKS * self.writer.limits().documents as i64 {
                return Ok(());
            }
            self.read_until(&ends).await?;
        }
        Ok(())
    }

    /// Reads every partition up to `ends`, writing batches while the next one is
    /// gathered.
    async fn read_until(&mut self, ends: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let pipeline = Pipeline::new(&self.consumer, &self.writer, self.limits, Gauge::default());
        let mut plan = ReadToEnds {
            ends,
            next: &mut self.next,
        };
        // Replay never pauses: a failing engine only slows its writes.
        let (_always, flowing) = watch::channel(Flow::Flowing);
        let (events, progress) = (&mut self.events, &mut self.progress);
        let ended = pipeline
            .run(&mut plan, &flowing, self.stop.clone(), |batch| {
                *events += batch.len() as u64;
                progress.advance(batch.len() as u64);
            })
            .await;
        match ended {
            Ok(LoopEnd::Drained) => Ok(()),
            Ok(LoopEnd::Stopped) | Err(LoopError::Write(Interrupted::Aborted)) => {
                bail!("interrupted")
            }
            Err(LoopError::Write(error)) => Err(error.into()),
            Err(LoopError::Fetch(error)) => Err(error),
        }
    }
}

/// Replay's plan: read until every partition reached its end offset.
struct ReadToEnds<'a> {
    ends: &'a BTreeMap<i32, i64>,
    /// Per partition, the next offset still to read.
    next: &'a mut BTreeMap<i32, i64>,
}

impl FetchPlan for ReadToEnds<'_> {
    async fn before_batch(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<Next> {
        if *stop.borrow() {
            return Ok(Next::Stopped);
        }
        let behind = self
            .ends
            .iter()
            .any(|(p, end)| self.next.get(p).copied().unwrap_or(0) < *end);
        Ok(if behind { Next::Gather } else { Next::Drained })
    }

    fn first_message_within(&self) -> Option<Duration> {
        Some(READ_TIMEOUT)
    }

    fn gathered(&mut self, batch: &Batch) {
        for (partition, position) in batch.consumed.next_positions() {
            let next = self.next.entry(partition).or_insert(0);
            *next = (*next).max(position);
        }
    }
}

/// Replay's poison sink: nothing is dead-lettered again, only counted by reason.
#[derive(Default)]
struct NotIndexed {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl NotIndexed {
    fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl PoisonSink for NotIndexed {
    async fn take(&self, message: &OwnedMessage, cause: &PoisonCause) -> Result<(), Interrupted> {
        tracing::debug!(reason = cause.reason.as_str(), error = %cause.error, partition = message.partition(), offset = message.offset(), "not indexed");
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(cause.reason.as_str()).or_default() += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::tests::assert_refetches_within_a_batch_linger;

    /// Replay reads as fast as the engine takes writes; a full prefetch queue must
    /// not leave it with nothing to read (see the group consumer's test).
    #[test]
    fn a_full_prefetch_queue_is_fetched_again_within_a_batch_linger() {
        assert_refetches_within_a_batch_linger(replay_client_config);
    }
}
