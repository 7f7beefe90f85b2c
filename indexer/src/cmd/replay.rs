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
//! Messages replay cannot index are counted and reported, not dead-lettered again:
//! the live indexer dead-lettered them when they first arrived.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use elasticsearch::Elasticsearch;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesGetAliasParts, IndicesPutSettingsParts,
    IndicesRefreshParts,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::batch::BatchLimits;
use crate::config::{Config, ReplayArgs};
use crate::consume::{Gatherer, OffsetReader, handover};
use crate::decode::DeadLetterReason;
use crate::metrics::Metrics;
use crate::process::{Host, Interrupted, Processor};
use crate::setup;

/// Longest wait for the next message while the end offsets are not reached yet.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How often progress is logged when stderr is not a terminal.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

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

pub async fn run(config: &Config, args: &ReplayArgs) -> anyhow::Result<()> {
    let client = config.engine.client()?;
    let alias = config.engine.index_alias.clone();
    let topic = config.kafka.topic.clone();
    let consumer: Arc<StreamConsumer> = Arc::new(
        config
            .kafka
            .client_config("citypop-indexer-replay")
            // Assigned, never subscribed and never committed: the group id only
            // names this reader in the broker's logs.
            .set("group.id", format!("{}.replay", config.consumer_group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .context("creating the replay consumer")?,
    );
    let previous = indexes_behind(&client, &alias).await?;
    let offsets = OffsetReader::new(&config.kafka)?;
    let start_marks = offsets.watermarks(&topic).await?;
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

    let (abort, aborted) = watch::channel(false);
    tokio::spawn(async move {
        citypop_runtime::shutdown_signal().await;
        let _ = abort.send(true);
    });

    setup::put_template(&client, config).await?;
    create_loading_index(&client, &index).await?;
    tracing::info!(%index, %alias, events = total, "replay started");

    let started = Instant::now();
    let mut replay = Replay {
        consumer: consumer.clone(),
        offsets: offsets.clone(),
        processor: Processor::for_config(
            config,
            client.clone(),
            index.clone(),
            Arc::new(Metrics::register(
                &mut prometheus_client::registry::Registry::default(),
            )),
        )?,
        limits: config.batch_limits(),
        host: ReplayHost {
            abort: aborted.clone(),
            undecodable: Mutex::new(BTreeMap::new()),
        },
        progress: Progress::new(total as u64),
        next: start_marks.iter().map(|(&p, &(low, _))| (p, low)).collect(),
        events: 0,
        stop: aborted,
    };

    let mut assignment = TopicPartitionList::new();
    for (&partition, &(low, _)) in &start_marks {
        assignment.add_partition_offset(&topic, partition, Offset::Offset(low))?;
    }
    consumer.assign(&assignment)?;

    let first_ends = start_marks
        .iter()
        .map(|(&p, &(_, high))| (p, high))
        .collect();
    if let Err(error) = replay.read_until(&first_ends).await {
        // Nothing reads the new index yet; leave no half-built index behind.
        delete_indexes(&client, std::slice::from_ref(&index))
            .await
            .ok();
        return Err(
            error.context("replay stopped before the alias swap; the new index was deleted")
        );
    }

    tracing::debug!(events = replay.events, "start end offsets reached");
    let swapped = async {
        replay.catch_up(&topic).await?;
        tracing::debug!(
            events = replay.events,
            "caught up, blocking writes to the old index"
        );
        set_write_block(&client, &previous, true).await?;
        let frozen = offsets.end_offsets(&topic).await?;
        replay.read_until(&frozen).await?;
        tracing::debug!(
            events = replay.events,
            "old index frozen and read to its end"
        );
        finish_loading(&client, &index).await?;
        swap_alias(&client, &alias, &previous, &index).await
    }
    .await;
    // Whatever happened, the live indexer must be able to write again.
    let unblocked = set_write_block(&client, &previous, false).await;
    if let Err(error) = swapped {
        delete_indexes(&client, std::slice::from_ref(&index))
            .await
            .ok();
        return Err(
            error.context("replay stopped before the alias swap; the new index was deleted")
        );
    }
    unblocked?;
    tracing::info!(%alias, %index, "alias swapped");

    let second_ends = offsets.end_offsets(&topic).await?;
    let more: i64 = second_ends
        .iter()
        .map(|(p, end)| (end - first_ends.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    replay.progress.grow(more as u64);
    replay
        .read_until(&second_ends)
        .await
        .context("reading on after the alias swap (the alias already serves the new index)")?;
    replay.progress.finish();

    client
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&[&index]))
        .body(json!({"index": {"number_of_replicas": config.index_replicas}}))
        .send()
        .await?
        .error_for_status_code()
        .context("restoring the replicas of the new index")?;
    if args.delete_old && !previous.is_empty() {
        delete_indexes(&client, &previous).await?;
    }

    let duration = started.elapsed().as_secs_f64();
    let summary = Summary {
        alias,
        index,
        previous,
        events: replay.events,
        dead_letters: replay
            .host
            .undecodable
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        duration_seconds: duration,
        events_per_second: replay.events as f64 / duration.max(1e-9),
        deleted_previous: args.delete_old,
    };
    print_summary(&summary, args.json)
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    let not_indexed: u64 = summary.dead_letters.values().sum();
    let reasons: Vec<String> = summary
        .dead_letters
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
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
    processor: Processor,
    limits: BatchLimits,
    host: ReplayHost,
    progress: Progress,
    /// Per partition, the next offset still to read.
    next: BTreeMap<i32, i64>,
    events: u64,
    stop: watch::Receiver<bool>,
}

/// Catch-up stops once a round has at most this many bulk requests' worth left: the
/// write block that follows then lasts about that long.
const CATCH_UP_BULKS: i64 = 2;

/// Catch-up rounds at most, for a topic written faster than replay reads.
const CATCH_UP_ROUNDS: usize = 10;

impl Replay {
    /// Reads to fresh end offsets until the gap to the live end is small.
    async fn catch_up(&mut self, topic: &str) -> anyhow::Result<()> {
        for _ in 0..CATCH_UP_ROUNDS {
            let ends = self.offsets.end_offsets(topic).await?;
            let left: i64 = ends
                .iter()
                .map(|(p, end)| (end - self.next.get(p).copied().unwrap_or(0)).max(0))
                .sum();
            self.progress.grow(left as u64);
            if left <= CATCH_UP_BULKS * self.processor.bulk_limits.documents as i64 {
                return Ok(());
            }
            self.read_until(&ends).await?;
        }
        Ok(())
    }

    /// Reads every partition up to `ends`, writing batches while the next one is
    /// gathered.
    async fn read_until(&mut self, ends: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let (writer, mut batches) = handover();
        let (consumer, limits, stop, next) =
            (&self.consumer, &self.limits, &mut self.stop, &mut self.next);
        let codec = &self.processor.codec;
        let fetch = async move {
            let gatherer = Gatherer {
                consumer,
                codec,
                limits,
            };
            // Replay never pauses: a failing engine only slows its writes.
            let (_pause, never_paused) = watch::channel(false);
            let mut carried = Vec::new();
            while ends
                .iter()
                .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
            {
                let batch = tokio::time::timeout(READ_TIMEOUT, gatherer.gather(&mut carried, stop))
                    .await
                    .with_context(|| {
                        format!("no message within {READ_TIMEOUT:?} before the end offsets")
                    })?;
                let Some(mut batch) = batch else {
                    bail!("interrupted");
                };
                if !gatherer
                    .grow_until_wanted(&mut batch, &mut carried, &writer, &never_paused, stop)
                    .await
                {
                    bail!("interrupted");
                }
                for (partition, offset) in batch.highest_offsets() {
                    let next = next.entry(partition).or_insert(0);
                    *next = (*next).max(offset + 1);
                }
                if !writer.send(batch).await {
                    break;
                }
            }
            Ok(())
        };
        let (events, progress) = (&mut self.events, &mut self.progress);
        let process = self
            .processor
            .write_batches(&self.host, &mut batches, |batch| {
                *events += batch.len() as u64;
                progress.advance(batch.len() as u64);
            });
        tokio::pin!(fetch, process);
        let processed = tokio::select! {
            processed = &mut process => {
                // Writing ended cleanly only because fetching ended: take its result
                // (an interruption or a read timeout) too.
                if processed.is_ok() {
                    fetch.await?;
                }
                processed
            }
            fetched = &mut fetch => {
                fetched?;
                process.await
            }
        };
        match processed {
            Ok(()) => Ok(()),
            Err(Interrupted::Aborted) => bail!("interrupted"),
            Err(error) => Err(error.into()),
        }
    }
}

/// Replay's side of a batch: nothing is dead-lettered again, only counted.
struct ReplayHost {
    abort: watch::Receiver<bool>,
    undecodable: Mutex<BTreeMap<&'static str, u64>>,
}

impl Host for ReplayHost {
    fn engine_writable(&self, writable: bool) {
        if !writable {
            tracing::warn!("the engine refuses writes; replay retries");
        }
    }

    fn abort_signal(&self) -> &watch::Receiver<bool> {
        &self.abort
    }

    async fn poison(
        &self,
        message: &OwnedMessage,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<(), Interrupted> {
        tracing::debug!(reason = reason.as_str(), %error, partition = message.partition(), offset = message.offset(), "not indexed");
        let mut counts = self.undecodable.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(reason.as_str()).or_default() += 1;
        Ok(())
    }
}

/// Progress on stderr: a bar on a terminal, a log line every few seconds elsewhere.
struct Progress {
    bar: ProgressBar,
    interactive: bool,
    last_log: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let interactive = std::io::stderr().is_terminal();
        let bar = if interactive {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} events  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        };
        Self {
            bar,
            interactive,
            last_log: Instant::now(),
        }
    }

    fn grow(&self, more: u64) {
        self.bar.inc_length(more);
    }

    fn advance(&mut self, events: u64) {
        self.bar.inc(events);
        if !self.interactive && self.last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            self.last_log = Instant::now();
            tracing::info!(
                done = self.bar.position(),
                total = self.bar.length().unwrap_or(0),
                rate = format!("{:.0}/s", self.bar.per_sec()),
                eta = ?self.bar.eta(),
                "replay progress"
            );
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The indexes the alias points to now; none when it does not exist yet.
async fn indexes_behind(client: &Elasticsearch, alias: &str) -> anyhow::Result<Vec<String>> {
    let response = client
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[alias]))
        .send()
        .await?;
    if response.status_code() == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    let body: serde_json::Value = response
        .error_for_status_code()
        .context("reading the alias")?
        .json()
        .await?;
    Ok(body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default())
}

/// Loading settings: no replicas to copy to and no refreshes to pay for while
/// nothing reads the index.
async fn create_loading_index(client: &Elasticsearch, index: &str) -> anyhow::Result<()> {
    client
        .indices()
        .create(IndicesCreateParts::Index(index))
        .body(json!({"settings": {"index": {"number_of_replicas": 0, "refresh_interval": "-1"}}}))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| format!("creating index {index}"))?;
    Ok(())
}

