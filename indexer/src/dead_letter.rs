//! Stage 7, dead-letter: poison messages go to the dead-letter topic with their
//! context, and are acknowledged there before their offset may be committed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use citypop_runtime::KafkaArgs;
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, watch};

use crate::status::StatusBoard;

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

/// Header a redriven message carries on the main topic: where it was dead-lettered
/// (`<dlq>/<partition>/<offset>`).
pub const HEADER_REDRIVEN_FROM: &str = "citypop.redriven_from";

/// Whether `message` was republished from the dead-letter topic by `dlq redrive`.
pub fn is_redriven(message: &OwnedMessage) -> bool {
    message
        .headers()
        .is_some_and(|headers| headers.iter().any(|h| h.key == HEADER_REDRIVEN_FROM))
}

pub const HEADER_REASON: &str = "citypop.dlq.reason";
pub const HEADER_ERROR: &str = "citypop.dlq.error";
pub const HEADER_TOPIC: &str = "citypop.dlq.topic";
pub const HEADER_PARTITION: &str = "citypop.dlq.partition";
pub const HEADER_OFFSET: &str = "citypop.dlq.offset";
pub const HEADER_FAILED_AT: &str = "citypop.dlq.failed_at";

/// How long one dead-letter write may take before it is retried.
const DLQ_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest value of a `citypop.dlq.*` header. An error that quotes a poison
/// key or city could otherwise make the dead letter larger than Kafka accepts.
pub const HEADER_LIMIT: usize = 1024;

/// Headers of a stub: a dead letter that could not be written whole.
pub const HEADER_STUB: &str = "citypop.dlq.stub";
pub const HEADER_PAYLOAD_SIZE: &str = "citypop.dlq.payload_size";
pub const HEADER_PAYLOAD_SHA256: &str = "citypop.dlq.payload_sha256";
pub const HEADER_KEY_SIZE: &str = "citypop.dlq.key_size";
pub const HEADER_KEY_SHA256: &str = "citypop.dlq.key_sha256";

/// The counters of the dead-letter stage.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterCounters {
    /// Dead-letter writes that failed (each is retried, or replaced by a stub).
    pub write_failures: Counter,
    /// Dead letters written as stubs.
    pub stubs: Counter,
    /// Where the last failure is shown.
    pub status: Arc<StatusBoard>,
}

/// The dead-letter topic's producer, retrying each write until Kafka acknowledges
/// it: a poison message must never be skipped unrecorded. A dead letter Kafka can
/// never take whole (too large, an invalid record) is written as a stub instead.
pub struct DeadLetters {
    /// Made for the first dead letter, not at start: rust-rdkafka's producer polls
    /// its queue in a thread whose 100 ms waits spin through their last millisecond
    /// (the time left rounds down to a 0 ms poll), about 1% of a core for as long as
    /// the producer lives, and most indexers never write a dead letter.
    producer: OnceCell<FutureProducer>,
    producer_config: ClientConfig,
    topic: String,
    retry: Retry,
    counters: DeadLetterCounters,
    /// False while dead-letter writes fail: nothing behind the poison can be
    /// committed, so the indexer is not ready.
    writable: watch::Sender<bool>,
}

/// What a dead letter holds of the original message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contents {
    /// Key, value and headers.
    Whole,
    /// The headers, and the key only if small; sizes and digests of the rest.
    Stub,
}

