//! Filling the topic: `events` updates over `cities` cities, produced as fast as
//! the broker takes them, and the final document of every city.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use citypop_schemas::event::{self, CityPopulationUpdated, Codec};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Sends in flight at once; the producer batches them.
const IN_FLIGHT: usize = 10_000;

pub fn city_name(i: usize) -> String {
    format!("Bench City {i}")
}

pub struct Preloaded {
    pub seconds: f64,
    /// The last document of every city, as the index must end up holding it.
    pub final_documents: Vec<CityDocument>,
}

pub async fn preload(
    bootstrap: &str,
    topic: &str,
    events: usize,
    cities: usize,
) -> anyhow::Result<Preloaded> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let codec = Codec::new();
    let started = Instant::now();
    let results: Vec<anyhow::Result<(String, CityDocument)>> = futures::stream::iter(0..events)
        .map(|i| {
            let producer = &producer;
            let codec = &codec;
            async move {
                let name = city_name(i % cities);
                let key = CityKey::parse(&name)?.as_str().to_owned();
                let event = CityPopulationUpdated {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    city: name,
                    population: (i as i64) * 7 % 10_000_000,
                    occurred_at: chrono::Utc::now().timestamp_micros(),
                };
                let payload = codec.encode(&event)?;
                let headers = OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(event::CONTENT_TYPE),
                });
                let record = FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                let delivery = producer
                    .send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("preload send: {e}"))?;
                let document =
                    CityDocument::from_event(&key, &event, delivery.partition, delivery.offset);
                Ok((key, document))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut last: HashMap<String, CityDocument> = HashMap::with_capacity(cities);
    for result in results {
        let (key, document) = result?;
        match last.get(&key) {
            Some(kept) if kept.version >= document.version => {}
            _ => {
                last.insert(key, document);
            }
        }
    }
    Ok(Preloaded {
        seconds,
        final_documents: last.into_values().collect(),
    })
}
