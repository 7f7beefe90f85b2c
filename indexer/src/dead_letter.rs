//! Stage 7, dead-letter: poison messages go to the dead-letter topic with their
//! context, and are acknowledged there before their offset may be committed.

use std::time::Duration;

use anyhow::Context;
use citypop_runtime::KafkaArgs;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::retry::{Interrupted, Retry};

/// Why a message went to the dead-letter topic; the value of `citypop.dlq.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum DeadLetterReason {
    /// Not a citypop event: bad key, not single-object encoded, corrupt body.
    Decode,
    /// Written with a schema this indexer does not know.
    Schema,
    /// The engine refused the document (a mapping error, say).
    Rejected,
}

impl DeadLetterReason {
    pub const ALL: [Self; 3] = [Self::Decode, Self::Schema, Self::Rejected];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Schema => "schema",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a message cannot be indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonCause {
    pub reason: DeadLetterReason,
    pub error: String,
}

/// Counts per reason as a person reads them: `decode 2`, `schema 1`.
pub fn counts_by_reason(counts: &std::collections::BTreeMap<&'static str, u64>) -> Vec<String> {
    counts
        .iter()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect()
}

/// Where the dead-letter topic is.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadLetterArgs {
    /// Dead-letter topic [default: <topic>.dlq].
    #[arg(long, env = "CITYPOP_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
}

impl DeadLetterArgs {
    /// The dead-letter topic of `main_topic`.
    pub fn topic(&self, main_topic: &str) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{main_topic}.dlq"))
    }
}

/// Takes the messages of a batch that cannot be indexed. The live indexer
/// dead-letters them; replay only counts them (they were dead-lettered when they
/// first arrived).
pub(crate) trait PoisonSink {
    /// Resolves once the message is in safe hands, so its offset may be stored.
    async fn take(&self, message: &OwnedMessage, cause: &PoisonCause) -> Result<(), Interrupted>;
}

pub const HEADER_REASON: &str = "citypop.dlq.reason";
pub const HEADER_ERROR: &str = "citypop.dlq.error";
pub const HEADER_TOPIC: &str = "citypop.dlq.topic";
pub const HEADER_PARTITION: &str = "citypop.dlq.partition";
pub const HEADER_OFFSET: &str = "citypop.dlq.offset";
pub const HEADER_FAILED_AT: &str = "citypop.dlq.failed_at";

/// How long one dead-letter write may take before it is retried.
const DLQ_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead-letter topic's producer, retrying each write until Kafka acknowledges
/// it: a poison message must never be skipped unrecorded.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    retry: Retry,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaArgs, topic: String, retry: Retry) -> anyhow::Result<Self> {
        let producer = kafka
            .client_config("citypop-indexer-dlq")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                DLQ_WRITE_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .context("creating the dead-letter producer")?;
        Ok(Self {
            producer,
            topic,
            retry,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes the original key, value and headers plus the `citypop.dlq.*` context,
    /// and resolves once Kafka acknowledged it.
    async fn send(
        &self,
        message: &OwnedMessage,
        reason: DeadLetterReason,
        error: &str,
    ) -> anyhow::Result<()> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for (key, value) in [
            (HEADER_REASON, reason.as_str()),
            (HEADER_ERROR, error),
            (HEADER_TOPIC, message.topic()),
            (HEADER_PARTITION, &partition),
            (HEADER_OFFSET, &offset),
            (HEADER_FAILED_AT, &failed_at),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Timeout::After(DLQ_WRITE_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                anyhow::anyhow!("dead-letter write to {} failed: {error}", self.topic)
            })
    }
}

impl PoisonSink for DeadLetters {
    async fn take(&self, message: &OwnedMessage, cause: &PoisonCause) -> Result<(), Interrupted> {
        let PoisonCause { reason, error } = cause;
        tracing::warn!(
            reason = reason.as_str(),
            %error,
            partition = message.partition(),
            offset = message.offset(),
            dlq = %self.topic,
            "dead-lettering message"
        );
        self.retry
            .run(
                "dead-letter write",
                || self.send(message, *reason, error),
                |_, _| {},
            )
            .await
            .map(|_| ())
    }
}
