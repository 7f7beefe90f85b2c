//! Publishing city updates and deletes to Kafka, acknowledged by every in-sync
//! replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use citypop_runtime::KafkaArgs;
use citypop_schemas::event::{self, CityPopulationUpdated, Codec};
use citypop_schemas::{CityKey, CityName, Population};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::{Compression, Config};
use crate::metrics::Metrics;
use crate::trace_context::RequestTrace;

/// How long a health check waits for Kafka's metadata answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// What the broker acknowledged: where the event now lives.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Accepted {
    /// The event's UUID v7, also in the indexed document.
    pub event_id: String,
    /// The city key: the Kafka key and the document id.
    pub key: String,
    pub partition: i32,
    /// The event's offset: the document's version once indexed, to wait for with
    /// `GET /city/{name}?min_version=`.
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The local queue is full: Kafka is slower than the incoming writes.
    #[error("the producer queue is full")]
    QueueFull,
    /// Kafka did not acknowledge within the publish timeout.
    #[error("kafka did not acknowledge the write in time")]
    Timeout,
    /// Kafka refused the write, or the producer cannot send.
    #[error("kafka did not acknowledge the write: {0}")]
    Kafka(KafkaError),
    #[error(transparent)]
    Encode(#[from] event::EncodeError),
}

impl PublishError {
    /// The `reason` label of `citypop_publish_failures_total`, one of
    /// [`crate::metrics::PUBLISH_FAILURE_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Timeout => "timeout",
            Self::Kafka(_) => "kafka_error",
            Self::Encode(_) => "encode",
        }
    }

    /// Whether the client may succeed by sending the same write later.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Encode(_))
    }
}

/// Kafka's state as the producer sees it, for `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KafkaStatus {
    pub topic: String,
    pub partitions: usize,
    pub brokers: usize,
    /// Writes handed to the producer and not yet acknowledged.
    pub in_flight: i32,
    pub latency_ms: u64,
}

/// How the producer batches and bounds its writes.
#[derive(Debug, Clone, Copy)]
pub struct ProducerSettings {
    pub publish_timeout: Duration,
    pub queue_messages: u32,
    pub linger: Duration,
    pub batch_bytes: u32,
    pub compression: Compression,
}

impl ProducerSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            publish_timeout: config.publish_timeout,
            queue_messages: config.producer_queue_messages,
            linger: config.producer_linger,
            batch_bytes: config.producer_batch_bytes,
            compression: config.producer_compression,
        }
    }
}

pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    codec: Codec,
    publish_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn new(
        kafka: &KafkaArgs,
        settings: &ProducerSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let ProducerSettings {
            publish_timeout,
            queue_messages,
            linger,
            batch_bytes,
            compression,
        } = *settings;
        let timeout_ms = publish_timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = kafka
            .client_config("citypop-producer-api")
            // A 202 promises the event survives a broker loss: wait for every in-sync
            // replica, and let the idempotent producer make its retries duplicate-free
            // and in order.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Bounds the time from send to delivery report, retries included, so a
            // write that Kafka cannot take fails within the publish timeout.
            .set("message.timeout.ms", &timeout_ms)
            // The bound on writes held in memory: past it a write is refused at once
            // (503) rather than queued behind a Kafka that cannot keep up.
            .set("queue.buffering.max.messages", queue_messages.to_string())
            // The topic is created by the indexer with its partition count and
            // compaction; a producer that auto-created it would get neither.
            .set("allow.auto.create.topics", "false")
            // librdkafka takes fractions of a millisecond here.
            .set("linger.ms", (linger.as_secs_f64() * 1000.0).to_string())
            .set("batch.size", batch_bytes.to_string())
            .set("compression.type", compression.as_librdkafka())
            // With linger doing the batching, Nagle's algorithm only delays each
            // batch further, waiting for the acknowledgement of the previous one.
            .set("socket.nagle.disable", "true")
            .create()
            .context("creating the kafka producer")?;
        Ok(Self {
            producer,
            topic: kafka.topic.clone(),
            codec: Codec::new(),
            publish_timeout,
            metrics,
        })
    }

    /// Hands one update to the producer now; the returned [`Pending`] resolves once
    /// the broker acknowledged it. Enqueueing is synchronous, so updates handed over
    /// in order are written in that order (one key, one partition).
    pub fn update(
        &self,
        name: &CityName,
        population: Population,
        trace: &RequestTrace,
    ) -> Pending<'_> {
        let key = name.key();
        let event = CityPopulationUpdated {
            event_id: uuid::Uuid::now_v7().to_string(),
            city: name.as_str().to_owned(),
            population: population.get(),
            occurred_at: chrono::Utc::now().timestamp_micros(),
        };
        let payload = match self.codec.encode(&event) {
            Ok(payload) => payload,
            Err(error) => return self.refused(event.event_id, key, error.into()),
        };
        let headers = OwnedHeaders::new_with_capacity(3).insert(Header {
            key: "content-type",
            value: Some(event::CONTENT_TYPE),
        });
        self.enqueue(event.event_id, key, Some(&payload), headers, trace)
    }

    /// Hands a tombstone for the city to the producer now. A tombstone has no value
    /// to carry the event id and time, so they travel in headers, where the indexer
    /// reads them for the soft-delete document.
    pub fn delete(&self, key: &CityKey, trace: &RequestTrace) -> Pending<'_> {
        let event_id = uuid::Uuid::now_v7().to_string();
        let occurred_at = chrono::Utc::now().timestamp_micros().to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: event::HEADER_EVENT_ID,
                value: Some(&event_id),
            })
            .insert(Header {
                key: event::HEADER_OCCURRED_AT,
                value: Some(&occurred_at),
            });
        self.enqueue(event_id, key.clone(), None, headers, trace)
    }

    fn enqueue(
        &self,
        event_id: String,
        key: CityKey,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        trace: &RequestTrace,
    ) -> Pending<'_> {
        // An exported request gets a produce span per event, and the event carries
        // that span's context; otherwise the request's headers, formatted once.
        let span = trace.exported.then(|| {
            tracing::info_span!(
                "kafka.produce",
                otel.name = "kafka.produce",
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.destination.name = %self.topic,
                messaging.kafka.message.key = key.as_str(),
                messaging.destination.partition.id = tracing::field::Empty,
                messaging.kafka.offset = tracing::field::Empty,
                error = tracing::field::Empty,
            )
        });
        let headers = match &span {
            Some(span) => {
                use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                citypop_runtime::telemetry::add_trace_headers(
                    headers,
                    &citypop_runtime::telemetry::trace_headers(&span.context()),
                )
            }
            None => citypop_runtime::telemetry::add_trace_headers(headers, trace.headers()),
        };
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(key.as_str())
            .headers(headers);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        // Never waiting for room in the queue turns a full queue into an immediate
        // 503 instead of a request that hangs while Kafka is slow.
        let delivery = match self.producer.send_result(record) {
            Ok(delivery) => Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(PublishError::QueueFull)
            }
            Err((error, _)) => Err(PublishError::Kafka(error)),
        };
        Pending {
            publisher: self,
            started: Instant::now(),
            event_id,
            key,
            delivery,
            span,
        }
    }

    fn refused(&self, event_id: String, key: CityKey, error: PublishError) -> Pending<'_> {
        Pending {
            publisher: self,
            started: Instant::now(),
            event_id,
            key,
            delivery: Err(error),
            span: None,
        }
    }

    /// Whether Kafka answers a metadata request and knows the topic, and the producer
    /// has not failed for good.
    pub async fn check_kafka(&self) -> Result<KafkaStatus, String> {
        if let Some(error) = self.fatal_error() {
            return Err(error);
        }
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let started = Instant::now();
        // Metadata requests block the calling thread; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                .map_err(|e| e.to_string())?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(KafkaStatus {
                    partitions: t.partitions().len(),
                    brokers: metadata.brokers().len(),
                    in_flight: producer.in_flight_count(),
                    latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    topic,
                }),
                _ => Err(format!("topic {topic} does not exist yet")),
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// A fatal producer error (the idempotent producer lost its guarantees) never
    /// clears: only a new process recovers, so liveness reports it.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("fatal producer error {code:?}: {reason}"))
    }

    /// Waits for every queued write to be acknowledged or to time out.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "producer flush did not complete");
        }
    }
}