impl DeadLetters {
    pub fn new(
        kafka: &KafkaArgs,
        topic: String,
        retry: Retry,
        counters: DeadLetterCounters,
    ) -> anyhow::Result<Self> {
        let mut producer_config = kafka.client_config("citypop-indexer-dlq");
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                DLQ_WRITE_TIMEOUT.as_millis().to_string(),
            );
        // A setting librdkafka refuses fails the start, as it would if the producer
        // were made now.
        producer_config
            .create_native_config()
            .context("the dead-letter producer's settings")?;
        Ok(Self {
            producer: OnceCell::new(),
            producer_config,
            topic,
            retry,
            counters,
            writable: watch::channel(true).0,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Follows whether dead-letter writes succeed.
    pub fn writable(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }

    /// Writes the dead letter, as a stub when Kafka can never take it whole.
    async fn write(
        &self,
        message: &OwnedMessage,
        cause: &PoisonCause,
    ) -> Result<Contents, KafkaError> {
        match self.send(message, cause, Contents::Whole).await {
            Err(error) if is_permanent(&error) => {
                tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "dead letter cannot be written whole, writing a stub");
                self.counters.write_failures.inc();
                self.send(message, cause, Contents::Stub).await?;
                self.counters.stubs.inc();
                Ok(Contents::Stub)
            }
            sent => sent.map(|()| Contents::Whole),
        }
    }

    /// Writes the original key, value and headers (or a stub of them) plus the
    /// `citypop.dlq.*` context, and resolves once Kafka acknowledged it.
    async fn send(
        &self,
        message: &OwnedMessage,
        cause: &PoisonCause,
        copy: Contents,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut context = vec![
            (HEADER_REASON, cause.reason.as_str().to_owned()),
            (HEADER_ERROR, bounded(&cause.error).to_owned()),
            (HEADER_TOPIC, bounded(message.topic()).to_owned()),
            (HEADER_PARTITION, partition),
            (HEADER_OFFSET, offset),
            (HEADER_FAILED_AT, failed_at),
        ];
        let key = message.key();
        let payload = message.payload();
        let kept_key = match copy {
            Contents::Whole => key,
            Contents::Stub => {
                context.push((HEADER_STUB, "true".to_owned()));
                if let Some(payload) = payload {
                    context.push((HEADER_PAYLOAD_SIZE, payload.len().to_string()));
                    context.push((HEADER_PAYLOAD_SHA256, sha256_hex(payload)));
                }
                match key {
                    Some(key) if key.len() > HEADER_LIMIT => {
                        context.push((HEADER_KEY_SIZE, key.len().to_string()));
                        context.push((HEADER_KEY_SHA256, sha256_hex(key)));
                        None
                    }
                    key => key,
                }
            }
        };
        for (name, value) in &context {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = kept_key {
            record = record.key(key);
        }
        if let (Contents::Whole, Some(payload)) = (copy, payload) {
            record = record.payload(payload);
        }
        let producer = self
            .producer
            .get_or_try_init(|| async { self.producer_config.create::<FutureProducer>() })
            .await?;
        producer
            .send(record, Timeout::After(DLQ_WRITE_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}

/// Produce errors that no retry mends: the record itself is refused.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// At most [`HEADER_LIMIT`] bytes of `value`, cut at a character boundary.
fn bounded(value: &str) -> &str {
    if value.len() <= HEADER_LIMIT {
        return value;
    }
    let mut end = HEADER_LIMIT;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PoisonSink for DeadLetters {
    async fn take(&self, message: &OwnedMessage, cause: &PoisonCause) -> Result<(), Interrupted> {
        tracing::warn!(
            reason = cause.reason.as_str(),
            error = bounded(&cause.error),
            partition = message.partition(),
            offset = message.offset(),
            dlq = %self.topic,
            "dead-lettering message"
        );
        let written = self
            .retry
            .run(
                "dead-letter write",
                || self.write(message, cause),
                |error, _| {
                    self.counters
                        .status
                        .error("dead_letter", &error.to_string());
                    self.counters.write_failures.inc();
                    self.writable.send_replace(false);
                },
            )
            .await;
        if written.is_ok() {
            self.writable
                .send_if_modified(|writable| !std::mem::replace(writable, true));
        }
        written.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(HEADER_LIMIT);
        let cut = bounded(&long);
        assert!(cut.len() <= HEADER_LIMIT && cut.len() > HEADER_LIMIT - 2);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn only_errors_of_the_record_itself_are_permanent() {
        use rdkafka::error::KafkaError::MessageProduction;
        assert!(is_permanent(&MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(is_permanent(&MessageProduction(
            RDKafkaErrorCode::InvalidRecord
        )));
        assert!(!is_permanent(&MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_permanent(&MessageProduction(
            RDKafkaErrorCode::NotEnoughReplicas
        )));
        assert!(!is_permanent(&MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
    }

    #[test]
    fn a_digest_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
