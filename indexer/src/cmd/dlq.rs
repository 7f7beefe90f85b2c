//! `indexer dlq list` and `indexer dlq redrive`.
//!
//! Redrive never writes old data over new. A republished event gets a new offset,
//! which becomes its version, so an old dead letter republished after a newer event
//! of its key was indexed would put the old content back, and compaction would then
//! delete the newer event from the topic for good. So redrive first waits until the
//! live indexer's group has committed up to the end offsets taken at its start (every
//! earlier event is then indexed, stale, or dead-lettered), learns each key's newest
//! pending dead letter in a pass that keeps keys and offsets only, then streams the
//! dead letters and republishes one only if it is its key's newest and the index
//! holds an older version of the key from the same partition ([`Redriver`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use elasticsearch::GetParts;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::config::{Config, DlqListArgs, DlqRedriveArgs};
use crate::dead_letter::{self, DeadLetterReason};
use crate::offsets::{self, OffsetReader};
use crate::retry::Retry;

pub use crate::dead_letter::HEADER_REDRIVEN_FROM;

/// How long reading to the end may wait for one message before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub reason: String,
    pub error: String,
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub key: Option<String>,
    pub failed_at: String,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
}

impl DeadLetter {
    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let header = |name: &str| header_text(message, name).unwrap_or_default();
        Self {
            reason: header(dead_letter::HEADER_REASON),
            error: header(dead_letter::HEADER_ERROR),
            topic: header(dead_letter::HEADER_TOPIC),
            partition: header(dead_letter::HEADER_PARTITION).parse().ok(),
            offset: header(dead_letter::HEADER_OFFSET).parse().ok(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            failed_at: header(dead_letter::HEADER_FAILED_AT),
            dlq_partition: message.partition(),
            dlq_offset: message.offset(),
        }
    }
}

fn header_text(message: &impl Message, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A consumer that reads by assignment. `group` is only used by redrive, to keep
/// its position; nothing is committed automatically.
fn reader(config: &Config, group: &str) -> anyhow::Result<Arc<StreamConsumer>> {
    let mut client_config = config.kafka.client_config("citypop-indexer-dlq-admin");
    offsets::configure_manual(&mut client_config);
    let consumer: StreamConsumer = client_config
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the dead-letter reader")?;
    Ok(Arc::new(consumer))
}

/// The next message from `recv`, riding out consume errors: librdkafka reports a
/// broker it cannot reach (one restarting, say) as an error on the consumer's queue
/// while it reconnects, and the messages follow once the broker is back. The live
/// indexer logs such errors and goes on; so do the commands. Fails only when no
/// message has come within `wait`, naming the last error if there was one.
async fn next_message<M, Fut>(
    mut recv: impl FnMut() -> Fut,
    topic: &str,
    wait: Duration,
) -> anyhow::Result<M>
where
    Fut: Future<Output = KafkaResult<M>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, recv()).await {
            Ok(Ok(message)) => return Ok(message),
            Ok(Err(error)) => {
                tracing::warn!(topic, %error, "kafka consume error, still waiting for the next message");
                last_error = Some(error);
            }
            Err(_) => {
                let gave_up = format!("no message from {topic} within {wait:?} before its end");
                return Err(match last_error {
                    Some(error) => anyhow::Error::new(error).context(gave_up),
                    None => anyhow::anyhow!(gave_up),
                });
            }
        }
    }
}

/// Reads every partition from `start` (a partition's committed offset; `None` reads
/// from its beginning) up to the end offsets taken now, handing each message to
/// `each`. Returns the end offsets it read to.
async fn read_to_end(
    config: &Config,
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    start: impl Fn(i32) -> Option<i64>,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let marks = offsets::watermarks_retried(
        &OffsetReader::new(&config.kafka)?,
        topic,
        &offset_reads(config),
    )
    .await?;
    let ends = offsets::ends(&marks);
    // Per partition, the next offset still to read.
    let mut next: BTreeMap<i32, i64> = marks
        .iter()
        .map(|(&p, &(low, _))| (p, start(p).unwrap_or(low).max(low)))
        .collect();
    offsets::assign(consumer.as_ref(), topic, &next)?;
    while next.iter().any(|(p, n)| *n < ends[p]) {
        let message = next_message(|| consumer.recv(), topic, READ_TIMEOUT).await?;
        let partition = message.partition();
        if message.offset() < ends.get(&partition).copied().unwrap_or(0) {
            each(&message);
        }
        if let Some(n) = next.get_mut(&partition) {
            *n = (*n).max(offsets::next_after(message.offset()));
        }
    }
    Ok(ends)
}

