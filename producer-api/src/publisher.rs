//! Publishing city updates to Kafka, acknowledged by every in-sync replica.

use std::time::Duration;

use anyhow::Context;
use citypop_runtime::KafkaArgs;
use citypop_schemas::event::{self, CityPopulationUpdated, Codec};
use citypop_schemas::{CityKey, CityName, Population};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

/// How long a readiness check waits for Kafka's metadata answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// What the broker acknowledged: where the event now lives.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub event_id: String,
    pub key: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The local queue is full: Kafka is slower than the incoming writes.
    #[error("the producer queue is full")]
    QueueFull,
    /// Kafka did not acknowledge in time, or refused the write.
    #[error("kafka did not acknowledge the write: {0}")]
    NotAcknowledged(KafkaError),
    #[error(transparent)]
    Encode(#[from] event::EncodeError),
}

pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    codec: Codec,
}

impl Publisher {
    pub fn new(kafka: &KafkaArgs, publish_timeout: Duration) -> anyhow::Result<Self> {
        let producer: FutureProducer = kafka
            .client_config("citypop-producer-api")
            // A 202 promises the event survives a broker loss: wait for every in-sync
            // replica, and let the idempotent producer make its retries duplicate-free
            // and in order.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Bounds the time from send to delivery report, retries included, so a
            // request never waits longer than the publish timeout.
            .set(
                "message.timeout.ms",
                publish_timeout.as_millis().to_string(),
            )
            // The topic is created by the indexer with its partition count and
            // compaction; a producer that auto-created it would get neither.
            .set("allow.auto.create.topics", "false")
            .set("linger.ms", "5")
            .create()
            .context("creating the kafka producer")?;
        Ok(Self {
            producer,
            topic: kafka.topic.clone(),
            codec: Codec::new(),
        })
    }

    /// Publishes one update and resolves once the broker acknowledged it.
    pub async fn publish_update(
        &self,
        name: &CityName,
        population: Population,
    ) -> Result<Accepted, PublishError> {
        let key = name.key();
        let event = CityPopulationUpdated {
            event_id: uuid::Uuid::now_v7().to_string(),
            city: name.as_str().to_owned(),
            population: population.get(),
            occurred_at: chrono::Utc::now().timestamp_micros(),
        };
        let payload = self.codec.encode(&event)?;
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(event::CONTENT_TYPE),
        });
        let (partition, offset) = self.send(&key, Some(&payload), headers).await?;
        Ok(Accepted {
            event_id: event.event_id,
            key: key.as_str().to_owned(),
            partition,
            offset,
        })
    }

    async fn send(
        &self,
        key: &CityKey,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(i32, i64), PublishError> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(key.as_str())
            .headers(headers);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        // A zero queue timeout turns a full local queue into an immediate 503
        // instead of a request that hangs while Kafka is slow.
        match self
            .producer
            .send(record, Timeout::After(Duration::ZERO))
            .await
        {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(PublishError::QueueFull)
            }
            Err((error, _)) => Err(PublishError::NotAcknowledged(error)),
        }
    }

    /// Whether Kafka answers a metadata request and knows the topic.
    pub async fn check_kafka(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        // Metadata requests block the calling thread; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                .map_err(|e| e.to_string())?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(format!("topic {topic} does not exist yet")),
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Waits for every queued write to be acknowledged or to time out.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "producer flush did not complete");
        }
    }
}
