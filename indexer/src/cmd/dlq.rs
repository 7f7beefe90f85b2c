//! `indexer dlq list` and `indexer dlq redrive`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::config::{Config, DlqListArgs, DlqRedriveArgs};
use crate::dead_letter::{self, DeadLetterReason};
use crate::offsets::{self, OffsetReader};

/// Header a redriven message carries on the main topic: where it was dead-lettered.
pub const HEADER_REDRIVEN_FROM: &str = "citypop.redriven_from";

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

fn header_text(message: &BorrowedMessage<'_>, name: &str) -> Option<String> {
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
    let marks = OffsetReader::new(&config.kafka)?.watermarks(topic).await?;
    let ends: BTreeMap<i32, i64> = marks.iter().map(|(&p, &(_, high))| (p, high)).collect();
    // Per partition, the next offset still to read.
    let mut next: BTreeMap<i32, i64> = marks
        .iter()
        .map(|(&p, &(low, _))| (p, start(p).unwrap_or(low).max(low)))
        .collect();
    offsets::assign(consumer.as_ref(), topic, &next)?;
    while next.iter().any(|(p, n)| *n < ends[p]) {
        let message = tokio::time::timeout(READ_TIMEOUT, consumer.recv())
            .await
            .with_context(|| {
                format!("no message from {topic} within {READ_TIMEOUT:?} before its end")
            })??;
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
    pub examined: u64,
}

pub async fn redrive(config: &Config, args: &DlqRedriveArgs) -> anyhow::Result<()> {
    let dlq_topic = config.dlq_topic();
    let producer: FutureProducer = config
        .kafka
        .client_config("citypop-indexer-redrive")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the redrive producer")?;
    let reasons = args
        .reason
        .map_or(DeadLetterReason::ALL.to_vec(), |r| vec![r]);
    let mut counts = RedriveCounts::default();
    for reason in reasons {
        // A group per reason: a dead letter has exactly one reason, so it can only
        // ever be redriven by its reason's group, once, whatever filters are used.
        let group = format!("{}.redrive.{}", config.consumer_group, reason.as_str());
        let consumer = reader(config, &group)?;
        let committed = committed_offsets(config, &consumer, &dlq_topic).await?;
        let mut selected = Vec::new();
        let ends = read_to_end(
            config,
            &consumer,
            &dlq_topic,
            |partition| committed.get(&partition).copied(),
            |message| {
                counts.examined += 1;
                if header_text(message, dead_letter::HEADER_REASON).as_deref()
                    == Some(reason.as_str())
                {
                    selected.push(message.detach());
                }
            },
        )
        .await?;
        if args.dry_run {
            *counts.redriven.entry(reason.as_str()).or_default() += selected.len() as u64;
            continue;
        }
        for message in &selected {
            republish(&producer, &config.kafka.topic, &dlq_topic, message).await?;
            *counts.redriven.entry(reason.as_str()).or_default() += 1;
        }
        // Every republish above is acknowledged; only now may the group move on.
        offsets::commit_positions(consumer.clone(), &dlq_topic, &ends)
            .await
            .with_context(|| format!("committing the redrive position of {group}"))?;
    }
    let total: u64 = counts.redriven.values().sum();
    let verb = if args.dry_run {
        "would redrive"
    } else {
        "redriven"
    };
    let detail = dead_letter::counts_by_reason(&counts.redriven);
    println!(
        "{verb} {total} dead letters from {dlq_topic} to {} ({}); {} examined",
        config.kafka.topic,
        detail.join(", "),
        counts.examined
    );
    Ok(())
}

async fn committed_offsets(
    config: &Config,
    consumer: &Arc<StreamConsumer>,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let marks = OffsetReader::new(&config.kafka)?.watermarks(topic).await?;
    offsets::committed_positions(consumer.clone(), topic, marks.into_keys()).await
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