/// Makes everything loaded searchable and turns refresh back on before any read can
/// reach the index.
async fn finish_loading(client: &Elasticsearch, index: &str) -> anyhow::Result<()> {
    client
        .indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await?
        .error_for_status_code()
        .context("refreshing the new index")?;
    client
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&[index]))
        .body(json!({"index": {"refresh_interval": null}}))
        .send()
        .await?
        .error_for_status_code()
        .context("turning refresh back on")?;
    Ok(())
}

/// Blocks (or allows again) writes to `indexes`. The live indexer treats the block
/// as transient and retries, so nothing it writes is lost.
async fn set_write_block(
    client: &Elasticsearch,
    indexes: &[String],
    blocked: bool,
) -> anyhow::Result<()> {
    if indexes.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
    let value = if blocked {
        json!(true)
    } else {
        serde_json::Value::Null
    };
    client
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&names))
        .body(json!({"index": {"blocks": {"write": value}}}))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| {
            format!(
                "setting the write block of {} to {blocked}",
                names.join(", ")
            )
        })?;
    Ok(())
}

/// One `_aliases` call: the alias leaves every old index and joins the new one at
/// the same instant, for reads and writes alike.
async fn swap_alias(
    client: &Elasticsearch,
    alias: &str,
    previous: &[String],
    index: &str,
) -> anyhow::Result<()> {
    let mut actions: Vec<serde_json::Value> = previous
        .iter()
        .map(|old| json!({"remove": {"index": old, "alias": alias}}))
        .collect();
    actions.push(json!({"add": {"index": index, "alias": alias}}));
    client
        .indices()
        .update_aliases()
        .body(json!({"actions": actions}))
        .send()
        .await?
        .error_for_status_code()
        .context("swapping the alias")?;
    Ok(())
}

async fn delete_indexes(client: &Elasticsearch, indexes: &[String]) -> anyhow::Result<()> {
    let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
    client
        .indices()
        .delete(IndicesDeleteParts::Index(&names))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| format!("deleting {}", names.join(", ")))?;
    Ok(())
}
