//! Filling the topic: `events` updates over `cities` cities in a chosen key order,
//! produced as fast as the broker takes them. It keeps every event as the indexer
//! will see it (the fair ceiling writes them all) and the final document of every
//! city (the second ceiling).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use citypop_schemas::event::{self, CityPopulationUpdated, Codec};
use clap::ValueEnum;
use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Uniform, Zipf};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// Sends in flight at once; the producer batches them.
const IN_FLIGHT: usize = 10_000;
/// Zipf's exponent for `--order zipf`: a few cities take most updates, as real
/// traffic does.
pub const ZIPF_EXPONENT: f64 = 1.1;

pub fn city_name(i: usize) -> String {
    format!("Bench City {i}")
}

/// Which city each successive event updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// City 0, 1, 2, ... and around again: every city equally often, far apart.
    RoundRobin,
    /// Uniformly random cities.
    Random,
    /// Zipf-distributed cities (s = 1.1): a few hot cities take most updates.
    Zipf,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::RoundRobin => "round-robin",
            Order::Random => "random",
            Order::Zipf => "zipf",
        }
    }

    /// The city index of each of `events` events, reproducible from `seed`.
    pub fn cities(self, events: usize, cities: usize, seed: u64) -> anyhow::Result<Vec<usize>> {
        let cities = cities.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        Ok(match self {
            Order::RoundRobin => (0..events).map(|i| i % cities).collect(),
            Order::Random => {
                let uniform = Uniform::new(0, cities)?;
                (0..events).map(|_| uniform.sample(&mut rng)).collect()
            }
            Order::Zipf => {
                // Samples are ranks 1..=cities, as floats.
                let zipf = Zipf::new(cities as f64, ZIPF_EXPONENT)?;
                (0..events)
                    .map(|_| (zipf.sample(&mut rng) as usize).clamp(1, cities) - 1)
                    .collect()
            }
        })
    }
}

/// A producer for filling topics: every replica acknowledges, and idempotence keeps
/// each partition in send order (P7's JSON twins rely on it); large batches.
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

/// Sends one Avro event per entry of `cities` (the city's index) to `topic`, as
/// producer-api writes them, and returns the document each becomes, with the
/// partition and offset Kafka gave it, in no particular order.
pub async fn send_events(
    producer: &FutureProducer,
    topic: &str,
    cities: &[usize],
) -> anyhow::Result<Vec<CityDocument>> {
    let codec = Codec::new();
    let sent: Vec<anyhow::Result<CityDocument>> = futures::stream::iter(cities.iter().enumerate())
        .map(|(i, &city)| {
            let codec = &codec;
            async move {
                let name = city_name(city);
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
                    .map_err(|(e, _)| anyhow::anyhow!("sending to {topic}: {e}"))?;
                Ok(CityDocument::from_event(
                    key,
                    event,
                    delivery.partition,
                    delivery.offset,
                ))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    sent.into_iter().collect()
}

pub struct Preloaded {
    pub topic: String,
    pub seconds: f64,
    /// Every event as the indexer writes it, in topic order: by offset, the
    /// partitions interleaved, as a consumer of all partitions reads them.
    pub events: Vec<CityDocument>,
    /// The last document of every city, as the index must end up holding it.
    pub final_documents: Vec<CityDocument>,
}

pub async fn preload(
    bootstrap: &str,
    topic: &str,
    order: Order,
    events: usize,
    cities: usize,
    seed: u64,
) -> anyhow::Result<Preloaded> {
    let producer = producer(bootstrap)?;
    let keys = order.cities(events, cities, seed)?;
    let started = Instant::now();
    let mut all = send_events(&producer, topic, &keys).await?;
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable_by_key(|d| (d.version, d.partition));
    let mut last: HashMap<&str, &CityDocument> = HashMap::with_capacity(cities);
    for document in &all {
        // In offset order, so the later one of a key (same partition) wins.
        last.insert(&document.key, document);
    }
    let final_documents = last.into_values().cloned().collect();
    Ok(Preloaded {
        topic: topic.to_owned(),
        seconds,
        events: all,
        final_documents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_reproducible_and_in_range() {
        for order in [Order::RoundRobin, Order::Random, Order::Zipf] {
            let a = order.cities(10_000, 100, 7).unwrap();
            assert_eq!(a, order.cities(10_000, 100, 7).unwrap(), "{order:?}");
            assert!(a.iter().all(|&c| c < 100), "{order:?}");
        }
        assert_eq!(Order::RoundRobin.cities(5, 2, 0).unwrap(), [0, 1, 0, 1, 0]);
    }

    #[test]
    fn zipf_puts_most_updates_on_a_few_cities() {
        let cities = Order::Zipf.cities(100_000, 10_000, 1).unwrap();
        let top10 = cities.iter().filter(|&&c| c < 10).count();
        // With s = 1.1 over 10,000 cities the ten first take about 40 %; uniform
        // would give them 0.1 %.
        assert!(top10 > 30_000, "{top10}");
    }
}
