//! Stage 7: poison messages go to the dead-letter topic with their context, and are
//! acknowledged there before their offset may be committed.

use std::time::Duration;

use anyhow::Context;
use citypop_runtime::KafkaArgs;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::decode::DeadLetterReason;

pub const HEADER_REASON: &str = "citypop.dlq.reason";
pub const HEADER_ERROR: &str = "citypop.dlq.error";
pub const HEADER_TOPIC: &str = "citypop.dlq.topic";
pub const HEADER_PARTITION: &str = "citypop.dlq.partition";
pub const HEADER_OFFSET: &str = "citypop.dlq.offset";
pub const HEADER_FAILED_AT: &str = "citypop.dlq.failed_at";

/// How long one dead-letter write may take before it is retried.
const DLQ_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaArgs, topic: String) -> anyhow::Result<Self> {
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
        Ok(Self { producer, topic })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes the original key, value and headers plus the `citypop.dlq.*` context,
    /// and resolves once Kafka acknowledged it.
    pub async fn send(
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