pub async fn list(config: &Config, args: &DlqListArgs) -> anyhow::Result<()> {
    let topic = config.dlq_topic();
    let consumer = reader(config, &format!("{}.dlq-list", config.consumer_group))?;
    let mut letters = Vec::new();
    read_to_end(
        config,
        &consumer,
        &topic,
        |_| None,
        |message| {
            let letter = DeadLetter::from_message(message);
            if args.reason.is_none_or(|r| r.as_str() == letter.reason) {
                letters.push(letter);
            }
        },
    )
    .await?;
    letters.sort_by(|a, b| a.failed_at.cmp(&b.failed_at));
    let shown = &letters[letters.len().saturating_sub(args.limit)..];
    if args.json {
        println!("{}", serde_json::to_string_pretty(shown)?);
        return Ok(());
    }
    println!(
        "{} dead letters in {topic}, showing {}",
        letters.len(),
        shown.len()
    );
    for letter in shown {
        println!(
            "{}  {:<8}  {}/{}/{}  key={}  {}",
            letter.failed_at,
            letter.reason,
            letter.topic,
            letter.partition.map_or("?".into(), |p| p.to_string()),
            letter.offset.map_or("?".into(), |o| o.to_string()),
            letter.key.as_deref().unwrap_or("(none)"),
            letter.error,
        );
    }
    Ok(())
}

/// What one redrive did, per reason.
#[derive(Debug, Default, Serialize)]
pub struct RedriveCounts {
    pub redriven: BTreeMap<&'static str, u64>,
    /// Not republished: the key has a newer event in the topic (indexed, or a newer
    /// dead letter), or this very event is indexed already.
    pub superseded: u64,
    /// Not republished again: a second copy of a dead letter (same origin).
    pub duplicates: u64,
    /// Not republished: the origin cannot be compared (another topic, no origin
    /// headers, or the key's document is on another partition).
    pub skipped: u64,
    pub examined: u64,
}

/// Where a dead letter came from on the main topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// What the index holds for a key: the version (origin offset) and the partition
/// of the event it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    pub version: i64,
    pub partition: i32,
}

/// What becomes of one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Republish,
    Superseded,
    Duplicate,
    Skip(&'static str),
}

/// The newest pending dead letter of a key, and whether this run republished it.
#[derive(Debug, Clone, Copy)]
struct Newest {
    origin: Origin,
    republished: bool,
}

/// Decides dead letters one at a time. It knows, per key, the newest origin among
/// the dead letters not yet redriven (a first pass over the dead-letter topic
/// gathers them: keys and offsets only, never payloads), so only a key's newest
/// dead letter is ever republished, once; and it asks the index whether a newer
/// event of the key is indexed.
#[derive(Debug, Default)]
pub struct Redriver {
    newest: HashMap<Vec<u8>, Newest>,
}

impl Redriver {
    /// A dead letter seen in the first pass.
    pub fn pending(&mut self, key: &[u8], origin: Origin) {
        let entry = self.newest.entry(key.to_vec()).or_insert(Newest {
            origin,
            republished: false,
        });
        if origin.offset > entry.origin.offset {
            entry.origin = origin;
        }
    }

    /// Decides one dead letter of `key` from `origin`, given what the index holds
    /// for the key now. A `Republish` is remembered: a later copy is a duplicate.
    pub fn decide(&mut self, key: &[u8], origin: Origin, indexed: Option<Indexed>) -> Decision {
        let Some(newest) = self.newest.get_mut(key) else {
            return Decision::Skip("not seen in the first pass");
        };
        if newest.origin.partition != origin.partition {
            return Decision::Skip("its key has dead letters on two partitions");
        }
        if origin.offset < newest.origin.offset {
            return Decision::Superseded;
        }
        if newest.republished {
            return Decision::Duplicate;
        }
        match indexed {
            // The partition count changed since: versions are not comparable.
            Some(doc) if doc.partition != origin.partition => {
                Decision::Skip("the indexed document comes from another partition")
            }
            // Newer, or this very event (a re-delivery indexed it after a fix).
            Some(doc) if doc.version >= origin.offset => Decision::Superseded,
            _ => {
                newest.republished = true;
                Decision::Republish
            }
        }
    }
}