/// An event handed to the producer, not yet acknowledged.
pub struct Pending<'a> {
    publisher: &'a Publisher,
    started: Instant,
    event_id: String,
    key: CityKey,
    delivery: Result<DeliveryFuture, PublishError>,
    /// The produce span, when the request is exported; it ends with the acknowledgement.
    span: Option<tracing::Span>,
}

impl Pending<'_> {
    /// Whether the producer refused the event at once (its queue is full, or it
    /// could not be encoded): it will never be acknowledged.
    pub fn refused(&self) -> bool {
        self.delivery.is_err()
    }

    /// Resolves once Kafka acknowledged the event, or with why it did not.
    pub async fn acknowledged(self) -> Result<Accepted, PublishError> {
        let metrics = &self.publisher.metrics;
        let result = match self.delivery {
            // librdkafka checks message timeouts about once a second, so the publish
            // timeout is also enforced here: the client hears back within it. A write
            // given up on may still be delivered later; the client was told 503, never
            // 202, and a retry of an upsert or a delete is harmless.
            Ok(delivery) => {
                match tokio::time::timeout(self.publisher.publish_timeout, delivery).await {
                    Ok(Ok(Ok(delivery))) => Ok((delivery.partition, delivery.offset)),
                    Ok(Ok(Err((
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                        _,
                    ))))
                    | Err(_) => Err(PublishError::Timeout),
                    Ok(Ok(Err((error, _)))) => Err(PublishError::Kafka(error)),
                    Ok(Err(_canceled)) => Err(PublishError::Kafka(KafkaError::Canceled)),
                }
            }
            Err(error) => Err(error),
        };
        if let Some(span) = &self.span {
            match &result {
                Ok((partition, offset)) => {
                    span.record("messaging.destination.partition.id", partition);
                    span.record("messaging.kafka.offset", offset);
                }
                Err(error) => {
                    span.record("error", error.reason());
                }
            }
        }
        match result {
            Ok((partition, offset)) => {
                metrics.published(self.started.elapsed().as_secs_f64());
                Ok(Accepted {
                    event_id: self.event_id,
                    key: self.key.as_str().to_owned(),
                    partition,
                    offset,
                })
            }
            Err(error) => {
                metrics.publish_failed(error.reason());
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PUBLISH_FAILURE_REASONS;

    #[test]
    fn every_failure_reason_starts_at_zero() {
        for error in [
            PublishError::QueueFull,
            PublishError::Timeout,
            PublishError::Kafka(KafkaError::Canceled),
        ] {
            assert!(PUBLISH_FAILURE_REASONS.contains(&error.reason()), "{error}");
        }
    }
}
