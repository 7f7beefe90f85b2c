//! Reading the topics back at the end. The main topic is the truth: its newest
//! indexable event per city is what the index must hold, whatever the API answered
//! (a write answered 503 may still have landed). The dead-letter topic must hold
//! the poison and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use citypop_schemas::event::{self, Codec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// A read that gets nothing for this long while messages are still due has failed.
const STALL: Duration = Duration::from_secs(60);
/// Set by `dlq redrive` on what it republishes.
pub const REDRIVEN_FROM: &str = "citypop.redriven_from";

/// What a city's newest indexable event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Newest {
    Update { population: i64 },
    Delete,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub partition: i32,
    pub offset: i64,
    pub newest: Newest,
}

#[derive(Debug, Default)]
pub struct Fold {
    /// Per city key, its newest indexable event.
    pub newest: HashMap<String, Event>,
    /// Every event id in the topic, where it is.
    pub event_ids: HashMap<String, (i32, i64)>,
    /// Every delete, per key: (partition, offset), to judge a reader's 404.
    pub deletes: HashMap<String, Vec<i64>>,
    pub messages: u64,
    pub unindexable: u64,
}

/// A dead letter's origin and context.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: String,
    pub reason: String,
    pub error: String,
    pub origin: (String, i32, i64),
}

/// Folds `topic`: per key, the newest event the indexers can index. Messages in
/// `SCHEMA_V2` count only when republished by redrive (the originals were
/// dead-lettered before the indexers learnt the schema).
pub fn fold(bootstrap: &str, topic: &str) -> anyhow::Result<Fold> {
    let v1 = Codec::new();
    let mut v2 = Codec::new();
    v2.add_writer_schema(citypop_tests::kafka::SCHEMA_V2)
        .map_err(|e| anyhow::anyhow!("the v2 schema: {e}"))?;
    let mut fold = Fold::default();
    read(bootstrap, topic, |message| {
        fold.messages += 1;
        let Some(key) = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
        else {
            fold.unindexable += 1;
            return;
        };
        let headers = headers(message);
        let (newest, event_id) = match message.payload() {
            None => (Newest::Delete, headers.get(event::HEADER_EVENT_ID).cloned()),
            Some(payload) => {
                let decoded = v1.decode(payload).ok().or_else(|| {
                    headers
                        .contains_key(REDRIVEN_FROM)
                        .then(|| v2.decode(payload).ok())
                        .flatten()
                });
                match decoded {
                    Some(e) => (
                        Newest::Update {
                            population: e.population,
                        },
                        Some(e.event_id),
                    ),
                    None => {
                        fold.unindexable += 1;
                        return;
                    }
                }
            }
        };
        if let Some(id) = event_id {
            fold.event_ids
                .insert(id, (message.partition(), message.offset()));
        }
        if newest == Newest::Delete {
            fold.deletes
                .entry(key.clone())
                .or_default()
                .push(message.offset());
        }
        let event = Event {
            partition: message.partition(),
            offset: message.offset(),
            newest,
        };
        let entry = fold.newest.entry(key).or_insert_with(|| event.clone());
        if event.offset >= entry.offset {
            *entry = event;
        }
    })?;
    Ok(fold)
}

/// Every dead letter of `topic`.
pub fn dead_letters(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    read(bootstrap, topic, |message| {
        let headers = headers(message);
        let get = |name: &str| headers.get(name).cloned().unwrap_or_default();
        letters.push(DeadLetter {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            reason: get("citypop.dlq.reason"),
            error: get("citypop.dlq.error"),
            origin: (
                get("citypop.dlq.topic"),
                get("citypop.dlq.partition").parse().unwrap_or(-1),
                get("citypop.dlq.offset").parse().unwrap_or(-1),
            ),
        });
    })?;
    Ok(letters)
}

fn headers(message: &BorrowedMessage<'_>) -> HashMap<String, String> {
    message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "citypop-chaos-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating a consumer")
}

/// Per partition of `topic`, its end offset.
pub fn end_offsets(bootstrap: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer = consumer(bootstrap)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut ends = BTreeMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)
            .with_context(|| format!("watermarks of {topic}/{}", partition.id()))?;
        ends.insert(partition.id(), high);
    }
    Ok(ends)
}

/// Reads `topic` from its beginning to the end offsets taken now.
fn read(
    bootstrap: &str,
    topic: &str,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let ends = end_offsets(bootstrap, topic)?;
    let consumer = consumer(bootstrap)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, end) in &ends {
        if *end > 0 {
            assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut positions: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut last_progress = Instant::now();
    while positions.iter().any(|(p, at)| *at < ends[p]) {
        if last_progress.elapsed() > STALL {
            bail!("reading {topic} stalled at {positions:?} of {ends:?}");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            // librdkafka reports a broker it lost (one killed by the soak) and
            // reconnects by itself; the stall timeout judges real failures.
            Some(Err(_)) => {}
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let end = ends.get(&message.partition()).copied().unwrap_or(0);
                if message.offset() < end {
                    each(&message);
                }
                positions.insert(message.partition(), message.offset() + 1);
            }
        }
    }
    Ok(())
}

/// The offsets `group` committed on `topic`, per partition.
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let ends = end_offsets(bootstrap, topic)?;
    let consumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create::<BaseConsumer>()
        .context("creating a consumer")?;
    let mut list = TopicPartitionList::new();
    for partition in ends.keys() {
        list.add_partition(topic, *partition);
    }
    Ok(consumer
        .committed_offsets(list, METADATA_TIMEOUT)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.partition(), offset)),
            _ => None,
        })
        .collect())
}