/// The origin of a dead letter on `topic`, from its headers.
fn origin_of(message: &impl Message, topic: &str) -> Option<Origin> {
    if header_text(message, dead_letter::HEADER_TOPIC)? != topic {
        return None;
    }
    Some(Origin {
        partition: header_text(message, dead_letter::HEADER_PARTITION)?
            .parse()
            .ok()?,
        offset: header_text(message, dead_letter::HEADER_OFFSET)?
            .parse()
            .ok()?,
    })
}

/// How often redrive commits its position while it works, so a crash resumes
/// instead of starting over.
const REDRIVE_COMMIT_EVERY: u64 = 100;

pub async fn redrive(config: &Config, args: &DlqRedriveArgs) -> anyhow::Result<()> {
    let dlq_topic = config.dlq_topic();
    let topic = &config.kafka.topic;
    let producer: FutureProducer = config
        .kafka
        .client_config("citypop-indexer-redrive")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the redrive producer")?;
    let client = config.engine.client()?;
    let offsets_reader = OffsetReader::new(&config.kafka)?;
    wait_for_live_indexer(config, &offsets_reader, args.wait_for_indexer).await?;
    let reasons = args
        .reason
        .map_or(DeadLetterReason::ALL.to_vec(), |r| vec![r]);

    // Each reason has a group of its own (a dead letter has exactly one reason, so
    // it can only ever be redriven by its reason's group, once). Every letter below
    // the lowest of their positions was handled by its own group.
    let mut positions = BTreeMap::new();
    for reason in DeadLetterReason::ALL {
        let consumer = reader(config, &redrive_group(config, reason))?;
        positions.insert(
            reason.as_str(),
            committed_offsets(config, &consumer, &dlq_topic).await?,
        );
    }
    let mut redriver = Redriver::default();
    let scan = reader(config, &format!("{}.dlq-scan", config.consumer_group))?;
    read_to_end(
        config,
        &scan,
        &dlq_topic,
        |partition| {
            positions
                .values()
                .map(|p| p.get(&partition).copied())
                .min()
                .flatten()
        },
        |message| {
            if let (Some(key), Some(origin)) = (message.key(), origin_of(message, topic)) {
                redriver.pending(key, origin);
            }
        },
    )
    .await?;

    let mut counts = RedriveCounts::default();
    for reason in reasons {
        let group = redrive_group(config, reason);
        let consumer = reader(config, &group)?;
        let marks =
            offsets::watermarks_retried(&offsets_reader, &dlq_topic, &offset_reads(config)).await?;
        let ends = offsets::ends(&marks);
        let committed = &positions[reason.as_str()];
        let mut next: BTreeMap<i32, i64> = marks
            .iter()
            .map(|(&p, &(low, _))| (p, committed.get(&p).copied().unwrap_or(low).max(low)))
            .collect();
        offsets::assign(consumer.as_ref(), &dlq_topic, &next)?;
        let mut since_commit = 0;
        while next.iter().any(|(p, n)| *n < ends[p]) {
            let message = next_message(|| consumer.recv(), &dlq_topic, READ_TIMEOUT)
                .await?
                .detach();
            let partition = message.partition();
            if message.offset() >= ends.get(&partition).copied().unwrap_or(0) {
                continue;
            }
            if let Some(n) = next.get_mut(&partition) {
                *n = (*n).max(offsets::next_after(message.offset()));
            }
            counts.examined += 1;
            since_commit += 1;
            if !args.dry_run && since_commit > REDRIVE_COMMIT_EVERY {
                since_commit = 1;
                // Everything before this dead letter is acknowledged or decided.
                let mut done = next.clone();
                done.insert(partition, message.offset());
                commit(config, &consumer, &dlq_topic, &done, &group).await?;
            }
            if header_text(&message, dead_letter::HEADER_REASON).as_deref() != Some(reason.as_str())
            {
                continue;
            }
            let stub = header_text(&message, dead_letter::HEADER_STUB).is_some();
            let decision = match (message.key(), origin_of(&message, topic)) {
                // A stub has no payload: republished, it would be a tombstone and
                // delete the city. Its event is read from the main topic instead.
                _ if stub => Decision::Skip("a stub, without its payload"),
                (Some(key), Some(origin)) => {
                    let indexed = indexed_retried(config, &client, key).await?;
                    redriver.decide(key, origin, indexed)
                }
                (_, None) => Decision::Skip("no origin on this topic"),
                // A message without a key cannot overwrite any city.
                (None, Some(_)) => Decision::Republish,
            };
            match decision {
                Decision::Republish => {
                    if !args.dry_run {
                        republish(&producer, topic, &dlq_topic, &message).await?;
                    }
                    *counts.redriven.entry(reason.as_str()).or_default() += 1;
                }
                Decision::Superseded => counts.superseded += 1,
                Decision::Duplicate => counts.duplicates += 1,
                Decision::Skip(why) => {
                    tracing::warn!(
                        dlq_partition = partition,
                        dlq_offset = message.offset(),
                        why,
                        "dead letter not redriven"
                    );
                    counts.skipped += 1;
                }
            }
        }
        if !args.dry_run {
            commit(config, &consumer, &dlq_topic, &next, &group).await?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
        return Ok(());
    }
    let total: u64 = counts.redriven.values().sum();
    let verb = if args.dry_run {
        "would redrive"
    } else {
        "redriven"
    };
    let detail = dead_letter::counts_by_reason(&counts.redriven);
    println!(
        "{verb} {total} dead letters from {dlq_topic} to {topic} ({}); {} superseded, {} \
         duplicates, {} skipped; {} examined",
        detail.join(", "),
        counts.superseded,
        counts.duplicates,
        counts.skipped,
        counts.examined
    );
    Ok(())
}

fn redrive_group(config: &Config, reason: DeadLetterReason) -> String {
    format!("{}.redrive.{}", config.consumer_group, reason.as_str())
}

async fn commit(
    config: &Config,
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
    group: &str,
) -> anyhow::Result<()> {
    // Committing the same positions twice is harmless, so a failed commit (the
    // group's coordinator moving to another broker) is simply made again.
    retried(
        config,
        &format!("committing the redrive position of {group}"),
        || offsets::commit_positions(consumer.clone(), topic, positions),
    )
    .await
}

/// Waits until the live indexer's group has committed up to the main topic's end
/// offsets taken now: then every event written before the redrive started is
/// indexed, skipped as stale, or dead-lettered, and the index can tell whether a
/// dead letter's key has a newer event.
async fn wait_for_live_indexer(
    config: &Config,
    offsets_reader: &OffsetReader,
    timeout: Duration,
) -> anyhow::Result<()> {
    let topic = &config.kafka.topic;
    let marks = offsets::watermarks_retried(offsets_reader, topic, &offset_reads(config)).await?;
    let live = reader(config, &config.consumer_group)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let committed = retried(
            config,
            "reading the live indexer's committed offsets",
            || offsets::committed_positions(live.clone(), topic, marks.keys().copied()),
        )
        .await?;
        let behind: Vec<String> = marks
            .iter()
            .filter(|(p, (low, high))| {
                // An empty partition has nothing to wait for.
                low < high && committed.get(p).is_none_or(|c| c < high)
            })
            .map(|(p, (_, high))| {
                format!(
                    "{p}: {} of {high}",
                    committed.get(p).map_or("none".into(), |c| c.to_string())
                )
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the live indexer (group {}) has not committed up to the end of {topic} within \
                 {timeout:?} (partition: committed of end: {}); redrive needs it caught up to \
                 tell which dead letters are superseded: is it running?",
                config.consumer_group,
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The version and partition the index holds for `key`, read in real time from
/// every index behind the alias (the newest wins).
async fn indexed(
    client: &elasticsearch::Elasticsearch,
    alias: &str,
    key: &[u8],
) -> anyhow::Result<Option<Indexed>> {
    let id = String::from_utf8_lossy(key);
    let mut newest: Option<Indexed> = None;
    for index in crate::index_admin::indexes_behind(client, alias).await? {
        let response = client
            .get(GetParts::IndexId(&index, &id))
            ._source_includes(&["version", "partition"])
            .send()
            .await?;
        if response.status_code() == elasticsearch::http::StatusCode::NOT_FOUND {
            continue;
        }
        let body: serde_json::Value = response
            .error_for_status_code()
            .with_context(|| format!("reading {id} from {index}"))?
            .json()
            .await?;
        let (Some(version), Some(partition)) = (
            body["_source"]["version"].as_i64(),
            body["_source"]["partition"].as_i64(),
        ) else {
            continue;
        };
        let doc = Indexed {
            version,
            partition: partition as i32,
        };
        if newest.is_none_or(|n| n.version < doc.version) {
            newest = Some(doc);
        }
    }
    Ok(newest)
}

/// Offset reads of a command, retried through a broker restart under the retry
/// settings (see [`offsets::watermarks_retried`]); Ctrl-C ends the command as usual.
fn offset_reads(config: &Config) -> Retry {
    Retry::without_abort(config.retry)
}

/// A Kafka call of a command, retried as the offset reads are: while a broker
/// restarts, the group coordinator and partition leaders it held move to another
/// broker, and a call made meanwhile fails once and then works.
async fn retried<T, Fut>(
    config: &Config,
    what: &str,
    mut call: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let attempt = || {
        let call = call();
        // The whole chain, so the log and a final error name the cause.
        async move { call.await.map_err(|error| format!("{error:#}")) }
    };
    Ok(offset_reads(config).run(what, attempt, |_, _| {}).await?)
}

/// [`indexed`], read again while the engine does not answer or answers that it
/// cannot serve now (429, 5xx): a node restarting or a cut path is waited out under
/// the retry settings, as the live indexer waits it out. Any other answer (a refused
/// credential, a bad request) would come again and ends the command at once.
async fn indexed_retried(
    config: &Config,
    client: &elasticsearch::Elasticsearch,
    key: &[u8],
) -> anyhow::Result<Option<Indexed>> {
    let read = || async {
        match indexed(client, &config.engine.index_alias, key).await {
            Ok(found) => Ok(Ok(found)),
            Err(error) if engine_unavailable(&error) => Err(format!("{error:#}")),
            Err(error) => Ok(Err(error)),
        }
    };
    let what = format!("reading {} from the index", String::from_utf8_lossy(key));
    offset_reads(config).run(&what, read, |_, _| {}).await?
}

/// Whether an engine call failed for want of an engine that answers: no answer at
/// all (refused, cut, timed out), too many requests, or a server error.
fn engine_unavailable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<elasticsearch::Error>())
        .is_some_and(|error| {
            error.status_code().is_none_or(|status| {
                status.is_server_error()
                    || status == elasticsearch::http::StatusCode::TOO_MANY_REQUESTS
            })
        })
}

async fn committed_offsets(
    config: &Config,
    consumer: &Arc<StreamConsumer>,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let marks = offsets::watermarks_retried(
        &OffsetReader::new(&config.kafka)?,
        topic,
        &offset_reads(config),
    )
    .await?;
    retried(
        config,
        &format!("reading the committed offsets of {topic}"),
        || offsets::committed_positions(consumer.clone(), topic, marks.keys().copied()),
    )
    .await
}

/// The original key, value and headers go back to the main topic; the dead-letter
/// context is replaced by where it came from.
async fn republish(
    producer: &FutureProducer,
    topic: &str,
    dlq_topic: &str,
    message: &rdkafka::message::OwnedMessage,
) -> anyhow::Result<()> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original
            .iter()
            .filter(|h| !h.key.starts_with("citypop.dlq."))
        {
            headers = headers.insert(header);
        }
    }
    let origin = format!("{dlq_topic}/{}/{}", message.partition(), message.offset());
    headers = headers.insert(Header {
        key: HEADER_REDRIVEN_FROM,
        value: Some(&origin),
    });
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, READ_TIMEOUT)
        .await
        .map_err(|(error, _)| anyhow::anyhow!("republishing {origin} to {topic}: {error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Origin {
        Origin { partition, offset }
    }

    fn indexed(partition: i32, version: i64) -> Option<Indexed> {
        Some(Indexed { version, partition })
    }

    /// A fake consumer queue: answers in order, each after `gap` (librdkafka
    /// reports a broker it cannot reach once per reconnect attempt), then nothing.
    fn queue(
        gap: Duration,
        answers: Vec<KafkaResult<i64>>,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = KafkaResult<i64>>>> {
        let mut answers = answers.into_iter();
        move || {
            let answer = answers.next();
            Box::pin(async move {
                tokio::time::sleep(gap).await;
                match answer {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn broker_down() -> KafkaResult<i64> {
        Err(rdkafka::error::KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn reading_rides_out_a_broker_restart() {
        // The broker is away for 5 s; the message that follows is read.
        let answers = vec![broker_down(), broker_down(), broker_down(), Ok(7)];
        let message = next_message(queue(Duration::from_secs(1), answers), "t", READ_TIMEOUT)
            .await
            .expect("a consume error is not the end of the topic");
        assert_eq!(message, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_gives_up_when_nothing_comes_in_time_and_names_the_last_error() {
        let answers = (0..100).map(|_| broker_down()).collect();
        let started = tokio::time::Instant::now();
        let error = next_message(queue(Duration::from_secs(1), answers), "t", READ_TIMEOUT)
            .await
            .expect_err("no message ever comes");
        assert_eq!(started.elapsed(), READ_TIMEOUT);
        let text = format!("{error:#}");
        assert!(text.contains("no message from t within 30s"), "{text}");
        assert!(text.contains("BrokerTransportFailure"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn reading_gives_up_when_the_queue_is_silent() {
        let error = next_message(queue(Duration::from_secs(1), vec![]), "t", READ_TIMEOUT)
            .await
            .expect_err("no message ever comes");
        assert_eq!(
            format!("{error:#}"),
            "no message from t within 30s before its end"
        );
    }

    #[test]
    fn a_dead_letter_whose_key_has_a_newer_indexed_event_is_superseded() {
        let mut redriver = Redriver::default();
        redriver.pending(b"paris", at(3, 100));
        assert_eq!(
            redriver.decide(b"paris", at(3, 100), indexed(3, 150)),
            Decision::Superseded
        );
        // This very event, indexed after all (a re-delivery after the fix).
        let mut redriver = Redriver::default();
        redriver.pending(b"paris", at(3, 100));
        assert_eq!(
            redriver.decide(b"paris", at(3, 100), indexed(3, 100)),
            Decision::Superseded
        );
    }

    #[test]
    fn only_the_newest_dead_letter_of_a_key_is_republished_and_only_once() {
        let mut redriver = Redriver::default();
        // In the dead-letter topic out of origin order, and one written twice.
        for origin in [at(1, 20), at(1, 10), at(1, 20)] {
            redriver.pending(b"lyon", origin);
        }
        let older = indexed(1, 5);
        assert_eq!(
            redriver.decide(b"lyon", at(1, 20), older),
            Decision::Republish
        );
        assert_eq!(
            redriver.decide(b"lyon", at(1, 10), older),
            Decision::Superseded
        );
        assert_eq!(
            redriver.decide(b"lyon", at(1, 20), older),
            Decision::Duplicate
        );
    }

    #[test]
    fn a_key_never_indexed_is_republished() {
        let mut redriver = Redriver::default();
        redriver.pending(b"nice", at(0, 7));
        assert_eq!(
            redriver.decide(b"nice", at(0, 7), None),
            Decision::Republish
        );
    }

    #[test]
    fn versions_from_another_partition_are_not_compared() {
        let mut redriver = Redriver::default();
        redriver.pending(b"lille", at(2, 7));
        assert!(matches!(
            redriver.decide(b"lille", at(2, 7), indexed(5, 3)),
            Decision::Skip(_)
        ));
        let mut redriver = Redriver::default();
        assert!(matches!(
            redriver.decide(b"unseen", at(2, 7), None),
            Decision::Skip(_)
        ));
    }
}
